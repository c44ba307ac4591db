"""Several workers per trial through real Ray: `bkdbench run --workers-per-trial 2` trains every
run of the trial on 2 Ray Train workers (gloo, CPU) inside its Tune trial (orchestrate/workers.py).

On this project's 2-core machine one 2-worker trial runs at a time and Ray Train's start-up costs
~35 s per trial, so one driver does everything: the suite filtered to IF 10 and ce (the teacher) + kd
(a teacher stage and a student stage, 2 trials); one Train worker of the teacher's trial is SIGKILLed
after its third checkpoint; then a second invocation on 1 worker has nothing to do. The whole
digits-lt suite at --seeds 1 (12 runs) takes about 8 minutes here."""
from __future__ import annotations

import os
import signal

import pytest

from bkdbench.leaderboard.store import read_rows
from helpers.cli import cli_env, kill_group, run_logged, start_cli
from helpers.files import latest_train_checkpoint_epoch, row_files, suite_run_ids
from helpers.processes import processes, wait_for
from helpers.ray_tmp import ray_tmpdir
from helpers.tune_state import history_of, resumed_at

pytestmark = pytest.mark.slow

# The kill lands after the teacher's third checkpoint and needs epochs left after it; no more than that.
EPOCHS = 8
# CE and one student (KD, which needs the CE teacher first): two stages, two multi-worker trials (~35 s of
# Ray Train start-up each on 2 cores).
FILTERS = ["--imbalance", "10", "--method", "ce", "--method", "kd", "--seeds", "1", "--epochs", str(EPOCHS)]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """One 2-worker suite whose teacher trial loses a worker mid-training, then the no-op re-run."""
    tmp = tmp_path_factory.mktemp("workers")
    results = tmp / "results"
    driver = start_cli(["run", "--suite", "digits-lt", "--workers-per-trial", "2", *FILTERS, "--checkpoint-every", "1",
                        "--results", str(results)], tmp / "first.log", env=cli_env(ray_tmpdir()))
    try:
        wait_for(lambda: latest_train_checkpoint_epoch(results) >= 2 or driver.poll() is not None, timeout=300,
                 every=0.2, what="the teacher's third checkpoint")
        killed_after = latest_train_checkpoint_epoch(results)
        # only the teacher's trial trains now (the student stage waits for it)
        victims = [p.pid for p in processes() if p.sid == driver.pid and "RayTrainWorker" in p.cmdline]
        if victims:
            os.kill(victims[0], signal.SIGKILL)
        driver.wait(timeout=500)
    finally:
        kill_group(driver)
    first = (driver.returncode, (tmp / "first.log").read_text())
    second = run_logged(["run", "--suite", "digits-lt", *FILTERS, "--results", str(results)], tmp / "second.log")
    return dict(results=results, first=first, second=second, killed_after=killed_after, victims=victims)


def test_a_suite_on_two_workers_per_trial_writes_each_row_once(killed):
    results = killed["results"]
    code, out = killed["first"]
    assert code == 0, out
    expected = suite_run_ids("digits-lt", imbalance=[10.0], methods=["ce", "kd"], seeds=1, epochs=EPOCHS)
    assert len(expected) == 2
    rows, bad = read_rows(results / "leaderboard")
    assert bad == []
    assert sorted(rows.run_id) == sorted(expected), out  # every run exactly once ...
    assert sorted(p.stem for p in row_files(results)) == sorted(expected)  # ... one file each
    assert set(rows.status) == {"finished"}, rows[["method", "status", "error"]]
    assert set(rows.workers) == {2} and set(rows.device) == {"cpu"}, rows[["method", "workers", "device"]]
    assert set(rows.suite) == {"digits-lt"}
    assert "(2 Ray trials)" in " ".join(out.split())  # one run per trial: no packing with several workers
    for history in rows.history:
        assert [h["epoch"] for h in history_of(history)] == list(range(EPOCHS))
    # Run ids do not depend on the number of workers: a second invocation on 1 worker has nothing to do.
    code, out = killed["second"]
    assert code == 0, out
    assert "2 already in the leaderboard" in out and "0 to train" in out, out


def test_a_killed_worker_resumes_its_trial_from_the_last_checkpoint(killed):
    """SIGKILL one Ray Train worker after a few checkpoints: Ray Train restarts the worker group,
    which resumes from the last registered checkpoint (not from epoch 0), and the run has one row
    with every epoch once in its history. The resumption is read from the row itself (each epoch
    names the session that trained it: 0 before the restart), not from Ray's log wording."""
    code, out = killed["first"]
    assert killed["victims"], f"no Ray Train worker in the driver's session to kill; output:\n{out}"
    assert code == 0, out
    killed_after = killed["killed_after"]
    assert 2 <= killed_after < EPOCHS - 1  # the kill came before the end
    rows, bad = read_rows(killed["results"] / "leaderboard")
    teacher = rows.set_index("method").loc["ce"]
    assert bad == [] and teacher.status == "finished" and teacher.workers == 2, out
    history = history_of(teacher.history)
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    # Resumed, not restarted: the first epoch of a later session follows the last checkpoint (at most
    # the one or two in flight when the worker died later); a restart from scratch would be session 0
    # throughout, one from epoch 0 would resume at 0.
    restart = resumed_at(history)
    assert restart is not None and 1 <= restart <= killed_after + 2, \
        (killed_after, [(h["epoch"], h.get("session")) for h in history])
    assert all(h.get("session", 0) == 0 for h in history[:restart])
