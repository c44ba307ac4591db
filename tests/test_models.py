"""Models: parameter counts computed here layer by layer, option-A shortcuts, shapes, heads, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bkdbench.models import CosineLinear, ModelError, create_model, make_head, model_names
from bkdbench.models.resnet_cifar import BasicBlock


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def resnet_cifar_params(blocks: int, num_classes: int, in_channels: int = 3) -> int:
    """Parameters of the CIFAR ResNet-(6n+2), from its architecture: 3×3 convs without bias, BN with
    weight + bias (2 per channel), option-A shortcuts with no parameters, a 64→C linear head."""
    conv = lambda cin, cout: 9 * cin * cout  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(in_channels, 16) + bn(16)
    cin = 16
    for planes in (16, 32, 64):
        for _ in range(blocks):
            total += conv(cin, planes) + bn(planes) + conv(planes, planes) + bn(planes)
            cin = planes
    return total + 64 * num_classes + num_classes


def test_resnet32_parameter_count():
    model = create_model("resnet32", num_classes=10)
    expected = resnet_cifar_params(5, 10)
    assert expected == 464_154
    assert n_params(model) == expected
    assert 460_000 <= n_params(model) <= 470_000  # "~0.46M" in the papers
    assert n_params(create_model("resnet32", num_classes=100)) == resnet_cifar_params(5, 100)
    assert n_params(create_model("resnet20", num_classes=10)) == resnet_cifar_params(3, 10)
    assert n_params(create_model("resnet8", num_classes=10)) == resnet_cifar_params(1, 10)


def test_option_a_shortcut_has_no_parameters_and_pads_channels():
    block = BasicBlock(16, 32, stride=2)
    assert n_params(block) == 9 * 16 * 32 + 9 * 32 * 32 + 2 * 32 + 2 * 32  # the two convs and BNs only
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    # independently: take every other pixel, put the 16 channels in the middle of 32 (8 zeros each side)
    expected = torch.zeros(2, 32, 4, 4)
    expected[:, 8:24] = x[:, :, 0::2, 0::2]
    assert torch.equal(out, expected)
    same = BasicBlock(16, 16, stride=1)
    assert torch.equal(same.shortcut(x), x)


def test_block_forward_adds_the_shortcut():
    torch.manual_seed(0)
    block = BasicBlock(16, 32, stride=2).eval()
    x = torch.randn(2, 16, 8, 8)
    residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    torch.testing.assert_close(block(x), F.relu(residual + shortcut), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,channels,size,feat_dim", [
    ("resnet32", 3, 32, 64), ("resnet8", 3, 32, 64),
    ("cnn-small", 1, 8, 128), ("cnn-small", 1, 28, 128), ("cnn-small", 3, 32, 128),
])
def test_output_and_feature_shapes(name, channels, size, feat_dim):
    model = create_model(name, num_classes=7, in_channels=channels).eval()
    x = torch.randn(3, channels, size, size)
    logits = model(x)
    assert logits.shape == (3, 7)
    logits2, feats = model(x, features=True)
    assert feats.shape == (3, feat_dim) and model.feature_dim == feat_dim
    torch.testing.assert_close(logits2, logits, rtol=0, atol=0)
    # the logits are the head applied to the returned features
    torch.testing.assert_close(model.fc(feats), logits, rtol=0, atol=1e-6)


def test_cosine_head_outputs_are_cosines():
    torch.manual_seed(0)
    model = create_model("resnet32", num_classes=10, head="cosine").eval()
    assert isinstance(model.fc, CosineLinear)
    x = torch.randn(8, 3, 32, 32) * 5
    logits, feats = model(x, features=True)
    assert logits.min() >= -1 - 1e-6 and logits.max() <= 1 + 1e-6
    # independently: cosine similarity between each feature and each class column
    w = model.fc.weight  # in_features × classes
    expected = torch.stack([F.cosine_similarity(feats, w[:, j][None].expand_as(feats), dim=1) for j in range(10)], 1)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_cosine_head_extremes_and_initial_norms():
    torch.manual_seed(1)
    head = CosineLinear(4, 3)
    torch.testing.assert_close(head.weight.norm(dim=0), torch.ones(3), rtol=0, atol=1e-5)  # unit class vectors
    with torch.no_grad():
        head.weight.copy_(torch.eye(4)[:, :3])
    out = head(torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, -3.0, 0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = create_model("cnn-small", num_classes=10, in_channels=1)
    torch.manual_seed(3)
    b = create_model("cnn-small", num_classes=10, in_channels=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_model_lists_valid_names():
    assert {"resnet8", "resnet20", "resnet32", "cnn-small"} <= set(model_names())
    with pytest.raises(ModelError) as err:
        create_model("resnet33", num_classes=10)
    message = str(err.value)
    assert "resnet33" in message and all(name in message for name in model_names())


def test_unknown_head_lists_choices():
    with pytest.raises(ValueError, match="linear.*cosine"):
        make_head("arcface", 64, 10)
