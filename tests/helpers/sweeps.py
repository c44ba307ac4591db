"""Sweeps: the Optuna study of a sweep, its numbering, and the set-up of the "a search trial never
reads the test split" tests (a poisoned test split, spies on what is predicted and scored)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import optuna


def sweep_ids(results: Path) -> list[str]:
    return sorted(p.name for p in (Path(results) / "sweeps").glob("*") if p.is_dir())


def load_study(results: Path, sweep_id: str) -> optuna.Study:
    journal = Path(results) / "sweeps" / sweep_id / "study.journal"
    assert journal.is_file(), f"no study journal at {journal}"
    return open_journal(journal, sweep_id)


def open_journal(journal: Path, sweep_id: str) -> optuna.Study:
    """The study ``sweep_id`` in the journal file ``journal`` (read live)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=sweep_id, storage=JournalStorage(JournalFileBackend(str(journal))))


def assert_numbering(trials) -> None:
    """Optuna trial numbers run 0, 1, 2, ... with no gap or repeat, each its own stored trial."""
    trials = trials.trials if isinstance(trials, optuna.Study) else trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers))), numbers
    assert len({t._trial_id for t in trials}) == len(numbers)


POISON_N = 7  # a test-split size no other split has, so a spy can tell it apart


def stand_in_search(monkeypatch, *, finals: Optional[dict] = None, final_outcome: Optional[dict] = None) -> dict:
    """Ray, the search and the final runs stood in for, so that `bkdbench sweep` runs in process: the
    search adds one COMPLETE trial (gamma 1.5, validation 61 %) to the sweep's real study; the finals
    return ``finals`` (default: none) and report ``final_outcome`` (run id -> status, error) to the
    CLI. Returns what each was given: ``cfg`` and ``search_base``, then ``final_base``."""
    import contextlib

    from bkdbench.orchestrate import ray_session
    from bkdbench.orchestrate.sweeps import driver

    seen: dict = {}
    monkeypatch.setattr(ray_session, "ray_session", lambda *a, **k: contextlib.nullcontext({}))

    def search(cfg, space_def, base, root, **kwargs):
        seen.update(cfg=cfg, search_base=base)
        study = driver.open_study(cfg.sweep_id, driver.sweep_dir(root, cfg.sweep_id), None)
        study.add_trial(optuna.trial.create_trial(params={"gamma": 1.5}, value=61.0,
                                                  distributions={"gamma": optuna.distributions.FloatDistribution(0, 5)}))
        return study

    def run_finals(base, best_params, root, sweep_id, seeds, outcome=None, **kwargs):
        seen.update(final_base=base)
        if outcome is not None:
            outcome.update(final_outcome or {})
        return finals or {"tuned": [], "default": []}

    monkeypatch.setattr(driver, "run_search", search)
    monkeypatch.setattr(driver, "run_finals", run_finals)
    return seen


def poison_test_split(monkeypatch):
    """load_longtail as train.py sees it, with a test split that records every access and whose
    labels (-1) make any evaluation on it crash. Returns the list of accesses."""
    import bkdbench.training.train as train_mod

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


def spy_on(monkeypatch, module, name, log, size):
    """Replace ``module.name`` by a pass-through that appends ``size(*args)`` to ``log``."""
    real = getattr(module, name)

    def spy(*args, **kwargs):
        log.append(size(*args))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def watched_search(monkeypatch, module, epochs: int):
    """Set-up of the "a search trial never reads the test split" tests: a BKD digits spec whose teacher
    is a fresh linear model (no teacher training), a poisoned test split, spies on ``module``'s
    ``predict`` and ``classification_metrics`` (the sizes they saw) and ``tune.report`` captured."""
    import torch
    from ray import tune

    import bkdbench.orchestrate.execute as execute
    import bkdbench.training.train as train_mod
    from bkdbench.specs import make_spec

    base = make_spec("digits", 10, "bkd", epochs=epochs)
    teacher_state = train_mod.build_model(base.teacher, 10, 1, "linear", torch.device("cpu")).state_dict()
    monkeypatch.setattr(execute, "teacher_state_for", lambda spec, results: teacher_state)
    watch = SimpleNamespace(base=base, teacher_state=teacher_state, touched=poison_test_split(monkeypatch),
                            predicted=[], scored=[], reports=[])
    spy_on(monkeypatch, module, "predict", watch.predicted, lambda model, images, *a: len(images))
    spy_on(monkeypatch, module, "classification_metrics", watch.scored, lambda logits, targets, *a: len(targets))
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: watch.reports.append(dict(metrics)))
    return watch


# --- A SIGKILLed sweep, resumed (on a folder or an object store) ---------------------------------

def stored_study(results: str, sweep_id: str, into: Path) -> optuna.Study:
    """A snapshot of the study as the results storage (a folder or a URI) holds it: its journal is
    copied to the folder ``into`` and opened there."""
    from bkdbench.storage import Location

    into.mkdir(parents=True, exist_ok=True)
    copy = into / f"{sweep_id}-{len(list(into.iterdir()))}.journal"
    copy.write_bytes((Location(results) / "sweeps" / sweep_id / "study.journal").read_bytes())
    return open_journal(copy, sweep_id)


def check_sigkilled_sweep_resumes(results: str, tmp_path: Path, *, trials: int = 4) -> str:
    """SIGKILL a `bkdbench sweep` driver (no handler runs: the journal and Tune's state are as the
    kill left them) once the stored study has a finished trial and a running one, kill the Ray
    processes it started like an operator would, then --resume with an empty bkdbench cache (as on
    another machine: only what the storage holds counts). The study counts exactly ``trials``
    trials, those running at the kill are FAIL with their parameters, finished ones are kept with
    their values, numbering runs on, and the final run is in the leaderboard once. Returns the
    sweep id."""
    from optuna.trial import TrialState

    from bkdbench.leaderboard.store import read_rows
    from bkdbench.orchestrate.sweeps.study import counted_trials
    from bkdbench.storage import Location
    from helpers.cli import cli_env, kill_group, run_cli, start_cli
    from helpers.processes import cleanup_ray_tmp, kill_pids, ray_processes, wait_for
    from helpers.ray_tmp import ray_tmpdir

    args = ["sweep", "focal", "--dataset", "digits", "--imbalance", "10", "--trials", str(trials), "--concurrency",
            "2", "--epochs", "4", "--final-seeds", "1", "--scheduler", "none", "--results", results]
    snapshots, sweeps = tmp_path / "snapshots", Location(results) / "sweeps"
    ray_tmp = ray_tmpdir()
    env = cli_env(ray_tmp, BKDBENCH_CACHE=tmp_path / "cache-killed")
    driver = start_cli(args, tmp_path / "killed.out", env=env)
    try:
        def finished_and_running():
            for sweep_id in sweeps.list():
                try:
                    states = [t.state for t in stored_study(results, sweep_id, snapshots).trials]
                except (KeyError, FileNotFoundError, ValueError):
                    return False
                return TrialState.COMPLETE in states and TrialState.RUNNING in states and sweep_id
            return False

        sweep_id = wait_for(finished_and_running, timeout=240, every=0.2,
                            what=lambda: f"a finished and a running trial:\n{(tmp_path / 'killed.out').read_text()}")
        kill_group(driver)  # SIGKILL: the driver and what it started in its session
        driver.wait(timeout=30)
        kill_pids(ray_processes(ray_tmp, driver.pid))  # its orphaned Ray daemons, by PID
        interrupted = stored_study(results, sweep_id, snapshots).trials
        running = [t.number for t in interrupted if t.state == TrialState.RUNNING]
        assert running and any(t.state == TrialState.COMPLETE for t in interrupted)
        env["BKDBENCH_CACHE"] = str(tmp_path / "cache-resumed")
        resumed = run_cli([*args, "--resume"], env=env, timeout=400)
        assert resumed.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:])
        study = stored_study(results, sweep_id, snapshots)
        assert counted_trials(study) == trials
        assert_numbering(study.trials)
        for number in running:
            assert study.trials[number].state == TrialState.FAIL
            assert study.trials[number].params == interrupted[number].params
        for t in interrupted:
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                assert study.trials[t.number].state == t.state and study.trials[t.number].value == t.value
        rows, bad = read_rows(Location(results) / "leaderboard")
        finals = rows[rows.sweep_id == sweep_id]  # the final run (--final-seeds 1), trained once
        assert bad == [] and len(finals) == finals.run_id.nunique() == 1 and set(finals.status) == {"finished"}
    finally:
        kill_group(driver)
        left = cleanup_ray_tmp(ray_tmp, driver.pid)
    assert not left, f"Ray processes left behind: {left}"
    return sweep_id
