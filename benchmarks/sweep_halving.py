"""Successive halving over compressed schedules against full-budget trials (docs/performance.md).

Runs, through the CLI, on one long-tailed set (default digits-LT IF 50): for each method in
``--compare`` a sweep with ``--scheduler sh`` and the same sweep with ``--scheduler none`` (the same
number of full-budget trials, same sampler and seed), both with ``--final-seeds`` test runs of their
best configuration; for each method in ``--sh-only`` the halving sweep alone (rank agreement only).
Reports, per method: epochs trained ÷ the epochs of the same number of full-budget trials, the rank
agreement of each rung pair (Spearman, sweeps/report.py), and the best configurations' test top-1 with
the final seeds paired (seed s of one against seed s of the other: the same initialisation and batch
order), with the mean paired difference and its 95 % t-interval, and whether the halving sweep's best
lies inside the full-budget search's 95 % interval over its final seeds. The test numbers are read
after both searches chose on validation only. Writes ``--out`` (JSON) and prints a summary.

    nice -n 5 python benchmarks/sweep_halving.py --results /tmp/sh-bench --out /tmp/sh-bench/result.json
    # the CIFAR-10 (JPEG) CPU recipe (10 epochs), rungs of 2, 3 and 10 epochs
    python benchmarks/sweep_halving.py --dataset imagefolder --data-dir DIR --imbalance 100 --model resnet8 \
        --recipe cpu-short --min-epochs 2 --sh-only "" --results /tmp/sh-cifar --out /tmp/sh-cifar/result.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def sweep(method: str, scheduler: str, args) -> dict:
    cmd = [sys.executable, "-m", "bkdbench", "sweep", method, "--dataset", args.dataset, "--imbalance", str(args.imbalance),
           "--trials", str(args.trials), "--concurrency", str(args.concurrency), "--final-seeds", str(args.final_seeds),
           "--seed", str(args.seed), "--scheduler", scheduler, "--results", args.results, "--resume"]
    for flag in ("epochs", "model", "recipe", "data_dir", "min_epochs", "val_per_class"):
        if getattr(args, flag):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if scheduler == "sh" and args.brackets > 1:
        cmd += ["--brackets", str(args.brackets)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    sweep_id = next(line.split()[1].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("sweep "))
    return {"sweep_id": sweep_id, "command": " ".join(["bkdbench", *cmd[3:]]), "wall_seconds": round(wall, 1)}


def summarise(run: dict, args) -> dict:
    from bkdbench.leaderboard.store import read_rows
    from bkdbench.orchestrate.sweeps.driver import load_sweep_record, open_study, sweep_dir
    from bkdbench.orchestrate.sweeps.report import rank_agreement, search_noise

    record = load_sweep_record(args.results, run["sweep_id"])
    study = open_study(run["sweep_id"], sweep_dir(args.results, run["sweep_id"]))
    trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    epochs = record["config"]["epochs"]
    trained = sum(t.user_attrs.get("epochs_trained", epochs) for t in trials)
    rows, _ = read_rows(Path(args.results) / "leaderboard")
    tuned = rows[rows.run_id.isin(record["final_runs"]["tuned"]) & (rows.status == "finished")].sort_values("seed")
    return {**run, "scheduler": record["config"]["scheduler"], "rungs": record["config"].get("rungs"),
            "brackets": record["config"].get("brackets", 1), "trials": len(trials), "epochs_trained": trained,
            "full_budget_epochs": len(trials) * epochs, "fraction": round(trained / (len(trials) * epochs), 4),
            # against the full-budget sweep of --trials configurations (brackets add configurations)
            "fraction_of_full_sweep": round(trained / (args.trials * epochs), 4), "best_params": record["best_params"],
            "best_val_top1": record["best_val_top1"], "rank_agreement": rank_agreement(study),
            "val_images": record.get("val_images"), "search_noise": search_noise(study, record["val_images"])
            if record.get("val_images") else None,
            "test_top1_by_seed": {int(s): float(v) for s, v in zip(tuned.seed, tuned.top1)}}


def bottom_vs_full(sh: dict, full: dict, args) -> dict:
    """Spearman between the halving sweep's bottom-rung score and the full-budget sweep's score of the
    configurations both sweeps tried (the same sampler seed proposes the same first random ones): the
    rank agreement of the shortest rung with the full budget over more than the promoted few."""
    from bkdbench.orchestrate.sweeps.driver import open_study, sweep_dir
    from bkdbench.orchestrate.sweeps.report import spearman

    low = {}
    bottom = min(sh["rungs"])  # later Hyperband brackets start higher: not this rung
    for t in open_study(sh["sweep_id"], sweep_dir(args.results, sh["sweep_id"])).trials:
        if bottom in t.intermediate_values:
            low[json.dumps(t.params, sort_keys=True)] = t.intermediate_values[bottom]
    high = {}  # one score a configuration: a sweep resumed before make_sampler reseeded could repeat one
    for t in open_study(full["sweep_id"], sweep_dir(args.results, full["sweep_id"])).trials:
        if t.state.name == "COMPLETE" and (k := json.dumps(t.params, sort_keys=True)) in low:
            high.setdefault(k, t.value)
    pairs = [(low[k], v) for k, v in high.items()]
    return {"n": len(pairs), "spearman": spearman([a for a, _ in pairs], [b for _, b in pairs])}


def paired(sh: dict, full: dict) -> dict:
    seeds = sorted(set(sh["test_top1_by_seed"]) & set(full["test_top1_by_seed"]))
    diffs = [sh["test_top1_by_seed"][s] - full["test_top1_by_seed"][s] for s in seeds]
    values = [full["test_top1_by_seed"][s] for s in seeds]
    out = {"seeds": seeds, "differences": diffs, "mean_difference": sum(diffs) / len(diffs) if diffs else None}
    if len(seeds) >= 2:
        t = T975.get(len(seeds) - 1, 2.0)
        sd = math.sqrt(sum((d - out["mean_difference"]) ** 2 for d in diffs) / (len(diffs) - 1))
        out["difference_ci95"] = [out["mean_difference"] - t * sd / math.sqrt(len(diffs)),
                                  out["mean_difference"] + t * sd / math.sqrt(len(diffs))]
        mean = sum(values) / len(values)
        sdv = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        out["full_ci95"] = [mean - t * sdv / math.sqrt(len(values)), mean + t * sdv / math.sqrt(len(values))]
        sh_mean = sum(sh["test_top1_by_seed"][s] for s in seeds) / len(seeds)
        out["sh_mean"], out["full_mean"] = sh_mean, mean
        out["sh_within_full_ci95"] = out["full_ci95"][0] <= sh_mean <= out["full_ci95"][1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a results folder of its own (e.g. under /tmp)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--imbalance", type=float, default=50)
    parser.add_argument("--compare", default="bkd", help="methods swept both ways (comma-separated)")
    parser.add_argument("--sh-only", default="ldam-drw", help="methods swept with halving only (rank agreement)")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None, help="full budget (default: the recipe's)")
    parser.add_argument("--model", default=None, help="model (default: the dataset's), e.g. resnet8")
    parser.add_argument("--recipe", default=None, help="recipe (default: the dataset's), e.g. cpu-short")
    parser.add_argument("--min-epochs", type=int, default=None, help="the shortest rung (sweep --min-epochs)")
    parser.add_argument("--data-dir", default=None, help="the dataset's folder (an image folder, the CIFAR files)")
    parser.add_argument("--val-per-class", type=int, default=None, help="validation images a class (sweep --val-per-class)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--final-seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--brackets", type=int, default=1, help="the halving sweep's Hyperband brackets (sweep --brackets)")
    args = parser.parse_args()
    from bkdbench.provenance import git_sha

    load_before = os.getloadavg()
    out = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_sha": git_sha(),
           "argv": sys.argv, "load_before": load_before, "methods": {}}
    for method in [m for m in args.compare.split(",") if m]:
        sh = summarise(sweep(method, "sh", args), args)
        full = summarise(sweep(method, "none", args), args)
        out["methods"][method] = {"sh": sh, "full": full, "paired_test": paired(sh, full),
                                  "bottom_vs_full": bottom_vs_full(sh, full, args)}
    for method in [m for m in args.sh_only.split(",") if m]:
        out["methods"][method] = {"sh": summarise(sweep(method, "sh", args), args)}
    out["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    for method, res in out["methods"].items():
        sh = res["sh"]
        rho = ", ".join(f"{p['low']}→{p['high']}: {p['spearman'] if p['spearman'] is None else round(p['spearman'], 2)}"
                        f" (n={p['n']})" for p in sh["rank_agreement"])
        print(f"{method}: sh ({sh['brackets']} bracket(s), {sh['trials']} configurations) trained "
              f"{sh['epochs_trained']} of {sh['full_budget_epochs']} epochs ({sh['fraction']:.2f}; "
              f"{sh['fraction_of_full_sweep']:.2f} of {args.trials} full-budget trials); rungs {sh['rungs']}; Spearman {rho}; best val {sh['best_val_top1']:.1f}")
        if "bottom_vs_full" in res:
            print(f"  bottom rung vs the full-budget sweep, same configurations: {res['bottom_vs_full']}")
        if "paired_test" in res:
            p = res["paired_test"]
            print(f"  full: best val {res['full']['best_val_top1']:.1f}; test by seed sh {sh['test_top1_by_seed']} "
                  f"full {res['full']['test_top1_by_seed']}; paired difference {p['mean_difference']:+.2f}"
                  + (f" (95% CI {p['difference_ci95'][0]:+.2f} to {p['difference_ci95'][1]:+.2f}); sh mean inside "
                     f"the full search's 95% interval: {p['sh_within_full_ci95']}" if "difference_ci95" in p else ""))


if __name__ == "__main__":
    main()
