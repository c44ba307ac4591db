"""Two `bkdbench run` drivers started together on one results folder (two terminals, or two machines
on one NFS share): each run is trained once between them (lease.py), every row is written once, and
both finish with the full table. Real processes, each driver with its own local Ray."""
from __future__ import annotations

import re

import pytest

from bkdbench.leaderboard.store import read_rows
from helpers.cli import cli_env, kill_group, start_cli
from helpers.files import row_files, suite_run_ids, write_suite

pytestmark = pytest.mark.slow


def test_two_drivers_on_one_results_folder_train_each_run_once(tmp_path):
    suite = write_suite(tmp_path / "two.yaml", datasets=["digits"], imbalance=[10], methods=["ce", "focal", "kd"],
                        seeds=2, epochs=3)
    expected = suite_run_ids(suite)
    assert len(expected) == 6
    results = tmp_path / "results"
    args = ["run", "--suite", str(suite), "--results", str(results), "--pack", "1"]
    drivers = [start_cli(args, tmp_path / f"driver-{i}.log", env=cli_env()) for i in (0, 1)]  # own Ray each
    try:
        codes = [d.wait(timeout=600) for d in drivers]
    finally:
        for d in drivers:
            kill_group(d)
    outs = [(tmp_path / f"driver-{i}.log").read_text() for i in (0, 1)]
    assert codes == [0, 0], outs
    rows, bad = read_rows(results / "leaderboard")
    assert bad == [] and sorted(rows.run_id) == sorted(expected) and set(rows.status) == {"finished"}
    assert sorted(p.stem for p in row_files(results)) == sorted(expected)  # one file per run
    trained, elsewhere = [], []
    for out in outs:
        flat = " ".join(out.split())
        m = re.search(r"trained (\d+) run\(s\) in [\d.]+ s(?:; (\d+) finished by another driver meanwhile)?", flat)
        assert m, out
        trained.append(int(m.group(1)))
        elsewhere.append(int(m.group(2) or 0))
        for method in ("ce", "focal", "kd"):  # each driver's table has every method, both seeds
            assert re.search(rf"│ {method} +│ [\d.]+ ± [\d.]+ \(2\) │", out), out
    assert sum(trained) == 6, (trained, outs)  # every run trained once between the two drivers
    assert [t + e for t, e in zip(trained, elsewhere)] == [6, 6], (trained, elsewhere)
    assert not list((results / "leases").glob("*.json"))  # every lease released
