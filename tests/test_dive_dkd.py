"""DiVE and DKD against NumPy written from their papers (float64, never calling bkdbench): the losses,
DKD's warm-up, DiVE's Balanced-Softmax teacher, packed students equal to separate runs, and both
through ``bkdbench train``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bkdbench.methods import build, teacher_methods
from bkdbench.specs import make_spec

COUNTS = [400, 120, 30, 9, 3]
B, C = 9, 5


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl(p, q):
    """sum_j p_j log(p_j / q_j) per row, averaged over rows (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=1).mean()


def np_ce(z, y):
    p = np_softmax(z)
    return -np.log(p[np.arange(len(y)), y]).mean()


def np_dive(zs, zt, y, counts, alpha, T, power):
    q = np_softmax(zt / T) ** power
    q = q / q.sum(axis=1, keepdims=True)
    balanced = np_ce(zs + np.log(np.asarray(counts, dtype=np.float64)), y)
    return alpha * T * T * np_kl(q, np_softmax(zs / T)) + (1 - alpha) * balanced


def np_dkd(zs, zt, y, alpha, nckd_weight, T, w):
    ps, pt = np_softmax(zs / T), np_softmax(zt / T)
    rows = np.arange(len(y))
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], axis=1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], axis=1)
    tckd = T * T * np_kl(bt, bs)
    keep = np.ones_like(zs, dtype=bool)
    keep[rows, y] = False  # the non-target classes, renormalised exactly (no −1000 trick)
    n_s = np_softmax(zs[keep].reshape(len(y), -1) / T)
    n_t = np_softmax(zt[keep].reshape(len(y), -1) / T)
    nckd = T * T * np_kl(n_t, n_s)
    return np_ce(zs, y) + w * (alpha * tckd + nckd_weight * nckd)


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    zs, zt = rng.normal(size=(B, C)) * 3, rng.normal(size=(B, C)) * 3
    y = rng.integers(0, C, size=B)
    return zs, zt, y


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


@pytest.mark.parametrize("alpha,T,power", [(0.5, 2.0, 0.5), (0.0, 1.0, 1.0), (1.0, 4.0, 0.25), (0.3, 0.5, 2.0)])
def test_dive_loss_matches_numpy(batch, alpha, T, power):
    zs, zt, y = batch
    method = build("dive", COUNTS, alpha=alpha, temperature=T, power=power)
    got = method.loss(t64(zs), torch.tensor(y), teacher_logits=t64(zt)).item()
    assert got == pytest.approx(np_dive(zs, zt, y, COUNTS, alpha, T, power), rel=1e-9, abs=1e-12)
    # float32, as training computes it: within 1e-5
    got32 = method.loss(torch.tensor(zs, dtype=torch.float32), torch.tensor(y), teacher_logits=torch.tensor(zt, dtype=torch.float32)).item()
    assert got32 == pytest.approx(np_dive(zs, zt, y, COUNTS, alpha, T, power), rel=1e-5, abs=1e-5)


def test_dive_by_hand():
    """Two classes, counts (3, 1), z_s = 0, z_t = (log 4, 0), T = 1, power = 1/2, alpha = 1/2.
    Teacher softmax (4/5, 1/5); squared root (2, 1)/√5, renormalised: q~ = (2/3, 1/3). Student
    softmax (1/2, 1/2): KL = 2/3·log(4/3) + 1/3·log(2/3). Balanced CE with y = 0: z + log n =
    (log 3, 0) → −log(3/4). Loss = 1/2·KL + 1/2·log(4/3)."""
    method = build("dive", [3, 1], alpha=0.5, temperature=1.0, power=0.5)
    zs = torch.zeros(1, 2, dtype=torch.float64)
    zt = torch.tensor([[np.log(4.0), 0.0]], dtype=torch.float64)
    kl = 2 / 3 * np.log(4 / 3) + 1 / 3 * np.log(2 / 3)
    want = 0.5 * kl + 0.5 * np.log(4 / 3)
    assert method.loss(zs, torch.tensor([0]), teacher_logits=zt).item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("alpha,nckd_weight,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 3.0)])
@pytest.mark.parametrize("epoch,epochs,warmup,w", [(0, 200, 0.1, 1 / 20), (9, 200, 0.1, 10 / 20), (19, 200, 0.1, 1.0),
                                                   (150, 200, 0.1, 1.0), (0, 10, 0.1, 1.0), (2, 40, 8, 3 / 8)])
def test_dkd_loss_and_warmup_match_numpy(batch, alpha, nckd_weight, T, epoch, epochs, warmup, w):
    zs, zt, y = batch
    method = build("dkd", COUNTS, epochs=epochs, alpha=alpha, nckd_weight=nckd_weight, temperature=T, warmup=warmup)
    got = method.loss(t64(zs), torch.tensor(y), epoch=epoch, teacher_logits=t64(zt)).item()
    assert got == pytest.approx(np_dkd(zs, zt, y, alpha, nckd_weight, T, w), rel=1e-9, abs=1e-9)
    got32 = method.loss(torch.tensor(zs, dtype=torch.float32), torch.tensor(y), epoch=epoch,
                        teacher_logits=torch.tensor(zt, dtype=torch.float32)).item()
    assert got32 == pytest.approx(np_dkd(zs, zt, y, alpha, nckd_weight, T, w), rel=1e-5, abs=1e-5)


def test_dkd_by_hand():
    """A teacher equal to the student distils nothing (both KLs 0): the loss is the CE. With two
    classes the non-target distribution is one class with probability 1, so NCKD = 0 and DKD is
    TCKD: b_s = (1/2, 1/2), b_t = (3/4, 1/4) at T = 1 → KL = 3/4·log(3/2) + 1/4·log(1/2)."""
    method = build("dkd", [5, 5, 5], epochs=10, warmup=1)
    z = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    assert method.loss(z, torch.tensor([2]), teacher_logits=z.clone()).item() == pytest.approx(
        np_ce(z.numpy(), np.array([2])), rel=1e-12)
    two = build("dkd", [5, 5], epochs=10, warmup=1, temperature=1.0, alpha=1.0, nckd_weight=8.0)
    zs = torch.zeros(1, 2, dtype=torch.float64)
    zt = torch.tensor([[np.log(3.0), 0.0]], dtype=torch.float64)
    tckd = 0.75 * np.log(1.5) + 0.25 * np.log(0.5)
    assert two.loss(zs, torch.tensor([0]), teacher_logits=zt).item() == pytest.approx(np.log(2) + tckd, rel=1e-12)


@pytest.mark.parametrize("method,params,message", [
    ("dive", {"alpha": 1.5}, "alpha must be in [0, 1]"), ("dive", {"power": 0}, "power must be > 0"),
    ("dive", {"temperature": -1}, "temperature must be > 0"), ("dkd", {"warmup": 0}, "warmup must be > 0"),
    ("dkd", {"warmup": 2.5}, "whole epoch"), ("dkd", {"beta": 8}, "unknown parameter 'beta'"),
    ("dkd", {"nckd_weight": float("nan")}, "nckd_weight"),
])
def test_bad_parameters_are_refused_by_name(method, params, message):
    from bkdbench.methods import MethodError

    with pytest.raises(MethodError, match=None) as err:
        build(method, COUNTS, **params)
    assert message in str(err.value), str(err.value)


def test_dive_learns_from_a_balanced_softmax_teacher_and_dkd_from_ce():
    dive, dkd, bkd = (make_spec("digits", 10, m) for m in ("dive", "dkd", "bkd"))
    assert dive.teacher.method == "balanced-softmax" and dkd.teacher.method == "ce"
    # BagofTricks' DiVE teacher steps at 120/160 too: a Balanced-Softmax run under that schedule; with the
    # recipe's own steps (milestones=recipe) the suite's Balanced-Softmax run doubles as the teacher.
    assert dive.teacher == make_spec("digits", 10, "balanced-softmax", recipe="small/milestones=0.6,0.8")
    kept = make_spec("digits", 10, "dive", params={"milestones": "recipe"})
    assert kept.teacher == make_spec("digits", 10, "balanced-softmax")
    assert dkd.teacher == bkd.teacher
    assert teacher_methods() == {"ce", "ce-cosine20", "balanced-softmax", "ssd-lt-stage1", "ssd-lt-stage2",
                                 "linear-probe", "full-ft", "lift"}  # foundation runs that may be a --teacher


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method,grid", [
    ("dive", [{"alpha": 0.5, "temperature": 2.0}, {"alpha": 0.8, "temperature": 4.0, "power": 1.0}]),
    ("dkd", [{"alpha": 1.0, "nckd_weight": 8.0}, {"alpha": 0.5, "nckd_weight": 2.0, "temperature": 2.0}]),
])
def test_packed_students_equal_separate_runs(method, grid):
    from bkdbench.training.packed import train_packed
    from bkdbench.training.train import train

    specs = [make_spec("digits", 10, method, epochs=2, params=p) for p in grid]
    teacher = train(specs[0].teacher, device="cpu").state_dict
    separate = [train(s, device="cpu", teacher_state=teacher) for s in specs]
    packed = train_packed(specs, teacher_state=teacher, device="cpu", strategy="loop")
    for p, s in zip(packed, separate):
        assert p.spec == s.spec
        for key, want in s.state_dict.items():
            assert torch.equal(p.state_dict[key], want), key  # the loop strategy: bit for bit
        assert p.metrics["top1"] == s.metrics["top1"]
    assert not torch.equal(packed[0].state_dict["fc.weight"], packed[1].state_dict["fc.weight"])


@pytest.mark.usefixtures("one_thread")
def test_dive_through_bkdbench_train_trains_its_balanced_softmax_teacher_first(tmp_path, cache):
    from bkdbench.cli import app
    from bkdbench.leaderboard.store import read_rows

    result = CliRunner().invoke(app, ["train", "--method", "dive", "--epochs", "2", "--results", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "training the teacher first" in result.output and "balanced-softmax" in result.output
    rows, _ = read_rows(tmp_path / "r" / "leaderboard")
    assert sorted(rows.method) == ["balanced-softmax", "dive"]
    teacher_id = rows[rows.method == "balanced-softmax"].run_id.item()
    assert rows[rows.method == "dive"].teacher_run_id.item() == teacher_id
    assert (tmp_path / "r" / "teachers" / f"{teacher_id}.pt").is_file()
    again = CliRunner().invoke(app, ["train", "--method", "dkd", "--epochs", "2", "--results", str(tmp_path / "r")])
    assert again.exit_code == 0, again.output
    rows, _ = read_rows(tmp_path / "r" / "leaderboard")
    assert sorted(rows.method) == ["balanced-softmax", "ce", "dive", "dkd"]
