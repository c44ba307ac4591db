"""Metrics against hand-computed values (REFERENCE.md §1 shots, §1 ECE)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bkdbench.data import shot_split
from bkdbench.training.evaluate import classification_metrics, expected_calibration_error, per_class_accuracy, predict


def logits_for(preds, num_classes):
    """Logits whose argmax is ``preds`` (probabilities are not used by the accuracy metrics)."""
    z = torch.zeros(len(preds), num_classes)
    z[torch.arange(len(preds)), torch.tensor(preds)] = 5.0
    return z


def test_per_class_and_balanced_accuracy():
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    # class 0: 3/4, class 1: 1/2, class 2: 1/1; class 3 absent → NaN and excluded
    acc = per_class_accuracy(preds, targets, 4)
    assert acc[:3].tolist() == [75.0, 50.0, 100.0] and math.isnan(acc[3])
    m = classification_metrics(logits_for(preds.tolist(), 4), targets, 4)
    assert m["top1"] == pytest.approx(75.0)  # (75 + 50 + 100) / 3, not plain accuracy 5/7 = 71.4
    assert m["per_class_acc"][:3] == [75.0, 50.0, 100.0] and math.isnan(m["per_class_acc"][3])
    assert len(m["per_class_acc"]) == 4


def test_shot_accuracies_use_shot_split():
    counts = [500, 150, 60, 30, 10, 5]  # many: >100 → 0, 1; medium: 2, 3; few: <20 → 4, 5
    shots = shot_split(counts)
    assert shots == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    preds = [0, 0, 1, 0, 2, 5, 0, 0, 4, 4, 0, 5]
    # per class: 100, 50, 50, 0, 100, 50
    m = classification_metrics(logits_for(preds, 6), targets, 6, shots)
    assert m["many"] == pytest.approx(75.0)
    assert m["medium"] == pytest.approx(25.0)
    assert m["few"] == pytest.approx(75.0)
    assert m["top1"] == pytest.approx(350 / 6)


def test_shot_split_with_custom_thresholds_and_empty_split():
    shots = shot_split([80, 60, 40], many=50, few=15)
    assert shots == {"many": [0, 1], "medium": [2], "few": []}
    m = classification_metrics(logits_for([0, 1, 0], 3), torch.tensor([0, 1, 2]), 3, shots)
    assert m["many"] == 100.0 and m["medium"] == 0.0 and math.isnan(m["few"])


def test_ece_hand_computed():
    probs = torch.tensor([
        [0.90, 0.05, 0.05],  # conf .90, pred 0, target 0: correct; bin (13/15, 14/15] = (.8667, .9333]
        [0.88, 0.02, 0.10],  # conf .88, pred 0, target 2: wrong;   same bin 13
        [0.02, 0.95, 0.03],  # conf .95, pred 1, target 0: wrong;   bin 14 = (.9333, 1]
        [0.10, 0.20, 0.70],  # conf .70, pred 2, target 2: correct; bin 10 = (.6667, .7333]
        [0.62, 0.30, 0.08],  # conf .62, pred 0, target 1: wrong;   bin 9 = (.6, .6667]
    ], dtype=torch.float64)
    targets = torch.tensor([0, 2, 0, 2, 1])
    # N = 5.
    # bin 13: |B| = 2, acc = 1/2, conf = (.90 + .88)/2 = .89 → 2/5 · |.5 − .89| = 0.4 · 0.39 = 0.156
    # bin 14: |B| = 1, acc = 0, conf = .95              → 1/5 · .95 = 0.190
    # bin 10: |B| = 1, acc = 1, conf = .70              → 1/5 · .30 = 0.060
    # bin  9: |B| = 1, acc = 0, conf = .62              → 1/5 · .62 = 0.124
    # ECE = 0.156 + 0.190 + 0.060 + 0.124 = 0.530 → 53.0 %
    # (per-sample |acc − conf| averaged would give (0.10 + 0.88 + 0.95 + 0.30 + 0.62)/5 = 57.0 %.)
    assert expected_calibration_error(probs, targets) == pytest.approx(53.0, abs=1e-9)
    # classification_metrics applies softmax: log-probabilities give back the same probabilities
    m = classification_metrics(probs.log(), targets, 3)
    assert m["ece"] == pytest.approx(53.0, abs=1e-4)


def test_ece_perfectly_calibrated_and_confidently_wrong():
    # 4 samples at conf .75 with 3 correct: acc = conf in that bin → ECE 0
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-9)
    # all at conf 1.0 (top bin, upper edge included) and all wrong → 100 %
    probs = torch.tensor([[1.0, 0.0]] * 3)
    assert expected_calibration_error(probs, torch.tensor([1, 1, 1])) == pytest.approx(100.0)


def _ece_loop(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Guo et al. (2017) ECE with explicit bins (lo, hi], as a loop."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == targets[inside]).mean() - conf[inside].mean())
    return 100 * total


def test_ece_matches_loop_on_random_predictions():
    rng = np.random.RandomState(0)
    logits = rng.randn(2000, 10) * 3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    targets = rng.randint(0, 10, 2000)
    got = expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(targets))
    assert got == pytest.approx(_ece_loop(probs, targets), abs=1e-9)


def test_nll_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)]])
    targets = torch.tensor([1, 0])
    # sample 1: p = (1/4, 3/4), −log(3/4); sample 2: p = (1/2, 1/2), −log(1/2)
    # NLL = (log(4/3) + log 2) / 2 = log(8/3) / 2 ≈ 0.49041
    m = classification_metrics(logits, targets, 2)
    assert m["nll"] == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)


def test_predict_batches_and_restores_train_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).train()
    images = torch.randint(0, 256, (25, 1, 2, 2), dtype=torch.uint8)
    prepare = lambda x: x.float() / 255  # noqa: E731
    out = predict(model, images, prepare, batch_size=7)
    assert model.training  # restored
    model.eval()
    expected = model(images.float() / 255)
    torch.testing.assert_close(out, expected)  # eval-mode BN, every image once, in order
    assert out.shape == (25, 3) and out.dtype == torch.float32
