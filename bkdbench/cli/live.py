"""The live view of running trials that ``run``, ``sweep`` and ``ablate`` share."""
from __future__ import annotations

from bkdbench.cli.console import console


class LiveView:
    """A rich progress view of a running suite: done / running / failed, elapsed and ETA. Where the
    output is not a terminal (a log file, a batch job) rich draws the bar only when it ends, so there
    each finished run prints a line instead: an hour-long sweep's log shows it moving."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=console)
        self.task = self.progress.add_task("runs", total=total, status="")
        self.total = total
        self.running: set[str] = set()
        self.done = self.failed = 0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def event(self, kind: str, run_id: str, metrics: dict) -> None:
        if kind == "start":
            self.running.add(run_id)
        elif kind in ("complete", "error"):
            self.running.discard(run_id)
            if kind == "error" or metrics.get("status") in ("failed", "storage-error"):
                self.failed += 1
            else:
                self.done += 1
            self.progress.advance(self.task)
        status = f"done {self.done} · running {len(self.running)} · failed {self.failed}"
        self.progress.update(self.task, status=status)
        if kind in ("complete", "error") and not console.is_terminal:
            elapsed = self.progress.tasks[0].elapsed or 0.0
            console.print(f"runs {self.done + self.failed}/{self.total}: {status}, {elapsed:.0f} s")
