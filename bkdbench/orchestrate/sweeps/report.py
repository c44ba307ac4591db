"""What a sweep found: its trials as a table, PNG plots in the sweep folder, tuned vs default."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from .study import DEFAULTS, METRIC, open_study  # noqa: E402


def trial_rows(study: optuna.Study) -> list[dict]:
    """Every trial: number (``label``: with "(defaults)" for the method's defaults), state, validation
    accuracy (None unless COMPLETE), parameters."""
    return [{"number": t.number, "label": f"{t.number} (defaults)" if t.user_attrs.get(DEFAULTS) else str(t.number),
             "state": t.state.name, METRIC: t.value if t.values else None, **t.params}
            for t in study.get_trials(deepcopy=False)]


def best_trial(study: optuna.Study):
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def spearman(x: list[float], y: list[float]) -> Optional[float]:
    """Spearman's rank correlation (tied values share their mean rank; Pearson's r of the ranks);
    None with fewer than three pairs or when either side is constant."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # 1-based, ties share the mean rank
        i = j + 1
    return ranks


def validation_noise(best: float, others: list[float], images: int) -> dict:
    """How finely ``images`` validation images can order configurations near ``best`` (top-1, %).

    ``se``: the standard error of one balanced validation score there, sqrt(p(1 - p) / images) in
    points (with equal images per class; where per-class accuracies differ it is an upper bound, since
    p(1 - p) is concave). Two configurations' scores differ by noise alone with standard error
    sqrt(2)·se, so ``close`` counts the ``others`` within ``margin`` = 2·sqrt(2)·se of the best: the
    validation split cannot order them, and the best is one of them by chance as much as by merit."""
    p = min(max(best / 100, 0.0), 1.0)
    se = 100 * math.sqrt(p * (1 - p) / images)
    margin = 2 * math.sqrt(2) * se
    return {"images": images, "best": best, "se": se, "margin": margin, "close": sum(best - v <= margin for v in others)}


def rung_scores(study: optuna.Study) -> dict[int, dict[int, float]]:
    """Successive halving's scores: trial number → {budget in epochs: validation top-1} (its
    intermediate values; ``halving`` reports each rung at step = budget). Empty for other schedulers."""
    from .halving import BRACKET

    return {t.number: dict(t.intermediate_values) for t in study.get_trials(deepcopy=False)
            if BRACKET in t.user_attrs and t.intermediate_values}


def rank_agreement(study: optuna.Study) -> list[dict]:
    """Per pair of consecutive rungs: Spearman's correlation between the lower and the higher rung's
    validation scores of the configurations that ran both (does the short run rank as the long one?)."""
    scores = rung_scores(study)
    budgets = sorted({b for s in scores.values() for b in s})
    pairs = []
    for low, high in zip(budgets, budgets[1:]):
        both = [s for s in scores.values() if low in s and high in s]
        pairs.append({"low": low, "high": high, "n": len(both),
                      "spearman": spearman([s[low] for s in both], [s[high] for s in both])})
    return pairs


def search_noise(study: optuna.Study, images: int) -> list[dict]:
    """``validation_noise`` of each rung's best against the rung's other configurations (successive
    halving: is a promotion decided by more than noise?), or of the best against the other complete
    trials (every other scheduler, whose complete trials ran the full budget); ``budget`` is None there."""
    scores = rung_scores(study)
    if scores:
        groups = {b: [s[b] for s in scores.values() if b in s] for b in sorted({b for s in scores.values() for b in s})}
    else:
        groups = {None: [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]}
    out = []
    for budget, values in groups.items():
        if values:
            ordered = sorted(values, reverse=True)
            out.append({"budget": budget, "n": len(values), **validation_noise(ordered[0], ordered[1:], images)})
    return out


def noise_note(study: optuna.Study, images: int) -> str:
    """``search_noise`` in words: for `sweep report` and the sweep's section of `bkdbench report`."""
    groups = search_noise(study, images)
    parts = [(f"at {g['budget']} epochs " if g["budget"] is not None else "")
             + f"the best scored {g['best']:.1f} % ± {g['se']:.1f} (one standard error)"
             + (f" and {g['close']} of the other {g['n'] - 1} lie within {g['margin']:.1f} points of it" if g["n"] > 1 else "")
             for g in groups]
    line = f"validation noise ({images} images): " + "; ".join(parts)
    if any(g["close"] for g in groups):
        line += ("; within 2·√2 standard errors this split cannot order configurations (more validation images "
                 "narrow it: --val-per-class, or an image folder's own val/)")
    return line


def plot_rungs(study: optuna.Study, folder: Path) -> Optional[Path]:
    """Successive halving's rungs: each configuration's validation score by budget, a promoted one's
    rungs joined by a line (★ the best full-budget one)."""
    scores = rung_scores(study)
    if not scores:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for number, by_budget in sorted(scores.items()):
        budgets = sorted(by_budget)
        ax.plot(budgets, [by_budget[b] for b in budgets], marker="o", ms=4, lw=1, alpha=0.7,
                color="C0" if len(budgets) > 1 else "0.6")
    best = best_trial(study)
    if best is not None and best.number in scores:
        top = max(scores[best.number])
        ax.scatter([top], [scores[best.number][top]], marker="*", s=250, color="red", edgecolor="k", zorder=3)
    budgets = sorted({b for s in scores.values() for b in s})
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("budget (epochs; the recipe compressed to each)")
    ax.set_ylabel("balanced validation accuracy (%)")
    pairs = ", ".join(f"{p['low']}→{p['high']}: ρ {p['spearman']:+.2f}" for p in rank_agreement(study)
                      if p["spearman"] is not None)
    ax.set_title(f"{study.study_name}: successive halving rungs" + (f" (Spearman {pairs})" if pairs else ""), fontsize=8)
    return _save(fig, folder / "rungs.png")


def plot_sweep(study: optuna.Study, folder: Path) -> list[Path]:
    """Validation accuracy over the first two parameters, the optimisation history, and Optuna's
    parameter importances (when at least two trials completed). Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    written = []
    names = list(done[0].params) if done else []
    if done:
        fig, ax = plt.subplots(figsize=(6.5, 5))
        x = [t.params[names[0]] for t in done]
        y = [t.params[names[1]] for t in done] if len(names) > 1 else [t.value for t in done]
        points = ax.scatter(x, y, c=[t.value for t in done], cmap="viridis", s=60, edgecolor="k", lw=0.5)
        if pruned and len(names) > 1:
            ax.scatter([t.params[names[0]] for t in pruned], [t.params[names[1]] for t in pruned], marker="x",
                       color="0.5", label="pruned by ASHA")
            ax.legend(loc="best", fontsize=8)
        best = best_trial(study)
        bx = best.params[names[0]]
        by = best.params[names[1]] if len(names) > 1 else best.value
        ax.scatter([bx], [by], marker="*", s=300, color="red", edgecolor="k", label="best")
        if len(done[0].distributions) and getattr(done[0].distributions[names[0]], "log", False):
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.set_xscale("log")  # plain numbers at 1-2-5 steps: minor 10^x labels collide
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1] if len(names) > 1 else f"{METRIC} (%)")
        fig.colorbar(points, ax=ax, label="balanced validation accuracy (%)")
        ax.set_title(f"{study.study_name}: validation accuracy per trial (★ best)", fontsize=9)
        written.append(_save(fig, folder / "val-accuracy.png"))
    if study.get_trials(deepcopy=False):
        from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

        with _quiet_experimental():
            ax = plot_optimization_history(study, target_name="balanced validation accuracy (%)")
            written.append(_save(ax.figure, folder / "history.png"))
            if len(done) >= 2 and len(names) >= 2:
                ax = plot_param_importances(study)
                written.append(_save(ax.figure, folder / "importances.png"))
    rungs = plot_rungs(study, folder)
    return written + ([rungs] if rungs else [])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


class _quiet_experimental:
    """Optuna's matplotlib plots warn that they are experimental; that warning is noise here."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def sweep_section(root, record: dict, folder: Path):
    """A sweep as a section of ``bkdbench report``: its best trials (validation only), the plots of
    ``plot_sweep`` (objective per trial over the first two parameters, e.g. α × T; history;
    parameter importances) written into ``folder``."""
    from ...leaderboard.report import Figure, Section, Table
    from ...storage import Location
    from .driver import sweep_dir

    sweep_id = record["sweep_id"]
    study = open_study(sweep_id, sweep_dir(Location(root), sweep_id), record.get("optuna_storage"))
    rows = trial_rows(study)
    params = list(record["best_params"])
    ranked = sorted(rows, key=lambda r: (r[METRIC] is None, -(r[METRIC] or 0)))
    shown = lambda v: "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    counts = {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})}
    config = record["config"]
    section = Section(f"Sweep {sweep_id}", notes=[
        f"{config['method']} on {config['dataset']} at IF {config['imbalance']:g}: {len(rows)} trials "
        f"({', '.join(f'{n} {s.lower()}' for s, n in counts.items())}), sampler "
        f"{config['sampler']}, scheduler {config['scheduler']}. The objective is balanced validation top-1; the "
        f"best configuration ({', '.join(f'{k}={shown(v)}' for k, v in record['best_params'].items())}) and the "
        "defaults were then re-run with several seeds and tested: they are the rows of the leaderboard above."])
    section.tables.append(Table("Best trials by balanced validation top-1", ["trial", *params, "val top-1 %", "state"],
                                [[r["label"], *(shown(r.get(p)) for p in params), shown(r[METRIC]), r["state"]]
                                 for r in ranked[:10]],
                                "a pruned trial shows its last validation value, at the epoch early stopping stopped it"))
    agreement = [f"{p['low']} → {p['high']} epochs: {'–' if p['spearman'] is None else format(p['spearman'], '+.2f')} "
                 f"({p['n']} configurations)" for p in rank_agreement(study)]
    if agreement:
        section.notes.append("Successive halving: Spearman correlation of the validation scores of the configurations "
                             "that ran both rungs, " + "; ".join(agreement) + ".")
    if record.get("val_images"):  # sweeps from before it was recorded have none
        section.notes.append(noise_note(study, record["val_images"]) + ".")
    titles = {"val-accuracy.png": "validation accuracy per trial over the first two parameters (★ best)",
              "history.png": "objective over trials", "importances.png": "parameter importances (Optuna)",
              "rungs.png": "successive halving: validation accuracy by budget, promoted configurations joined"}
    for path in plot_sweep(study, folder):
        section.figures.append(Figure(path, titles.get(path.name, path.stem)))
    return section
