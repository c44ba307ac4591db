"""Packed training: K students that differ only in their method or its parameters (CE, re-weighting and
Balanced Softmax of one seed; KD and BKD students of one teacher; α, T, β, ...) trained at once.

The students share each augmented batch, one teacher forward per batch and one optimizer step
(SGD with momentum and weight decay is elementwise, so one SGD over all students is K independent
SGDs). The K student networks run as a ``LoopPack`` or a ``GroupedPack`` (``bkdbench/models/packing.py``),
chosen by ``strategy``: ``loop`` does exactly the floating-point operations of K separate runs;
``grouped`` fuses them into one grouped-convolution network (same math, other kernels, so float
rounding differs).

``auto`` picks ``loop`` on CPU, where oneDNN's grouped convolutions were 2-4x slower than K separate
ones (docs/performance.md), and ``grouped`` on CUDA, where one wide kernel should beat K small
launches of a small network; no GPU figure exists yet, and ``benchmarks/gpu_check.py`` measures both.
``tests/test_packed.py`` checks that K packed students end where K separate ``train`` runs end.
"""
from __future__ import annotations

import copy
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from bkdbench.data import DeviceLoader, normalize
from bkdbench.training.evaluate import classification_metrics, predict
from bkdbench.methods import build as build_method
from bkdbench.models.packing import pack_models, resolve_strategy
from bkdbench.specs.recipes import get_recipe, history_lr
from bkdbench.specs import RunSpec
from bkdbench.training.train import (RunResult, TrainingDiverged, device_name, _layout, build_model, channels_last_for,
                                     precision_of, device_splits, frozen_teacher, load_run_data,
                                     loader_rng_state, restore_loader_rng, training_device)

# report(per-student metrics, make_checkpoint): called once per epoch, like train()'s report.
PackedReport = Callable[[list[dict], Callable[[], dict]], None]


class PackedTrainingDiverged(TrainingDiverged):
    """One or more packed students' training loss became NaN or infinite; ``students`` holds their
    indices in the spec list. The other students were fine: train them again without these."""

    def __init__(self, message: str, students: list[int], reasons: Optional[dict[int, str]] = None):
        super().__init__(message)
        self.students = students
        self.reasons = reasons or {}  # per student, worded as a single run's TrainingDiverged


def packed_step(pack: nn.Module, optimizer: torch.optim.Optimizer, methods: Sequence, x: torch.Tensor,
                y: torch.Tensor, *, epoch: int, teacher: Optional[nn.Module] = None,
                autocast: Optional[torch.dtype] = None) -> torch.Tensor:
    """One optimisation step of every student on the shared batch ``x`` (already normalised and laid
    out); the teacher runs once. Returns the K losses, detached, without a host sync."""
    t_logits = None
    if teacher is not None:
        with torch.no_grad():  # fp32, outside autocast (methods/step.py says why)
            t_logits = teacher(x)
        t_logits = t_logits.float()
    optimizer.zero_grad(set_to_none=True)
    losses = pack.backward_losses(x, y, methods, epoch=epoch, teacher_logits=t_logits, autocast=autocast)
    optimizer.step()
    return losses


# ---------------------------------------------------------------- training


def pack_refusal(spec: RunSpec) -> Optional[str]:
    """Why ``spec`` cannot be a member of a pack, or None when it can."""
    from bkdbench.methods import Method, method_class

    cls = method_class(spec.method)
    own_step = cls.train_step is not Method.train_step  # two views, a momentum encoder, two heads (SSD-LT)
    own_head = cls.attach is not Method.attach  # packed students are built without attach (ce-cosine20's scale)
    if cls.uses_features or cls.stage1 or own_step or own_head or spec.teachers or spec.train_classes:
        return (f"{spec.method} cannot be packed (it needs features, several teachers, a stage-1 model, "
                "a training step or network modules of its own or a class subset): train its runs separately")
    if spec.select:  # the pack keeps no per-student best-validation weights
        return f"a run with --select {spec.select} cannot be packed: train its runs separately"
    return None


def pack_signature(spec: RunSpec) -> str:
    """What members of one pack must share: everything in the spec but the method and its parameters
    (data, split, model, recipe, epochs, seed, teacher) and what the method asks of the network and the
    loader (head, sampler, last partial batch). CE, re-weighting, focal and Balanced Softmax runs of one
    seed share a signature; KD, BKD and DKD students of one teacher share another; LDAM's cosine head
    has its own. The loader's seed comes from the spec (``order_seed``), so one signature is one
    batch order."""
    from bkdbench.methods import method_class

    cls = method_class(spec.method)
    fields = spec.model_dump(mode="json", exclude={"params", "method"})
    traits = {"head": cls.head, "sampler": cls.sampler, "drop_last": cls.drop_last,
              "order_seed": getattr(spec, "order_seed", spec.seed)}
    return json.dumps({"spec": fields, "method": traits}, sort_keys=True)


def check_packable(specs: Sequence[RunSpec]) -> None:
    """Students of one pack must be packable methods with one ``pack_signature``."""
    if len(specs) == 0:
        raise ValueError("train_packed needs at least one spec")
    for spec in specs:
        refusal = pack_refusal(spec)
        if refusal:
            raise ValueError(refusal)
    base = json.loads(pack_signature(specs[0]))
    seen = {specs[0].run_id: 0}
    for i, spec in enumerate(specs[1:], start=1):
        other = json.loads(pack_signature(spec))
        differ = sorted(key for part in ("spec", "method") for key in base[part] if base[part][key] != other[part][key])
        if differ:
            raise ValueError(f"packed students may differ only in their method and its parameters; spec {i} "
                             f"({spec.label()}) differs from spec 0 in {', '.join(differ)}: train those separately")
        if spec.run_id in seen:
            raise ValueError(f"spec {i} repeats spec {seen[spec.run_id]} (same run {spec.run_id}); pack each run once")
        seen[spec.run_id] = i


def train_packed(
    specs: Sequence[RunSpec],
    *,
    teacher_state: Optional[dict] = None,
    report: Optional[PackedReport] = None,
    data_dir: Optional[Path] = None,
    device: Optional[str | torch.device] = None,
    checkpoint: Optional[dict] = None,
    evaluate_test: bool = True,
    bf16: bool = False,
    strategy: str = "auto",
) -> list[RunResult]:
    """Train the students ``specs`` (identical except for the method and its parameters,
    with one ``pack_signature``, else ValueError) as one
    pack and return one RunResult per spec, each what ``train(spec)`` would give (up to float
    rounding with ``grouped``). Arguments mean what they mean for ``train``; ``report`` gets the list
    of the students' metrics each epoch; ``checkpoint`` (from its ``make_checkpoint``) resumes a pack.
    ``train_seconds`` is the pack's wall time and ``images_per_second`` one student's images over it
    (the pack's aggregate throughput is K times that). A student whose loss becomes NaN or infinite
    stops the pack with ``PackedTrainingDiverged`` naming it (``.students`` holds the indices)."""
    check_packable(specs)
    started = datetime.now(timezone.utc)
    spec0, k = specs[0], len(specs)
    device, autocast = training_device(device, bf16)
    strategy = resolve_strategy(strategy, device)
    recipe = get_recipe(spec0.recipe)
    data = load_run_data(spec0, data_dir)
    info, num_classes = data.info, len(data.classes)
    methods = [build_method(s.method, data.class_counts, epochs=s.epochs, batch_size=recipe.batch_size, **s.params)
               for s in specs]
    method0 = methods[0]  # its sampler is every member's (pack_signature)

    students = [build_model(s, num_classes, info.channels, m.head, device) for s, m in zip(specs, methods)]
    teacher = None
    if any(m.needs_teacher for m in methods):  # the members' one teacher (pack_signature)
        if teacher_state is None:
            raise ValueError(f"{spec0.method} needs a teacher: pass teacher_state (see bkdbench.training.teachers)")
        teacher = frozen_teacher(spec0.teacher, teacher_state, num_classes, info.channels, device)

    train_x, train_y, splits = device_splits(data, device, evaluate_test)
    loader = DeviceLoader(train_x, train_y, recipe.batch_size, info.mean, info.std, pad=info.pad, hflip=info.hflip,
                          sampler=method0.sampler, seed=spec0.order_seed,
                          augmentation=info.augmentation, image_size=info.image_size, device=device)
    mean, std = loader.mean, loader.std
    if hasattr(teacher, "set_input_stats"):  # a foundation teacher resizes and renormalises on the device
        teacher.set_input_stats(mean, std)
    nhwc = channels_last_for(device)
    prepare = lambda x: _layout(normalize(loader.eval_batch(x), mean, std), nhwc)  # noqa: E731
    model = pack_models(students, prepare(train_x[:2]), strategy)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)  # the layout build_model gives one student

    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    start_epoch, session = 0, 0  # session: as in train()
    histories: list[list[dict]] = [[] for _ in specs]
    bests = [{"top1": -math.inf, "epoch": -1} for _ in specs]
    run_ids = [s.run_id for s in specs]
    if checkpoint is not None:
        if checkpoint.get("run_ids") != run_ids or checkpoint.get("strategy") != strategy:
            raise ValueError("this checkpoint belongs to another pack (other students or another strategy)")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        restore_loader_rng(loader, checkpoint, spec0.order_seed)
        start_epoch, session = checkpoint["epoch"], int(checkpoint.get("session", 0)) + 1
        histories = [list(h) for h in checkpoint["histories"]]
        bests = [dict(b) for b in checkpoint["bests"]]

    def evaluate(split: str) -> list[dict]:
        x, y = splits[split]
        logits = predict(model, x, prepare)  # N, K, classes; float32 always, as train() evaluates
        return [classification_metrics(m.eval_logits(logits[:, i]), y, num_classes, data.shots)
                for i, m in enumerate(methods)]

    train_seconds = sum(h["seconds"] for h in histories[0])
    seen = sum(h["images"] for h in histories[0])
    last_eval: list[dict] = []
    for epoch in range(start_epoch, spec0.epochs):
        lrs = recipe.epoch_lrs(epoch, spec0.epochs, len(loader))  # one per batch: they differ only in warm-up
        lr = history_lr(lrs)
        model.train()
        tick = time.perf_counter()
        loss_sum = torch.zeros(k, device=device)
        for step, (x, y) in enumerate(loader):
            if step == 0 or lrs[step] != lrs[step - 1]:  # a Python float, no host sync
                for group in optimizer.param_groups:
                    group["lr"] = lrs[step]
            losses = packed_step(model, optimizer, methods, _layout(x, nhwc), y, epoch=epoch, teacher=teacher,
                                 autocast=autocast)
            loss_sum += losses * len(y)
        train_losses = [v / len(train_y) for v in loss_sum.tolist()]  # the one host sync of the epoch
        seconds = time.perf_counter() - tick
        bad = [i for i, v in enumerate(train_losses) if not math.isfinite(v)]
        if bad:
            names = "; ".join(f"{i}: {specs[i].label()} {dict(specs[i].params)}" for i in bad)
            reasons = {i: f"training loss became {train_losses[i]} at epoch {epoch} ({specs[i].label()})" for i in bad}
            raise PackedTrainingDiverged(f"training loss became non-finite at epoch {epoch} for packed students {names}",
                                         bad, reasons)
        train_seconds, seen = train_seconds + seconds, seen + len(train_y)
        metrics = [{"epoch": epoch, "lr": lr, "train_loss": v, "seconds": seconds, "images": len(train_y),
                    "session": session} for v in train_losses]
        if epoch == spec0.epochs - 1 or (epoch + 1) % recipe.eval_every == 0:
            last_eval = [{"val": v} for v in evaluate("val")]
            for m, e in zip(metrics, last_eval):
                m["val_top1"] = e["val"]["top1"]
            if evaluate_test:
                for m, e, t, b in zip(metrics, last_eval, evaluate("test"), bests):
                    e["test"] = t
                    m["test_top1"] = t["top1"]
                    if t["top1"] > b["top1"]:  # the papers' protocol, stored but never used to choose
                        b.update(top1=t["top1"], epoch=epoch)
        for h, m in zip(histories, metrics):
            h.append(m)
        if report is not None:
            state = {"epoch": epoch + 1, "histories": histories, "bests": bests, "run_ids": run_ids,
                     "strategy": strategy, "session": session}
            report(metrics, lambda: _checkpoint(model, optimizer, loader, state))

    if not last_eval:  # resumed from the final epoch's checkpoint: nothing left to train
        val = evaluate("val")
        test = evaluate("test") if evaluate_test else [None] * k
        last_eval = [{"val": v, **({"test": t} if t is not None else {})} for v, t in zip(val, test)]
    students = model.unpack()
    finished = datetime.now(timezone.utc)
    results = []
    for spec, student, e, b, h in zip(specs, students, last_eval, bests, histories):
        final = dict(e.get("test", {}))
        final.update(val_top1=e["val"]["top1"], top1_best_epoch=b["top1"] if evaluate_test else None,
                     best_epoch=b["epoch"] if evaluate_test else None)
        results.append(RunResult(
            spec=spec, metrics=final, history=h,
            state_dict={name: v.detach().cpu() for name, v in student.state_dict().items()},
            class_counts=list(data.class_counts), train_seconds=train_seconds,
            images_per_second=seen / train_seconds if train_seconds > 0 else 0.0,
            device=device_name(device), started_at=started, finished_at=finished,
            precision=precision_of(autocast, methods[0]),
        ))
    return results


def _checkpoint(model: nn.Module, optimizer, loader, state: dict) -> dict:
    """A plain dict of tensors and Python values, loadable with ``torch.load(weights_only=True)``."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # a snapshot, not the live momentum buffers
        **loader_rng_state(loader),
        "epoch": state["epoch"], "run_ids": list(state["run_ids"]), "strategy": state["strategy"],
        "histories": [list(h) for h in state["histories"]], "bests": [dict(b) for b in state["bests"]],
    }
