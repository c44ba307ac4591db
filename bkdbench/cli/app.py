"""The ``bkdbench`` typer app: one module per command group registers its commands here. Heavy
imports (torch, Ray) happen inside the commands, so that ``bkdbench --help`` and ``bkdbench
leaderboard`` start fast."""
from __future__ import annotations

import typer

from bkdbench.cli import ablate, bench, data, report, results, run, sweep, train

app = typer.Typer(
    help="Benchmarks and hyperparameter search for long-tailed image classification (BKD and baselines).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for group in (data, train, run, sweep, ablate, results, report, bench):  # the order of `bkdbench --help`
    group.register(app)


def main() -> None:
    app()
