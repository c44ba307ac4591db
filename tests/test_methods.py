"""Loss values and properties of bkdbench.methods, checked against NumPy written from REFERENCE.md §3.

The NumPy references below are deliberately independent of the package: they restate each formula
in float64 and never call bkdbench helpers.
"""

import math

import numpy as np
import pytest
import torch

from bkdbench.methods import build, class_balanced_weights

COUNTS = [500, 200, 80, 20, 5]
B, C = 7, 5
TOL = dict(rel=1e-9, abs=1e-12)  # float64 throughout; far inside the 1e-6 the spec asks for


# ---------------------------------------------------------------- NumPy references


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_ce(z, y, w=None):
    """Mean CE; with class weights w, sum_i w_{y_i} CE_i / sum_i w_{y_i} (PyTorch semantics)."""
    per_sample = -np_log_softmax(z)[np.arange(len(y)), y]
    wy = np.ones(len(y)) if w is None else w[y]
    return (wy * per_sample).sum() / wy.sum()


def np_cb(counts, beta):
    n = np.asarray(counts, dtype=np.float64)
    w = (1 - beta) / (1 - beta**n)
    return w * len(n) / w.sum()


def np_kl_batchmean(q, z, T):
    log_p = np_log_softmax(z / T)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * (np.log(q) - log_p), 0.0)
    return terms.sum() / len(z)


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_bkd(zs, zt, y, counts, alpha, T, beta, renormalize=True, weight_kd=True, ce_w=None):
    q = np_softmax(zt / T)
    if weight_kd:
        q = q * np_cb(counts, beta)
        if renormalize:
            q = q / q.sum(axis=1, keepdims=True)
    return np_ce(zs, y, ce_w) + alpha * T**2 * np_kl_batchmean(q, zs, T)


def np_ldam(cos, y, counts, max_m, s, w=None):
    m = np.asarray(counts, dtype=np.float64) ** -0.25
    m = m * max_m / m.max()
    shifted = cos.copy()
    shifted[np.arange(len(y)), y] -= m[y]
    return np_ce(s * shifted, y, w)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(B, C))
    zt = rng.normal(scale=2.0, size=(B, C))
    cos = rng.uniform(-1, 1, size=(B, C))
    y = rng.integers(0, C, size=B)
    y[:C] = np.arange(C)  # every class appears at least once
    return z, zt, cos, y


def tt(a):
    return torch.tensor(a, dtype=torch.float64) if a.dtype != np.int64 else torch.tensor(a)


def loss_of(name, z, y, epoch=0, teacher=None, epochs=200, **params):
    m = build(name, COUNTS, epochs=epochs, **params)
    t = None if teacher is None else tt(teacher)
    return m.loss(tt(z), tt(y), epoch=epoch, teacher_logits=t).item()


# ---------------------------------------------------------------- hand-computed tiny cases


def test_tiny_cases_worked_by_hand():
    # z = [0, ln 3] -> p = [1/4, 3/4]; y = 0 -> CE = ln 4.
    z, y = torch.tensor([[0.0, math.log(3)]], dtype=torch.float64), torch.tensor([0])
    assert build("ce", [3, 1]).loss(z, y).item() == pytest.approx(math.log(4), abs=1e-12)
    # focal, gamma=1: (1 - 1/4) * ln 4.
    assert build("focal", [3, 1]).loss(z, y).item() == pytest.approx(0.75 * math.log(4), abs=1e-12)
    # balanced softmax, n = [3, 1]: z + log n = [ln 3, ln 3] -> p = [1/2, 1/2] -> ln 2.
    assert build("balanced-softmax", [3, 1]).loss(z, y).item() == pytest.approx(math.log(2), abs=1e-12)
    # KD, T=2, teacher [0, 0] -> q = [1/2, 1/2]; student p_T = [1, sqrt3] / (1 + sqrt3);
    # KL = ln((1 + sqrt3) / 2) - ln(3) / 4 = 0.0372523; loss = ln 4 + 1 * 4 * KL = 1.5353035.
    kd = build("kd", [3, 1]).loss(z, y, teacher_logits=torch.zeros(1, 2, dtype=torch.float64))
    assert kd.item() == pytest.approx(1.5353035051815234, abs=1e-9)
    # LDAM, n = [16, 1]: n^-1/4 = [1/2, 1] -> margins [0.25, 0.5]; cos = [0.5, 0.2], y = 1
    # -> shifted [0.5, -0.3], s = 10 -> [5, -3] -> CE = ln(1 + e^8) = 8.0003354.
    ldam = build("ldam", [16, 1], s=10).loss(torch.tensor([[0.5, 0.2]], dtype=torch.float64), torch.tensor([1]))
    assert ldam.item() == pytest.approx(math.log1p(math.exp(8)), abs=1e-9)


# ---------------------------------------------------------------- each loss against NumPy


def test_class_balanced_weights_formula_and_sum():
    for beta in (0.0, 0.9, 0.999, 0.9999):
        w = class_balanced_weights(COUNTS, beta)
        assert w.dtype == torch.float32 and w.sum().item() == pytest.approx(C, rel=1e-6)
        np.testing.assert_allclose(w.numpy(), np_cb(COUNTS, beta), rtol=1e-6)
    assert torch.equal(class_balanced_weights(COUNTS, 0.0), torch.ones(C))


def test_plain_and_reweighted_ce(batch):
    z, _, _, y = batch
    assert loss_of("ce", z, y) == pytest.approx(np_ce(z, y), **TOL)
    inv = 1 / np.asarray(COUNTS, dtype=np.float64)
    inv = inv * C / inv.sum()
    assert loss_of("reweight-inv", z, y) == pytest.approx(np_ce(z, y, inv), **TOL)
    assert loss_of("reweight-cb", z, y) == pytest.approx(np_ce(z, y, np_cb(COUNTS, 0.9999)), **TOL)
    assert loss_of("reweight-cb", z, y, beta=0.99) == pytest.approx(np_ce(z, y, np_cb(COUNTS, 0.99)), **TOL)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal(batch, gamma):
    z, _, _, y = batch
    ce_i = -np_log_softmax(z)[np.arange(B), y]
    expected = np.mean((1 - np.exp(-ce_i)) ** gamma * ce_i)
    assert loss_of("focal", z, y, gamma=gamma) == pytest.approx(expected, **TOL)
    if gamma == 0:
        assert loss_of("focal", z, y, gamma=0.0) == pytest.approx(np_ce(z, y), **TOL)


def test_ldam_and_ldam_drw(batch):
    _, _, cos, y = batch
    assert loss_of("ldam", cos, y) == pytest.approx(np_ldam(cos, y, COUNTS, 0.5, 30.0), **TOL)
    assert loss_of("ldam", cos, y, max_m=0.3, s=10) == pytest.approx(np_ldam(cos, y, COUNTS, 0.3, 10.0), **TOL)
    w = np_cb(COUNTS, 0.9999)
    assert loss_of("ldam-drw", cos, y, epoch=0) == pytest.approx(np_ldam(cos, y, COUNTS, 0.5, 30.0), **TOL)
    assert loss_of("ldam-drw", cos, y, epoch=170) == pytest.approx(np_ldam(cos, y, COUNTS, 0.5, 30.0, w), **TOL)


def test_ldam_margins_and_eval_logits(batch):
    _, _, cos, _ = batch
    m = build("ldam", COUNTS, max_m=0.4)
    margins = m.margins.numpy()
    assert margins.max() == pytest.approx(0.4, abs=1e-12)
    ratio = margins * np.asarray(COUNTS, dtype=np.float64) ** 0.25  # constant if m ∝ n^-1/4
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)
    np.testing.assert_allclose(m.eval_logits(tt(cos)).numpy(), 30.0 * cos, rtol=1e-12)
    assert m.head == "cosine" and build("ldam-drw", COUNTS).head == "cosine"


def test_kd_and_bkd(batch):
    z, zt, _, y = batch
    for alpha, T in ((1.0, 2.0), (0.5, 4.0)):
        kd = loss_of("kd", z, y, teacher=zt, alpha=alpha, temperature=T)
        assert kd == pytest.approx(np_bkd(z, zt, y, COUNTS, alpha, T, 0.0, weight_kd=False), **TOL)
        bkd = loss_of("bkd", z, y, teacher=zt, alpha=alpha, temperature=T)
        assert bkd == pytest.approx(np_bkd(z, zt, y, COUNTS, alpha, T, 0.9999), **TOL)
    w = np_cb(COUNTS, 0.9999)
    assert loss_of("kd", z, y, teacher=zt, weighted_ce=True, cb_start=0) == pytest.approx(
        np_bkd(z, zt, y, COUNTS, 1.0, 2.0, 0.0, weight_kd=False, ce_w=w), **TOL)


def test_bkd_ablation_knobs(batch):
    z, zt, _, y = batch
    w = np_cb(COUNTS, 0.9999)
    assert loss_of("bkd", z, y, teacher=zt, renormalize=False) == pytest.approx(
        np_bkd(z, zt, y, COUNTS, 1.0, 2.0, 0.9999, renormalize=False), **TOL)
    assert loss_of("bkd", z, y, teacher=zt, kd_weighting="none") == pytest.approx(
        np_bkd(z, zt, y, COUNTS, 1.0, 2.0, 0.9999, weight_kd=False), **TOL)
    assert loss_of("bkd", z, y, teacher=zt, ce_weighting="class-balanced") == pytest.approx(
        np_bkd(z, zt, y, COUNTS, 1.0, 2.0, 0.9999, ce_w=w), **TOL)


def test_bkd_with_beta_zero_is_kd(batch):
    z, zt, _, y = batch
    for T in (1.0, 2.0, 5.0):
        assert loss_of("bkd", z, y, teacher=zt, beta=0.0, temperature=T) == pytest.approx(
            loss_of("kd", z, y, teacher=zt, temperature=T), rel=1e-12, abs=1e-12)


def test_bkd_gradient_matches_closed_form(batch):
    z, zt, _, y = batch
    alpha, T, beta = 0.7, 3.0, 0.999
    zs = tt(z).requires_grad_(True)
    build("bkd", COUNTS, alpha=alpha, temperature=T, beta=beta).loss(zs, tt(y), teacher_logits=tt(zt)).backward()
    q = np_softmax(zt / T) * np_cb(COUNTS, beta)
    q = q / q.sum(axis=1, keepdims=True)
    onehot = np.eye(C)[y]
    expected = (alpha * T * (np_softmax(z / T) - q) + (np_softmax(z) - onehot)) / B
    np.testing.assert_allclose(zs.grad.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_prior_methods(batch):
    z, _, _, y = batch
    log_n = np.log(np.asarray(COUNTS, dtype=np.float64))
    log_prior = log_n - np.log(np.sum(COUNTS))
    assert loss_of("balanced-softmax", z, y) == pytest.approx(np_ce(z + log_n, y), **TOL)
    assert loss_of("logit-adjust", z, y, tau=0.5) == pytest.approx(np_ce(z + 0.5 * log_prior, y), **TOL)
    assert loss_of("logit-adjust", z, y) == pytest.approx(loss_of("balanced-softmax", z, y), **TOL)
    assert loss_of("logit-adjust-posthoc", z, y) == pytest.approx(np_ce(z, y), **TOL)
    posthoc = build("logit-adjust-posthoc", COUNTS, tau=1.5)
    np.testing.assert_allclose(posthoc.eval_logits(tt(z)).numpy(), z - 1.5 * log_prior, rtol=1e-12)
    np.testing.assert_array_equal(build("balanced-softmax", COUNTS).eval_logits(tt(z)).numpy(), z)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("cb_start,epochs,cb_epoch", [(0.8, 200, 160), (160, 200, 160), (0.5, 10, 5), (3, 10, 3)])
def test_deferred_schedules_switch_at_cb_epoch(batch, cb_start, epochs, cb_epoch):
    z, zt, cos, y = batch
    w = np_cb(COUNTS, 0.9999)
    cases = {  # name -> (loss before cb_epoch, loss from cb_epoch on, inputs)
        "drw": (np_ce(z, y), np_ce(z, y, w), {}),
        "ldam-drw": (np_ldam(cos, y, COUNTS, 0.5, 30.0), np_ldam(cos, y, COUNTS, 0.5, 30.0, w), {}),
        "bkd": (np_bkd(z, zt, y, COUNTS, 1.0, 2.0, 0.9999, weight_kd=False),
                np_bkd(z, zt, y, COUNTS, 1.0, 2.0, 0.9999), {"teacher": zt}),
    }
    for name, (before, after, extra) in cases.items():
        inputs = cos if name == "ldam-drw" else z
        assert build(name, COUNTS, epochs=epochs, cb_start=cb_start).cb_epoch == cb_epoch
        for epoch, expected in ((0, before), (cb_epoch - 1, before), (cb_epoch, after), (epochs - 1, after)):
            got = loss_of(name, inputs, y, epoch=epoch, epochs=epochs, cb_start=cb_start, **extra)
            assert got == pytest.approx(expected, **TOL), (name, epoch)
    # The CE-side switches of the distillers follow the same schedule.
    bkd_ce = dict(teacher=zt, epochs=epochs, cb_start=cb_start, ce_weighting="class-balanced", kd_weighting="none")
    kd_ce = dict(teacher=zt, epochs=epochs, cb_start=cb_start, weighted_ce=True)
    for kw in (bkd_ce, kd_ce):
        name = "kd" if "weighted_ce" in kw else "bkd"
        assert loss_of(name, z, y, epoch=cb_epoch - 1, **kw) == pytest.approx(
            np_bkd(z, zt, y, COUNTS, 1.0, 2.0, 0.0, weight_kd=False), **TOL)
        assert loss_of(name, z, y, epoch=cb_epoch, **kw) == pytest.approx(
            np_bkd(z, zt, y, COUNTS, 1.0, 2.0, 0.0, weight_kd=False, ce_w=w), **TOL)


def test_bkd_default_weights_on_from_start(batch):
    z, zt, _, y = batch
    assert build("bkd", COUNTS).cb_epoch == 0
    assert loss_of("bkd", z, y, teacher=zt, epoch=0) == pytest.approx(np_bkd(z, zt, y, COUNTS, 1.0, 2.0, 0.9999), **TOL)
