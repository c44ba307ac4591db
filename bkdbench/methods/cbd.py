"""Class-Balanced Distillation (Iscen, Araujo, Gong, Schmid, "Class-Balanced Distillation for
Long-Tailed Visual Recognition", BMVC 2021; arXiv:2104.05279), as its official code has it
(google-research/google-research, folder class_balanced_distillation: resnet.py, train.py,
input_pipeline.py, configs/stage_one_*.py, configs/stage_two_cbd.py and stage_two_cbd_ens.py).

Stage 1 trains K = 4 teachers with instance sampling and CE through a cosine classifier of fixed
scale 20 (``ce-cosine20``): two plain ones (the official "vanilla_seed1", "vanilla_seed2") and two with
SimCLR colour jitter ("data_aug_seed1", "data_aug_seed2", ``color_jitter=True``). Here teacher k of a
student with seed s has seed s + 1000·j, j its index among the plain or among the jittered teachers:
seeds s, s + 1000, s, s + 1000, as the official plain and jittered teachers share seeds 1 and 2.
Stage 2 trains a student from scratch with class-balanced sampling and

    loss = (1 − α)·CE(20·cos(e_s, W), y) + α·β·mean_i (1 − cos(e_s(x_i), [f̂_t1(x_i); …; f̂_tK(x_i)])),

e_s = ReLU(A·f_s + b) the student's projection of its pooled backbone features f_s (D of them) to
K·D, *inside the network*: the same e_s feeds the cosine classifier (W, fixed scale 20) and the
distillation term, so both losses train A, b (models/scaled_cosine.ProjectedCosine). f̂_tk = f_tk / ‖f_tk‖
is teacher k's pooled backbone feature, L2-normalised; teachers have no projection (the official
``load_teacher_models`` sets ``proj_dim = -1``), so this is the input of their own classifier. The
teachers' logits are not used. Scaled to this suite's widths: the official ResNet-50 projects its
2048 features to 2048·K (``proj_dim = 2048 * num_teachers``); here D is the model's own width
(64 for ResNet-8/20/32, 128 for cnn-small, 2048 for ResNet-50) and the projection goes to D·K, so
it always matches the width of the concatenated teachers' features, as there.

Defaults: alpha = α = 0.4 and feature_weight = β = 100 (the official ``distill_alpha`` and
``distill_fd_beta``). β is called ``feature_weight`` because ``beta`` is the class-balanced β of Cui
et al. everywhere else in bkdbench. teachers = K = 4 and jitter_teachers = 2 (the official list of 4
model ids, 2 of them "data_aug"); jitter_teachers defaults to K // 2, the last teachers are the
jittered ones. The official weight decay covers every trainable variable, projection included, as the
recipe's SGD weight decay does here.

``cbd-linear`` (methods/cbd_linear.py) keeps this suite's earlier CBD: linear head, a bias-free
linear projection used only by the distillation term, K = 2 plain CE teachers differing by seed.

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

from pydantic import ValidationInfo, field_validator, model_validator

from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import Method, MethodError, float_logits, register
from bkdbench.models.scaled_cosine import COSINE_SCALE, ProjectedCosine

TEACHER_SEED_STRIDE = 1000  # teacher seeds s + 1000·j: students of seeds 0, 1, 2 share none


class CBDParams(MethodParams):
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of distillation; CE gets 1 - alpha")] = 0.4
    feature_weight: Annotated[float, Field(gt=0, description="the paper's β: scale of the cosine term")] = 100.0
    # strict: True or 2.5 teachers is a mistake, not a count
    teachers: Annotated[int, Field(ge=1, strict=True, description="number of teachers")] = 4
    jitter_teachers: Annotated[int, Field(ge=0, strict=True, description="how many of them (the last) are "
                                          "trained with colour jitter; default teachers // 2")] = 2

    @model_validator(mode="before")
    @classmethod
    def _half_jittered(cls, data):
        # jitter_teachers left out (or None): half of the teachers, rounded down, as the official 2 of 4
        if isinstance(data, dict) and data.get("jitter_teachers") is None:
            k = data.get("teachers", cls.model_fields["teachers"].default)
            if isinstance(k, int) and not isinstance(k, bool):
                data = {**data, "jitter_teachers": k // 2}
        return data

    @field_validator("jitter_teachers")
    @classmethod
    def _at_most_all(cls, value: int, info: ValidationInfo) -> int:
        k = info.data.get("teachers")
        if k is not None and value > k:
            raise ValueError(f"must be <= teachers ({k})")
        return value


def plan_teachers(base, teachers: int, jitter_teachers: int) -> list:
    """The teacher specs of one CBD student from ``base`` (its default ``ce-cosine20`` teacher): first
    the plain teachers with seeds s, s + 1000, ..., then the jittered ones with the same seeds again."""
    plain = teachers - jitter_teachers
    out = []
    for k in range(teachers):
        jitter, j = (k >= plain), (k - plain if k >= plain else k)
        out.append(type(base)(**{**base.model_dump(), "seed": base.seed + TEACHER_SEED_STRIDE * j,
                                 "params": {**base.params, "color_jitter": jitter}}))
    return out


@register("cbd")
class ClassBalancedDistillation(Method):
    """CBD as the official code: class-balanced student with a projection (dense + ReLU, D → D·K) inside
    the network feeding a cosine classifier of fixed scale 20 and the cosine feature distillation from
    K = 4 instance-sampled ``ce-cosine20`` teachers, 2 of them trained with colour jitter."""

    Params = CBDParams
    needs_teacher = True
    uses_features = True
    sampler = "class-balanced"
    head = "cosine"  # replaced by attach(): the projection and the scaled cosine classifier
    teacher_method = "ce-cosine20"

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        self.projection: nn.Module | None = None  # the student's head (ProjectedCosine), once attached

    @classmethod
    def teacher_specs(cls, base, params: dict) -> list:
        return plan_teachers(base, params["teachers"], params["jitter_teachers"])

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        # The head make_head built (a cosine layer over D features) is replaced; its weight stays in the
        # optimizer's list (built before attach) but gets no gradient, so SGD never changes it.
        dim = model.feature_dim
        device = next(model.parameters()).device
        model.fc = ProjectedCosine(dim, self.params.teachers * dim, self.num_classes, COSINE_SCALE).to(device)
        self.projection = model.fc
        return list(model.fc.parameters())

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The student's features that are compared with the teachers': ReLU(A·f + b), the classifier's input."""
        return self.projection.embed(features)

    def distill_loss(self, features: torch.Tensor, teacher_features) -> torch.Tensor:
        """mean_i (1 − cos(e_s, [f̂_t1; …; f̂_tK])) over the batch."""
        if self.projection is None:
            raise MethodError(f"{self.name}: call method.attach(model) first; it adds the projection to the student")
        many = teacher_features if isinstance(teacher_features, (list, tuple)) else [teacher_features]
        if len(many) != self.params.teachers:
            raise MethodError(f"{self.name}: expected features of {self.params.teachers} teachers, got {len(many)}")
        target = torch.cat([F.normalize(f.detach().float(), dim=-1) for f in many], dim=-1)
        projected = self.embed(features.float())
        if projected.shape != target.shape:
            raise MethodError(f"{self.name}: projected student features {tuple(projected.shape)} do not match the "
                              f"concatenated teacher features {tuple(target.shape)}")
        return (1 - F.cosine_similarity(projected, target, dim=-1)).mean()

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None, features=None,
             teacher_features=None) -> torch.Tensor:
        if features is None or teacher_features is None:
            raise MethodError(f"{self.name}: the loss needs the student's penultimate features (features=) and the "
                              "frozen teachers' (teacher_features=, one tensor per teacher)")
        ce = F.cross_entropy(float_logits(logits), targets)
        alpha, scale = self.params.alpha, self.params.feature_weight
        return (1 - alpha) * ce + alpha * scale * self.distill_loss(features, teacher_features)
