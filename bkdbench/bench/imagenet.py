"""``bkdbench bench --dataset imagenet-lt-synthetic``: the large benchmarks' data path against the
reference-style one, on generated JPEG files in the exact ImageNet-LT list layout.

The files. ``images`` JPEGs (quality 90) of ImageNet-like sizes (500×375, 375×500, 500×333, 500×500,
640×480, 333×500, cycled) with smooth random content plus noise, so that they compress and decode
like photographs rather than like white noise; ImageNet_LT_{train,val,test}.txt list them under
``train/`` and ``val/``.

Decoding (once, ``splitstore.load_listing``: the real store, process pool, every core): seconds and
images/s per stored size. The reference decodes every image in every epoch instead; that cost is
inside its pipeline figure.

The pipelines, per crop size (224 and a smaller one), alternated in windows, round after round in
the opposite order of the last (as ``bench.run``):

- ``reference``: a torch DataLoader (shuffled, ``workers`` = every core, pinned memory on CUDA) over
  the files. Its workers run only during its own windows: each window starts a fresh iterator and
  takes the batches the workers prefetch (``workers × prefetch_factor``) untimed, so the timed batches
  are the steady state and neither start-up nor batches made during the other pipeline's window
  count for or against it; the iterator ends with the window. Per image ``Image.open``
  + ``convert("RGB")``, ``RandomResizedCrop(size)``, ``RandomHorizontalFlip``,
  ``ColorJitter(0.4, 0.4, 0.4, 0)``, ``ToTensor``, ``Normalize``: the decoupling code's training
  transform; the batch is copied to the device.
- ``bkdbench``: ``DeviceLoader`` with ``augmentation="imagenet"`` over the stored uint8 squares
  (store = size / 0.875), as ``train`` runs it: random-resized crop, flip, jitter and normalisation
  batched on the device.
- ``..._step``: each of the two with one ResNet-10 SGD step per batch (``train_step``; the
  reference with ``loss.item()`` each step, as its loss meter does).

Figures: images/s (median over windows and range), per-round ratios bkdbench / reference for the
pipeline alone and with the step. A benchmark, never a timed test: the target (pipeline alone ≥ 5×
the reference on the same cores) is checked by reading the JSON, docs/performance.md.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from bkdbench.bench.measure import Windows, load_average, machine_info, ratio, summary, sync, window
from bkdbench.data import DeviceLoader
from bkdbench.data.large import lists as splitlist, store as splitstore
from bkdbench.data.imagenet_augment import JITTER, RATIO, SCALE, place
from bkdbench.data.large.imagenet_lt import IMAGENET_LT
from bkdbench.methods import build as build_method
from bkdbench.models import create_model
from bkdbench.training.train import channels_last_for, device_name, train_step

NAME = "imagenet-lt-synthetic"
IMAGENET_LT_TRAIN = 115_846  # "seconds_per_epoch": an ImageNet-LT epoch at the measured rate
SHAPES = ((500, 375), (375, 500), (500, 333), (500, 500), (640, 480), (333, 500))  # (width, height)


@dataclass(frozen=True)
class LargeBenchConfig:
    images: int = 640  # training JPEGs written (plus one val and one test image per class)
    classes: int = 10
    sizes: tuple = (224, 112)  # crop sizes measured; the store is size / 0.875
    batch_size: int = 64  # pipeline alone
    model: str = "resnet10"
    model_batch_size: int = 32  # with a ResNet-10 step (a CPU fits no 512 batch at 224 in a short window)
    rounds: int = 4
    steps: int = 4  # batches per window, pipeline alone
    model_steps: int = 2  # batches per window, with the step
    warmup_steps: int = 2
    num_workers: Optional[int] = None  # the reference's loader workers: every core
    preset: str = "default"


PRESETS = {
    "default": LargeBenchConfig(),  # several minutes on 2 CPU cores
    "full": LargeBenchConfig(images=1280, rounds=6, steps=6, model_steps=3, preset="full"),
    "quick": LargeBenchConfig(images=24, classes=3, sizes=(32, 16), batch_size=8, model_batch_size=4, rounds=1,
                              steps=1, model_steps=1, warmup_steps=1, num_workers=1, preset="quick"),
}


def write_tree(root: Path, config: LargeBenchConfig, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """The JPEG files and the three ImageNet-LT lists under ``root``; returns (train files, labels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files, labels, lines = [], [], {"train": [], "val": [], "test": []}

    def jpeg(rel: str, index: int) -> Path:
        w, h = SHAPES[index % len(SHAPES)]
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        return path

    for i in range(config.images):
        label = i % config.classes
        rel = f"train/n{label:08d}/n{label:08d}_{i}.JPEG"
        files.append(jpeg(rel, i))
        labels.append(label)
        lines["train"].append(f"{rel} {label}")
    for label in range(config.classes):
        for split, folder in (("val", "train"), ("test", "val")):
            rel = f"{folder}/n{label:08d}/{split}_{label}.JPEG"
            jpeg(rel, label)
            lines[split].append(f"{rel} {label}")
    for split, split_lines in lines.items():
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(split_lines) + "\n")
    return files, np.array(labels, dtype=np.int64)


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], labels: np.ndarray, transform):
        self.files, self.labels, self.transform = [str(f) for f in files], labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), int(self.labels[i])


class _Step:
    """One ResNet-10 SGD step per batch (or none: ``model=None``, the pipeline alone)."""

    def __init__(self, model: Optional[str], classes: int, device: torch.device, counts: list[int]):
        self.model = None
        if model:
            torch.manual_seed(0)
            self.channels_last = channels_last_for(device)
            self.model = create_model(model, classes, 3).to(device)
            if self.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
            self.method = build_method("ce", counts, epochs=90)


def _endless(loader):
    while True:
        yield from loader


class _Batches:
    """Batches of a DataLoader without end (a new epoch when one ends), and its workers' pids."""

    def __init__(self, loader):
        self.loader, self.it = loader, iter(loader)

    def __next__(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def pids(self) -> list[int]:
        return [w.pid for w in getattr(self.it, "_workers", []) if w.pid is not None]


class ReferenceLarge(_Step):
    pack = 0

    def __init__(self, name: str, files, labels, size: int, batch: int, workers: int, device: torch.device,
                 model: Optional[str], counts: list[int]):
        from torchvision import transforms as T

        super().__init__(model, len(counts), device, counts)
        self.name, self.device = name, device
        transform = T.Compose([T.RandomResizedCrop(size, scale=SCALE, ratio=RATIO), T.RandomHorizontalFlip(),
                               T.ColorJitter(*JITTER), T.ToTensor(),
                               T.Normalize(splitlist.IMAGENET_MEAN, splitlist.IMAGENET_STD)])
        self.loader = torch.utils.data.DataLoader(_Files(files, labels, transform), batch_size=batch, shuffle=True,
                                                  num_workers=workers, pin_memory=device.type == "cuda", drop_last=True)
        self.prefetched = workers * 2 if workers else 0  # DataLoader's prefetch_factor is 2
        self._it = None

    def before_window(self) -> None:
        self._it = _Batches(self.loader)
        for _ in range(self.prefetched):  # workers started and the queue at its steady state
            next(self._it)

    def after_window(self) -> None:
        self._it = None  # the workers end: they take no CPU from the next window

    def run(self, steps: int) -> int:
        if self._it is None:  # called outside ``measure.window``
            self.before_window()
        seen = 0
        for _ in range(steps):
            x, y = next(self._it)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.model is not None:
                self.model.train()
                loss = F.cross_entropy(self.model(x), y)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                loss.item()  # the reference's loss meter: a host sync every step
            seen += len(y)
        return seen

    def worker_pids(self) -> list[int]:
        return self._it.pids() if self._it is not None else []


class BkdbenchLarge(_Step):
    pack = 0

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor, size: int, batch: int,
                 device: torch.device, model: Optional[str], counts: list[int]):
        super().__init__(model, len(counts), device, counts)
        self.name, self.device = name, device
        self.loader = DeviceLoader(images, labels, batch, splitlist.IMAGENET_MEAN, splitlist.IMAGENET_STD, pad=0,
                                   hflip=True, seed=0, augmentation="imagenet", image_size=size, device=device,
                                   drop_last=True)
        self._batches = _endless(self.loader)

    def run(self, steps: int) -> int:
        seen = 0
        for _ in range(steps):
            x, y = next(self._batches)
            if self.model is not None:
                self.model.train()
                x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
                train_step(self.model, self.optimizer, self.method, x, y, epoch=0)
            seen += len(y)
        return seen

    def worker_pids(self) -> list[int]:
        return []


def run_large_bench(config: LargeBenchConfig = PRESETS["default"], *, device: Optional[str | torch.device] = None,
                    work_dir: Optional[Path] = None, progress: Optional[Callable[[str], None]] = None,
                    command: Optional[str] = None) -> dict:
    """Write the files, decode the store once per size, measure the four pipelines per size; return the
    figures as a JSON-able dict (module docstring). ``work_dir`` (default: a temporary folder) holds
    the files and the store; it is removed afterwards."""
    import sys

    from bkdbench import __version__
    from bkdbench.bench.run import _git_sha, _torchvision_version

    say = progress or (lambda _msg: None)
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    workers = config.num_workers if config.num_workers is not None else splitstore.decode_workers()
    started, tick, load_start = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), time.perf_counter(), load_average()
    folder = Path(tempfile.mkdtemp(prefix="bkdbench-bench-", dir=work_dir))
    cache_before = os.environ.get(splitstore.CACHE_ENV)
    try:
        say(f"writing {config.images} synthetic JPEGs")
        t0 = time.perf_counter()
        files, labels = write_tree(folder / "images", config)
        write_seconds = time.perf_counter() - t0
        mb = sum(f.stat().st_size for f in files) / 2**20
        counts = np.bincount(labels, minlength=config.classes).tolist()
        benchmark = replace(IMAGENET_LT, name=NAME, num_classes=config.classes)
        os.environ[splitstore.CACHE_ENV] = str(folder / "cache")
        sizes = {}
        for size in config.sizes:
            store = splitlist.store_size_for(size)
            say(f"decoding the store at {store}px ({workers} processes)")
            t0 = time.perf_counter()
            stored = splitstore.load_listing(splitlist.scan(folder / "images", benchmark, store))
            decode = time.perf_counter() - t0
            decoded = sum(len(a) for a in (stored.arrays.train_x, stored.arrays.val_x, stored.arrays.test_x))
            x = place(stored.arrays.train_x, device)
            y = torch.from_numpy(stored.arrays.train_y).to(device)
            pipes = []
            for model, batch in ((None, config.batch_size), (config.model, config.model_batch_size)):
                suffix = "" if model is None else f"+{model}"
                pipes.append([ReferenceLarge(f"reference{suffix}", files, labels, size, batch, workers, device, model, counts),
                              BkdbenchLarge(f"bkdbench{suffix}", x, y, size, batch, device, model, counts)])
            records, warm = {}, {}
            for pair, steps in zip(pipes, (config.steps, config.model_steps)):
                for pipe in pair:
                    say(f"{size}px: warming up {pipe.name}")
                    t0 = time.perf_counter()
                    window(pipe, config.warmup_steps, device, Windows())  # untimed: allocator, oneDNN, workers
                    warm[pipe.name] = time.perf_counter() - t0
                    records[pipe.name] = Windows()
                for r in range(config.rounds):
                    for pipe in (pair if r % 2 == 0 else pair[::-1]):
                        ips = window(pipe, steps, device, records[pipe.name])
                        say(f"{size}px round {r + 1}/{config.rounds}  {pipe.name}: {ips:.0f} images/s")
            sizes[str(size)] = {
                "store_size": store,
                "decode": {"seconds": decode, "images": decoded, "images_per_second": decoded / decode,
                           "processes": min(splitstore.decode_workers(), max(1, -(-decoded // splitstore._CHUNK)))},
                "pipelines": {name: summary(rec, IMAGENET_LT_TRAIN, _describe(name, size, workers), warmup_seconds=warm[name])
                              for name, rec in records.items()},
                "pipeline_ratio": ratio(records["bkdbench"].images_per_second, records["reference"].images_per_second),
                "step_ratio": ratio(records[f"bkdbench+{config.model}"].images_per_second,
                                    records[f"reference+{config.model}"].images_per_second),
            }
            for pair in pipes:  # the reference's workers end now, not at exit
                del pair[:]
            del stored, x, y
    finally:
        if cache_before is None:
            os.environ.pop(splitstore.CACHE_ENV, None)
        else:
            os.environ[splitstore.CACHE_ENV] = cache_before
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "schema_version": 1, "dataset": NAME,
        "command": command or " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "started_at": started, "device": device_name(device), "device_type": device.type,
        "torch_version": torch.__version__, "torchvision_version": _torchvision_version(),
        "bkdbench_version": __version__, "git_sha": _git_sha(),
        "machine": {**machine_info(), "load_average_start": load_start, "load_average_end": load_average()},
        "config": {**asdict(config), "num_workers": workers},
        "files": {"count": len(files), "megabytes": mb, "write_seconds": write_seconds,
                  "shapes": [list(s) for s in SHAPES]},
        "sizes": sizes, "target": "pipeline_ratio (bkdbench / reference, pipeline alone) >= 5 on the same cores",
        "seconds": time.perf_counter() - tick,
    }


def _describe(name: str, size: int, workers: int) -> str:
    step = " + one ResNet-10 SGD step per batch" if "+" in name else " (pipeline alone)"
    if name.startswith("reference"):
        return (f"DataLoader, {workers} workers: PIL open/convert, RandomResizedCrop({size}), flip, ColorJitter(0.4, 0.4, "
                f"0.4, 0), ToTensor, Normalize per image, copy to the device" + step)
    return f"DeviceLoader over the uint8 store: batched random-resized crop to {size}, flip, jitter, normalise" + step


def model_throughput(device: str | torch.device, *, model: str = "resnet50", image_size: int = 224, batch: int = 256,
                     steps: int = 20, warmup: int = 5, rounds: int = 3, images: int = 2048, epochs: int = 90,
                     recipe: str = "imagenet-lt", progress: Optional[Callable[[str], None]] = None) -> dict:
    """Training and evaluation images/s of ``model`` at ``image_size`` on synthetic uint8 stores (random
    pixels: speed does not depend on them), through ``DeviceLoader``'s ImageNet augmentation and
    ``train_step`` as ``train`` runs them (bf16 autocast and channels_last on CUDA); and the projected
    wall time of an ``epochs``-epoch ImageNet-LT run of the recipe (115,846 training images per
    epoch; 20,000 val + 50,000 test images evaluated at each of its evaluation epochs)."""
    import statistics

    from bkdbench.specs.recipes import get_recipe
    from bkdbench.training.evaluate import predict
    from bkdbench.training.train import training_device

    say = progress or (lambda _msg: None)
    device, autocast = training_device(device, False)
    store = splitlist.store_size_for(image_size)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, 256, (images, 3, store, store), dtype=torch.uint8, generator=gen).to(device)
    y = torch.arange(images, device=device) % 1000
    counts = [max(1, images // 1000)] * 1000
    loader = DeviceLoader(x, y, batch, splitlist.IMAGENET_MEAN, splitlist.IMAGENET_STD, pad=0, hflip=True, seed=0,
                          augmentation="imagenet", image_size=image_size, device=device, drop_last=True)
    step = _Step(model, 1000, device, counts)
    net, layout = step.model, (lambda t: t.contiguous(memory_format=torch.channels_last) if step.channels_last else t)
    batches = _endless(loader)

    def train(n: int) -> float:
        net.train()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            xb, yb = next(batches)
            train_step(net, step.optimizer, step.method, layout(xb), yb, epoch=0, autocast=autocast)
        sync(device)
        return n * batch / (time.perf_counter() - t0)

    say(f"{model} at {image_size}px: warming up")
    train(warmup)
    train_ips = []
    for r in range(rounds):
        train_ips.append(train(steps))
        say(f"{model} at {image_size}px round {r + 1}/{rounds}: {train_ips[-1]:.0f} training images/s")
    mean, std = loader.mean, loader.std
    prepare = lambda b: layout((loader.eval_batch(b).float().div_(255.0) - mean) / std)  # noqa: E731
    evaluated = x[: min(len(x), 4 * batch)]
    # float32 as train() evaluates; the second of two identical passes (cuDNN autotuning outside the timer)
    predict(net, evaluated, prepare)
    sync(device)
    t0 = time.perf_counter()
    predict(net, evaluated, prepare)
    sync(device)
    eval_ips = len(evaluated) / (time.perf_counter() - t0)
    rec = get_recipe(recipe)
    evaluations = len([e for e in range(epochs) if e == epochs - 1 or (e + 1) % rec.eval_every == 0])
    ips = statistics.median(train_ips)
    train_s, eval_s = epochs * IMAGENET_LT_TRAIN / ips, evaluations * 70_000 / eval_ips
    return {
        "model": model, "image_size": image_size, "batch": batch, "autocast": str(autocast) if autocast else None,
        "eval_precision": "float32",
        "train_images_per_second": ips, "train_images_per_second_rounds": train_ips,
        "eval_images_per_second": eval_ips,
        "projection": {"epochs": epochs, "recipe": recipe, "train_hours": train_s / 3600, "eval_hours": eval_s / 3600,
                       "hours": (train_s + eval_s) / 3600,
                       "how": f"{epochs} × 115,846 / training images/s + {evaluations} evaluations × 70,000 "
                              "(val 20,000 + test 50,000) / evaluation images/s; data resident on the device"},
    }
