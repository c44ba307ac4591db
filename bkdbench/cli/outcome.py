"""What a command says about runs that did not finish: each failed run named with its reason while
the results are shown, and exit status 1 at the end (``run`` and ``ablate`` alike)."""
from __future__ import annotations

from bkdbench.cli.console import fail, note


def failed_runs(outcome: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """(failed runs by id, those of them whose trial crashed past its retries). A diverged run, or one
    whose teacher failed, is recorded as failed in its row; a crashed trial has no row."""
    failed = {k: v for k, v in outcome.items()
              if v.get("status") == "failed" or (v.get("error") and v.get("status") != "skipped")}
    return failed, [k for k, v in failed.items() if v.get("status") != "failed"]


def trained_line(outcome: dict[str, dict], seconds: float) -> str:
    """"trained N run(s) in S s", and how many another driver on the same results finished meanwhile
    (their trials waited for its lease, lease.py, and trained nothing)."""
    trained = sum(1 for v in outcome.values() if v.get("status") == "finished")
    elsewhere = sum(1 for v in outcome.values() if v.get("status") == "skipped" and not v.get("error"))
    return f"trained {trained} run(s) in {seconds:.1f} s" + (f"; {elsewhere} finished by another driver meanwhile"
                                                              if elsewhere else "")


def name_failures(failed: dict[str, dict]) -> None:
    for run_id, info in failed.items():
        note(f"failed {run_id}: {info.get('error')}")


def exit_if_failed(failed: dict[str, dict], crashed: list[str], max_failures: int, again: str) -> None:
    """Exit 1 when any run did not finish; the command went on without them, but scripts and CI must
    see that the result is incomplete. ``again``: the command that retries them."""
    if crashed:
        fail(f"{len(crashed)} trial(s) crashed after {max_failures} restarts (see the Ray log); "
             f"fix the cause and rerun with {again}", code=1)
    if failed:
        fail(f"{len(failed)} run(s) failed: {', '.join(sorted(failed))} (the reasons are above and in each "
             f"row's `error`; {again} retrains failed runs)", code=1)
