"""Suite manifests: a union of every record, written without lost updates by drivers recording at
once (real processes), and still reading the single file of earlier versions."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from bkdbench.leaderboard.manifest import manifest_path, record_suite_runs, suite_run_ids

from helpers.files import tree

RECORDER = """
import sys, time
from bkdbench.leaderboard.manifest import record_suite_runs
root, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
for i in range(40):  # a driver per filter, each recording its own runs plus some every driver asks for
    record_suite_runs(root, "s", [f"{tag}-{i}", f"shared-{i % 3}"])
"""


def test_records_are_a_union_and_repeating_one_writes_nothing(tmp_path):
    assert suite_run_ids(tmp_path, "s") is None
    record_suite_runs(tmp_path, "s", ["b", "a"])
    record_suite_runs(tmp_path, "s", ["c"])
    files = tree(tmp_path)
    record_suite_runs(tmp_path, "s", ["a", "b"])  # the same list in another order: the same object
    assert tree(tmp_path) == files and len([f for f in files if f.endswith(".json")]) == 2
    assert suite_run_ids(tmp_path, "s") == {"a", "b", "c"}
    assert suite_run_ids(tmp_path, "other") is None


def test_drivers_recording_at_once_lose_no_entry(tmp_path):
    """With the old read-modify-write file, a record written between another driver's read and its
    write was lost; 3 processes × 40 records at once lost entries there within a few runs."""
    start = str(time.time() + 1.5)  # after every interpreter has imported bkdbench
    procs = [subprocess.Popen([sys.executable, "-c", RECORDER, str(tmp_path), tag, start]) for tag in "pqr"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    expected = {f"{t}-{i}" for t in "pqr" for i in range(40)} | {f"shared-{i}" for i in range(3)}
    assert suite_run_ids(tmp_path, "s") == expected
    assert not [n for n in tree(tmp_path) if n.endswith(".tmp")]  # no temp file left


def test_the_single_file_of_earlier_versions_is_still_read(tmp_path):
    manifest_path(tmp_path, "s").write_text(json.dumps(["old-1", "old-2"]))
    assert suite_run_ids(tmp_path, "s") == {"old-1", "old-2"}
    record_suite_runs(tmp_path, "s", ["new"])
    assert suite_run_ids(tmp_path, "s") == {"old-1", "old-2", "new"}
