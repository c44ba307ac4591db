"""Losses and predictions that correct for the training label prior pi_j = n_j / sum_k n_k."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bkdbench.methods.params import MethodParams, Tau
from bkdbench.methods.registry import Method, float_logits, register


class _PriorMethod(Method):
    """Keeps log n_j and log pi_j as per-class constants."""

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        log_n = self.class_counts.to(torch.float64).log()
        self._constants["log_n"] = log_n
        self._constants["log_prior"] = log_n - log_n.logsumexp(0)


class BalancedSoftmaxParams(MethodParams):
    pass


@register("balanced-softmax")
class BalancedSoftmax(_PriorMethod):
    """Balanced Softmax (Ren, Yu, Sheng, Ma, Zhao, Yi, Li, NeurIPS 2020).

    loss = CE(z + log n, y); predictions use z unchanged. No parameters (logit-adjust with tau=1).
    """

    Params = BalancedSoftmaxParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        z = float_logits(logits)
        return F.cross_entropy(z + self.constant("log_n", z), targets)


class LogitAdjustParams(MethodParams):
    tau: Tau = 1.0


@register("logit-adjust")
class LogitAdjustedLoss(_PriorMethod):
    """Logit-adjusted loss (Menon, Jayasumana, Rawat, Jain, Veit, Kumar, ICLR 2021).

    loss = CE(z + tau * log pi, y); predictions use z unchanged. Default tau=1.
    """

    Params = LogitAdjustParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        z = float_logits(logits)
        return F.cross_entropy(z + self.params.tau * self.constant("log_prior", z), targets)


@register("logit-adjust-posthoc")
class PostHocLogitAdjustment(_PriorMethod):
    """Post-hoc logit adjustment (Menon et al., ICLR 2021).

    Trains with plain CE; predicts (and computes NLL/ECE) from z - tau * log pi. Default tau=1.
    """

    Params = LogitAdjustParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        return F.cross_entropy(float_logits(logits), targets)

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits - self.params.tau * self.constant("log_prior", logits)
