"""Options and value parsers that several commands share (same names everywhere, as STYLE asks)."""
from __future__ import annotations

from typing import Optional

import typer

from bkdbench.cli.console import fail

ResultsOpt = typer.Option(None, "--results", "--storage", help="Results folder or s3://, gs:// URI (default $BKDBENCH_RESULTS or ./results).")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder holding the dataset files.")



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
