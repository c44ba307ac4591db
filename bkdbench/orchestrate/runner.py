"""Run a list of RunSpecs as Ray Tune trials: teachers first, then their students.

Stage 1 trains the teachers the students need and that are not cached yet (a suite's CE runs
double as teachers: same spec, same run id), and beside them every run that needs no teacher
trained now; the last stage trains the students (a teacher's own teacher adds a stage before). Runs already finished in the
leaderboard are skipped unless ``force``. Each stage is one Tune experiment under
``<results>/experiments/<name>/{teachers,runs}`` that ``resume=True`` restores (``Tuner.restore``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ray import tune

from ..leaderboard.store import finished_run_ids
from ..paths import experiments_dir, leaderboard_dir, teachers_dir
from ..specs import RunSpec
from ..storage import Location
from ..training.teachers import teacher_path
from .packs import pack_units, per_run_events, per_run_outcome
from .trial import FINISHED, KEEP_CHECKPOINTS, train_trial

Event = Callable[[str, str, dict], None]  # (kind: start|result|complete|error, run_id, metrics)


RUN_IDS = "bkdbench-run-ids.json"  # the runs an experiment was created for


def _restorable(path: Location, todo: list[str], known: dict) -> bool:
    """Restore an interrupted experiment only if it holds every run still to do and no run this
    invocation does not know (e.g. a resume with narrower filters): otherwise its restored trials
    would skip or leave out runs. A fresh experiment loses only unfinished trials' checkpoints."""
    try:
        stored = set(json.loads((path / RUN_IDS).read_text()))
    except (OSError, ValueError):
        return False
    return set(todo) <= stored and stored <= set(known)


def _checkpoint_lost(result) -> bool:
    return result.error is not None and "does not exist on storage anymore" in str(result.error)


class Interrupted(RuntimeError):
    """The experiment stopped before every trial finished (Ctrl-C, or the driver was stopped)."""


@dataclass
class Plan:
    specs: list[RunSpec]
    skipped: list[RunSpec]
    stages: list[list[RunSpec]] = field(default_factory=list)
    stage_names: list[str] = field(default_factory=list)  # "teachers", "runs": stable across resumes
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage, filled by run_plan
    trials: int = 0  # Ray trials run_plan made of the stages (fewer than runs when packed)

    def all_specs(self) -> dict[str, str]:
        """Every spec this plan knows (finished ones and teachers too), by run id: a restored
        experiment may hold trials of runs that have finished since."""
        known = {s.run_id: s for s in self.specs}
        known.update({t.run_id: t for s in self.specs for t in s.prerequisites})
        return {k: v.canonical_json() for k, v in known.items()}

    @property
    def todo(self) -> int:
        return sum(len(s) for s in self.stages)


def plan_runs(specs: list[RunSpec], results: "Location | str", force: bool = False) -> Plan:
    done = set() if force else finished_run_ids(leaderboard_dir(results))
    unique = list({s.run_id: s for s in specs}.values())
    todo = [s for s in unique if s.run_id not in done]
    skipped = [s for s in unique if s.run_id in done]
    todo_ids = {s.run_id for s in todo}
    teachers: dict[str, RunSpec] = {}
    level: dict[str, int] = {}  # 0: needs no teacher trained now; n: after the teachers of level n - 1

    def visit(spec: RunSpec) -> None:
        for t in spec.all_teachers:
            if t.run_id in todo_ids or not teacher_path(teachers_dir(results), t).exists():
                visit(t)  # a teacher's own teacher (SSD-LT's stage I before stage II) comes first
                teachers.setdefault(t.run_id, t)
                level[t.run_id] = 1 + max((level[u.run_id] for u in t.all_teachers if u.run_id in teachers), default=-1)

    for s in todo:
        visit(s)
    depth = max(level.values(), default=-1) + 1  # stages of teachers
    stages: list[list[RunSpec]] = [[t for t in teachers.values() if level[t.run_id] == n] for n in range(depth)]
    stages.append([])  # "runs"
    for s in todo:
        if s.run_id not in teachers:
            # As early as its teachers allow: a run that needs none trains beside the first teachers
            # (and may share their packed trials) instead of waiting for them.
            pending = [level[t.run_id] for t in s.all_teachers if t.run_id in teachers]
            stages[min(depth, 1 + max(pending, default=-1))].append(s)
    names = ["teachers" if n == 0 else f"teachers-{n + 1}" for n in range(depth)] + ["runs"]
    named = [(name, st) for name, st in zip(names, stages) if st]
    return Plan(specs=unique, skipped=skipped, stages=[st for _, st in named], stage_names=[n for n, _ in named])


_listener: Optional[Event] = None  # the current driver's event sink; never pickled into Tune's state


def set_listener(on_event: Optional[Event]) -> None:
    """Where ``_Events`` sends this driver's trial events (the CLI's live view)."""
    global _listener
    _listener = on_event


class _StopOnStorageError(tune.Stopper):
    """Stops the whole experiment once a trial reports that the storage failed (disk full,
    read-only, gone): every other trial would fail the same way, and retries only burn time."""

    def __init__(self):
        self.failed = False

    def __call__(self, trial_id, result) -> bool:
        self.failed = self.failed or result.get("status") == "storage-error"
        return self.failed

    def stop_all(self) -> bool:
        return self.failed


class _Events(tune.Callback):
    """Forwards Tune's trial events to the caller (the CLI's live view). Tune pickles its callbacks
    into the experiment state (and restores them on resume), so this holds no reference to the
    listener itself: it looks the module-level one up at call time."""

    def on_event(self, kind: str, run_id: str, metrics: dict) -> None:
        if _listener is not None:
            _listener(kind, run_id, metrics)

    @staticmethod
    def _key(trial) -> str:
        return trial.config.get("run_id") or trial.trial_id  # search trials have no run id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.on_event("start", self._key(trial), {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.on_event("result", self._key(trial), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.on_event("complete", self._key(trial), trial.last_result or {})

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_event("error", self._key(trial), trial.last_result or {})


def run_plan(
    plan: Plan,
    results: "Location | str",
    *,
    name: str,
    tags: dict,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    resume: bool = False,
    force: bool = False,
    max_failures: int = 2,
    checkpoint_every: Optional[int] = None,
    data_dir: Optional[Path] = None,
    on_event: Optional[Event] = None,
    pack: int = 1,
    workers: int = 1,
    pack_students_only: bool = False,
) -> dict[str, dict]:
    """Run every stage; returns the last result of each trial by run id. Raises Interrupted when a
    stage ends with unfinished trials (Ctrl-C): the caller tells the user to ``--resume``.
    ``pack`` > 1: runs that differ only in method parameters share trials, up to ``pack`` each
    (``packs.pack_units``, ``packed_trial.train_unit``); every run still gets its own row.
    ``pack_students_only``: only runs with a teacher share trials (``bkdbench run``'s default)."""
    # ``workers`` > 1: each trial trains one run on that many Ray Train workers (orchestrate/workers.py);
    # cpus/gpus_per_trial are then per worker, and runs are not packed.
    pack = 1 if workers > 1 else pack
    stage_units = [pack_units(stage, pack, pack_students_only) for stage in plan.stages]
    plan.trials = sum(len(units) for units in stage_units)
    set_listener(per_run_events(on_event, {k: v for units in stage_units for k, v in units.items()}))
    resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    outcome: dict[str, dict] = {}
    results = Location(results)
    root = experiments_dir(results) / name
    known = plan.all_specs()
    for stage_name, units in zip(plan.stage_names, stage_units):
        trial_resources = resources
        if workers > 1:
            from .workers import concurrent_trials, driver_resources, train_trial_workers, worker_trial_options

            trial_fn, packs = train_trial_workers, worker_trial_options(workers, root / stage_name, max_failures)
            trial_resources = driver_resources(resources)
        elif pack > 1:
            from .packed_trial import train_unit

            trial_fn, packs = train_unit, {"units": units}
        else:
            trial_fn, packs = train_trial, {}
        trainable = tune.with_resources(
            tune.with_parameters(trial_fn, specs=known, results=str(results), tags=tags,
                                 tagged=[s.run_id for s in plan.specs],
                                 checkpoint_every=checkpoint_every, force=force,
                                 data_dir=str(data_dir) if data_dir else None, **packs),
            trial_resources,
        )
        path = root / stage_name
        # A URI goes to Tune prefix-stripped with its filesystem, so its endpoint options reach Tune.
        tune_path, tune_fs = path.tune_storage()
        ids = sorted(units)  # trial keys: run ids, and pack keys with --pack
        restored = (resume and tune.Tuner.can_restore(tune_path, storage_filesystem=tune_fs)
                    and _restorable(path, ids, {**known, **units}))
        if restored:
            tuner = tune.Tuner.restore(tune_path, trainable, resume_errored=True, storage_filesystem=tune_fs)
        else:
            path.delete()  # Ray state of an earlier attempt; results live elsewhere
            (path / RUN_IDS).write_text(json.dumps(ids))
            tuner = tune.Tuner(
                trainable,
                param_space={"run_id": tune.grid_search(list(units)), "resources": resources},
                tune_config=tune.TuneConfig(reuse_actors=True, trial_dirname_creator=lambda t: t.config["run_id"],
                                            max_concurrent_trials=concurrent_trials(workers, resources) if workers > 1 else None),
                run_config=tune.RunConfig(
                    name=stage_name, storage_path=root.tune_storage()[0], storage_filesystem=tune_fs,
                    verbose=0, callbacks=[_Events()],
                    stop=_StopOnStorageError(),
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                ),
            )
        tick = time.perf_counter()
        grid = tuner.fit()
        if restored and any(_checkpoint_lost(result) for result in grid):
            # The saved state named a checkpoint Tune had already replaced: the driver died between
            # Tune deleting the old checkpoint and uploading its state (a window as long as an upload
            # to object storage). Those trials train again from the start.
            tuner = tune.Tuner.restore(tune_path, trainable, restart_errored=True, storage_filesystem=tune_fs)
            grid = tuner.fit()
        plan.seconds[stage_name] = time.perf_counter() - tick
        unfinished = []
        for result in grid:
            metrics = result.metrics or {}
            run_id = (result.config or {}).get("run_id")
            entry = {**metrics, "error": str(result.error) if result.error else metrics.get("error")}
            outcome.update(per_run_outcome(run_id, entry, units))
            if not metrics.get(FINISHED) and result.error is None:
                unfinished.append(run_id)
        storage = [v["error"] for v in outcome.values() if v.get("status") == "storage-error"]
        if storage:
            raise OSError(f"the results storage failed: {storage[0]}")
        if unfinished:
            raise Interrupted(f"{len(unfinished)} run(s) of stage '{stage_name}' did not finish")
    return outcome
