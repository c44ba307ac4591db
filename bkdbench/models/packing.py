"""K same-architecture networks run as one: ``pack_models(models, example, strategy)``.

``loop`` (``LoopPack``): the K models as they are, forward and backward one after the other on the
  shared batch, so student k does exactly the floating-point operations of a separate run.
``grouped`` (``GroupedPack``): one fused network: the first convolution reads the shared input with
  the K weight sets concatenated along its outputs, every later convolution has ``groups=K``,
  BatchNorm over K·C channels is exactly K per-student BatchNorms, option-A shortcuts pad channels
  inside each group, and the head is a batched matmul with one weight matrix per student.
Both give (N, K, classes) logits and ``unpack()`` back to the K plain models. The training loop that
uses them is ``bkdbench/training/packed.py``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import CosineLinear
from .resnet_cifar import BasicBlock


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
