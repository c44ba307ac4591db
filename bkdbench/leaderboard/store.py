"""The leaderboard on disk: one Parquet file per run in one folder.

Every run (finished or failed) is one file ``<root>/<run_id>.parquet`` holding one row with the
columns of ``SCHEMA``. Files are written under a temporary name and renamed into place, so a
crash never leaves half a file and parallel writers never collide; a later write with the same
run_id replaces the file (a re-run of a failed run overwrites it). Any Parquet reader (pandas,
pyarrow.dataset, DuckDB, polars) reads the folder without bkdbench.

Units:
- ``top1``: the headline number, balanced test top-1 accuracy (mean per-class recall) at the
  last epoch, in percent (0-100).
- ``top1_best_epoch``: the same at the best test epoch, the papers' protocol (optimistic: the
  test set picks the epoch), in percent.
- ``val_top1``: balanced validation top-1 at the last epoch, in percent.
- ``many``/``medium``/``few``: test accuracy on the many-/medium-/few-shot classes, in percent.
- ``per_class_acc``: test accuracy of each class, in percent, in class-index order;
  ``class_counts``: the number of long-tailed training images of each class, same order.
- ``ece``: expected calibration error over 15 equal-width bins, in percent.
- ``nll``: mean test negative log-likelihood, in nats.
- ``train_seconds``: wall-clock training time; ``images_per_second``: training throughput.
- ``started_at``/``finished_at``: UTC timestamps (microseconds).
- ``data_key``: for ``imagefolder`` runs, the folder's content hash (two folders are two datasets:
  tables show them as ``imagefolder@<first 8 hex digits>``); null for built-in datasets.
- ``params`` and ``recipe``: canonical JSON (sorted keys, no spaces) of the method parameters
  and of the training recipe.
- ``history``: JSON list, one object per trained epoch (``epoch``, ``lr``, ``train_loss``,
  ``seconds``, ``images``, and ``val_top1``/``test_top1`` on the epochs that evaluated). Added
  after the first rows were written: a row stored without it reads back with a null history.
- ``split``: how the run's validation images were drawn, ``every-class`` (every class has V of
  them) or ``reference`` (the reference training set; a class without unused images has none).
  Added later: a row stored without it was a reference-split run and reads back as ``reference``.
- ``val_per_class``: the V a run chose (``--val-per-class``); null for the dataset's own V, and in
  rows stored before the column existed (which all used it).
"""
from __future__ import annotations

import datetime as dt
import json
import numbers
import os
import re

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..storage import Location, LocationError

SCHEMA_VERSION = 1

_UTC_US = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("schema_version", pa.int32(), nullable=False),
    pa.field("suite", pa.string()),
    pa.field("sweep_id", pa.string()),
    pa.field("ablation_id", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("data_key", pa.string()),  # content hash of an image folder; null for a built-in dataset
    pa.field("imbalance_factor", pa.float64()),
    pa.field("profile", pa.string()),
    pa.field("data_seed", pa.int64()),
    pa.field("model", pa.string()),
    pa.field("method", pa.string()),
    pa.field("params", pa.string()),
    pa.field("recipe", pa.string()),
    pa.field("epochs", pa.int64()),
    pa.field("seed", pa.int64()),
    pa.field("teacher_run_id", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("top1", pa.float64()),
    pa.field("top1_best_epoch", pa.float64()),
    pa.field("best_epoch", pa.int64()),
    pa.field("val_top1", pa.float64()),
    pa.field("many", pa.float64()),
    pa.field("medium", pa.float64()),
    pa.field("few", pa.float64()),
    pa.field("ece", pa.float64()),
    pa.field("nll", pa.float64()),
    pa.field("per_class_acc", pa.list_(pa.float64())),
    pa.field("class_counts", pa.list_(pa.int64())),
    # The dataset's shot split: many-shot > many_threshold images, few-shot < few_threshold.
    pa.field("many_threshold", pa.int64()),
    pa.field("extra", pa.string()),  # JSON: what a method chose while training, e.g. τ-norm's τ
    pa.field("few_threshold", pa.int64()),
    pa.field("train_seconds", pa.float64()),
    pa.field("images_per_second", pa.float64()),
    pa.field("device", pa.string()),
    pa.field("host", pa.string()),
    pa.field("bkdbench_version", pa.string()),
    pa.field("git_sha", pa.string()),
    pa.field("torch_version", pa.string()),
    pa.field("started_at", _UTC_US),
    pa.field("finished_at", _UTC_US),
    # Added later (nullable, last, so schema_version stays 1): older files read back with null here.
    pa.field("history", pa.string()),
    # How validation was drawn: "every-class" or "reference" (RunSpec.split). Rows written before the
    # column existed were all "reference" runs and read back so (read_rows).
    pa.field("split", pa.string()),
    # Data-parallel workers that trained the run (--workers-per-trial); null: one process.
    pa.field("workers", pa.int64()),
    # Content key of the weights the run started from (--pretrained); null: from scratch.
    pa.field("pretrained", pa.string()),
    # What reproducing a run needs (docs/published.md); null in rows written before they existed.
    pa.field("resize", pa.string()),  # how images reach the model's input size (interpolation, antialias)
    pa.field("effective_batch", pa.int64()),  # images per optimizer step over all workers (per worker × workers)
    pa.field("precision", pa.string()),  # e.g. "bf16 autocast, teacher fp32" or "fp32"
    pa.field("recipe_name", pa.string()),
    pa.field("recipe_hash", pa.string()),  # SHA-256 (16 hex) of the recipe column's canonical JSON
    pa.field("select", pa.string()),  # which epoch's weights the row reports: "last" or "best-val"
    # Foundation models (docs/foundation.md): the weights' tag, "none" or "file:<content key>"; whether
    # the run's (or its teacher's) starting weights have seen ImageNet-1k labels; a foundation teacher
    # as MODEL:METHOD. Null for every other run.
    pa.field("weights", pa.string()),
    pa.field("seen_in1k", pa.bool_()),
    pa.field("teacher", pa.string()),
    # The outside code the run used (bkdbench.plugins): "module@digest", comma-separated; null: built in only.
    pa.field("plugins", pa.string()),
    # Validation images per class where a run chose its own (--val-per-class); null: the dataset's V.
    pa.field("val_per_class", pa.int64()),
])
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
LEGACY_SPLIT = "reference"  # the split of every row written before the ``split`` column existed
STATUSES = ("finished", "failed")
# Columns read_rows can filter on: the scalar ones (lists have no sensible equality).
FILTERABLE = tuple(f.name for f in SCHEMA if not pa.types.is_list(f.type))

_SUFFIX = ".parquet"
# run_id becomes a file name: keep it to characters every filesystem and object store accepts.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LeaderboardError(LocationError):
    """The leaderboard location is unusable (bad URI, folder not creatable or not writable)."""


Root = "str | os.PathLike | Location"  # a local folder, a URI, or a Location (see storage.py)


def _location(root: Root) -> Location:
    try:
        return Location(root)
    except LocationError as exc:
        raise LeaderboardError(str(exc)) from None


def resolve(root: Root) -> tuple[pafs.FileSystem, str]:
    """Map a local folder or a ``s3://``/``gs://``/``file://`` URI to (filesystem, path)."""
    try:
        return _location(root).filesystem()
    except LocationError as exc:
        raise LeaderboardError(f"cannot open leaderboard location {root}: {exc}") from None


def _canonical_json(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _utc(value):
    """Accept datetimes (naive = UTC), pandas/numpy timestamps, ISO strings or epoch seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    elif isinstance(value, numbers.Real):
        value = dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)
    elif not isinstance(value, dt.datetime):  # numpy datetime64 and the like
        value = pd.Timestamp(value).to_pydatetime()
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def _row_table(row: dict) -> pa.Table:
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown leaderboard column(s): {', '.join(unknown)}")
    run_id = row.get("run_id")
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"run_id must be a non-empty file-name-safe string, got {run_id!r}")
    status = row.get("status")
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    full = {name: row.get(name) for name in COLUMNS}
    if full["schema_version"] is None:
        full["schema_version"] = SCHEMA_VERSION
    full["params"] = _canonical_json(full["params"])
    full["recipe"] = _canonical_json(full["recipe"])
    full["history"] = _canonical_json(full["history"])
    full["started_at"] = _utc(full["started_at"])
    full["finished_at"] = _utc(full["finished_at"])
    for name in ("per_class_acc", "class_counts"):
        if full[name] is not None:
            full[name] = list(full[name])  # numpy arrays and tuples alike
    return pa.Table.from_pylist([full], schema=SCHEMA)


def write_row(root: Root, row: dict) -> str:
    """Write one run's row to ``<root>/<run_id>.parquet`` atomically; return where it went.

    Missing columns are stored as null; unknown keys raise ValueError; ``params``/``recipe``
    dicts become canonical JSON. An existing file with the same run_id is replaced.
    """
    table = _row_table(row)
    target = _location(root) / (row["run_id"] + _SUFFIX)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    # Readers skip the hidden temp file of a local write (it neither ends in .parquet nor shows).
    target.write_bytes(sink.getvalue().to_pybytes())
    return str(target)


def _row_files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except (pa.ArrowException, OSError) as exc:
        raise LeaderboardError(f"cannot list the leaderboard folder {folder}: {exc}") from exc
    return sorted((info for info in infos
                   if info.type == pafs.FileType.File
                   and info.base_name.endswith(_SUFFIX) and not info.base_name.startswith(".")),
                  key=lambda info: info.path)


def _conform(table: pa.Table) -> pa.Table:
    """Give a file's table exactly SCHEMA's columns: missing ones null, extra ones dropped."""
    arrays = []
    for field in SCHEMA:
        if field.name in table.column_names:
            arrays.append(table.column(field.name).cast(field.type))
        elif field.nullable:
            arrays.append(pa.nulls(table.num_rows, field.type))
        else:
            raise ValueError(f"required column {field.name} is missing")
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


_REQUIRED = [f.name for f in SCHEMA if not f.nullable]


def _read_all(fs: pafs.FileSystem, paths: list[str]) -> "pa.Table | None":
    """Every file in one dataset scan (one call instead of one per file: ~2x faster warm, ~10x cold on
    the demo's 36 files), each row with its file's path (``_file``), or None when a file cannot be read
    that way; a file without a required column would read as nulls here, so that too sends the caller
    to the file-by-file path."""
    import pyarrow.dataset as pads

    try:
        table = pads.dataset(paths, format="parquet", filesystem=fs, schema=SCHEMA).to_table(
            columns=[*SCHEMA.names, "__filename"])
    except (pa.ArrowException, OSError, ValueError):
        return None
    if any(table.column(name).null_count for name in _REQUIRED):
        return None
    return table.rename_columns([*SCHEMA.names, "_file"])


def _read_files(fs: pafs.FileSystem, where: Location, paths: list[str]) -> tuple[pa.Table, list[str]]:
    """The rows of ``paths``, each with its ``_file``; (rows, files that could not be read)."""
    table, skipped = _read_all(fs, paths), []
    if table is None:  # some file is corrupt, truncated or of another schema: find it, keep the rest
        tables = []
        for path in paths:
            try:
                one = _conform(pq.read_table(path, filesystem=fs))
            except (pa.ArrowException, OSError, ValueError):
                skipped.append(str(where / os.path.basename(path)))
                continue
            tables.append(one.append_column("_file", pa.array([path] * one.num_rows, pa.string())))
        table = pa.concat_tables(tables) if tables else None
    return table, skipped


def read_rows(root: Root, **filters) -> tuple[pd.DataFrame, list[str]]:
    """Read every run file under ``root``; return (rows, paths of files that could not be read).

    ``filters`` select rows by column equality (``dataset="cifar10"``); a list/tuple/set
    selects any of its values; None means no filter. A missing or empty folder gives an empty
    frame with all the schema's columns. Unchanged files are read from a compacted copy in the
    driver's cache (index.py), which changes how fast, never what.
    """
    from . import index

    unknown = sorted(set(filters) - set(FILTERABLE))
    if unknown:
        raise ValueError(f"cannot filter on {', '.join(unknown)}; filterable: {', '.join(FILTERABLE)}")
    where = _location(root)
    fs, folder = resolve(where)
    listed_at = index.now_ns()  # before listing: a file written after it is never taken as settled
    infos = _row_files(fs, folder)
    table, skipped = index.read(str(where), SCHEMA, infos, lambda paths: _read_files(fs, where, paths), listed_at)
    frame = table.to_pandas()
    frame["split"] = frame["split"].fillna(LEGACY_SPLIT)
    return filter_rows(frame, **filters), skipped


def filter_rows(frame: pd.DataFrame, **filters) -> pd.DataFrame:
    """``read_rows``' filters on rows already read: column equality, any of a list's values, None: all."""
    unknown = sorted(set(filters) - set(FILTERABLE))
    if unknown:
        raise ValueError(f"cannot filter on {', '.join(unknown)}; filterable: {', '.join(FILTERABLE)}")
    for column, wanted in filters.items():
        if wanted is None:
            continue
        if isinstance(wanted, (list, tuple, set, frozenset)):
            frame = frame[frame[column].isin(list(wanted))]
        else:
            frame = frame[frame[column] == wanted]
    return frame.reset_index(drop=True)


def extra_teacher_ids(rows: pd.DataFrame) -> set[str]:
    """Runs in ``rows`` that were trained only as a second, third, ... teacher of a several-teacher run:
    CBD's extra CE teachers (seeds s + 1000·k). They are CE runs like any other, but not CE seeds anyone
    asked for, so a table of all runs (no ``--suite``) leaves them out. Rule: the run is listed after
    the first in some row's ``teacher_run_id``, its own row carries no suite, sweep or ablation tag
    (teachers are trained untagged), and it is not a class-subset teacher (``classes`` in its params:
    those have labels of their own). A CE run with such a seed trained by hand with ``bkdbench train``
    is the same run (same spec, same id) and is left out too."""
    if rows.empty or "teacher_run_id" not in rows:
        return set()
    later = {run_id for text in rows["teacher_run_id"].dropna() if text
             for run_id in str(text).split(",")[1:]}
    if not later:
        return set()
    tagged = pd.Series(False, index=rows.index)
    for column in ("suite", "sweep_id", "ablation_id"):
        if column in rows:
            tagged |= rows[column].notna() & (rows[column].astype(str) != "")
    subset = rows["params"].map(lambda p: isinstance(p, str) and '"classes":' in p) if "params" in rows else tagged
    chosen = rows["run_id"].isin(later) & ~tagged & ~subset
    return set(rows.loc[chosen, "run_id"])


def finished_run_ids(root: Root) -> set[str]:
    """The run_ids of finished runs (failed runs are absent so they get re-run)."""
    frame, _ = read_rows(root, status="finished")
    return set(frame["run_id"])


def is_finished(root: Root, run_id: str) -> bool:
    """Whether ``run_id`` has a finished row, reading only its own file (cheap inside a trial)."""
    fs, folder = resolve(root)
    try:
        status = pq.read_table(f"{folder}/{run_id}{_SUFFIX}", columns=["status"], filesystem=fs).column(0)
    except (pa.ArrowException, OSError, ValueError):
        return False
    return len(status) > 0 and status[0].as_py() == "finished"


def failure_of(root: Root, run_id: str) -> str | None:
    """The recorded reason when ``run_id``'s row says it failed (reading only its own file), else None."""
    fs, folder = resolve(root)
    try:
        table = pq.read_table(f"{folder}/{run_id}{_SUFFIX}", columns=["status", "error"], filesystem=fs)
    except (pa.ArrowException, OSError, ValueError):
        return None
    if len(table) == 0 or table.column("status")[0].as_py() != "failed":
        return None
    return table.column("error")[0].as_py() or "no reason recorded"


def check_writable(root: Root) -> None:
    """Create ``root`` if needed and prove a file can be written there; else LeaderboardError."""
    try:
        _location(root).check_writable()
    except LocationError as exc:
        raise LeaderboardError(f"{exc}; choose a writable location with --results/--storage") from None


__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "COLUMNS", "STATUSES", "FILTERABLE", "LeaderboardError",
    "resolve", "write_row", "read_rows", "filter_rows", "finished_run_ids", "is_finished", "check_writable",
]
