"""Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation",
CVPR 2022; code megvii-research/mdistiller), here a long-tailed baseline with the CE teacher of KD/BKD.

With p = softmax(z / T) of student (s) and teacher (t), y the label:

    TCKD = T^2 * KL(b_t || b_s), b = (p_y, 1 - p_y)  (the target-vs-rest binary distribution)
    NCKD = T^2 * KL(p^_t || p^_s), p^ = softmax over the non-target classes only
    loss = CE(z_s, y) + w(epoch) * (alpha * TCKD + nckd_weight * NCKD)

both KLs summed over their classes and averaged over the batch. As mdistiller does, p^ drops the target
by subtracting 1000 from its logit before the softmax (its share is then exp(-1000): zero in float32),
and the binary distributions are sums of the full softmax.

Warm-up: w = min(progress / W, 1), W from ``warmup`` read like ``cb_start`` (< 1 a fraction of the
budget: 0.1 = 20 of 200 epochs, mdistiller's CIFAR 20-of-240 in spirit; >= 1 an epoch count), at
least one epoch. ``warmup_ramp="step"`` (default): progress = epochs done after this step, counted per
batch (epoch + (k + 1) / S, S = ceil(N / batch) batches per epoch), so a 10-epoch budget still ramps over
its first epoch; at 200 epochs the weight at the end of each epoch is mdistiller's epoch / 20. The
batch counter restarts every epoch, so a resumed run needs no extra state. ``warmup_ramp="epoch"``:
progress = epoch + 1 per whole epoch (mdistiller's 1-based epoch / warmup; bkdbench before this
option, where 0.1 of 10 epochs meant no warm-up at all). Without a batch size (a loss called outside
training) the epoch rule applies.

``nckd_weight`` (β, mdistiller's ``DKD.BETA``) defaults by the student model as mdistiller's
``configs/cifar100/dkd/`` set it: 2 for the thin CIFAR ResNets (``res56_res20.yaml``,
``res110_res32.yaml``: resnet20, resnet32), 8 otherwise (res32x4→res8x4, WRN and VGG pairs); ``-p
nckd_weight=8`` gives the earlier default back. ResNet-8 (16-32-64 channels, the CPU recipes' model)
has no mdistiller configuration; it is a thin CIFAR ResNet, so it takes 2 (mdistiller's resnet8x4 is
the wide one). Measured on CIFAR-10 (JPEG) IF 100, ``cpu-short``, 3 seeds paired: β = 2 beat β = 8
by +1.46 points [+0.27, +2.64] (docs/results-cifar10-jpeg.md). alpha=1, temperature=4. The parameter is
``nckd_weight``, not mdistiller's ``beta``: in bkdbench ``beta`` is the class-balanced β.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from bkdbench.methods.params import Alpha, MethodParams, Temperature, _whole_epoch_if_absolute
from bkdbench.methods.registry import Method, MethodError, float_logits, register, resolve_cb_epoch

NON_TARGET_SHIFT = 1000.0  # mdistiller's mask: the target's logit lowered by this before the softmax
# mdistiller's DKD.BETA by student (configs/cifar100/dkd/res56_res20.yaml, res110_res32.yaml); 8 elsewhere.
NCKD_WEIGHT_BY_MODEL = {"resnet8": 2.0, "resnet20": 2.0, "resnet32": 2.0}  # the thin CIFAR ResNets
NCKD_WEIGHT_OTHERWISE = 8.0


class DKDParams(MethodParams):
    alpha: Alpha = 1.0
    nckd_weight: Annotated[float, Field(ge=0, description="weight of the non-target-class term (NCKD)")] = 8.0
    temperature: Temperature = 4.0
    warmup: Annotated[float, Field(gt=0, description="warm-up of the distillation weight: fraction < 1 or epochs >= 1"),
                      AfterValidator(_whole_epoch_if_absolute)] = 0.1
    warmup_ramp: Literal["step", "epoch"] = "step"  # module docstring: per batch, or per whole epoch (earlier rule)


def _binary(p: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """(p_target, p_rest) per row."""
    target = (p * target_mask).sum(dim=-1, keepdim=True)
    rest = (p * ~target_mask).sum(dim=-1, keepdim=True)
    return torch.cat([target, rest], dim=-1)


@register("dkd")
class DecoupledKD(Method):
    """DKD: CE + min((epoch+1)/W, 1)·(alpha·TCKD + nckd_weight·NCKD) from the CE teacher (see the module docstring)."""

    Params = DKDParams
    needs_teacher = True
    epoch_params = ("warmup",)  # the distillation weight's ramp, a fraction or epochs like cb_start

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        self.warmup_epochs = max(1, resolve_cb_epoch(params.warmup, epochs))
        self._epoch, self._batch = -1, 0  # batches seen in the current epoch (the per-step ramp)

    @classmethod
    def resolve_for_model(cls, params: dict, model: str, given: dict) -> dict:
        if "nckd_weight" in given:
            return params
        return {**params, "nckd_weight": NCKD_WEIGHT_BY_MODEL.get(model, NCKD_WEIGHT_OTHERWISE)}

    def weight(self, epoch: int, batch: int | None = None) -> float:
        """w after batch ``batch`` (0-based) of ``epoch``; the epoch rule without a batch or batch size."""
        steps = math.ceil(self.num_train / self.batch_size) if self.batch_size else None
        if batch is None or steps is None or self.params.warmup_ramp == "epoch":
            return min((epoch + 1) / self.warmup_epochs, 1.0)
        return min((epoch + min(batch + 1, steps) / steps) / self.warmup_epochs, 1.0)

    def _next_batch(self, epoch: int) -> int:
        """This call's batch index within ``epoch`` (one loss call per training step)."""
        if epoch != self._epoch:
            self._epoch, self._batch = epoch, 0
        else:
            self._batch += 1
        return self._batch

    def distillation(self, logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor):
        """(TCKD, NCKD), each T²-scaled and batch-averaged."""
        T = self.params.temperature
        mask = F.one_hot(targets, logits.shape[-1]).bool()
        b_s = _binary(F.softmax(logits / T, dim=-1), mask)
        b_t = _binary(F.softmax(teacher_logits / T, dim=-1), mask)
        tckd = F.kl_div(torch.log(b_s), b_t, reduction="batchmean") * T * T
        shift = NON_TARGET_SHIFT * mask
        nckd = F.kl_div(F.log_softmax(logits / T - shift, dim=-1), F.softmax(teacher_logits / T - shift, dim=-1),
                        reduction="batchmean") * T * T
        return tckd, nckd

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        if teacher_logits is None or teacher_logits.shape != logits.shape:
            raise MethodError(f"{self.name}: needs teacher_logits of the student's shape {tuple(logits.shape)} "
                              "(the frozen CE teacher's logits on the same batch)")
        z = float_logits(logits)
        tckd, nckd = self.distillation(z, teacher_logits.detach().to(z.dtype), targets)
        w = self.weight(epoch, self._next_batch(epoch))
        return F.cross_entropy(z, targets) + w * (self.params.alpha * tckd + self.params.nckd_weight * nckd)
