"""The compacted copy of a leaderboard folder (leaderboard/index.py): a read through it gives exactly
the rows of the per-run files, opens only the files that changed, and never writes into the folder."""
import os
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bkdbench.leaderboard import index, store
from test_leaderboard_store import make_row


@pytest.fixture
def opened(monkeypatch):
    """The per-run files each read opened, one list per read_rows call."""
    calls = []
    real = store._read_files

    def spy(fs, where, paths):
        calls.append(sorted(os.path.basename(p) for p in paths))
        return real(fs, where, paths)

    monkeypatch.setattr(store, "_read_files", spy)
    return calls


def _ids(frame) -> list[str]:
    return list(frame["run_id"])


def _settle(folder) -> None:
    """Date every run file a minute back: only files older than ``index.SETTLE_SECONDS`` enter the copy."""
    then = time.time_ns() - 60 * 10**9
    for path in folder.glob("*.parquet"):
        os.utime(path, ns=(then, then))


def _direct(folder) -> pd.DataFrame:
    """The folder read without bkdbench: what any Parquet reader sees."""
    frame = pd.read_parquet(folder)
    return frame.sort_values("run_id", ignore_index=True)


def test_second_read_opens_no_file_and_gives_the_same_rows(tmp_path, cache, opened):
    for i in range(5):
        store.write_row(tmp_path, make_row(f"r{i}", seed=i, top1=50.0 + i))
    _settle(tmp_path)
    first, _ = store.read_rows(tmp_path)
    index.flush()  # the copy on disk: the second read takes every row from it
    assert not index._pending
    second, skipped = store.read_rows(tmp_path)
    assert opened == [[f"r{i}.parquet" for i in range(5)]]  # the second read opened none
    assert skipped == [] and _ids(second) == [f"r{i}" for i in range(5)]
    pd.testing.assert_frame_equal(first, second)  # every column, its type and value, lists and times included
    assert list(second["top1"]) == [50.0, 51.0, 52.0, 53.0, 54.0]


def test_new_replaced_and_deleted_files_are_seen(tmp_path, cache, opened):
    tmp_path = tmp_path / "board"  # beside the cache, not above it (pandas reads folders recursively)
    for i in range(3):
        store.write_row(tmp_path, make_row(f"r{i}", seed=i, status="failed", top1=None, error="diverged"))
    _settle(tmp_path)
    store.read_rows(tmp_path)
    store.write_row(tmp_path, make_row("r1", seed=1, top1=77.5))  # a failed run re-run: its file replaced
    store.write_row(tmp_path, make_row("r9", seed=9, top1=12.0))  # a new run
    os.remove(tmp_path / "r0.parquet")
    frame, _ = store.read_rows(tmp_path)
    assert opened[-1] == ["r1.parquet", "r9.parquet"]  # only what changed
    assert _ids(frame) == ["r1", "r2", "r9"]
    assert frame.set_index("run_id").loc["r1", "status"] == "finished"
    assert frame.set_index("run_id").loc["r1", "top1"] == 77.5
    direct = _direct(tmp_path)
    assert list(direct["run_id"]) == ["r1", "r2", "r9"] and list(direct["top1"].fillna(-1)) == [77.5, -1, 12.0]


def test_the_copy_is_never_in_the_results_folder(tmp_path, cache):
    folder = tmp_path / "leaderboard"
    for i in range(3):
        store.write_row(folder, make_row(f"r{i}", seed=i))
    _settle(folder)
    before = sorted(os.listdir(folder))
    store.read_rows(folder)
    index.flush()
    assert sorted(os.listdir(folder)) == before and sorted(os.listdir(tmp_path)) == ["cache", "leaderboard"]
    copies = list((cache / "leaderboard-index").iterdir())
    assert len(copies) == 1 and pq.read_metadata(copies[0]).num_rows == 3
    assert len(_direct(folder)) == 3  # pandas on the folder: the three runs, once each


def test_a_damaged_copy_is_ignored_and_rebuilt(tmp_path, cache, opened):
    for i in range(3):
        store.write_row(tmp_path, make_row(f"r{i}", seed=i))
    _settle(tmp_path)
    store.read_rows(tmp_path)
    index.flush()
    (copy,) = (cache / "leaderboard-index").iterdir()
    copy.write_bytes(copy.read_bytes()[:100])
    frame, skipped = store.read_rows(tmp_path)
    assert skipped == [] and _ids(frame) == ["r0", "r1", "r2"] and len(opened) == 2 and len(opened[1]) == 3
    index.flush()
    store.read_rows(tmp_path)
    assert len(opened) == 2  # rebuilt: the third read opened nothing


def test_an_unwritable_cache_only_makes_reads_slower(tmp_path, monkeypatch, opened):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache would be")
    monkeypatch.setenv("BKDBENCH_CACHE", str(blocker))
    for i in range(2):
        store.write_row(tmp_path / "board", make_row(f"r{i}", seed=i))
    for _ in range(2):
        frame, skipped = store.read_rows(tmp_path / "board")
        index.flush()  # fails quietly
        assert _ids(frame) == ["r0", "r1"] and skipped == []
    assert opened == [["r0.parquet", "r1.parquet"]] * 2


def test_an_unreadable_file_is_named_on_every_read_and_never_copied(tmp_path, cache, opened):
    store.write_row(tmp_path, make_row("good", seed=0))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    _settle(tmp_path)
    for _ in range(2):
        frame, skipped = store.read_rows(tmp_path)
        assert _ids(frame) == ["good"] and [os.path.basename(p) for p in skipped] == ["bad.parquet"]
    assert opened[1] == ["bad.parquet"]  # the good file came from the copy, the bad one was tried again


def test_a_copy_of_another_schema_is_not_used(tmp_path, cache):
    """The copy is named by the schema too: a bkdbench with another schema never reads this one."""
    import pyarrow as pa

    other = pa.schema(list(store.SCHEMA) + [pa.field("new_column", pa.string())])
    assert index.index_path(str(tmp_path), other) != index.index_path(str(tmp_path), store.SCHEMA)


def test_a_file_replaced_within_its_second_with_the_same_size_is_seen(tmp_path, cache, opened, monkeypatch):
    """Object stores date files to the second: a row rewritten in the same second, same size, has the
    same listing. Files that new never enter the copy, so the next read opens them again."""
    store.write_row(tmp_path, make_row("r0", top1=10.0))
    stamp = (tmp_path / "r0.parquet").stat().st_mtime_ns
    # Every listing dated the instant the file was written (the clock injected, not raced: a stall
    # of the test here once made the file look settled).
    monkeypatch.setattr(index, "now_ns", lambda: stamp)
    first, _ = store.read_rows(tmp_path)
    index.flush()
    size = (tmp_path / "r0.parquet").stat().st_size
    store.write_row(tmp_path, make_row("r0", top1=20.0))  # one float for another: the same size
    assert (tmp_path / "r0.parquet").stat().st_size == size
    os.utime(tmp_path / "r0.parquet", ns=(stamp, stamp))  # and the same time, as within one second
    second, _ = store.read_rows(tmp_path)
    assert list(first["top1"]) == [10.0] and list(second["top1"]) == [20.0] and len(opened) == 2


def test_on_s3_settled_objects_come_from_the_copy(cache, opened, monkeypatch):
    """moto's S3 server: the listing's names and (whole-second) times serve the copy as on disk."""
    from helpers.s3_server import s3_endpoint

    monkeypatch.setattr(index, "SETTLE_SECONDS", 1)
    with s3_endpoint("board") as s3:
        board = s3.uri("results/leaderboard")
        for i in range(3):
            store.write_row(board, make_row(f"r{i}", seed=i))
        time.sleep(2.1)  # older than SETTLE_SECONDS by the listing's whole seconds, whatever the rounding
        store.read_rows(board)
        index.flush()
        store.write_row(board, make_row("r1", seed=1, top1=99.0))  # replaced: a later second
        second, skipped = store.read_rows(board)
    assert opened == [["r0.parquet", "r1.parquet", "r2.parquet"], ["r1.parquet"]] and skipped == []
    assert _ids(second) == ["r0", "r1", "r2"] and list(second["top1"]) == [71.25, 99.0, 71.25]
