"""From leaderboard rows to numbers people compare: mean ± std over seeds, paired differences.

Seeds are the unit of replication. A "cell" is (dataset, imbalance_factor, label); its rows are
one per (seed, data_seed) and only finished runs count. Comparisons pair two configurations
seed by seed, which removes the shared data-order and initialisation noise.

Labels (see ``method_label``/``with_labels``) name a configuration for display:
- a row from a hyperparameter sweep (``sweep_id`` set): ``"<method> (tuned)"``;
- otherwise the method name, followed by the parameters that differ between the rows of that
  method in the frame being shown, e.g. ``"bkd (alpha=0.5, temperature=2)"``. Parameters that
  are the same in every row (or were left at their defaults) are not shown, so a suite table
  says ``"bkd"`` while an ablation table tells its variants apart.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

METRICS = ("top1", "top1_best_epoch", "val_top1", "many", "medium", "few", "ece", "nll")
LOWER_IS_BETTER = frozenset({"ece", "nll"})
CELL = ["dataset", "imbalance_factor"]
REPLICATE = ["seed", "data_seed"]


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is a leaderboard metric, else raise ValueError listing them."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    return metric


def _present(value) -> bool:
    """A cell holds a real value (not None/NaN/NA/empty string)."""
    if value is None or (isinstance(value, str) and not value):
        return False
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and dicts are present
        return True


def _params(row: Mapping) -> dict:
    raw = row.get("params")
    if isinstance(raw, Mapping):
        return dict(raw)
    if not _present(raw):
        return {}
    return json.loads(raw)


# Parameters a method makes explicit from each long-tailed set's counts (class-subset KD's shot
# groups): different per imbalance factor by construction, so they tell rows apart only within a cell.
DATA_DERIVED = frozenset({"groups"})
# Not method parameters, but a different value is a different configuration (a smoke run, the other
# validation split, or another number of validation images per class: its training set differs in the
# classes it takes validation images from; other starting weights).
SETUP = ("model", "epochs", "split", "val_per_class", "pretrained", "select", "weights", "teacher")  # other weights / teacher: another cell


def keyed_datasets(df: pd.DataFrame) -> pd.DataFrame:
    """Rows from two different image folders are two datasets, never one cell: where a row has a
    ``data_key``, its dataset reads ``imagefolder@<first 8 hex digits of the key>``."""
    if "data_key" not in df or df.empty:
        return df
    keyed = df["data_key"].map(_present) & ~df["dataset"].astype(str).str.contains("@", regex=False)
    if not keyed.any():
        return df
    out = df.copy()
    out.loc[keyed, "dataset"] = (out.loc[keyed, "dataset"].astype(str) + "@"
                                 + out.loc[keyed, "data_key"].astype(str).str[:8])
    return out


def select_dataset(df: pd.DataFrame, name: str | None) -> pd.DataFrame:
    """Rows of dataset ``name`` (after ``keyed_datasets``): ``imagefolder`` selects every folder,
    ``imagefolder@1a2b3c4d`` one of them (any unambiguous prefix of its key)."""
    if name is None or df.empty:
        return df
    column = df["dataset"].astype(str)
    return df[(column == name) | column.str.startswith(f"{name}@")
              | (column.str.startswith(name) if "@" in name else False)]


def _config(row: Mapping) -> dict:
    """The row's method parameters plus the setup keys, so that (say) a 5-epoch smoke run is
    never averaged with 200-epoch runs as if it were another seed."""
    setup = {key: row.get(key) for key in SETUP if _present(row.get(key))
             and not (key == "select" and row.get(key) == "last")}  # "last" is what rows without the column did
    return {**_params(row), **{k: (int(v) if isinstance(v, (float, np.floating)) and float(v).is_integer() else v)
                               for k, v in setup.items()}}


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_label(row: Mapping, varying: Iterable[str] | None = None, config: dict | None = None) -> str:
    """Display name of a row's configuration.

    Sweep rows: ``"<method> (tuned)"``. Otherwise the method name plus the parameters named in
    ``varying`` that the row sets; with ``varying=None`` an ablation row (``ablation_id`` set)
    shows all its parameters and any other row just its method name. ``config``: the row's
    ``_config``, when the caller already has it.
    """
    method = str(row.get("method"))
    if _present(row.get("sweep_id")):
        return f"{method} (tuned)"
    params = _config(row) if config is None else config
    if varying is None:
        varying = _params(row) if _present(row.get("ablation_id")) else ()
    shown = [f"{key}={_show(params[key])}" for key in sorted(varying) if key in params]
    return f"{method} ({', '.join(shown)})" if shown else method


def _varying_params(dicts: list[dict]) -> set[str]:
    """Parameter names whose value differs between configurations (absent counts as a value)."""
    keys = set().union(*dicts) if dicts else set()
    missing = object()
    return {k for k in keys if len({json.dumps(d.get(k, missing), default=repr) for d in dicts}) > 1}


# The columns a label is made of (rows are wide: history and per-class lists; reading only these
# keeps labelling 300 rows in milliseconds).
SEEN_IN1K = " [seen IN-1k]"  # the mark of a row whose starting weights have seen ImageNet-1k labels
_LABEL_COLUMNS = ("method", "params", "sweep_id", "ablation_id", *SETUP, *CELL)


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with a ``label`` column (see the module docstring for the rule)."""
    out = df.copy()
    if out.empty:
        out["label"] = pd.Series(dtype=object)
        return out
    narrow = out[[c for c in _LABEL_COLUMNS if c in out]]
    records = dict(zip(out.index, narrow.to_dict("records")))
    configs = {index: _config(row) for index, row in records.items()}
    labels = pd.Series(index=out.index, dtype=object)
    tuned = out["sweep_id"].map(_present) if "sweep_id" in out else pd.Series(False, index=out.index)
    for _, rows in narrow[~tuned].groupby("method", dropna=False):
        varying = _varying_params([configs[i] for i in rows.index]) - DATA_DERIVED
        for _, cell in rows.groupby(CELL, dropna=False):  # ... unless they differ inside one cell
            varying |= _varying_params([configs[i] for i in cell.index]) & DATA_DERIVED
        for index in rows.index:
            labels[index] = method_label(records[index], varying, configs[index])
    for index in out.index[tuned.to_numpy(dtype=bool)]:
        labels[index] = method_label(records[index])
    if "seen_in1k" in out:  # docs/foundation.md: its backbone (or teacher's) has seen ImageNet-1k labels
        seen = out["seen_in1k"].map(lambda v: v is True or v is np.True_)
        labels[seen] = labels[seen] + SEEN_IN1K
    out["label"] = labels
    return out


def _finished(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Finished rows with a value for ``metric``, labelled, one per replicate (the newest)."""
    check_metric(metric)
    rows = df[df["status"] == "finished"] if "status" in df else df
    rows = rows[rows[metric].notna()] if metric in rows else rows.iloc[0:0]
    rows = with_labels(keyed_datasets(rows))
    if "finished_at" in rows:
        rows = rows.sort_values("finished_at", kind="stable", na_position="first")
    key = CELL + ["label"] + [c for c in REPLICATE if c in rows]
    return rows.drop_duplicates(subset=key, keep="last")


def summarise(df: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed) and seed count per (dataset, IF, label)."""
    rows = _finished(df, metric)
    columns = CELL + ["label", "mean", "std", "n"]
    if rows.empty:
        summary = pd.DataFrame({c: pd.Series(dtype=float if c in ("mean", "std") else object)
                                for c in columns})
    else:
        grouped = rows.groupby(CELL + ["label"], dropna=False)[metric]
        summary = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
        summary["n"] = summary["n"].astype(int)
    summary = summary[columns].sort_values(CELL + ["label"], ignore_index=True)
    summary.attrs["metric"] = metric
    return summary


def _select(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows whose label is ``name``; failing that, rows of method ``name`` if it is one config."""
    chosen = rows[rows["label"] == name]
    if chosen.empty:
        chosen = rows[rows["method"] == name]
        labels = sorted(chosen["label"].unique())
        if len(labels) > 1:
            raise ValueError(f"{name!r} matches several configurations ({'; '.join(labels)}); "
                             "pass one of these labels")
    if chosen.empty:
        known = "; ".join(sorted(rows["label"].unique())) or "none"
        raise ValueError(f"no finished runs for {name!r}; labels with runs: {known}")
    return chosen


def paired_difference(df: pd.DataFrame, a: str, b: str, metric: str = "top1",
                      dataset: str | None = None, imbalance: float | None = None) -> pd.DataFrame:
    """Per (dataset, IF): mean of the per-seed differences a − b with a Student-t 95% CI.

    ``a`` and ``b`` are labels (or method names that map to one label). Rows pair on
    (dataset, imbalance_factor, seed, data_seed). Columns: dataset, imbalance_factor, n,
    mean_a, mean_b, mean_diff, sd_diff, ci_low, ci_high, diffs (per-pair list). The CI is
    NaN with fewer than two pairs. ``attrs`` holds a, b and metric.
    """
    rows = select_dataset(_finished(df, metric), dataset)
    if imbalance is not None:
        rows = rows[np.isclose(rows["imbalance_factor"].astype(float), float(imbalance))]
    left, right = _select(rows, a), _select(rows, b)
    key = CELL + REPLICATE
    pairs = left[key + [metric]].merge(right[key + [metric]], on=key, suffixes=("_a", "_b"))
    records = []
    for (data, factor), group in pairs.groupby(CELL, sort=True, dropna=False):
        group = group.sort_values(REPLICATE)
        diffs = (group[f"{metric}_a"] - group[f"{metric}_b"]).to_numpy(dtype=float)
        records.append(_pair_stats(data, factor, group, metric, diffs))
    result = pd.DataFrame(records, columns=CELL + [
        "n", "mean_a", "mean_b", "mean_diff", "sd_diff", "ci_low", "ci_high", "diffs"])
    # Same order as the tables: datasets by name, imbalance factors high to low.
    result = result.sort_values(CELL, ascending=[True, False], ignore_index=True)
    result.attrs.update(a=a, b=b, metric=metric)
    return result


def _pair_stats(data, factor, group, metric, diffs: np.ndarray) -> dict:
    n = len(diffs)
    mean = float(diffs.mean())
    sd = float(diffs.std(ddof=1)) if n > 1 else math.nan
    low = high = math.nan
    if n > 1:
        from scipy import stats  # imported here: scipy is slow to import and only this needs it
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return {"dataset": data, "imbalance_factor": factor, "n": n,
            "mean_a": float(group[f"{metric}_a"].mean()), "mean_b": float(group[f"{metric}_b"].mean()),
            "mean_diff": mean, "sd_diff": sd, "ci_low": low, "ci_high": high,
            "diffs": diffs.tolist()}


def unknown_names(folder, names: list[str]) -> str | None:
    """One line for the first of ``names`` that is neither a method nor a label with finished runs in
    the leaderboard ``folder`` (its close matches and the methods present), or None when all are."""
    import difflib

    from .store import read_rows

    rows, _ = read_rows(folder)
    rows = rows[rows["status"] == "finished"]
    methods = sorted(set(rows["method"].dropna()))
    known = set(methods) | set(with_labels(rows)["label"]) if not rows.empty else set()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
            hint = f"close matches: {', '.join(close)}; " if close else ""
            return (f"no finished runs for {name!r} in {folder} ({hint}methods present: {', '.join(methods) or 'none'}); "
                    f"a method with no runs yet needs `bkdbench train --method {name}` or `bkdbench run` first")
    return None
