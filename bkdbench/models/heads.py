"""Classifier heads: a plain linear layer, or the normalised (cosine) layer LDAM needs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("linear", "cosine")


class CosineLinear(nn.Module):
    """Logits are cosines between L2-normalised features and class weight vectors (in [-1, 1]);
    the LDAM loss applies its margin and scale ``s`` itself. Initialised as in the LDAM code:
    uniform in [-1, 1], then every class vector renormalised to unit length."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


def make_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "cosine":
        return CosineLinear(in_features, num_classes)
    raise ValueError(f"unknown head {kind!r}; choose one of: {', '.join(HEADS)}")
