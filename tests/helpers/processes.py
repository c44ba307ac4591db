"""Processes by PID: waiting for a condition, SIGKILL, /proc scanning (command lines, parents,
descendants, sessions), the Ray processes a driver started, and the clean-up of a private Ray temp
folder. Nothing here stops Ray by name (never `ray stop`, never pkill): other Ray users on the
machine are not ours to touch."""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional, TypeVar, Union

from helpers import ray_tmp as ray_tmp_folders

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, every: float = 0.1,
             what: Union[str, Callable[[], str]] = "the condition") -> T:
    """Call ``condition`` every ``every`` s until it returns something truthy, and return that. After
    ``timeout`` s: AssertionError naming ``what`` (a string, or a function called then, e.g. to
    add a log file's text)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")


def wait_gone(find: Callable[[], T], timeout: float = 15.0, every: float = 0.25) -> T:
    """Call ``find`` (processes still alive, say) until it returns something empty or ``timeout`` s
    pass; return its last value (empty when everything went)."""
    deadline = time.monotonic() + timeout
    left = find()
    while left and time.monotonic() < deadline:
        time.sleep(every)
        left = find()
    return left


def kill_pids(pids) -> None:
    """SIGKILL each PID; one that has gone already (or is not ours) is skipped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# --- /proc -------------------------------------------------------------------------------------

class Proc(NamedTuple):
    pid: int
    ppid: int
    sid: int
    cmdline: str


def processes() -> list[Proc]:
    """Every live process (zombies, which have exited, left out)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if fields[0] == "Z":
            continue
        out.append(Proc(int(entry), int(fields[1]), int(fields[3]), cmd.strip()))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def parents() -> dict[int, int]:
    """PID -> parent PID of every live process."""
    return {p.pid: p.ppid for p in processes()}


def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every live process below them."""
    tree = parents()
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, ppid in tree.items() if ppid in frontier} - found
        found |= frontier
    return found


def session_of(pid: int) -> Optional[int]:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def pids_matching(pattern: str) -> set[int]:
    """Live processes whose command line matches the regular expression ``pattern`` (like
    ``pgrep -f``), this process left out."""
    regex = re.compile(pattern)
    return {p.pid for p in processes() if regex.search(p.cmdline) and p.pid != os.getpid()}


# --- Ray processes -------------------------------------------------------------------------------

RAY_PROCESS = r"raylet|gcs_server|ray::|default_worker|dashboard"


def ray_daemon_pids() -> set[int]:
    """PIDs of every gcs_server and raylet on this machine (whoever started them)."""
    return {p.pid for p in processes() if re.search(r"/(gcs_server|raylet)\b", p.cmdline.split(" ")[0])}


def processes_of_driver(driver_pid: int, known_daemons: Optional[set[int]] = None) -> dict[int, str]:
    """Processes a (now finished) driver left behind: those in its session (it was started in a
    session of its own, and Ray's workers stay in it) and Ray daemons of its Ray session (Ray
    names the session ``session_<date>_<time>_<micro>_<driver pid>``). Other users' Ray processes
    on the machine are neither."""
    session = re.compile(rf"session_[0-9_-]+_{driver_pid}\b")
    known = known_daemons or set()
    return {p.pid: p.cmdline[:160] for p in processes()
            if p.pid != os.getpid() and (p.sid == driver_pid or (p.pid not in known and session.search(p.cmdline)))}


def ray_processes(ray_tmp: str, session: Optional[int] = None) -> set[int]:
    """Live Ray processes that belong to us: their command line names our Ray temp folder, or they
    run in the session of the driver we started (``start_new_session=True``)."""
    ours = pids_matching(re.escape(ray_tmp))
    if session is not None:
        ours |= {pid for pid in pids_matching(RAY_PROCESS) if session_of(pid) == session}
    return ours


def cleanup_ray_tmp(ray_tmp: str, session: Optional[int] = None) -> set[int]:
    """Kill (by PID) whatever Ray processes of ours are still alive, remove the temp folder, and
    return the PIDs that were still alive."""
    left = ray_processes(ray_tmp, session)
    kill_pids(left)
    ray_tmp_folders.remove(ray_tmp)
    return left
