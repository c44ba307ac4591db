"""What a sweep found: its trials as a table, PNG plots in the sweep folder, tuned vs default."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from .study import METRIC, open_study  # noqa: E402


def trial_rows(study: optuna.Study) -> list[dict]:
    """Every trial: number, state, validation accuracy (None unless COMPLETE), parameters."""
    return [{"number": t.number, "state": t.state.name, METRIC: t.value if t.values else None, **t.params}
            for t in study.get_trials(deepcopy=False)]


def best_trial(study: optuna.Study):
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


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
    return written


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
                                [[str(r["number"]), *(shown(r.get(p)) for p in params), shown(r[METRIC]), r["state"]]
                                 for r in ranked[:10]],
                                "a pruned trial shows its last validation value, at the epoch early stopping stopped it"))
    titles = {"val-accuracy.png": "validation accuracy per trial over the first two parameters (★ best)",
              "history.png": "objective over trials", "importances.png": "parameter importances (Optuna)"}
    for path in plot_sweep(study, folder):
        section.figures.append(Figure(path, titles.get(path.name, path.stem)))
    return section
