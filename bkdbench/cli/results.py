"""CLI commands over the leaderboard: ``leaderboard``, ``compare``, ``plot per-class|summary``.

``register(app)`` adds them to the main typer app. Heavy libraries (pandas, pyarrow, scipy,
matplotlib) are imported inside the commands so that ``bkdbench --help`` stays instant, and
nothing here imports torch. Bad input ends with one line on stderr and exit status 2; an empty
leaderboard is not an error (exit 0).
"""
from typing import Annotated, Optional

import typer
from rich.console import Console

from bkdbench.paths import leaderboard_dir, plots_dir, results_dir

FORMATS = ("table", "markdown", "latex", "csv")

ResultsOpt = Annotated[Optional[str], typer.Option(
    "--results", "--storage", help="Results folder or s3://, gs:// URI (default: $BKDBENCH_RESULTS, else ./results).")]
SuiteOpt = Annotated[Optional[str], typer.Option("--suite", help="Only runs of this suite.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="Only this dataset.")]
ImbalanceOpt = Annotated[Optional[float], typer.Option("--imbalance", help="Only this imbalance factor.")]
MetricOpt = Annotated[str, typer.Option(
    "--metric", help="top1, top1_best_epoch, val_top1, many, medium, few, ece or nll.")]


SplitFilterOpt = Annotated[Optional[str], typer.Option(
    "--split", help="Only runs with this validation split: every-class or reference.")]


def _check_split(split: Optional[str]) -> None:
    if split is not None and split not in ("every-class", "reference"):
        _fail(f"--split takes every-class or reference (got {split!r})")


def _fail(message: str) -> None:
    """One clear line on stderr, exit status 2, no traceback."""
    Console(stderr=True).print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _load(results: Optional[str], **filters):
    """Validated leaderboard folder and its rows; warns once about unreadable files."""
    from bkdbench.leaderboard.aggregate import keyed_datasets, select_dataset
    from bkdbench.leaderboard.manifest import suite_run_ids
    from bkdbench.leaderboard.store import LeaderboardError, filter_rows, read_rows

    try:
        root = results_dir(results)
        folder = leaderboard_dir(root)
        suite = filters.get("suite")
        members = suite_run_ids(root, suite) if suite else None
        if members is not None:  # the suite's own runs, shared ones included (see leaderboard/manifest.py)
            filters = {k: v for k, v in filters.items() if k != "suite"}
        dataset = filters.get("dataset")
        if dataset:  # `imagefolder@1a2b3c4d` is one folder's runs: the store knows only `imagefolder`
            filters = {**filters, "dataset": dataset.split("@")[0]}
        every, skipped = read_rows(folder)  # once: the extra-teacher rule looks at rows the filters drop
        rows = filter_rows(every, **filters)
        if not suite:  # CBD's extra CE teachers are no CE seeds (a suite's manifest never lists them)
            rows = _without_extra_teachers(every, rows)
        if dataset:
            rows = rows.loc[select_dataset(keyed_datasets(rows), dataset).index].reset_index(drop=True)
        if members is not None:
            rows = rows[rows["run_id"].isin(members) | (rows["suite"] == suite)].reset_index(drop=True)
    except (LeaderboardError, ValueError) as exc:
        _fail(str(exc))
    if skipped:
        Console(stderr=True).print(
            f"warning: skipped {len(skipped)} unreadable leaderboard file(s): {', '.join(skipped)}",
            markup=False, highlight=False, soft_wrap=True)
    return folder, rows


def _without_extra_teachers(every, rows):
    """``rows`` without CBD's extra teachers, found in ``every`` row (their students may be filtered
    out of ``rows``, e.g. by --method ce)."""
    from bkdbench.leaderboard.store import extra_teacher_ids

    if rows.empty:
        return rows
    extra = extra_teacher_ids(every)
    return rows[~rows["run_id"].isin(extra)].reset_index(drop=True) if extra else rows


def _say_empty(folder, **filters) -> None:
    chosen = ", ".join(f"--{k.replace('imbalance_factor', 'imbalance')} {v:g}" if isinstance(v, float)
                       else f"--{k} {v}" for k, v in filters.items() if v is not None)
    where = f"{folder}" + (f" matching {chosen}" if chosen else "")
    Console().print(f"no finished runs in {where}; run `bkdbench run --suite digits-lt` first",
                    markup=False, highlight=False, soft_wrap=True)


def _check_known(folder, names) -> None:
    """Each of ``names`` is a method or label with runs in the results, or it is one line and exit 2
    naming the close matches and the methods present. Names come from the rows only: reading them
    imports no method, plugin or torch."""
    from bkdbench.leaderboard.aggregate import unknown_names

    problem = unknown_names(folder, [n for n in names if n])
    if problem:
        _fail(problem)


def _check_metric(metric: str) -> None:
    from bkdbench.leaderboard.aggregate import check_metric

    try:
        check_metric(metric)
    except ValueError as exc:
        _fail(str(exc))


def leaderboard(suite: SuiteOpt = None, dataset: DatasetOpt = None, imbalance: ImbalanceOpt = None,
                method: Annotated[Optional[str], typer.Option("--method", help="Only this method.")] = None,
                metric: MetricOpt = "top1",
                fmt: Annotated[str, typer.Option("--format", help="table, markdown, latex or csv.")] = "table",
                results: ResultsOpt = None, split: SplitFilterOpt = None,
                published: Annotated[bool, typer.Option(
                    "--published", help="Beside the published results: Δ = ours − published where the protocol "
                                        "matches, why not elsewhere (docs/published.md).")] = False) -> None:
    """Show mean ± std over seeds per method and imbalance factor, one table per dataset."""
    _check_metric(metric)
    if fmt not in FORMATS:
        _fail(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    _check_split(split)
    if published:
        from bkdbench.leaderboard.versus import check_published_metric

        try:
            check_published_metric(metric)
        except ValueError as exc:
            _fail(str(exc))
    filters = dict(suite=suite, dataset=dataset, imbalance_factor=imbalance, method=method, split=split)
    folder, rows = _load(results, **filters)
    _check_known(folder, [method])
    if published:
        _show_versus(folder, rows, metric, fmt, filters)
        return

    from bkdbench.leaderboard import render
    from bkdbench.leaderboard.aggregate import summarise

    summary = summarise(rows, metric)
    if summary.empty:
        _say_empty(folder, **filters)
        return
    out = Console()
    if fmt == "table":
        for _, table in render.leaderboard_tables(summary, metric):
            out.print(table)
            out.print()
        return
    text = {"markdown": lambda: render.to_markdown(summary, metric),
            "latex": lambda: render.to_latex(summary, metric),
            "csv": lambda: render.to_csv(summary)}[fmt]()
    out.out(text, highlight=False, end="")


def _show_versus(folder, rows, metric: str, fmt: str, filters: dict) -> None:
    """``leaderboard --published``: our cells beside the published table (leaderboard/versus.py)."""
    from bkdbench.leaderboard import render
    from bkdbench.leaderboard.published_results import PublishedError, published_rows
    from bkdbench.leaderboard.versus import versus_published

    try:
        result = versus_published(rows, published_rows(), metric)
    except (PublishedError, ValueError) as exc:
        _fail(str(exc))
    if result.empty:
        _say_empty(folder, **filters)
        return
    out = Console()
    if fmt == "table":
        for table in render.versus_tables(result):
            out.print(table)
            out.print()
        return
    text = {"markdown": render.versus_markdown, "latex": render.versus_latex, "csv": render.versus_csv}[fmt](result)
    out.out(text, highlight=False, end="")


def compare(a: Annotated[str, typer.Argument(help="Method or label, e.g. bkd.")],
            b: Annotated[str, typer.Argument(help="Method or label to compare against.")],
            dataset: DatasetOpt = None, imbalance: ImbalanceOpt = None,
            metric: MetricOpt = "top1", results: ResultsOpt = None, suite: SuiteOpt = None) -> None:
    """Paired comparison A − B by seed, with a 95% confidence interval, per dataset and IF."""
    _check_metric(metric)
    folder, rows = _load(results, dataset=dataset, imbalance_factor=imbalance, suite=suite)
    _check_known(folder, [a, b])
    if not (rows["status"] == "finished").any():
        _say_empty(folder, dataset=dataset, imbalance_factor=imbalance, suite=suite)
        return

    from bkdbench.leaderboard.aggregate import paired_difference
    from bkdbench.leaderboard.render import comparison_table

    try:
        result = paired_difference(rows, a, b, metric=metric, dataset=dataset, imbalance=imbalance)
    except ValueError as exc:
        _fail(str(exc))
    if result.empty:
        _fail(f"{a!r} and {b!r} have no runs with the same dataset, imbalance factor and seed")
    Console().print(comparison_table(result))


plot_app = typer.Typer(help="Write PNG figures from the leaderboard.", no_args_is_help=True)


@plot_app.command("per-class")
def plot_per_class(dataset: DatasetOpt = None, imbalance: ImbalanceOpt = None, suite: SuiteOpt = None,
                   results: ResultsOpt = None,
                   out: Annotated[Optional[str], typer.Option("--out", help="PNG path (one plot only).")] = None
                   ) -> None:
    """Per-class accuracy head → tail; one PNG per dataset and imbalance factor found."""
    if out and (dataset is None or imbalance is None):
        _fail("--out names one file: pass --dataset and --imbalance with it")
    _check_out_file(out)
    folder, rows = _load(results, suite=suite, dataset=dataset, imbalance_factor=imbalance,
                         status="finished")
    if rows.empty:
        _say_empty(folder, suite=suite, dataset=dataset, imbalance_factor=imbalance)
        return

    from bkdbench.leaderboard.aggregate import keyed_datasets
    from bkdbench.leaderboard.plots import plot_per_class as draw

    cells = keyed_datasets(rows)[["dataset", "imbalance_factor"]].drop_duplicates().sort_values(
        ["dataset", "imbalance_factor"], ascending=[True, False])
    if out and len(cells) > 1:  # one folder name, several image folders
        _fail(f"{dataset} names {len(cells)} datasets ({', '.join(cells['dataset'])}): pass one of them with --out")
    prefix = f"per-class-{suite}-" if suite else "per-class-"
    folder = _plots_folder(results, out)
    for cell in cells.itertuples(index=False):
        path = out or folder / f"{prefix}{cell.dataset}-if{cell.imbalance_factor:g}.png"
        try:
            written = draw(rows, cell.dataset, cell.imbalance_factor, path)
        except (ValueError, OSError) as exc:
            _fail(str(exc))
        Console().print(f"wrote {written}", markup=False, highlight=False, soft_wrap=True)


@plot_app.command("summary")
def plot_summary(suite: SuiteOpt = None, metric: MetricOpt = "top1", results: ResultsOpt = None,
                 out: Annotated[Optional[str], typer.Option("--out", help="PNG path.")] = None) -> None:
    """Mean ± std per method and imbalance factor, one panel per dataset."""
    _check_metric(metric)
    _check_out_file(out)
    folder, rows = _load(results, suite=suite, status="finished")
    if rows.empty:
        _say_empty(folder, suite=suite)
        return

    from bkdbench.leaderboard.plots import plot_summary as draw

    path = out or _plots_folder(results, out) / f"summary-{suite or 'all'}-{metric}.png"
    try:
        written = draw(rows, path, metric=metric)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    Console().print(f"wrote {written}", markup=False, highlight=False, soft_wrap=True)


def _check_out_file(out: Optional[str]) -> None:
    """``--out`` must name a file that can be written, checked before anything is read or drawn (and
    without creating its folder: a refused command writes nothing)."""
    import os
    from pathlib import Path

    if not out:
        return
    path = Path(out).expanduser()
    if path.is_dir():
        _fail(f"--out {out} is a folder; name a .png file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        _fail(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        _fail(f"--out {out}: cannot write in {parent}")


def _plots_folder(results: Optional[str], out: Optional[str]):
    """``<results>/plots``; for a URI results root a local ``./plots``, said once (PNGs are for
    a person at this machine, not for the object store)."""
    root = results_dir(results)
    if not root.is_local and not out:
        Console(stderr=True).print(f"note: the results are in {root}; plots go to the local folder "
                                   f"{plots_dir(root)} (--out names another file)", markup=False, highlight=False,
                                   soft_wrap=True)
    return plots_dir(root)


def published(dataset: DatasetOpt = None,
              imbalance: Annotated[Optional[str], typer.Option(
                  "--imbalance", help="Only this imbalance factor (a number, or natural).")] = None,
              table: Annotated[Optional[str], typer.Option(
                  "--table", help="Only this published table (cifar-lt, large-lt).")] = None,
              fmt: Annotated[str, typer.Option("--format", help="table, markdown, latex or csv.")] = "table") -> None:
    """The field's published results that bkdbench ships, each with its source (docs/published.md)."""
    if fmt not in FORMATS:
        _fail(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if imbalance is not None and imbalance != "natural":
        try:
            imbalance = float(imbalance)
        except ValueError:
            _fail(f"--imbalance takes a number or natural (got {imbalance!r})")
    from bkdbench.leaderboard import render
    from bkdbench.leaderboard.published_results import PublishedError, published_rows, select

    try:
        rows = select(published_rows([table] if table else None), dataset, imbalance)
    except PublishedError as exc:
        _fail(str(exc))
    out = Console()
    if rows.empty:
        out.print(f"no published results for {dataset or 'any dataset'} at IF {imbalance}", markup=False,
                  highlight=False, soft_wrap=True)
        return
    if fmt == "table":
        for shown in render.published_tables(rows):
            out.print(shown)
            out.print()
        return
    text = {"markdown": render.published_markdown, "latex": render.published_latex,
            "csv": render.published_csv}[fmt](rows)
    out.out(text, highlight=False, end="")


def register(app: typer.Typer) -> None:
    """Add ``leaderboard``, ``compare``, ``published`` and the ``plot`` group to the main app."""
    app.command("leaderboard")(leaderboard)
    app.command("published")(published)
    app.command("compare")(compare)
    app.add_typer(plot_app, name="plot")
