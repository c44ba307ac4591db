"""Helpers for the sweep tests: the console script in a subprocess with its own Ray temp folder,
the Optuna study of a sweep, and clean-up of Ray processes by PID."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BKDBENCH = str(Path(sys.executable).parent / "bkdbench")


def ray_tmpdir() -> str:
    """A short, private RAY_TMPDIR (Unix socket paths are limited to ~107 bytes). Ray started with it
    keeps its session files apart from other test runs', and every one of its processes (gcs_server,
    raylet, workers) names this folder on its command line, so ours can be found by PID."""
    return tempfile.mkdtemp(prefix="bkr", dir="/tmp")


def cli_env(ray_tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BKDBENCH_RESULTS")}
    env.update(RAY_TMPDIR=ray_tmp, COLUMNS="220", PYTHONUNBUFFERED="1")
    return env


def run_cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([BKDBENCH, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def sweep_ids(results: Path) -> list[str]:
    return sorted(p.name for p in (Path(results) / "sweeps").glob("*") if p.is_dir())


def load_study(results: Path, sweep_id: str) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = Path(results) / "sweeps" / sweep_id / "study.journal"
    assert journal.is_file(), f"no study journal at {journal}"
    return optuna.load_study(study_name=sweep_id, storage=JournalStorage(JournalFileBackend(str(journal))))


def pgrep(pattern: str) -> set[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()} - {os.getpid()}


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def ray_processes(ray_tmp: str, session: int | None = None) -> set[int]:
    """Live Ray processes that belong to us: their command line names our RAY_TMPDIR, or they run
    in the session of the driver we started (start_new_session=True)."""
    ours = pgrep(ray_tmp)
    if session is not None:
        ours |= {p for p in pgrep("raylet|gcs_server|ray::|default_worker|dashboard") if session_of(p) == session}
    return {p for p in ours if _alive(p)}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids_fn, timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    left = pids_fn()
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = pids_fn()
    return left


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def cleanup_ray_tmp(ray_tmp: str, session: int | None = None) -> set[int]:
    """Kill (by PID) whatever Ray processes of ours are still alive; returns the ones that were."""
    left = ray_processes(ray_tmp, session)
    kill_pids(left)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return left


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def cli_app():
    """A Typer app holding only `bkdbench sweep`, for in-process CLI tests."""
    import typer

    from bkdbench.cli import sweep as cli_sweep

    app = typer.Typer()
    app.callback()(lambda: None)  # keep `sweep` a subcommand
    cli_sweep.register(app)
    return app


POISON_N = 7  # a test-split size no other split has, so a spy can tell it apart


def poison_test_split(monkeypatch):
    """load_longtail as train.py sees it, with a test split that records every access and whose
    labels (-1) make any evaluation on it crash."""
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
    real = getattr(module, name)

    def spy(*args, **kwargs):
        log.append(size(*args))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def assert_numbering(trials) -> None:
    """Optuna trial numbers run 0, 1, 2, ... with no gap or repeat, each its own stored trial."""
    trials = trials.trials if isinstance(trials, optuna.Study) else trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers))), numbers
    assert len({t._trial_id for t in trials}) == len(numbers)


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
