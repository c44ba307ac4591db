"""Leases on run ids (orchestrate/lease.py), with real processes: exactly one of several racing
processes gets a lease; a live holder's lease is respected and renewed; a dead holder's lease is
taken over at once; a waiting driver takes the holder's recorded outcome instead of training again."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from bkdbench.orchestrate import lease as lease_mod
from bkdbench.orchestrate.lease import acquire, leases_dir, try_acquire
from helpers.processes import wait_for

# The racers and the holder move on events (files the test creates), never on the clock: a process
# that starts seconds late under load changes nothing.
RACER = """
import pathlib, sys, time
from bkdbench.orchestrate.lease import try_acquire
root = pathlib.Path(sys.argv[1])
print("ready", flush=True)
while not (root / "go").exists():  # all four look at once, whenever the slowest started
    time.sleep(0.005)
lease = try_acquire(str(root), "run-x")
print("got" if lease is not None else "no", flush=True)
while not (root / "done").exists():  # hold it (alive) until every racer has answered
    time.sleep(0.01)
"""

HOLDER = """
import sys, time, pathlib
from bkdbench.orchestrate.lease import try_acquire
root, outcome = sys.argv[1], sys.argv[2]
lease = try_acquire(root, "run-x")
assert lease is not None
print("held", flush=True)
while not pathlib.Path(root, "go").exists():  # until the waiting driver has found the lease held
    time.sleep(0.01)
pathlib.Path(root, "outcome").write_text(outcome)  # the row, written before the release
lease.release()
"""


def files(root):
    return sorted(p.name for p in leases_dir(root).local.glob("*.json"))


def test_exactly_one_of_racing_processes_gets_the_lease(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 4
        (tmp_path / "go").touch()
        said = sorted(p.stdout.readline().strip() for p in procs)
    finally:
        (tmp_path / "done").touch()
        for p in procs:
            p.communicate(timeout=60)
    assert said == ["got", "no", "no", "no"]
    assert files(tmp_path) == ["run-x.0.json"]


def test_a_live_holder_is_respected_and_a_release_frees_the_run(tmp_path):
    mine = try_acquire(tmp_path, "run-x")
    assert mine is not None and not mine.took_over
    info = json.loads(mine.path.read_text())
    assert info["pid"] > 0 and info["host"] == socket.gethostname() and info["expires"] > time.time()
    assert try_acquire(tmp_path, "run-x") is None  # this very process is alive: not stale
    assert try_acquire(tmp_path, "run-y") is not None  # another run is another lease
    mine.release()
    assert "run-x.0.json" not in files(tmp_path)
    again = try_acquire(tmp_path, "run-x")
    assert again is not None and again.generation == 0
    again.release()


def test_the_holder_renews_its_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_mod, "RENEW", 0.2)
    held = try_acquire(tmp_path, "run-x")
    first = json.loads(held.path.read_text())["expires"]
    wait_for(lambda: json.loads(held.path.read_text())["expires"] > first, timeout=60,
             what="a renewal of the lease's expiry")
    held.release()


def test_a_dead_holders_lease_is_taken_over_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = leases_dir(tmp_path).local
    folder.mkdir(parents=True)
    (folder / "run-x.0.json").write_text(json.dumps({  # a killed trial of this host, its TTL not yet over
        "run_id": "run-x", "holder": "h", "host": socket.gethostname(), "boot": lease_mod._boot_id(),
        "pid": dead.pid, "expires": time.time() + 3600}))
    (folder / "run-y.0.json").write_text(json.dumps({  # another host's holder, expired
        "run_id": "run-y", "holder": "h", "host": "elsewhere", "boot": "b", "pid": 1, "expires": time.time() - 1}))
    (folder / "run-z.0.json").write_text(json.dumps({  # another host's holder, live: its pid means nothing here
        "run_id": "run-z", "holder": "h", "host": "elsewhere", "boot": "b", "pid": dead.pid, "expires": time.time() + 60}))
    x, y = try_acquire(tmp_path, "run-x"), try_acquire(tmp_path, "run-y")
    assert x is not None and x.generation == 1 and x.took_over
    assert y is not None and y.generation == 1
    assert try_acquire(tmp_path, "run-z") is None
    x.release()
    y.release()
    assert files(tmp_path) == ["run-z.0.json"]  # released with the stale generation below it


@pytest.mark.parametrize("outcome", ["finished", "failed"])
def test_a_waiting_driver_takes_the_holders_outcome(tmp_path, outcome):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), outcome], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    seen, looks = tmp_path / "outcome", []

    def finished():
        looks.append(1)
        if len(looks) == 2:  # the first look found the lease held: now let the holder finish
            (tmp_path / "go").touch()
        return seen.exists() and seen.read_text() == "finished"

    got = acquire(tmp_path, "run-x", poll=0.1, finished=finished,
                  failure=lambda: "training loss became nan" if seen.exists() and seen.read_text() == "failed" else None)
    holder.wait(timeout=30)
    assert got.lease is None and len(looks) >= 2 and got.waited >= 0.1  # it waited for the live holder
    assert (got.finished, got.failed) == ((True, None) if outcome == "finished" else (False, "training loss became nan"))
    assert files(tmp_path) == []


def test_an_old_failure_is_retried_when_nobody_holds_the_run(tmp_path):
    got = acquire(tmp_path, "run-x", finished=lambda: False, failure=lambda: "diverged last week")
    assert got.lease is not None and got.failed is None  # a failed row from an earlier invocation: train again
    got.lease.release()
