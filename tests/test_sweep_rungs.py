"""ASHA's rungs (``orchestrate.sweeps.driver.grace_period``): the first comes one epoch after a method's
class-balanced weighting switches on (digits, a 10-class set, switches BKD's on at 80 % of the budget by
default, as the reference does for CIFAR-10) and, unless the search space sets ``asha_before_lr_drop``,
one epoch after the recipe's first learning-rate drop (epoch round(0.8·E)); every rung falls on an
evaluation epoch of the recipe (``eval_every``). Read from the run's parameters for every shipped search
space (class-subset KD's sweep crashed here when the method was built for two made-up classes). The
expected rungs are worked out by hand in the comments."""
from __future__ import annotations

import pytest

from bkdbench.orchestrate.sweeps.driver import grace_period
from bkdbench.specs import make_spec
from bkdbench.specs.search_spaces import SearchSpace, load_space, space_names


def early(method: str, **params) -> SearchSpace:
    """A space that lets ASHA cut before the learning-rate drop."""
    return SearchSpace(method=method, params=params or {"beta": {"type": "categorical", "choices": [0.99, 0.9999]}},
                       asha_before_lr_drop=True)


@pytest.mark.parametrize("method,params,epochs,rung", [
    # 40 epochs: the first drop at round(0.8·40) = 32, so nothing is cut before epoch 33
    ("bkd", {"cb_start": 0.8}, 40, 33), ("bkd", {"cb_start": 0}, 40, 33), ("bkd", {}, 40, 33),
    ("ldam-drw", {}, 200, 161), ("ldam-drw", {"cb_start": 10}, 40, 33), ("ce", {}, 40, 33),
    # 10 epochs: weights at round(0.5·10) = 5 (rung 6), the drop at 8 (rung 9)
    ("kd", {"cb_start": 0.5, "weighted_ce": True}, 10, 9),
])
def test_first_rung_waits_for_the_switch_and_the_lr_drop(method, params, epochs, rung):
    assert grace_period(make_spec("digits", 10, method, epochs=epochs, params=params)) == rung


@pytest.mark.parametrize("method,params,epochs,rung", [
    ("bkd", {"cb_start": 0.8}, 40, 33), ("bkd", {"cb_start": 0}, 40, 1), ("ldam-drw", {"cb_start": 10}, 40, 11),
    ("ce", {}, 40, 1), ("kd", {"cb_start": 0.5, "weighted_ce": True}, 10, 6),
])
def test_a_space_may_let_asha_cut_before_the_drop_never_before_the_switch(method, params, epochs, rung):
    space = early("reweight-cb") if method == "ce" else SearchSpace(
        method=method, params={"beta": {"type": "categorical", "choices": [0.99, 0.9999]}}, asha_before_lr_drop=True)
    assert grace_period(make_spec("digits", 10, method, epochs=epochs, params=params), space) == rung


def test_a_searched_cb_start_waits_for_its_latest_value():
    space = SearchSpace(method="drw", params={"cb_start": {"type": "float", "low": 0.1, "high": 0.6}},
                        asha_before_lr_drop=True)
    # the latest switch: round(0.6·40) = 24, so the first rung is 25 (the base spec's default 0.8 → 33 wins)
    assert grace_period(make_spec("digits", 10, "drw", epochs=40, params={"cb_start": 0.1}), space) == 25
    assert grace_period(make_spec("digits", 10, "drw", epochs=40), space) == 33


@pytest.mark.parametrize("method,params,epochs,early_space,rung", [
    # cpu-short evaluates every 5 epochs (and at the end)
    ("ce", {}, 10, False, 10),  # drop at 8 → 9 → the next evaluation, 10
    ("ce", {}, 10, True, 5),  # 1 → 5
    ("ldam-drw", {"cb_start": 0.3}, 10, True, 5),  # weights at 3 → 4 → 5
    ("ldam-drw", {"cb_start": 0.6}, 20, True, 15),  # weights at 12 → 13 → 15
    ("ce", {}, 7, True, 5), ("ce", {}, 4, True, 4),  # 7 epochs: evaluations at 5 and 7; 4 epochs: only the last
])
def test_rungs_fall_on_evaluation_epochs(method, params, epochs, early_space, rung):
    spec = make_spec("digits", 10, method, recipe="cpu-short", epochs=epochs, params=params)
    space = SearchSpace(method=method, params={"beta": {"type": "categorical", "choices": [0.99, 0.9999]}},
                        asha_before_lr_drop=early_space) if method != "ce" else (early("reweight-cb") if early_space else None)
    assert grace_period(spec, space) == rung


def test_every_asha_rung_is_an_evaluation_epoch():
    from ray.tune.schedulers import ASHAScheduler

    spec = make_spec("digits", 10, "ce", recipe="cpu-short", epochs=60)
    grace = grace_period(spec, early("reweight-cb"))
    assert grace == 5
    asha = ASHAScheduler(time_attr="epochs_done", max_t=60, grace_period=grace, reduction_factor=3,
                         metric="val_top1", mode="max")
    assert sorted(m for m, _ in asha._brackets[0]._rungs) == [5, 15, 45]  # 5·3^k up to 60, all multiples of 5


@pytest.mark.parametrize("method", space_names())
def test_every_shipped_space_gets_a_first_rung(method):
    space, _ = load_space(method)
    spec = make_spec("digits", 50, method, epochs=40, params=space.fixed)
    assert 1 <= grace_period(spec) <= 40


@pytest.mark.usefixtures("one_thread")
def test_search_trials_report_only_evaluation_epochs_with_a_score(monkeypatch, tmp_path):
    """cpu-short evaluates every 5 epochs and at the end: a 7-epoch trial reports to Tune (ASHA, Optuna)
    after 5 and 7 epochs, each time with a real validation score, never a missing one."""
    from ray import tune

    from bkdbench.orchestrate.sweeps import driver as sweep_mod
    from bkdbench.orchestrate.sweeps.study import METRIC
    from bkdbench.orchestrate.trial import FINISHED

    reports = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(dict(metrics)))
    base = make_spec("digits", 10, "reweight-cb", recipe="cpu-short", epochs=7)
    sweep_mod.search_trial({"_cpus": 1, "beta": 0.99}, base=base.canonical_json(), results=str(tmp_path))
    assert [r[sweep_mod.EPOCHS_DONE] for r in reports] == [5, 7]
    assert [r["epoch"] for r in reports] == [4, 6]
    assert all(isinstance(r[METRIC], float) and 0 <= r[METRIC] <= 100 for r in reports)
    assert [r.get(FINISHED, False) for r in reports] == [False, True]
