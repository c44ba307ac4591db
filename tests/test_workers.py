"""Several workers per trial through real Ray: `bkdbench run --workers-per-trial 2` trains every
run of the trial on 2 Ray Train workers (gloo, CPU) inside its Tune trial (orchestrate/workers.py).

On this project's 2-core machine one 2-worker trial runs at a time and Ray Train's start-up costs
~35 s per trial, so the suite is filtered to IF 10 and ce (the teacher) + kd + bkd: a teacher stage
and a student stage, 3 trials, about 2 minutes. The whole digits-lt suite at --seeds 1 (12 runs)
takes about 8 minutes here."""
from __future__ import annotations

from pathlib import Path

import pytest

from bkdbench.leaderboard.store import read_rows
from helpers.cli import run_logged
from helpers.files import latest_train_checkpoint_epoch, row_files, suite_run_ids

pytestmark = pytest.mark.slow

# CE and one student (KD, which needs the CE teacher first): two stages, two multi-worker trials (~35 s of
# Ray Train start-up each on 2 cores).
FILTERS = ["--imbalance", "10", "--method", "ce", "--method", "kd", "--seeds", "1", "--epochs", "2"]


def test_a_suite_on_two_workers_per_trial_writes_each_row_once(tmp_path):
    results = tmp_path / "results"
    args = ["run", "--suite", "digits-lt", "--workers-per-trial", "2", *FILTERS, "--results", str(results)]
    code, out = run_logged(args, tmp_path / "first.log", timeout=400)
    assert code == 0, out
    expected = suite_run_ids("digits-lt", imbalance=[10.0], methods=["ce", "kd"], seeds=1, epochs=2)
    assert len(expected) == 2
    rows, bad = read_rows(results / "leaderboard")
    assert bad == []
    assert sorted(rows.run_id) == sorted(expected), out  # every run exactly once ...
    assert sorted(p.stem for p in row_files(results)) == sorted(expected)  # ... one file each
    assert set(rows.status) == {"finished"}, rows[["method", "status", "error"]]
    assert set(rows.workers) == {2} and set(rows.device) == {"cpu"}, rows[["method", "workers", "device"]]
    assert set(rows.suite) == {"digits-lt"}
    assert "(2 Ray trials)" in " ".join(out.split())  # one run per trial: no packing with several workers
    # Run ids do not depend on the number of workers: a second invocation on 1 worker has nothing to do.
    code, out = run_logged(["run", "--suite", "digits-lt", *FILTERS, "--results", str(results)], tmp_path / "second.log")
    assert code == 0, out
    assert "2 already in the leaderboard" in out and "0 to train" in out, out


def test_a_killed_worker_resumes_its_trial_from_the_last_checkpoint(tmp_path):
    """SIGKILL one Ray Train worker after a few checkpoints: Ray Train restarts the worker group,
    which resumes from the last registered checkpoint (not from epoch 0), and the run has one row
    with every epoch once in its history."""
    import json
    import os
    import signal

    from helpers.cli import cli_env, start_cli
    from helpers.files import write_suite
    from helpers.ray_tmp import ray_tmpdir
    from helpers.processes import processes, wait_for

    suite = write_suite(tmp_path / "f.yaml", datasets=["digits"], imbalance=[10], methods=["ce"], seeds=1, epochs=12)
    results, ray_tmp = tmp_path / "results", ray_tmpdir()
    driver = start_cli(["run", "--suite", str(suite), "--workers-per-trial", "2", "--checkpoint-every", "1",
                        "--results", str(results)], tmp_path / "run.log", env=cli_env(ray_tmp))
    try:
        wait_for(lambda: latest_train_checkpoint_epoch(results) >= 3, timeout=240, every=0.2)
        killed_after = latest_train_checkpoint_epoch(results)
        victims = [p.pid for p in processes() if p.sid == driver.pid and "RayTrainWorker" in p.cmdline]
        assert victims, "no Ray Train worker in the driver's session"
        os.kill(victims[0], signal.SIGKILL)
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            from helpers.cli import kill_group

            kill_group(driver)
    out = (tmp_path / "run.log").read_text()
    assert driver.returncode == 0, out
    assert killed_after < 11  # the kill came before the end
    rows, bad = read_rows(results / "leaderboard")
    assert bad == [] and len(rows) == 1 and rows.status[0] == "finished" and rows.workers[0] == 2, out
    history = rows.history[0]
    history = json.loads(history) if isinstance(history, str) else history
    assert [h["epoch"] for h in history] == list(range(12))
    # Resumed, not restarted: Ray Train's worker logs name every checkpoint written. Epochs 0..10
    # checkpoint once each (never after the last), plus at most the one or two whose checkpoint was
    # in flight when the worker died; a restart from epoch 0 would write killed_after + 1 more.
    import re

    names = set()
    for log in Path(ray_tmp).glob("**/ray-train-*worker-*.log"):
        names |= set(re.findall(r"Checkpoint successfully created at: Checkpoint\(filesystem=local, path=[^)]*?(checkpoint_[0-9_.-]+)",
                                log.read_text(errors="replace")))
    assert 11 <= len(names) <= 12 + 1, (len(names), killed_after)
