"""The CLI layer (typer + rich): the only place that prints. ``bkdbench.cli:main`` is the console script."""
from bkdbench.cli.app import app, main

__all__ = ["app", "main"]
