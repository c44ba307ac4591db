"""A rich progress bar (with images/s) for the one-time decode of a large benchmark's store
(data/large/store.py reports progress to a callback; the core never prints)."""
from __future__ import annotations

import time

from bkdbench.cli.console import console


def show_decoding_progress() -> None:
    """Show a bar whenever this process decodes a split-list store; nothing when the cache is hit."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from bkdbench.data.large.store import set_progress

    state: dict = {}

    def update(description: str, done: int, total: int) -> None:
        if state.get("description") != description:  # a new decode (another set or size)
            if "progress" in state:
                state["progress"].stop()
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=console, transient=False)
            progress.start()
            state.update(description=description, progress=progress, start=time.perf_counter(),
                         task=progress.add_task(description, total=total, rate=""))
        elapsed = time.perf_counter() - state["start"]
        rate = f"{done / elapsed:,.0f} images/s" if done and elapsed > 0 else ""
        state["progress"].update(state["task"], completed=done, rate=rate)
        if done >= total:
            state["progress"].stop()
            state.clear()

    set_progress(update)
