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
