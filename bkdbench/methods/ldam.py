"""LDAM: label-distribution-aware margins on a cosine classifier, with or without DRW."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bkdbench.methods.params import Beta, CbStart, MaxM, MethodParams, Scale
from bkdbench.methods.registry import Method, float_logits, register


class LDAMParams(MethodParams):
    max_m: MaxM = 0.5
    s: Scale = 30.0


@register("ldam")
class LDAMLoss(Method):
    """LDAM loss (Cao, Wei, Gaidon, Arechiga, Ma, NeurIPS 2019), no re-weighting.

    The head outputs cosines c (features and class vectors L2-normalised). Margins
    m_j = K * n_j^(-1/4) with K chosen so max_j m_j = max_m; loss = CE(s * (c - m_y * onehot(y)), y).
    Predictions use s * c. Defaults max_m=0.5, s=30.
    """

    Params = LDAMParams
    head = "cosine"

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        m = self.class_counts.to(torch.float64) ** -0.25
        self._constants["margins"] = m * (params.max_m / m.max())

    @property
    def margins(self) -> torch.Tensor:
        """Per-class margins m_j (float64, CPU)."""
        return self._constants["margins"]

    def _class_weights(self, logits: torch.Tensor, epoch: int) -> torch.Tensor | None:
        return None

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        cos = float_logits(logits)
        # A bool mask (not uint8, as in the reference code) picks each row's target column; the
        # comparison avoids one_hot's range check, which syncs with the host on some devices.
        is_target = targets.unsqueeze(-1) == torch.arange(cos.shape[-1], device=cos.device)
        shifted = torch.where(is_target, cos - self.constant("margins", cos), cos)
        return F.cross_entropy(self.params.s * shifted, targets, weight=self._class_weights(cos, epoch))

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.params.s * logits


class LDAMDRWParams(LDAMParams):
    beta: Beta = 0.9999
    cb_start: CbStart = 0.8


@register("ldam-drw")
class LDAMDeferredReweight(LDAMLoss):
    """LDAM with deferred re-weighting (Cao et al., NeurIPS 2019): the reference LDAM-DRW recipe.

    As `ldam`, and from cb_epoch on the CE uses the class-balanced weights (beta). Defaults
    max_m=0.5, s=30, beta=0.9999, cb_start=0.8 (epoch 160 of 200).
    """

    Params = LDAMDRWParams

    def _class_weights(self, logits: torch.Tensor, epoch: int) -> torch.Tensor | None:
        return self.cb_weights(logits, epoch)
