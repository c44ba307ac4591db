"""One run, one trainer: a trial takes a lease on its run id in the results storage before it trains
the run, so two drivers on one results folder (two terminals, two machines on one NFS share) never
train the same run at once. Ray-free; ``trial.py``, ``packed_trial.py`` and ``workers.py`` use it.

Layout: ``<results>/leases/<run_id>.<generation>.json``, each file created exclusively (``O_CREAT |
O_EXCL``, which local disks and NFS v3+ honour) and holding its holder's id, host, boot id, pid and
expiry. The highest generation is the lease. Its holder rewrites the expiry every ``RENEW`` seconds
from a background thread. It is stale once expired (``TTL``) or, on the same host, as soon as its
process is gone (a killed driver's trial is taken over at once, not after the TTL). Taking over means
creating the next generation exclusively, so of two drivers that find a lease stale only one gets it.
A holder releases the lease after it has written the run's row; a driver that waited then takes that
row as the run's outcome (finished, or failed with its reason) instead of training it again.

Object storage (``s3://``, ``gs://``): pyarrow exposes no conditional put, so creation there is
"exists, then put": two drivers reaching one run within the same moment can both train it (its row
is still written once, atomically). Use a shared file system where that matters.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..storage import Location

TTL = 120.0  # seconds a lease lives without renewal (a holder on another host that died)
RENEW = 20.0  # seconds between renewals
POLL = 2.0  # seconds between looks at a lease held by another driver


def leases_dir(results: "Location | str") -> Location:
    return Location(results) / "leases"


def _boot_id() -> str:
    try:  # pids are only comparable within one boot of one host
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed process its parent has not reaped yet is a zombie: gone all the same
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _generations(folder: Location, run_id: str) -> dict[int, Location]:
    pattern = re.compile(re.escape(run_id) + r"\.(\d+)\.json")
    return {int(m.group(1)): folder / name for name in folder.list() if (m := pattern.fullmatch(name))}


def _is_stale(info: dict, now: float) -> bool:
    if info.get("expires", 0) < now:
        return True
    same_boot = info.get("host") == socket.gethostname() and info.get("boot") and info.get("boot") == _boot_id()
    return bool(same_boot and _process_gone(int(info.get("pid", -1))))


def _read(where: Location) -> Optional[dict]:
    try:
        return json.loads(where.read_text())
    except (OSError, ValueError):
        return None


def _create(where: Location, text: str) -> bool:
    """Create ``where`` holding ``text`` if it does not exist yet; whether this call created it."""
    if not where.is_local:
        if where.exists():
            return False
        where.write_text(text)
        return True
    os.makedirs(os.path.dirname(where.local), exist_ok=True)
    try:
        fd = os.open(where.local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return True


@dataclass
class Lease:
    """A held lease; renewed in the background until ``release``."""
    folder: Location
    run_id: str
    generation: int
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    lost: bool = False  # another driver took it over (this one stopped renewing: it was presumed dead)
    took_over: bool = False  # taken from a stale holder (not released by a live one)

    @property
    def path(self) -> Location:
        return self.folder / f"{self.run_id}.{self.generation}.json"

    def payload(self) -> str:
        return json.dumps({"run_id": self.run_id, "holder": self.holder, "host": socket.gethostname(),
                           "boot": _boot_id(), "pid": os.getpid(), "expires": time.time() + TTL})

    def _renew_loop(self) -> None:
        while not self._stop.wait(RENEW):
            if max(_generations(self.folder, self.run_id), default=-1) != self.generation:
                self.lost = True
                return
            try:
                self.path.write_text(self.payload())
            except OSError:  # storage hiccup: try again next time (the TTL is several renewals long)
                continue

    def start(self) -> "Lease":
        threading.Thread(target=self._renew_loop, name=f"lease-{self.run_id}", daemon=True).start()
        return self

    def release(self) -> None:
        """Stop renewing and delete this generation and the stale ones below it."""
        self._stop.set()
        if self.lost:
            return
        for generation, where in _generations(self.folder, self.run_id).items():
            if generation <= self.generation:
                where.delete()


def try_acquire(results: "Location | str", run_id: str) -> Optional[Lease]:
    """The lease on ``run_id`` if it is free or stale now, else None."""
    folder = leases_dir(results)
    generations = _generations(folder, run_id)
    generation = 0
    if generations:
        top = max(generations)
        info = _read(generations[top])
        if info is None:  # unreadable: just created and not written yet, or left empty by a crash
            if _age(generations[top]) < TTL:
                return None
        elif not _is_stale(info, time.time()):
            return None
        generation = top + 1
    lease = Lease(folder, run_id, generation, took_over=generation > 0)
    if not _create(lease.path, lease.payload()):
        return None
    return lease.start()


def _age(where: Location) -> float:
    try:
        return time.time() - os.stat(where.local).st_mtime if where.is_local else 0.0
    except OSError:
        return TTL


@dataclass
class Outcome:
    """What ``acquire`` found: a held ``lease``, or the run already done (``finished``), or failed by the
    driver this one waited for (``failed`` holds the reason)."""
    lease: Optional[Lease] = None
    finished: bool = False
    failed: Optional[str] = None
    waited: float = 0.0


def acquire(results: "Location | str", run_id: str, *, finished: Callable[[], bool],
            failure: Callable[[], Optional[str]], poll: float = POLL) -> Outcome:
    """Wait until this process holds the lease on ``run_id`` (``Outcome.lease``), or the run has been
    finished elsewhere, or the driver holding it released it after recording a failure."""
    started, waited_on_live = time.monotonic(), False
    while True:
        if finished():
            return Outcome(finished=True, waited=time.monotonic() - started)
        lease = try_acquire(results, run_id)
        if lease is not None:
            if finished():  # finished between the look and the lease
                lease.release()
                return Outcome(finished=True, waited=time.monotonic() - started)
            # released by the live holder this driver waited for: that holder tried the run, so a
            # failed row is its outcome (an older failed row, from an earlier invocation, is retried)
            reason = failure() if waited_on_live and not lease.took_over else None
            if reason is not None:
                lease.release()
                return Outcome(failed=reason, waited=time.monotonic() - started)
            return Outcome(lease=lease, waited=time.monotonic() - started)
        waited_on_live = True
        time.sleep(poll)


@dataclass
class Claimed:
    """``claim``'s answer for a set of runs: the leases this trial holds (it trains those runs), the runs
    finished elsewhere meanwhile, and those another driver tried and recorded as failed (id → reason)."""
    leases: list[Lease] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def held(self) -> set[str]:
        return {lease.run_id for lease in self.leases}

    def release(self) -> None:
        for lease in self.leases:
            lease.release()


def claim(results: "Location | str", run_ids: list[str], *, force: bool = False) -> Claimed:
    """Leases on ``run_ids``, taken one at a time in sorted order (so two drivers whose packs overlap
    never wait for each other in a circle), each waiting while another driver holds it. ``force``:
    a finished row does not count as done (the run is retrained, once per driver that forces it)."""
    from ..leaderboard.store import failure_of, is_finished
    from ..paths import leaderboard_dir

    board, got = leaderboard_dir(results), Claimed()
    try:
        for run_id in sorted(run_ids):
            outcome = acquire(results, run_id, finished=lambda r=run_id: not force and is_finished(board, r),
                              failure=lambda r=run_id: failure_of(board, r))
            if outcome.lease is not None:
                got.leases.append(outcome.lease)
            elif outcome.finished:
                got.finished.append(run_id)
            else:
                got.failed[run_id] = outcome.failed
    except BaseException:
        got.release()
        raise
    return got
