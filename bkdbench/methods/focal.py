"""Focal loss: down-weights examples the model already classifies confidently."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bkdbench.methods.params import Gamma, MethodParams
from bkdbench.methods.registry import Method, float_logits, register


class FocalParams(MethodParams):
    gamma: Gamma = 1.0


@register("focal")
class FocalLoss(Method):
    """Focal loss (Lin, Goyal, Girshick, He, Dollár, ICCV 2017), without class weights.

    CE_i = -log p_{i,y_i}, p_y = exp(-CE_i); loss = mean_i (1 - p_y)^gamma * CE_i. Default gamma=1
    (the reference code's value); gamma=0 is plain CE.
    """

    Params = FocalParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        ce = F.cross_entropy(float_logits(logits), targets, reduction="none")
        # 1 - exp(-ce) via expm1 stays accurate as p_y -> 1; clamping at the smallest normal float
        # keeps (.)^gamma and its gradient finite for 0 < gamma < 1 without moving normal values.
        miss = (-torch.expm1(-ce)).clamp_min(torch.finfo(ce.dtype).tiny)
        return (miss.pow(self.params.gamma) * ce).mean()
