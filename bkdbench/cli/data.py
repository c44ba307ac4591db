"""``bkdbench data list`` and ``bkdbench data download``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bkdbench.cli.console import console, fail
from bkdbench.cli.options import DataDirOpt, PluginOpt, SplitsOpt, use_plugins, use_splits

data_app = typer.Typer(help="Datasets: what is available here, and explicit downloads.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list(data_dir: Optional[Path] = DataDirOpt, splits: Optional[Path] = SplitsOpt, plugin: list[str] = PluginOpt):
    """Every dataset, whether it is available here, and where it looked. ImageNet-LT, Places-LT and
    iNat18 read the decoupling code's split lists (facebookresearch/classifier-balancing, data/<set>/):
    --data-dir is the image root their paths are relative to; the lists go in DATA_DIR/splits/ or
    --splits DIR (docs/large-benchmarks.md)."""
    use_splits(splits)
    use_plugins(plugin)  # datasets of your own are listed with the rest
    from rich.table import Table

    from bkdbench.data import dataset_names, get_dataset

    table = Table(title="datasets")
    for col in ("name", "classes", "available", "where", "description"):
        table.add_column(col)
    for name in dataset_names():
        info = get_dataset(name)
        ok, where = info.locate(data_dir)
        classes = "per folder" if info.num_classes is None else str(info.num_classes)
        table.add_row(name, classes, "[green]yes[/]" if ok else "[red]no[/]", where, info.description)
    console.print(table)


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="Dataset to download (cifar10 or cifar100)."),
    root: Path = typer.Option(..., "--root", help="Folder to download into; pass it later as --data-dir."),
):
    """Download a dataset (only when asked; needs internet access)."""
    from bkdbench.data import DataError, get_dataset

    try:
        info = get_dataset(name)
    except DataError as exc:
        fail(str(exc))
    if info.download is None:
        ok, where = info.locate(None)
        fail(f"{name} has no download here ({'found at ' + where if ok else where})")
    try:
        path = info.download(root)
    except Exception as exc:  # network errors come in many types
        fail(f"download of {name} failed: {exc}", code=1)
    console.print(f"downloaded {name} to {path}; use --data-dir {root}")
