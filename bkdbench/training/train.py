"""``train(spec)``: one long-tailed training run, top to bottom, no Ray, no printing.

Build the data (device-resident), the model, the method and its teacher; loop over epochs with the
recipe's learning-rate schedule; evaluate every ``eval_every`` epochs and always at the end; hand
each epoch's metrics to an optional ``report(metrics, make_checkpoint)`` callback, which is where
progress bars, Ray reporting and checkpoint saving hang off.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch

from bkdbench.data import DataError, DeviceLoader, load_longtail, normalize, restrict_classes
from bkdbench.data.imagenet_augment import place
from bkdbench.training import distributed as ddp
from bkdbench.training.evaluate import classification_metrics, predict
from bkdbench.methods import build as build_method, method_class
from bkdbench.models import create_model
from bkdbench.models.pretrained import load_into as load_pretrained
from bkdbench.provenance import provenance
from bkdbench.specs.recipes import get_recipe, history_lr
from bkdbench.specs import RunSpec, spec_columns

Report = Callable[[dict, Callable[[], dict]], None]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the run is recorded as failed with this reason."""


@dataclass
class RunResult:
    spec: RunSpec
    metrics: dict  # last-epoch test metrics + val_top1 + best-test-epoch ("paper protocol")
    history: list[dict]
    state_dict: dict
    class_counts: list[int]
    train_seconds: float
    images_per_second: float
    device: str
    started_at: datetime
    finished_at: datetime
    extra: Optional[dict] = None  # what a method chose while training (e.g. τ-norm's τ, chosen on validation)
    workers: int = 1  # data-parallel workers that trained the run (training/distributed.py)
    precision: str = "fp32"  # the autocast the run trained under, and the teacher's (always fp32)
    select: str = "last"  # which epoch's weights the row reports ("best-val": the best validation epoch)

    def to_row(self, **tags) -> dict:
        """A leaderboard row (plain Python values) for this run; ``tags`` sets suite/sweep_id/..."""
        keep = ("top1", "top1_best_epoch", "best_epoch", "val_top1", "many", "medium", "few", "ece", "nll", "per_class_acc")
        return {
            **spec_columns(self.spec), "status": "finished",
            **{k: self.metrics.get(k) for k in keep}, "class_counts": list(self.class_counts),
            "train_seconds": self.train_seconds, "images_per_second": self.images_per_second,
            "device": self.device, "torch_version": torch.__version__,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "extra": json.dumps(self.extra, sort_keys=True) if self.extra else None, **provenance(), **tags,
            **({"workers": self.workers} if self.workers > 1 else {}),  # one worker: the row as before
            "effective_batch": get_recipe(self.spec.recipe).batch_size,  # the global batch; each worker takes 1/workers
            "precision": self.precision, "select": self.select,
        }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def training_device(device: Optional[str | torch.device], bf16: bool) -> tuple[torch.device, Optional[torch.dtype]]:
    """The device to train on (CUDA when there is one) and the autocast dtype: bf16 on CUDA always,
    on CPU only when asked (``bf16``); cuDNN picks its fastest kernels on CUDA."""
    device = torch.device(device) if device else default_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device, (torch.bfloat16 if (device.type == "cuda" or bf16) else None)


def precision_of(autocast: Optional[torch.dtype], method) -> str:
    """The row's ``precision``: the student's autocast; a distilling method's teacher runs in fp32."""
    student = "bf16 autocast" if autocast == torch.bfloat16 else ("fp32" if autocast is None else f"{autocast} autocast")
    return student + (", teacher fp32" if method.needs_teacher and not method.stage1 and autocast is not None else "")


def channels_last_for(device: torch.device) -> bool:
    """channels_last (NHWC) activations and weights: the same math in another memory layout. On CUDA as
    usual; on CPU it made oneDNN's convolutions faster too (ResNet-32 +18%, digits CNN +15–27%, 1 thread,
    alternated rounds; docs/performance.md)."""
    return device.type in ("cuda", "cpu")


def build_model(spec: RunSpec, num_classes: int, channels: int, head: str, device: torch.device,
                init: bool = True) -> torch.nn.Module:
    """``spec``'s model with its initial weights: seeded, then its ``--pretrained`` weights loaded
    (every key but a classifier of another shape; models/pretrained.py). ``init=False``: a model whose
    state is loaded next (a teacher), which skips reading the file."""
    torch.manual_seed(spec.init_seed)  # same spec, same initial weights (a student's differ from its teacher's)
    model = create_model(spec.model, num_classes, channels, head=head, **({"weights": spec.weights} if spec.weights else {}))
    if spec.pretrained and init:
        load_pretrained(model, spec.pretrained)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last_for(device) else model


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, method, x: torch.Tensor, y: torch.Tensor, *,
               epoch: int, teacher: Optional[torch.nn.Module] = None, autocast: Optional[torch.dtype] = None,
               views=()) -> torch.Tensor:
    """One step of ``method`` on a prepared batch (normalised, laid out): its own ``train_step``, the
    plain one unless it owns another. ``bkdbench bench`` times this very function."""
    return method.train_step(model, optimizer, x, y, epoch=epoch, teacher=teacher, autocast=autocast, views=views)


def load_run_data(spec: RunSpec, data_dir: Optional[Path]):
    """The long-tailed data of ``spec`` (only its ``train_classes`` when set); refuses an image folder
    whose contents are not the run's."""
    data = load_longtail(spec.dataset, spec.imbalance_factor, spec.profile, spec.data_seed, data_dir,
                         image_size=spec.image_size, split=spec.split, val_per_class=spec.val_per_class)
    if data.info.data_key != spec.data_key:  # an image folder's contents are part of the run's identity
        raise DataError(f"{data_dir} holds other images than run {spec.run_id} was made for (content key "
                        f"{data.info.data_key}, the run's {spec.data_key}); make the run again for this folder")
    return restrict_classes(data, spec.train_classes) if spec.train_classes else data


def frozen_teacher(spec: RunSpec, state: dict, num_classes: int, channels: int, device: torch.device) -> torch.nn.Module:
    """A teacher in eval mode without gradients, in the finished shape of its own method (e.g. an LWS
    run's scaled classifier); a class-subset teacher predicts only its own classes."""
    num_classes = len(spec.train_classes) if spec.train_classes else num_classes
    cls = method_class(spec.method)
    teacher = build_model(spec, num_classes, channels, cls.head, device, init=False)
    cls.restructure(teacher)
    teacher.load_state_dict(state)
    return teacher.eval().requires_grad_(False)


def frozen_teachers(spec: RunSpec, states, num_classes: int, channels: int, device: torch.device):
    """The frozen teacher of ``spec``, or the list of them for a method with several (``spec.teachers``)."""
    if spec.teachers:
        if not isinstance(states, (list, tuple)) or len(states) != len(spec.teachers):
            raise ValueError(f"{spec.method} needs {len(spec.teachers)} teacher states, one per teacher")
        return [frozen_teacher(t, st, num_classes, channels, device) for t, st in zip(spec.teachers, states)]
    return frozen_teacher(spec.teacher, states, num_classes, channels, device)


def device_splits(data, device: torch.device, evaluate_test: bool):
    """(train images, train labels, {"val": ..., "test": ...}) as tensors on ``device``; the test split
    only when it may be evaluated."""
    to_dev = lambda a: place(a, device)  # noqa: E731  (a store too large for the device stays in host memory)
    train_x = to_dev(data.train_x)  # first: the largest, and the one gathered every step
    splits = {"val": (to_dev(data.val_x), to_dev(data.val_y))}
    if evaluate_test:
        splits["test"] = (to_dev(data.test_x), to_dev(data.test_y))
    return train_x, to_dev(data.train_y), splits


def train(
    spec: RunSpec,
    *,
    report: Optional[Report] = None,
    data_dir: Optional[Path] = None,
    device: Optional[str | torch.device] = None,
    teacher_state: Optional[dict] = None,
    checkpoint: Optional[dict] = None,
    evaluate_test: bool = True,
    bf16: bool = False,
    compile: bool = False,
    distributed: Optional[ddp.Distributed] = None,
) -> RunResult:
    """Train ``spec`` and return its result. ``checkpoint`` (from ``make_checkpoint``) resumes a run;
    ``evaluate_test=False`` never touches the test split (hyperparameter search);
    ``bf16`` turns on bf16 autocast on CPU (always on for CUDA); ``compile`` trains through
    ``torch.compile(model)`` (evaluation uses the plain model; the weights are the same tensors).
    ``distributed``: this worker's rank and the world size of an initialised process group; several
    workers train one run data-parallel (training/distributed.py); None is one process."""
    dist_ = distributed or ddp.SINGLE
    started = datetime.now(timezone.utc)
    device, autocast = training_device(device, bf16)
    recipe = get_recipe(spec.recipe)
    data = load_run_data(spec, data_dir)
    info, num_classes = data.info, len(data.classes)
    method = build_method(spec.method, data.class_counts, epochs=spec.epochs, batch_size=recipe.batch_size, **spec.params)

    model = build_model(spec, num_classes, info.channels, method.head, device)
    if hasattr(method, "use_classnames"):  # foundation methods: prompts from class names (data/classnames.py)
        from bkdbench.data.classnames import class_names

        method.use_classnames(class_names(spec.dataset, data.classes, num_classes, data_dir,
                                          str(spec.params.get("classnames", "dataset"))))
    if dist_.active and dist_.sync_batchnorm:
        model = ddp.convert_batchnorm(model, device)  # statistics over the global batch
    trainable = list(model.parameters()) + method.attach(model)  # e.g. CBD's projection, a second head
    teacher = None
    if method.needs_teacher:
        if teacher_state is None:
            raise ValueError(f"{spec.method} needs a teacher: pass teacher_state (see bkdbench.training.teachers)")
        if method.stage1:  # decoupled classifiers, SSD-LT stage II: the "teacher" is where this run starts
            trainable = method.prepare(model, teacher_state)
        else:
            teacher = frozen_teachers(spec, teacher_state, num_classes, info.channels, device)

    train_x, train_y, splits = device_splits(data, device, evaluate_test)
    loader = DeviceLoader(train_x, train_y, recipe.batch_size, info.mean, info.std, pad=info.pad, hflip=info.hflip,
                          sampler=method.sampler, seed=spec.order_seed, drop_last=method.drop_last,
                          second_view=method.second_view if method.views == 2 else None,
                          augmentation=info.augmentation, image_size=info.image_size, device=device,
                          rank=dist_.rank, world_size=dist_.world_size,
                          color_jitter=method.color_jitter)  # CBD's jittered teachers (ce-cosine20)
    mean, std = loader.mean, loader.std
    for net in (model, *(teacher if isinstance(teacher, list) else [teacher])):
        if hasattr(net, "set_input_stats"):  # a foundation model resizes and renormalises on the device
            net.set_input_stats(mean, std)
    nhwc = channels_last_for(device)
    prepare = lambda x: _layout(normalize(loader.eval_batch(x), mean, std), nhwc)  # noqa: E731
    if checkpoint is None and hasattr(method, "init_from_data"):  # LIFT's class-mean head (methods/foundation.py)
        method.init_from_data(model, train_x, train_y, prepare)

    # A method that trains nothing (τ-norm) still gets an optimizer, so checkpoints keep one shape.
    optimizer = torch.optim.SGD(trainable or [torch.zeros((), device=device, requires_grad=True)], lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    step_model = torch.compile(model) if compile else model
    # session: 0 in the process that started the run, +1 each time it resumes from a checkpoint (every
    # history entry carries it, so a row shows where an interrupted run continued)
    start_epoch, history, best, session = 0, [], {"top1": -math.inf, "epoch": -1}, 0
    best_val: dict = {"top1": -math.inf, "epoch": -1, "model": None}  # select="best-val": its weights
    if checkpoint is not None:
        session = int(checkpoint.get("session", 0)) + 1
        best_val = dict(checkpoint.get("best_val", best_val))
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        restore_loader_rng(loader, checkpoint, spec.order_seed)
        method.load_state_dict(checkpoint.get("method", {}))
        start_epoch, history, best = checkpoint["epoch"], list(checkpoint["history"]), dict(checkpoint["best"])
    if dist_.active:  # after a restore: DDP starts every worker from rank 0's weights
        ddp.check_supported(method, model, trainable)
        step_model = ddp.wrap_model(model, dist_, device)
        step_model = torch.compile(step_model) if compile else step_model

    def evaluate(split: str, module: Optional[torch.nn.Module] = None) -> dict:
        x, y = splits[split]
        # float32 always: tied bf16 logits resolve to class 0, the head class (0.2 % of digits predictions tie)
        logits = method.eval_logits(predict(module or method.eval_model(model), x, prepare))
        return classification_metrics(logits, y, num_classes, data.shots)

    train_seconds, seen = sum(h["seconds"] for h in history), sum(h["images"] for h in history)
    last_eval: dict = {}
    for epoch in range(start_epoch, spec.epochs if method.trains else start_epoch):
        lrs = recipe.epoch_lrs(epoch, spec.epochs, len(loader))  # one per batch: they differ only in warm-up
        lr = history_lr(lrs)
        method.set_train_mode(model)  # model.train(), or frozen parts kept in eval mode
        tick = time.perf_counter()
        loss_sum, images = torch.zeros((), device=device), 0
        for step, (x, y, *views) in enumerate(loader):
            if dist_.active:
                ddp.set_shard_size(step_model, dist_, len(y), loader.global_batch)
            if step == 0 or lrs[step] != lrs[step - 1]:  # a Python float, no host sync
                for group in optimizer.param_groups:
                    group["lr"] = lrs[step]
            loss = train_step(step_model, optimizer, method, _layout(x, nhwc), y, epoch=epoch, teacher=teacher,
                              autocast=autocast, views=[_layout(v, nhwc) for v in views])
            loss_sum += loss * len(y)
            images += len(y)
        if dist_.active:
            loss_sum, images = ddp.epoch_totals(loss_sum, images)
        train_loss = float(loss_sum) / max(images, 1)  # the one host sync of the epoch
        seconds = time.perf_counter() - tick
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss became {train_loss} at epoch {epoch} ({spec.label()})")
        train_seconds, seen = train_seconds + seconds, seen + images
        metrics = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "seconds": seconds, "images": images,
                   "session": session}
        last = epoch == spec.epochs - 1
        if last or (epoch + 1) % recipe.eval_every == 0:
            last_eval = {"val": evaluate("val")}
            metrics["val_top1"] = last_eval["val"]["top1"]
            if spec.select == "best-val" and metrics["val_top1"] > best_val["top1"]:  # first best kept on ties
                best_val = {"top1": metrics["val_top1"], "epoch": epoch,
                            "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            if evaluate_test:
                last_eval["test"] = evaluate("test")
                metrics["test_top1"] = last_eval["test"]["top1"]
                if metrics["test_top1"] > best["top1"]:  # the papers' protocol, stored but never used to choose
                    best = {"top1": metrics["test_top1"], "epoch": epoch}
        history.append(metrics)
        if report is not None:
            state = {"epoch": epoch + 1, "history": history, "best": best, "session": session,
                     **({"best_val": best_val} if spec.select == "best-val" else {})}
            report(metrics, lambda: _checkpoint(model, optimizer, loader, state, method))

    if spec.select == "best-val" and best_val["model"] is not None and best_val["epoch"] != len(history) - 1:
        model.load_state_dict(best_val["model"])  # Kang's state_dict_best: reported, and passed on as a teacher
        last_eval = {}
    extra = method.finalize(model, lambda: evaluate("val")["top1"])
    if spec.select == "best-val":
        extra = {**extra, "best_val_epoch": best_val["epoch"]}
    if extra and set(extra) != {"best_val_epoch"}:  # e.g. τ-norm chose its τ on validation: evaluate again
        last_eval = {}
    if not last_eval:  # nothing trained (resumed from the last epoch, or a no-training method)
        last_eval = {"val": evaluate("val"), **({"test": evaluate("test")} if evaluate_test else {})}
    for name, head in method.report_heads(model).items():  # e.g. SSD-LT's hard head next to its soft one
        extra[f"{name}_val_top1"] = evaluate("val", head)["top1"]
        if evaluate_test:
            extra[f"{name}_top1"] = evaluate("test", head)["top1"]
    final = dict(last_eval.get("test", {}))
    final.update(val_top1=last_eval["val"]["top1"], top1_best_epoch=best["top1"] if evaluate_test else None,
                 best_epoch=best["epoch"] if evaluate_test else None)
    result = RunResult(
        spec=spec, metrics=final, history=history, state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        class_counts=list(data.class_counts), train_seconds=train_seconds,
        images_per_second=seen / train_seconds if train_seconds > 0 else 0.0,
        device=device_name(device), started_at=started, finished_at=datetime.now(timezone.utc), extra=extra,
        precision=precision_of(autocast, method), select=spec.select or "last",
    )
    if dist_.active:
        result.workers, result.device = dist_.world_size, ddp.device_names(result.device, dist_)
    return result


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _checkpoint(model, optimizer, loader, state: dict, method=None) -> dict:
    """A plain dict of tensors and Python values, loadable with ``torch.load(weights_only=True)``."""
    kept = method.state_dict() if method is not None else {}
    return {
        **({"method": copy.deepcopy(kept)} if kept else {}),  # e.g. Breadcrumb's feature queues
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # a snapshot, not the live momentum buffers
        **loader_rng_state(loader),
        **{k: (list(v) if k == "history" else v) for k, v in state.items()},
    }


CPU_RNG_BYTES = 5056  # a CPU generator's state; a CUDA generator's is its seed and offset (16 bytes)


def loader_rng_state(loader) -> dict:
    """The loader's random streams for a checkpoint: its device generator's state with the kind of
    device it belongs to (a CPU and a CUDA generator's states do not fit each other), and the host
    stream of its per-batch choices (data/augment.py ``host_rng``), which is the same on any device."""
    from bkdbench.data.augment import host_rng_state

    return {"loader_rng": loader.generator.get_state(), "loader_rng_device": loader.generator.device.type,
            "loader_host_rng": host_rng_state(loader.generator)}


def restore_loader_rng(loader, checkpoint: dict, order_seed: int) -> None:
    """Resume the loader's streams from ``checkpoint``. A state saved on another kind of device (a run
    checkpointed on the CPU, resumed on CUDA, or back) cannot drive this generator: it restarts from a
    seed of the run's order seed and the checkpoint's epoch instead (the batches differ from an
    uninterrupted run's, as they would on another device anyway); model, optimizer, method state and
    the host stream resume exactly."""
    from bkdbench.data.augment import set_host_rng_state

    state = checkpoint["loader_rng"]
    saved_on = checkpoint.get("loader_rng_device") or ("cpu" if state.numel() == CPU_RNG_BYTES else "cuda")
    if saved_on == loader.generator.device.type:
        loader.generator.set_state(state)
    else:
        loader.generator.manual_seed(order_seed * 1_000_003 + int(checkpoint.get("epoch", 0)))
    if "loader_host_rng" in checkpoint:
        set_host_rng_state(loader.generator, checkpoint["loader_host_rng"])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
