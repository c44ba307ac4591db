"""``bkdbench report``: one static page over leaderboard rows, readable from disk with no server.

``write_report`` writes ``<out>/index.html`` (a Jinja2 template, ``templates/report.html.j2``, with its
styles inline), the PNGs it shows under ``<out>/figures/``, and ``<out>/runs.json``: every run's row
(spec, recipe, provenance, per-epoch history) behind the numbers. The page holds the leaderboard
(every metric as mean ± std with seed counts, best per column marked), paired comparisons against a
baseline with 95% CIs, per-class accuracy against training-set size, training curves, ablation heat
maps and marginal effects, any sections the caller adds (a sweep's plots come from the orchestration
layer, which owns Optuna), and the provenance of every run. Torch-free, like the rest of the layer.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd

from bkdbench import __version__
from bkdbench.leaderboard import tables
from bkdbench.leaderboard.ablation import expand_params, marginal_effects, plot_heatmaps
from bkdbench.leaderboard.aggregate import keyed_datasets
from bkdbench.leaderboard.curves import plot_curves
from bkdbench.leaderboard.plots import plot_per_class, plot_summary

FIGURES = "figures"
RUNS_JSON = "runs.json"


@dataclass
class Figure:
    path: Path  # a PNG inside the report folder
    title: str
    caption: str = ""
    src: str = ""  # the path the page links, relative to the report folder (set when the page is written)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    """A titled part of the page: notes, tables and figures, in that order."""
    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "s-" + re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (dataset names, ids, labels)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def figures_dir(out: Path) -> Path:
    return Path(out) / FIGURES


def _cells(rows: pd.DataFrame) -> list[tuple[str, float]]:
    finished = keyed_datasets(rows[rows["status"] == "finished"])
    cells = finished[["dataset", "imbalance_factor"]].drop_duplicates().sort_values(
        ["dataset", "imbalance_factor"], ascending=[True, False])
    return [(str(d), float(f)) for d, f in cells.itertuples(index=False)]


def _figure_sections(rows: pd.DataFrame, out: Path) -> list[Section]:
    folder = figures_dir(out)
    per_class = Section("Per-class accuracy", notes=[
        "Test accuracy of each class against its number of long-tailed training images (grey bars, log "
        "scale), classes ordered head → tail; line: mean over seeds, band: ± 1 std."])
    curves = Section("Training curves", notes=[
        "Per epoch, from each run's stored history: train loss, balanced validation top-1 and balanced test "
        "top-1 (shown for reading only; no epoch is chosen on it)."])
    for dataset, factor in _cells(rows):
        name = f"{slug(dataset)}-if{factor:g}"
        try:
            per_class.figures.append(Figure(plot_per_class(rows, dataset, factor, folder / f"per-class-{name}.png"),
                                            f"{dataset}, IF {factor:g}"))
        except ValueError as exc:
            per_class.notes.append(str(exc))
        try:
            curves.figures.append(Figure(plot_curves(rows, dataset, factor, folder / f"curves-{name}.png"),
                                         f"{dataset}, IF {factor:g}"))
        except ValueError as exc:  # rows written before histories were stored
            curves.notes.append(str(exc))
    summary = Section("Summary plot")
    try:
        summary.figures.append(Figure(plot_summary(rows, folder / "summary-top1.png"), "balanced test top-1",
                                      "mean ± std over seeds per method and imbalance factor"))
    except ValueError as exc:
        summary.notes.append(str(exc))
    return [per_class, curves, summary]


def published_section(rows: pd.DataFrame) -> Section:
    """Our top-1 beside the published results (leaderboard/versus.py): Δ where the protocol matches."""
    from bkdbench.leaderboard.published_results import published_rows
    from bkdbench.leaderboard.versus import CAPTION, cells, versus_published

    section = Section("Beside the published results", notes=[
        CAPTION + ". Published numbers are mostly best-test-epoch accuracies; ours are last-epoch "
        "(`bkdbench leaderboard --published --metric top1_best_epoch` compares the papers' protocol). Sources: "
        "`bkdbench published --format csv`, docs/published.md."])
    result = versus_published(rows, published_rows(), "top1")
    for dataset in sorted(result["dataset"].unique()):
        part = result[result["dataset"] == dataset]
        section.tables.append(Table(str(dataset), ["method", "IF", "ours (top-1)", "published", "Δ", "95% interval",
                                                   "source / why not"],
                                    [list(cells(r).values()) for r in part.itertuples(index=False)]))
    if result.empty:
        section.notes.append("no finished runs to compare")
    return section


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def ablation_sections(rows: pd.DataFrame, out: Path) -> list[Section]:
    """Per ablation id among ``rows``: marginal effects of every varying parameter and, with two
    numeric ones, a heat map of mean top-1 per imbalance factor."""
    sections = []
    ids = sorted(i for i in rows["ablation_id"].dropna().unique() if i)
    for aid in ids:
        mine = rows[rows["ablation_id"] == aid]
        parsed = expand_params(mine, [])["params"].map(lambda p: json.loads(p) if isinstance(p, str) else {})
        keys = sorted({k for d in parsed for k in d})
        factors = [k for k in keys if len({json.dumps(d.get(k)) for d in parsed}) > 1]
        section = Section(f"Ablation {aid}", notes=[
            f"{mine['run_id'].nunique()} runs; varying: {', '.join(factors) or 'nothing'}. Numbers are balanced "
            "test top-1 %, last epoch."])
        if factors:
            effects = marginal_effects(mine, factors)
            section.tables.append(Table(
                "Marginal effects (all other factors and seeds pooled)", ["factor", "level", "mean ± std", "runs"],
                [[r.factor, _show(r.level), f"{r.mean:.2f} ± {'–' if math.isnan(r.std) else f'{r.std:.2f}'}",
                  str(r.n)] for r in effects.itertuples(index=False)]))
        numeric = [k for k in factors if _numeric([d.get(k) for d in parsed])]
        if len(numeric) >= 2:
            path = plot_heatmaps(mine, numeric[0], numeric[1], figures_dir(out) / f"ablation-{slug(aid)}.png")
            section.figures.append(Figure(path, f"{numeric[1]} × {numeric[0]}", "mean top-1 over seeds per cell"))
        sections.append(section)
    return sections


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("bkdbench.leaderboard", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=2: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"
    env.filters["signed"] = lambda v, d=2: f"{v:+.{d}f}"
    env.filters["short"] = lambda v: (v or "–")[:12]
    return env


def prepare_folder(out: "str | Path") -> Path:
    """Create ``out`` and an empty ``out/figures`` (PNGs of an earlier report there are removed, so
    the page never links a stale figure)."""
    folder = figures_dir(Path(out))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def write_report(rows: pd.DataFrame, out: "str | Path", *, title: str, scope: str, command: str,
                 baseline: str = "ce", sections: list[Section] | tuple = ()) -> Path:
    """Write the page for ``rows`` into ``out`` (created; an earlier report there is replaced) and
    return the path of ``index.html``. ``sections`` (e.g. a sweep's, with figures already under
    ``out/figures``: call ``prepare_folder`` first) go after the ablations."""
    out = Path(out)
    figures_dir(out).mkdir(parents=True, exist_ok=True)
    finished = rows[rows["status"] == "finished"]
    runs = tables.run_records(rows)
    comparisons = tables.comparisons(rows, baseline)
    parts = [published_section(rows)] + _figure_sections(rows, out) + ablation_sections(rows, out) + list(sections)
    for part in parts:
        for fig in part.figures:
            fig.src = Path(fig.path).resolve().relative_to(out.resolve()).as_posix()
    page = _environment().get_template("report.html.j2").render(
        title=title, scope=scope, command=command, baseline=baseline, version=__version__,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        n_runs=len(rows), n_finished=len(finished), n_failed=int((rows["status"] == "failed").sum()),
        git_shas=sorted({r["git_sha"] for r in runs if r["git_sha"]}),
        hosts=sorted({r["host"] for r in runs if r["host"]}),
        leaderboards=tables.leaderboard_tables(rows), comparisons=comparisons, sections=parts, runs=runs,
        runs_json=RUNS_JSON)
    (out / RUNS_JSON).write_text(json.dumps(runs, indent=1, default=str))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
