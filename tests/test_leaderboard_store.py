"""The Parquet leaderboard store: round trips, atomic parallel writes, corrupt files, errors."""
import datetime as dt
import json
import math
import os
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pandas as pd
import pytest

from bkdbench.leaderboard import store
from helpers.files import tree


def make_row(run_id, **overrides):
    row = {
        "run_id": run_id, "suite": "digits-lt", "dataset": "digits", "imbalance_factor": 10.0,
        "profile": "exp", "data_seed": 0, "model": "mlp", "method": "bkd",
        "params": {"temperature": 2, "alpha": 0.5}, "recipe": {"epochs": 3, "lr": 0.1},
        "epochs": 3, "seed": 1, "status": "finished", "top1": 71.25, "top1_best_epoch": 72.5,
        "best_epoch": 2, "val_top1": 70.0, "many": 90.0, "medium": 70.0, "few": 40.0,
        "ece": 5.5, "nll": 0.875, "per_class_acc": [95.0, 60.0, 30.5],
        "class_counts": [500, 50, 5], "train_seconds": 12.5, "images_per_second": 4000.0,
        "device": "cpu", "host": "box", "bkdbench_version": "0.1.0", "git_sha": "abc123",
        "torch_version": "2.11.0",
        "started_at": dt.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc),
        "finished_at": dt.datetime(2025, 1, 2, 3, 5, 0, tzinfo=dt.timezone.utc),
    }
    row.update(overrides)
    return row


def test_schema_has_exactly_the_documented_columns():
    assert store.SCHEMA_VERSION == 1
    # the 38 of DESIGN.md plus the shot thresholds, `extra`, `data_key`, `history`, `split`, `workers`, `pretrained`,
    # the reproduction provenance (`resize` ... `select`, docs/published.md), the foundation three, `plugins`,
    # `val_per_class`
    assert len(store.COLUMNS) == 57
    assert store.SCHEMA.field("split").type == pa.string() and store.SCHEMA.field("split").nullable
    assert store.COLUMNS.index("split") == 43  # added late and nullable: older files read back (as "reference")
    assert store.COLUMNS[44] == "workers" and store.SCHEMA.field("workers").nullable  # null: one process
    assert store.COLUMNS[45] == "pretrained" and store.SCHEMA.field("pretrained").nullable  # null: from scratch
    provenance = ("resize", "effective_batch", "precision", "recipe_name", "recipe_hash", "select")
    assert store.COLUMNS[46:52] == provenance and all(store.SCHEMA.field(c).nullable for c in provenance)
    assert store.COLUMNS[52:55] == ("weights", "seen_in1k", "teacher")  # foundation runs only (docs/foundation.md)
    assert all(store.SCHEMA.field(c).nullable for c in store.COLUMNS[52:55]) and store.SCHEMA.field("seen_in1k").type == pa.bool_()
    assert store.COLUMNS[55] == "plugins" and store.SCHEMA.field("plugins").nullable  # null: built-in parts only
    assert store.COLUMNS[56] == "val_per_class" and store.SCHEMA.field("val_per_class").nullable  # null: the dataset's V
    assert store.SCHEMA.field("many_threshold").type == pa.int64()
    assert store.SCHEMA.field("per_class_acc").type == pa.list_(pa.float64())
    assert store.SCHEMA.field("class_counts").type == pa.list_(pa.int64())
    assert store.SCHEMA.field("finished_at").type == pa.timestamp("us", tz="UTC")
    assert store.SCHEMA.field("schema_version").type == pa.int32()


def test_round_trip_keeps_every_value(tmp_path):
    row = make_row("r1")
    path = store.write_row(tmp_path, row)
    assert path == str(tmp_path / "r1.parquet")
    frame, skipped = store.read_rows(tmp_path)
    assert skipped == [] and len(frame) == 1
    got = frame.iloc[0]
    assert got["schema_version"] == 1
    for key in ("run_id", "suite", "dataset", "method", "status", "device", "git_sha", "host"):
        assert got[key] == row[key]
    for key in ("imbalance_factor", "top1", "top1_best_epoch", "val_top1", "many", "medium",
                "few", "ece", "nll", "train_seconds", "images_per_second"):
        assert got[key] == pytest.approx(row[key])
    for key in ("data_seed", "epochs", "seed", "best_epoch"):
        assert int(got[key]) == row[key]
    assert list(got["per_class_acc"]) == [95.0, 60.0, 30.5]
    assert list(got["class_counts"]) == [500, 50, 5]
    assert got["started_at"] == pd.Timestamp("2025-01-02T03:04:05.123456Z")
    # Canonical JSON: sorted keys, no spaces.
    assert got["params"] == '{"alpha":0.5,"temperature":2}'
    assert json.loads(got["recipe"]) == {"epochs": 3, "lr": 0.1}


def test_other_readers_read_the_folder(tmp_path):
    for i in range(3):
        store.write_row(tmp_path, make_row(f"r{i}", seed=i, top1=60.0 + i))
    table = pads.dataset(str(tmp_path), format="parquet").to_table()
    assert sorted(table.column("top1").to_pylist()) == [60.0, 61.0, 62.0]
    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["seed"]) == [0, 1, 2]


def test_duckdb_reads_the_folder(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    store.write_row(tmp_path, make_row("r1"))
    count = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/*.parquet')").fetchall()[0][0]  # DuckDB 2 has no fetchone
    assert count == 1


def test_missing_keys_are_null_and_unknown_keys_rejected(tmp_path):
    store.write_row(tmp_path, {"run_id": "bare", "status": "failed", "error": "boom"})
    frame, _ = store.read_rows(tmp_path)
    assert frame.loc[0, "error"] == "boom"
    assert pd.isna(frame.loc[0, "top1"]) and frame.loc[0, "per_class_acc"] is None
    with pytest.raises(ValueError, match="accuracy, colour"):
        store.write_row(tmp_path, {"run_id": "x", "colour": 1, "accuracy": 2})
    with pytest.raises(ValueError, match="status"):
        store.write_row(tmp_path, {"run_id": "x", "status": "done"})
    with pytest.raises(ValueError, match="run_id"):
        store.write_row(tmp_path, {"run_id": "../escape"})


def test_same_run_id_replaces_the_old_file(tmp_path):
    store.write_row(tmp_path, make_row("r1", status="failed", top1=None, error="oom"))
    assert store.finished_run_ids(tmp_path) == set()
    store.write_row(tmp_path, make_row("r1", top1=80.0))
    frame, _ = store.read_rows(tmp_path)
    assert len(frame) == 1 and frame.loc[0, "top1"] == 80.0 and frame.loc[0, "status"] == "finished"
    assert store.finished_run_ids(tmp_path) == {"r1"}


def test_filters_by_equality_and_lists(tmp_path):
    store.write_row(tmp_path, make_row("a", dataset="digits", method="ce"))
    store.write_row(tmp_path, make_row("b", dataset="digits", method="bkd", imbalance_factor=100))
    store.write_row(tmp_path, make_row("c", dataset="fashion", method="ldam", status="failed"))
    ids = lambda **f: sorted(store.read_rows(tmp_path, **f)[0]["run_id"])  # noqa: E731
    assert ids(dataset="digits") == ["a", "b"]
    assert ids(method=["ce", "ldam"]) == ["a", "c"]
    assert ids(imbalance_factor=100) == ["b"]
    assert ids(status="finished", dataset=None) == ["a", "b"]
    with pytest.raises(ValueError, match="per_class_acc"):
        store.read_rows(tmp_path, per_class_acc=[1.0])


def test_missing_or_empty_root_gives_empty_frame_with_columns(tmp_path):
    for root in (tmp_path / "nothing-here", tmp_path):
        frame, skipped = store.read_rows(root)
        assert frame.empty and list(frame.columns) == list(store.COLUMNS) and skipped == []
    assert store.finished_run_ids(tmp_path / "nothing-here") == set()


def test_corrupt_and_truncated_files_are_skipped_and_named(tmp_path):
    store.write_row(tmp_path, make_row("good", seed=1))
    store.write_row(tmp_path, make_row("victim", seed=2))
    whole = (tmp_path / "victim.parquet").read_bytes()
    (tmp_path / "victim.parquet").write_bytes(whole[: len(whole) // 2])  # truncated
    (tmp_path / "noise.parquet").write_bytes(os.urandom(3000))  # random bytes
    (tmp_path / ".left-over.parquet.123.tmp").write_bytes(b"half")  # a dead writer's temp file
    frame, skipped = store.read_rows(tmp_path)
    assert list(frame["run_id"]) == ["good"]
    assert sorted(os.path.basename(p) for p in skipped) == ["noise.parquet", "victim.parquet"]


def test_file_uri_root(tmp_path):
    uri = tmp_path.as_uri()
    store.write_row(uri, make_row("u1"))
    assert (tmp_path / "u1.parquet").exists()
    frame, _ = store.read_rows(uri)
    assert list(frame["run_id"]) == ["u1"]
    fs, path = store.resolve(uri)
    assert isinstance(fs, pa.fs.LocalFileSystem) and path == str(tmp_path)


def test_check_writable(tmp_path):
    store.check_writable(tmp_path / "new" / "leaderboard")
    assert tree(tmp_path) == []  # proved at the nearest existing folder, nothing made, the probe removed
    (tmp_path / "old").mkdir()
    store.check_writable(tmp_path / "old")
    assert tree(tmp_path) == ["old/"]
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    if not os.access(readonly, os.W_OK):  # root ignores the mode (CI runs as root)
        with pytest.raises(store.LeaderboardError, match="cannot write"):
            store.check_writable(readonly / "new" / "leaderboard")
        assert tree(readonly) == []
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(store.LeaderboardError, match="cannot write"):
        store.check_writable(blocker / "leaderboard")
    assert issubclass(store.LeaderboardError, ValueError)
    with pytest.raises(store.LeaderboardError):
        store.check_writable("nosuchscheme://bucket/x")


WRITER = textwrap.dedent("""
    import sys, time
    from bkdbench.leaderboard.store import write_row
    root, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    time.sleep(max(0.0, start - time.time()))  # both start writing at the same moment
    for i in range(50):
        write_row(root, {"run_id": f"{tag}-{i}", "status": "finished", "top1": float(i),
                         "dataset": "digits", "seed": i, "per_class_acc": [float(i)] * 200})
        # Both writers also hammer the same run_ids: the loser's file must replace, not corrupt.
        write_row(root, {"run_id": f"shared-{i % 5}", "status": "finished", "host": tag})
""")


def test_two_processes_writing_at_once(tmp_path):
    root = str(tmp_path / "lb")
    start = str(time.time() + 1.5)  # after both interpreters have imported pyarrow
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, root, tag, start]) for tag in ("p", "q")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    frame, skipped = store.read_rows(root)
    assert skipped == []
    mine = frame[~frame["run_id"].str.startswith("shared-")]
    assert len(mine) == 100 and mine["run_id"].nunique() == 100
    assert sorted(frame.loc[frame["run_id"].str.startswith("shared-"), "run_id"]) == \
        [f"shared-{i}" for i in range(5)]
    assert [name for name in tree(root) if not name.endswith(".parquet")] == []  # no temp file left
    assert all(math.isclose(v, int(r.split("-")[1])) for r, v in zip(mine["run_id"], mine["top1"]))
    assert pq.read_table(os.path.join(root, "p-7.parquet")).num_rows == 1
