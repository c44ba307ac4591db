"""Memory that fits: a split goes onto a GPU only when half of the trial's share of it holds the
split (data/imagenet_augment.py ``fits_on``), so four quarter-GPU trials never each claim half of
the whole device. CUDA's memory queries are stood in for, so this runs on any machine."""
from __future__ import annotations

import pytest
import torch

from bkdbench.data import imagenet_augment as aug

GB = 10**9


@pytest.fixture
def h100(monkeypatch):
    """An 80 GB device with 70 GB free, of which this process holds 2 GB already."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * GB, 80 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * GB)
    monkeypatch.delenv(aug.HOST_ENV, raising=False)
    return torch.device("cuda")


def test_a_whole_gpu_uses_half_its_free_memory(h100, monkeypatch):
    monkeypatch.delenv(aug.SHARE_ENV, raising=False)
    assert aug.device_budget(h100) == 70 * GB
    assert aug.fits_on(35 * GB, h100) and not aug.fits_on(35 * GB + 1, h100)


def test_a_quarter_gpu_counts_its_share(h100, monkeypatch):
    monkeypatch.setenv(aug.SHARE_ENV, "0.25")
    assert aug.device_budget(h100) == 20 * GB - 2 * GB  # a quarter of 80 GB, less what it holds
    assert aug.fits_on(9 * GB, h100)
    # ImageNet-LT's 22.8 GB uint8 training split stays in host memory for a quarter-GPU trial
    assert not aug.fits_on(int(22.8 * GB), h100) and not aug.fits_on(9 * GB + 1, h100)


def test_the_share_never_exceeds_the_free_memory(h100, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GB, 80 * GB))
    monkeypatch.setenv(aug.SHARE_ENV, "0.5")
    assert aug.device_budget(h100) == 10 * GB


def test_the_cpu_keeps_every_split_where_it_is(monkeypatch):
    monkeypatch.setenv(aug.SHARE_ENV, "0.25")
    assert aug.fits_on(10**15, torch.device("cpu"))


def test_a_trial_records_its_share(monkeypatch):
    from bkdbench.orchestrate.trial import NoCudaDevice, use_resources

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction, device=None: None)
    monkeypatch.delenv(aug.SHARE_ENV, raising=False)
    threads = torch.get_num_threads()
    try:
        assert use_resources({"resources": {"cpu": 1, "gpu": 0.25}}) == "cuda"
        import os

        assert os.environ[aug.SHARE_ENV] == "0.25"
        assert use_resources({"resources": {"cpu": 1, "gpu": 0}}) == "cpu"  # never an unbooked GPU
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(NoCudaDevice, match="sees no CUDA device"):
            use_resources({"resources": {"cpu": 1, "gpu": 1}})
    finally:
        torch.set_num_threads(threads)
