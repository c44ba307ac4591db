"""The Ray Tune trainable of an experiment run with ``--pack K``: a trial trains one run (``train_trial``)
or a pack of runs that differ only in method parameters (``packed.train_packed``: one augmented batch
and one teacher forward per step for all of them), and records each run as its own leaderboard row,
exactly as ``run_and_record`` records a single run (same row, same tags, CE weights cached as teachers).

Members already finished are skipped. A member whose loss diverges gets a failed row and the others
are trained again without it. Checkpoints hold the whole pack; a restarted trial continues from one
only when it trains the same members with the same packing strategy, and otherwise starts at epoch 0
(a checkpoint of one pack never seeds another).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from ray import tune

from ..specs import RunSpec
from ..storage import Location
from .packs import RUN_ERRORS, RUNS
from .trial import FINISHED, NoCudaDevice, checkpointing_report, report_no_device, restored_state, train_trial, use_resources


def train_unit(config: dict, *, units: dict, specs: dict, results: str, tags: dict, tagged: list | None = None,
               checkpoint_every: int | None = None, force: bool = False, data_dir: str | None = None) -> None:
    """``config["run_id"]`` names a single run or a pack (``units``: key → member run ids)."""
    key = config["run_id"]
    members = units.get(key, [key])
    if members == [key]:
        return train_trial(config, specs=specs, results=results, tags=tags, tagged=tagged,
                           checkpoint_every=checkpoint_every, force=force, data_dir=data_dir)
    missing = [m for m in members if m not in specs]
    if missing:  # a restored trial of runs this invocation does not ask for
        tune.report({FINISHED: True, "status": "skipped", "error": f"runs {missing} are not part of this invocation"})
        return
    try:
        device = use_resources(config)
    except NoCudaDevice as exc:
        return report_no_device(exc)
    train_pack([RunSpec.model_validate_json(specs[m]) for m in members], Location(results), tags=tags, tagged=tagged,
               checkpoint_every=checkpoint_every, force=force, data_dir=Path(data_dir) if data_dir else None,
               device=device)


def train_pack(specs: list[RunSpec], root: Path, *, tags: dict, tagged: Optional[list] = None,
               checkpoint_every: Optional[int] = None, force: bool = False, data_dir: Optional[Path] = None,
               device: Optional[str] = None) -> None:
    from ..leaderboard.store import is_finished
    from ..paths import leaderboard_dir
    from .lease import claim

    board = leaderboard_dir(root)
    status = {s.run_id: "skipped" for s in specs}  # finished meanwhile (e.g. by a restored trial)
    todo = [s for s in specs if force or not is_finished(board, s.run_id)]
    tags_of = lambda s: tags if tagged is None or s.run_id in tagged else {}  # noqa: E731  (not on teachers)
    errors: dict[str, str] = {}  # run id → why it failed
    claimed = claim(root, [s.run_id for s in todo], force=force)  # one trainer per run (lease.py)
    try:
        storage = _train_claimed(specs, [s for s in todo if s.run_id in claimed.held], root, status=status,
                                 errors=errors, tags_of=tags_of, checkpoint_every=checkpoint_every, data_dir=data_dir,
                                 device=device)
    finally:
        claimed.release()  # after the rows: a driver that waited reads them as the runs' outcomes
    if storage is not None:  # storage full, read-only or gone: retrying cannot help; the driver stops all
        tune.report({"status": "storage-error", "error": storage, RUNS: status, FINISHED: True})
        return
    errors.update(claimed.failed)  # tried by the driver this trial waited for
    status.update({run_id: "failed" for run_id in claimed.failed})
    overall = "failed" if "failed" in status.values() else "finished" if "finished" in status.values() else "skipped"
    final = {"status": overall, RUNS: status, FINISHED: True}
    if errors:
        final["error"], final[RUN_ERRORS] = "; ".join(dict.fromkeys(errors.values())), errors
    tune.report(final)


def _train_claimed(specs, todo, root, *, status: dict, errors: dict, tags_of, checkpoint_every,
                   data_dir, device: Optional[str] = None) -> Optional[str]:
    """Train the pack's members this trial holds leases on, recording each one's row, status and
    error; returns what went wrong when the storage failed."""
    import torch

    from ..leaderboard.store import write_row
    from ..methods import teacher_methods
    from ..models.packing import resolve_strategy
    from ..paths import leaderboard_dir, teachers_dir
    from ..training.packed import PackedTrainingDiverged, train_packed
    from ..training.teachers import TeacherError, save_teacher
    from ..training.train import default_device
    from .execute import failed_row, result_row, teacher_state_for
    from .tracking import RunTracker, Tracking, tensorboard_dir

    board = leaderboard_dir(root)
    state = restored_state()
    strategy = resolve_strategy("auto", torch.device(device) if device else default_device())
    report = checkpointing_report(specs[0].epochs, checkpoint_every)
    try:
        teacher_state = teacher_state_for(todo[0], root) if todo else None
        while todo:
            ids = [s.run_id for s in todo]
            resume, used = resume_point(state, ids, strategy)
            state = None
            try:
                trained = train_packed(todo, teacher_state=teacher_state, report=_pack_report(report),
                                       data_dir=data_dir, checkpoint=resume, strategy=used, device=device)
            except PackedTrainingDiverged as exc:  # record those, train the others again without them
                for i in exc.students:
                    errors[todo[i].run_id] = exc.reasons.get(i, str(exc))
                    write_row(board, failed_row(todo[i], errors[todo[i].run_id], **tags_of(todo[i])))
                    status[todo[i].run_id] = "failed"
                todo = [s for i, s in enumerate(todo) if i not in exc.students]
                continue
            for result in trained:
                if result.spec.method in teacher_methods():  # runs that double as teachers, as in run_and_record
                    save_teacher(teachers_dir(root), result.spec, result.state_dict, result.metrics)
                row = result_row(result, **tags_of(result.spec))
                write_row(board, row)
                # A pack's epochs are mirrored once the pack has trained (its report is the pack's, not a run's).
                tracker = RunTracker(result.spec, tags_of(result.spec), Tracking.from_env(),
                                     tensorboard_dir(root, tags_of(result.spec)))
                tracker.replay(result.history)
                tracker.finish(row)
                status[result.spec.run_id] = "finished"
            todo = []
    except TeacherError as exc:  # the teacher failed or is missing: record, do not retry
        for spec in todo:
            errors[spec.run_id] = str(exc)
            write_row(board, failed_row(spec, str(exc), **tags_of(spec)))
            status[spec.run_id] = "failed"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def resume_point(state: Optional[dict], run_ids: list[str], strategy: str) -> tuple[Optional[dict], str]:
    """(the checkpoint to resume, the strategy to train with). A checkpoint of these very runs resumes
    with the strategy it was taken with: a ``loop`` pack restarted on a GPU, where ``auto`` means
    ``grouped``, keeps training as ``loop`` rather than dropping its checkpoint and starting over."""
    resume = state if state and state.get("run_ids") == run_ids else None
    return resume, (resume.get("strategy", strategy) if resume else strategy)


def _pack_report(report):
    """One Tune result per epoch for the whole pack (the mean loss, the best validation score);
    each member's own numbers go into its leaderboard row."""

    def pack_report(metrics: list[dict], make_checkpoint) -> None:
        losses = [m["train_loss"] for m in metrics if math.isfinite(m["train_loss"])]
        vals = [m["val_top1"] for m in metrics if m.get("val_top1") is not None]
        summary = {"epoch": metrics[0]["epoch"], "lr": metrics[0]["lr"], "students": len(metrics),
                   "train_loss": sum(losses) / len(losses) if losses else math.nan,
                   "val_top1": max(vals) if vals else None}
        report(summary, make_checkpoint)

    return pack_report
