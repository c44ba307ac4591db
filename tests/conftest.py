"""Shared fixtures for the core-layer tests."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from cifar_files import write_cifar10, write_cifar100


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    """One folder holding full-size generated ``cifar-10-batches-py`` and ``cifar-100-python``
    (50,000 + 10,000 images each, the real class layout), written once per session."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    write_cifar100(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)  # ~370 MB; pytest would otherwise keep the last 3 sessions'


def _reference_longtail(targets, counts, data_seed):
    """The reference procedure (Cao et al. 2019), written out independently of bkdbench:
    seed NumPy's global generator, then per class in label order shuffle its indices and keep n_c.
    Returns (kept indices, per-class leftover indices). Restores the global state afterwards."""
    targets = np.asarray(targets)
    saved = np.random.get_state()
    try:
        np.random.seed(data_seed)
        kept, rest = [], []
        for c, n_c in enumerate(counts):
            idx = np.where(targets == c)[0]
            np.random.shuffle(idx)
            kept.append(idx[:n_c])
            rest.append(idx[n_c:])
    finally:
        np.random.set_state(saved)
    return np.concatenate(kept), rest


def _reference_counts(n_max, num_classes, imbalance_factor):
    """n_i = int(n_max * (1/IF)^(i/(C-1))), the exponential profile of REFERENCE.md §1."""
    return [int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1.0))) for i in range(num_classes)]


@pytest.fixture(scope="session")
def reference_longtail():
    return _reference_longtail


@pytest.fixture(scope="session")
def reference_counts():
    return _reference_counts


@pytest.fixture
def one_thread():
    """One torch thread for the test: two threads on a shared 2-core machine are far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """bkdbench's cache (``BKDBENCH_CACHE``) in this test's own folder."""
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
