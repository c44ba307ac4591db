"""ImageNet-size ResNets for the large benchmarks, from torchvision's definitions (no weights are
downloaded): ResNet-10 (BasicBlock [1, 1, 1, 1], 512-d features: the OLTR/BALMS ImageNet-LT backbone),
ResNet-50 (iNat18), ResNeXt-50 32×4d (ImageNet-LT in the decoupling paper) and ResNet-152 (Places-LT),
with this project's head conventions: ``model.fc`` is the head the method asks for (linear or cosine)
and ``forward(x, features=True)`` also returns the pooled penultimate features."""
from __future__ import annotations

import functools

from .heads import make_head
from .registry import register_model


@functools.lru_cache(maxsize=None)
def _torchvision():
    """(ImageNetResNet, torchvision's resnet module), made on first use: importing torchvision takes
    about a second, which every command that only looks up a model name would otherwise pay."""
    import torch
    from torch import nn
    from torchvision.models import resnet as tv

    class ImageNetResNet(tv.ResNet):
        def __init__(self, block, layers, num_classes: int, in_channels: int = 3, head: str = "linear", **kw):
            super().__init__(block, layers, num_classes=num_classes, **kw)
            if in_channels != 3:
                self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
                nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.feature_dim = 512 * block.expansion
            self.fc = make_head(head, self.feature_dim, num_classes)

        def forward(self, x: torch.Tensor, features: bool = False):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            feats = torch.flatten(self.avgpool(x), 1)
            logits = self.fc(feats)
            return (logits, feats) if features else logits

    return ImageNetResNet, tv


def _build(block: str, layers: list[int], **kw):
    cls, tv = _torchvision()
    return cls(getattr(tv, block), layers, **kw)


@register_model("resnet10")
def resnet10(**kw):
    return _build("BasicBlock", [1, 1, 1, 1], **kw)


@register_model("resnet50")
def resnet50(**kw):
    return _build("Bottleneck", [3, 4, 6, 3], **kw)


@register_model("resnext50_32x4d")
def resnext50_32x4d(**kw):
    return _build("Bottleneck", [3, 4, 6, 3], groups=32, width_per_group=4, **kw)


@register_model("resnet152")
def resnet152(**kw):
    return _build("Bottleneck", [3, 8, 36, 3], **kw)
