"""`bkdbench run` end to end through real Ray Tune on the embedded digits data: a five-method suite
(packed and mirrored to MLflow; then one trial per run, mirrored to W&B offline), a second invocation
with nothing to do, Ctrl-C then --resume, and a diverging trial failing alone.

Every run is a `bkdbench` subprocess with its own results folder; a driver that is interrupted is
started in a session of its own so that SIGINT reaches it alone (like one Ctrl-C), and whatever
it started is killed by PID if the test ends early."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pandas as pd
import pytest

from bkdbench.leaderboard.store import read_rows
from helpers.cli import kill_group, run_logged, start_cli
from helpers.files import assert_nothing_written, row_files, snapshot, suite_run_ids, write_suite
from helpers.processes import kill_pids, processes_of_driver, ray_daemon_pids, wait_for, wait_gone

pytestmark = pytest.mark.slow


def rows_of(results):
    rows, bad = read_rows(results / "leaderboard")
    assert bad == [], f"unreadable leaderboard files: {bad}"
    return rows


# --- 1. one five-method suite: packed with MLflow, then nothing to do, then one trial per run -----

FIVE = ["ce", "reweight-cb", "balanced-softmax", "kd", "bkd"]


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """digits IF 10, five methods, one seed, 3 epochs, run twice and read by several tests (one set of
    Ray starts instead of one per test): ``--pack 4`` mirrored to MLflow, then the same invocation
    again (nothing to do). In every `make test` (conftest.CORE_SLOW)."""
    tmp = tmp_path_factory.mktemp("five")
    suite = write_suite(tmp / "mix.yaml", datasets=["digits"], imbalance=[10], methods=FIVE, seeds=1, epochs=3)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    packed = tmp / "packed"
    args = ["run", "--suite", str(suite), "--results", str(packed), "--pack", "4", "--tracking", f"mlflow:{uri}"]
    first = run_logged(args, tmp / "packed.log", timeout=600)
    before = snapshot(packed)
    again = run_logged(args, tmp / "again.log", timeout=240)
    return dict(suite=suite, mlflow=uri, packed=packed, first=first, again=again, before=before)


@pytest.fixture(scope="module")
def one_each(five):
    """The same suite with ``--pack 1`` into a second results folder, mirrored to W&B offline; read
    beside the packed run (a shard's tests, not the core's: the core keeps one `run` through Ray)."""
    tmp = five["packed"].parent
    separate, wandb_dir = tmp / "separate", tmp / "wandb-dir"
    with pytest.MonkeyPatch.context() as mp:  # start_cli passes this process's environment on
        for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(wandb_dir)), ("WANDB_SILENT", "true")):
            mp.setenv(name, value)
        out = run_logged(["run", "--suite", str(five["suite"]), "--results", str(separate), "--pack", "1",
                          "--tracking", "wandb:bkd-ray"], tmp / "separate.log", timeout=600)
    return dict(five, separate=separate, one_each=out, wandb_dir=wandb_dir)


def test_mini_suite_then_nothing_to_do(five):
    code, out = five["first"]
    assert code == 0, out
    results = five["packed"]
    expected = suite_run_ids(five["suite"])
    assert len(expected) == 5
    rows = rows_of(results)
    assert sorted(rows.run_id) == sorted(expected), out
    assert sorted(p.stem for p in row_files(results)) == sorted(expected)  # one file per run
    assert set(rows.status) == {"finished"}, rows[["method", "status", "error"]]
    assert set(rows.suite) == {"mix"}
    by_method = rows.set_index("method")
    ce_id = by_method.loc["ce", "run_id"]
    assert by_method.loc["kd", "teacher_run_id"] == ce_id
    assert by_method.loc["bkd", "teacher_run_id"] == ce_id
    for name in ("ce", "reweight-cb", "balanced-softmax"):
        assert pd.isna(by_method.loc[name, "teacher_run_id"])
    assert (results / "teachers" / f"{ce_id}.pt").is_file()

    # The second invocation: the same five runs are found, none is trained, nothing is written.
    code, out = five["again"]
    assert code == 0, out
    flat = " ".join(out.split())  # rich wraps long lines
    assert "5 already in the leaderboard" in flat, out
    assert "0 to train" in flat, out
    assert "trained" not in flat, out
    assert_nothing_written(five["before"], results)  # since the first invocation ended


def test_suite_through_ray_mirrors_every_trial_to_mlflow(five):
    """The --tracking choice reaches Ray trials (their own processes and folders), packed ones
    included: every run of the suite is an MLflow run tagged with its run id and the suite, and has
    its TensorBoard events. (Moved here from test_tracking.py: it reads this module's suite run.)"""
    from mlflow import MlflowClient

    from test_tracking import tensorboard_scalars

    results = five["packed"]
    rows = rows_of(results)
    assert len(rows) == 5 and rows["history"].notna().all()
    client = MlflowClient(five["mlflow"])
    runs = client.search_runs([client.get_experiment_by_name("bkdbench/mix").experiment_id])
    assert sorted(r.data.tags["bkdbench.run_id"] for r in runs) == sorted(rows["run_id"])
    assert {r.data.tags["bkdbench.suite"] for r in runs} == {"mix"} and {r.info.status for r in runs} == {"FINISHED"}
    by_id = {r.data.tags["bkdbench.run_id"]: r for r in runs}
    for row in rows.to_dict("records"):
        assert by_id[row["run_id"]].data.metrics["final/top1"] == pytest.approx(row["top1"])
    boards = list((results / "experiments" / "tensorboard" / "mix").iterdir())
    assert sorted(b.name.rsplit("-", 1)[1] for b in boards) == sorted(rows["run_id"])
    assert all(tensorboard_scalars(b)["train_loss"] for b in boards)


def test_suite_through_ray_mirrors_every_trial_to_wandb_offline(one_each):
    """W&B offline through Ray: each trial (a process of its own, in a folder of its own) writes an
    offline run into WANDB_DIR, named and tagged after its run, with every epoch's loss and the row's
    final top-1 (the run files are decoded with W&B's own protobuf classes: helpers.wandb_files)."""
    import glob
    from pathlib import Path

    from helpers.wandb_files import offline_run

    code, out = one_each["one_each"]
    assert code == 0, out
    rows = rows_of(one_each["separate"]).set_index("run_id")
    paths = glob.glob(str(one_each["wandb_dir"] / "wandb" / "offline-run-*" / "run-*.wandb"))
    runs = [offline_run(Path(p)) for p in paths]
    assert len(runs) == 5, paths
    by_id = {next(t.split(":", 1)[1] for t in r["tags"] if t.startswith("run_id:")): r for r in runs}
    assert sorted(by_id) == sorted(rows.index)
    for run_id, run in by_id.items():
        row = rows.loc[run_id]
        assert run["project"] == "bkd-ray" and run["config"]["method"] == row.method
        assert run["summary"]["final/top1"] == pytest.approx(row.top1)
        history = json.loads(row.history) if isinstance(row.history, str) else list(row.history)
        assert [h["train_loss"] for h in run["history"]] == pytest.approx([h["train_loss"] for h in history])


# --- 2. Ctrl-C, then --resume ------------------------------------------------------------------

def _interrupt(tmp_path, args, ready, *, timeout=150):
    """Start ``bkdbench ARGS``, wait until ``ready()``, send SIGINT to the driver alone, wait for it
    to exit. Returns (process, output, Ray daemons seen before). The caller kills leftovers."""
    daemons_before = ray_daemon_pids()
    log = tmp_path / "interrupted.log"
    proc = start_cli(args, log)
    try:
        wait_for(lambda: ready() or proc.poll() is not None, timeout, every=0.05,
                 what=lambda: f"the point to interrupt the suite; output:\n{log.read_text()}")
        if proc.poll() is not None:
            pytest.fail(f"the suite ended (exit {proc.returncode}) before it could be interrupted:\n{log.read_text()}")
        os.kill(proc.pid, signal.SIGINT)  # the driver only, like one Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not exit within 60 s of SIGINT; output:\n{log.read_text()}")
    except BaseException:
        kill_group(proc)
        time.sleep(1)
        kill_pids(processes_of_driver(proc.pid, daemons_before))
        raise
    return proc, log.read_text(), daemons_before


def rows_settled(results, at_least, quiet=1.0):
    """A readiness check: at least N rows, and no new row for ``quiet`` seconds, so that SIGINT
    lands while trials train, not in the instant between a trial writing its row and Tune taking
    its last report (a finished run that Tune counts unfinished: the second half of
    test_sigint_in_student_stage_then_resume covers that case). Rows come in pairs here: two
    trials run at once, on equal data."""
    state = {"count": -1, "since": time.monotonic()}

    def ready() -> bool:
        count = len(row_files(results))
        if count != state["count"]:
            state.update(count=count, since=time.monotonic())
        return count >= at_least and time.monotonic() - state["since"] >= quiet

    return ready


def test_sigint_then_resume(tmp_path):
    # 3 epochs: enough that the SIGINT (after the first pair of rows) lands with six runs to go
    suite = write_suite(tmp_path / "sig.yaml", datasets=["digits"], imbalance=[10, 50], methods=["ce", "bkd"],
                        seeds=2, epochs=3)
    expected = suite_run_ids(suite)
    assert len(expected) == 8
    results = tmp_path / "results"
    args = ["run", "--suite", str(suite), "--results", str(results)]
    proc = None
    try:
        # Interrupt once the first rows are in and no trial is finishing (see rows_settled).
        proc, out, daemons_before = _interrupt(tmp_path, args, rows_settled(results, 1))
        assert proc.returncode != 0, f"an interrupted suite exited 0:\n{out}"
        assert "--resume" in out, out

        # No Ray process of the interrupted driver survives it (a few seconds to settle).
        left = wait_gone(lambda: processes_of_driver(proc.pid, daemons_before), 20)
        assert left == {}, f"Ray processes left behind by the interrupted driver: {left}"

        before = rows_of(results)
        assert 1 <= len(before) < len(expected), before[["method", "status"]]
        assert set(before.status) == {"finished"}
        finished_at = dict(zip(before.run_id, before.finished_at))

        code, out = run_logged([*args, "--resume"], tmp_path / "resume.log", timeout=240)
        assert code == 0, out
        rows = rows_of(results)
        assert sorted(rows.run_id) == sorted(expected), out  # every run exactly once
        assert not rows.run_id.duplicated().any()
        assert sorted(p.stem for p in row_files(results)) == sorted(expected)
        assert set(rows.status) == {"finished"}, rows[["method", "status", "error"]]
        after = dict(zip(rows.run_id, rows.finished_at))
        retrained = [run_id for run_id, when in finished_at.items() if after[run_id] != when]
        assert retrained == [], f"--resume retrained runs that were already finished: {retrained}"
    finally:
        if proc is not None:
            kill_pids(processes_of_driver(proc.pid, daemons_before))


def trials_started(results, run_ids):
    """A readiness check: every one of these runs has its Ray Tune trial folder (named by run id,
    in whichever stage's experiment folder) -- their trials have started."""
    def ready() -> bool:
        experiments = results / "experiments"
        if not experiments.is_dir():
            return False
        found = {p.name for p in experiments.glob("*/*/*") if p.is_dir()}
        return set(run_ids) <= found

    return ready


def test_sigint_in_student_stage_then_resume(tmp_path):
    """Ctrl-C while the students train; one student is then finished outside the suite (as
    `bkdbench train` does, or as happens when Ctrl-C lands just after a trial wrote its row);
    --resume must train the other one, leave that one alone, and report no failure.

    A regression test of two bugs: stages were named by position among the non-empty ones
    (stage-{number}), so the resumed plan's one stage was "stage-1" and Tuner.restore brought back
    the finished teachers' experiment -- the students were never trained, exit 0; and a restored
    trial whose run had finished meanwhile was missing from the new plan's specs, raised KeyError
    in trial.py, and --resume exited 1 with a Ray traceback."""
    from bkdbench.orchestrate.execute import run_and_record
    from bkdbench.specs.suites import load_suite

    suite = write_suite(tmp_path / "students.yaml", datasets=["digits"], imbalance=[10],
                        methods=["ce", "kd", "bkd"], seeds=1, epochs=6)
    specs = load_suite(str(suite)).expand()
    assert [s.method for s in specs] == ["ce", "kd", "bkd"]
    teacher, kd, bkd = (s.run_id for s in specs)
    results = tmp_path / "results"
    # One trial per student (by default the two share a packed trial): the test waits for both to start.
    args = ["run", "--suite", str(suite), "--results", str(results), "--pack", "1"]
    proc = None
    try:
        # Interrupt once both students' trials have started: the teacher is done by then.
        proc, out, daemons_before = _interrupt(tmp_path, args, trials_started(results, [kd, bkd]))
        if proc.returncode == 0 or "--resume" not in out:
            pytest.fail(f"expected an interrupted suite:\n{out}")
        if [p.stem for p in row_files(results)] != [teacher]:
            pytest.fail(f"expected only the teacher's row before resuming, found {len(row_files(results))}")
        run_and_record(specs[1], results, device="cpu")  # kd, finished outside the suite (its teacher is cached)
        kd_finished = rows_of(results).set_index("run_id").loc[kd, "finished_at"]

        # --max-failures 0: a crashing trial fails at once, not after two restarts.
        code, out = run_logged([*args, "--resume", "--max-failures", "0"], tmp_path / "resume.log", timeout=180)
        rows = rows_of(results).set_index("run_id")
        assert sorted(rows.index) == sorted([teacher, kd, bkd]), f"runs missing after --resume:\n{out}"
        assert set(rows.status) == {"finished"}, rows[["method", "status", "error"]]
        assert rows.loc[kd, "finished_at"] == kd_finished, "--resume retrained the run finished meanwhile"
        assert code == 0, out
        flat = " ".join(out.split())
        assert "Traceback" not in out and "KeyError" not in out, out
        assert f"failed {kd}" not in flat, out
    finally:
        if proc is not None:
            kill_pids(processes_of_driver(proc.pid, daemons_before))


def test_resume_with_narrower_filters_then_full_resume(tmp_path):
    """Interrupted suite; `--resume --imbalance 10` (a subset), then `--resume` with the suite's own
    filters: every run must end up trained."""
    suite = write_suite(tmp_path / "filt.yaml", datasets=["digits"], imbalance=[10, 50], methods=["ce"],
                        seeds=1, epochs=4)
    if10, if50 = suite_run_ids(suite)
    results = tmp_path / "results"
    args = ["run", "--suite", str(suite), "--results", str(results)]
    proc = None
    try:
        proc, out, daemons_before = _interrupt(tmp_path, args, trials_started(results, [if10, if50]))
        if proc.returncode == 0 or row_files(results):
            pytest.fail(f"expected an interruption before any run finished:\n{out}")
        sub_code, sub_out = run_logged([*args, "--resume", "--imbalance", "10"], tmp_path / "subset.log",
                                    timeout=180)
        code, out = run_logged([*args, "--resume"], tmp_path / "resume.log", timeout=180)
        rows = rows_of(results)
        assert sorted(rows.run_id) == sorted([if10, if50]), f"runs never trained:\n{sub_out}\n{out}"
        assert set(rows.status) == {"finished"}
        assert code == 0, out
        # The subset resume may refuse (exit 2, before any work) but must not claim a crash.
        assert sub_code in (0, 2), sub_out
        assert "crashed" not in sub_out, sub_out
        assert not re.search(r"failed [0-9a-f]{16}", " ".join(sub_out.split())), sub_out  # no run reported failed
    finally:
        if proc is not None:
            kill_pids(processes_of_driver(proc.pid, daemons_before))


# --- 3. diverging runs fail alone, a pack member included ---------------------------------------

def test_diverging_runs_fail_alone_and_the_cli_exits_1_naming_them(tmp_path):
    """LDAM's scale s multiplies float32 cosines: 1e39 overflows to inf, so its loss is NaN at once;
    BKD with α = 1e39 (inf in float32) diverges inside the KD + BKD students' pack. Both are recorded
    as failed with their reason, CE and the KD sibling finish, and the CLI exits 1 naming both."""
    suite = write_suite(tmp_path / "nan.yaml", datasets=["digits"], imbalance=[10],
                        methods=["ce", {"method": "ldam", "params": {"s": 1.0e39}}, "kd",
                                 {"method": "bkd", "params": {"alpha": 1.0e39}}], seeds=1, epochs=3)
    from bkdbench.specs.suites import load_suite

    ids = {spec.method: spec.run_id for spec in load_suite(str(suite)).expand()}
    assert sorted(ids) == ["bkd", "ce", "kd", "ldam"]
    results = tmp_path / "results"
    code, out = run_logged(["run", "--suite", str(suite), "--results", str(results)], tmp_path / "run.log")
    flat = " ".join(out.split())
    assert code == 1, out  # the suite carried on, and says it is incomplete
    rows = rows_of(results).set_index("run_id")
    assert sorted(rows.index) == sorted(ids.values()), out
    for name in ("ce", "kd"):
        assert rows.loc[ids[name], "status"] == "finished", rows.loc[ids[name], "error"]
        assert rows.loc[ids[name], "top1"] > 0
    for name in ("ldam", "bkd"):
        assert rows.loc[ids[name], "status"] == "failed"
        error = rows.loc[ids[name], "error"]
        assert isinstance(error, str) and re.search(r"loss.*\b(nan|inf)\b", error), error
        assert f"failed {ids[name]}" in flat, out  # named with its reason
    assert re.search(r"error: 2 run\(s\) failed: " + ", ".join(sorted([ids["ldam"], ids["bkd"]])), flat), out
    assert "1 Ray trials" not in flat and "(3 Ray trials)" in flat, out  # ce, ldam; kd + bkd packed


# --- 4. a local run starts its own Ray ---------------------------------------------------------

def test_local_run_starts_its_own_ray(tmp_path, monkeypatch):
    """No --address and no RAY_ADDRESS: the address bkdbench gives ray.init must mean 'start a local
    Ray', even where a `ray start` head has left its address behind (ray.init(address=None) joins
    that cluster, or hangs 60 s and dies when it is gone). Ray itself is asked what the address
    means (canonicalize_bootstrap_address is what ray.init calls); nothing is started."""
    import logging

    import ray
    from ray._private.services import canonicalize_bootstrap_address

    from bkdbench.orchestrate import ray_session as session

    ray_tmp = tmp_path / "raytmp"
    (ray_tmp / "ray").mkdir(parents=True)
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # a `ray start` head, since gone
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in ("RAY_AUTH_MODE", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "RAY_AIR_NEW_OUTPUT"):
        monkeypatch.delenv(name, raising=False)  # ray_session sets some: restored afterwards
    calls = []
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(ray, "shutdown", lambda *args, **kwargs: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    loggers = {name: logging.getLogger(name) for name in ("ray", "ray.tune", "ray.train", "ray.air")}
    saved = {name: (list(lg.handlers), lg.propagate, lg.level) for name, lg in loggers.items()}
    try:
        with session.ray_session(None, log_file=tmp_path / "ray.log"):
            pass
    finally:
        for name, lg in loggers.items():
            for handler in lg.handlers:
                if handler not in saved[name][0]:
                    handler.close()
            lg.handlers[:] = saved[name][0]
            lg.propagate, lg.level = saved[name][1], saved[name][2]
    assert len(calls) == 1
    args, kwargs = calls[0]
    address = args[0] if args else kwargs.get("address")
    joined = canonicalize_bootstrap_address(address, kwargs.get("_temp_dir"))
    assert joined is None, f"ray.init(address={address!r}) joins {joined} instead of starting a local Ray"


# --- 1b. packed trials write the rows separate trials write ----------------------------------

PACK_COLUMNS = ("run_id", "status", "method", "params", "seed", "teacher_run_id", "top1", "val_top1", "many", "medium",
                "few", "top1_best_epoch", "best_epoch", "nll", "ece", "suite")


def test_a_packed_suite_writes_the_rows_of_one_trial_per_run(one_each):
    """Five methods of one seed: with ``--pack 4`` CE, CB re-weighting and Balanced Softmax share a trial
    beside the teacher stage and KD and BKD share one after it (2 trials); ``--pack 1`` trains 5 trials.
    On CPU a pack runs each member's exact operations, so every row is the same number for number."""
    got = {}
    for name, key in (("packed", "first"), ("separate", "one_each")):
        code, out = one_each[key]
        assert code == 0, out
        trials = re.search(r"trained 5 run\(s\) in [\d.]+ s \((\d+) Ray trials\)", " ".join(out.split()))
        assert trials and int(trials.group(1)) == (2 if name == "packed" else 5), out
        assert re.search(r"time: planning [\d.]+ s · Ray start [\d.]+ s · teachers [\d.]+ s · students", " ".join(out.split())), out
        got[name] = rows_of(one_each[name]).set_index("run_id", drop=False).sort_index()
    packed, separate = got["packed"], got["separate"]
    assert len(packed) == 5 and list(packed.run_id) == list(separate.run_id)
    for col in PACK_COLUMNS:
        assert packed[col].tolist() == separate[col].tolist(), col
    for a, b in zip(packed.per_class_acc, separate.per_class_acc):
        assert list(a) == list(b)
    for a, b in zip(packed.history, separate.history):  # JSON text: one entry per epoch
        assert [h["train_loss"] for h in json.loads(a)] == [h["train_loss"] for h in json.loads(b)]


def test_report_of_the_suites_own_rows(five, tmp_path):
    """`bkdbench report` on rows a real suite run wrote (test_report.py uses rows made by hand): the
    figures are real images, runs.json holds every run with its row's numbers and its epochs, and
    in Chromium (where installed) the page loads without an error, its leaderboard one line per method."""
    from PIL import Image

    from helpers.browser import chromium, load_page
    from test_report import check_page, report

    rows = rows_of(five["packed"]).set_index("run_id")
    out = tmp_path / "report"
    index = report(five["packed"], out, "--suite", "mix")
    figures = sorted((out / "figures").glob("*.png"))
    assert [p.name for p in figures] == ["curves-digits-if10.png", "per-class-digits-if10.png", "summary-top1.png"]
    for path in figures:
        with Image.open(path) as image:
            assert image.width > 600 and image.height > 300, (path.name, image.size)
    runs = {r["run_id"]: r for r in json.loads((out / "runs.json").read_text())}
    assert set(runs) == set(rows.index)
    for run_id, run in runs.items():
        assert run["top1"] == pytest.approx(rows.loc[run_id, "top1"]) and run["method"] == rows.loc[run_id, "method"]
        assert [h["epoch"] for h in run["history"]] == [0, 1, 2]
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium here: `apt-get install chromium` (.ci/run does); the files were checked")
    page = load_page(index, browser)
    check_page(page, images=3)
    board = page.tables["leaderboard"]
    assert sorted(r[0] for r in board) == sorted(FIVE)
    top1 = rows.set_index("method").top1
    for line in board:  # one seed: the mean is the run's own top-1
        assert line[1].startswith(f"{top1[line[0]]:.2f}"), line
    shown = [top1[line[0]] for line in board]
    assert shown == sorted(shown, reverse=True)  # ranked by top-1
