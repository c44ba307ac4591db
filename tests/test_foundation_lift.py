"""LIFT's modules and losses against NumPy transcriptions of shijxcs/LIFT (models/peft_modules.py
``AdaptFormer``, models/peft_vit.py, models/classifiers.py ``CosineClassifier``, trainer.py
``init_head_text_feat``, models/models.py ``ZeroShotCLIP``, utils/losses.py ``LogitAdjustedLoss``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("timm")

from bkdbench.methods import build  # noqa: E402
from bkdbench.models import create_model  # noqa: E402
from bkdbench.models.lift_modules import (AdaptedMLP, AdaptFormer, LiftCosine, ZeroShotHead, adapter_width,  # noqa: E402
                                          prompts, text_head_weight)


def np_layernorm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_adaptformer(x, a):
    """LIFT's AdaptFormer.forward: ln → down_proj → ReLU → up_proj → × scale."""
    h = np_layernorm(x, a["ln.weight"], a["ln.bias"])
    h = np.maximum(h @ a["down_proj.weight"].T + a["down_proj.bias"], 0.0)
    return (h @ a["up_proj.weight"].T + a["up_proj.bias"]) * a["scale"]


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numpy(module):
    return {k: v.detach().double().numpy() for k, v in module.state_dict().items()}


def test_adaptformer_starts_at_zero_and_matches_numpy():
    torch.manual_seed(0)
    a = AdaptFormer(16, 4)
    x = torch.randn(3, 5, 16)
    assert torch.count_nonzero(a(x)) == 0  # up_proj and biases start at zero: the backbone unchanged
    assert torch.count_nonzero(a.down_proj.weight) == 64 and float(a.scale) == 1.0
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    np.testing.assert_allclose(a(x).detach().double().numpy(), np_adaptformer(x.double().numpy(), _numpy(a)),
                               rtol=1e-4, atol=1e-5)


def test_adapter_width_is_lifts_rule():
    # 2 ** max(0, int(log2(C / (2 L)))): CIFAR-100 on ViT-B/16 → 4, ImageNet-LT → 32, Places-LT → 8, digits on 2 blocks → 2
    assert [adapter_width(c, l) for c, l in ((100, 12), (1000, 12), (365, 12), (10, 2), (10, 12))] == [4, 32, 8, 2, 1]


@pytest.mark.parametrize("name", ["clip-tiny", "vit-tiny"])
def test_adapter_sits_parallel_to_the_mlp_on_the_post_attention_state(name):
    """LIFT: out = h + mlp(ln_2(h)) + adaptformer(h), h = x + attn(ln_1(x)); the adapter's part checked in NumPy."""
    torch.manual_seed(0)
    model = create_model(name, 10, 3, weights="none").eval()
    block = model.blocks()[0]
    x = torch.randn(2, 17, 64)
    plain = block(x).detach()
    if name == "clip-tiny":
        h = x + block.attention(block.ln_1(x))
    else:
        h = x + block.attn(block.norm1(x))
    build("lift", [30, 20, 10, 5, 5, 4, 3, 2, 2, 1], epochs=1).restructure(model)
    assert isinstance(block.mlp, AdaptedMLP)
    adapter = block.mlp.adapter
    with torch.no_grad():
        adapter.up_proj.weight.normal_()
        adapter.scale.fill_(0.7)
        adapted = block(x)
    expected = plain.double().numpy() + np_adaptformer(h.detach().double().numpy(), _numpy(adapter))
    np.testing.assert_allclose(adapted.double().numpy(), expected, rtol=1e-4, atol=1e-4)
    assert len([b for b in model.blocks() if isinstance(b.mlp, AdaptedMLP)]) == len(model.blocks()) == 2


def test_cosine_head_init_and_forward():
    torch.manual_seed(0)
    head = LiftCosine(8, 5)
    w = head.weight.detach().double().numpy()
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)  # renorm_(2, 0, 1e-5).mul_(1e5): unit rows
    x = torch.randn(4, 8)
    np.testing.assert_allclose(head(x).detach().double().numpy(),
                               25.0 * np_normalize(x.double().numpy()) @ np_normalize(w).T, rtol=1e-5, atol=1e-5)


def test_text_initialised_head_and_zero_shot_against_numpy():
    torch.manual_seed(0)
    model = create_model("clip-tiny", 3, 3, weights="none").eval()
    names = ["apple", "aquarium_fish", "bear"]
    assert prompts(names) == ["a photo of a apple.", "a photo of a aquarium fish.", "a photo of a bear."]
    # the text tower's own output (open_clip) is the input; the head's arithmetic is checked here
    net, tokenizer = model.text_tower
    with torch.no_grad():
        raw = net.encode_text(tokenizer(prompts(names))).double().numpy()
    proj = model.proj.detach().double().numpy()
    text = np_normalize(raw)
    np.testing.assert_allclose(model.text_features(prompts(names)).double().numpy(), text, rtol=1e-5, atol=1e-6)
    expected_w = np_normalize(text @ proj.T)  # trainer.py: text_features @ image_encoder.proj.t(), normalised
    np.testing.assert_allclose(text_head_weight(model, names).double().numpy(), expected_w, rtol=1e-4, atol=1e-5)

    method = build("lift", [5, 3, 1], epochs=1)
    method.use_classnames(names)
    method.attach(model)
    np.testing.assert_allclose(model.fc.weight.detach().double().numpy(), expected_w, rtol=1e-4, atol=1e-5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x).double().numpy()
        logits = model(x).double().numpy()
    np.testing.assert_allclose(logits, 25.0 * np_normalize(feats) @ expected_w.T, rtol=1e-4, atol=1e-4)

    zs = build("zero-shot", [5, 3, 1], epochs=1)
    zs.use_classnames(names)
    zs.attach(model)
    assert isinstance(model.fc, ZeroShotHead)
    with torch.no_grad():
        logits = model(x).double().numpy()
    scale = float(np.exp(net.logit_scale.detach().double().numpy()))  # ZeroShotCLIP: logit_scale.exp()
    np.testing.assert_allclose(logits, scale * np_normalize(feats @ proj) @ text.T, rtol=1e-4, atol=1e-3)


def test_logit_adjusted_loss_against_numpy():
    counts = [50, 20, 5]
    method = build("lift", counts, epochs=1)
    z = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    adj = z.numpy() + np.log(np.array(counts) / sum(counts))  # LogitAdjustedLoss, tau = 1
    ce = -(adj[np.arange(6), y.numpy()] - np.log(np.exp(adj).sum(1))).mean()
    np.testing.assert_allclose(float(method.loss(z, y)), ce, rtol=1e-10)
    assert method.eval_logits(z) is z  # predictions use z unchanged


def test_what_trains():
    counts = [30, 20, 10, 5, 5, 4, 3, 2, 2, 1]
    for name, expect in (("lift", "adapter"), ("linear-probe", "fc"), ("full-ft", "blocks")):
        torch.manual_seed(0)
        model = create_model("clip-tiny", 10, 1, weights="none")
        method = build(name, counts, epochs=1)
        method.use_classnames([str(i) for i in range(10)])
        before = {id(p) for p in model.parameters()}
        new = method.attach(model)
        assert all(id(p) not in before for p in new)  # never a parameter train.py already holds
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trained and all(n.startswith("fc.") or expect in n for n in trained), (name, trained)
        assert not any(n.startswith(("backbone.conv1", "backbone.ln_pre", "backbone.ln_post", "proj")) for n in trained)
        if name == "full-ft":
            assert any("attn.in_proj_weight" in n for n in trained)


def test_lift_needs_names_and_linear_probe_does_not():
    from bkdbench.methods import MethodError

    with pytest.raises(MethodError, match="class names"):
        build("lift", [3, 2], epochs=1).use_classnames(None)
    with pytest.raises(MethodError, match="class names"):
        build("zero-shot", [3, 2], epochs=1).use_classnames(None)
    build("linear-probe", [3, 2], epochs=1).use_classnames(None)


def test_class_mean_head_without_text_against_numpy():
    """LIFT's init_head class_mean (its IN21k configs): w_c = normalize(mean of class c's features)."""
    torch.manual_seed(0)
    model = create_model("vit-tiny", 3, 3, weights="none").eval()
    method = build("lift", [4, 3, 2], epochs=1)
    method.use_classnames(["a", "b", "c"])  # names, but a timm ViT has no text tower
    method.attach(model)
    images = torch.randn(9, 3, 32, 32)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2])
    method.init_from_data(model, images, labels, lambda x: x)
    with torch.no_grad():
        feats = model.forward_features(images).double().numpy()
    means = np.stack([feats[labels.numpy() == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(model.fc.weight.detach().double().numpy(), np_normalize(means), rtol=1e-4, atol=1e-5)
