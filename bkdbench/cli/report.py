"""``bkdbench report``: the leaderboard as one static HTML page (``OUT/index.html``, its PNGs and
``runs.json``) that opens from disk. Rows are chosen as in ``bkdbench leaderboard`` (``--suite``,
``--dataset``, ``--imbalance``, ``--method``), or those of one sweep or ablation."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bkdbench.cli.console import console, fail
from bkdbench.cli.results import (DatasetOpt, ImbalanceOpt, ResultsOpt, SplitFilterOpt, SuiteOpt, _check_known,
                                  _check_split, _load, _say_empty)


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    suite: SuiteOpt = None,
    sweep: Annotated[Optional[str], typer.Option("--sweep", help="The final runs of this sweep id (tuned and defaults), "
                                                 "with its search plots.")] = None,
    ablation: Annotated[Optional[str], typer.Option("--ablation", help="The runs of this ablation id.")] = None,
    dataset: DatasetOpt = None,
    imbalance: ImbalanceOpt = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Only this method.")] = None,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="Label every other one is compared with, paired by seed (default: ce; for a sweep, "
                           "the method at its defaults).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for index.html, its figures and runs.json.")] = Path("report"),
    results: ResultsOpt = None,
    split: SplitFilterOpt = None,
) -> None:
    """Write one self-contained HTML page: leaderboard, comparisons, plots, provenance."""
    _check_split(split)
    if sum(x is not None for x in (suite, sweep, ablation)) > 1:
        fail("choose one of --suite, --sweep and --ablation")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; name a folder")
    filters = dict(suite=suite, dataset=dataset, imbalance_factor=imbalance, method=method, ablation_id=ablation,
                   split=split)
    record = _sweep_record(results, sweep) if sweep else None
    folder, rows = _load(results, **filters)
    _check_known(folder, [method, baseline])
    if record is not None:
        finals = record["final_runs"]
        rows = rows[rows["run_id"].isin(finals["tuned"] + finals["default"])].reset_index(drop=True)
        baseline = baseline or record["config"]["method"]
    if not (rows["status"] == "finished").any():
        shown = dict(suite=suite, dataset=dataset, imbalance_factor=imbalance, method=method, ablation=ablation,
                     sweep=sweep)
        _say_empty(folder, **shown)
        raise typer.Exit(1)  # no page: a script that goes on to open it must know

    from bkdbench.leaderboard.report import prepare_folder, write_report

    try:
        prepare_folder(out)
        sections = [_sweep_section(results, record, out)] if record is not None else []
        index = write_report(rows, out, title=f"bkdbench report — {_scope(suite, sweep, ablation)}",
                             scope=f"results {folder.parent}", command=shlex.join(["bkdbench", *sys.argv[1:]]),
                             baseline=baseline or "ce", sections=sections)
    except OSError as exc:
        fail(f"cannot write the report to {out}: {exc}")
    console.print(f"wrote {index.resolve()}", markup=False, highlight=False, soft_wrap=True)


def _scope(suite, sweep, ablation) -> str:
    if suite:
        return f"suite {suite}"
    if sweep:
        return f"sweep {sweep}"
    return f"ablation {ablation}" if ablation else "all runs"


def _sweep_record(results: Optional[str], sweep_id: str) -> dict:
    from bkdbench.paths import results_dir
    from bkdbench.orchestrate.sweeps.driver import load_sweep_record  # Ray and Optuna: only for a sweep's page

    try:
        return load_sweep_record(results_dir(results), sweep_id)
    except ValueError as exc:
        fail(str(exc))


def _sweep_section(results: Optional[str], record: dict, out: Path):
    from bkdbench.leaderboard.report import figures_dir
    from bkdbench.orchestrate.sweeps.report import sweep_section
    from bkdbench.paths import results_dir

    return sweep_section(results_dir(results), record, figures_dir(out) / f"sweep-{record['sweep_id']}")
