"""Search trials on several workers (``sweep --workers-per-trial N``): each Tune trial of the search is
a function that runs one ``TorchTrainer`` (the pattern of ``workers.py``), whose N workers train the
sampled configuration data-parallel with ``evaluate_test=False``.

Reporting. Every worker calls ``ray.train.report`` on the same evaluation epochs (``search.search_report``:
Ray Train waits for all of them); Ray's ``TuneReportCallback`` passes rank 0's metrics to the Tune
trial, so ASHA sees ``EPOCHS_DONE`` and the validation score at each rung and ``PrunedAwareOptunaSearch``
records intermediate values and PRUNED exactly as for one-worker trials. When ASHA stops a trial, Tune
ends the trial's function; the Train run it owns ends with it.

Stopped trials' workers. When ASHA stops a trial, Tune ends the trial's process and with it the
Train controller it owns, which then never removes its workers' placement group. Ray Train's own
``PlacementGroupCleaner`` would, but it watches the controller through Ray's State API, which needs
the dashboard (``ray[default]``; bkdbench runs Ray without it), so the CPUs of every stopped trial
stayed reserved and the sweep waited for them forever. Rank 0 therefore names its placement group in
every report (``PLACEMENT_GROUP``), and the driver's ``FreeStoppedGroups`` callback removes that
group when the trial ends, if it still exists.

Faults. A search trial is never resumed (an interrupted one is FAIL and sampled anew,
``study.mark_interrupted_trials``), so it checkpoints nothing and Ray Train does not restart it
(``max_failures=0``): a diverged run fails on every rank at the same epoch (the loss is all-reduced)
and the trial is FAIL, as a one-worker trial's is. Rank 0 alone mirrors the trial to the trackers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ray import tune

PLACEMENT_GROUP = "train_placement_group"  # in a multi-worker search trial's reports: its workers' group


def search_worker_loop(config: dict) -> None:
    """One Train worker of one search trial."""
    import ray.train

    from ...training.train import train
    from ..execute import teacher_state_for
    from .trial import search_report, search_spec
    from ..tracking import RunTracker, Tracking, tensorboard_dir
    from ..workers import worker_setup

    distributed, device = worker_setup(config["cpu"], config["gpu"])
    spec = search_spec(config["base"], config["sampled"])
    group = ray.util.get_current_placement_group()
    named = {PLACEMENT_GROUP: group.id.hex()} if group is not None else {}
    report = search_report(spec, lambda metrics: ray.train.report({**metrics, **named}))
    tracker = None
    if distributed.rank == 0:
        tags = {"sweep_id": config["sweep_id"], "sweep_role": "search"} if config["sweep_id"] else {"sweep_role": "search"}
        tracker = RunTracker(spec, tags, Tracking.from_env(), tensorboard_dir(config["results"], tags))
        report = tracker.wrap(report)
    data_dir = Path(config["data_dir"]) if config["data_dir"] else None
    try:
        result = train(spec, report=report, evaluate_test=False, device=device, data_dir=data_dir,
                       teacher_state=teacher_state_for(spec, config["results"]), distributed=distributed)
    except Exception:
        if tracker is not None:
            tracker.finish(None, status="failed")
        raise  # the Train run fails, fit() raises, the Tune trial errors: Optuna records FAIL
    if tracker is not None:
        tracker.finish({"val_top1": result.metrics.get("val_top1"), "train_seconds": result.train_seconds})


def search_trial_workers(config: dict, *, base: str, results: str, data_dir: Optional[str] = None,
                         sweep_id: Optional[str] = None, workers: int = 2, train_storage: str = "") -> None:
    """The Tune trainable of a multi-worker search trial (module docstring)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ...storage import Location

    cpu, gpu = float(config.get("_cpus", 1) or 1), float(config.get("_gpus", 0) or 0)
    storage_path, storage_fs = Location(train_storage).tune_storage()
    trainer = TorchTrainer(
        search_worker_loop,
        train_loop_config={"base": base, "sampled": {k: v for k, v in config.items() if not k.startswith("_")},
                           "results": results, "data_dir": data_dir, "sweep_id": sweep_id, "cpu": cpu, "gpu": gpu},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0,
                                     resources_per_worker={"CPU": cpu, **({"GPU": gpu} if gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if gpu > 0 else "gloo"),
        run_config=RunConfig(name=tune.get_context().get_trial_id(), storage_path=storage_path,
                             storage_filesystem=storage_fs, failure_config=FailureConfig(max_failures=0),
                             checkpoint_config=CheckpointConfig(num_to_keep=1), callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


class FreeStoppedGroups(tune.Callback):
    """Removes the placement group of a multi-worker search trial's workers when the trial ends, if
    its controller did not (module docstring: a trial ASHA stopped)."""

    def __init__(self):
        self.groups: dict[str, str] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(PLACEMENT_GROUP):
            self.groups[trial.trial_id] = result[PLACEMENT_GROUP]

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._free(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._free(trial.trial_id)

    def _free(self, trial_id: str) -> None:
        from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

        group = self.groups.pop(trial_id, None)
        if group is None or placement_group_table().get(group, {}).get("state") in (None, "REMOVED"):
            return
        from ray._raylet import PlacementGroupID

        try:
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group))))
        except Exception:  # noqa: BLE001  (removed meanwhile by its controller: nothing to free)
            pass
