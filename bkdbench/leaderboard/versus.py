"""Our numbers beside the published ones: Δ = ours − published, with our 95 % interval, wherever the
protocol matches; elsewhere the reason it does not.

A cell is (dataset, imbalance factor, label) as in ``aggregate.summarise``. Its published entries are
those of the same dataset, imbalance factor (``natural`` for a natural-profile set) and method. The
protocol matches when the entry has a number, is not marked ``not_comparable``, names the same model,
and the same epoch budget: the run's ``epochs`` (for a two-stage method, the entry's ``stage2_epochs``
against the run's, and its ``epochs`` against the stage-1 run's, found by ``teacher_run_id``). Where
several entries match, the first comparable one is used (files list original papers first); where none
is comparable, the first with a number is shown with its reason. Ours: mean over seeds; the interval is
Student's t over seeds (none with one seed); Δ's interval is ours shifted by the published value (a
published number carries no interval). Published numbers are mostly best-test-epoch accuracies: with
``metric="top1_best_epoch"`` the comparison is like for like (the papers' protocol, optimistic).
"""
from __future__ import annotations

import json
import math
from typing import Optional

import pandas as pd

from bkdbench.leaderboard.aggregate import CELL, REPLICATE, _finished
from bkdbench.leaderboard.published_results import same_imbalance

# The published value compared with each of our metrics (best-epoch top-1 against the papers' top-1).
PUBLISHED_OF = {"top1": "top1", "top1_best_epoch": "top1", "many": "many", "medium": "medium", "few": "few"}
COLUMNS = CELL + ["label", "method", "n", "mean", "std", "low", "high", "published", "delta", "delta_low",
                  "delta_high", "comparable", "why", "source", "citation", "url"]


def check_published_metric(metric: str) -> str:
    if metric not in PUBLISHED_OF:
        raise ValueError(f"published results give top-1 and many/medium/few only; --metric {metric} has no "
                         f"published value (use one of: {', '.join(PUBLISHED_OF)})")
    return metric


def _recipe_name(value) -> str:
    if isinstance(value, dict):
        return str(value.get("name", "?"))
    try:
        return str(json.loads(value).get("name", "?"))
    except (TypeError, ValueError, AttributeError):
        return "?"


def _one(values) -> Optional[object]:
    """The single value of a cell's column (None when its rows disagree or it is missing)."""
    distinct = {v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}
    return next(iter(distinct)) if len(distinct) == 1 else None


def _interval(values: pd.Series) -> tuple[float, float, float, float]:
    """(mean, std, low, high): Student's t 95 % interval over seeds; NaN bounds with one seed."""
    n, mean = len(values), float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    from scipy import stats  # imported here: slow to import, needed only with two seeds or more

    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def why_not(entry, model, epochs, recipe, stage1_epochs) -> Optional[str]:
    """None when ``entry`` matches our protocol, else the reason in a few words."""
    if entry.get("top1") is None or pd.isna(entry.get("top1")):
        return f"no published number: {entry.get('note')}"
    if isinstance(entry.get("not_comparable"), str) and entry["not_comparable"]:
        return str(entry["not_comparable"])
    if model != entry["model"]:
        return f"model {model or 'mixed'}, published {entry['model']}"
    published_epochs = entry.get("epochs")
    if published_epochs is None or pd.isna(published_epochs):
        return "the source gives no epoch budget"
    stage2 = entry.get("stage2_epochs")
    if stage2 is not None and not pd.isna(stage2):
        if stage1_epochs is None:
            return "stage-1 budget unknown (its run is not in this leaderboard)"
        if int(stage1_epochs) != int(published_epochs) or (int(stage2) > 0 and epochs != int(stage2)):
            return (f"recipe {recipe}, {stage1_epochs}+{epochs} epochs "
                    f"(published {int(published_epochs)}+{int(stage2)})")
        return None
    if epochs != int(published_epochs):
        return f"recipe {recipe}, {epochs if epochs is not None else 'mixed'} epochs (published {int(published_epochs)})"
    return None


def versus_published(rows: pd.DataFrame, published: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """One row per cell of ours with ``COLUMNS`` (see the module docstring); cells with no published
    entry for their method say so. Sorted by dataset, imbalance factor (high first), label."""
    check_published_metric(metric)
    finished = _finished(rows, metric)
    epochs_of = {}
    if "run_id" in rows and "epochs" in rows:
        epochs_of = {r: e for r, e in zip(rows["run_id"], rows["epochs"]) if pd.notna(e)}
    value_column = PUBLISHED_OF[metric]
    records = []
    for (dataset, factor, label), cell in finished.groupby(CELL + ["label"], sort=False, dropna=False):
        cell = cell.sort_values([c for c in REPLICATE if c in cell])
        method = str(cell["method"].iloc[0])
        mean, std, low, high = _interval(cell[metric].astype(float))
        model = _one(cell["model"]) if "model" in cell else None
        epochs = _one(cell["epochs"].astype("Int64").tolist()) if "epochs" in cell else None
        recipe = _one(cell["recipe"].map(_recipe_name)) if "recipe" in cell else None
        teachers = cell["teacher_run_id"] if "teacher_run_id" in cell else pd.Series(dtype=object)
        stage1 = _one([epochs_of.get(str(t).split(",")[0]) for t in teachers if isinstance(t, str)])
        natural = "profile" in cell and (cell["profile"] == "natural").all()
        ours_factor = "natural" if natural else factor
        candidates = published[(published["dataset"] == dataset) & (published["method"] == method)
                               & published["imbalance"].map(lambda v: same_imbalance(v, ours_factor))]
        record = {"dataset": dataset, "imbalance_factor": factor, "label": label, "method": method, "n": len(cell),
                  "mean": mean, "std": std, "low": low, "high": high, "published": math.nan, "delta": math.nan,
                  "delta_low": math.nan, "delta_high": math.nan, "comparable": False,
                  "why": "no published value for this method here", "source": None, "citation": None, "url": None}
        chosen, reason = None, None
        for entry in candidates.to_dict("records"):
            problem = why_not(entry, model, epochs, recipe, stage1)
            if problem is None:
                chosen, reason = entry, None
                break
            if chosen is None and entry.get("top1") is not None and not pd.isna(entry.get("top1")):
                chosen, reason = entry, problem
        if chosen is None and not candidates.empty:
            first = candidates.iloc[0].to_dict()
            chosen, reason = first, why_not(first, model, epochs, recipe, stage1)
        if chosen is not None:
            value = chosen.get(value_column)
            value = math.nan if value is None or pd.isna(value) else float(value)
            record.update(published=value, source=chosen["source"], citation=chosen["citation"], url=chosen["url"],
                          comparable=reason is None and not math.isnan(value),
                          why=reason if reason else (None if not math.isnan(value) else f"no published {value_column}"))
            if record["comparable"]:
                record.update(delta=mean - value, delta_low=low - value, delta_high=high - value)
        records.append(record)
    out = pd.DataFrame.from_records(records, columns=COLUMNS)
    if not out.empty:
        out = out.sort_values(["dataset", "imbalance_factor", "label"], ascending=[True, False, True],
                              ignore_index=True)
    out.attrs["metric"] = metric
    return out


def _num(value, digits=2, sign=False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def cells(row) -> dict:
    """The displayed strings of one comparison row (terminal, Markdown, LaTeX and the report alike)."""
    ours = f"{_num(row.mean)} ± {_num(row.std)} ({int(row.n)})"
    interval = "–" if math.isnan(row.delta_low) else f"[{row.delta_low:+.2f}, {row.delta_high:+.2f}]"
    where = row.source or ""
    return {"label": str(row.label), "IF": f"{row.imbalance_factor:g}", "ours": ours, "published": _num(row.published),
            "delta": _num(row.delta, sign=True) if row.comparable else "–",
            "interval": interval if row.comparable else "–",
            "note": (f"{where}" if row.comparable else f"not comparable: {row.why}" + (f" ({where})" if where else ""))}


CAPTION = ("Δ = ours − published (mean over seeds); 95 % interval: Student's t over our seeds, none with one seed; "
           "Δ only where dataset, imbalance factor, model and epoch budget match the source")
