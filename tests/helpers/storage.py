"""A digits suite run end to end on an object store, checked the same way for every store (S3 and
GCS): what lands in the bucket, the leaderboard read back, plots kept local, nothing retrained."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

from bkdbench.storage import Location
from helpers.cli import run_cli
from helpers.files import nothing_written, write_suite


def check_suite_on_store(store: Callable[[str], str], tmp_path: Path, name: str) -> None:
    """CE teacher, then KD and BKD students with ``--storage URI``: rows, teacher, manifest and
    Tune's experiment state and checkpoints land in the bucket, nothing in the folder the CLI runs
    in (bkdbench's cache is beside it), the leaderboard and a plot read them back, and a second
    invocation trains nothing."""
    import pyarrow.fs as pafs

    from bkdbench.specs.suites import load_suite

    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    suite = write_suite(work / f"{name}.yaml", datasets=["digits"], imbalance=[10], methods=["ce", "kd", "bkd"],
                        seeds=1, epochs=2)
    uri = store(f"suite-{uuid.uuid4().hex[:6]}")
    with nothing_written(work):  # no results folder, nothing named after the URI: all of it is in the bucket
        first = run_cli(["run", "--suite", suite, "--storage", uri, "--checkpoint-every", "1"], folder=work,
                        cache=cache, timeout=400)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    fs, base = Location(uri).filesystem()
    files = [i.path[len(base) + 1:] for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
             if i.type == pafs.FileType.File]
    expected = {s.run_id: s for s in load_suite(str(suite)).expand()}
    ce = next(r for r, s in expected.items() if s.method == "ce")
    assert sorted(f for f in files if f.startswith("leaderboard/")) == sorted(f"leaderboard/{r}.parquet" for r in expected)
    assert f"teachers/{ce}.pt" in files
    assert any(f.startswith(f"suites/{name}/") and f.endswith(".json") for f in files), files  # the manifest's record
    for stage in ("teachers", "runs"):  # Tune's experiment state, per stage
        assert f"experiments/{name}/{stage}/bkdbench-run-ids.json" in files
        assert any(f.startswith(f"experiments/{name}/{stage}/") and "experiment_state" in f for f in files), files
    assert any(f.startswith(f"experiments/{name}/runs/") and "/checkpoint_" in f for f in files), files  # by Tune

    board = run_cli(["leaderboard", "--storage", uri, "--suite", name, "--format", "csv"], folder=work, cache=cache,
                    timeout=120)
    assert board.returncode == 0, board.stderr
    assert all(m in board.stdout for m in ("ce", "kd", "bkd")), board.stdout
    plot = run_cli(["plot", "summary", "--storage", uri, "--suite", name], folder=work, cache=cache, timeout=120)
    assert plot.returncode == 0 and "plots go to the local folder plots" in " ".join(plot.stderr.split()), plot.stderr
    assert (work / "plots" / f"summary-{name}-top1.png").is_file()  # PNGs for a person, on this machine

    second = run_cli(["run", "--suite", suite, "--storage", uri], folder=work, cache=cache, timeout=200)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    flat = " ".join(second.stdout.split())
    assert "3 already in the leaderboard" in flat and "0 to train" in flat, second.stdout


# A driver holding the lease on one run of results on object storage, in a process of its own: it
# releases the lease once the test says "go", after writing the run's outcome (as a row is written
# before the release).
HOLDER = """
import sys, time
from bkdbench.orchestrate.lease import try_acquire
from bkdbench.storage import Location
root, outcome = sys.argv[1], sys.argv[2]
lease = try_acquire(root, "run-x")
assert lease is not None
print("held", flush=True)
while not (Location(root) / "go").exists():
    time.sleep(0.05)
(Location(root) / "outcome").write_text(outcome)
lease.release()
"""


def check_lease_makes_a_second_driver_wait(store: Callable[[str], str], tmp_path: Path) -> None:
    """One process holds the lease on a run of results in the bucket; this process, as a second
    driver, finds it held, waits, and takes the holder's outcome instead of training the run; the
    bucket keeps no lease afterwards. (Exclusive creation is "exists, then put" there: lease.py.)"""
    import subprocess
    import sys

    from bkdbench.orchestrate.lease import acquire, leases_dir

    root = store(f"lease-{uuid.uuid4().hex[:6]}")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, root, "finished"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert [n for n in leases_dir(root).list() if n.startswith("run-x.")] == ["run-x.0.json"]
        outcome, looks = Location(root) / "outcome", []

        def finished() -> bool:
            looks.append(1)
            if len(looks) == 2:  # the first look found the lease held: now let the holder finish
                (Location(root) / "go").write_text("")
            return outcome.exists() and outcome.read_text() == "finished"

        got = acquire(root, "run-x", poll=0.1, finished=finished, failure=lambda: None)
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert got.lease is None and got.finished and len(looks) >= 2 and got.waited >= 0.1
    assert leases_dir(root).list() == []
