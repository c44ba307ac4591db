"""Packed training: K students that differ only in loss parameters (α, T, β, ...) trained at once.

The students share each augmented batch, one teacher forward per batch and one optimizer step
(SGD with momentum and weight decay is elementwise, so one SGD over all students is K independent
SGDs). Two ways to run the K student networks, chosen by ``strategy``:

``loop``: the K models as they are, forward and backward one after the other on the shared batch.
  Student k then does exactly the floating-point operations of ``train(specs[k])``.
``grouped``: the K models fused into one network: the first convolution reads the shared input with
  the K weight sets concatenated along its outputs, every later convolution has ``groups=K``,
  BatchNorm over K·C channels is exactly K per-student BatchNorms, option-A shortcuts pad channels
  inside each group, and the head is a batched matmul with one weight matrix per student. Same math;
  other convolution kernels, so float rounding differs.

``auto`` picks ``loop`` on CPU, where oneDNN's grouped convolutions were 2-4x slower than K separate
ones (docs/performance.md), and ``grouped`` on CUDA, where one wide kernel should beat K small
launches of a small network; no GPU figure exists yet, and ``benchmarks/gpu_check.py`` measures both.
``tests/test_packed.py`` checks that K packed students end where K separate ``train`` runs end.
"""
from __future__ import annotations

import copy
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import DeviceLoader, normalize
from .evaluate import classification_metrics, predict
from .methods import build as build_method
from .models import CosineLinear
from .models.resnet_cifar import BasicBlock
from .recipes import get_recipe
from .specs import RunSpec
from .train import (RunResult, TrainingDiverged, _device_name, _layout, build_model, channels_last_for, default_device,
                    device_splits, frozen_teacher, load_run_data)

# report(per-student metrics, make_checkpoint): called once per epoch, like train()'s report.
PackedReport = Callable[[list[dict], Callable[[], dict]], None]


class PackedTrainingDiverged(TrainingDiverged):
    """One or more packed students' training loss became NaN or infinite; ``students`` holds their
    indices in the spec list. The other students were fine: train them again without these."""

    def __init__(self, message: str, students: list[int]):
        super().__init__(message)
        self.students = students


# ---------------------------------------------------------------- grouped layers


class GroupedLinear(nn.Module):
    """K linear heads: (N, K·in) features → (N, K, out) logits, one weight matrix per student."""

    def __init__(self, heads: Sequence[nn.Linear]):
        super().__init__()
        self.groups = len(heads)
        self.weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]))  # K, out, in
        self.bias = nn.Parameter(torch.stack([h.bias.detach() for h in heads])) if heads[0].bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], self.groups
        x = x.reshape(n, k, -1).transpose(0, 1)  # K, N, in
        out = torch.bmm(x, self.weight.transpose(1, 2))
        if self.bias is not None:
            out = out + self.bias[:, None, :]
        return out.transpose(0, 1)

    def unpack(self, heads: Sequence[nn.Linear]) -> None:
        for k, h in enumerate(heads):
            h.weight.copy_(self.weight[k])
            if h.bias is not None:
                h.bias.copy_(self.bias[k])


class GroupedCosineLinear(nn.Module):
    """K cosine heads (LDAM): normalised features of each student against its own class vectors."""

    def __init__(self, heads: Sequence[CosineLinear]):
        super().__init__()
        self.groups = len(heads)
        self.weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]))  # K, in, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], self.groups
        x = F.normalize(x.reshape(n, k, -1), dim=2).transpose(0, 1)
        return torch.bmm(x, F.normalize(self.weight, dim=1)).transpose(0, 1)

    def unpack(self, heads: Sequence[CosineLinear]) -> None:
        for k, h in enumerate(heads):
            h.weight.copy_(self.weight[k])


class PackedBasicBlock(nn.Module):
    """``BasicBlock`` for K students: grouped convolutions, wide BatchNorm, per-group option-A padding."""

    def __init__(self, blocks: Sequence[BasicBlock], conv1: nn.Module, bn1: nn.Module, conv2: nn.Module, bn2: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        b = blocks[0]
        self.groups, self.stride, self.pad = len(blocks), b.stride, b.pad
        self.planes = b.conv1.out_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        n, _, h, w = x.shape
        x = x.reshape(n, self.groups, -1, h, w)  # pad each student's channels, as BasicBlock does
        x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x.reshape(n, self.groups * self.planes, h, w)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _cat(tensors, dim=0) -> torch.Tensor:
    return torch.cat([t.detach() for t in tensors], dim)


def _grouped_conv(convs: Sequence[nn.Conv2d], shared_input: bool) -> nn.Conv2d:
    c = convs[0]
    if c.groups != 1 or c.padding_mode != "zeros":
        raise ValueError("packed training supports plain convolutions only (groups=1, zero padding)")
    k = len(convs)
    in_channels = c.in_channels if shared_input else k * c.in_channels
    out = nn.Conv2d(in_channels, k * c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                    groups=1 if shared_input else k, bias=c.bias is not None, device=c.weight.device,
                    dtype=c.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(_cat([m.weight for m in convs]))
        if c.bias is not None:
            out.bias.copy_(_cat([m.bias for m in convs]))
    return out


def _wide_batchnorm(bns: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = bns[0]
    like = next((t for t in (b.running_mean, b.weight) if t is not None), torch.empty(0))
    out = nn.BatchNorm2d(len(bns) * b.num_features, b.eps, b.momentum, b.affine, b.track_running_stats,
                         device=like.device, dtype=like.dtype)
    with torch.no_grad():
        if b.affine:
            out.weight.copy_(_cat([m.weight for m in bns]))
            out.bias.copy_(_cat([m.bias for m in bns]))
        if b.track_running_stats:
            out.running_mean.copy_(_cat([m.running_mean for m in bns]))
            out.running_var.copy_(_cat([m.running_var for m in bns]))
            out.num_batches_tracked.copy_(b.num_batches_tracked)
    return out


def _unpack_conv(packed: nn.Conv2d, convs: Sequence[nn.Conv2d]) -> None:
    for m, w in zip(convs, packed.weight.chunk(len(convs))):
        m.weight.copy_(w)
    if packed.bias is not None:
        for m, b in zip(convs, packed.bias.chunk(len(convs))):
            m.bias.copy_(b)


def _unpack_batchnorm(packed: nn.BatchNorm2d, bns: Sequence[nn.BatchNorm2d]) -> None:
    k = len(bns)
    for i, m in enumerate(bns):
        for name in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(packed, name)
            if src is not None:
                getattr(m, name).copy_(src.chunk(k)[i])
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.copy_(packed.num_batches_tracked)


class GroupedPack(nn.Module):
    """K same-architecture models fused into one grouped network: ``forward(x)`` gives (N, K, classes).

    Built from the K models' current weights; ``unpack()`` copies the trained weights and BatchNorm
    statistics back into them, so each one's ``state_dict()`` is a plain single-student one.
    """

    strategy = "grouped"

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("a pack needs at least one model")
        self.students = list(models)  # a plain list: not registered, so not in this module's state_dict
        self._pairs: list[tuple[nn.Module, list[nn.Module]]] = []
        self._first_conv = True
        self.net = self._pack(models)

    def _pack(self, mods: Sequence[nn.Module]) -> nn.Module:
        m0 = mods[0]
        if any(type(m) is not type(m0) for m in mods):
            raise ValueError("packed models must share one architecture")
        if isinstance(m0, nn.Conv2d):
            # The first convolution (in registration order, which is forward order for the registered
            # models; pack_models' self-check catches a model where it is not) reads the shared input.
            packed = _grouped_conv(mods, shared_input=self._first_conv)
            self._first_conv = False
        elif isinstance(m0, nn.BatchNorm2d):
            packed = _wide_batchnorm(mods)
        elif isinstance(m0, nn.Linear):
            packed = GroupedLinear(mods)
        elif isinstance(m0, CosineLinear):
            packed = GroupedCosineLinear(mods)
        elif isinstance(m0, BasicBlock):
            children = {name: self._pack([getattr(m, name) for m in mods]) for name in ("conv1", "bn1", "conv2", "bn2")}
            return PackedBasicBlock(mods, **children)
        else:
            if any(True for _ in m0.parameters(recurse=False)) or any(True for _ in m0.buffers(recurse=False)):
                raise ValueError(f"packed training does not support {type(m0).__name__} layers")
            # A container or a parameter-free layer: the same forward over packed children.
            packed = copy.copy(m0)
            packed._parameters, packed._buffers, packed._non_persistent_buffers_set = {}, {}, set()
            packed._modules = {name: self._pack([m._modules[name] for m in mods]) for name in m0._modules}
            return packed
        self._pairs.append((packed, list(mods)))
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def backward_losses(self, x, y, methods, *, epoch, teacher_logits, autocast) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            logits = self(x)
        logits = logits.float()
        losses = torch.stack([m.loss(logits[:, i], y, epoch=epoch, teacher_logits=teacher_logits)
                              for i, m in enumerate(methods)])
        losses.sum().backward()  # student k's weights get exactly the gradient of its own loss
        return losses.detach()

    @torch.no_grad()
    def unpack(self) -> list[nn.Module]:
        for packed, mods in self._pairs:
            if isinstance(packed, nn.Conv2d):
                _unpack_conv(packed, mods)
            elif isinstance(packed, nn.BatchNorm2d):
                _unpack_batchnorm(packed, mods)
            else:
                packed.unpack(mods)
        return self.students


class LoopPack(nn.Module):
    """The K models side by side, run one after the other: ``forward(x)`` gives (N, K, classes)."""

    strategy = "loop"

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("a pack needs at least one model")
        self.students = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.students], dim=1)

    def backward_losses(self, x, y, methods, *, epoch, teacher_logits, autocast) -> torch.Tensor:
        losses = []
        for model, method in zip(self.students, methods):  # one graph alive at a time
            with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
                logits = model(x)
            loss = method.loss(logits.float(), y, epoch=epoch, teacher_logits=teacher_logits)
            loss.backward()
            losses.append(loss.detach())
        return torch.stack(losses)

    def unpack(self) -> list[nn.Module]:
        return list(self.students)


STRATEGIES = ("auto", "loop", "grouped")


def pack_models(models: Sequence[nn.Module], example: torch.Tensor, strategy: str = "grouped") -> nn.Module:
    """Pack ``models`` (``loop`` or ``grouped``). For ``grouped``, first check on float64 CPU copies,
    in eval mode on ``example`` inputs, that student k's slice of the packed logits is model k's
    logits: an architecture the grouped packer does not understand fails here with a ValueError
    instead of training something else (float64 on the CPU, so TF32 or bf16 kernels cannot blur it)."""
    if strategy == "loop":
        return LoopPack(models)
    if strategy != "grouped":
        raise ValueError(f"unknown packing strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    copies = [copy.deepcopy(m).to("cpu", torch.float64).eval() for m in models]
    x = example.detach().to("cpu", torch.float64)
    refusal = (f"packed training does not support model {type(models[0]).__name__}: the grouped network does not "
               "reproduce the separate models; use strategy='loop'")
    with torch.no_grad():
        want = torch.stack([m(x) for m in copies], dim=1)
        try:
            got = GroupedPack(copies).eval()(x)
        except RuntimeError as exc:  # e.g. channel counts that do not fit: layers used in another order
            raise ValueError(f"{refusal} ({str(exc).splitlines()[0]})") from None
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-7, atol=1e-9):
        raise ValueError(refusal)
    device = next(models[0].parameters()).device
    return GroupedPack(models).to(device).train(models[0].training)


def resolve_strategy(strategy: str, device: torch.device) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown packing strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if strategy == "auto":
        return "grouped" if device.type == "cuda" else "loop"
    return strategy


def packed_step(pack: nn.Module, optimizer: torch.optim.Optimizer, methods: Sequence, x: torch.Tensor,
                y: torch.Tensor, *, epoch: int, teacher: Optional[nn.Module] = None,
                autocast: Optional[torch.dtype] = None) -> torch.Tensor:
    """One optimisation step of every student on the shared batch ``x`` (already normalised and laid
    out); the teacher runs once. Returns the K losses, detached, without a host sync."""
    t_logits = None
    if teacher is not None:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            t_logits = teacher(x)
        t_logits = t_logits.float()
    optimizer.zero_grad(set_to_none=True)
    losses = pack.backward_losses(x, y, methods, epoch=epoch, teacher_logits=t_logits, autocast=autocast)
    optimizer.step()
    return losses


# ---------------------------------------------------------------- training


def check_packable(specs: Sequence[RunSpec]) -> None:
    """Students of one pack must be the same run except for the method's parameters."""
    if len(specs) == 0:
        raise ValueError("train_packed needs at least one spec")
    from .methods import method_class

    cls = method_class(specs[0].method)
    if cls.uses_features or getattr(cls, "stage1", False) or specs[0].teachers or specs[0].train_classes:
        raise ValueError(f"{specs[0].method} cannot be packed (it needs features, several teachers, a stage-1 model "
                         "or a class subset): train its runs separately")
    base = specs[0].model_dump(exclude={"params"})
    seen = {specs[0].run_id: 0}
    for i, spec in enumerate(specs[1:], start=1):
        other = spec.model_dump(exclude={"params"})
        differ = sorted(key for key in base if base[key] != other[key])
        if differ:
            raise ValueError(f"packed students may differ only in method parameters; spec {i} ({spec.label()}) "
                             f"differs from spec 0 in {', '.join(differ)}: train those separately")
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
    """Train the students ``specs`` (identical except for method parameters, else ValueError) as one
    pack and return one RunResult per spec, each what ``train(spec)`` would give (up to float
    rounding with ``grouped``). Arguments mean what they mean for ``train``; ``report`` gets the list
    of the students' metrics each epoch; ``checkpoint`` (from its ``make_checkpoint``) resumes a pack.
    ``train_seconds`` is the pack's wall time and ``images_per_second`` one student's images over it
    (the pack's aggregate throughput is K times that). A student whose loss becomes NaN or infinite
    stops the pack with ``PackedTrainingDiverged`` naming it (``.students`` holds the indices)."""
    check_packable(specs)
    started = datetime.now(timezone.utc)
    spec0, k = specs[0], len(specs)
    device = torch.device(device) if device else default_device()
    strategy = resolve_strategy(strategy, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    autocast = torch.bfloat16 if (cuda or bf16) else None
    recipe = get_recipe(spec0.recipe)
    data = load_run_data(spec0, data_dir)
    info, num_classes = data.info, len(data.classes)
    methods = [build_method(s.method, data.class_counts, epochs=s.epochs, **s.params) for s in specs]
    method0 = methods[0]

    students = [build_model(s, num_classes, info.channels, m.head, device) for s, m in zip(specs, methods)]
    teacher = None
    if method0.needs_teacher:
        if teacher_state is None:
            raise ValueError(f"{spec0.method} needs a teacher: pass teacher_state (see bkdbench.teachers)")
        teacher = frozen_teacher(spec0.teacher, teacher_state, num_classes, info.channels, device)

    train_x, train_y, splits = device_splits(data, device, evaluate_test)
    loader = DeviceLoader(train_x, train_y, recipe.batch_size, info.mean, info.std, pad=info.pad, hflip=info.hflip,
                          sampler=method0.sampler, seed=spec0.seed)
    mean, std = loader.mean, loader.std
    nhwc = channels_last_for(device)
    prepare = lambda x: _layout(normalize(x, mean, std), nhwc)  # noqa: E731
    model = pack_models(students, prepare(train_x[:2]), strategy)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)  # the layout build_model gives one student

    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    start_epoch = 0
    histories: list[list[dict]] = [[] for _ in specs]
    bests = [{"top1": -math.inf, "epoch": -1} for _ in specs]
    run_ids = [s.run_id for s in specs]
    if checkpoint is not None:
        if checkpoint.get("run_ids") != run_ids or checkpoint.get("strategy") != strategy:
            raise ValueError("this checkpoint belongs to another pack (other students or another strategy)")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        loader.generator.set_state(checkpoint["loader_rng"])
        start_epoch = checkpoint["epoch"]
        histories = [list(h) for h in checkpoint["histories"]]
        bests = [dict(b) for b in checkpoint["bests"]]

    def evaluate(split: str) -> list[dict]:
        x, y = splits[split]
        logits = predict(model, x, prepare, autocast=autocast)  # N, K, classes
        return [classification_metrics(m.eval_logits(logits[:, i]), y, num_classes, data.shots)
                for i, m in enumerate(methods)]

    train_seconds = sum(h["seconds"] for h in histories[0])
    seen = sum(h["images"] for h in histories[0])
    last_eval: list[dict] = []
    for epoch in range(start_epoch, spec0.epochs):
        lr = recipe.lr_at(epoch, spec0.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        tick = time.perf_counter()
        loss_sum = torch.zeros(k, device=device)
        for x, y in loader:
            losses = packed_step(model, optimizer, methods, _layout(x, nhwc), y, epoch=epoch, teacher=teacher,
                                 autocast=autocast)
            loss_sum += losses * len(y)
        train_losses = [v / len(train_y) for v in loss_sum.tolist()]  # the one host sync of the epoch
        seconds = time.perf_counter() - tick
        bad = [i for i, v in enumerate(train_losses) if not math.isfinite(v)]
        if bad:
            names = "; ".join(f"{i}: {specs[i].label()} {dict(specs[i].params)}" for i in bad)
            raise PackedTrainingDiverged(f"training loss became non-finite at epoch {epoch} for packed students {names}", bad)
        train_seconds, seen = train_seconds + seconds, seen + len(train_y)
        metrics = [{"epoch": epoch, "lr": lr, "train_loss": v, "seconds": seconds, "images": len(train_y)}
                   for v in train_losses]
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
                     "strategy": strategy}
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
            device=_device_name(device), started_at=started, finished_at=finished,
        ))
    return results


def _checkpoint(model: nn.Module, optimizer, loader, state: dict) -> dict:
    """A plain dict of tensors and Python values, loadable with ``torch.load(weights_only=True)``."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # a snapshot, not the live momentum buffers
        "loader_rng": loader.generator.get_state(),
        "epoch": state["epoch"], "run_ids": list(state["run_ids"]), "strategy": state["strategy"],
        "histories": [list(h) for h in state["histories"]], "bests": [dict(b) for b in state["bests"]],
    }
