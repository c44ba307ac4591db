"""``cbd-linear``: the Class-Balanced Distillation this suite ran before it followed the official code
(the rows of method ``cbd`` with ``teachers`` = 2 and no ``jitter_teachers`` parameter are this).

    loss = (1 − α)·CE(z_s, y) + α·β·mean_i (1 − cos(P·f_s(x_i), [f̂_t1(x_i); …; f̂_tK(x_i)]))

How it differs from the official code (google-research/google-research, class_balanced_distillation)
and from ``cbd`` (methods/cbd.py), which follows it:
  * classifier: a plain linear layer with bias (z_s = W f_s + b), in the student and the teachers;
    the official models all use a cosine classifier with the fixed scale 20;
  * projection: P, a linear map without bias and without ReLU from the student's D features to K·D,
    used only by the distillation term, the classifier reads f_s itself; officially the projection is
    dense + ReLU inside the network and its output feeds the classifier too;
  * teachers: K = 2 by default, the suite's plain CE runs (linear head) with seeds s and s + 1000, no
    colour jitter (teacher 0 is the very CE run KD and BKD distil from); officially 4 teachers, 2 of
    them trained with colour jitter.
The same in both: α = 0.4, β = 100, each teacher's features L2-normalised before concatenation,
instance-sampled teachers, a class-balanced student trained from scratch, the teachers' logits unused.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from bkdbench.methods.cbd import TEACHER_SEED_STRIDE, ClassBalancedDistillation
from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import register


class CBDLinearParams(MethodParams):
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of distillation; CE gets 1 - alpha")] = 0.4
    feature_weight: Annotated[float, Field(gt=0, description="the paper's β: scale of the cosine term")] = 100.0
    teachers: Annotated[int, Field(ge=1, strict=True, description="number of CE teachers")] = 2


@register("cbd-linear")
class ClassBalancedDistillationLinear(ClassBalancedDistillation):
    """The earlier CBD: linear head, bias-free linear projection for the distillation term only, K CE teachers."""

    Params = CBDLinearParams
    head = "linear"
    teacher_method = "ce"

    @classmethod
    def teacher_specs(cls, base, params: dict) -> list:
        # k = 0 is the very CE run other distilling methods use (same run id), so it is trained once.
        return [type(base)(**{**base.model_dump(), "seed": base.seed + TEACHER_SEED_STRIDE * i})
                for i in range(params["teachers"])]

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        dim = model.feature_dim
        device = next(model.parameters()).device
        model.cbd_projection = nn.Linear(dim, self.params.teachers * dim, bias=False, device=device)
        self.projection = model.cbd_projection
        return list(self.projection.parameters())

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features)
