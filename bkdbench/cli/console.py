"""The CLI's consoles and the one way it reports bad input: a single line and exit status 2."""
from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line to stderr and exit (no traceback): bad input ends before any work."""
    # escape: a message quoting the user's input ("list[int]", "[0.5]") must print as written, not as markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    err_console.print(f"[dim]{escape(message)}[/]", highlight=False)


def check_device(device: "str | None") -> None:
    """Raise ValueError for a device string torch does not know, or CUDA where there is none."""
    if device is None or device == "auto":
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is available here")
