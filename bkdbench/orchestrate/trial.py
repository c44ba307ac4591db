"""The Ray Tune trainable of every bkdbench trial: one RunSpec, trained with ``run_and_record``.

Reports once per epoch, checkpoints every few epochs (a restarted trial continues from its last
checkpoint), writes its own leaderboard row, and turns a diverged run into a recorded failure so
the rest of the experiment carries on. ``use_resources``, ``restored_state`` and
``checkpointing_report`` are shared with the packed trials of ``packed_trial``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ray import tune

from ..specs import RunSpec
from ..storage import Location

CHECKPOINT_FILE = "state.pt"
# Our own "ran to the end" flag: Tune sets its "done" on the last result of a trial that a
# scheduler stopped early, so "done" cannot tell a finished trial from a pruned one.
FINISHED = "bkd_finished"


CHECKPOINT_SECONDS = 30.0  # default: a checkpoint at most every 30 s of training
# Checkpoints kept per trial. Tune deletes the older one when it registers a new one, but saves the
# experiment state (which names the checkpoint a restore starts from) only every few seconds: a
# driver killed in between leaves a state naming a deleted checkpoint, and with one kept the run
# starts over from epoch 0. Keeping the previous one too makes that need two checkpoints in one gap.
KEEP_CHECKPOINTS = 2


class NoCudaDevice(RuntimeError):
    """Ray gave the trial a GPU, but torch in the trial's process sees no CUDA device."""


def use_resources(config: dict) -> str:
    """Torch threads from the trial's CPUs; a GPU memory cap for a fractional GPU. Returns the device
    the trial trains on: ``cuda`` when Ray gave it a GPU, else ``cpu`` (never an unbooked GPU). A
    trial given a GPU that torch cannot see raises NoCudaDevice: it never trains on the CPU instead."""
    import os

    import torch

    from ..data.imagenet_augment import SHARE_ENV

    resources = config.get("resources", {})
    torch.set_num_threads(max(1, int(resources.get("cpu", 1))))
    gpu = float(resources.get("gpu", 0))
    if gpu <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise NoCudaDevice(f"Ray gave this trial {gpu:g} GPU (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}) but torch {torch.__version__} sees no CUDA "
                           f"device (built for CUDA {torch.version.cuda}); install a CUDA build of torch on that node, "
                           "or train on the CPU with --gpus-per-trial 0")
    if gpu < 1:
        torch.cuda.set_per_process_memory_fraction(gpu)  # fractional GPUs are bookkeeping otherwise
    os.environ[SHARE_ENV] = str(min(gpu, 1.0))  # what fits_on may place on the device (data/imagenet_augment.py)
    return "cuda"


def report_no_device(exc: NoCudaDevice) -> None:
    """A trial's one-line failure when its GPU is not usable: not retried, no row written."""
    tune.report({FINISHED: True, "status": "failed", "error": str(exc)})


def report_claimed_elsewhere(claimed, run_id: str) -> None:
    """The last report of a trial whose run another driver trained while this one waited for its lease."""
    failed = claimed.failed.get(run_id)
    tune.report({FINISHED: True, **({"status": "failed", "error": failed} if failed else {"status": "skipped"})})


def restored_state() -> dict | None:
    """The state of this trial's last checkpoint, when Tune restarted it after a failure."""
    from ..training.train import load_checkpoint

    previous = tune.get_checkpoint()
    if previous is None:
        return None
    with previous.as_directory() as folder:
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE)


def checkpointing_report(epochs: int, checkpoint_every: int | None, *, rank: int = 0, send=None, checkpoint_type=None):
    """``report(metrics, make_checkpoint)`` for Tune: every epoch's metrics, with a checkpoint when one
    is due (every ``checkpoint_every`` epochs, or by time when None; never after the last epoch).
    A Ray Train worker passes its ``rank`` (only rank 0 checkpoints), ``send=ray.train.report`` and
    ``checkpoint_type=ray.train.Checkpoint``; the default is Tune's (looked up at each call)."""
    import time

    from ..training.train import save_checkpoint

    last_save = [time.monotonic()]

    def due(done_epochs: int) -> bool:
        if rank != 0 or done_epochs >= epochs:
            return False  # the finished run is recorded in the leaderboard instead
        if checkpoint_every:
            return done_epochs % checkpoint_every == 0
        return time.monotonic() - last_save[0] >= CHECKPOINT_SECONDS

    def report(metrics: dict, make_checkpoint) -> None:
        out = send or tune.report
        if due(metrics["epoch"] + 1):
            last_save[0] = time.monotonic()
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(make_checkpoint(), Path(folder) / CHECKPOINT_FILE)
                out(metrics, checkpoint=(checkpoint_type or tune.Checkpoint).from_directory(folder))
        else:
            out(metrics)

    return report


def train_trial(config: dict, *, specs: dict, results: str, tags: dict, tagged: list | None = None,
                checkpoint_every: int | None = None, force: bool = False, data_dir: str | None = None) -> None:
    """``tags`` (suite, sweep or ablation id) go on the rows of the runs in ``tagged`` (all when
    None), not on teachers trained only for them. ``checkpoint_every``: every N epochs; None
    checkpoints by time (short runs then never pay for checkpoints, long ones lose at most ~30 s)."""
    from ..leaderboard.store import is_finished, write_row
    from ..paths import leaderboard_dir
    from ..training.teachers import TeacherError
    from ..training.train import TrainingDiverged
    from .execute import failed_row, run_and_record
    from .lease import claim
    from .tracking import Tracking

    run_id = config["run_id"]
    if run_id not in specs:  # a restored trial of a run this invocation does not ask for (other filters)
        tune.report({FINISHED: True, "status": "skipped", "error": f"run {run_id} is not part of this invocation"})
        return
    spec = RunSpec.model_validate_json(specs[run_id])
    if tagged is not None and run_id not in tagged:
        tags = {}
    try:
        device = use_resources(config)
    except NoCudaDevice as exc:
        return report_no_device(exc)
    root = Location(results)  # a local path or an object-store URI
    if not force and is_finished(leaderboard_dir(root), run_id):
        tune.report({FINISHED: True, "status": "skipped"})  # finished meanwhile (e.g. by a restored run)
        return

    claimed = claim(root, [run_id], force=force)  # one trainer per run, whichever driver asks (lease.py)
    if not claimed.leases:  # another driver finished it, or tried it and recorded its failure, meanwhile
        return report_claimed_elsewhere(claimed, run_id)
    state = restored_state()
    report = checkpointing_report(spec.epochs, checkpoint_every)
    try:
        result = run_and_record(spec, root, report=report, tags=tags, checkpoint=state, device=device,
                                data_dir=Path(data_dir) if data_dir else None, tracking=Tracking.from_env())
        final = {"status": "finished", "top1": result.metrics.get("top1"), "val_top1": result.metrics.get("val_top1")}
    except TrainingDiverged as exc:  # already recorded as failed by run_and_record
        final = {"status": "failed", "error": str(exc)}
    except TeacherError as exc:  # its teacher failed or is missing: record, do not retry
        write_row(leaderboard_dir(root), failed_row(spec, str(exc), **tags))
        final = {"status": "failed", "error": str(exc)}
    except OSError as exc:  # storage full, read-only or gone: retrying cannot help; the driver stops all
        final = {"status": "storage-error", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        claimed.release()  # after the row: a driver that waited reads it as the run's outcome
    tune.report({**final, FINISHED: True})
