"""Plain cross-entropy, the instance-balanced baseline every other method is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import Method, float_logits, register


class CEParams(MethodParams):
    pass


@register("ce")
class CrossEntropy(Method):
    """Softmax cross-entropy: loss = mean_i -log softmax(z_i)[y_i]. No parameters."""

    Params = CEParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        return F.cross_entropy(float_logits(logits), targets)
