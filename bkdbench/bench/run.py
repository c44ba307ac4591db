"""``bkdbench bench``: training throughput of bkdbench's pipeline against a reference-style one.

Everything runs in one process, on CIFAR-shaped synthetic data (uint8 32×32 RGB images, labels with
the CIFAR-100-LT IF100 class counts, 10,847 images), with ResNet-32 at batch 128:

(a) ``reference``: what the public LDAM-DRW / BKD code does: a torch DataLoader (shuffled, 2 workers on
    CPU, 4 on CUDA, pinned memory on CUDA) over a dataset that makes a PIL image per item and applies
    torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize; fp32,
    NCHW, SGD (momentum 0.9, weight decay 2e-4), and ``loss.item()`` each step (its loss meter).
(b) ``bkdbench``: the device-resident ``DeviceLoader`` and ``train.train_step``, as ``train`` runs them
    (memory layout and autocast as ``train`` chooses them for the device; fp32 on CPU).
    ``bkdbench_bf16`` (CPU only) is (b) under bf16 autocast; ``bkdbench_compile`` (``--compile``) is
    (b) with the model under ``torch.compile``.
(c) ``bkd_teacher``: (b) training a BKD student with a frozen teacher's forward on every batch, and
    ``packed``: K BKD students with different α and T sharing each batch and one teacher forward
    (``packed.packed_step``). Its images/s counts student-images: K per batch.

(a) and (b) (and the other (b) variants) alternate in short windows, round after round, each round in
the opposite order of the last; so do ``bkd_teacher`` and ``packed``. Medians over windows, their
ranges, and the median over rounds of the per-round ratio b/a (``ratio``) go into one JSON file;
slow drifts and other processes' load hit both sides of a ratio alike. Each window also counts the
CPU seconds of this process and of the reference's loader workers (``images_per_cpu_second``,
``ratio_cpu``): with one torch thread, a figure other processes on the machine hardly move.

The configuration lives in ``config``, the pipelines in ``pipelines``, the timing and summaries in
``measure``; this module runs them and writes the JSON. No Ray, Optuna, typer or rich in any of them:
``benchmarks/gpu_check.py`` imports this package on GPU machines.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Callable, Optional

import torch

from bkdbench import __version__
from bkdbench.bench.config import PRESETS, SCHEMA_VERSION, BenchConfig
from bkdbench.bench.measure import Windows, load_average, machine_info, ratio, summary, sync, window
from bkdbench.bench.pipelines import EPOCHS_REFERENCE, BkdbenchPipeline, ReferencePipeline, synthetic_cifar
from bkdbench.models.packing import resolve_strategy
from bkdbench.training.train import device_name

EVAL_IMAGES_C100 = 10000 + 100 * 20  # CIFAR-100-LT: the test set and the validation split (20 per class)


def run_bench(config: BenchConfig = PRESETS["default"], *, device: Optional[str | torch.device] = None,
              progress: Optional[Callable[[str], None]] = None, command: Optional[str] = None) -> dict:
    """Measure every pipeline; return the figures as a JSON-able dict (see the module docstring)."""
    say = progress or (lambda _msg: None)
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as train() does
    started, tick, load_start = datetime.now(timezone.utc), time.perf_counter(), load_average()
    images, labels = synthetic_cifar(config)
    n = config.images
    autocast = torch.bfloat16 if cuda else None  # what train() uses on this device by default
    notes: list[str] = []

    say(f"building the pipelines on {device_name(device)} ({n} images, {config.model}, batch {config.batch_size})")
    ref = ReferencePipeline(config, images, labels, device)
    ours = BkdbenchPipeline("bkdbench", config, images, labels, device, autocast=autocast)
    main = [ref, ours]
    if config.bf16 and not cuda:
        main.append(BkdbenchPipeline("bkdbench_bf16", config, images, labels, device, autocast=torch.bfloat16, shared=ours))
    if config.compile:
        main.append(BkdbenchPipeline("bkdbench_compile", config, images, labels, device, autocast=autocast,
                                     compile=True, shared=ours))
    second: list[BkdbenchPipeline] = []
    if config.pack > 0:
        second.append(BkdbenchPipeline("bkd_teacher", config, images, labels, device, method="bkd", autocast=autocast,
                                       shared=ours))
        chosen = resolve_strategy(config.strategy, device)
        strategies = [chosen] + ([s for s in ("loop", "grouped") if s != chosen] if config.compare_strategies else [])
        for i, strategy in enumerate(strategies):
            second.append(BkdbenchPipeline("packed" if i == 0 else f"packed_{strategy}", config, images, labels, device,
                                           method="bkd", autocast=autocast, pack=config.pack, shared=ours,
                                           strategy=strategy))

    warmup = {}
    for pipe in list(main + second):  # first steps: worker start-up, allocator, oneDNN/cuDNN choices, compilation
        say(f"warming up {pipe.name}")
        t0 = time.perf_counter()
        try:
            pipe.run(1 if pipe.pack else config.warmup_steps)
            sync(device)
        except Exception as exc:  # torch.compile needs a compiler toolchain; report, measure the rest
            if pipe.name != "bkdbench_compile":
                raise
            main.remove(pipe)
            notes.append(f"torch.compile failed, not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            continue
        warmup[pipe.name] = time.perf_counter() - t0

    records = {p.name: Windows() for p in main + second}
    for r in range(config.rounds):
        for pipe in (main if r % 2 == 0 else main[::-1]):
            ips = window(pipe, config.steps, device, records[pipe.name])
            say(f"round {r + 1}/{config.rounds}  {pipe.name}: {ips:.0f} images/s")
    for r in range(config.pack_rounds if second else 0):
        for pipe in (second if r % 2 == 0 else second[::-1]):
            # about as long a window for the single student as for the pack
            steps = config.pack_steps if pipe.pack else config.pack_steps * max(1, config.pack // 2)
            ips = window(pipe, steps, device, records[pipe.name])
            say(f"round {r + 1}/{config.pack_rounds}  {pipe.name}: {ips:.0f} student-images/s")

    eval_seconds = _eval_seconds(ours, config, device, autocast)

    describe = {
        "reference": f"torch DataLoader, {ref.num_workers} workers, PIL RandomCrop/Flip/ToTensor/Normalize per image, "
                     "fp32 NCHW, loss.item() every step",
        "bkdbench": "DeviceLoader + train_step as train() runs it ("
                    + ("bf16 autocast" if cuda else "fp32") + (", channels_last)" if ours.channels_last else ")"),
        "bkdbench_bf16": "as bkdbench, under bf16 autocast (not exact fp32 math)",
        "bkdbench_compile": "as bkdbench, model under torch.compile",
        "bkd_teacher": "as bkdbench, BKD student with a frozen teacher's forward each batch",
    }
    pipelines = {}
    for pipe in main + second:
        extra = {"warmup_seconds": warmup[pipe.name]}
        if pipe.pack:
            extra.update(students=pipe.pack, strategy=pipe.strategy)
            describe[pipe.name] = (f"{pipe.pack} BKD students (different alpha, T), {pipe.strategy} strategy, sharing "
                                   "each batch and one teacher forward; images/s counts student-images")
        if pipe is ref:
            extra["num_workers"] = ref.num_workers
        pipelines[pipe.name] = summary(records[pipe.name], n, describe[pipe.name], **extra)

    ips = {name: rec.images_per_second for name, rec in records.items()}
    cps = {name: rec.images_per_cpu_second for name, rec in records.items()}
    headline = ratio(ips["bkdbench"], ips["reference"])
    out = {
        "schema_version": SCHEMA_VERSION,
        "command": command or " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "started_at": started.isoformat(timespec="seconds"),
        "device": device_name(device), "device_type": device.type,
        "torch_version": torch.__version__, "torchvision_version": _torchvision_version(),
        "bkdbench_version": __version__, "git_sha": _git_sha(),
        "machine": {**machine_info(), "load_average_start": load_start, "load_average_end": load_average()},
        "config": {**asdict(config), "images": n},
        "pipelines": pipelines,
        "ratio": headline["median"], "ratio_range": headline["range"], "ratio_detail": headline,
        # the same per CPU-second (this process + loader workers); robust to other load with --threads 1
        "ratio_cpu": ratio(cps["bkdbench"], cps["reference"]),
        "eval_seconds_c100": eval_seconds,
        "peak_memory_kind": ("torch.cuda.max_memory_allocated during the pipeline's windows" if cuda else
                             "proportional set size of the whole bench process (all pipelines share it) plus the "
                             "pipeline's loader workers, at the end of its windows"),
        "notes": notes,
    }
    if "bkdbench_bf16" in pipelines:
        out["bf16_speedup"] = ratio(ips["bkdbench_bf16"], ips["bkdbench"])
        out["bf16_speedup_cpu"] = ratio(cps["bkdbench_bf16"], cps["bkdbench"])
    if "bkdbench_compile" in pipelines:
        out["compile_speedup"] = ratio(ips["bkdbench_compile"], ips["bkdbench"])
        out["compile_speedup_cpu"] = ratio(cps["bkdbench_compile"], cps["bkdbench"])
        out["compile_seconds"] = warmup["bkdbench_compile"]
    if second:
        for pipe in second[1:]:  # "packed_vs_separate", then any other strategy's
            out[f"{pipe.name}_vs_separate"] = ratio(ips[pipe.name], ips["bkd_teacher"])
            out[f"{pipe.name}_vs_separate_cpu"] = ratio(cps[pipe.name], cps["bkd_teacher"])
        bkd_ips = pipelines["bkd_teacher"]["images_per_second"]
        epoch = n / bkd_ips
        out["bkd_200_epochs_estimate"] = {
            "seconds": EPOCHS_REFERENCE * (epoch + eval_seconds), "train_seconds_per_epoch": epoch,
            "eval_seconds_per_epoch": eval_seconds,
            "how": f"{EPOCHS_REFERENCE} × ({n} images / bkd_teacher images/s + one evaluation of "
                   f"{EVAL_IMAGES_C100} images), evaluation every epoch as the reference recipe does",
        }
    out["seconds"] = time.perf_counter() - tick
    return out


def _eval_seconds(pipe: "BkdbenchPipeline", config: BenchConfig, device: torch.device,
                  autocast: Optional[torch.dtype]) -> float:
    """One evaluation pass (``evaluate.predict``: eval mode, forward only) over ``eval_images`` images,
    scaled to CIFAR-100-LT's validation + test images. In float32, as ``train()`` evaluates (``autocast``
    is the training precision and is not used here), and the second of two identical passes: the first
    one's cuDNN autotuning of each batch shape stays out of the timer."""
    from bkdbench.training.evaluate import predict

    x = pipe.x[: min(config.eval_images, len(pipe.x))]
    prepare = lambda b: pipe._layout((b.float().div_(255.0) - pipe.loader.mean) / pipe.loader.std)  # noqa: E731
    predict(pipe.model, x, prepare)  # warm-up: the very pass timed next
    sync(device)
    t0 = time.perf_counter()
    predict(pipe.model, x, prepare)
    sync(device)
    return (time.perf_counter() - t0) * EVAL_IMAGES_C100 / len(x)


def _torchvision_version() -> Optional[str]:
    try:
        import torchvision

        return torchvision.__version__
    except ImportError:
        return None


def _git_sha() -> Optional[str]:
    try:
        from bkdbench.provenance import git_sha

        return git_sha()
    except Exception:  # provenance is best effort
        return None


def write_bench(result: dict, folder, prefix: str = "bench"):
    """Write ``result`` as ``<folder>/<prefix>-<device>-<time>.json`` (atomically, a local folder or a
    storage URI); return where it went."""
    from bkdbench.storage import Location

    folder = Location(folder)
    folder.make_dir()
    stamp = result.get("started_at", datetime.now(timezone.utc).isoformat()).replace(":", "").replace("+0000", "Z")
    device = "".join(c if c.isalnum() else "-" for c in result["device"].lower()).strip("-")
    path = folder / f"{prefix}-{device}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
