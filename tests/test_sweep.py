"""`bkdbench sweep`: Optuna on Ray Tune, end to end on digits (real Ray, real Optuna, the console
script in a subprocess), resume/extend, ASHA-stopped trials told to Optuna as PRUNED, and proof
that a search trial never reads the test split.

Every Ray started here gets a private RAY_TMPDIR (see sweep_helpers.ray_tmpdir): its processes name
that folder on their command line, so the tests find (and, if left behind, kill) exactly their own
Ray processes by PID while other test runs use Ray on the same machine."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from bkdbench.leaderboard.store import read_rows
from bkdbench.orchestrate import sweep as sweep_mod
from bkdbench.orchestrate.trial import FINISHED
from bkdbench.orchestrate.sweep import (METRIC, PrunedAwareOptunaSearch, SweepConfig, _mark_interrupted_trials,
                                        counted_trials, grace_period, space_hash, study_storage)
from bkdbench.paths import leaderboard_dir
from bkdbench.search_spaces import load_space
from bkdbench.specs import make_spec

from sweep_helpers import (BKDBENCH, cleanup_ray_tmp, cli_env, is_png, load_study, pgrep, ray_processes,
                           ray_tmpdir, run_cli, sweep_ids, wait_gone)

# --------------------------------------------------------------------------------------------
# 1. A tiny sweep, end to end through the console script
# --------------------------------------------------------------------------------------------

TINY = ["sweep", "bkd", "--dataset", "digits", "--imbalance", "10", "--trials", "6", "--concurrency", "2",
        "--epochs", "4", "--final-seeds", "2", "--scheduler", "none"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    results = tmp_path_factory.mktemp("tiny") / "results"
    ray_tmp = ray_tmpdir()
    env = cli_env(ray_tmp)
    try:
        proc = run_cli([*TINY, "--results", results], env, timeout=400)
        assert proc.returncode == 0, f"sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        ids = sweep_ids(results)
        assert len(ids) == 1, ids
        sweep_id = ids[0]
        assert f"sweep {sweep_id}:" in proc.stdout  # the id the user needs for `sweep report`
        left = wait_gone(lambda: ray_processes(ray_tmp))
        assert not left, f"Ray processes outlived the sweep: {left}"
        yield SimpleNamespace(results=results, sweep_id=sweep_id, proc=proc, env=env,
                              folder=results / "sweeps" / sweep_id)
    finally:
        cleanup_ray_tmp(ray_tmp)


def test_tiny_sweep_end_to_end(tiny_sweep):
    results, sweep_id, folder = tiny_sweep.results, tiny_sweep.sweep_id, tiny_sweep.folder

    # The study: exactly 6 trials, all COMPLETE (no scheduler), every parameter inside bkd.yaml.
    study = load_study(results, sweep_id)
    assert [t.number for t in study.trials] == list(range(6))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    space, _ = load_space("bkd")
    for t in study.trials:
        assert set(t.params) == set(space.params) == {"alpha", "temperature"}
        for name, value in t.params.items():
            assert space.params[name].low <= value <= space.params[name].high, (t.number, name, value)
        assert 0.0 <= t.value <= 100.0
    assert len({(t.params["alpha"], t.params["temperature"]) for t in study.trials}) == 6

    # sweep.json: the best COMPLETE trial.
    record = json.loads((folder / "sweep.json").read_text())
    best = max(study.trials, key=lambda t: t.value)
    assert record["sweep_id"] == sweep_id
    assert record["best_params"] == best.params
    assert record["best_val_top1"] == best.value
    assert study.trials[record["best_trial"]].value == best.value
    assert record["trials"] == 6
    assert record["config"]["scheduler"] == "none" and record["config"]["epochs"] == 4

    # The leaderboard: 2 test runs of the best config (tagged), 2 of the defaults (untagged), and
    # no row at all from the 6 search trials (they never see the test set).
    board, skipped = read_rows(leaderboard_dir(results))
    assert skipped == []
    bkd = board[board.method == "bkd"]
    assert len(bkd) == 4, bkd[["run_id", "sweep_id", "params"]]
    tuned = bkd[bkd.sweep_id == sweep_id]
    default = bkd[bkd.sweep_id.isna()]
    assert len(tuned) == 2 and len(default) == 2
    for rows, alpha, temperature in ((tuned, best.params["alpha"], best.params["temperature"]), (default, 1.0, 2.0)):
        assert sorted(rows.seed) == [0, 1]
        assert set(rows.status) == {"finished"}
        assert rows.top1.notna().all() and rows.val_top1.notna().all()
        assert set(rows.epochs) == {4}
        for params in rows.params:
            params = json.loads(params)
            assert params["alpha"] == alpha and params["temperature"] == temperature
            assert params["cb_start"] == 0.8  # digits' bkd default, kept for the finals
    assert sorted(tuned.run_id) == sorted(record["final_runs"]["tuned"])
    assert sorted(default.run_id) == sorted(record["final_runs"]["default"])

    # The plots.
    for name in ("val-accuracy.png", "history.png", "importances.png"):
        assert is_png(folder / name), name


def _cli_app():
    import typer

    from bkdbench import cli_sweep

    app = typer.Typer()
    app.callback()(lambda: None)  # keep `sweep` a subcommand
    cli_sweep.register(app)
    return app


def test_sweep_report_reprints_the_sweep(tiny_sweep, monkeypatch):
    """`bkdbench sweep report ID` (in-process: the console script itself ran in the fixture)."""
    from typer.testing import CliRunner

    for name in ("val-accuracy.png", "history.png", "importances.png"):
        (tiny_sweep.folder / name).unlink()
    monkeypatch.setenv("COLUMNS", "220")
    result = CliRunner().invoke(_cli_app(), ["sweep", "report", tiny_sweep.sweep_id, "--results", str(tiny_sweep.results)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())  # rich wraps titles to the table's width
    assert f"sweep {tiny_sweep.sweep_id}: top trials by balanced validation top-1" in out
    assert "trials: 6 complete" in out
    assert "alpha" in out and "temperature" in out
    assert "tuned" in out and "default" in out
    study = load_study(tiny_sweep.results, tiny_sweep.sweep_id)
    best = max(study.trials, key=lambda t: t.value)
    assert f"{best.value:.4g}" in out
    for name in ("val-accuracy.png", "history.png", "importances.png"):  # re-plotted
        assert is_png(tiny_sweep.folder / name), name
        assert f"wrote {tiny_sweep.folder / name}" in out


# --------------------------------------------------------------------------------------------
# 2. Ctrl-C, --resume, and extending a finished sweep
# --------------------------------------------------------------------------------------------

TARGET = 4  # trials; the interrupt comes once 2 are running, so at most 2 finished by then


def _sweep_args(results, trials):
    return ["sweep", "focal", "--dataset", "digits", "--imbalance", "10", "--trials", str(trials), "--concurrency", "2",
            "--epochs", "4", "--final-seeds", "1", "--scheduler", "none", "--results", str(results)]


def _assert_numbering(trials):
    trials = trials.trials if isinstance(trials, optuna.Study) else trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers))), numbers
    assert len({t._trial_id for t in trials}) == len(numbers)


def test_resume_continues_numbering(tmp_path):
    results = tmp_path / "results"
    ray_tmp = ray_tmpdir()
    env = cli_env(ray_tmp)
    raylets_before = pgrep("raylet")
    driver = None
    try:
        driver = subprocess.Popen([BKDBENCH, *_sweep_args(results, TARGET)], env=env, start_new_session=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while True:  # wait until the study holds at least 2 trials, then Ctrl-C the driver
            assert driver.poll() is None, f"the sweep ended before the interrupt: {driver.communicate()}"
            assert time.monotonic() < deadline, "the study never got 2 trials"
            ids = sweep_ids(results)
            if ids and (results / "sweeps" / ids[0] / "study.journal").is_file():
                try:
                    if len(load_study(results, ids[0]).trials) >= 2:
                        break
                except KeyError:  # the study is not created yet
                    pass
            time.sleep(0.2)
        sweep_id = ids[0]
        os.kill(driver.pid, signal.SIGINT)
        out, err = driver.communicate(timeout=180)
        assert driver.returncode == 130, (out[-2000:], err[-2000:])
        assert "--resume" in err
        left = wait_gone(lambda: ray_processes(ray_tmp, driver.pid))
        assert not left, f"Ray processes outlived the interrupted driver: {left}"

        interrupted = load_study(results, sweep_id).trials  # a snapshot (the Study object reads live)
        _assert_numbering(interrupted)
        running = [t.number for t in interrupted if t.state == TrialState.RUNNING]
        assert running, "no trial was running at the interrupt"
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in interrupted) < TARGET
        assert not (results / "sweeps" / sweep_id / "sweep.json").exists()

        # The same command without --resume refuses, before starting anything (in-process: the
        # console script's exit paths are exercised above and below).
        from typer.testing import CliRunner

        again = CliRunner().invoke(_cli_app(), _sweep_args(results, TARGET))
        assert again.exit_code == 2, again.output
        again_out = " ".join(again.output.split())
        assert "--resume" in again_out and sweep_id in again_out and "already exists" in again_out
        assert len(load_study(results, sweep_id).trials) == len(interrupted)

        resumed = run_cli([*_sweep_args(results, TARGET), "--resume"], env, timeout=400)
        assert resumed.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:])
        study = load_study(results, sweep_id)
        assert counted_trials(study) == TARGET
        study = study.trials
        _assert_numbering(study)
        assert not any(t.state == TrialState.RUNNING for t in study)
        for number in running:  # not lost, not counted: FAIL, with the parameters they were given
            assert study[number].state == TrialState.FAIL, (number, study[number].state)
            assert study[number].params == interrupted[number].params
        for t in interrupted:  # what was finished before the interrupt is kept as it was
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                assert study[t.number].state == t.state and study[t.number].value == t.value
        assert len(study) == TARGET + len(running)
        assert json.loads((results / "sweeps" / sweep_id / "sweep.json").read_text())["trials"] == TARGET

        # A finished sweep: more --trials with --resume extends it, numbering on.
        extended = run_cli([*_sweep_args(results, TARGET + 1), "--resume"], env, timeout=400)
        assert extended.returncode == 0, (extended.stdout[-3000:], extended.stderr[-3000:])
        grown = load_study(results, sweep_id)
        _assert_numbering(grown)
        assert counted_trials(grown) == TARGET + 1
        assert len(grown.trials) == len(study) + 1
        for t in study:
            assert grown.trials[t.number].state == t.state and grown.trials[t.number].params == t.params
        record = json.loads((results / "sweeps" / sweep_id / "sweep.json").read_text())
        assert record["trials"] == TARGET + 1
        assert sweep_ids(results) == [sweep_id]  # same search, same folder
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        session = driver.pid if driver is not None else None
        wait_gone(lambda: ray_processes(ray_tmp, session))
        # Whatever Ray process of ours is still alive (named by our RAY_TMPDIR, or in our driver's
        # session) is killed by PID; raylets of other test runs are not ours to touch.
        leftovers = cleanup_ray_tmp(ray_tmp, session)
    assert not leftovers, f"Ray processes left behind: {leftovers}"
    assert not (pgrep("raylet") - raylets_before) & ray_processes(ray_tmp, session)


def test_mark_interrupted_trials_fails_running_ones_and_numbering_goes_on(tmp_path):
    study = optuna.create_study(study_name="s", storage=study_storage(tmp_path), direction="maximize")
    done, stale = study.ask(), study.ask()
    study.tell(done, 70.0)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    assert _mark_interrupted_trials(study) == 1
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]
    assert counted_trials(study) == 2
    assert study.ask().number == 3
    assert _mark_interrupted_trials(study) == 1  # the one just asked; nothing else changes
    assert [t.state for t in study.trials][:3] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]


# --------------------------------------------------------------------------------------------
# 3. ASHA-stopped trials are PRUNED in the study
# --------------------------------------------------------------------------------------------

def _searcher(cls, storage, name="t"):
    return cls(space=load_space("bkd")[0].optuna_space(), metric=METRIC, mode="max",
               sampler=optuna.samplers.RandomSampler(seed=0), study_name=name, storage=storage)


def test_asha_stopped_trials_are_pruned_in_study(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    storage = study_storage(tmp_path / "pruned-aware")
    searcher = _searcher(PrunedAwareOptunaSearch, storage)
    for trial_id in ("trial_a", "trial_b", "trial_c"):
        config = searcher.suggest(trial_id)
        assert set(config) == {"alpha", "temperature"}
    searcher.on_trial_complete("trial_a", {METRIC: 50.0, "epoch": 2})  # stopped by the scheduler
    searcher.on_trial_complete("trial_b", {METRIC: 60.0, "epoch": 9, FINISHED: True})  # ran to the end
    searcher.on_trial_complete("trial_c", {"diverged": True})
    study = optuna.load_study(study_name="t", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[0].value is None and study.trials[2].value is None
    assert study.trials[1].value == 60.0
    assert study.best_trial.number == 1
    searcher.on_trial_complete("trial_a", {METRIC: 99.0, "epoch": 9, FINISHED: True})  # a second call changes nothing
    assert optuna.load_study(study_name="t", storage=storage).trials[0].state == TrialState.PRUNED

    # An errored trial is FAIL too.
    searcher.suggest("trial_d")
    searcher.on_trial_complete("trial_d", {METRIC: 40.0, "epoch": 1}, error=True)
    assert optuna.load_study(study_name="t", storage=storage).trials[3].state == TrialState.FAIL

    # The trap this subclass exists for: Ray's own OptunaSearch tells the truncated score as COMPLETE.
    plain_storage = study_storage(tmp_path / "plain")
    plain = _searcher(OptunaSearch, plain_storage)
    plain.suggest("trial_a")
    plain.on_trial_complete("trial_a", {METRIC: 50.0, "epoch": 2})
    trial = optuna.load_study(study_name="t", storage=plain_storage).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == 50.0


ASHA_EPOCHS = 6


@pytest.fixture(scope="module")
def ray_searches(tmp_path_factory):
    """Two searches in one in-process Ray session: focal with ASHA (grace period 1, rungs at 1 and
    3 of 6 epochs: ASHA stops trials here), and an ldam-drw space whose every trial diverges."""
    from bkdbench.orchestrate.ray_session import ray_session
    from bkdbench.orchestrate.sweep import run_search

    results = tmp_path_factory.mktemp("ray-searches") / "results"
    results.mkdir(parents=True)
    diverge_file = results.parent / "diverge.yaml"
    diverge_file.write_text("method: ldam-drw\ndescription: a cosine scale so large that training diverges\n"
                            "params:\n  s: {type: float, low: 1.0e+29, high: 1.0e+30, log: true}\n")
    ray_tmp = ray_tmpdir()
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("RAY_TMPDIR", ray_tmp)
        mp.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # ray_session sets these two for good:
        mp.setenv("RAY_AIR_NEW_OUTPUT", "0")  # set here, they are restored after the module
        try:
            with ray_session(None, log_file=results / "ray.log"):
                for key, method, space_file, scheduler, epochs, trials in (
                        ("asha", "focal", None, "asha", ASHA_EPOCHS, 8),
                        ("diverge", "ldam-drw", str(diverge_file), "none", 2, 2)):
                    space, file = load_space(method, space_file)
                    base = make_spec("digits", 10, method, epochs=epochs, params=space.fixed)
                    cfg = SweepConfig(method=method, dataset="digits", imbalance=10.0, space_file=str(file),
                                      space_hash=space_hash(file), sampler="random", scheduler=scheduler,
                                      epochs=epochs)
                    events = []
                    error = None
                    try:
                        run_search(cfg, space, base, results, trials=trials, concurrency=2,
                                   on_event=lambda kind, key, metrics, ev=events: ev.append((kind, key, dict(metrics))))
                    except Exception as exc:  # noqa: BLE001 (the test decides what is acceptable)
                        error = exc
                    study = optuna.load_study(study_name=cfg.sweep_id,
                                              storage=study_storage(results / "sweeps" / cfg.sweep_id))
                    out[key] = SimpleNamespace(study=study, events=events, error=error, base=base, cfg=cfg)
        finally:
            sweep_mod.set_listener(None)
            cleanup_ray_tmp(ray_tmp)
    return out


def _ray_trials(events):
    """Ray trial id → (last epoch reported, sampled params) from the 'complete' events."""
    done = {}
    for kind, trial_id, metrics in events:
        if kind == "complete":
            config = {k: v for k, v in metrics.get("config", {}).items() if not k.startswith("_")}
            done[trial_id] = (metrics.get("epoch"), config)
    return done


def _optuna_trial_for(study, params):
    matches = [t for t in study.trials if t.params == params]
    assert len(matches) == 1, (params, [t.params for t in study.trials])
    return matches[0]


def test_asha_stops_trials_in_this_setting(ray_searches):
    asha = ray_searches["asha"]
    assert asha.error is None, asha.error
    assert grace_period(asha.base) == 1
    ray_trials = _ray_trials(asha.events)
    assert len(ray_trials) == 8
    stopped = [t for t, (epoch, _) in ray_trials.items() if epoch < ASHA_EPOCHS - 1]
    assert stopped, "ASHA stopped no trial: the PRUNED check below would prove nothing"
    assert len(asha.study.trials) == 8
    assert not any(t.state == TrialState.RUNNING for t in asha.study.trials)


def test_asha_stopped_trials_are_pruned_in_study_through_ray(ray_searches):
    asha = ray_searches["asha"]
    ray_trials = _ray_trials(asha.events)
    if not any(epoch < ASHA_EPOCHS - 1 for epoch, _ in ray_trials.values()):
        pytest.skip("ASHA stopped nothing this time")
    for trial_id, (epoch, params) in ray_trials.items():
        trial = _optuna_trial_for(asha.study, params)
        if epoch < ASHA_EPOCHS - 1:
            assert trial.state == TrialState.PRUNED, (trial_id, epoch, trial.state, trial.value)
        else:
            assert trial.state == TrialState.COMPLETE, (trial_id, epoch, trial.state)
    assert counted_trials(asha.study) == 8


def test_diverged_search_trial_is_fail_and_the_sweep_goes_on(ray_searches):
    diverge = ray_searches["diverge"]
    assert diverge.error is None, repr(diverge.error)[:500]
    assert [t.state for t in diverge.study.trials] == [TrialState.FAIL, TrialState.FAIL]


# --------------------------------------------------------------------------------------------
# 4. The objective never reads the test split
# --------------------------------------------------------------------------------------------

POISON_N = 7  # a test-split size no other split has, so a spy can tell it apart


def _poison_test_split(monkeypatch):
    """load_longtail as train.py sees it, with a test split that records every access and whose
    labels (-1) make any evaluation on it crash."""
    import bkdbench.train as train_mod

    real = train_mod.load_longtail
    touched = []

    class Poisoned:
        def __init__(self, data):
            self._data = data

        def __getattr__(self, name):
            if name == "test_x":
                touched.append(name)
                return np.full((POISON_N, *self._data.test_x.shape[1:]), 255, dtype=self._data.test_x.dtype)
            if name == "test_y":
                touched.append(name)
                return np.full(POISON_N, -1, dtype=np.int64)
            return getattr(self._data, name)

    monkeypatch.setattr(train_mod, "load_longtail", lambda *a, **k: Poisoned(real(*a, **k)))
    return touched


def _spy(monkeypatch, module, name, log, size):
    real = getattr(module, name)

    def spy(*args, **kwargs):
        log.append(size(*args))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def test_objective_never_reads_test_split(monkeypatch, tmp_path):
    import torch

    import bkdbench.orchestrate.execute as execute
    import bkdbench.train as train_mod
    from bkdbench.data import load_longtail
    from ray import tune

    epochs = 3
    base = make_spec("digits", 10, "bkd", epochs=epochs)
    teacher_state = train_mod.build_model(base.teacher, 10, 1, "linear", torch.device("cpu")).state_dict()
    monkeypatch.setattr(execute, "teacher_state_for", lambda spec, results: teacher_state)
    touched = _poison_test_split(monkeypatch)
    predicted, scored = [], []
    _spy(monkeypatch, train_mod, "predict", predicted, lambda model, images, *a: len(images))
    _spy(monkeypatch, train_mod, "classification_metrics", scored, lambda logits, targets, *a: len(targets))
    reports = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(dict(metrics)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    threads = torch.get_num_threads()
    try:
        sweep_mod.search_trial({"_cpus": 1, "alpha": 2.5, "temperature": 4.0}, base=base.canonical_json(),
                               results=str(tmp_path))
    finally:
        torch.set_num_threads(threads)

    val_size = len(load_longtail("digits", 10).val_y)
    assert val_size != POISON_N
    assert touched == []  # the test arrays were not even read, let alone evaluated
    assert predicted == [val_size] * epochs and scored == [val_size] * epochs
    assert [r["epoch"] for r in reports] == list(range(epochs))
    assert all(isinstance(r[METRIC], float) and 0 <= r[METRIC] <= 100 for r in reports)
    assert not any(k.startswith("test") for r in reports for k in r)
    assert [r.get(FINISHED, False) for r in reports] == [False] * (epochs - 1) + [True]

    # The poison works: a run that does evaluate the test split touches it and crashes.
    with pytest.raises((RuntimeError, IndexError, ValueError)):
        train_mod.train(base.model_copy(update={"epochs": 1}), teacher_state=teacher_state, evaluate_test=True)
    assert "test_x" in touched and "test_y" in touched
    assert POISON_N in predicted


def test_search_trial_applies_the_sampled_parameters(monkeypatch, tmp_path):
    """The sampled values reach the method (validated, on top of the base spec's fixed ones)."""
    import bkdbench.train as train_mod
    from ray import tune

    seen = []
    real_build = train_mod.build_method

    def build(name, counts, epochs, **params):
        seen.append(params)
        return real_build(name, counts, epochs=epochs, **params)

    monkeypatch.setattr(train_mod, "build_method", build)
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: None)
    base = make_spec("digits", 10, "focal", epochs=1, params={"gamma": 1.0})
    import torch

    threads = torch.get_num_threads()
    try:
        sweep_mod.search_trial({"_cpus": 1, "gamma": 3.25}, base=base.canonical_json(), results=str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    assert seen and seen[0]["gamma"] == 3.25


# --------------------------------------------------------------------------------------------
# The sweep id: same search, same id
# --------------------------------------------------------------------------------------------

def _sweep_id_of(monkeypatch, tmp_path, *args) -> str:
    """The sweep id `bkdbench sweep` computes for ``args``, caught where it first opens the study."""
    from typer.testing import CliRunner

    class Caught(Exception):
        pass

    def open_study(sweep_id, folder, storage_url=None):
        raise Caught(sweep_id)

    monkeypatch.setattr(sweep_mod, "open_study", open_study)
    result = CliRunner().invoke(_cli_app(), ["sweep", *map(str, args), "--results", str(tmp_path / "results")])
    assert isinstance(result.exception, Caught), result.output
    return str(result.exception)


def test_sweep_id_ignores_the_trial_count(monkeypatch, tmp_path):
    a = _sweep_id_of(monkeypatch, tmp_path, "bkd", "--trials", "4", "--epochs", "6")
    b = _sweep_id_of(monkeypatch, tmp_path, "bkd", "--trials", "40", "--epochs", "6", "--concurrency", "1")
    c = _sweep_id_of(monkeypatch, tmp_path, "bkd", "--trials", "4", "--epochs", "7")
    d = _sweep_id_of(monkeypatch, tmp_path, "bkd", "--trials", "4", "--epochs", "6", "--sampler", "random")
    assert a == b and a.startswith("bkd-digits-if10-")
    assert len({a, c, d}) == 3


def test_sweep_id_does_not_depend_on_how_the_space_path_is_spelled(monkeypatch, tmp_path):
    space = tmp_path / "mine.yaml"
    space.write_text("method: bkd\nparams:\n  alpha: {type: float, low: 0.5, high: 2.0}\n")
    absolute = _sweep_id_of(monkeypatch, tmp_path, "bkd", "--space", space)
    monkeypatch.chdir(tmp_path)
    relative = _sweep_id_of(monkeypatch, tmp_path, "bkd", "--space", "mine.yaml")
    assert absolute == relative


# --------------------------------------------------------------------------------------------
# 5. Packed search trials (--pack K): K configurations per Ray trial, each its own Optuna trial
# --------------------------------------------------------------------------------------------

def test_packed_searcher_asks_k_configurations_and_tells_each_its_own_score(tmp_path):
    from bkdbench.orchestrate.packed_sweep import EPOCHS, PACK, VALUES, PackedOptunaSearch
    from ray.tune.search import Searcher

    storage = study_storage(tmp_path)
    searcher = PackedOptunaSearch(space=load_space("bkd")[0].optuna_space(), metric=METRIC, mode="max",
                                  sampler=optuna.samplers.RandomSampler(seed=0), study_name="p", storage=storage,
                                  pack=2, budget=5)
    packs = [searcher.suggest(t) for t in ("a", "b", "c")]
    assert [len(p[PACK]) for p in packs] == [2, 2, 1]  # exactly the budget: the last pack is smaller
    assert searcher.suggest("d") == Searcher.FINISHED
    assert searcher.suggest("a") == packs[0]  # asked once per Ray trial
    assert all(set(c) == {"alpha", "temperature"} for p in packs for c in p[PACK])
    searcher.on_trial_result("a", {VALUES: [40.0, None], "training_iteration": 1})
    searcher.on_trial_complete("a", {VALUES: [61.0, None], EPOCHS: [4, 2], FINISHED: True, "epoch": 3})
    searcher.on_trial_complete("b", {VALUES: [50.0, 55.0], "epoch": 1}, error=True)  # the whole trial crashed
    searcher.on_trial_complete("c", {VALUES: [70.0], EPOCHS: [4], FINISHED: True})
    searcher.on_trial_complete("c", {VALUES: [1.0], FINISHED: True})  # a second call changes nothing
    study = optuna.load_study(study_name="p", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                               TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].value == 61.0 and study.trials[4].value == 70.0
    assert study.trials[0].intermediate_values == {1: 40.0} and study.trials[1].intermediate_values == {}
    assert [t.user_attrs["epochs_trained"] for t in study.trials] == [4, 2, 2, 2, 4]
    assert [t.params for t in study.trials] == [c for p in packs for c in p[PACK]]


def test_packed_objective_never_reads_test_split(monkeypatch, tmp_path):
    """A pack of search configurations: validation only, each configuration's score reported apart."""
    import torch

    import bkdbench.orchestrate.execute as execute
    import bkdbench.packed as packed_mod
    import bkdbench.train as train_mod
    from bkdbench.data import load_longtail
    from bkdbench.orchestrate.packed_sweep import EPOCHS, PACK, VALUES, search_pack_trial
    from ray import tune

    epochs = 2
    base = make_spec("digits", 10, "bkd", epochs=epochs)
    teacher_state = train_mod.build_model(base.teacher, 10, 1, "linear", torch.device("cpu")).state_dict()
    monkeypatch.setattr(execute, "teacher_state_for", lambda spec, results: teacher_state)
    touched = _poison_test_split(monkeypatch)
    predicted, scored = [], []
    _spy(monkeypatch, packed_mod, "predict", predicted, lambda model, images, *a: len(images))
    _spy(monkeypatch, packed_mod, "classification_metrics", scored, lambda logits, targets, *a: len(targets))
    reports = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(dict(metrics)))
    pack = [{"alpha": 0.5, "temperature": 2.0}, {"alpha": 4.0, "temperature": 6.0}, {"alpha": 0.5, "temperature": 2.0}]
    threads = torch.get_num_threads()
    try:
        search_pack_trial({"_cpus": 1, PACK: pack}, base=base.canonical_json(), results=str(tmp_path))
    finally:
        torch.set_num_threads(threads)

    val_size = len(load_longtail("digits", 10).val_y)
    assert touched == [] and not any(k.startswith("test") for r in reports for k in r)
    assert predicted == [val_size] * epochs  # one forward of the pack per evaluation, on validation
    assert scored == [val_size] * 2 * epochs  # scored per distinct configuration (the repeat trains once)
    *per_epoch, final = reports
    assert [r["epoch"] for r in per_epoch] == list(range(epochs))
    for r in per_epoch + [final]:
        values = r[VALUES]
        assert len(values) == 3 and values[0] == values[2] and all(0 <= v <= 100 for v in values)
        assert r[METRIC] == max(values)
    assert final[FINISHED] and final[EPOCHS] == [epochs] * 3 and final[VALUES] == per_epoch[-1][VALUES]


@pytest.mark.slow
def test_packed_sweep_through_ray(tmp_path):
    """3 configurations in packs of 2: 2 Ray trials, 3 COMPLETE Optuna trials, one per configuration."""
    from bkdbench.orchestrate.ray_session import ray_session
    from bkdbench.orchestrate.sweep import run_search

    results = tmp_path / "results"
    results.mkdir()
    ray_tmp = ray_tmpdir()
    space, file = load_space("focal")
    base = make_spec("digits", 10, "focal", epochs=2, params=space.fixed)
    cfg = SweepConfig(method="focal", dataset="digits", imbalance=10.0, space_file=str(file),
                      space_hash=space_hash(file), sampler="random", scheduler="none", epochs=2)
    events = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("RAY_TMPDIR", ray_tmp)
        mp.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        mp.setenv("RAY_AIR_NEW_OUTPUT", "0")
        try:
            with ray_session(None, log_file=results / "ray.log"):
                study = run_search(cfg, space, base, results, trials=3, concurrency=2, pack=2,
                                   on_event=lambda kind, key, metrics: events.append((kind, key, metrics.get("status"))))
        finally:
            sweep_mod.set_listener(None)
            left = cleanup_ray_tmp(ray_tmp)
    study = load_study(results, cfg.sweep_id)
    _assert_numbering(study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert all(0 <= t.value <= 100 and t.user_attrs["epochs_trained"] == 2 for t in study.trials)
    assert len({t.params["gamma"] for t in study.trials}) == 3
    assert len([e for e in events if e[0] == "start"]) == 2  # two Ray trials ...
    assert sorted(e[2] for e in events if e[0] == "complete") == ["finished"] * 3  # ... three configurations
    assert not (results / "leaderboard").exists() or not list((results / "leaderboard").glob("*.parquet"))
    assert not left, f"Ray processes left behind: {left}"
    with pytest.raises(ValueError, match="early stopping"):  # ASHA cannot stop one student of a pack
        run_search(replace(cfg, scheduler="asha"), space, base, results, trials=4, concurrency=1, pack=2)


@pytest.mark.parametrize("args, message", [
    (["--pack", "0"], "--pack must be at least 1"),
    (["--pack", "2", "--scheduler", "asha"], "--scheduler asha"),
])
def test_bad_pack_options_exit_2_before_work(tmp_path, args, message):
    from typer.testing import CliRunner

    result = CliRunner().invoke(_cli_app(), ["sweep", "bkd", *args, "--results", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "r" / "sweeps").exists()
