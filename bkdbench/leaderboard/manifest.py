"""Which runs belong to a suite. A run is stored once even when several suites ask for it (a CE
run is in digits-lt and digits-lt-extended alike), so its row's ``suite`` tag names only the first;
``bkdbench run`` records every run id a suite asked for here, and ``--suite`` selects by that.

Without lost updates: each record is an object of its own, ``suites/<suite>/<hash>.json``, named by
the SHA-256 of the sorted run ids it holds, and a suite's runs are the union of its objects. Two
drivers recording at once write two objects (or the same one, with the same bytes), so neither can
overwrite the other's entries, on a local disk, NFS or object storage alike (no read-modify-write).
The single file ``suites/<suite>.json`` of earlier versions is still read."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Optional

from ..storage import Location

def manifest_dir(results: "str | os.PathLike | Location", suite: str) -> Location:
    return Location(results) / "suites" / suite


def manifest_path(results: "str | os.PathLike | Location", suite: str) -> Location:
    """The single-file manifest earlier versions wrote (read, never written)."""
    return Location(results) / "suites" / f"{suite}.json"


def record_suite_runs(results: "str | os.PathLike | Location", suite: str, run_ids: Iterable[str]) -> None:
    """Add ``run_ids`` to the suite's runs (a union: runs recorded with other filters stay listed)."""
    text = json.dumps(sorted(set(run_ids)))
    name = hashlib.sha256(text.encode()).hexdigest()[:16] + ".json"
    target = manifest_dir(results, suite) / name
    if not target.exists():  # the same list again: the same object, already there
        target.write_text(text)


def suite_run_ids(results: "str | os.PathLike | Location", suite: str) -> Optional[set[str]]:
    """Every run id recorded for ``suite``; None when nothing was ever recorded."""
    folder = manifest_dir(results, suite)
    parts = [folder / name for name in folder.list() if name.endswith(".json") and not name.startswith(".")]
    parts.append(manifest_path(results, suite))
    found: Optional[set[str]] = None
    for part in parts:
        try:
            ids = json.loads(part.read_text())
        except (OSError, ValueError):  # missing (the old file), or being replaced: skip it
            continue
        found = (found or set()) | set(ids)
    return found
