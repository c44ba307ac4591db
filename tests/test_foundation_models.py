"""Foundation models through the real open_clip and timm code, random weights (no hub here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("timm")

from bkdbench.models import create_model  # noqa: E402
from bkdbench.models.foundation import FOUNDATIONS, WeightsError, resolve_weights, seen_in1k  # noqa: E402


def test_clip_tiny_forward_resizes_grey_digits_on_the_device():
    model = create_model("clip-tiny", 10, 1, weights="none").eval()
    assert type(model.backbone).__module__.startswith("open_clip")
    x = torch.randn(3, 1, 8, 8)
    logits, feats = model(x, features=True)
    assert logits.shape == (3, 10) and feats.shape == (3, 64)
    # the input the backbone sees: un-normalised with the dataset's stats, grey → RGB, 32 px, CLIP's stats
    model.set_input_stats((0.4,), (0.2,))
    seen = model.model_input(x)
    raw = (x * 0.2 + 0.4).expand(-1, 3, -1, -1)
    up = torch.nn.functional.interpolate(raw, size=(32, 32), mode="bicubic", align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen, (up - mean) / std)
    text = model.text_features(["a photo of a 0.", "a photo of a 1."])
    assert text.shape == (2, 32)
    np.testing.assert_allclose(text.norm(dim=-1).numpy(), 1.0, rtol=1e-5)


def test_vit_tiny_is_timm():
    model = create_model("vit-tiny", 5, 3, weights="none").eval()
    assert type(model.backbone).__module__.startswith("timm")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert model.proj is None and not model.has_text


def test_weight_tags_and_provenance():
    assert resolve_weights("clip-vit-b16", None) == "openai"
    assert resolve_weights("vit-b16-in21k-ft-in1k", "pretrained") == "augreg_in21k_ft_in1k"
    assert resolve_weights("clip-tiny", "none") == "none"
    assert resolve_weights("resnet32", None) is None
    with pytest.raises(WeightsError, match="no pretrained weights"):
        resolve_weights("clip-tiny", "pretrained")
    with pytest.raises(WeightsError, match="pretrained, none or an existing"):
        resolve_weights("clip-vit-b16", "laion")
    with pytest.raises(WeightsError, match="--pretrained FILE"):
        resolve_weights("resnet32", "none")
    assert seen_in1k("vit-b16-in21k-ft-in1k", "augreg_in21k_ft_in1k") is True
    assert seen_in1k("vit-b16-in21k", "augreg_in21k") is False
    assert seen_in1k("clip-vit-b16", "openai") is False
    assert seen_in1k("clip-vit-b16", "file:0123456789abcdef") is True
    assert set(FOUNDATIONS) >= {"clip-vit-b16", "vit-b16-in21k", "vit-b16-in21k-ft-in1k", "clip-tiny"}


def test_class_name_files(tmp_path):
    from bkdbench.data import DataError
    from bkdbench.data.classnames import class_names, read_names

    (tmp_path / "places.txt").write_text("airfield airfield\nairplane_cabin airplane_cabin\n")
    (tmp_path / "imagenet.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    (tmp_path / "plain.txt").write_text("aquarium fish\n\nbear\n")
    (tmp_path / "inat").mkdir()
    (tmp_path / "inat" / "categories.json").write_text('[{"id": 1, "name": "Aa b"}, {"id": 0, "name": "Cc d"}]')
    assert read_names(tmp_path / "places.txt") == ["airfield", "airplane_cabin"]
    assert read_names(tmp_path / "imagenet.txt") == ["tench", "goldfish"]
    assert read_names(tmp_path / "plain.txt") == ["aquarium fish", "bear"]
    assert read_names(tmp_path / "inat" / "categories.json") == ["Cc d", "Aa b"]
    assert class_names("inat18", [], 2, tmp_path / "inat") == ["Cc d", "Aa b"]
    assert class_names("cifar10", ["airplane", "automobile"], 2) == ["airplane", "automobile"]
    assert class_names("imagenet-lt", ["n01440764", "n01443537"], 2, tmp_path) is None  # no classnames.txt there
    (tmp_path / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    assert class_names("imagenet-lt", ["n01440764", "n01443537"], 2, tmp_path) == ["tench", "goldfish"]
    with pytest.raises(DataError, match="2 names for 3 classes"):
        class_names("places-lt", [], 3, tmp_path)
