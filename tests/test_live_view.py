"""The live view of running trials: a progress bar on a terminal, a line per finished run elsewhere
(a log file or a batch job, where rich draws the bar only when it ends)."""
from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from bkdbench.cli import live


@pytest.mark.parametrize("terminal", [False, True])
def test_a_log_gets_a_line_per_finished_run_and_a_terminal_the_bar(monkeypatch, terminal):
    out = io.StringIO()
    monkeypatch.setattr(live, "console", Console(file=out, force_terminal=terminal, width=200))
    with live.LiveView(3) as view:
        view.event("start", "a", {})
        view.event("start", "b", {})
        view.event("complete", "a", {"status": "finished"})
        view.event("complete", "b", {"status": "failed"})
        view.event("start", "c", {})
        view.event("error", "c", {})
    lines = [line for line in out.getvalue().splitlines() if re.match(r"runs \d", line)]
    if terminal:
        assert lines == []
        return
    assert [line.rsplit(",", 1)[0] for line in lines] == [
        "runs 1/3: done 1 · running 1 · failed 0",
        "runs 2/3: done 1 · running 0 · failed 1",  # a finished trial whose run failed counts as failed
        "runs 3/3: done 1 · running 0 · failed 2",
    ]
    assert all(line.endswith(" s") for line in lines)
