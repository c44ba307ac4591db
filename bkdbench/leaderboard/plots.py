"""PNG figures from leaderboard rows: per-class accuracy head→tail, and a summary per dataset.

Uses matplotlib's Agg backend (no display needed; set before pyplot is imported). Each function
writes one file, closes its figure and returns the path.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bkdbench.leaderboard.aggregate import (  # noqa: E402
    CELL, LOWER_IS_BETTER, REPLICATE, check_metric, keyed_datasets, select_dataset, summarise, with_labels)
from bkdbench.leaderboard.render import DESCRIPTIONS  # noqa: E402

# Shot-split boundaries (training images per class) from the evaluation protocol.
MANY_ABOVE, FEW_BELOW = 100, 20


def _thresholds(row) -> tuple[int, int]:
    """The row's own shot thresholds (small datasets use their own), else the protocol's."""
    many, few = row.get("many_threshold"), row.get("few_threshold")
    ok = lambda v: v is not None and v == v  # noqa: E731  (NaN check)
    return (int(many) if ok(many) else MANY_ABOVE, int(few) if ok(few) else FEW_BELOW)


def _colours(labels: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _save(fig, out_path) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")  # keeps wide legends inside the image
    plt.close(fig)
    return path


def _per_class_rows(df: pd.DataFrame, dataset: str, imbalance: float) -> pd.DataFrame:
    rows = select_dataset(keyed_datasets(df[df["status"] == "finished"]), dataset)
    folders = sorted(rows["dataset"].unique())
    if len(folders) > 1:
        raise ValueError(f"{dataset} names {len(folders)} datasets ({', '.join(folders)}): pass one of them")
    rows = rows[np.isclose(rows["imbalance_factor"].astype(float), float(imbalance))]
    has_lists = rows["per_class_acc"].map(lambda v: v is not None and len(v) > 0) \
        & rows["class_counts"].map(lambda v: v is not None and len(v) > 0)
    rows = with_labels(rows[has_lists])
    if rows.empty:
        raise ValueError(f"no finished runs with per-class accuracy for {dataset} at IF {imbalance:g}")
    if "finished_at" in rows:
        rows = rows.sort_values("finished_at", kind="stable", na_position="first")
    return rows.drop_duplicates(subset=CELL + ["label"] + REPLICATE, keep="last")


def plot_per_class(df: pd.DataFrame, dataset: str, imbalance: float, out_path) -> Path:
    """Per-class test accuracy from head to tail classes, one line (mean ± std band) per label.

    Classes are ordered by training count, largest first; grey bars (right, log axis) show the
    counts. Dashed lines mark the many/medium/few-shot boundaries when the data crosses them.
    """
    rows = _per_class_rows(df, dataset, imbalance)
    counts = np.asarray(rows["class_counts"].iloc[0], dtype=float)
    order = np.argsort(-counts, kind="stable")
    x = np.arange(len(counts))
    labels = sorted(rows["label"].unique())
    colours = _colours(labels)

    fig, acc_ax = plt.subplots(figsize=(9, 5), layout="constrained")
    count_ax = acc_ax.twinx()
    count_ax.bar(x, counts[order], width=0.9, color="0.85", label="training images")
    count_ax.set_yscale("log")
    count_ax.set_ylabel("training images per class (log)", color="0.4")
    count_ax.tick_params(axis="y", colors="0.4")
    # Draw accuracy lines above the bars: raise their axes and make its background see-through.
    acc_ax.set_zorder(count_ax.get_zorder() + 1)
    acc_ax.patch.set_visible(False)

    for label in labels:
        per_seed = [np.asarray(v, dtype=float) for v in rows.loc[rows["label"] == label, "per_class_acc"]]
        if any(len(v) != len(counts) for v in per_seed):
            raise ValueError(f"{label}: per-class accuracy and class counts disagree in length")
        stack = np.vstack(per_seed)[:, order]
        mean = stack.mean(axis=0)
        colour = colours[label]
        acc_ax.plot(x, mean, color=colour, lw=1.8, marker="o" if len(x) <= 20 else None, ms=4,
                    label=f"{label} (n={len(per_seed)})")
        if len(per_seed) > 1:
            std = stack.std(axis=0, ddof=1)
            acc_ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, lw=0)

    sorted_counts = counts[order]
    many_above, few_below = _thresholds(rows.iloc[0])
    # many-shot: > many_above images, few-shot: < few_below; mark where the sorted counts leave each split.
    for leaves_split, text in ((sorted_counts <= many_above, "many | medium"),
                               (sorted_counts < few_below, "medium | few")):
        first = int(np.argmax(leaves_split)) if leaves_split.any() else 0
        if first > 0:
            acc_ax.axvline(first - 0.5, color="0.5", ls="--", lw=0.8)
            acc_ax.text(first - 0.5, 100.8, text, ha="center", va="bottom", fontsize=8, color="0.35")

    acc_ax.set_ylim(0, 100)
    acc_ax.set_xlim(-0.6, len(x) - 0.4)
    acc_ax.set_ylabel("test accuracy per class (%)")
    if len(x) <= 20:
        acc_ax.set_xticks(x, [str(i) for i in order])
        acc_ax.set_xlabel("class index, ordered head → tail by training images")
    else:
        acc_ax.set_xlabel("classes ranked head → tail by training images")
    acc_ax.grid(axis="y", alpha=0.3)
    acc_ax.set_title(f"Per-class test accuracy — {dataset}, imbalance factor {imbalance:g}\n"
                     "line: mean over seeds, band: ± 1 std", fontsize=11, pad=18)
    handles, names = acc_ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 3), frameon=False)
    return _save(fig, out_path)


def plot_summary(df: pd.DataFrame, out_path, metric: str = "top1") -> Path:
    """One panel per dataset: each label's mean ± std (error bar) at each imbalance factor."""
    check_metric(metric)
    summary = summarise(df, metric)
    if summary.empty:
        raise ValueError(f"no finished runs with {metric} to plot")
    datasets = sorted(summary["dataset"].unique())
    labels = sorted(summary["label"].unique())
    colours = _colours(labels)
    ncols = min(len(datasets), 3)
    nrows = -(-len(datasets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 0.6, 3.9 * nrows + 0.8),
                             layout="constrained", squeeze=False)
    # Dodge the labels sideways so error bars at the same factor do not sit on top of each other.
    offsets = np.linspace(-0.3, 0.3, len(labels)) if len(labels) > 1 else np.zeros(1)
    for ax, dataset in zip(axes.flat, datasets):
        part = summary[summary["dataset"] == dataset]
        factors = sorted(part["imbalance_factor"].unique(), reverse=True)
        for label, offset in zip(labels, offsets):
            mine = part[part["label"] == label].set_index("imbalance_factor")
            xs = [i + offset for i, f in enumerate(factors) if f in mine.index]
            if not xs:
                continue
            present = [f for f in factors if f in mine.index]
            ax.errorbar(xs, mine.loc[present, "mean"], yerr=mine.loc[present, "std"].fillna(0),
                        fmt="o", color=colours[label], capsize=3, ms=5, label=label)
        ax.set_xticks(range(len(factors)), [f"{f:g}" for f in factors])
        ax.set_xlim(-0.6, len(factors) - 0.4)
        ax.set_xlabel("imbalance factor")
        ax.set_title(str(dataset))
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    unit = "nats" if metric == "nll" else "%"
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} ({unit})")
    # The ece/nll descriptions already say "lower is better"; say the direction for the others.
    direction = "" if metric in LOWER_IS_BETTER else " (higher is better)"
    fig.suptitle(f"{DESCRIPTIONS[metric]}\nmean ± std over seeds{direction}", fontsize=11)
    handles = [plt.Line2D([], [], color=colours[l], marker="o", ls="none") for l in labels]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
    return _save(fig, out_path)

