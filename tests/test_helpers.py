"""The shared test helpers themselves: the one "nothing was written" check, waiting, and how a Ray
session is recognised in a temp folder (the guard in conftest relies on it)."""
from __future__ import annotations

import os

import pytest

from helpers.files import assert_nothing_written, nothing_written, snapshot, tree
from helpers.processes import wait_for, wait_gone
from helpers.ray_tmp import ray_sessions


def test_tree_lists_files_and_folders_relative_and_a_missing_folder_is_empty(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "f.txt").write_text("x")
    (tmp_path / "g").write_text("y")
    assert tree(tmp_path) == ["a/", "a/b/", "a/f.txt", "g"]
    assert tree(tmp_path / "missing") == []


@pytest.mark.parametrize("change, named", [
    (lambda root: (root / "new.txt").write_text("n"), "new: new.txt"),
    (lambda root: (root / "empty").mkdir(), "new: empty/"),
    (lambda root: (root / "kept.txt").unlink(), "removed: kept.txt"),
    (lambda root: (root / "kept.txt").write_text("other"), "rewritten: kept.txt"),
    (lambda root: os.utime(root / "kept.txt", ns=(0, 0)), "rewritten: kept.txt"),  # same bytes, written again
])
def test_nothing_written_names_what_was(tmp_path, change, named):
    (tmp_path / "kept.txt").write_text("k")
    with nothing_written(tmp_path):
        (tmp_path / "kept.txt").read_text()  # reading is no writing
    with pytest.raises(AssertionError, match=named):
        with nothing_written(tmp_path):
            change(tmp_path)


def test_a_folder_that_appears_is_written_and_empty_folders_can_be_allowed(tmp_path):
    target = tmp_path / "results"
    before = snapshot(target)
    (target / "leaderboard").mkdir(parents=True)
    with pytest.raises(AssertionError, match="itself"):
        assert_nothing_written(before, target)
    assert_nothing_written(before, target, allow_empty_folders=True)
    (target / "leaderboard" / "row.parquet").write_bytes(b"")
    with pytest.raises(AssertionError, match="new: leaderboard/row.parquet"):
        assert_nothing_written(before, target, allow_empty_folders=True)


def test_wait_for_returns_the_value_and_names_what_it_waited_for():
    calls = []
    assert wait_for(lambda: calls.append(1) or len(calls) >= 3 and "ready", timeout=5, every=0.01) == "ready"
    with pytest.raises(AssertionError, match="timed out after 0.05 s waiting for the thing; log: empty"):
        wait_for(lambda: None, timeout=0.05, every=0.01, what=lambda: "the thing; log: empty")
    assert wait_gone(lambda: {1}, timeout=0.05, every=0.01) == {1}
    assert wait_gone(lambda: set(), timeout=5) == set()


def test_ray_sessions_are_found_where_ray_puts_them(tmp_path):
    assert ray_sessions([tmp_path]) == []
    (tmp_path / "ray" / "session_2025-01-01_00-00-00_000000_123").mkdir(parents=True)  # RAY_TMPDIR/ray/...
    (tmp_path / "session_latest").mkdir()  # a temp dir given to ray.init itself
    assert ray_sessions([tmp_path]) == [str(tmp_path / "ray" / "session_2025-01-01_00-00-00_000000_123"),
                                        str(tmp_path / "session_latest")]
