"""Shared fixtures for the core-layer tests."""
from __future__ import annotations

import os
import shutil
import sys

# One OpenMP/BLAS thread per process unless a test asks for more: the quick tests run as two xdist
# workers beside the slow lane on two cores, and start CLI subprocesses of their own; at torch's
# default (a thread per core) the threads outnumber the cores and OpenMP's spinning waits burn the
# difference (a 15-epoch digits run took 64 s with 2 threads against 8 s with 1 under load). Set before
# numpy and torch are imported; subprocesses and Ray's workers inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
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
    Without xdist the marker does nothing. With ``--slow-shard K/N`` only one shard of the slow files
    outside ``CORE_SLOW`` is kept (slow_shards)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            name = item.path.name
            item.add_marker(pytest.mark.xdist_group(_SHARED_GROUPS.get(name, name)))
    shard = config.getoption("--slow-shard")
    if shard:
        keep, drop = split_slow(items, shard)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


# --- slow tests: a core every run, the rest in rotating shards ----------------------------------

# The slow tests every `make test` runs: one end-to-end run through Ray of `run` (packed, mirrored to
# MLflow, nothing left to do the second time, the report in Chromium), of `sweep` and of `ablate`. A
# file's name alone would mean all its tests.
CORE_SLOW = ("test_suite_runner.py::test_mini_suite_then_nothing_to_do",
             "test_suite_runner.py::test_suite_through_ray_mirrors_every_trial_to_mlflow",
             "test_suite_runner.py::test_report_of_the_suites_own_rows",
             "test_suite_runner.py::test_local_run_starts_its_own_ray",
             "test_sweep.py::test_tiny_sweep_end_to_end", "test_sweep.py::test_sweep_report_reprints_the_sweep",
             "test_ablate.py::test_tiny_ablation_through_ray")
# Seconds each shard unit took in one sequential run of every slow test (2 cores, a niced CPU job
# beside them, 2026-12-06), to balance the shards; a unit not listed counts 60. A unit is one test,
# or a whole file where its tests share a module fixture that is itself a Ray run (shard_unit).
SLOW_SECONDS = {
    "test_sweep_workers.py::test_two_worker_search_trials_are_pruned_and_recorded_as_one_worker_ones": 223,
    "test_sweep_spaces_asha.py": 222, "test_workers.py": 164, "test_sweep_pruning.py": 42, "test_wheel.py": 65,
    "test_sweep_sh.py::test_sh_sweep_end_to_end_survives_a_sigkill": 146,
    "test_sweep_sh.py::test_hyperband_brackets_through_ray": 90,
    "test_storage.py::test_killed_driver_resumes_from_s3[checkpoints-gone]": 144,
    "test_storage.py::test_killed_driver_resumes_from_s3[as-left]": 125,
    "test_storage.py::test_sigkilled_sweep_on_s3_resumes_from_the_bucket": 120,
    "test_storage.py::test_suite_on_s3_end_to_end": 60,
    "test_storage.py::test_two_node_cluster_shares_s3_storage": 46,
    "test_storage.py::test_unreachable_endpoint_exits_2": 11,
    "test_storage_gcs.py::test_sigkilled_sweep_on_gcs_resumes_from_the_bucket": 107,
    "test_storage_gcs.py::test_suite_on_gcs_end_to_end": 57,
    "test_sweep.py::test_resume_continues_numbering": 133,
    "test_sweep.py::test_sigkilled_sweep_driver_resumes": 98,
    "test_plugins_ray.py::test_a_plugin_method_trains_on_the_second_node_in_a_suite_an_ablation_and_a_sweep": 131,
    "test_cluster.py::test_a_two_worker_trial_across_two_nodes_survives_losing_one": 130,
    "test_cluster.py::test_killed_driver_resumes_without_duplicates": 90,
    "test_cluster.py::test_suite_survives_losing_a_worker_node": 72,
    "test_cluster.py::test_a_driver_without_the_clusters_token_is_refused_clearly": 38,
    "test_cluster.py::test_full_storage_fails_clearly_and_keeps_rows": 37,
    "test_cluster.py::test_node_local_storage_is_refused": 17,
    # the --pack 1 run mirrored to W&B and its two readers (the packed run they compare with is the core's)
    "test_suite_runner.py": 90,
    "test_suite_runner.py::test_sigint_then_resume": 120,
    "test_suite_runner.py::test_resume_with_narrower_filters_then_full_resume": 93,
    "test_suite_runner.py::test_sigint_in_student_stage_then_resume": 83,
    "test_suite_runner.py::test_diverging_runs_fail_alone_and_the_cli_exits_1_naming_them": 58,
    "test_ablate.py::test_sigkilled_ablation_resumes_each_run_once_from_its_checkpoint": 86,
    "test_ablate.py::test_packed_ablation_through_ray_then_resume_trains_nothing": 47,
    "test_two_drivers.py::test_two_drivers_on_one_results_folder_train_each_run_once": 102,
    "test_large_benchmarks_train.py::test_places_lt_lists_through_ray_learn_and_write_their_row": 30,
    "test_sweep_packed.py::test_packed_sweep_through_ray": 22,
    "test_gpu_allocation.py::test_a_declared_gpu_that_torch_cannot_see_fails_the_trial_at_once": 21,
    "test_gpu_check.py::test_gpu_check_runs_without_ray_optuna_or_an_installed_pydantic": 16,
    "test_foundation_runs.py::test_bkd_student_of_a_lift_teacher": 12,
    "test_foundation_runs.py::test_the_four_methods_train_on_digits": 2,
    "test_foundation_runs.py::test_packed_students_of_a_foundation_teacher_match_separate_runs": 2,
}
# Module fixtures cheap to start once more in another shard (a moto or emulator server, not a Ray run).
_CHEAP_MODULE_FIXTURES = {"s3", "gcs"}


def pytest_report_header(config):
    shard = config.getoption("--slow-shard")
    if shard:
        return (f"slow tests: the core (conftest.CORE_SLOW) and shard {shard} of the others; "
                "`make test-all` runs every slow test")
    return None


def pytest_addoption(parser):
    parser.addoption("--slow-shard", default=None, metavar="K/N",
                     help="run the CORE_SLOW tests and only the K-th (0-based) of N balanced shards of the other "
                          "slow tests (make test: K from the commit; make test-all: all of them)")


def is_core(item) -> bool:
    name = f"{item.path.name}::{item.name.split('[')[0]}"
    return any(name == core or item.path.name == core for core in CORE_SLOW)


def shard_unit(item) -> str:
    """The unit of a slow test in the shards: its whole file where it shares a costly module fixture
    with the file's other tests (that fixture then runs once), itself otherwise."""
    for name, defs in item._fixtureinfo.name2fixturedefs.items():
        if defs and defs[-1].scope == "module" and name not in _CHEAP_MODULE_FIXTURES:
            return item.path.name
    return f"{item.path.name}::{item.name}"


def slow_shards(units, n: int) -> list[set]:
    """``units`` in ``n`` shards of about equal time: the longest first, each to the lightest shard
    so far."""
    shards = [(0.0, i, set()) for i in range(n)]
    for name in sorted(units, key=lambda u: (-SLOW_SECONDS.get(u, 60.0), u)):
        load, i, members = min(shards, key=lambda s: (s[0], s[1]))
        members.add(name)
        shards[i] = (load + SLOW_SECONDS.get(name, 60.0), i, members)
    return [members for _, _, members in shards]


def split_slow(items, shard: str):
    """(kept, deselected) items for ``--slow-shard K/N``: every slow test outside the core in one
    shard, a file's tests together where they share a costly module fixture (shard_unit)."""
    try:
        k, n = (int(x) for x in shard.split("/"))
        assert 0 <= k < n
    except (ValueError, AssertionError):
        raise pytest.UsageError(f"--slow-shard wants K/N with 0 <= K < N (got {shard!r})") from None
    rest = [i for i in items if i.get_closest_marker("slow") and not is_core(i)]
    chosen = slow_shards({shard_unit(i) for i in rest}, n)[k]
    dropped = {id(i) for i in rest if shard_unit(i) not in chosen}
    return [i for i in items if id(i) not in dropped], [i for i in items if id(i) in dropped]


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
