"""Leaderboard rows written straight into a results folder, with numbers a test can check by hand: a
digits suite (ce, kd, bkd × 3 seeds), an α × T ablation of bkd and a finished sweep (an Optuna study
with fixed trials, its record and its final runs). No training, no Ray."""
from __future__ import annotations

import json

from bkdbench.leaderboard.store import write_row
from bkdbench.paths import leaderboard_dir

COUNTS = [100, 77, 60, 46, 36, 28, 21, 16, 13, 10]  # digits at IF 10
SUITE_TOP1 = {"ce": [60.0, 62.0, 64.0], "kd": [63.0, 64.0, 68.0], "bkd": [70.0, 72.0, 74.0]}
PROVENANCE = {"host": "testhost", "bkdbench_version": "0.1.0", "git_sha": "abc123def4567890", "torch_version": "2.14.1",
              "device": "cpu"}


def row(run_id: str, method: str, seed: int, top1: float, *, params=None, history=True, **tags) -> dict:
    """One finished digits run at IF 10 whose metrics all follow from ``top1``."""
    per_class = [min(100.0, top1 + 20 - 4 * i) for i in range(10)]
    epochs = [{"epoch": e, "lr": 0.1 * (1 - e / 3), "train_loss": 2.0 - 0.5 * e - top1 / 1000, "seconds": 0.5,
               "images": 407, **({"val_top1": top1 - 6 + 3 * e, "test_top1": top1 - 6 + 3 * e} if e else {})}
              for e in range(3)]
    return {"run_id": run_id, "status": "finished", "dataset": "digits", "imbalance_factor": 10.0, "profile": "exp",
            "data_seed": 0, "split": "every-class", "model": "digits-cnn", "method": method, "params": params or {},
            "recipe": {"name": "small", "epochs": 3}, "epochs": 3, "seed": seed, "top1": top1,
            "top1_best_epoch": top1 + 1, "val_top1": top1 - 1, "many": top1 + 10, "medium": top1, "few": top1 - 20,
            "ece": 30 - top1 / 5, "nll": 2.0 - top1 / 100, "per_class_acc": per_class, "class_counts": COUNTS,
            "many_threshold": 50, "few_threshold": 15, "train_seconds": 1.5, "images_per_second": 800.0,
            "history": epochs if history else None, "started_at": "2026-01-02T03:04:05",
            "finished_at": f"2026-01-02T03:05:0{seed}", **PROVENANCE, **tags}


def write_suite_rows(root) -> dict[str, list[str]]:
    """The digits-lt suite's rows; returns the run ids per method."""
    ids = {}
    for method, values in SUITE_TOP1.items():
        ids[method] = [f"{method}-s{seed}" for seed in range(3)]
        for seed, top1 in enumerate(values):
            write_row(leaderboard_dir(root), row(f"{method}-s{seed}", method, seed, top1, suite="digits-lt"))
    return ids


ABLATION = "bkd-ablation-test"
ALPHAS, TEMPERATURES = (0.5, 1.0), (2.0, 4.0)


def ablation_top1(alpha: float, temperature: float, seed: int) -> float:
    return 60 + 10 * alpha + temperature + seed


def write_ablation_rows(root) -> list[str]:
    ids = []
    for alpha in ALPHAS:
        for temperature in TEMPERATURES:
            for seed in range(2):
                run_id = f"abl-a{alpha:g}-t{temperature:g}-s{seed}"
                write_row(leaderboard_dir(root), row(run_id, "bkd", seed, ablation_top1(alpha, temperature, seed),
                                                     params={"alpha": alpha, "temperature": temperature},
                                                     ablation_id=ABLATION))
                ids.append(run_id)
    return ids


SWEEP = "bkd-digits-if10-test0001"
SWEEP_TRIALS = [({"alpha": 0.5, "temperature": 2.0}, 61.0), ({"alpha": 1.0, "temperature": 4.0}, 66.5),
                ({"alpha": 2.0, "temperature": 1.5}, 63.0), ({"alpha": 0.25, "temperature": 3.0}, 58.0)]


def write_sweep(root) -> dict[str, list[str]]:
    """A finished sweep: the Optuna study (journal in the sweep folder), sweep.json, and its final
    rows (tuned ones tagged with the sweep id, defaults not, as ``bkdbench sweep`` writes them)."""
    import optuna

    from bkdbench.orchestrate.sweeps.study import open_study
    from bkdbench.orchestrate.sweeps.driver import sweep_dir

    folder = sweep_dir(root, SWEEP)
    folder.local.mkdir(parents=True, exist_ok=True)
    study = open_study(SWEEP, folder)
    space = {"alpha": optuna.distributions.FloatDistribution(0.1, 4.0, log=True),
             "temperature": optuna.distributions.FloatDistribution(1.0, 8.0)}
    for params, value in SWEEP_TRIALS:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))
    finals = {"tuned": [f"tuned-s{s}" for s in range(2)], "default": [f"default-s{s}" for s in range(2)]}
    for seed in range(2):
        write_row(leaderboard_dir(root), row(f"tuned-s{seed}", "bkd", seed, 71.0 + seed,
                                             params={"alpha": 1.0, "temperature": 4.0}, sweep_id=SWEEP))
        write_row(leaderboard_dir(root), row(f"default-s{seed}", "bkd", seed, 68.0 + 2 * seed))
    record = {"config": {"method": "bkd", "dataset": "digits", "imbalance": 10.0, "sampler": "tpe", "scheduler": "asha",
                         "epochs": 3, "seed": 0, "data_seed": 0, "space_file": "x", "space_hash": "y"},
              "sweep_id": SWEEP, "trials": len(SWEEP_TRIALS), "best_params": {"alpha": 1.0, "temperature": 4.0},
              "best_trial": 1, "best_val_top1": 66.5, "final_runs": finals, "optuna_storage": None,
              "val_images": 100}
    (folder / "sweep.json").write_text(json.dumps(record))
    return finals
