"""ASHA's first rung comes after a method's class-balanced weighting switches on (digits, a 10-class set,
switches BKD's on at 80 % of the budget by default, as the reference does for CIFAR-10), read from the run's
parameters for every shipped search space (class-subset KD's sweep crashed here when the method was
built for two made-up classes)."""
from __future__ import annotations

import pytest

from bkdbench.orchestrate.sweep import grace_period
from bkdbench.specs import make_spec
from bkdbench.specs.search_spaces import load_space, space_names


@pytest.mark.parametrize("method,params,epochs,rung", [
    ("bkd", {"cb_start": 0.8}, 40, 33), ("bkd", {"cb_start": 0}, 40, 1), ("bkd", {}, 40, 33), ("ldam-drw", {}, 200, 161),
    ("ldam-drw", {"cb_start": 10}, 40, 11), ("ce", {}, 40, 1), ("kd", {"cb_start": 0.5, "weighted_ce": True}, 10, 6),
])
def test_first_rung_is_one_epoch_after_the_switch(method, params, epochs, rung):
    assert grace_period(make_spec("digits", 10, method, epochs=epochs, params=params)) == rung


@pytest.mark.parametrize("method", space_names())
def test_every_shipped_space_gets_a_first_rung(method):
    space, _ = load_space(method)
    spec = make_spec("digits", 50, method, epochs=40, params=space.fixed)
    assert 1 <= grace_period(spec) <= 40
