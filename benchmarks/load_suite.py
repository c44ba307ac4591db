"""Load: one suite of many one-epoch digits runs through Ray, on this machine.

    python benchmarks/load_suite.py --runs 300 --work /tmp/load300 --out docs/evidence/load-300-cpu.json

It writes a suite of ``--runs`` CE runs (digits-LT IF 10, one epoch each, seeds 0..N-1), runs
``bkdbench run --suite`` on it in a session of its own, and every 0.5 s samples

- the driver's resident memory (VmRSS of the ``bkdbench`` process itself),
- the resident memory of every process in the driver's session (the Ray workers that train, Ray's
  daemons), and
- the number of leaderboard rows written so far.

It reports the driver's memory when the first row lands (Ray up, the first trial done), half-way
and at the end, with the least-squares slope of the driver's memory per 100 runs after the first
row; the wall time per run in the steady state (first to last row) and the overhead per trial, that
is ``concurrency × (steady wall / run) − mean train_seconds`` (what a trial costs beyond its own
training: Tune's scheduling, the trial's start, reading the data, writing the row, lease files);
then the time of ``bkdbench leaderboard`` on the result (the console script, start-up included,
median of 5; and once with an empty cache, which reads every file and builds the compacted copy)
beside the start-up alone (``bkdbench --version``). Every trial reuses its Ray actor
(``reuse_actors=True`` in orchestrate/runner.py), so the start of a Python worker is paid once per
concurrent slot, not once per run.

Writes ``--out`` (JSON: the settings, the samples, the figures) and prints a Markdown table. Run it
on a quiet machine: anything else that runs moves the per-trial figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

BKDBENCH = Path(sys.executable).parent / "bkdbench"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def session_rss_mb(sid: int) -> float:
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    total += rss_mb(int(entry))
            except OSError:
                continue
    return total


def slope_per_100(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x, times 100 (x: rows written, y: MB)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def timed(args: list[str], repeats: int = 5, env: dict | None = None) -> float:
    walls = []
    for _ in range(repeats):
        tick = time.perf_counter()
        subprocess.run([str(BKDBENCH), *args], check=True, capture_output=True, env=env)
        walls.append(time.perf_counter() - tick)
    return statistics.median(walls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--work", type=Path, required=True, help="an empty or missing folder for the suite and its results")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    a = ap.parse_args()
    if a.work.exists() and any(a.work.iterdir()):
        sys.exit(f"--work {a.work} is not empty")
    a.work.mkdir(parents=True, exist_ok=True)
    suite = a.work / "load.yaml"
    suite.write_text(yaml.safe_dump({"name": "load", "datasets": ["digits"], "imbalance": [10], "methods": ["ce"],
                                     "seeds": a.runs, "epochs": 1}, sort_keys=False))
    results = a.work / "results"
    rows_dir = results / "leaderboard"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(a.work / "ray")}
    (a.work / "ray").mkdir()
    started = time.perf_counter()
    driver = subprocess.Popen([str(BKDBENCH), "run", "--suite", str(suite), "--results", str(results),
                               "--cpus-per-trial", str(a.cpus_per_trial)],
                              stdout=open(a.work / "driver.log", "w"), stderr=subprocess.STDOUT,
                              env=env, start_new_session=True)
    samples: list[dict] = []

    def sample() -> None:
        while driver.poll() is None:
            rows = len(list(rows_dir.glob("*.parquet"))) if rows_dir.is_dir() else 0
            samples.append({"t": round(time.perf_counter() - started, 2), "rows": rows,
                            "driver_mb": round(rss_mb(driver.pid), 1),
                            "session_mb": round(session_rss_mb(driver.pid), 1)})
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    driver.wait()
    sampler.join()
    wall = time.perf_counter() - started
    if driver.returncode != 0:
        sys.exit(f"the suite failed (exit {driver.returncode}); see {a.work / 'driver.log'}")

    import pandas as pd

    frame = pd.concat([pd.read_parquet(p) for p in sorted(rows_dir.glob("*.parquet"))])
    assert len(frame) == frame.run_id.nunique() == a.runs and set(frame.status) == {"finished"}
    live = [s for s in samples if s["driver_mb"] > 0]
    # From the first row to the first sample with every row (after it, Ray shuts down).
    done = next((i for i, s in enumerate(live) if s["rows"] == a.runs), len(live) - 1)
    steady = [s for s in live[:done + 1] if s["rows"] >= 1]
    first, last = steady[0], steady[-1]
    half = next(s for s in steady if s["rows"] >= a.runs // 2)
    t_first, t_last = first["t"], last["t"]
    per_run = (t_last - t_first) / max(1, a.runs - 1)
    concurrency = max(1, int((os.cpu_count() or 1) // a.cpus_per_trial))
    mean_train = float(frame.train_seconds.mean())
    figures = {
        "runs": a.runs, "wall_s": round(wall, 1), "concurrency": concurrency,
        "driver_mb_first_row": first["driver_mb"], "driver_mb_half": half["driver_mb"], "driver_mb_end": last["driver_mb"],
        "driver_mb_max": max(s["driver_mb"] for s in live),
        "driver_mb_slope_per_100_runs": round(slope_per_100([(s["rows"], s["driver_mb"]) for s in steady]), 2),
        "session_mb_first_row": first["session_mb"], "session_mb_end": last["session_mb"],
        "session_mb_slope_per_100_runs": round(slope_per_100([(s["rows"], s["session_mb"]) for s in steady]), 2),
        "steady_wall_per_run_s": round(per_run, 3), "mean_train_seconds": round(mean_train, 3),
        "overhead_per_trial_s": round(concurrency * per_run - mean_train, 3),
        # The driver read the rows at the end of the suite, so the leaderboard's compacted copy
        # (leaderboard/index.py) is warm; the cold figure builds it from the 300 files first.
        "leaderboard_s": round(timed(["leaderboard", "--results", str(results)]), 3),
        "leaderboard_cold_s": round(timed(["leaderboard", "--results", str(results)], repeats=1,
                                          env={**os.environ, "BKDBENCH_CACHE": str(a.work / "cold-cache")}), 3),
        "startup_s": round(timed(["--version"]), 3),
    }
    record = {"what": "benchmarks/load_suite.py", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "settings": {"runs": a.runs, "cpus_per_trial": a.cpus_per_trial, "suite": "digits IF 10, ce, 1 epoch"},
              "figures": figures, "samples": samples}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=1) + "\n")
    print("| figure | value |\n|---|---:|")
    for key, value in figures.items():
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
