"""What reproducing a run needs, in every row: resize, effective batch, precision, recipe name and hash,
which epoch is reported; rows written before these columns existed still read back."""
from __future__ import annotations

import hashlib
import json

import pandas as pd

from bkdbench.leaderboard.store import read_rows, write_row
from bkdbench.paths import leaderboard_dir
from bkdbench.specs import make_spec, spec_columns
from bkdbench.training.train import train


def test_a_trained_row_carries_its_provenance(tmp_path):
    spec = make_spec("digits", 10, "ce", epochs=1)
    row = train(spec, device="cpu").to_row()
    assert row["resize"] == "none: native 8×8"
    assert row["effective_batch"] == 64  # the "small" recipe's batch, one worker
    assert row["precision"] == "fp32" and row["select"] == "last"
    assert row["recipe_name"] == "small"
    recipe = json.loads(json.dumps(row["recipe"])) if isinstance(row["recipe"], dict) else json.loads(row["recipe"])
    expected = hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert row["recipe_hash"] == expected
    board = leaderboard_dir(tmp_path)
    write_row(board, row)
    back, _ = read_rows(board)
    assert back.loc[0, "precision"] == "fp32" and back.loc[0, "effective_batch"] == 64


def test_the_recipe_hash_tells_recipes_apart():
    dive, kept = make_spec("cifar100", 100, "dive"), make_spec("cifar100", 100, "dive", params={"milestones": "recipe"})
    a, b = spec_columns(dive), spec_columns(kept)
    assert a["recipe_name"] == "reference/milestones=0.6,0.8" and b["recipe_name"] == "reference"
    assert a["recipe_hash"] != b["recipe_hash"]
    assert spec_columns(make_spec("cifar10", 100, "ce"))["resize"] == "none: native 32×32"


def test_an_old_row_without_them_still_reads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    board = tmp_path / "leaderboard"
    board.mkdir(parents=True)
    old = pa.table({"run_id": ["old1"], "schema_version": pa.array([1], pa.int32()), "dataset": ["digits"],
                    "imbalance_factor": [10.0], "method": ["ce"], "status": ["finished"], "top1": [80.0]})
    pq.write_table(old, board / "old1.parquet")
    rows, bad = read_rows(board)
    assert not bad and rows.loc[0, "top1"] == 80.0
    assert all(pd.isna(rows.loc[0, c]) for c in ("resize", "effective_batch", "precision", "recipe_hash", "select"))
