"""Cross-entropy with a cosine classifier of fixed scale 20: the stage-1 teachers of Class-Balanced
Distillation as the official code trains them (google-research/google-research,
class_balanced_distillation: configs/stage_one_vanilla_seed{1,2}.py and stage_one_data_aug_seed{1,2}.py
train plain CE with instance ("uniform") sampling and ``proj_dim = -1``, i.e. no projection, through
resnet.py's ``CosineLayer``: logits = 20·cos(f, w_c), the 20 not trained).

    loss = mean_i −log softmax(20·cos(f_i, w))[y_i]

``color_jitter=True`` is the official ``add_color_jitter`` (the "data_aug" teachers): on top of the
dataset's own augmentation every training batch gets SimCLR's colour distortion of strength 1
(``augment.simclr_color_jitter``: colour jitter 0.8/0.8/0.8/0.2 with p = 0.8, then grayscale with
p = 0.2), applied by the loader. It is a method parameter, so it is part of the run's id and its row.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import Method, float_logits, register
from bkdbench.models.scaled_cosine import COSINE_SCALE, ScaledCosine


class CECosineParams(MethodParams):
    color_jitter: Annotated[bool, Field(strict=True, description="add SimCLR colour jitter to every training batch")] = False


@register("ce-cosine20")
class CosineCrossEntropy(Method):
    """CE through a cosine classifier with the fixed scale 20 (CBD's teachers); optional colour jitter."""

    Params = CECosineParams
    head = "cosine"  # CosineLinear; attach() wraps it in the fixed scale

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        self.color_jitter = params.color_jitter

    @classmethod
    def restructure(cls, model: nn.Module) -> None:
        if not isinstance(model.fc, ScaledCosine):
            model.fc = ScaledCosine(model.fc, COSINE_SCALE)

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        self.restructure(model)
        return []  # the wrapped CosineLinear's weight is already one of the model's parameters

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        return F.cross_entropy(float_logits(logits), targets)
