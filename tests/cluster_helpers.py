"""Real multi-node Ray clusters for the fault tests: `ray start` processes on this machine, found and
stopped by PID (never `ray stop`, which would stop every Ray instance on the machine)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
BKDBENCH = Path(sys.executable).parent / "bkdbench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BKDBENCH_RESULTS")}
    env["RAY_AUTH_MODE"] = "token"  # a joining node must ask for token authentication
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def parents() -> dict[int, int]:
    out = {}
    for pid in all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            out[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def descendants(roots: set[int]) -> set[int]:
    tree = parents()
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, ppid in tree.items() if ppid in frontier} - found
        found |= frontier
    return found


def pids_matching(text: str) -> set[int]:
    return {pid for pid in all_pids() if text in cmdline(pid) and pid != os.getpid()}


def kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start_node(args: list[str], *, prefix: list[str] | None = None) -> None:
    subprocess.run([*(prefix or []), str(RAY), "start", "--disable-usage-stats", *args], env=cluster_env(),
                   check=True, capture_output=True, timeout=120)


class Cluster:
    """A head and worker nodes started with `ray start`, all on this machine."""

    def __init__(self):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.worker_raylets: list[int] = []

    def raylets(self) -> set[int]:
        return {pid for pid in pids_matching(f":{self.port}") if "/raylet/raylet" in cmdline(pid)}

    def start_head(self, cpus: int = 1) -> None:
        start_node(["--head", f"--port={self.port}", f"--num-cpus={cpus}", "--include-dashboard=false"])

    def add_worker(self, cpus: int = 1, prefix: list[str] | None = None) -> int:
        before = self.raylets()
        start_node([f"--address={self.address}", f"--num-cpus={cpus}"], prefix=prefix)
        new = self.raylets() - before
        assert len(new) == 1, f"expected one new raylet, found {new}"
        pid = new.pop()
        self.worker_raylets.append(pid)
        return pid

    def kill_worker(self, raylet: int) -> set[int]:
        """SIGKILL a worker node: its raylet and every process under it (its trial workers)."""
        victims = descendants({raylet})
        kill(victims)
        return victims

    def stop(self) -> None:
        mine = pids_matching(f":{self.port}")
        kill(descendants(mine))
        marker = Path("/tmp/ray/ray_current_cluster")  # `ray start` records the cluster for ray.init()
        try:
            if self.address.split(":")[1] in marker.read_text():
                marker.unlink()
        except OSError:
            pass


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
