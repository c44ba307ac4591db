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


def test_sweep_exits_1_naming_a_final_run_that_failed(tmp_path, monkeypatch):
    """The search and the finals are stood in for (the real ones run in test_sweep.py); what is checked
    is that a failed final run is named and the command ends with exit 1, after the report."""
    from typer.testing import CliRunner

    from bkdbench.cli import app
    from helpers.sweeps import stand_in_search

    stand_in_search(monkeypatch, finals={"tuned": ["aaaa000011112222"], "default": ["bbbb000011112222"]},
                    final_outcome={"aaaa000011112222": {"status": "failed", "error": "training loss became nan at epoch 3"},
                                   "bbbb000011112222": {"status": "finished"}})
    result = CliRunner().invoke(app, ["sweep", "focal", "--dataset", "digits", "--imbalance", "10", "--trials", "1",
                                      "--epochs", "1", "--results", str(tmp_path / "results")])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "failed aaaa000011112222: training loss became nan at epoch 3" in out
    assert "1 run(s) failed: aaaa000011112222" in out
    assert "test set (last epoch)" in out  # the report came first
