"""The ``bkdbench`` typer app: one module per command group registers its commands here. Heavy
imports (torch, Ray) happen inside the commands, so that ``bkdbench --help`` and ``bkdbench
leaderboard`` start fast."""
from __future__ import annotations

import typer

from bkdbench.cli import ablate, bench, data, plugins, report, results, run, sweep, train

app = typer.Typer(
    help="Benchmarks and hyperparameter search for long-tailed image classification (BKD and baselines).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for group in (data, train, run, sweep, ablate, results, report, bench, plugins):  # the order of `bkdbench --help`
    group.register(app)


def versions() -> str:
    """bkdbench's version and commit, and the torch and Ray installed, read without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    from bkdbench import __version__
    from bkdbench.provenance import git_sha

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return (f"bkdbench {__version__} (commit {git_sha() or 'unknown: not a git checkout'})\n"
            f"torch {installed('torch')}, torchvision {installed('torchvision')}, ray {installed('ray')}, "
            f"optuna {installed('optuna')}")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(versions())
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Show bkdbench's version and commit, torch's and Ray's, and exit.")) -> None:
    """Benchmarks and hyperparameter search for long-tailed image classification (BKD and baselines)."""


def main(argv: list[str] | None = None) -> None:
    """The console script. A usage error (unknown option, a value out of its range) is one line on
    stderr and exit status 2, like every other bad input, instead of click's boxed usage text."""
    import sys

    from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer's own click
    from typer.exceptions import Abort

    code = 1  # an exception that escapes is a failure too
    try:
        code = app(args=argv, prog_name="bkdbench", standalone_mode=False)
        code = code if isinstance(code, int) else 0
    except NoArgsIsHelpError as exc:  # `bkdbench`, `bkdbench plot`: the help, as click shows it
        print(exc.ctx.get_help())
        sys.exit(2)
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "bkdbench"
        print(f"error: {exc.format_message()} (see `{where} --help`)", file=sys.stderr)
        sys.exit(2)
    except Abort:  # Ctrl-C outside a command's own handling
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        copies = sys.modules.get("bkdbench.leaderboard.index")
        if copies is not None and code != 0:  # a failed command leaves nothing behind, not even a cache entry
            copies.discard()
    sys.exit(code)
