"""Shared fixtures for the core-layer tests."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from cifar_files import write_cifar10, write_cifar100
from helpers.ray_tmp import made_count, process_token_file, ray_tmpdir, remove, sessions_in_folders_made_since


# --- pytest-xdist (`make test` runs the quick tests with -n 2 --dist loadgroup) ---------------

# Files whose tests share one session fixture that is costly to build: one group, one worker.
_SHARED_GROUPS = {"test_cifar.py": "cifar_root", "test_validation_split.py": "cifar_root"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Each test file is one xdist group (its module fixtures then run once, in one worker), except
    the files of ``_SHARED_GROUPS``, which share a group (the 370-MB ``cifar_root`` is written once).
    Without xdist the marker does nothing."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            name = item.path.name
            item.add_marker(pytest.mark.xdist_group(_SHARED_GROUPS.get(name, name)))


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


def _one_torch_thread():
    """One torch thread while the fixture lives: two threads on a shared 2-core machine are far slower
    (a 15-epoch digits run took 64 s with 2 threads vs 8 s with 1 under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread for the test (whatever the test sets meanwhile is undone afterwards)."""
    yield from _one_torch_thread()


@pytest.fixture(scope="module")
def one_thread_for_module():
    """One torch thread for a whole module: for module-scoped fixtures that train."""
    yield from _one_torch_thread()


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """bkdbench's cache in this session's own folder unless a test sets its own (``cache``): no test
    reads or writes ~/.cache/bkdbench (decoded datasets, the leaderboard's compacted copies)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("BKDBENCH_CACHE", str(tmp_path_factory.mktemp("bkdbench-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True, scope="session")
def _own_ray_token():
    """Ray started in this process reads its token from a file of this process (``RAY_AUTH_TOKEN_PATH``),
    never ~/.ray/auth_token, which Ray writes non-atomically when it is missing and which every Ray
    user on the machine shares (CLI subprocesses get one of their own: helpers.cli.cli_env)."""
    patch = pytest.MonkeyPatch()
    patch.delenv("RAY_AUTH_TOKEN", raising=False)
    patch.setenv("RAY_AUTH_TOKEN_PATH", process_token_file())
    yield
    patch.undo()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """bkdbench's cache (``BKDBENCH_CACHE``) in this test's own folder."""
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- no Ray in a test not marked slow ---------------------------------------------------------

_checked = {"ray_tmps": 0}  # how many of helpers.ray_tmp's folders earlier tests account for


@pytest.fixture(autouse=True)
def _ray_only_in_slow_tests(request):
    """A test that starts Ray must be marked slow (``-m "not slow"`` is the quick run). For a test
    not so marked this fails it if Ray was started during it, its module-scoped fixtures included:
    in this process (Ray still initialised afterwards, or a session in the private RAY_TMPDIR this
    fixture gives the test) or in a CLI subprocess (each gets a private Ray temp folder from
    helpers.cli.cli_env). A Ray session leaves a ``session_*`` folder in its temp folder; for one
    a test has removed already (helpers.processes.cleanup_ray_tmp), helpers.ray_tmp remembers it."""
    slow = request.node.get_closest_marker("slow") is not None
    mine = None
    with pytest.MonkeyPatch.context() as mp:
        if not slow:
            mine = ray_tmpdir()
            mp.setenv("RAY_TMPDIR", mine)
        yield
    since, _checked["ray_tmps"] = _checked["ray_tmps"], made_count()
    if slow:
        return
    sessions = sessions_in_folders_made_since(since)
    running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if running:
        sys.modules["ray"].shutdown()  # not left to the tests after this one
    if not sessions:
        remove(mine)
    if sessions or running:
        pytest.fail(f"{request.node.nodeid} started Ray ({'still running in this process; ' if running else ''}"
                    f"sessions: {sessions or 'none on disk'}) but is not marked slow: "
                    "add @pytest.mark.slow (or pytestmark = pytest.mark.slow)", pytrace=False)
