"""A compacted copy of a leaderboard folder in the driver's cache, so that reading N rows opens one
file instead of N. Opening each per-run file is what a read costs: about 1.5 ms a file on a local
disk (0.45 s for 300 runs), more on object storage; the copy reads in milliseconds.

The per-run files stay the truth (they are what keeps concurrent writers safe, store.py). The copy
holds rows together with the name, size and modification time of the file each came from, and a read
takes a row from it only while that file still has that size and that time. New or changed files are
read from the folder; rows of deleted files drop out; the copy is then rewritten. Only *settled*
files enter the copy: modified at least ``SETTLE_SECONDS`` before the folder was listed. Object
stores give times to the second, so a file replaced within the second it was written, with the same
size, would look unchanged; a settled file, once replaced, has a later time (as git treats "racily
clean" index entries). A file whose listing gives no modification time is always read from the
folder. Anything wrong with the copy (missing, unreadable, of another schema, a cache that cannot be
written) means the files are read as if there were no copy: it can make a read slower, never
different.

A read keeps the new copy in memory and writes it when the process ends (``atexit``), so a command
that then fails on bad input (``bkdbench compare`` with no common seeds) writes nothing: the CLI
calls ``discard()`` before it exits with an error. The copy lives in ``<cache>/leaderboard-index/``
(``$BKDBENCH_CACHE``, else ``~/.cache/bkdbench``), named by a hash of the folder's location and of the
schema, never in the results folder: reading writes nothing there, and pandas, DuckDB or polars
reading the folder see only the per-run files.
"""
from __future__ import annotations

import atexit
import hashlib
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..storage import Location, LocationError, cache_root

_FILE, _SIZE, _MTIME = "_file", "_size", "_mtime_ns"  # where a copied row came from
Reader = Callable[[list[str]], "tuple[pa.Table, list[str]]"]  # paths → (rows with _file, unreadable)
_pending: dict[Path, pa.Table] = {}  # copies to write at exit, by path
SETTLE_SECONDS = 2  # > the coarsest modification-time resolution (1 s, object stores), plus clock slack


def now_ns() -> int:
    """The clock a listing is dated by (the local one): tests set it rather than sleep against it."""
    return time.time_ns()


def flush() -> None:
    """Write the copies this process made (at exit; tests call it to look at them)."""
    while _pending:
        path, table = _pending.popitem()
        _store(path, table)


def discard() -> None:
    """Forget the copies not written yet: the command failed and must leave nothing behind."""
    _pending.clear()


atexit.register(flush)


def index_path(location: str, schema: pa.Schema) -> Path:
    key = hashlib.sha256(f"{location}\n{schema.to_string()}".encode()).hexdigest()[:24]
    return cache_root() / "leaderboard-index" / f"{key}.parquet"


def read(location: str, schema: pa.Schema, infos: list[pafs.FileInfo], read_files: Reader,
         listed_at_ns: int) -> tuple[pa.Table, list[str]]:
    """The rows of the files ``infos`` (a listing of the folder, begun at ``listed_at_ns``, the local
    clock), in path order: copied rows where their file is unchanged, the others through
    ``read_files``; (rows, unreadable files)."""
    path = index_path(location, schema)
    copy = _pending[path] if path in _pending else _load(path, schema)
    stats = {info.path: (info.size, info.mtime_ns) for info in infos}
    kept = _empty(schema) if copy is None else copy.filter(_unchanged(copy, stats))
    have = set(kept.column(_FILE).to_pylist())
    todo = [p for p in stats if p not in have]
    fresh, skipped = read_files(todo) if todo else (None, [])
    parts = [kept] + ([_stamped(fresh, stats, schema)] if fresh is not None and fresh.num_rows else [])
    table = pa.concat_tables(parts) if len(parts) > 1 else kept
    if (todo or copy is None or len(kept) != len(copy)) and (copy is not None or table.num_rows):
        settled = listed_at_ns - SETTLE_SECONDS * 10**9  # later (or no) time: read again next time
        _pending[path] = table.filter(pc.fill_null(pc.less_equal(table.column(_MTIME), settled), False))
    order = pc.sort_indices(table, sort_keys=[(_FILE, "ascending")])
    return table.take(order).select(schema.names), skipped


def _empty(schema: pa.Schema) -> pa.Table:
    return pa.schema(list(schema) + [pa.field(_FILE, pa.string()), pa.field(_SIZE, pa.int64()),
                                     pa.field(_MTIME, pa.int64())]).empty_table()


def _load(path: Path, schema: pa.Schema) -> "pa.Table | None":
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError):
        return None
    return table if table.schema.equals(_empty(schema).schema) else None


def _unchanged(copy: pa.Table, stats: dict) -> pa.Array:
    files, sizes, times = (copy.column(c).to_pylist() for c in (_FILE, _SIZE, _MTIME))
    return pa.array([t is not None and stats.get(f) == (s, t) for f, s, t in zip(files, sizes, times)], pa.bool_())


def _stamped(rows: pa.Table, stats: dict, schema: pa.Schema) -> pa.Table:
    """``rows`` (schema's columns and _file) with the size and time their file was listed with."""
    files = rows.column(_FILE).to_pylist()
    listed = [stats.get(f, (None, None)) for f in files]  # a name the listing spells otherwise: never copied
    size = pa.array([s for s, _ in listed], pa.int64())
    mtime = pa.array([t for _, t in listed], pa.int64())
    return pa.Table.from_arrays([*rows.select(schema.names).columns, rows.column(_FILE), size, mtime],
                                schema=_empty(schema).schema)


def _store(path: Path, table: pa.Table) -> None:
    """Write the copy atomically (``Location.write_bytes``: a reader never sees half of it); a cache
    that cannot be written is only a slower next read."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    try:
        Location(path).write_bytes(sink.getvalue().to_pybytes())
    except (OSError, LocationError):
        pass
