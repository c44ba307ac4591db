"""Training curves from the per-epoch history stored in each row: train loss, balanced validation and
test top-1 per epoch, one line per label (mean over seeds, band ± 1 std), one PNG per cell.

Rows written before the history column existed have none and are left out of the curves.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bkdbench.leaderboard.aggregate import keyed_datasets, with_labels
from bkdbench.leaderboard.plots import _colours, _save, plt

PANELS = (("train_loss", "train loss"), ("val_top1", "balanced validation top-1 (%)"),
          ("test_top1", "balanced test top-1 (%)"))


def histories(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, epoch) of the finished rows that carry a history: dataset, imbalance_factor,
    label, run_id, epoch and the per-epoch metrics (NaN on epochs that did not evaluate)."""
    rows = with_labels(keyed_datasets(rows[rows["status"] == "finished"]))
    records = []
    for _, row in rows.iterrows():
        text = row.get("history")
        if not isinstance(text, str) or not text:
            continue
        for epoch in json.loads(text):
            records.append({"dataset": row["dataset"], "imbalance_factor": row["imbalance_factor"],
                            "label": row["label"], "run_id": row["run_id"], "epoch": epoch["epoch"],
                            **{name: epoch.get(name, np.nan) for name, _ in PANELS}, "lr": epoch.get("lr")})
    return pd.DataFrame(records, columns=["dataset", "imbalance_factor", "label", "run_id", "epoch",
                                          *(name for name, _ in PANELS), "lr"])


def plot_curves(rows: pd.DataFrame, dataset: str, imbalance: float, out_path) -> Path:
    """Three panels (train loss, validation top-1, test top-1 against epoch) for one cell; ValueError
    when none of its finished rows has a stored history."""
    data = histories(rows)
    data = data[(data["dataset"] == dataset) & np.isclose(data["imbalance_factor"].astype(float), float(imbalance))]
    if data.empty:
        raise ValueError(f"no finished runs with a per-epoch history for {dataset} at IF {imbalance:g}")
    labels = sorted(data["label"].unique())
    colours = _colours(labels)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 4), layout="constrained")
    for ax, (name, title) in zip(axes, PANELS):
        for label in labels:
            mine = data[(data["label"] == label)].dropna(subset=[name])
            if mine.empty:
                continue
            stats = mine.groupby("epoch")[name].agg(["mean", "std", "count"])
            epochs = stats.index.to_numpy() + 1  # epochs counted from 1 on the axis
            runs = mine["run_id"].nunique()
            ax.plot(epochs, stats["mean"], color=colours[label], lw=1.6, label=f"{label} (n={runs})",
                    marker="o" if len(epochs) <= 12 else None, ms=3)
            if runs > 1:
                spread = stats["std"].fillna(0).to_numpy()
                ax.fill_between(epochs, stats["mean"] - spread, stats["mean"] + spread, color=colours[label],
                                alpha=0.15, lw=0)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training curves — {dataset}, imbalance factor {imbalance:g} (line: mean over seeds, "
                 "band: ± 1 std; the test curve is shown, never used to choose)", fontsize=10)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), frameon=False)
    return _save(fig, out_path)
