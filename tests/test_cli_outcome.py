"""How `run` and `ablate` end when runs did not finish: each failed run named with its reason, then
exit 1 with one line naming them all (a crashed trial first, as it has no row)."""
from __future__ import annotations

import pytest
import typer

from bkdbench.cli.outcome import exit_if_failed, failed_runs, name_failures

OUTCOME = {
    "a1": {"status": "finished", "error": None},
    "b2": {"status": "failed", "error": "training loss became nan at epoch 0 (ldam on digits-LT IF10 seed 0)"},
    "c3": {"status": "skipped", "error": "run c3 is not part of this invocation"},
    "d4": {"status": None, "error": "RayTaskError: the trial crashed"},
}


def test_failed_and_crashed_runs_are_told_apart():
    failed, crashed = failed_runs(OUTCOME)
    assert sorted(failed) == ["b2", "d4"] and crashed == ["d4"]


def test_each_failure_is_named_and_the_command_exits_1(capsys):
    failed, crashed = failed_runs({k: v for k, v in OUTCOME.items() if k != "d4"})
    name_failures(failed)
    with pytest.raises(typer.Exit) as done:
        exit_if_failed(failed, crashed, 2, "`bkdbench run --suite s --resume`")
    assert done.value.exit_code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "failed b2: training loss became nan at epoch 0 (ldam on digits-LT IF10 seed 0)" in err
    assert "error: 1 run(s) failed: b2 " in err and "`bkdbench run --suite s --resume` retrains failed runs" in err


def test_a_crashed_trial_is_reported_as_such():
    failed, crashed = failed_runs(OUTCOME)
    with pytest.raises(typer.Exit) as done:
        exit_if_failed(failed, crashed, 2, "--resume")
    assert done.value.exit_code == 1


def test_nothing_failed_returns():
    assert exit_if_failed({}, [], 2, "--resume") is None
