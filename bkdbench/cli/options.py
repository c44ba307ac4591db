"""Options and value parsers that several commands share (same names everywhere, as STYLE asks)."""
from __future__ import annotations

from typing import Optional

import typer

from bkdbench.cli.console import fail

ResultsOpt = typer.Option(None, "--results", "--storage", help="Results folder or s3://, gs:// URI (default $BKDBENCH_RESULTS or ./results).")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder holding the dataset files.")
TrackingOpt = typer.Option(None, "--tracking", help="Mirror every run to mlflow[:URI] (default URI: $MLFLOW_TRACKING_URI, "
                           "else sqlite:///mlflow.db) or wandb[:PROJECT]. TensorBoard files are always written, under "
                           "<results>/experiments/tensorboard.")



def method_params(**values) -> dict:
    """The method parameters the user set on the command line (unset ones keep their defaults)."""
    return {k: v for k, v in values.items() if v is not None}


def parse_imbalances(text: Optional[str]) -> Optional[list]:
    if not text:
        return None
    try:
        return [x.strip().lower() if x.strip().lower() == "natural" else float(x) for x in text.split(",")]
    except ValueError:
        fail(f"--imbalance takes numbers (or natural) separated by commas (got {text!r})")


def parse_tracking(text: Optional[str]):
    """The validated ``--tracking`` choice (None without one); a bad value or a missing extra fails here."""
    from bkdbench.orchestrate.tracking import TrackingError, parse_tracking as parse

    try:
        return parse(text)
    except TrackingError as exc:
        fail(str(exc))


def start_tracking(tracking) -> None:
    """Once every other check has passed: reach the tracker and hand the choice to Ray trials."""
    import os

    from bkdbench.cli.console import note
    from bkdbench.orchestrate.tracking import ENV, TrackingError, prepare

    if tracking is None:
        return
    try:
        prepare(tracking)
    except TrackingError as exc:
        fail(str(exc))
    os.environ[ENV] = tracking.encode()
    note(f"mirroring every run to {tracking.describe()}")
