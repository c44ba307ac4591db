"""Two `bkdbench run` drivers started together on one results folder (two terminals, or two machines
on one NFS share): each run is trained once between them (lease.py), every row is written once, and
both finish with the full table. Real processes, each driver with its own local Ray. SSD-LT's three
stages are among the runs: stage I, then stage II, then the stage-III student, each a run of its own
whose lease either driver may hold, so the stages' order holds across drivers too."""
from __future__ import annotations

import re

import pytest

from bkdbench.leaderboard.store import read_rows
from helpers.cli import cli_env, kill_group, start_cli
from helpers.files import row_files, suite_run_ids, write_suite

pytestmark = pytest.mark.slow


def test_two_drivers_on_one_results_folder_train_each_run_once(tmp_path):
    suite = write_suite(tmp_path / "two.yaml", datasets=["digits"], imbalance=[10], methods=["ce", "focal", "kd", "ssd-lt"],
                        seeds=2, epochs=3)
    from bkdbench.specs.suites import load_suite

    specs = load_suite(str(suite)).expand()
    expected = sorted({s.run_id for s in specs} | {p.run_id for s in specs for p in s.prerequisites})
    assert len(suite_run_ids(suite)) == 8 and len(expected) == 12  # + SSD-LT stages I and II per seed
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
        for method in ("ce", "focal", "kd", "ssd-lt"):  # each driver's table has every method, both seeds
            assert re.search(rf"│ {method} +│ [\d.]+ ± [\d.]+ \(2\) │", out), out
    assert sum(trained) == 12, (trained, outs)  # every run trained once between the two drivers
    assert [t + e for t, e in zip(trained, elsewhere)] == [12, 12], (trained, elsewhere)
    by_id = rows.set_index("run_id")
    for spec in (s for s in specs if s.method == "ssd-lt"):  # stage III distilled from its own stage II
        stage1, stage2 = spec.prerequisites
        assert by_id.loc[spec.run_id, "teacher_run_id"] == stage2.run_id
        assert by_id.loc[stage2.run_id, "teacher_run_id"] == stage1.run_id
        assert by_id.loc[stage1.run_id, "finished_at"] < by_id.loc[stage2.run_id, "finished_at"] \
            < by_id.loc[spec.run_id, "finished_at"]
    assert not list((results / "leases").glob("*.json"))  # every lease released
