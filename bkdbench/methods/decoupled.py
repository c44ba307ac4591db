"""Decoupled classifiers (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020): keep the representation of a plain CE model (stage 1) and re-balance only
its classifier (stage 2). The stage-1 model is found or trained like a teacher (a CE run of the same
model, data and seed, cached by run id); stage 2 trains for ``stage2_fraction`` of that budget.

- ``crt``: freeze the backbone (BatchNorm statistics too), re-initialise the linear classifier and
  retrain it with class-balanced sampling and plain CE.
- ``lws``: freeze everything; learn one scale f_j per class on the classifier weights,
  z_j = f_j · w_jᵀx + b_j (the bias is kept as trained), with class-balanced sampling.
- ``tau-norm``: no training; w̃_j = w_j / ‖w_j‖^τ (bias kept). τ is chosen on the balanced
  validation split from 0, 0.1, …, 2 (never the test set) unless given (``tau: auto`` by
  default); the chosen τ is reported in the leaderboard's ``extra`` column.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import Method, float_logits, register

TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))


class Stage2Params(MethodParams):
    stage2_fraction: float = Field(0.1, gt=0, le=1, description="stage-2 epochs as a fraction of stage 1's")


class TauNormParams(MethodParams):
    tau: Union[Annotated[float, Field(ge=0)], Literal["auto"]] = Field(
        "auto", description="norm exponent; 'auto' = chosen on the validation split")


class _Decoupled(Method):
    """A stage-2 method: ``needs_teacher`` because its stage-1 model is provided like a teacher."""

    needs_teacher = True
    stage1 = True  # the "teacher" is this run's starting point, not a distillation target
    sampler = "class-balanced"

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        return F.cross_entropy(float_logits(logits), targets)

    def prepare(self, model: nn.Module, stage1_state: dict) -> list[nn.Parameter]:
        """Load stage 1, freeze what stays fixed; return the parameters stage 2 trains."""
        model.load_state_dict(stage1_state)
        model.requires_grad_(False)
        return []

    def set_train_mode(self, model: nn.Module) -> None:
        model.eval()  # the frozen backbone keeps its BatchNorm statistics
        model.fc.train()


@register("crt")
class ClassifierRetraining(_Decoupled):
    """cRT: re-initialised linear classifier, class-balanced sampling, frozen representation."""

    Params = Stage2Params

    def prepare(self, model, stage1_state):
        super().prepare(model, stage1_state)
        model.fc.reset_parameters()
        model.fc.requires_grad_(True)
        return list(model.fc.parameters())


class ScaledLinear(nn.Module):
    """A frozen linear classifier whose class vectors are scaled by learnable f_j: z_j = f_j·w_jᵀx + b_j
    (LWS as here), or with ``scale_bias`` the whole output z_j = f_j·(w_jᵀx + b_j) (SSD-LT's stage II)."""

    def __init__(self, linear: nn.Linear, scale_bias: bool = False):
        super().__init__()
        self.linear, self.scale_bias = linear, scale_bias
        self.scale = nn.Parameter(torch.ones(linear.out_features, device=linear.weight.device))

    def forward(self, x):
        if self.scale_bias:
            return self.linear(x) * self.scale
        return F.linear(x, self.linear.weight * self.scale[:, None], self.linear.bias)


@register("lws")
class LearnableWeightScaling(_Decoupled):
    """LWS: one learnable scale per class on the stage-1 classifier, everything else frozen."""

    Params = Stage2Params

    def prepare(self, model, stage1_state):
        super().prepare(model, stage1_state)
        self.restructure(model)
        return [model.fc.scale]

    @classmethod
    def restructure(cls, model):
        model.fc = ScaledLinear(model.fc)


@register("tau-norm")
class TauNormalisation(_Decoupled):
    """τ-normalised classifier: w̃_j = w_j / ‖w_j‖^τ; no training."""

    Params = TauNormParams
    trains = False

    def finalize(self, model, validate):
        weight = model.fc.weight.detach().clone()
        norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)

        def apply(tau: float) -> None:
            with torch.no_grad():
                model.fc.weight.copy_(weight / norms.pow(tau))

        if self.params.tau != "auto":
            apply(self.params.tau)
            return {"tau": self.params.tau}
        scores = []
        for tau in TAU_GRID:  # validation only; ties go to the smaller τ (the milder change)
            apply(tau)
            scores.append((validate(), -tau))
        best = -max(scores)[1]
        apply(best)
        return {"tau": best, "tau_val_top1": max(scores)[0]}
