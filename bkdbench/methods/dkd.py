"""Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation",
CVPR 2022; code megvii-research/mdistiller), here a long-tailed baseline with the CE teacher of KD/BKD.

With p = softmax(z / T) of student (s) and teacher (t), y the label:

    TCKD = T^2 * KL(b_t || b_s), b = (p_y, 1 - p_y)  (the target-vs-rest binary distribution)
    NCKD = T^2 * KL(p^_t || p^_s), p^ = softmax over the non-target classes only
    loss = CE(z_s, y) + w(epoch) * (alpha * TCKD + nckd_weight * NCKD)

both KLs summed over their classes and averaged over the batch. As mdistiller does, p^ drops the target
by subtracting 1000 from its logit before the softmax (its share is then exp(-1000): zero in float32),
and the binary distributions are sums of the full softmax. Warm-up w(epoch) = min((epoch + 1) / W, 1)
with bkdbench's 0-based epochs (mdistiller's 1-based epoch / warmup), W from ``warmup`` read like
``cb_start``: < 1 a fraction of the budget (0.1 = 20 of 200 epochs, mdistiller's CIFAR setting), >= 1 an
epoch count. Defaults alpha=1, nckd_weight=8, temperature=4 (mdistiller's CIFAR-100 ResNet setting).
The parameter is ``nckd_weight``, not mdistiller's ``beta``: in bkdbench ``beta`` is the class-balanced β.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from bkdbench.methods.params import Alpha, MethodParams, Temperature, _whole_epoch_if_absolute
from bkdbench.methods.registry import Method, MethodError, float_logits, register, resolve_cb_epoch

NON_TARGET_SHIFT = 1000.0  # mdistiller's mask: the target's logit lowered by this before the softmax


class DKDParams(MethodParams):
    alpha: Alpha = 1.0
    nckd_weight: Annotated[float, Field(ge=0, description="weight of the non-target-class term (NCKD)")] = 8.0
    temperature: Temperature = 4.0
    warmup: Annotated[float, Field(gt=0, description="warm-up of the distillation weight: fraction < 1 or epochs >= 1"),
                      AfterValidator(_whole_epoch_if_absolute)] = 0.1


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

    def weight(self, epoch: int) -> float:
        return min((epoch + 1) / self.warmup_epochs, 1.0)

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
        return F.cross_entropy(z, targets) + self.weight(epoch) * (self.params.alpha * tckd + self.params.nckd_weight * nckd)
