"""``bkdbench new method NAME`` (a start for your own method) and ``bkdbench methods`` (every method,
built in or from a plugin). Plugins themselves are loaded by ``options.use_plugins``."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from bkdbench.cli.console import console, fail
from bkdbench.cli.options import PluginOpt, use_plugins

new_app = typer.Typer(help="Start a part of your own from a template that runs as written.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(new_app, name="new")
    app.command("methods")(methods)


@new_app.command("method")
def new_method(
    name: str = typer.Argument(..., help="The method's name, e.g. my-loss (letters, digits and -)."),
    folder: Optional[Path] = typer.Option(None, "--dir", help="Where to write the files (default: here)."),
):
    """Write NAME's method file, a test of its loss against a value worked out by hand, and a search
    space; train it with `bkdbench train --plugin FILE --method NAME`."""
    from bkdbench.cli.scaffold import files

    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        fail(f"method name {name!r}: use lower-case letters, digits and single dashes, starting with a letter")
    use_plugins()  # an installed plugin's names are taken too
    from bkdbench.methods import names

    if name in names():
        fail(f"method {name!r} exists already; choose another name")
    folder = folder or Path(".")
    if folder.exists() and not folder.is_dir():
        fail(f"--dir {folder} is a file; name a folder")
    written = files(name)
    there = [f for f in written if (folder / f).exists()]
    if there:
        fail(f"{', '.join(str(folder / f) for f in there)} exist(s) already; nothing written")
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in written.items():
        (folder / file).write_text(text)
    module, test, space = (folder / f for f in written)
    console.print("wrote " + ", ".join(str(p) for p in (module, test, space)) + "\nnext:\n"
                  f"  pytest {test}\n"
                  f"  bkdbench train --plugin {module} --method {name} --epochs 5\n"
                  f"  bkdbench run --suite digits-lt --plugin {module} --with-method {name}\n"
                  f"  bkdbench compare {name} bkd --suite digits-lt", markup=False, highlight=False, soft_wrap=True)


def methods(plugin: list[str] = PluginOpt):
    """Every method: its name, where it comes from (built in, or a plugin's module@digest), its teacher."""
    from rich.table import Table

    use_plugins(plugin)
    from bkdbench.methods import method_class, names
    from bkdbench.plugins import ref_of

    table = Table(title="methods")
    for col in ("name", "from", "teacher", "head"):
        table.add_column(col)
    for name in names():
        cls = method_class(name)
        table.add_row(name, ref_of(cls.__module__) or "built in", cls.teacher_method if cls.needs_teacher else "–",
                      cls.head)
    console.print(table)
