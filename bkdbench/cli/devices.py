"""``--gpus-per-trial`` and ``--wait-for-resources`` of run, sweep and ablate: the options, and the
check that turns them into each trial's GPU share once the cluster is known (orchestrate/devices.py)."""
from __future__ import annotations

import threading
from typing import Optional

import typer

GpusOpt = typer.Option("auto", "--gpus-per-trial", help=(
    "GPUs per trial: auto (default) gives each trial a share that fits its data (a quarter of a GPU for "
    "small images such as CIFAR, a whole one for ImageNet-size images; CPU when the cluster has no GPU), "
    "or a number such as 0.25, 1, or 0 for the CPU; per worker with --workers-per-trial N > 1. "
    "See docs/cluster.md."))
WaitOpt = typer.Option(False, "--wait-for-resources", help=(
    "Wait for GPUs the cluster does not have yet (an autoscaling cluster) instead of refusing; "
    "a line every minute says what is pending."))


class DevicePlan:
    """The check ``ray_session`` runs on the cluster's GPUs before anything is written; ``allocation``
    holds its answer, ``gpus_per_trial`` the share the trials reserve."""

    def __init__(self, specs, asked: Optional[float], workers: int = 1, wait: bool = False):
        self.specs, self.asked, self.workers, self.wait = list(specs), asked, workers, wait
        self.allocation = None

    def __call__(self, node_gpus: list[float]) -> None:
        from bkdbench.orchestrate.devices import allocate

        self.allocation = allocate(self.specs, self.asked, node_gpus, workers=self.workers, wait=self.wait)

    def check_local(self, address: Optional[str]) -> None:
        """Before Ray starts: a local Ray instance declares this machine's CUDA devices, so a request it
        can never meet is refused without starting it (DeviceRefused); a joined cluster is checked
        once Ray is up (``ray_session``)."""
        if address is None:
            from bkdbench.orchestrate.devices import local_gpus

            self(local_gpus())

    @property
    def gpus_per_trial(self) -> float:
        return self.allocation.gpus_per_trial if self.allocation else (self.asked or 0.0)

    def line(self, runs: int) -> str:
        return self.allocation.line(runs) if self.allocation else ""


class PendingLines:
    """With --wait-for-resources: every ``every`` seconds, while trials wait for resources, one line
    saying what they wait for (``say``) and what the cluster has free."""

    def __init__(self, plan: DevicePlan, say, every: float = 60.0):
        self.plan, self.say, self.every = plan, say, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.plan.wait:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _loop(self) -> None:
        import ray

        while not self._stop.wait(self.every):
            try:
                free, total = ray.available_resources(), ray.cluster_resources()
            except Exception:  # noqa: BLE001  (Ray shutting down: nothing left to report)
                return
            need = self.plan.gpus_per_trial * max(1, self.plan.workers)
            if need > free.get("GPU", 0.0):
                self.say(f"waiting for resources: a trial needs {need:g} GPU; the cluster has "
                         f"{free.get('GPU', 0.0):g} of {total.get('GPU', 0.0):g} GPUs free")
