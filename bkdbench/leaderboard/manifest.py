"""Which runs belong to a suite. A run is stored once even when several suites ask for it (a CE
run is in digits-lt and digits-lt-extended alike), so its row's ``suite`` tag names only the first;
``bkdbench run`` records every run id a suite asked for here, and ``--suite`` selects by that."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional


def manifest_path(results: str | os.PathLike, suite: str) -> Path:
    return Path(results) / "suites" / f"{suite}.json"


def record_suite_runs(results: str | os.PathLike, suite: str, run_ids: Iterable[str]) -> None:
    """Add ``run_ids`` to the suite's manifest (a union: runs with other filters stay listed)."""
    run_ids = list(run_ids)
    path = manifest_path(results, suite)
    known = suite_run_ids(results, suite) or set()
    if set(run_ids) <= known and path.exists():
        return  # nothing new: leave the file untouched
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(sorted(known | set(run_ids))))
    tmp.replace(path)


def suite_run_ids(results: str | os.PathLike, suite: str) -> Optional[set[str]]:
    try:
        return set(json.loads(manifest_path(results, suite).read_text()))
    except (OSError, ValueError):
        return None
