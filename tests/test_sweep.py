"""`bkdbench sweep`: Optuna on Ray Tune, end to end on digits (real Ray, real Optuna, the console
script in a subprocess), resume/extend, proof that a search trial never reads the test split, and
the sweep id. ASHA pruning is in test_sweep_pruning.py, packed search trials in test_sweep_packed.py.

Every Ray started here gets a private RAY_TMPDIR (see helpers.ray_tmp): its processes name that
folder on their command line, so the tests find (and, if left behind, kill) exactly their own Ray
processes by PID while other test runs use Ray on the same machine."""
from __future__ import annotations

import json
import os
import signal
import time
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from bkdbench.leaderboard.store import read_rows
from bkdbench.orchestrate.sweeps import driver as sweep_mod
from bkdbench.orchestrate.trial import FINISHED
from bkdbench.orchestrate.sweeps.study import METRIC, counted_trials, mark_interrupted_trials, study_storage
from bkdbench.paths import leaderboard_dir
from bkdbench.specs.search_spaces import load_space
from bkdbench.specs import make_spec

from helpers.cli import cli_app, cli_env, run_cli, start_cli
from helpers.files import is_png
from helpers.processes import cleanup_ray_tmp, pids_matching, ray_processes, wait_gone
from helpers.ray_tmp import ray_tmpdir
from helpers.sweeps import POISON_N, assert_numbering, check_sigkilled_sweep_resumes, load_study, sweep_ids, watched_search

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
        proc = run_cli([*TINY, "--results", results], env=env, timeout=400)
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


@pytest.mark.slow
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
    # the first trial is BKD's defaults (through Ray Tune's searcher), the others the sampler's
    assert study.trials[0].params == {"alpha": 1.0, "temperature": 2.0} and study.trials[0].user_attrs["defaults"]
    assert not any(t.user_attrs.get("defaults") for t in study.trials[1:])

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


@pytest.mark.slow
def test_sweep_report_reprints_the_sweep(tiny_sweep, monkeypatch):
    """`bkdbench sweep report ID` (in-process: the console script itself ran in the fixture)."""
    from typer.testing import CliRunner

    for name in ("val-accuracy.png", "history.png", "importances.png"):
        (tiny_sweep.folder / name).unlink()
    monkeypatch.setenv("COLUMNS", "220")
    result = CliRunner().invoke(cli_app("sweep"), ["sweep", "report", tiny_sweep.sweep_id, "--results", str(tiny_sweep.results)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())  # rich wraps titles to the table's width
    assert f"sweep {tiny_sweep.sweep_id}: top trials by balanced validation top-1" in out
    assert "trials: 6 complete" in out
    assert "alpha" in out and "temperature" in out
    assert "tuned" in out and "default" in out
    assert "validation noise (100 images): the best scored" in out  # digits IF 10: 10 classes × 10 images
    assert "0 (defaults)" in out  # trial 0 is BKD's defaults; the table shows the top 10 of the 6 trials
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


@pytest.mark.slow
def test_resume_continues_numbering(tmp_path):
    results = tmp_path / "results"
    ray_tmp = ray_tmpdir()
    env = cli_env(ray_tmp)
    raylets_before = pids_matching("raylet")
    out_log, err_log = tmp_path / "interrupted.out", tmp_path / "interrupted.err"
    driver = None
    try:
        driver = start_cli(_sweep_args(results, TARGET), out_log, env=env, stderr=err_log)
        deadline = time.monotonic() + 240
        while True:  # wait until the study holds at least 2 trials, then Ctrl-C the driver
            assert driver.poll() is None, \
                f"the sweep ended before the interrupt: {(out_log.read_text(), err_log.read_text())}"
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
        driver.wait(timeout=180)
        out, err = out_log.read_text(), err_log.read_text()
        assert driver.returncode == 130, (out[-2000:], err[-2000:])
        assert "--resume" in err
        left = wait_gone(lambda: ray_processes(ray_tmp, driver.pid))
        assert not left, f"Ray processes outlived the interrupted driver: {left}"

        interrupted = load_study(results, sweep_id).trials  # a snapshot (the Study object reads live)
        assert_numbering(interrupted)
        running = [t.number for t in interrupted if t.state == TrialState.RUNNING]
        assert running, "no trial was running at the interrupt"
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in interrupted) < TARGET
        assert not (results / "sweeps" / sweep_id / "sweep.json").exists()

        # The same command without --resume refuses, before starting anything (in-process: the
        # console script's exit paths are exercised above and below).
        from typer.testing import CliRunner

        again = CliRunner().invoke(cli_app("sweep"), _sweep_args(results, TARGET))
        assert again.exit_code == 2, again.output
        again_out = " ".join(again.output.split())
        assert "--resume" in again_out and sweep_id in again_out and "already exists" in again_out
        assert len(load_study(results, sweep_id).trials) == len(interrupted)

        resumed = run_cli([*_sweep_args(results, TARGET), "--resume"], env=env, timeout=400)
        assert resumed.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:])
        study = load_study(results, sweep_id)
        assert counted_trials(study) == TARGET
        study = study.trials
        assert_numbering(study)
        assert not any(t.state == TrialState.RUNNING for t in study)
        for number in running:  # not lost, not counted: FAIL, with the parameters they were given
            assert study[number].state == TrialState.FAIL, (number, study[number].state)
            assert study[number].params == interrupted[number].params
        for t in interrupted:  # what was finished before the interrupt is kept as it was
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                assert study[t.number].state == t.state and study[t.number].value == t.value
        assert len(study) == TARGET + len(running)
        # the resumed sampler proposes new configurations: seeded as the first driver's, TPE's random
        # start-up proposed the interrupted driver's ones again and they trained twice
        assert len({json.dumps(t.params, sort_keys=True) for t in study}) == len(study), [t.params for t in study]
        assert json.loads((results / "sweeps" / sweep_id / "sweep.json").read_text())["trials"] == TARGET

        # A finished sweep: more --trials with --resume extends it, numbering on.
        extended = run_cli([*_sweep_args(results, TARGET + 1), "--resume"], env=env, timeout=400)
        assert extended.returncode == 0, (extended.stdout[-3000:], extended.stderr[-3000:])
        grown = load_study(results, sweep_id)
        assert_numbering(grown)
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
    assert not (pids_matching("raylet") - raylets_before) & ray_processes(ray_tmp, session)


@pytest.mark.slow
def test_sigkilled_sweep_driver_resumes(tmp_path):
    """SIGKILL, then --resume (helpers.sweeps; the S3 and GCS variants are in test_storage*.py)."""
    check_sigkilled_sweep_resumes(str(tmp_path / "results"), tmp_path)


def test_mark_interrupted_trials_fails_running_ones_and_numbering_goes_on(tmp_path):
    study = optuna.create_study(study_name="s", storage=study_storage(tmp_path), direction="maximize")
    done, stale = study.ask(), study.ask()
    study.tell(done, 70.0)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    assert mark_interrupted_trials(study) == 1
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]
    assert counted_trials(study) == 2
    assert study.ask().number == 3
    assert mark_interrupted_trials(study) == 1  # the one just asked; nothing else changes
    assert [t.state for t in study.trials][:3] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]


# --------------------------------------------------------------------------------------------
# 4. The objective never reads the test split
# --------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")  # the trial sets its thread count from the config
def test_objective_never_reads_test_split(monkeypatch, tmp_path):
    import bkdbench.training.train as train_mod
    from bkdbench.data import load_longtail
    from ray import tune

    epochs = 3
    w = watched_search(monkeypatch, train_mod, epochs)
    base, touched, predicted, scored, reports = w.base, w.touched, w.predicted, w.scored, w.reports
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    sweep_mod.search_trial({"_cpus": 1, "alpha": 2.5, "temperature": 4.0}, base=base.canonical_json(),
                           results=str(tmp_path))

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
        train_mod.train(base.model_copy(update={"epochs": 1}), teacher_state=w.teacher_state, evaluate_test=True)
    assert "test_x" in touched and "test_y" in touched
    assert POISON_N in predicted


@pytest.mark.usefixtures("one_thread")  # the trial sets its thread count from the config
def test_search_trial_applies_the_sampled_parameters(monkeypatch, tmp_path):
    """The sampled values reach the method (validated, on top of the base spec's fixed ones)."""
    import bkdbench.training.train as train_mod
    from ray import tune

    seen = []
    real_build = train_mod.build_method

    def build(name, counts, epochs, **params):
        seen.append(params)
        return real_build(name, counts, epochs=epochs, **params)

    monkeypatch.setattr(train_mod, "build_method", build)
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: None)
    base = make_spec("digits", 10, "focal", epochs=1, params={"gamma": 1.0})
    sweep_mod.search_trial({"_cpus": 1, "gamma": 3.25}, base=base.canonical_json(), results=str(tmp_path))
    assert seen and seen[0]["gamma"] == 3.25


# --------------------------------------------------------------------------------------------
# The sweep id: same search, same id
# --------------------------------------------------------------------------------------------

def _sweep_id_of(monkeypatch, tmp_path, *args) -> str:
    """The sweep id `bkdbench sweep` computes for ``args``, caught where it first names the sweep's folder."""
    from typer.testing import CliRunner

    class Caught(Exception):
        pass

    def sweep_dir(root, sweep_id):
        raise Caught(sweep_id)

    monkeypatch.setattr(sweep_mod, "sweep_dir", sweep_dir)
    result = CliRunner().invoke(cli_app("sweep"), ["sweep", *map(str, args), "--results", str(tmp_path / "results")])
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


def test_a_resumed_sampler_is_reseeded_and_a_first_one_is_not():
    from bkdbench.orchestrate.sweeps.study import make_sampler

    def first_four(sampler):
        study = optuna.create_study(sampler=sampler)
        return [study.ask({"a": optuna.distributions.FloatDistribution(0, 1)}).params["a"] for _ in range(4)]

    for name in ("tpe", "random"):
        assert first_four(make_sampler(name, 7)) == first_four(optuna.samplers.RandomSampler(seed=7))  # TPE starts at random
        assert first_four(make_sampler(name, 7, resumed=0)) == first_four(make_sampler(name, 7))
        resumed = first_four(make_sampler(name, 7, resumed=4))
        assert not set(resumed) & set(first_four(make_sampler(name, 7)))
        assert resumed == first_four(make_sampler(name, 7, resumed=4))  # still deterministic
        assert resumed != first_four(make_sampler(name, 7, resumed=5))


def test_a_new_study_tries_the_defaults_inside_the_space_first_and_a_resumed_one_does_not():
    from bkdbench.orchestrate.sweeps.study import DEFAULTS, enqueue_defaults

    space = {"alpha": optuna.distributions.FloatDistribution(0.1, 10.0, log=True),
             "temperature": optuna.distributions.FloatDistribution(3.0, 10.0),  # BKD's T = 2 lies outside
             "beta": optuna.distributions.CategoricalDistribution([0.99, 0.999])}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    enqueued = enqueue_defaults(study, space, {"alpha": 1.0, "temperature": 2.0, "beta": 0.9999, "cb_start": 0.8})
    assert enqueued == {"alpha": 1.0}  # T and beta outside the space, cb_start not searched
    first = study.ask(fixed_distributions=space)
    assert first.params["alpha"] == 1.0 and 3.0 <= first.params["temperature"] <= 10.0
    assert first.params["beta"] in (0.99, 0.999) and study.trials[0].user_attrs[DEFAULTS]
    study.tell(first, 50.0)
    assert enqueue_defaults(study, space, {"alpha": 1.0}) == {}  # a study with trials is left as it is
    second = study.ask(fixed_distributions=space)
    assert second.params["alpha"] != 1.0 and DEFAULTS not in study.trials[1].user_attrs
