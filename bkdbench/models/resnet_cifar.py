"""ResNet-8/20/32 for 32×32 inputs (He et al. 2016, CIFAR variant), as used by LDAM-DRW and BKD:
3 stages of n basic blocks with 16/32/64 channels, option-A shortcuts (stride-2 subsampling and
zero-padded channels, no parameters), Kaiming-normal init. ResNet-32 (n=5) has ~0.46M parameters."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .heads import make_head
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else 0
        self.stride = stride

    def shortcut(self, x):
        if self.stride == 1 and self.pad == 0:
            return x
        # Option A: subsample spatially, pad the new channels with zeros on both sides.
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int = 3, head: str = "linear"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.feature_dim = 64
        self.fc = make_head(head, 64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x, features: bool = False):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        feats = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits = self.fc(feats)
        return (logits, feats) if features else logits


@register_model("resnet8")
def resnet8(**kw):
    return ResNetCifar(1, **kw)


@register_model("resnet20")
def resnet20(**kw):
    return ResNetCifar(3, **kw)


@register_model("resnet32")
def resnet32(**kw):
    return ResNetCifar(5, **kw)
