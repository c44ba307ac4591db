"""`kd` with ``weighted_ce=True``: the CE term's class-balanced weights switch on at ``cb_start``
(default 80% of the budget: epoch 160 of 200, the reference KD baseline's DRW rule), not at epoch 0.
Expected losses are computed with NumPy, independently of bkdbench's losses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bkdbench.methods import build, validate_params

COUNTS = [500, 200, 80, 20, 5]


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_kd(zs, zt, y, T=2.0, alpha=1.0, ce_w=None):
    per_sample = -np_log_softmax(zs)[np.arange(len(y)), y]
    wy = np.ones(len(y)) if ce_w is None else ce_w[y]
    ce = (wy * per_sample).sum() / wy.sum()
    q = np.exp(np_log_softmax(zt / T))
    kl = (q * (np.log(q) - np_log_softmax(zs / T))).sum() / len(zs)
    return ce + alpha * T * T * kl


def np_cb(counts, beta=0.9999):
    n = np.asarray(counts, dtype=np.float64)
    w = (1 - beta) / (1 - beta**n)
    return w * len(n) / w.sum()


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    z, zt = rng.normal(scale=2.0, size=(8, 5)), rng.normal(scale=2.0, size=(8, 5))
    y = np.array([0, 1, 2, 3, 4, 0, 0, 1])
    return z, zt, y


def kd_loss(z, zt, y, epoch, epochs, **params):
    m = build("kd", COUNTS, epochs=epochs, **params)
    return m.loss(torch.tensor(z), torch.tensor(y), epoch=epoch, teacher_logits=torch.tensor(zt)).item()


def test_weighted_ce_switches_on_at_epoch_160_of_200(batch):
    z, zt, y = batch
    assert validate_params("kd")["cb_start"] == 0.8
    assert build("kd", COUNTS, epochs=200, weighted_ce=True).cb_epoch == 160
    plain, weighted = np_kd(z, zt, y), np_kd(z, zt, y, ce_w=np_cb(COUNTS))
    assert abs(plain - weighted) > 1e-3
    for epoch, expected in ((0, plain), (159, plain), (160, weighted), (199, weighted)):
        assert kd_loss(z, zt, y, epoch, 200, weighted_ce=True) == pytest.approx(expected, rel=1e-9), epoch
    # 20-epoch budget: the switch at round(0.8·20) = 16
    assert kd_loss(z, zt, y, 15, 20, weighted_ce=True) == pytest.approx(plain, rel=1e-9)
    assert kd_loss(z, zt, y, 16, 20, weighted_ce=True) == pytest.approx(weighted, rel=1e-9)


def test_cb_start_zero_weights_from_the_first_epoch_and_vanilla_kd_never(batch):
    z, zt, y = batch
    weighted = np_kd(z, zt, y, ce_w=np_cb(COUNTS))
    assert kd_loss(z, zt, y, 0, 200, weighted_ce=True, cb_start=0) == pytest.approx(weighted, rel=1e-9)
    assert kd_loss(z, zt, y, 199, 200) == pytest.approx(np_kd(z, zt, y), rel=1e-9)
