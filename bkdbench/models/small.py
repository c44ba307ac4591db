"""A small CNN for 8×8 digits and 28×28 Fashion-MNIST: three conv-BN-ReLU layers, global pooling."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .heads import make_head
from .registry import register_model


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, head: str = "linear", width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
        )
        self.feature_dim = 4 * w
        self.fc = make_head(head, 4 * w, num_classes)

    def forward(self, x, features: bool = False):
        feats = F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)
        logits = self.fc(feats)
        return (logits, feats) if features else logits


@register_model("cnn-small")
def cnn_small(**kw):
    return SmallCNN(**kw)
