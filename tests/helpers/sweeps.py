"""Sweeps: the Optuna study of a sweep, its numbering, and the set-up of the "a search trial never
reads the test split" tests (a poisoned test split, spies on what is predicted and scored)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna


def sweep_ids(results: Path) -> list[str]:
    return sorted(p.name for p in (Path(results) / "sweeps").glob("*") if p.is_dir())


def load_study(results: Path, sweep_id: str) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = Path(results) / "sweeps" / sweep_id / "study.journal"
    assert journal.is_file(), f"no study journal at {journal}"
    return optuna.load_study(study_name=sweep_id, storage=JournalStorage(JournalFileBackend(str(journal))))


def assert_numbering(trials) -> None:
    """Optuna trial numbers run 0, 1, 2, ... with no gap or repeat, each its own stored trial."""
    trials = trials.trials if isinstance(trials, optuna.Study) else trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers))), numbers
    assert len({t._trial_id for t in trials}) == len(numbers)


POISON_N = 7  # a test-split size no other split has, so a spy can tell it apart


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
