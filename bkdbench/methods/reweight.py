"""Cross-entropy with per-class weights: inverse frequency, class-balanced, and deferred (DRW).

All three use PyTorch's weighted CE: sum_i w_{y_i} * CE_i / sum_i w_{y_i}, i.e. the batch's target
weights normalise the sum (the reference implementations' semantics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bkdbench.methods.params import Beta, CbStart, MethodParams
from bkdbench.methods.registry import Method, float_logits, register


class InverseParams(MethodParams):
    pass


@register("reweight-inv")
class InverseFrequencyCE(Method):
    """CE with class weights w_j ∝ 1 / n_j, rescaled so sum_j w_j = C. No parameters."""

    Params = InverseParams

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        inv = 1.0 / self.class_counts.to(torch.float64)
        self._constants["inv"] = inv * (self.num_classes / inv.sum())

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        logits = float_logits(logits)
        return F.cross_entropy(logits, targets, weight=self.constant("inv", logits))


class ClassBalancedParams(MethodParams):
    beta: Beta = 0.9999


@register("reweight-cb")
class ClassBalancedCE(Method):
    """Class-balanced CE (Cui, Jia, Lin, Song, Belongie, CVPR 2019), weights on from epoch 0.

    w_j = (1 - beta) / (1 - beta^n_j), rescaled to sum to C; loss = weighted CE. Default beta=0.9999.
    """

    Params = ClassBalancedParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        logits = float_logits(logits)
        return F.cross_entropy(logits, targets, weight=self.cb_weights(logits))


class DeferredParams(MethodParams):
    beta: Beta = 0.9999
    cb_start: CbStart = 0.8


@register("drw")
class DeferredReweightCE(Method):
    """Deferred re-weighting (Cao, Wei, Gaidon, Arechiga, Ma, NeurIPS 2019) on plain CE.

    Plain CE while epoch < cb_epoch, then CE with the class-balanced weights (beta). Defaults
    beta=0.9999, cb_start=0.8 (epoch 160 of 200), the reference schedule.
    """

    Params = DeferredParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        logits = float_logits(logits)
        return F.cross_entropy(logits, targets, weight=self.cb_weights(logits, epoch))
