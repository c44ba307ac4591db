"""Cosine classifiers with a fixed scale, as Class-Balanced Distillation's official code uses in every
model (google-research/google-research, class_balanced_distillation/resnet.py: ``CosineLayer`` with a
non-trainable ``sigma = 20``), and CBD's student head: a projection (dense + ReLU) inside the network
that feeds that classifier and the distillation term alike.

Both are put onto a built model by a method (``Method.attach``/``restructure``), in place of the head
``make_head`` gave it; ``models/heads.py`` is unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import CosineLinear

COSINE_SCALE = 20.0  # the official CBD code's sigma (a tf.Variable with trainable=False)


class ScaledCosine(nn.Module):
    """logits = scale · cos(x, w_c): ``CosineLinear``'s cosines times a fixed number. The scale is a
    plain attribute, neither a parameter nor a buffer: nothing learns it and no state_dict changes it."""

    def __init__(self, cosine: CosineLinear, scale: float = COSINE_SCALE):
        super().__init__()
        self.cosine = cosine
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g} (fixed)"


class ProjectedCosine(nn.Module):
    """CBD's student head: ``embed(f) = ReLU(W f + b)`` from the backbone's ``in_features`` to
    ``embed_dim``, then ``ScaledCosine`` on it. The embedding is what the distillation term compares
    with the teachers' features, so the projection is trained by both losses, as in the official code.
    Initialised as Keras' ``Dense`` there: Glorot-uniform weights, zero bias."""

    def __init__(self, in_features: int, embed_dim: int, num_classes: int, scale: float = COSINE_SCALE):
        super().__init__()
        self.projection = nn.Linear(in_features, embed_dim)
        nn.init.xavier_uniform_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)
        self.classifier = ScaledCosine(CosineLinear(embed_dim, num_classes), scale)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.projection(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(features))
