"""GPUs by default: the ``--gpus-per-trial auto`` rule, the plan line, and the refusals of GPUs a
cluster does not have -- as a pure function (orchestrate/devices.py), then end to end twice: the CLI
on this GPU-less machine refuses at once with nothing written, and a Ray cluster that declares GPUs
on a machine without CUDA fails its trials at once with one line instead of training on the CPU."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bkdbench.orchestrate.devices import (SMALL_SHARE, Allocation, DeviceRefused, allocate, gpu_share, node_gpus,
                                          parse_gpus)


def spec(dataset: str, image_size=None):
    return SimpleNamespace(dataset=dataset, image_size=image_size)


CIFAR, DIGITS = spec("cifar100"), spec("digits")
IMAGENET, FOLDER_224, FOLDER_64 = spec("imagenet-lt"), spec("imagefolder", 224), spec("imagefolder", 64)


def test_parse_gpus():
    assert parse_gpus("auto") is None and parse_gpus("AUTO") is None and parse_gpus(None) is None
    assert parse_gpus("0") == 0.0 and parse_gpus("0.25") == 0.25 and parse_gpus("2") == 2.0
    for bad in ("-1", "nan", "inf", "some", ""):
        with pytest.raises(ValueError, match="--gpus-per-trial"):
            parse_gpus(bad)


def test_the_share_follows_the_image_size():
    assert gpu_share(CIFAR) == gpu_share(DIGITS) == gpu_share(FOLDER_64) == 0.25
    assert gpu_share(IMAGENET) == gpu_share(spec("places-lt")) == gpu_share(spec("inat18")) == 1.0
    assert gpu_share(FOLDER_224) == 1.0


def test_auto_without_gpus_is_the_cpu_said_in_the_plan_line():
    alloc = allocate([CIFAR] * 12, None, [0.0, 0.0])
    assert alloc.gpus_per_trial == 0
    assert alloc.line(12) == "12 runs on CPU: the cluster has no GPU"


def test_auto_with_gpus():
    alloc = allocate([CIFAR] * 12, None, [2.0, 1.0])
    assert alloc.gpus_per_trial == SMALL_SHARE
    assert alloc.line(12) == "12 runs, 4 per GPU on 3 GPUs"
    assert allocate([IMAGENET] * 3, None, [8.0]).line(3) == "3 runs, 1 GPU per run, on 8 GPUs"
    # a stage that mixes both: the larger share for all
    assert allocate([CIFAR, IMAGENET], None, [8.0]).gpus_per_trial == 1.0
    # multi-worker trials: a whole GPU per worker
    alloc = allocate([CIFAR], None, [4.0], workers=2)
    assert alloc.gpus_per_trial == 1.0 and alloc.line(1) == "1 run, 2 workers of 1 GPU each per run, on 4 GPUs"


def test_explicit_shares():
    assert allocate([IMAGENET], 0.0, [8.0]).line(5) == "5 runs on CPU: --gpus-per-trial 0 (the cluster has 8 GPUs)"
    assert allocate([IMAGENET], 0.5, [1.0]).line(4) == "4 runs, 2 per GPU on 1 GPU"
    assert allocate([IMAGENET], 2.0, [2.0, 2.0]).gpus_per_trial == 2.0


@pytest.mark.parametrize("asked,nodes,workers,words", [
    (1.0, [0.0], 1, ["--gpus-per-trial 1 asks for GPUs", "the Ray cluster has no GPU", "--gpus-per-trial 0"]),
    (0.25, [], 1, ["asks for GPUs", "has no GPU"]),
    (2.0, [1.0], 1, ["needs 2 GPUs on one node", "has 1 GPU", "at most 1"]),
    (2.0, [1.0, 1.0], 1, ["needs 2 GPUs on one node", "has 2 GPUs (at most 1 on one node)"]),
    (1.0, [2.0], 4, ["--workers-per-trial 4 needs 4 GPUs", "has 2 GPUs"]),
    (0.5, [4.0], 2, ["each worker needs a whole GPU", "NCCL"]),
    (None, [2.0], 3, ["--workers-per-trial 3 needs 3 GPUs"]),
])
def test_refusals_name_what_the_cluster_has(asked, nodes, workers, words):
    with pytest.raises(DeviceRefused) as refused:
        allocate([CIFAR], asked, nodes, workers=workers)
    for word in words:
        assert word in str(refused.value), str(refused.value)
    assert "\n" not in str(refused.value)


def test_waiting_accepts_what_is_not_there_yet():
    assert allocate([CIFAR], 1.0, [0.0], wait=True).gpus_per_trial == 1.0
    with pytest.raises(DeviceRefused):  # never placeable, however many nodes come
        allocate([CIFAR], 0.5, [0.0], workers=2, wait=True)


def test_node_gpus_from_ray_nodes():
    nodes = [{"Alive": True, "Resources": {"CPU": 8, "GPU": 2.0}}, {"Alive": False, "Resources": {"GPU": 4.0}},
             {"Alive": True, "Resources": {"CPU": 4}}]
    assert node_gpus(nodes) == [2.0, 0.0]
    assert isinstance(allocate([], None, node_gpus(nodes)), Allocation)


@pytest.mark.parametrize("args", [
    ["run", "--suite", "digits-lt", "--seeds", "1", "--epochs", "1", "--gpus-per-trial", "1"],
    ["sweep", "bkd", "--trials", "2", "--epochs", "1", "--gpus-per-trial", "0.5"],
    ["ablate", "bkd", "--grid", "alpha=0,1", "--seeds", "1", "--epochs", "1", "--gpus-per-trial", "0.5",
     "--workers-per-trial", "2"],
    ["run", "--gpus-per-trial", "lots"],
], ids=["run", "sweep", "ablate-workers", "not-a-number"])
def test_gpus_where_there_are_none_are_refused_at_once_with_nothing_written(args, tmp_path, monkeypatch, capsys):
    """On this machine (no CUDA device) a local Ray would have no GPU: refused before Ray starts (the
    conftest guard fails a quick test that starts it), one line, exit 2, nothing written."""
    import torch

    from bkdbench.cli import main
    from helpers.files import assert_nothing_written, snapshot

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BKDBENCH_RESULTS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(lines) == 1, err
    want = ("--gpus-per-trial must be 'auto' or a number" if "lots" in args
            else "each worker needs a whole GPU" if "--workers-per-trial" in args else "asks for GPUs, but the Ray cluster has no GPU")
    assert want in lines[0], lines[0]
    assert_nothing_written(before, tmp_path)


@pytest.mark.parametrize("args", [
    ["sweep", "bkd", "--trials", "2", "--epochs", "1"],
    ["run", "--suite", "digits-lt", "--seeds", "1", "--epochs", "1"],
    ["ablate", "bkd", "--grid", "alpha=0,1", "--seeds", "1", "--epochs", "1"],
], ids=["sweep", "run", "ablate"])
def test_joining_a_cluster_without_gpus_is_refused_with_nothing_written(args, tmp_path, monkeypatch, capsys):
    """``--address``: the cluster's GPUs are known only once joined, so the refusal comes from the
    session's check; nothing may exist yet (a sweep's study journal, its folder, a suite's records). The joined cluster
    is stood in for by a session that reports one node without GPUs (no Ray starts here)."""
    import contextlib

    import bkdbench.orchestrate.ray_session as session_mod
    from bkdbench.cli import main
    from helpers.files import assert_nothing_written, snapshot

    seen = []

    @contextlib.contextmanager
    def cluster_without_gpus(address=None, log_file=None, num_cpus=None, storage=None, check=None, num_gpus=None):
        seen.append(address)
        check([0.0])  # raises DeviceRefused, as ray_session's check does after joining
        yield {"CPU": 8.0}

    monkeypatch.setattr(session_mod, "ray_session", cluster_without_gpus)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BKDBENCH_RESULTS", raising=False)
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--gpus-per-trial", "1", "--address", "10.0.0.1:6379"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert seen == ["10.0.0.1:6379"]
    assert exit_.value.code == 2 and len(lines) == 1, err
    assert "--gpus-per-trial 1 asks for GPUs, but the Ray cluster has no GPU" in lines[0], lines[0]
    assert_nothing_written(before, tmp_path)


@pytest.mark.slow
def test_a_declared_gpu_that_torch_cannot_see_fails_the_trial_at_once(tmp_path, monkeypatch):
    """Ray on this CPU machine declares 2 GPUs: auto gives the digits runs a quarter each, the plan
    line says so, and each trial fails with one line naming the missing CUDA device (no row written,
    no training on the CPU)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU")
    from bkdbench.cli.devices import DevicePlan
    from bkdbench.leaderboard.store import finished_run_ids
    from bkdbench.orchestrate.ray_session import ray_session
    from bkdbench.orchestrate.runner import plan_runs, run_plan
    from bkdbench.paths import leaderboard_dir
    from bkdbench.specs import make_spec

    specs = [make_spec("digits", 10, "ce", seed=s, epochs=1) for s in (0, 1)]
    plan = plan_runs(specs, tmp_path)
    devices = DevicePlan(plan.specs, None)
    with ray_session(None, num_cpus=2, num_gpus=2, check=devices):
        assert devices.line(plan.todo) == "2 runs, 4 per GPU on 2 GPUs"
        outcome = run_plan(plan, tmp_path, name="gpu", tags={}, gpus_per_trial=devices.gpus_per_trial, max_failures=2)
    assert set(outcome) == {s.run_id for s in specs}
    for result in outcome.values():
        assert result["status"] == "failed", result
        assert "Ray gave this trial 0.25 GPU" in result["error"] and "sees no CUDA device" in result["error"]
        assert "\n" not in result["error"]
    assert not finished_run_ids(leaderboard_dir(tmp_path))


def test_waiting_says_what_is_pending_every_period(monkeypatch):
    """--wait-for-resources: while a trial's GPUs are not free, a line each period says so (Ray's
    resource queries stood in for: no Ray starts here)."""
    import time

    import ray

    from bkdbench.cli.devices import DevicePlan, PendingLines

    free = {"GPU": 0.0}
    monkeypatch.setattr(ray, "available_resources", lambda: dict(free))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"GPU": 2.0})
    plan = DevicePlan([IMAGENET], None, wait=True)
    plan([2.0])
    lines: list[str] = []
    with PendingLines(plan, lines.append, every=0.05):
        time.sleep(0.4)
        free["GPU"] = 1.0  # the trial's GPU came free: nothing pending any more
        seen = len(lines)
        time.sleep(0.3)
    assert seen >= 2 and len(lines) <= seen + 1
    assert lines[0] == "waiting for resources: a trial needs 1 GPU; the cluster has 0 of 2 GPUs free"
    quiet: list[str] = []
    with PendingLines(DevicePlan([IMAGENET], None), quiet.append, every=0.05):  # not waiting: no thread
        time.sleep(0.2)
    assert quiet == []
