"""Fault tests with real processes: a two-node Ray cluster (`ray start` head + worker) that loses its
worker mid-suite, a driver killed with SIGKILL and resumed, storage that fills up mid-run, and
storage that one node cannot see. Every process a test starts is stopped by PID."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bkdbench.leaderboard.store import read_rows
from bkdbench.specs.suites import load_suite

from helpers.cli import run_cli, start_cli
from helpers.cluster import RAY, Cluster
from helpers.files import latest_train_checkpoint_epoch, nothing_written, row_files, tree
from helpers.files import write_suite as write_suite_file
from helpers.processes import cmdline, descendants, kill_pids, wait_for
from helpers.tune_state import history_of, named_checkpoints, resumed_at

pytestmark = pytest.mark.slow


def write_suite(path: Path, methods: list, epochs: int, seeds: int = 1) -> Path:
    return write_suite_file(path, datasets=["digits"], imbalance=[10], methods=methods, seeds=seeds, epochs=epochs)


def rows(results: Path):
    frame, bad = read_rows(results / "leaderboard")
    assert bad == [], f"unreadable leaderboard files: {bad}"
    return frame


def assert_each_run_once(results: Path, suite: Path) -> None:
    expected = {s.run_id for s in load_suite(str(suite)).expand()}
    frame = rows(results)
    assert sorted(frame.run_id) == sorted(expected), "every run exactly once"
    assert set(frame.status) == {"finished"}
    assert {p.stem for p in row_files(results)} == expected
    assert tree(results / "leaderboard") == sorted(f"{run_id}.parquet" for run_id in expected), "no temp files left"


def trial_on(raylet: int) -> bool:
    return any(cmdline(pid).startswith("ray::ImplicitFunc") for pid in descendants({raylet}) - {raylet})


def test_suite_survives_losing_a_worker_node(tmp_path):
    suite = write_suite(tmp_path / "nodeloss.yaml", ["ce", "reweight-cb", "balanced-softmax", "ldam-drw"], epochs=30)
    results = tmp_path / "results"
    cluster = Cluster()
    driver = None
    try:
        cluster.start_head(cpus=1)
        worker = cluster.add_worker(cpus=1)
        driver = start_cli(["run", "--suite", suite, "--address", cluster.address, "--results", results,
                            "--checkpoint-every", "5", "--max-failures", "3"], tmp_path / "driver.log",
                           env=cluster.driver_env())
        wait_for(lambda: trial_on(worker), timeout=180, every=0.5, what="a trial on the worker node")
        time.sleep(2)  # let it train a few epochs (and checkpoint) before the node dies
        rows_before = len(row_files(results))
        killed = cluster.kill_worker(worker)
        assert worker in killed
        driver.wait(timeout=400)
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log
        assert_each_run_once(results, suite)
        print(f"\nnode loss: killed {len(killed)} processes of the worker node with {rows_before} rows written; "
              f"after: {len(row_files(results))} rows, each run once")  # evidence for the record (pytest -s)
    finally:
        if driver is not None and driver.poll() is None:
            kill_pids(descendants({driver.pid}))
        cluster.stop()


def test_killed_driver_resumes_without_duplicates(tmp_path):
    """SIGKILL the driver once two runs are finished and the saved Tune state names a checkpoint of
    a running one; then --resume: every run once, the finished ones untouched, and each interrupted
    run restarts at the epoch of the checkpoint the state named (from 0 where it named none)."""
    suite = write_suite(tmp_path / "driverkill.yaml", ["ce", "reweight-cb", "balanced-softmax", "ldam-drw"],
                        epochs=20, seeds=2)
    results = tmp_path / "results"
    args = ["run", "--suite", str(suite), "--results", str(results), "--checkpoint-every", "5"]

    def ready() -> bool:
        done = {p.stem for p in row_files(results)}
        return len(done) >= 2 and any(epoch for run_id, epoch in named_checkpoints(results).items() if run_id not in done)

    driver = start_cli(args, tmp_path / "first.log")
    try:
        wait_for(ready, timeout=240, every=0.2, what="two finished runs and a named checkpoint")
        started_by_driver = descendants({driver.pid}) - {driver.pid}
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        # A SIGKILLed driver cannot shut Ray down: its processes are orphans. Stop them like an operator.
        kill_pids(started_by_driver)
    finally:
        kill_pids(descendants({driver.pid}))
    time.sleep(1)
    before = rows(results).set_index("run_id")["finished_at"].to_dict()
    assert 2 <= len(before) < 8
    named = {run_id: epoch for run_id, epoch in named_checkpoints(results).items() if run_id not in before}

    resumed = start_cli([*args, "--resume"], tmp_path / "resume.log")
    try:
        resumed.wait(timeout=400)
    finally:
        kill_pids(descendants({resumed.pid}))
    assert resumed.returncode == 0, (tmp_path / "resume.log").read_text()
    assert_each_run_once(results, suite)
    after = rows(results).set_index("run_id")
    assert {k: after.loc[k, "finished_at"] for k in before} == before, "finished runs were not retrained"
    restarts = {run_id: resumed_at(history_of(after.loc[run_id, "history"])) for run_id in named}
    assert restarts == named, f"resumed at (run: epoch) {restarts}, the saved state named {named}"
    assert any(named.values()), "no interrupted run had a checkpoint to resume from"
    for run_id in named:
        assert [h["epoch"] for h in history_of(after.loc[run_id, "history"])] == list(range(20)), "every epoch once"
    print(f"\ndriver SIGKILL: {len(before)} rows before, {len(after)} after --resume, none retrained; "
          f"interrupted runs resumed at epochs {sorted(e or 0 for e in restarts.values())}")


@pytest.fixture(scope="session")
def tmpfs_mounts(tmp_path_factory):
    """Skips the test unless this process may mount a tmpfs (root, and a kernel that lets it); probed
    once, when a test first asks."""
    if os.geteuid() != 0:
        pytest.skip("needs root and tmpfs mounts")
    probe = tmp_path_factory.mktemp("mount-probe")
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], capture_output=True)
    if not ok:
        pytest.skip("needs root and tmpfs mounts")


@pytest.mark.usefixtures("tmpfs_mounts")
def test_full_storage_fails_clearly_and_keeps_rows(tmp_path):
    storage = tmp_path / "small-disk"
    storage.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(storage)], check=True)
    suite = write_suite(tmp_path / "diskfull.yaml", ["ce", "reweight-cb", "balanced-softmax", "ldam-drw"],
                        epochs=15, seeds=3)
    results = storage / "results"
    driver = start_cli(["run", "--suite", suite, "--results", results], tmp_path / "driver.log")
    try:
        wait_for(lambda: len(row_files(results)) >= 2, timeout=240, every=0.5, what="two finished runs")
        with open(storage / "filler", "wb") as fh:  # fill the disk to the last byte
            try:
                while True:
                    fh.write(b"\0" * (1 << 20))
                    fh.flush()
            except OSError:
                pass
        driver.wait(timeout=300)
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 1, log
        assert "No space left on device" in log and "--resume" in log
        assert "Traceback" not in log
        (storage / "filler").unlink()
        frame = rows(results)  # every row written before the disk filled is intact and readable
        assert len(frame) >= 2 and set(frame.status) == {"finished"}
        print(f"\ndisk full: exit 1 with a clear message; {len(frame)} rows written before stay readable")
    finally:
        kill_pids(descendants({driver.pid}))
        subprocess.run(["umount", "-l", str(storage)], capture_output=True)


@pytest.mark.usefixtures("tmpfs_mounts")
def test_node_local_storage_is_refused(tmp_path):
    storage = tmp_path / "results"
    storage.mkdir()
    suite = write_suite(tmp_path / "local.yaml", ["ce"], epochs=2)
    cluster = Cluster()
    try:
        cluster.start_head(cpus=1)
        # The worker gets a private mount namespace with its own empty disk over the storage path:
        # exactly what a node-local path looks like from another machine.
        inner = (f"mount -t tmpfs tmpfs {shlex.quote(str(storage))} && exec {shlex.quote(str(RAY))} start "
                 f"--disable-usage-stats --address={cluster.address} --num-cpus=1")
        before = cluster.raylets()
        subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                       env=cluster.env, check=True, capture_output=True, timeout=120)
        wait_for(lambda: cluster.raylets() - before, timeout=30, every=0.5, what="the worker's raylet")
        # Nothing written in the storage at all: no row, no teacher, no folder, no ray.log.
        with nothing_written(storage):
            result = run_cli(["run", "--suite", suite, "--address", cluster.address, "--storage", storage],
                             env=cluster.driver_env(), timeout=300)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "is not shared" in result.stderr and "Traceback" not in result.stderr
    finally:
        cluster.stop()


def test_a_driver_without_the_clusters_token_is_refused_clearly(tmp_path):
    """Token authentication stays on for a joined cluster: a driver with no token, or another one, is
    refused before any work with one `error:` line saying what to do, exit 2, nothing written."""
    cluster = Cluster()
    try:
        cluster.start_head(cpus=1)
        home = tmp_path / "home"  # no ~/.ray/auth_token here
        home.mkdir()
        results = tmp_path / "results"
        args = ["run", "--suite", "digits-lt", "--method", "ce", "--seeds", "1", "--epochs", "1",
                "--address", cluster.address, "--results", results]
        for extra, words in (({}, ["has no token", "~/.ray/auth_token", "RAY_AUTH_TOKEN"]),
                             ({"RAY_AUTH_TOKEN": "0" * 32}, ["could not join the Ray cluster", "the head's?"])):
            env = cluster.driver_env(HOME=home, **extra)
            del env["RAY_AUTH_TOKEN_PATH"]  # the cluster's token file: this driver must not find it
            result = run_cli(args, folder=tmp_path, env=env, timeout=180)
            assert result.returncode == 2, result.stdout + result.stderr
            errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and all(w in errors[0] for w in words), errors
            assert "Traceback" not in result.stderr
            assert not results.exists(), tree(results)
    finally:
        cluster.stop()


def test_a_two_worker_trial_across_two_nodes_survives_losing_one(tmp_path):
    """One trial's two Ray Train workers on two nodes (one CPU each, one CPU per worker); the worker
    node is SIGKILLed after a few checkpoints and a new node joins: Ray Train restarts the worker group
    from the last checkpoint, and the run has one row, workers = 2, every epoch once, the epochs after
    the restart marked as a later session."""
    epochs = 16
    suite = write_suite(tmp_path / "twonode.yaml", ["ce"], epochs=epochs)
    results = tmp_path / "results"
    cluster = Cluster()
    driver = None
    try:
        cluster.start_head(cpus=1)
        worker = cluster.add_worker(cpus=1)
        driver = start_cli(["run", "--suite", suite, "--address", cluster.address, "--results", results,
                            "--workers-per-trial", "2", "--cpus-per-trial", "1", "--checkpoint-every", "1",
                            "--max-failures", "3"], tmp_path / "driver.log", env=cluster.driver_env())
        on_worker = lambda: any("RayTrainWorker" in cmdline(p) for p in descendants({worker}) - {worker})  # noqa: E731
        wait_for(on_worker, timeout=240, every=0.5, what="a Ray Train worker on the worker node")
        wait_for(lambda: latest_train_checkpoint_epoch(results) >= 2, timeout=240, every=0.2, what="three checkpoints")
        killed_after = latest_train_checkpoint_epoch(results)
        assert worker in cluster.kill_worker(worker)
        cluster.add_worker(cpus=1)  # two CPUs again: the group of two can be placed
        driver.wait(timeout=400)
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log
    finally:
        if driver is not None and driver.poll() is None:
            kill_pids(descendants({driver.pid}))
        cluster.stop()
    assert_each_run_once(results, suite)
    frame = rows(results)
    assert list(frame.workers) == [2]
    history = history_of(frame.history[0])
    assert [h["epoch"] for h in history] == list(range(epochs)), "every epoch once"
    restart = resumed_at(history)
    assert restart and restart <= killed_after + 2, (killed_after, [(h["epoch"], h["session"]) for h in history])
    print(f"\ntwo-node, two-worker trial: node killed after checkpoint epoch {killed_after}; resumed at epoch "
          f"{restart}; one row, every epoch once")
