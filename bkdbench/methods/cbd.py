"""Class-Balanced Distillation (Iscen, Araujo, Gong, Schmid, "Class-Balanced Distillation for
Long-Tailed Visual Recognition", BMVC 2021; arXiv:2104.05279).

Stage 1 trains K teachers with instance sampling and plain CE (here: the benchmark's CE run of the
same model, data, recipe and epochs, with seeds seed, seed + 1000, ..., seed + 1000·(K−1)). Stage 2
trains a student from scratch with class-balanced sampling and

    loss = (1 − α)·CE(z_s, y) + α·β·mean_i (1 − cos(P·f_s(x_i), [f̂_t1(x_i); …; f̂_tK(x_i)])),

f_s the student's penultimate features, f̂_tk = f_tk / ‖f_tk‖ each frozen teacher's penultimate
features L2-normalised before concatenation (so every teacher counts equally whatever its feature
norm), P a learned linear map without bias from the student's D features to the K·D concatenated
ones (teachers share the student's architecture). The cosine normalises P·f_s itself; normalising
f_s before P would change nothing, since P is linear. The teachers' logits are not used.

Defaults: alpha = α = 0.4 and feature_weight = β = 100, the paper's. The paper's β is called
``feature_weight`` here because ``beta`` is the class-balanced β of Cui et al. everywhere else in
bkdbench (in [0, 1)). teachers = K = 2: the paper's ensemble variant distils several teachers; its
exact count for each benchmark is not checked here, so 2 is the smallest ensemble, not a copy of the
paper's setting. K = 1 is plain single-teacher CBD.

``teacher_specs`` always returns a list (also for K = 1), so a CBD spec names its teachers in
``spec.teachers`` and the loss receives lists of teacher features; the loss also takes a single
tensor, for a direct call with one teacher.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import Method, MethodError, float_logits, register

TEACHER_SEED_STRIDE = 1000  # teacher k of student seed s has seed s + 1000·k: students 0, 1, 2 share none


class CBDParams(MethodParams):
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of distillation; CE gets 1 - alpha")] = 0.4
    feature_weight: Annotated[float, Field(gt=0, description="the paper's β: scale of the cosine term")] = 100.0
    # strict: True or 2.5 teachers is a mistake, not a count
    teachers: Annotated[int, Field(ge=1, strict=True, description="number of CE teachers")] = 2


@register("cbd")
class ClassBalancedDistillation(Method):
    """CBD: class-balanced student, cosine feature distillation from K instance-sampled CE teachers."""

    Params = CBDParams
    needs_teacher = True
    uses_features = True
    sampler = "class-balanced"
    head = "linear"

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        self.projection: nn.Linear | None = None

    @classmethod
    def teacher_specs(cls, base, params: dict) -> list:
        # k = 0 is the very CE run other distilling methods use (same run id), so it is trained once.
        k = params["teachers"]
        return [type(base)(**{**base.model_dump(), "seed": base.seed + TEACHER_SEED_STRIDE * i}) for i in range(k)]

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        dim = model.feature_dim
        device = next(model.parameters()).device
        model.cbd_projection = nn.Linear(dim, self.params.teachers * dim, bias=False, device=device)
        self.projection = model.cbd_projection
        return list(self.projection.parameters())

    def distill_loss(self, features: torch.Tensor, teacher_features) -> torch.Tensor:
        """mean_i (1 − cos(P·f_s, [f̂_t1; …; f̂_tK])) over the batch."""
        if self.projection is None:
            raise MethodError("cbd: call method.attach(model) first; it adds the projection P to the student")
        many = teacher_features if isinstance(teacher_features, (list, tuple)) else [teacher_features]
        if len(many) != self.params.teachers:
            raise MethodError(f"cbd: expected features of {self.params.teachers} teachers, got {len(many)}")
        target = torch.cat([F.normalize(f.detach().float(), dim=-1) for f in many], dim=-1)
        projected = self.projection(features.float())
        if projected.shape != target.shape:
            raise MethodError(f"cbd: projected student features {tuple(projected.shape)} do not match the "
                              f"concatenated teacher features {tuple(target.shape)}")
        return (1 - F.cosine_similarity(projected, target, dim=-1)).mean()

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None, features=None,
             teacher_features=None) -> torch.Tensor:
        if features is None or teacher_features is None:
            raise MethodError("cbd: the loss needs the student's penultimate features (features=) and the "
                              "frozen teachers' (teacher_features=, one tensor per teacher)")
        ce = F.cross_entropy(float_logits(logits), targets)
        alpha, scale = self.params.alpha, self.params.feature_weight
        return (1 - alpha) * ce + alpha * scale * self.distill_loss(features, teacher_features)
