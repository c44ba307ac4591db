"""Which runs share a packed trial: runs that differ only in their method or its parameters and ask the
same of the network and the loader (``packed.pack_signature``: CE, re-weighting and Balanced Softmax of
one seed; KD and BKD students of one teacher), up to K per trial. Each run still gets its own
leaderboard row, identical to the one it gets alone; only the scheduling unit changes.

A trial is named by a key: a single run's key is its run id (so ``--pack 1`` is exactly the unpacked
experiment), a pack's key is a hash of its members' run ids (stable across invocations, so an
interrupted experiment restores when it asks for the same packs again). Ray-free.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Callable, Optional

from ..specs import RunSpec

Event = Callable[[str, str, dict], None]
RUNS = "runs"  # a packed trial's final result: {run_id: status} of its members
RUN_ERRORS = "run_errors"  # and {run_id: reason} of those that failed


def packable(spec: RunSpec) -> bool:
    from ..training.packed import pack_refusal

    return pack_refusal(spec) is None  # train_packed cannot train features, stage-1 models, ...


def pack_groups(specs: list[RunSpec], pack: int, students_only: bool = False) -> list[list[RunSpec]]:
    """``specs`` cut into trials: packable runs with one ``pack_signature`` in groups of at most
    ``pack``, split as evenly as possible (5 runs, K=4: 3 + 2, so neither trial waits on the other for
    long); everything else alone. ``students_only``: only runs with a teacher are packed (their teacher
    then runs once per batch for the whole pack: the gain packing is measured to give on CPU, where a
    pack of runs without a teacher does the same work as separate trials; docs/performance.md). Groups come in the order of their first run."""
    if pack < 1:
        raise ValueError(f"--pack must be at least 1 (got {pack})")
    from ..training.packed import pack_signature

    buckets: dict[str, list[RunSpec]] = {}
    for spec in specs:
        wanted = pack > 1 and packable(spec) and (spec.teacher is not None or not students_only)
        alike = pack_signature(spec) if wanted else spec.run_id
        buckets.setdefault(alike, []).append(spec)
    groups = []
    for members in buckets.values():
        n = math.ceil(len(members) / pack)
        size, extra = divmod(len(members), n)
        start = 0
        for i in range(n):
            end = start + size + (1 if i < extra else 0)
            groups.append(members[start:end])
            start = end
    if pack > 1:
        from ..training.packed import check_packable

        for group in groups:
            if len(group) > 1:
                check_packable(group)  # the invariant train_packed relies on, checked before any trial starts
    return groups


def unit_key(group: list[RunSpec]) -> str:
    if len(group) == 1:
        return group[0].run_id
    digest = hashlib.sha256(json.dumps(sorted(s.run_id for s in group)).encode()).hexdigest()[:16]
    return f"pack-{digest}"


def pack_units(specs: list[RunSpec], pack: int, students_only: bool = False) -> dict[str, list[str]]:
    """Trial key → the run ids it trains, in ``specs`` order."""
    return {unit_key(g): [s.run_id for s in g] for g in pack_groups(specs, pack, students_only)}


def per_run_events(on_event: Optional[Event], units: dict[str, list[str]]) -> Optional[Event]:
    """The live view counts runs: a pack's start and completion are passed on once per member, each
    with that member's own status."""
    if on_event is None:
        return None

    def event(kind: str, key: str, metrics: dict) -> None:
        members = units.get(key)
        if not members or members == [key]:
            return on_event(kind, key, metrics)
        statuses = metrics.get(RUNS) or {}
        for run_id in members:
            status = statuses.get(run_id, metrics.get("status"))
            on_event(kind, run_id, {**metrics, "status": status} if status else metrics)

    return event


def per_run_outcome(key: str, entry: dict, units: dict[str, list[str]]) -> dict[str, dict]:
    """A trial's outcome by run id: a pack's entry becomes one per member, with its status."""
    members = units.get(key)
    if not members or members == [key]:
        return {key: entry}
    statuses, errors = entry.get(RUNS) or {}, entry.get(RUN_ERRORS) or {}
    out = {}
    for run_id in members:
        status = statuses.get(run_id, entry.get("status"))
        if run_id in errors:  # a failed member: its own reason
            error = errors[run_id]
        elif status in ("finished", "skipped"):  # it finished beside a failed one
            error = None
        else:  # the whole trial crashed
            error = entry.get("error")
        out[run_id] = {**entry, "status": status, "error": error}
    return out
