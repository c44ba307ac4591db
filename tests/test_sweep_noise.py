"""How finely a sweep's validation split can order configurations (``sweeps.report.validation_noise``,
``search_noise``), and the lines that say so (the sweep's plan line, ``sweep report``). The expected
values are worked out by hand in the comments; the standard error is checked against a simulation of
balanced validation scores."""
from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from bkdbench.orchestrate.sweeps.halving import BRACKET
from bkdbench.orchestrate.sweeps.report import search_noise, validation_noise


def test_the_standard_error_and_the_configurations_it_cannot_order():
    # p = 0.42 on 200 images: sqrt(0.42 · 0.58 / 200) = sqrt(0.001218) = 0.034900 -> 3.490 points;
    # the margin 2·sqrt(2)·3.490 = 9.871: 40 (2 below) and 33 (9 below) are inside, 32.1 (9.9) is not
    out = validation_noise(42.0, [40.0, 33.0, 32.1, 20.0], 200)
    assert out["se"] == pytest.approx(3.4900, abs=1e-4)
    assert out["margin"] == pytest.approx(9.8712, abs=1e-4)
    assert out["close"] == 2 and out["images"] == 200 and out["best"] == 42.0
    # 2,000 images shrink it by sqrt(10): 1.104 points, margin 3.122: only 40 is inside
    assert validation_noise(42.0, [40.0, 33.0], 2000)["close"] == 1
    assert validation_noise(100.0, [99.0], 50)["se"] == 0.0  # p(1 - p) = 0: nothing to estimate


def test_the_standard_error_matches_simulated_balanced_scores_and_bounds_unequal_classes():
    rng = np.random.default_rng(0)
    classes, per_class, sims = 10, 20, 40_000

    def simulated_sd(accuracies):
        correct = rng.binomial(per_class, accuracies, size=(sims, classes))  # each class's right answers
        return 100 * (correct / per_class).mean(axis=1).std()  # balanced top-1 in points

    equal = simulated_sd(np.full(classes, 0.42))
    assert equal == pytest.approx(validation_noise(42.0, [], 200)["se"], rel=0.03)
    unequal = np.linspace(0.05, 0.79, classes)  # the same mean, 0.42, head classes right and tail wrong
    assert unequal.mean() == pytest.approx(0.42)
    assert simulated_sd(unequal) < validation_noise(42.0, [], 200)["se"]  # the bound the docstring claims


def _trial(value=None, rungs=None):
    dist = {"alpha": optuna.distributions.FloatDistribution(0, 10)}
    if rungs is None:
        return optuna.trial.create_trial(params={"alpha": 1.0}, distributions=dist, value=value)
    state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.PRUNED
    return optuna.trial.create_trial(params={"alpha": 1.0}, distributions=dist, value=value, state=state,
                                     intermediate_values=rungs, user_attrs={BRACKET: 0})


def test_search_noise_compares_each_rung_best_with_that_rung_or_the_best_with_the_other_trials():
    study = optuna.create_study(direction="maximize")
    for value in (50.0, 45.0, 30.0):
        study.add_trial(_trial(value))
    # p = 0.5 on 100 images: se 5.0, margin 14.14: 45 inside, 30 (20 below) outside
    (full,) = search_noise(study, 100)
    assert (full["budget"], full["n"], full["close"], full["best"]) == (None, 3, 1, 50.0)
    assert full["se"] == pytest.approx(5.0)

    halved = optuna.create_study(direction="maximize")
    for rungs, value in (({2: 60.0, 6: 80.0}, 80.0), ({2: 58.0, 6: 62.0}, None), ({2: 20.0}, None),
                         ({2: 55.0}, None)):
        halved.add_trial(_trial(value, rungs))
    # at 2 epochs: best 60, se sqrt(0.24/100) = 4.899, margin 13.86: 58 and 55 inside, 20 outside;
    # at 6 epochs: best 80, se 4.0, margin 11.31: 62 (18 below) outside
    low, high = search_noise(halved, 100)
    assert (low["budget"], low["n"], low["close"]) == (2, 4, 2) and low["se"] == pytest.approx(math.sqrt(0.24) * 10)
    assert (high["budget"], high["n"], high["close"], high["se"]) == (6, 2, 0, pytest.approx(4.0))


def test_the_plan_line_gives_the_validation_size_and_its_standard_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bkdbench.cli import app
    from helpers.sweeps import stand_in_search

    stand_in_search(monkeypatch)
    result = CliRunner().invoke(app, ["sweep", "focal", "--dataset", "digits", "--imbalance", "10", "--trials", "1",
                                      "--scheduler", "none", "--final-seeds", "1", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    # digits: 10 classes × 10 validation images; 50 / sqrt(100) = 5.0 points at p = 0.5, the largest
    assert "objective: balanced validation top-1 on 100 images (one score's standard error: up to 5.0 points)" in text
    # the report after the search: the stand-in's one trial, 61 %: sqrt(0.61 · 0.39 / 100) = 4.877 points
    assert "validation noise (100 images): the best scored 61.0 % ± 4.9 (one standard error)" in text
    assert "lie within" not in text  # no other trial to compare
