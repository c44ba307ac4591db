"""Which runs belong to a suite. A run is stored once even when several suites ask for it (a CE
run is in digits-lt and digits-lt-extended alike), so its row's ``suite`` tag names only the first;
``bkdbench run`` records every run id a suite asked for here, and ``--suite`` selects by that."""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional

from ..storage import Location


def manifest_path(results: "str | os.PathLike | Location", suite: str) -> Location:
    return Location(results) / "suites" / f"{suite}.json"


def record_suite_runs(results: "str | os.PathLike | Location", suite: str, run_ids: Iterable[str]) -> None:
    """Add ``run_ids`` to the suite's manifest (a union: runs with other filters stay listed)."""
    run_ids = list(run_ids)
    known = suite_run_ids(results, suite)
    if known is not None and set(run_ids) <= known:
        return  # nothing new: leave the file untouched
    manifest_path(results, suite).write_text(json.dumps(sorted((known or set()) | set(run_ids))))


def suite_run_ids(results: "str | os.PathLike | Location", suite: str) -> Optional[set[str]]:
    try:
        return set(json.loads(manifest_path(results, suite).read_text()))
    except (OSError, ValueError):
        return None
