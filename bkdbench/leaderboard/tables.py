"""Leaderboard numbers as plain data for a page: one table per (dataset, imbalance factor) with every
metric as mean ± std (seeds), paired comparisons against a baseline, and every run's provenance.

Nothing here renders HTML; ``report`` hands these dicts to its template. Values are the same
aggregates the terminal tables show (``aggregate.summarise``, ``aggregate.paired_difference``):
last-epoch test numbers, seeds as replicates, nothing chosen on the test set.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from bkdbench.leaderboard.aggregate import (
    CELL, LOWER_IS_BETTER, REPLICATE, _finished, _present, paired_difference, summarise)
from bkdbench.leaderboard.render import DESCRIPTIONS, format_cell

# The page's leaderboard columns, in order: the headline first, then the shot splits, validation and
# calibration. (top1_best_epoch, the papers' optimistic protocol, is in each run's details only.)
COLUMNS = (("top1", "top-1"), ("many", "many"), ("medium", "medium"), ("few", "few"),
           ("val_top1", "val top-1"), ("ece", "ECE"), ("nll", "NLL"))


def leaderboard_tables(rows: pd.DataFrame) -> list[dict]:
    """Per (dataset, IF), datasets by name and factors high to low: ``columns`` (metric, heading,
    description), ``rows`` ranked by top-1 (label, cells with text/best flag, seeds, run ids)."""
    summaries = {metric: summarise(rows, metric) for metric, _ in COLUMNS}
    members = _finished(rows, "top1")
    top = summaries["top1"]
    out = []
    cells = top[CELL].drop_duplicates().sort_values(CELL, ascending=[True, False])
    for dataset, factor in cells.itertuples(index=False):
        table_rows = []
        part = {m: s[(s["dataset"] == dataset) & (s["imbalance_factor"] == factor)].set_index("label")
                for m, s in summaries.items()}
        best = {m: (p["mean"].min() if m in LOWER_IS_BETTER else p["mean"].max()) if not p.empty else None
                for m, p in part.items()}
        mine = members[(members["dataset"] == dataset) & (members["imbalance_factor"] == factor)]
        for label in part["top1"].sort_values("mean", ascending=False).index:
            shown = []
            for metric, _ in COLUMNS:
                if label not in part[metric].index:
                    shown.append({"text": "–", "best": False})
                    continue
                cell = part[metric].loc[label]
                shown.append({"text": format_cell(cell["mean"], cell["std"], cell["n"], metric),
                              "best": bool(np.isclose(cell["mean"], best[metric]))})
            runs = mine[mine["label"] == label].sort_values(REPLICATE)
            table_rows.append({"label": label, "cells": shown, "seeds": int(part["top1"].loc[label, "n"]),
                               "run_ids": list(runs["run_id"])})
        out.append({"dataset": str(dataset), "imbalance_factor": float(factor),
                    "columns": [{"metric": m, "heading": h, "description": DESCRIPTIONS[m]} for m, h in COLUMNS],
                    "rows": table_rows})
    return out


def comparisons(rows: pd.DataFrame, baseline: str, metric: str = "top1") -> list[dict]:
    """Every other label against ``baseline``, paired by seed per (dataset, IF), with the 95% CI.
    Cells where the baseline has no runs are left out; an empty list when it has none anywhere."""
    labels = summarise(rows, metric)
    out = []
    for (dataset, factor), part in labels.groupby(CELL, sort=True):
        if baseline not in set(part["label"]):
            continue
        for label in sorted(set(part["label"]) - {baseline}):
            result = paired_difference(rows, label, baseline, metric=metric, dataset=str(dataset), imbalance=factor)
            result = result[(result["dataset"] == dataset) & np.isclose(result["imbalance_factor"], factor)]
            for r in result.itertuples(index=False):
                out.append(_comparison(label, baseline, r, metric))
    return sorted(out, key=lambda c: (c["dataset"], -c["imbalance_factor"], -c["mean_diff"]))


def _comparison(a: str, b: str, r, metric: str) -> dict:
    has_ci = not math.isnan(r.ci_low)
    lower = metric in LOWER_IS_BETTER
    verdict = "fewer than 2 pairs: no interval"
    if has_ci:
        if r.ci_low > 0 or r.ci_high < 0:
            a_better = (r.mean_diff < 0) if lower else (r.mean_diff > 0)
            verdict = f"{'A' if a_better else 'B'} better (CI excludes 0)"
        else:
            verdict = "no clear difference (CI contains 0)"
    return {"a": a, "b": b, "dataset": str(r.dataset), "imbalance_factor": float(r.imbalance_factor),
            "pairs": int(r.n), "mean_a": r.mean_a, "mean_b": r.mean_b, "mean_diff": r.mean_diff,
            "ci": [r.ci_low, r.ci_high] if has_ci else None, "verdict": verdict}


# Provenance shown for each run; the full row (spec, recipe, history) is in the page's runs.json.
RUN_FIELDS = ("run_id", "status", "dataset", "imbalance_factor", "method", "seed", "data_seed", "model", "epochs",
              "top1", "val_top1", "top1_best_epoch", "suite", "sweep_id", "ablation_id", "teacher_run_id", "device",
              "host", "bkdbench_version", "git_sha", "torch_version", "started_at", "finished_at", "train_seconds",
              "plugins")


def _plain(value):
    """A JSON-ready value: None for missing, Python scalars, ISO timestamps, lists as lists."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def _json_or_none(text):
    return json.loads(text) if isinstance(text, str) and text else None


def run_records(rows: pd.DataFrame) -> list[dict]:
    """Every run on the page, newest last: its provenance, spec, the command that retrains it alone,
    and (for runs.json) the parsed params, recipe and per-epoch history."""
    rows = rows.sort_values(["dataset", "method", "seed", "run_id"], kind="stable")
    out = []
    for _, row in rows.iterrows():
        record = {key: _plain(row.get(key)) for key in RUN_FIELDS}
        record.update(params=_json_or_none(row.get("params")) or {}, recipe=_json_or_none(row.get("recipe")) or {},
                      history=_json_or_none(row.get("history")), command=retrain_command(row))
        out.append(record)
    return out


def retrain_command(row) -> str:
    """``bkdbench train ...`` that trains this run's spec again on its own (same run id for the
    built-in datasets; an image folder needs its --data-dir too)."""
    recipe = _json_or_none(row.get("recipe")) or {}
    parts = ["bkdbench", "train", "--dataset", str(row["dataset"]), "--imbalance",
             "natural" if row.get("profile") == "natural" else f"{row['imbalance_factor']:g}",
             "--method", str(row["method"]), "--seed", str(int(row["seed"])),
             "--data-seed", str(int(row["data_seed"]))]
    if row.get("profile") not in (None, "exp", "natural"):
        parts += ["--profile", str(row["profile"])]
    parts += ["--model", str(row["model"])]
    if recipe.get("name"):
        parts += ["--recipe", str(recipe["name"])]
    parts += ["--epochs", str(int(row["epochs"]))]
    if row.get("split") == "reference":  # the default is every-class
        parts += ["--split", "reference"]
    if _present(row.get("val_per_class")):  # the default is the dataset's own V
        parts += ["--val-per-class", str(int(row["val_per_class"]))]
    if row.get("select") == "best-val":  # the default keeps the last epoch
        parts += ["--select", "best-val"]
    plugins = row.get("plugins")
    for ref in plugins.split(",") if isinstance(plugins, str) else ():  # outside code, by module name
        parts += ["--plugin", ref.partition("@")[0].strip()]
    for name, value in sorted((_json_or_none(row.get("params")) or {}).items()):
        if name == "classes":  # a class-subset teacher: trained by its student's run, not on its own
            continue
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        parts += ["-p", f"{name}={shown}"]
    return " ".join(parts)
