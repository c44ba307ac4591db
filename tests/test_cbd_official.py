"""``cbd`` as the official code (google-research/google-research, class_balanced_distillation): cosine
classifiers with the fixed scale 20 in the student and its ``ce-cosine20`` teachers, the student's
projection (dense + ReLU) inside the network feeding the classifier and the distillation term, four
teachers of which two are trained with colour jitter, the loss against a NumPy transcription of the
official formula, and a short digits run with its four teachers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bkdbench.data import DeviceLoader
from bkdbench.data.augment import simclr_color_jitter
from bkdbench.methods import MethodError, build, method_class, validate_params
from bkdbench.models import create_model
from bkdbench.specs import SpecError, make_spec
from bkdbench.training.packed import pack_refusal
from bkdbench.training.train import frozen_teachers, train, train_step

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: CPU tests stay fast on a busy machine


def _np_cosine_logits(x, w, scale=20.0):
    """The official CosineLayer: scale · l2n(x, rows) @ l2n(w, columns), in float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    return scale * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))


def _np_ce(z, y):
    z = np.asarray(z, np.float64)
    m = z.max(1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(y)), y]))


def _np_official_loss(f_s, A, b, W, teacher_feats, y, alpha, beta):
    """A transcription of the official train.py and resnet.py, in NumPy: the student's features are
    l2_normalize(relu(proj(f))) and feed the CosineLayer (sigma 20); each teacher (proj_dim = -1) returns
    l2_normalize(f_t); TeacherModel concatenates them; compute_feat_distillation L2-normalises both sides
    and takes 1 - sum(a·b), averaged; loss = (1 - alpha)·CE + alpha·beta·that."""
    f_s = np.asarray(f_s, np.float64)
    e = np.maximum(f_s @ np.asarray(A, np.float64).T + np.asarray(b, np.float64), 0)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    logits = _np_cosine_logits(e, W)
    t = np.concatenate([np.asarray(f, np.float64) / np.linalg.norm(f, axis=1, keepdims=True) for f in teacher_feats], 1)
    s_n = e / np.linalg.norm(e, axis=1, keepdims=True)
    t_n = t / np.linalg.norm(t, axis=1, keepdims=True)
    feat = float(np.mean(1.0 - np.sum(s_n * t_n, axis=-1)))
    return (1 - alpha) * _np_ce(logits, y) + alpha * beta * feat, logits, feat


def _student(num_classes=10, **params):
    torch.manual_seed(0)
    model = create_model("cnn-small", num_classes, 1, head=method_class("cbd").head)
    method = build("cbd", [50] * num_classes, **params)
    extra = method.attach(model)
    return model, method, extra


def test_teacher_head_is_cosine_with_the_fixed_scale_20():
    method = build("ce-cosine20", [50] * 10)
    torch.manual_seed(0)
    model = create_model("cnn-small", 10, 1, head=method.head)
    assert method.attach(model) == []
    x = torch.randn(6, 1, 8, 8)
    model.eval()
    logits, feats = model(x, features=True)
    expected = _np_cosine_logits(feats.detach().numpy(), model.fc.cosine.weight.detach().numpy())
    np.testing.assert_allclose(logits.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert float(logits.detach().abs().max()) <= 20 + 1e-4
    names = [n for n, _ in model.named_parameters()]
    assert not any("scale" in n or "sigma" in n for n in names), "the scale is not learned"
    assert not any("scale" in k for k in model.state_dict()), "nor stored: it is fixed"
    # A cached teacher loads into a fresh model in that shape (restructure), as a student's teacher.
    spec = make_spec("digits", 10, "cbd")
    teachers = frozen_teachers(spec, [model.state_dict()] * 4, 10, 1, torch.device("cpu"))
    np.testing.assert_allclose(teachers[0](x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_student_head_is_a_projection_inside_the_network_feeding_a_scaled_cosine():
    model, method, extra = _student()
    D, K = model.feature_dim, 4
    head = model.fc
    assert method.head == "cosine" and method.projection is head
    assert head.projection.weight.shape == (K * D, D) and head.projection.bias is not None
    assert {id(p) for p in extra} == {id(p) for p in head.parameters()}
    assert {"fc.projection.weight", "fc.projection.bias", "fc.classifier.cosine.weight"} <= set(model.state_dict())
    with torch.no_grad():
        head.projection.bias.normal_()  # a non-zero bias, so that it counts in the check
    x = torch.randn(5, 1, 8, 8)
    model.eval()
    logits, feats = model(x, features=True)
    f = feats.detach().numpy().astype(np.float64)
    e = np.maximum(f @ head.projection.weight.detach().numpy().T + head.projection.bias.detach().numpy(), 0)
    expected = _np_cosine_logits(e, head.classifier.cosine.weight.detach().numpy())
    np.testing.assert_allclose(logits.detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    # The projection feeds the classifier: other projection weights, other logits.
    with torch.no_grad():
        head.projection.weight.mul_(-1.0).add_(0.3)
    assert not torch.allclose(model(x), logits, atol=1e-3)
    # ... and it is the very embedding the distillation term compares with the teachers.
    torch.testing.assert_close(method.embed(feats), torch.relu(head.projection(feats)))


def test_specs_name_four_cosine_teachers_two_with_colour_jitter():
    spec = make_spec("digits", 10, "cbd")
    assert spec.params == {"alpha": 0.4, "feature_weight": 100.0, "teachers": 4, "jitter_teachers": 2}
    assert method_class("cbd").teacher_method == "ce-cosine20"
    assert spec.teacher is None and len(spec.teachers) == 4
    assert all(t.method == "ce-cosine20" and method_class(t.method).head == "cosine" for t in spec.teachers)
    assert [t.params["color_jitter"] for t in spec.teachers] == [False, False, True, True]
    assert sum(t.params["color_jitter"] for t in spec.teachers) == 2
    assert [t.seed for t in spec.teachers] == [0, 1000, 0, 1000], "plain and jittered teachers share seeds, as officially"
    assert len({t.run_id for t in spec.teachers}) == 4, "colour jitter is part of the teacher's run id"
    assert all(build(t.method, [5] * 10, **t.params).color_jitter == t.params["color_jitter"] for t in spec.teachers)
    assert spec.teachers[0].run_id != make_spec("digits", 10, "kd").teacher.run_id, "not the suite's plain CE run"
    for t in spec.teachers:
        assert (t.dataset, t.model, t.recipe, t.epochs, t.split) == (spec.dataset, spec.model, spec.recipe, spec.epochs, spec.split)
    # Other counts: half of them jittered by default; the count is checked.
    assert validate_params("cbd", teachers=1)["jitter_teachers"] == 0
    assert validate_params("cbd", teachers=3)["jitter_teachers"] == 1
    three = make_spec("digits", 10, "cbd", seed=2, params={"teachers": 3, "jitter_teachers": 2})
    assert [(t.seed, t.params["color_jitter"]) for t in three.teachers] == [(2, False), (2, True), (1002, True)]
    with pytest.raises(MethodError, match=r"jitter_teachers must be <= teachers \(4\) \(got 5\)"):
        validate_params("cbd", jitter_teachers=5)
    with pytest.raises(SpecError, match="color_jitter: Input should be a valid boolean"):
        make_spec("digits", 10, "ce-cosine20", params={"color_jitter": "yes"})
    assert pack_refusal(make_spec("digits", 10, "ce-cosine20")) is not None, "packs never attach the scaled head"


def test_loss_matches_a_numpy_transcription_of_the_official_formula():
    class Stub(torch.nn.Module):
        feature_dim = 3

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

    rng = np.random.default_rng(0)
    K, D, C = 2, 3, 4
    method = build("cbd", [10, 5, 2, 1], teachers=K, alpha=0.3, feature_weight=50.0)
    method.attach(Stub())
    head = method.projection
    A, b = rng.normal(size=(K * D, D)), rng.normal(size=K * D) * 0.5
    W = rng.normal(size=(K * D, C))
    with torch.no_grad():
        head.projection.weight.copy_(torch.tensor(A))
        head.projection.bias.copy_(torch.tensor(b))
        head.classifier.cosine.weight.copy_(torch.tensor(W))
    f_s = rng.normal(size=(5, D))
    teachers = [rng.normal(size=(5, D)) * 3, rng.normal(size=(5, D)) * 0.2]
    y = np.array([0, 1, 2, 3, 1])
    expected, np_logits, feat = _np_official_loss(f_s, A, b, W, teachers, y, 0.3, 50.0)
    assert 0.05 < feat < 1.9, "not a degenerate example"
    features = torch.tensor(f_s, dtype=torch.float32)
    logits = head(features)
    np.testing.assert_allclose(logits.detach().numpy(), np_logits, rtol=1e-4, atol=1e-4)
    got = method.loss(logits, torch.tensor(y), features=features,
                      teacher_features=[torch.tensor(t, dtype=torch.float32) for t in teachers])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # The gradient of the distillation term reaches the projection, the classifier's input.
    method.distill_loss(features, [torch.tensor(t, dtype=torch.float32) for t in teachers]).backward()
    assert head.projection.weight.grad is not None and head.projection.weight.grad.abs().sum() > 0


def test_colour_jitter_is_batched_augmentation_the_loader_applies():
    g = torch.Generator().manual_seed(0)
    rgb = (torch.rand(64, 3, 8, 8, generator=g) * 255).to(torch.uint8)
    out = simclr_color_jitter(rgb, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == rgb.shape and not torch.equal(out, rgb)
    gray = simclr_color_jitter(rgb, torch.Generator().manual_seed(1), jitter_p=0.0, gray_p=1.0)
    luma = (rgb.double() / 255 * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1)
    assert (gray.double() - (luma * 255).round().unsqueeze(1)).abs().max() <= 1
    assert torch.equal(simclr_color_jitter(rgb, torch.Generator().manual_seed(1), jitter_p=0.0, gray_p=0.0), rgb)

    labels = torch.arange(64) % 4
    batches = {}
    for jitter in (False, True):
        loader = DeviceLoader(rgb, labels, 64, [0.5] * 3, [0.25] * 3, seed=3, color_jitter=jitter)
        batches[jitter] = next(iter(loader))[0]
    assert not torch.allclose(batches[False], batches[True])


def test_train_hands_the_teachers_colour_jitter_to_the_loader(monkeypatch):
    import bkdbench.training.train as train_module

    seen = []

    class Spy(DeviceLoader):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("color_jitter"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train_module, "DeviceLoader", Spy)
    spec = make_spec("digits", 10, "cbd", epochs=1)
    train(spec.teachers[2], evaluate_test=False)
    train(spec.teachers[0], evaluate_test=False)
    assert seen == [True, False]


def test_two_epoch_digits_run_with_its_four_teachers():
    spec = make_spec("digits", 10, "cbd", epochs=2)
    results = [train(t) for t in spec.teachers]
    states = [r.state_dict for r in results]
    assert all("fc.cosine.weight" in s and "fc.weight" not in s for s in states)
    result = train(spec, teacher_state=states)
    state = result.state_dict
    assert state["fc.projection.weight"].shape == (4 * 128, 128) and state["fc.projection.bias"].shape == (4 * 128,)
    assert state["fc.classifier.cosine.weight"].shape == (4 * 128, 10)
    assert all(np.isfinite(h["train_loss"]) for h in result.history) and len(result.history) == 2
    assert 0 <= result.metrics["top1"] <= 100

    # One more step of the student from these weights: finite, teachers untouched.
    model, method, extra = _student()
    model.load_state_dict(state)
    teachers = frozen_teachers(spec, states, 10, 1, torch.device("cpu"))
    kept = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    optimizer = torch.optim.SGD(list(model.parameters()), lr=0.01)
    model.train()
    loss = train_step(model, optimizer, method, torch.randn(8, 1, 8, 8), torch.arange(8) % 10, epoch=0, teacher=teachers)
    assert torch.isfinite(loss)
    assert all(torch.equal(v, s[k]) for t, s in zip(teachers, kept) for k, v in t.state_dict().items())


def test_cbd_through_bkdbench_train_trains_its_four_teachers_first(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from bkdbench.cli import app
    from bkdbench.leaderboard.store import extra_teacher_ids, read_rows

    result = CliRunner().invoke(app, ["train", "--dataset", "digits", "--imbalance", "10", "--method", "cbd",
                                      "--epochs", "2", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("training the teacher first") == 4, result.output
    spec = make_spec("digits", 10, "cbd", epochs=2)
    rows, bad = read_rows(Path(tmp_path) / "leaderboard")
    assert bad == [] and sorted(rows.method) == ["cbd"] + ["ce-cosine20"] * 4
    row = rows[rows.method == "cbd"].iloc[0]
    assert row.run_id == spec.run_id and row.teacher_run_id == ",".join(t.run_id for t in spec.teachers)
    teachers = rows[rows.method == "ce-cosine20"]
    assert sorted(teachers.params.map(lambda p: '"color_jitter":true' in p.replace(" ", ""))) == [False, False, True, True]
    # The teachers after the first are no runs anyone asked for: tables without --suite leave them out.
    assert extra_teacher_ids(rows) == {t.run_id for t in spec.teachers[1:]}
