"""``cbd-linear``, the suite's earlier Class-Balanced Distillation (linear head, a bias-free projection for
the distillation term only, plain CE teachers): the loss against a hand computation in NumPy, its teacher
specs, what it trains and freezes, its parameter checks, and a run through `bkdbench train`. The official
CBD (``cbd``) is tested in test_cbd_official.py."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bkdbench.cli import app
from bkdbench.leaderboard.store import read_rows
from bkdbench.methods import MethodError, build, validate_params
from bkdbench.models import create_model
from bkdbench.specs import SpecError, make_spec
from bkdbench.training.train import frozen_teachers, train, train_step
from helpers.files import nothing_written


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: CPU tests stay fast on a busy machine


class _Features(torch.nn.Module):
    """Stands in for a student with D = 2 penultimate features, for attach()."""

    feature_dim = 2

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)


# A batch of two, three classes, D = 2.
LOGITS = [[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]]
TARGETS = [0, 1]
STUDENT = [[1.0, 2.0], [-0.5, 3.0]]
TEACHER_1 = [[3.0, 4.0], [0.2, -0.1]]  # norms 5 and ~0.22: normalising each teacher matters for K = 2
TEACHER_2 = [[0.0, 10.0], [6.0, 8.0]]


def _hand_ce(logits, targets):
    """-z_y + log Σ_j exp z_j, averaged over rows, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    rows = [-z[i, y] + math.log(sum(math.exp(v) for v in z[i])) for i, y in enumerate(targets)]
    return sum(rows) / len(rows)


def _hand_distill(projection, student, teachers):
    """mean_i 1 - <P s_i, t_i> / (|P s_i| |t_i|), t_i the per-teacher unit vectors stacked."""
    P = np.asarray(projection, dtype=np.float64)
    out = []
    for i, s in enumerate(np.asarray(student, dtype=np.float64)):
        p = P.dot(s)
        t = np.concatenate([np.asarray(f[i], dtype=np.float64) / np.sqrt(np.dot(f[i], f[i])) for f in teachers])
        out.append(1 - p.dot(t) / (np.sqrt(p.dot(p)) * np.sqrt(t.dot(t))))
    return float(np.mean(out))


def _attached(projection, **params):
    method = build("cbd-linear", [10, 5, 2], **params)
    method.attach(_Features())
    with torch.no_grad():
        method.projection.weight.copy_(torch.tensor(projection))
    return method


def _loss(method, teacher_features):
    return method.loss(torch.tensor(LOGITS), torch.tensor(TARGETS), teacher_logits=None,
                       features=torch.tensor(STUDENT), teacher_features=teacher_features).item()


def test_loss_with_one_teacher_matches_a_hand_computation():
    P = [[0.5, -1.0], [2.0, 0.25]]
    ce, distill = _hand_ce(LOGITS, TARGETS), _hand_distill(P, STUDENT, [TEACHER_1])
    assert 0.05 < distill < 1.9, "the example is not a degenerate cosine"
    method = _attached(P, teachers=1)
    expected = 0.6 * ce + 0.4 * 100 * distill  # the defaults: alpha 0.4, feature_weight (β) 100
    assert _loss(method, [torch.tensor(TEACHER_1)]) == pytest.approx(expected, rel=1e-5)
    assert _loss(method, torch.tensor(TEACHER_1)) == pytest.approx(expected, rel=1e-5), "one tensor, one teacher"
    # Roles: alpha mixes CE and distillation, feature_weight scales only the distillation term.
    assert _loss(_attached(P, teachers=1, alpha=0.0), [torch.tensor(TEACHER_1)]) == pytest.approx(ce, rel=1e-5)
    assert _loss(_attached(P, teachers=1, alpha=1.0, feature_weight=3.0),
                 [torch.tensor(TEACHER_1)]) == pytest.approx(3 * distill, rel=1e-5)
    assert _loss(_attached(P, teachers=1, alpha=0.25, feature_weight=7.0),
                 [torch.tensor(TEACHER_1)]) == pytest.approx(0.75 * ce + 0.25 * 7 * distill, rel=1e-5)


def test_loss_with_two_teachers_matches_a_hand_computation():
    P = [[0.5, -1.0], [2.0, 0.25], [1.0, 1.0], [-0.3, 0.8]]  # D = 2 -> K·D = 4
    ce, distill = _hand_ce(LOGITS, TARGETS), _hand_distill(P, STUDENT, [TEACHER_1, TEACHER_2])
    method = _attached(P, teachers=2, alpha=0.5, feature_weight=10.0)
    got = _loss(method, [torch.tensor(TEACHER_1), torch.tensor(TEACHER_2)])
    assert got == pytest.approx(0.5 * ce + 0.5 * 10 * distill, rel=1e-5)
    # Teachers are normalised one by one: concatenating first and normalising once gives another value.
    joint = np.concatenate([TEACHER_1, TEACHER_2], axis=1)
    once = np.mean([1 - np.dot(np.dot(P, s), t) / (np.linalg.norm(np.dot(P, s)) * np.linalg.norm(t))
                    for s, t in zip(np.asarray(STUDENT), joint)])
    assert abs(once - distill) > 1e-2
    # The order of the teachers is the order of P's output blocks.
    swapped = _loss(method, [torch.tensor(TEACHER_2), torch.tensor(TEACHER_1)])
    assert swapped != pytest.approx(got, rel=1e-3)


def test_loss_refuses_what_it_cannot_use():
    method = build("cbd-linear", [10, 5, 2])
    args = dict(features=torch.tensor(STUDENT), teacher_features=[torch.tensor(TEACHER_1)] * 2)
    with pytest.raises(MethodError, match="attach"):
        method.loss(torch.tensor(LOGITS), torch.tensor(TARGETS), **args)
    method.attach(_Features())
    with pytest.raises(MethodError, match="features"):
        method.loss(torch.tensor(LOGITS), torch.tensor(TARGETS), teacher_logits=torch.tensor(LOGITS))
    with pytest.raises(MethodError, match="expected features of 2 teachers, got 1"):
        method.loss(torch.tensor(LOGITS), torch.tensor(TARGETS), features=torch.tensor(STUDENT),
                    teacher_features=[torch.tensor(TEACHER_1)])


def test_teacher_specs_are_ce_runs_with_distinct_seeds_the_first_shared_with_kd():
    kd = make_spec("digits", 10, "kd")
    spec = make_spec("digits", 10, "cbd-linear")
    assert spec.params == {"alpha": 0.4, "feature_weight": 100.0, "teachers": 2}
    assert spec.teacher is None and len(spec.teachers) == 2 and spec.all_teachers == list(spec.teachers)
    assert [t.seed for t in spec.teachers] == [0, 1000]
    assert len({t.run_id for t in spec.teachers}) == 2
    assert all(t.method == "ce" and t.params == {} and t.teachers is None for t in spec.teachers)
    assert spec.teachers[0] == kd.teacher and spec.teachers[0].run_id == kd.teacher.run_id
    for t in spec.teachers:  # everything but the seed is the student's setup
        assert (t.dataset, t.imbalance_factor, t.model, t.recipe, t.epochs) == (
            spec.dataset, spec.imbalance_factor, spec.model, spec.recipe, spec.epochs)

    three = make_spec("digits", 10, "cbd-linear", seed=2, params={"teachers": 3})
    assert [t.seed for t in three.teachers] == [2, 1002, 2002]
    one = make_spec("digits", 10, "cbd-linear", params={"teachers": 1})
    assert one.teacher is None and one.teachers == (kd.teacher,), "K = 1 is a list of one, not spec.teacher"
    seeds = {t.seed for s in (0, 1, 2) for t in make_spec("digits", 10, "cbd-linear", seed=s).teachers}
    assert len(seeds) == 6, "students of seeds 0, 1, 2 have disjoint teachers"


def test_bad_parameters_are_clear_errors():
    for bad, expected in [({"alpha": 1.5}, r"alpha must be in \[0, 1\] \(got 1.5\)"),
                          ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
                          ({"feature_weight": 0}, r"feature_weight must be > 0 \(got 0\)"),
                          ({"teachers": 0}, r"teachers must be >= 1 \(got 0\)"),
                          ({"teachers": 1.5}, "teachers: Input should be a valid integer"),
                          ({"teachers": True}, "teachers: Input should be a valid integer"),
                          ({"beta": 100}, r"unknown parameter 'beta' \(allowed: alpha, feature_weight, teachers\)")]:
        with pytest.raises(MethodError, match=expected):
            validate_params("cbd-linear", **bad)
        with pytest.raises(SpecError, match=expected):
            make_spec("digits", 10, "cbd-linear", params=bad)
    with pytest.raises(SpecError, match="plans its own teachers"):
        make_spec("digits", 10, "cbd-linear", teacher=make_spec("digits", 10, "ce"))
    assert "cb" not in build("cbd-linear", [10, 5, 2])._constants, "no class-balanced β of Cui et al. here"


def test_projection_is_trained_teachers_frozen_sampling_class_balanced():
    method = build("cbd-linear", [50] * 10)
    assert method.sampler == "class-balanced" and method.head == "linear"
    assert method.needs_teacher and method.uses_features
    torch.manual_seed(0)
    model = create_model("cnn-small", 10, 1)
    params = list(model.parameters())
    extra = method.attach(model)
    assert model.cbd_projection is method.projection and method.projection.bias is None
    assert method.projection.weight.shape == (2 * model.feature_dim, model.feature_dim)
    assert [id(p) for p in extra] == [id(method.projection.weight)]
    assert "cbd_projection.weight" in model.state_dict(), "saved and checkpointed with the student"

    spec = make_spec("digits", 10, "cbd-linear")
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(create_model("cnn-small", 10, 1).state_dict())
    teachers = frozen_teachers(spec, states, 10, 1, torch.device("cpu"))
    assert isinstance(teachers, list) and len(teachers) == 2
    assert all(not t.training and not any(p.requires_grad for p in t.parameters()) for t in teachers)

    optimizer = torch.optim.SGD(params + extra, lr=0.1, momentum=0.9)
    before = method.projection.weight.detach().clone()
    teacher_before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    model.train()
    loss = train_step(model, optimizer, method, x, y, epoch=0, teacher=teachers)
    assert torch.isfinite(loss)
    assert not torch.equal(method.projection.weight, before), "P gets gradients and is stepped"
    for t, saved in zip(teachers, teacher_before):
        assert all(torch.equal(v, saved[k]) for k, v in t.state_dict().items()), "teachers stay as they were"


def test_train_with_cached_teachers_learns_the_projection():
    spec = make_spec("digits", 10, "cbd-linear", epochs=2)
    states = [train(t).state_dict for t in spec.teachers]
    kept = [{k: v.clone() for k, v in s.items()} for s in states]
    result = train(spec, teacher_state=states)
    weight = result.state_dict["cbd_projection.weight"]
    assert weight.shape == (2 * 128, 128)
    torch.manual_seed(spec.seed)  # build_model's seed; P is drawn right after the student's weights
    fresh = build("cbd-linear", [1] * 10)
    fresh.attach(create_model("cnn-small", 10, 1))
    initial = fresh.projection.weight.detach()
    torch.manual_seed(spec.seed)
    create_model("cnn-small", 10, 1)
    assert torch.equal(initial, torch.nn.Linear(128, 256, bias=False).weight), "P's initialisation, found again"
    assert not torch.allclose(weight, initial), "P moved away from its initialisation"
    assert all(torch.equal(states[i][k], kept[i][k]) for i in range(2) for k in kept[i])
    assert 0 <= result.metrics["top1"] <= 100


def test_cbd_through_bkdbench_train_trains_both_teachers_first(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--dataset", "digits", "--imbalance", "10", "--method", "cbd-linear",
                                 "--epochs", "3", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("training the teacher first") == 2, result.output
    spec = make_spec("digits", 10, "cbd-linear", epochs=3)
    rows, bad = read_rows(Path(tmp_path) / "leaderboard")
    assert bad == [] and sorted(rows.method) == ["cbd-linear", "ce", "ce"]
    row = rows[rows.method == "cbd-linear"].iloc[0]
    assert row.run_id == spec.run_id and row.status == "finished"
    assert row.teacher_run_id == ",".join(t.run_id for t in spec.teachers)
    assert sorted(rows[rows.method == "ce"].run_id) == sorted(t.run_id for t in spec.teachers)
    assert sorted(rows[rows.method == "ce"].seed) == [0, 1000]

    # The first teacher is the ordinary CE teacher: kd reuses it instead of training another.
    result = runner.invoke(app, ["train", "--dataset", "digits", "--imbalance", "10", "--method", "kd",
                                 "--epochs", "3", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"reusing the cached teacher {spec.teachers[0].run_id}" in result.output

    # Any method parameter reaches `bkdbench train` through --param: three teachers, the two cached reused.
    result = runner.invoke(app, ["train", "--dataset", "digits", "--imbalance", "10", "--method", "cbd-linear",
                                 "--epochs", "3", "-p", "teachers=3", "--param", "alpha=0.5", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("training the teacher first") == 1 and result.output.count("reusing") == 2
    three = make_spec("digits", 10, "cbd-linear", epochs=3, params={"teachers": 3, "alpha": 0.5})
    rows, _ = read_rows(Path(tmp_path) / "leaderboard")
    assert three.run_id in set(rows.run_id) and len(three.teachers) == 3


def test_param_option_is_checked_before_any_work(tmp_path):
    for args, message in ((["-p", "teachers"], "NAME=VALUE"), (["-p", "alpha=1", "--alpha", "2"], "its own option"),
                          (["-p", "teachers=two"], "teachers")):
        with nothing_written(tmp_path):
            result = CliRunner().invoke(app, ["train", "--method", "cbd-linear", *args, "--results", str(tmp_path)])
        assert result.exit_code == 2 and message in result.output, result.output
