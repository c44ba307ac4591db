"""Packed search trials (``bkdbench sweep --pack K``): one Ray trial asks Optuna for K configurations,
trains them as one pack (``packed.train_packed``: one augmented batch and one teacher forward per step
for all K) and tells each its own validation score as its own Optuna trial.

The honesty rules of ``sweep`` hold: ``evaluate_test=False`` (the test split is never read), a
configuration that diverged is FAIL, only configurations that trained to the end are COMPLETE. No
scheduler runs over packs: ASHA decides on one number per Ray trial and would stop or keep all K
students together, whatever each one's own score.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import optuna
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ...specs import RunSpec
from .study import METRIC, optuna_step
from ..trial import FINISHED

PACK = "_pack"  # a packed trial's config: the K sampled parameter sets, in the order Optuna gave them
VALUES = "pack_val_top1"  # each configuration's validation top-1 (None: not evaluated, or diverged)
EPOCHS = "pack_epochs"  # epochs each configuration trained


class PackedOptunaSearch(OptunaSearch):
    """Each Ray trial gets ``pack`` Optuna trials (``study.ask``; the last trial fewer, so the study
    gets exactly ``budget``); each is told its own result."""

    def __init__(self, *args, pack: int, budget: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._pack_size, self._budget = pack, budget
        self._packs: dict[str, list[optuna.Trial]] = {}

    def suggest(self, trial_id: str) -> Optional[dict]:
        if trial_id not in self._packs:
            n = min(self._pack_size, self._budget)
            if n <= 0:
                return Searcher.FINISHED
            self._budget -= n
            self._packs[trial_id] = [self._ot_study.ask(fixed_distributions=self._space) for _ in range(n)]
        return {PACK: [dict(t.params) for t in self._packs[trial_id]]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials:
            return
        if result.get(FINISHED):  # the closing summary: its values were reported at their epoch
            return
        for trial, value in zip(self._packs.get(trial_id, []), result.get(VALUES) or []):
            if value is not None:  # intermediate values, for the history plot, at their epoch
                trial.report(value, optuna_step(result))

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._packs:
            return
        result = result or {}
        pack = self._packs[trial_id]
        values = list(result.get(VALUES) or []) + [None] * len(pack)
        epochs = list(result.get(EPOCHS) or [])
        finished = not error and bool(result.get(FINISHED))
        for i, trial in enumerate(pack):
            trained = epochs[i] if i < len(epochs) else (int(result["epoch"]) + 1 if "epoch" in result else None)
            if trained is not None:
                trial.set_user_attr("epochs_trained", int(trained))
            if finished and values[i] is not None:
                self._ot_study.tell(trial, values[i])
            else:  # diverged, or the whole trial failed: no score to tell
                self._ot_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)


def search_pack_trial(config: dict, *, base: str, results: str, data_dir: Optional[str] = None) -> None:
    """One packed search trial: the base spec with each sampled parameter set, validation only."""
    import torch

    from ...methods import validate_params
    from ...training.packed import PackedTrainingDiverged, train_packed
    from ..execute import teacher_state_for

    torch.set_num_threads(max(1, int(config.get("_cpus", 1))))
    spec = RunSpec.model_validate_json(base)
    configs: list[Optional[RunSpec]] = []
    for sampled in config[PACK]:
        try:
            configs.append(spec.model_copy(update={"params": validate_params(spec.method, **{**spec.params, **sampled})}))
        except ValueError:  # parameters the method refuses: that configuration fails, the others train
            configs.append(None)
    ids = [c.run_id if c is not None else None for c in configs]
    todo = list({c.run_id: c for c in configs if c is not None}.values())  # equal samples train once
    values: dict[str, Optional[float]] = {}
    trained_epochs: dict[str, int] = {}
    teacher_state = teacher_state_for(spec, results) if todo else None
    while todo:
        last_epoch = [-1]

        def report(metrics: list[dict], _make_checkpoint, members=tuple(todo)) -> None:
            by_id = {m.run_id: e for m, e in zip(members, metrics)}
            per_config = [by_id[r].get(METRIC) if r in by_id else None for r in ids]
            last_epoch[0] = metrics[0]["epoch"]
            tune.report(_summary(per_config, metrics))

        try:
            trained = train_packed(todo, teacher_state=teacher_state, report=report, evaluate_test=False,
                                   data_dir=Path(data_dir) if data_dir else None)
        except PackedTrainingDiverged as exc:  # those FAIL; the others train again without them
            for i in exc.students:
                values[todo[i].run_id], trained_epochs[todo[i].run_id] = None, last_epoch[0] + 2
            todo = [s for i, s in enumerate(todo) if i not in exc.students]
            continue
        for result in trained:
            values[result.spec.run_id] = result.metrics["val_top1"]
            trained_epochs[result.spec.run_id] = result.spec.epochs
        todo = []
    per_config = [values.get(r) for r in ids]
    scored = [v for v in per_config if v is not None]
    tune.report({METRIC: max(scored) if scored else None, "epoch": spec.epochs - 1, VALUES: per_config,
                 EPOCHS: [trained_epochs.get(r, 0) for r in ids], FINISHED: True})


def _summary(per_config: list, metrics: list[dict]) -> dict:
    """A pack's epoch as one Tune result: each configuration's score, the best of them as the metric
    Tune expects in every result, and the mean loss."""
    scored = [v for v in per_config if v is not None]
    losses = [m["train_loss"] for m in metrics if math.isfinite(m["train_loss"])]
    return {METRIC: max(scored) if scored else None, VALUES: per_config, "epoch": metrics[0]["epoch"],
            "train_loss": sum(losses) / len(losses) if losses else math.nan}


def per_config_events(on_event):
    """The live view counts Optuna trials: a packed trial's end is passed on once per configuration."""
    if on_event is None:
        return None

    def event(kind: str, key: str, metrics: dict) -> None:
        values = metrics.get(VALUES)
        if kind not in ("complete", "error") or not values:
            return on_event(kind, key, metrics)
        for i, value in enumerate(values):
            status = "finished" if kind == "complete" and value is not None and metrics.get(FINISHED) else "failed"
            on_event(kind, key if i == 0 else f"{key}#{i}", {**metrics, "status": status})

    return event
