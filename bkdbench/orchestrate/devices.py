"""How many GPUs each trial gets: ``--gpus-per-trial auto`` (the default), an explicit share, and the
refusals that keep a command from waiting forever for GPUs the cluster does not have. Ray-free: the
driver passes in what the cluster has (``ray_session``), so the rule is a plain function to test.

The rule for ``auto`` (docs/cluster.md): with no GPU in the cluster every trial trains on the CPU. With
GPUs, a trial of small images (side < 112 px: digits, Fashion, CIFAR with ResNet-32) gets a quarter of
a GPU, since one such run leaves most of an H100 idle (it is launch-bound) and four time-share it; a
trial of large images (ImageNet-style augmentation or side >= 112 px: ImageNet-LT, Places-LT, iNat18,
image folders at 224 px with ResNet-50/ResNeXt-50) gets a whole GPU, since its training split alone
can take a third of one. A stage that mixes both gets the larger share for every trial. Multi-worker
trials get one whole GPU per worker (NCCL refuses two ranks on one device).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

AUTO = "auto"
SMALL_SHARE = 0.25  # a trial of small images: four per GPU
LARGE_SIDE = 112  # images of this side or more train with a whole GPU


class DeviceRefused(ValueError):
    """GPUs asked for that the cluster does not have: the command stops before anything is written."""


def parse_gpus(value: "str | float | None") -> Optional[float]:
    """``--gpus-per-trial``: None for ``auto``, else a share >= 0; ValueError for anything else."""
    if value is None or str(value).strip().lower() == AUTO:
        return None
    try:
        share = float(value)
    except ValueError:
        raise ValueError(f"--gpus-per-trial must be 'auto' or a number of GPUs such as 0.25 or 1 (got {value!r})") from None
    if not share >= 0 or share == float("inf"):
        raise ValueError(f"--gpus-per-trial must be >= 0 (got {value!r})")
    return share


def image_side(spec) -> int:
    """The side of the images a run trains on, from its spec and its dataset's registration."""
    from ..data import get_dataset

    info = get_dataset(spec.dataset)
    if info.augmentation == "imagenet":
        return max(spec.image_size or info.image_size or 224, LARGE_SIDE)
    return spec.image_size or info.image_size or 32


def gpu_share(spec) -> float:
    """The GPU share ``auto`` gives one trial of ``spec`` on a cluster with GPUs (module docstring)."""
    return 1.0 if image_side(spec) >= LARGE_SIDE else SMALL_SHARE


@dataclass(frozen=True)
class Allocation:
    gpus_per_trial: float  # per worker when workers > 1
    cluster_gpus: float
    workers: int = 1
    auto: bool = True

    def line(self, runs: int) -> str:
        """The plan line: "12 runs, 4 per GPU on 3 GPUs", or where the runs train without a GPU."""
        what = f"{runs} run{'s' if runs != 1 else ''}"
        gpus = f"{self.cluster_gpus:g} GPU{'s' if self.cluster_gpus != 1 else ''}"
        if self.gpus_per_trial <= 0:
            why = "the cluster has no GPU" if self.cluster_gpus <= 0 else f"--gpus-per-trial 0 (the cluster has {gpus})"
            return f"{what} on CPU: {why}"
        if self.workers > 1:
            return f"{what}, {self.workers} workers of {self.gpus_per_trial:g} GPU each per run, on {gpus}"
        if self.gpus_per_trial < 1:
            return f"{what}, {1 / self.gpus_per_trial:g} per GPU on {gpus}"
        return f"{what}, {self.gpus_per_trial:g} GPU{'s' if self.gpus_per_trial != 1 else ''} per run, on {gpus}"


def allocate(specs: Iterable, asked: Optional[float], node_gpus: list[float], *, workers: int = 1,
             wait: bool = False) -> Allocation:
    """The GPUs each trial reserves. ``asked``: None for ``auto``; ``node_gpus``: each live node's GPUs.
    Raises DeviceRefused when a trial could never be placed (unless ``wait``: an autoscaling cluster
    may add the GPUs later)."""
    total = float(sum(node_gpus))
    largest = max(node_gpus, default=0.0)
    specs = list(specs)
    if asked is None:
        if total <= 0:
            return Allocation(0.0, total, workers)
        share = 1.0 if workers > 1 else max((gpu_share(s) for s in specs), default=SMALL_SHARE)
    else:
        share = asked
    alloc = Allocation(share, total, workers, auto=asked is None)
    if share <= 0:
        return alloc
    if workers > 1 and share != int(share):
        raise DeviceRefused(f"--workers-per-trial {workers} with --gpus-per-trial {share:g}: each worker needs a whole "
                            "GPU of its own (NCCL refuses two ranks on one device); use --gpus-per-trial 1")
    if wait:
        return alloc
    has = f"the Ray cluster has {_gpus(total)}" + (f" (at most {largest:g} on one node)" if len(node_gpus) > 1 else "")
    flag = "--gpus-per-trial auto" if asked is None else f"--gpus-per-trial {share:g}"
    if total <= 0:
        raise DeviceRefused(f"{flag} asks for GPUs, but {has}; train on the CPU with --gpus-per-trial 0, join a "
                            "cluster with GPUs (--address), or pass --wait-for-resources on an autoscaling cluster")
    if workers > 1 and share * workers > total:
        raise DeviceRefused(f"--workers-per-trial {workers} needs {_gpus(share * workers)} per trial, but {has}; "
                            "use fewer workers, or --wait-for-resources on an autoscaling cluster")
    if share > largest:
        raise DeviceRefused(f"{flag} needs {_gpus(share)} on one node, but {has}; ask for at most {largest:g}, "
                            "or pass --wait-for-resources on an autoscaling cluster")
    return alloc


def _gpus(n: float) -> str:
    return "no GPU" if n <= 0 else f"{n:g} GPU{'s' if n != 1 else ''}"


def node_gpus(nodes: list[dict]) -> list[float]:
    """The GPUs of each live node, from ``ray.nodes()``."""
    return [float(n.get("Resources", {}).get("GPU", 0.0)) for n in nodes if n.get("Alive")]


def local_gpus() -> list[float]:
    """The GPUs a local Ray instance would declare on this machine (its CUDA devices), for a check made
    before Ray starts."""
    import torch

    return [float(torch.cuda.device_count())]
