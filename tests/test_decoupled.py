"""Decoupled classifiers (cRT, LWS, τ-norm): what each freezes, trains and changes, checked against
independent computations, plus their two-stage specs and a run through `bkdbench train`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bkdbench.cli import app
from bkdbench.leaderboard.store import read_rows
from bkdbench.methods import MethodError, build, validate_params
from bkdbench.methods.decoupled import TAU_GRID
from bkdbench.models import create_model
from bkdbench.specs import make_spec
from bkdbench.training.train import train


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: CPU tests stay fast on a busy machine


@pytest.fixture(scope="module")
def stage1(one_thread_for_module):
    return train(make_spec("digits", 50, "ce", epochs=10)).state_dict


def _model(stage1_state):
    torch.manual_seed(0)
    model = create_model("cnn-small", 10, 1)
    model.load_state_dict(stage1_state)
    return model


def test_two_stage_specs():
    ce = make_spec("digits", 50, "ce")
    for method in ("crt", "lws", "tau-norm"):
        spec = make_spec("digits", 50, method)
        assert spec.teacher.run_id == ce.run_id, "stage 1 is the plain CE run of the same setup"
    assert make_spec("digits", 50, "crt").epochs == 4  # 10% of the 40-epoch budget
    assert make_spec("digits", 50, "crt", params={"stage2_fraction": 0.25}).epochs == 10
    assert make_spec("digits", 50, "tau-norm").epochs == 1
    assert validate_params("tau-norm") == {"tau": "auto", "bias": "keep"}
    assert validate_params("crt") == validate_params("lws") == {"stage2_fraction": 0.1, "bn_stats": "re-estimate"}
    with pytest.raises(MethodError, match="bias"):
        validate_params("tau-norm", bias="sometimes")
    with pytest.raises(MethodError, match="bn_stats"):
        validate_params("crt", bn_stats="running")
    for bad in ({"stage2_fraction": 0}, {"stage2_fraction": 1.5}):
        with pytest.raises(MethodError, match="stage2_fraction"):
            validate_params("crt", **bad)
    for bad in ({"tau": -1}, {"tau": "sometimes"}):
        with pytest.raises(MethodError, match="tau"):
            validate_params("tau-norm", **bad)


def test_crt_retrains_only_a_reinitialised_classifier(stage1):
    method = build("crt", [100] * 10)
    assert method.sampler == "class-balanced" and method.needs_teacher
    model = _model(stage1)
    trainable = method.prepare(model, stage1)
    assert {id(p) for p in trainable} == {id(p) for p in model.fc.parameters()}
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc."))
    assert not torch.equal(model.fc.weight, stage1["fc.weight"]), "the classifier is re-initialised"
    method.set_train_mode(model)
    assert model.training, "Kang's model.train(): the frozen backbone's BatchNorm statistics are re-estimated"

    spec = make_spec("digits", 50, "crt", params={"stage2_fraction": 0.3})  # 12 epochs
    result = train(spec, teacher_state=stage1)
    for name, tensor in stage1.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert not torch.equal(result.state_dict[name], tensor), f"{name} was not re-estimated"
        elif not name.startswith("fc."):
            assert torch.equal(result.state_dict[name], tensor), f"{name} changed"
    assert not torch.equal(result.state_dict["fc.weight"], stage1["fc.weight"])
    assert result.metrics["top1"] > 50


def test_lws_scales_each_class_vector(stage1):
    model = _model(stage1)
    method = build("lws", [100] * 10)
    (scale,) = method.prepare(model, stage1)
    with torch.no_grad():
        scale.copy_(torch.linspace(0.5, 2.0, 10))
    x = torch.randn(3, 1, 8, 8)
    model.eval()
    logits, feats = model(x, features=True)
    w, b = stage1["fc.weight"], stage1["fc.bias"]
    expected = (feats @ w.T + b) * torch.linspace(0.5, 2.0, 10)  # Kang's TauNormClassifier: fc(x) * scales
    assert torch.allclose(logits, expected, atol=1e-5)

    result = train(make_spec("digits", 50, "lws", params={"stage2_fraction": 0.3}), teacher_state=stage1)
    assert torch.equal(result.state_dict["fc.linear.weight"], w) and torch.equal(result.state_dict["fc.linear.bias"], b)
    assert not torch.equal(result.state_dict["fc.scale"], torch.ones(10)), "the scales were learned"


def test_tau_norm_formula_and_choice_on_validation(stage1):
    w = stage1["fc.weight"]
    model = _model(stage1)
    method = build("tau-norm", [100] * 10, tau=0.7)
    calls = []
    extra = method.finalize(model, lambda: calls.append(1) or 0.0)
    norms = torch.sqrt((w ** 2).sum(dim=1, keepdim=True))
    assert torch.allclose(model.fc.weight, w / norms ** 0.7, atol=1e-6)
    assert extra == {"tau": 0.7} and not calls, "a given τ needs no validation"

    model = _model(stage1)
    scores = {tau: 50.0 for tau in TAU_GRID}
    scores[0.6] = scores[1.4] = 80.0  # a tie: the smaller τ wins
    seen = []

    def validate():
        current = model.fc.weight.detach()
        tau = min(TAU_GRID, key=lambda t: (current - w / norms ** t).abs().max().item())
        seen.append(tau)
        return scores[tau]

    extra = build("tau-norm", [100] * 10).finalize(model, validate)
    assert seen == list(TAU_GRID)
    assert extra == {"tau": 0.6, "tau_val_top1": 80.0}
    assert torch.allclose(model.fc.weight, w / norms ** 0.6, atol=1e-6)


def test_tau_norm_can_drop_the_bias_as_kang(stage1):
    """NumPy transcription of Kang's tau_norm.py: pnorm(weights, p) then dotproduct_similarity (no bias)."""
    import numpy as np

    w, b = stage1["fc.weight"].double().numpy(), stage1["fc.bias"].double().numpy()
    x = torch.randn(5, 1, 8, 8)
    for bias, tau in (("drop", 0.8), ("keep", 0.8)):
        model = _model(stage1)
        extra = build("tau-norm", [100] * 10, tau=tau, bias=bias).finalize(model, lambda: 0.0)
        assert extra == {"tau": tau}
        model.eval()
        with torch.no_grad():
            logits, feats = model(x, features=True)
        ws = w.copy()
        for i in range(ws.shape[0]):
            ws[i] = ws[i] / np.linalg.norm(w[i]) ** tau
        expected = feats.double().numpy() @ ws.T + (b if bias == "keep" else 0.0)
        np.testing.assert_allclose(logits.double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_stage2_re_estimates_batchnorm_on_its_batches(stage1):
    """One training-mode forward updates the first BatchNorm's running mean by torch's rule
    (1 − 0.1)·old + 0.1·batch mean of the frozen convolution's output; ``bn_stats: frozen`` keeps it."""
    x = torch.randn(16, 1, 8, 8)
    conv_out = torch.nn.functional.conv2d(x, stage1["body.0.weight"], padding=1)
    expected = 0.9 * stage1["body.1.running_mean"] + 0.1 * conv_out.mean(dim=(0, 2, 3))
    for method, bn_stats in (("crt", "re-estimate"), ("lws", "re-estimate"), ("lws", "frozen")):
        model = _model(stage1)
        m = build(method, [100] * 10, bn_stats=bn_stats)
        m.prepare(model, stage1)
        m.set_train_mode(model)
        with torch.no_grad():
            model(x)
        got = model.body[1].running_mean
        if bn_stats == "frozen":
            assert torch.equal(got, stage1["body.1.running_mean"]) and model.fc.training
        else:
            assert torch.allclose(got, expected, atol=1e-6), method


def test_stage2_epochs_have_floor_n_over_b_full_batches(stage1):
    """Kang's run_networks.py: epoch_steps = int(N / batch_size) batches of class-balanced draws."""
    from bkdbench.data import load_longtail

    n = len(load_longtail("digits", 50).train_y)
    result = train(make_spec("digits", 50, "lws", params={"stage2_fraction": 0.1, "bn_stats": "frozen"}),
                   teacher_state=stage1, evaluate_test=False)
    assert [h["images"] for h in result.history] == [n // 64 * 64] * 4 and n % 64 != 0
    for name, tensor in stage1.items():  # bn_stats frozen: nothing of the stage-1 model changes
        if not name.startswith("fc."):
            assert torch.equal(result.state_dict[name], tensor), name


def test_tau_norm_through_bkdbench_train_records_its_tau(tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["train", "--dataset", "digits", "--imbalance", "50", "--method", "tau-norm",
                                      "--epochs", "6", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "training the stage-1 model first" in result.output or "teacher" in result.output
    rows, bad = read_rows(Path(tmp_path) / "leaderboard")
    assert bad == [] and sorted(rows.method) == ["ce", "tau-norm"]
    extra = json.loads(rows[rows.method == "tau-norm"].extra.iloc[0])
    assert extra["tau"] in TAU_GRID and 0 <= extra["tau_val_top1"] <= 100
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    again = CliRunner().invoke(app, ["train", "--dataset", "digits", "--imbalance", "50", "--method", "tau-norm",
                                     "--epochs", "6", "--results", str(tmp_path), "--threads", "3"])
    assert again.exit_code == 0 and "already in the leaderboard" in again.output and threads == [3]
