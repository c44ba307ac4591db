"""Ablation summaries: marginal effects per factor level and α × T style heatmaps (torch-free)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd


def expand_params(rows: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    """Finished rows with one column per factor (parameters from the params JSON)."""
    rows = rows[rows["status"] == "finished"].copy()
    parsed = rows["params"].map(lambda p: json.loads(p) if isinstance(p, str) else dict(p or {}))
    for name in factors:
        if name not in rows:
            rows[name] = parsed.map(lambda d, n=name: d.get(n))
    return rows


def marginal_effects(rows: pd.DataFrame, factors: list[str], metric: str = "top1") -> pd.DataFrame:
    """For every factor and each of its levels: mean, std and count of ``metric`` over all runs at
    that level (every other factor and every seed pooled). Columns: factor, level, mean, std, n."""
    data = expand_params(rows, factors)
    out = []
    for name in factors:
        for level, group in data.groupby(data[name].map(_key), sort=True):
            values = group[metric].dropna()
            out.append({"factor": name, "level": level, "mean": values.mean(),
                        "std": values.std(ddof=1) if len(values) > 1 else np.nan, "n": len(values)})
    return pd.DataFrame(out, columns=["factor", "level", "mean", "std", "n"])


def _key(value):
    return str(value) if isinstance(value, (bool, np.bool_)) or value is None else value


def plot_heatmaps(rows: pd.DataFrame, x: str, y: str, out_path, metric: str = "top1"):
    """One heatmap panel per imbalance factor: mean ``metric`` over seeds for each (x, y) cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    data = expand_params(rows, [x, y])
    factors = sorted(data["imbalance_factor"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors), 3.8), squeeze=False)
    for ax, factor in zip(axes[0], factors):
        table = data[data["imbalance_factor"] == factor].pivot_table(index=y, columns=x, values=metric, aggfunc="mean")
        image = ax.imshow(table.values, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(table.columns)), [f"{v:g}" if isinstance(v, float) else str(v) for v in table.columns])
        ax.set_yticks(range(len(table.index)), [f"{v:g}" if isinstance(v, float) else str(v) for v in table.index])
        for (i, j), value in np.ndenumerate(table.values):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if value < np.nanmean(table.values) else "black")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(f"IF {factor:g}")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"mean {metric} (%) over seeds", fontsize=10)
    fig.tight_layout()
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
