"""Run one spec and record it: teacher lookup, training, teacher caching, one leaderboard row.

Shared by ``bkdbench train`` (in-process) and by every Ray trial, so a run lands in the leaderboard
the same way wherever it ran. Ray-free.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ..leaderboard.store import failure_of, write_row
from ..methods import teacher_methods
from ..paths import leaderboard_dir, teachers_dir
from ..provenance import provenance
from ..specs import RunSpec, spec_columns
from ..storage import Location
from ..training.teachers import TeacherError, check_teacher_fits, load_teacher, save_teacher
from ..training.train import RunResult, Report, TrainingDiverged, train
from .tracking import RunTracker, Tracking, tensorboard_dir


def failed_row(spec: RunSpec, error: str, **tags) -> dict:
    now = datetime.now(timezone.utc)
    return {**spec_columns(spec), "status": "failed", "error": error, "finished_at": now, **provenance(), **tags}


def result_row(result: RunResult, **tags) -> dict:
    """A finished run's leaderboard row, its per-epoch history included (what the report's training
    curves and the trackers read)."""
    return {**result.to_row(**tags), "history": result.history}


def teacher_state_for(spec: RunSpec, results: "Location | str"):
    """The cached weights of ``spec``'s teacher (None when it needs none; a list, in order, for a method
    with several teachers); refuses a misfit teacher or one not trained yet."""
    from ..data import get_dataset

    states = []
    for teacher in spec.all_teachers:
        check_teacher_fits(spec, teacher)
        classes = len(teacher.train_classes) if teacher.train_classes else get_dataset(spec.dataset).num_classes
        state = load_teacher(teachers_dir(results), teacher, num_classes=classes)
        if state is None:
            reason = failure_of(leaderboard_dir(results), teacher.run_id)
            if reason is not None:  # its students fail with the teacher's reason, and are not retried
                raise TeacherError(f"teacher {teacher.run_id} failed: {reason}")
            raise TeacherError(f"teacher {teacher.run_id} of {spec.label()} has not been trained yet")
        states.append(state)
    if not states:
        return None
    return states if spec.teachers else states[0]


def run_and_record(
    spec: RunSpec,
    results: "Location | str",
    *,
    report: Optional[Report] = None,
    tags: Optional[dict] = None,
    checkpoint: Optional[dict] = None,
    data_dir: Optional[Path] = None,
    device: Optional[str] = None,
    bf16: bool = False,
    compile: bool = False,
    tracking: Optional[Tracking] = None,
    distributed=None,
) -> RunResult:
    """Train ``spec`` and write its leaderboard row (a failed row, then re-raise, if it diverges).
    CE runs double as teachers, so their weights are cached by run id. Each epoch and the final row
    are mirrored to TensorBoard and to ``tracking`` (MLflow or W&B) when given. ``distributed``
    (training.distributed.Distributed): rank 0 of a multi-worker run (orchestrate/workers.py); the
    other ranks call ``train`` themselves and record nothing."""
    tags = tags or {}
    teacher_state = teacher_state_for(spec, results)
    tracker = RunTracker(spec, tags, tracking, tensorboard_dir(results, tags), resumed=checkpoint is not None)
    try:
        result = train(spec, report=tracker.wrap(report), data_dir=data_dir, device=device,
                       teacher_state=teacher_state, checkpoint=checkpoint, bf16=bf16, compile=compile,
                       **({"distributed": distributed} if distributed is not None else {}))
    except TrainingDiverged as exc:
        row = failed_row(spec, str(exc), **tags)
        write_row(leaderboard_dir(results), row)
        tracker.finish(row, status="failed")
        raise
    if spec.method in teacher_methods():  # CE (and Balanced Softmax) runs double as teachers
        save_teacher(teachers_dir(results), spec, result.state_dict, result.metrics)
    row = result_row(result, **tags)
    write_row(leaderboard_dir(results), row)
    tracker.finish(row)
    return result
