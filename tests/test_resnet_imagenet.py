"""The ImageNet-size ResNets (bkdbench/models/resnet_imagenet.py): torchvision's architectures (same
state-dict names and shapes as torchvision's own constructors), the project's heads, and the
features the methods ask for."""
from __future__ import annotations

import pytest
import torch
from torchvision import models as tv

from bkdbench.models import CosineLinear, create_model

TORCHVISION = {"resnet50": tv.resnet50, "resnext50_32x4d": tv.resnext50_32x4d, "resnet152": tv.resnet152}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_same_architecture_as_torchvision(name):
    ours = create_model(name, 1000).state_dict()
    theirs = TORCHVISION[name](weights=None).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_resnet10_is_resnet18_with_one_basic_block_per_stage():
    model = create_model("resnet10", 1000)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    resnet18 = tv.resnet18(weights=None)
    second_blocks = sum(count(getattr(resnet18, f"layer{i}")[1]) for i in range(1, 5))
    assert count(model) == count(resnet18) - second_blocks
    assert model.fc.in_features == 512 and model.feature_dim == 512


@pytest.mark.parametrize("name,dim", [("resnet10", 512), ("resnet50", 2048), ("resnext50_32x4d", 2048)])
def test_heads_features_and_small_inputs(name, dim):
    model = create_model(name, 7, head="cosine").eval()
    assert isinstance(model.fc, CosineLinear)
    x = torch.randn(2, 3, 28, 28)
    logits, feats = model(x, features=True)
    assert logits.shape == (2, 7) and feats.shape == (2, dim) and logits.abs().max() <= 1 + 1e-5
    assert torch.allclose(model(x), logits)
    one_channel = create_model(name, 3, in_channels=1)
    assert one_channel(torch.randn(2, 1, 32, 32)).shape == (2, 3)
