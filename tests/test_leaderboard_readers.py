"""The leaderboard without bkdbench, as the README promises: DuckDB and polars read the Parquet folder
on disk and on an S3 endpoint (moto's server), files written before the ``history`` column
included, and get the rows and numbers the store wrote. ``bkdbench report`` reads the bucket too."""
from __future__ import annotations

import json
import uuid

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bkdbench.leaderboard.store import write_row
from bkdbench.paths import leaderboard_dir
from bkdbench.storage import Location
from helpers.report_rows import SUITE_TOP1, row, write_suite_rows
from helpers.s3_server import s3_endpoint

duckdb = pytest.importorskip("duckdb")
polars = pytest.importorskip("polars")
MEANS = {method: sum(v) / len(v) for method, v in SUITE_TOP1.items()}


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("moto.server")
    with s3_endpoint("bkd-readers") as endpoint:
        yield endpoint


def local_board(tmp_path):
    write_suite_rows(tmp_path)
    board = leaderboard_dir(tmp_path).local
    # One file as an older bkdbench wrote it: no history column.
    path = write_row(leaderboard_dir(tmp_path), row("old-ce", "ce", 7, 50.0, suite="older"))
    pq.write_table(pq.read_table(path).drop_columns(["history"]), path)
    return board


def test_duckdb_reads_the_local_leaderboard(tmp_path):
    board = local_board(tmp_path)
    query = f"read_parquet('{board}/*.parquet', union_by_name = true)"
    means = dict(duckdb.sql(f"select method, avg(top1) from {query} where suite = 'digits-lt' group by method").fetchall())
    assert means == pytest.approx(MEANS)
    (count, missing) = duckdb.sql(f"select count(*), count(*) filter (history is null) from {query}").fetchall()[0]
    assert (count, missing) == (10, 1)
    epochs = duckdb.sql(f"select history from {query} where run_id = 'bkd-s1'").fetchall()[0][0]
    assert [e["epoch"] for e in json.loads(epochs)] == [0, 1, 2]
    (per_class,) = duckdb.sql(f"select per_class_acc from {query} where run_id = 'kd-s0'").fetchall()[0]
    assert len(per_class) == 10 and per_class[0] == pytest.approx(83.0)


def test_polars_reads_the_local_leaderboard(tmp_path):
    board = local_board(tmp_path)
    frame = polars.read_parquet(f"{board}/*.parquet", missing_columns="insert")
    assert frame.height == 10 and frame.filter(polars.col("history").is_null())["run_id"].to_list() == ["old-ce"]
    means = frame.filter(polars.col("suite") == "digits-lt").group_by("method").agg(polars.col("top1").mean())
    assert dict(zip(means["method"], means["top1"])) == pytest.approx(MEANS)
    assert frame.filter(polars.col("run_id") == "ce-s2")["git_sha"].item() == "abc123def4567890"


def write_to_bucket(s3):
    uri = s3.uri(f"board-{uuid.uuid4().hex[:6]}")
    write_suite_rows(Location(uri))
    return uri, leaderboard_dir(uri)


def test_duckdb_reads_the_leaderboard_on_s3(s3):
    """DuckDB queries the bucket through an Arrow dataset on pyarrow's S3 filesystem (DuckDB's own
    httpfs extension is a download, which this machine cannot make)."""
    import pyarrow.dataset as ds

    _, board = write_to_bucket(s3)
    fs, path = board.filesystem()
    leaderboard = ds.dataset(path, filesystem=fs, format="parquet")  # noqa: F841  (DuckDB finds it by name)
    means = dict(duckdb.sql("select method, avg(top1) from leaderboard group by method").fetchall())
    assert means == pytest.approx(MEANS)
    assert duckdb.sql("select count(distinct run_id) from leaderboard").fetchall()[0][0] == 9


def test_polars_reads_the_leaderboard_on_s3(s3):
    """polars speaks S3 itself: the endpoint and credentials as its storage options."""
    uri, board = write_to_bucket(s3)
    key = str(board).split("?")[0]
    options = {"aws_endpoint_url": s3.url, "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
               "aws_region": "us-east-1", "aws_allow_http": "true"}
    frame = polars.read_parquet(f"{key}/*.parquet", storage_options=options)
    assert frame.height == 9
    means = frame.group_by("method").agg(polars.col("top1").mean())
    assert dict(zip(means["method"], means["top1"])) == pytest.approx(MEANS)


def test_report_of_a_leaderboard_on_s3(s3, tmp_path):
    from bkdbench.cli.app import app

    uri, _ = write_to_bucket(s3)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "--suite", "digits-lt", "--results", uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    runs = json.loads((out / "runs.json").read_text())
    assert sorted(r["run_id"] for r in runs) == sorted(f"{m}-s{s}" for m in SUITE_TOP1 for s in range(3))
    assert (out / "figures" / "per-class-digits-if10.png").stat().st_size > 10_000
