"""Several workers per trial: a Tune trial whose run is trained data-parallel by Ray Train.

``--workers-per-trial N`` (N > 1) makes every trial of ``run`` a Tune function trainable
(``train_trial_workers``) that launches a ``ray.train.torch.TorchTrainer`` with N workers and waits
for it: the pattern Ray 2.60 documents for Ray Train (V2, the default in 2.60) inside Ray Tune, a
Tune "driver" function per trial that calls ``TorchTrainer.fit()``. Each worker runs ``worker_loop``:
the same ``train(spec)`` core with its rank and world size (``training/distributed.py``); Ray Train
sets up the process group (NCCL on CUDA, gloo on CPU).

Resources. ``--cpus-per-trial`` / ``--gpus-per-trial`` then mean *per worker*: the TorchTrainer's
``ScalingConfig(num_workers=N, resources_per_worker={"CPU": c, "GPU": g})``. Ray Train V2 reserves
its workers in a placement group of its own, not in the Tune trial's, so a Tune
``PlacementGroupFactory`` of N bundles would book the same resources twice and leave Train waiting
for them. The Tune trial itself therefore reserves nothing (it only waits for ``fit()``), and
``max_concurrent_trials`` keeps as many multi-worker trials running as the cluster holds (N·c CPUs
and N·g GPUs each): ``concurrent_trials``.

Rank 0 alone reports metrics to Tune (Ray's ``TuneReportCallback`` passes rank 0's on), saves the
checkpoints (every worker reports every epoch, as Ray Train requires; only rank 0 attaches one) and
writes the leaderboard row (with ``workers`` = N and the devices). Faults: a failed worker restarts
the worker group from the last checkpoint (Train's ``FailureConfig(max_failures)``); a failed or
restored Tune trial (a killed driver, then ``--resume``) makes a TorchTrainer with the same name and
storage, which Ray Train resumes from the same checkpoint; a run already in the leaderboard is never
trained again, and a row is one file per run id, so there is never a second row.

Several workers and packed students do not combine: with N > 1 every trial trains one run.
"""
from __future__ import annotations

from pathlib import Path

from ray import tune

from ..specs import RunSpec
from ..storage import Location
from .trial import CHECKPOINT_FILE, FINISHED, KEEP_CHECKPOINTS, checkpointing_report, report_claimed_elsewhere

TRAIN_RUNS = "workers"  # beside a stage's Tune experiment: the Ray Train runs of its trials
FINAL = "bkd_final"  # the worker's last report: the run's outcome


def worker_trial_options(workers: int, stage: Location, max_failures: int) -> dict:
    """The ``train_trial_workers`` parameters ``run_plan`` binds for one stage."""
    return {"workers": workers, "train_storage": str(stage / TRAIN_RUNS), "max_failures": max_failures}


def driver_resources(resources: dict) -> dict:
    """What the Tune trial reserves for itself: no CPU or GPU, since it only waits for ``fit()`` and
    its workers are Ray Train's (module docstring). Tune refuses an empty request, so: one byte of
    memory. (Ray's default, one CPU, would leave a 2-core machine unable to place 2 workers.)"""
    return {"cpu": 0, "gpu": 0, "memory": 1}


def concurrent_trials(workers: int, resources: dict) -> int:
    """How many trials of ``workers`` workers (``resources`` each) the cluster runs at once."""
    import ray

    total = ray.cluster_resources()
    fits = []
    for key, name in (("cpu", "CPU"), ("gpu", "GPU")):
        need = workers * float(resources.get(key, 0) or 0)
        if need > 0:
            fits.append(int(total.get(name, 0) // need))
    return max(1, min(fits, default=1))


def _worker_report(rank: int, epochs: int, checkpoint_every: int | None):
    """``report(metrics, make_checkpoint)`` for a Train worker: every worker reports every epoch
    (Ray Train waits for all of them); rank 0 attaches a checkpoint when one is due (the rule of a
    one-worker trial, ``trial.checkpointing_report``)."""
    import ray.train

    return checkpointing_report(epochs, checkpoint_every, rank=rank, send=ray.train.report,
                                checkpoint_type=ray.train.Checkpoint)


def _restored_state() -> dict | None:
    import ray.train

    from ..training.train import load_checkpoint

    previous = ray.train.get_checkpoint()
    if previous is None:
        return None
    with previous.as_directory() as folder:
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE)


def worker_setup(cpu: float, gpu: float):
    """(this Train worker's ``Distributed``, its device), its threads and GPU share set."""
    import ray.train
    import torch

    from ..training.distributed import Distributed

    context = ray.train.get_context()
    distributed = Distributed(context.get_world_rank(), context.get_world_size())
    torch.set_num_threads(max(1, int(cpu)))
    if gpu <= 0:
        return distributed, torch.device("cpu")
    import ray.train.torch

    device = ray.train.torch.get_device()
    torch.cuda.set_device(device)  # NCCL collectives on objects (the devices' names) use the current device
    if gpu < 1:
        torch.cuda.set_per_process_memory_fraction(gpu, device)
    import os

    from ..data.imagenet_augment import SHARE_ENV

    os.environ[SHARE_ENV] = str(min(gpu, 1.0))  # what fits_on may place on the device
    return distributed, device


def worker_loop(config: dict) -> None:
    """One Train worker of one run: ``train(spec, distributed=...)``; rank 0 records the run."""
    import ray.train

    from ..leaderboard.store import is_finished, write_row
    from ..paths import leaderboard_dir
    from ..training.teachers import TeacherError
    from ..training.train import TrainingDiverged, train
    from .execute import failed_row, run_and_record, teacher_state_for
    from .tracking import Tracking

    distributed, device = worker_setup(config["cpu"], config["gpu"])
    rank = distributed.rank
    spec = RunSpec.model_validate_json(config["spec"])
    root = Location(config["results"])
    data_dir = Path(config["data_dir"]) if config["data_dir"] else None
    tags = config["tags"]
    if not config["force"] and is_finished(leaderboard_dir(root), spec.run_id):
        ray.train.report({FINAL: True, "status": "skipped"})  # every worker reads the same storage
        return
    state = _restored_state()
    report = _worker_report(rank, spec.epochs, config["checkpoint_every"])
    try:
        if rank == 0:
            result = run_and_record(spec, root, report=report, tags=tags, checkpoint=state, data_dir=data_dir,
                                    device=device, tracking=Tracking.from_env(), distributed=distributed)
        else:
            result = train(spec, report=report, data_dir=data_dir, device=device, checkpoint=state,
                           teacher_state=teacher_state_for(spec, root), distributed=distributed)
        final = {"status": "finished", "top1": result.metrics.get("top1"), "val_top1": result.metrics.get("val_top1")}
    except TrainingDiverged as exc:  # rank 0's run_and_record recorded it; every rank sees the same loss
        final = {"status": "failed", "error": str(exc)}
    except TeacherError as exc:  # every rank looks the teacher up before training
        if rank == 0:
            write_row(leaderboard_dir(root), failed_row(spec, str(exc), **tags))
        final = {"status": "failed", "error": str(exc)}
    except OSError as exc:
        final = {"status": "storage-error", "error": f"{type(exc).__name__}: {exc}"}
    ray.train.report({**final, FINAL: True})


def train_trial_workers(config: dict, *, specs: dict, results: str, tags: dict, tagged: list | None = None,
                        checkpoint_every: int | None = None, force: bool = False, data_dir: str | None = None,
                        workers: int = 2, train_storage: str = "", max_failures: int = 2) -> None:
    """The Tune trainable of a multi-worker trial (module docstring); the same contract as
    ``trial.train_trial``: a last report with ``bkd_finished`` and the run's status."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..leaderboard.store import is_finished
    from ..paths import leaderboard_dir
    from .lease import claim

    run_id = config["run_id"]
    if run_id not in specs:  # a restored trial of a run this invocation does not ask for (other filters)
        tune.report({FINISHED: True, "status": "skipped", "error": f"run {run_id} is not part of this invocation"})
        return
    if tagged is not None and run_id not in tagged:
        tags = {}
    root = Location(results)
    if not force and is_finished(leaderboard_dir(root), run_id):
        tune.report({FINISHED: True, "status": "skipped"})
        return
    resources = config.get("resources", {})
    cpu, gpu = float(resources.get("cpu", 1) or 1), float(resources.get("gpu", 0) or 0)
    per_worker = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    storage_path, storage_fs = Location(train_storage).tune_storage()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"spec": specs[run_id], "results": results, "tags": tags, "force": force,
                           "data_dir": data_dir, "checkpoint_every": checkpoint_every, "cpu": cpu, "gpu": gpu},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if gpu > 0 else "gloo"),
        run_config=RunConfig(name=run_id, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                             callbacks=[TuneReportCallback()]),
    )
    claimed = claim(root, [run_id], force=force)  # one trainer per run (lease.py): held by this trial's process
    if not claimed.leases:
        return report_claimed_elsewhere(claimed, run_id)
    try:
        outcome = trainer.fit().metrics or {}
    finally:
        claimed.release()
    final = {k: outcome[k] for k in ("status", "top1", "val_top1", "error") if k in outcome}
    tune.report({**final, "workers": workers, FINISHED: True})
