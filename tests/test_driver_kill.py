"""A SIGKILLed `bkdbench ablate` driver, then --resume: every run once, each interrupted run
continuing from its last checkpoint epoch (its history's ``session`` turns 1 there), no epoch
trained twice. `run` is covered in test_cluster.py (and on S3 in test_storage.py), `sweep` in
test_sweep.py."""
from __future__ import annotations

import json

import pytest

from bkdbench.leaderboard.store import read_rows
from helpers.cli import cli_env, kill_group, run_cli, start_cli
from helpers.processes import cleanup_ray_tmp, kill_pids, ray_processes, wait_for
from helpers.ray_tmp import ray_tmpdir

pytestmark = pytest.mark.slow

EPOCHS, EVERY = 60, 10


def test_sigkilled_ablation_resumes_from_checkpoints(tmp_path):
    results = tmp_path / "results"
    args = ["ablate", "focal", "--grid", "gamma=0.5,2", "--imbalance", "10", "--seeds", "1", "--epochs", str(EPOCHS),
            "--checkpoint-every", str(EVERY), "--results", str(results)]
    ray_tmp = ray_tmpdir()
    env = cli_env(ray_tmp)
    driver = start_cli(args, tmp_path / "killed.log", env=env)
    try:
        def state_names_a_checkpoint() -> bool:  # Tune's saved state (what --resume restores) names one
            for state in (results / "experiments").glob("*/*/experiment_state*.json"):
                try:
                    trials = json.loads(state.read_text())["trial_data"]
                except (OSError, ValueError, KeyError):
                    continue  # being replaced this instant
                if any((json.loads(meta).get("last_result") or {}).get("checkpoint_dir_name") for _, meta in trials):
                    return True
            return False
        wait_for(state_names_a_checkpoint, timeout=240, every=0.2,
                 what=lambda: f"a checkpoint in Tune's state; output:\n{(tmp_path / 'killed.log').read_text()}")
        before = _finished_at(results)
        kill_group(driver)  # SIGKILL: no handler runs
        driver.wait(timeout=30)
        kill_pids(ray_processes(ray_tmp, driver.pid))  # its orphaned Ray daemons, by PID
        resumed = run_cli([*args, "--resume"], env=env, timeout=400)
    finally:
        kill_group(driver)
        left = cleanup_ray_tmp(ray_tmp, driver.pid)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not left, f"Ray processes left behind: {left}"
    rows, bad = read_rows(results / "leaderboard")
    assert bad == [] and len(rows) == rows.run_id.nunique() == 2 and set(rows.status) == {"finished"}
    after = _finished_at(results)
    assert {k: after[k] for k in before} == before, "a run finished before the kill was trained again"
    continued_at = []
    for run_id, history in zip(rows.run_id, rows.history):
        history = json.loads(history) if isinstance(history, str) else history
        assert [h["epoch"] for h in history] == list(range(EPOCHS))  # every epoch once
        sessions = [h["session"] for h in history]
        assert sessions == sorted(sessions) and set(sessions) <= {0, 1}, sessions
        # session 1 = continued after the kill, from a checkpoint epoch (a run finished before the
        # kill, or killed before its first checkpoint, is all session 0)
        if 1 in sessions:
            continued_at.append(sessions.index(1))
            assert continued_at[-1] > 0 and continued_at[-1] % EVERY == 0, sessions
            assert run_id not in before
    assert continued_at, "no run continued from a checkpoint"
    assert not list((results / "leases").glob("*.json"))


def _finished_at(results) -> dict:
    rows, _ = read_rows(results / "leaderboard")
    return dict(zip(rows.run_id, rows.finished_at)) if len(rows) else {}
