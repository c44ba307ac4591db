"""Real multi-node Ray clusters for the fault tests: `ray start` processes on this machine, found and
stopped by PID (never `ray stop`, which would stop every Ray instance on the machine). Each cluster
has a Ray temp folder of its own, so the address `ray start` records for ray.init
(``ray_current_cluster``) is seen by no other Ray user on the machine."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

from helpers.cli import cli_env
from helpers.processes import cleanup_ray_tmp, cmdline, descendants, kill_pids, pids_matching
from helpers.ray_tmp import ray_tmpdir

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A head and worker nodes started with `ray start`, all on this machine, all with ``env``:
    ``cli_env`` with this cluster's Ray temp folder and token authentication (a joining node must
    ask for it)."""

    def __init__(self):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ray_tmp = ray_tmpdir()
        self.env = cli_env(self.ray_tmp, RAY_AUTH_MODE="token")
        self.worker_raylets: list[int] = []

    def driver_env(self, **extra) -> dict:
        """A driver's environment: no RAY_AUTH_MODE, so the tests prove bkdbench asks for token
        authentication itself when it joins the cluster."""
        env = {k: v for k, v in self.env.items() if k != "RAY_AUTH_MODE"}
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start_node(self, args: list[str], *, prefix: Optional[list[str]] = None) -> None:
        subprocess.run([*(prefix or []), str(RAY), "start", "--disable-usage-stats", *args], env=self.env,
                       check=True, capture_output=True, timeout=120)

    def raylets(self) -> set[int]:
        return {pid for pid in pids_matching(f":{self.port}") if "/raylet/raylet" in cmdline(pid)}

    def start_head(self, cpus: int = 1) -> None:
        self.start_node(["--head", f"--port={self.port}", f"--num-cpus={cpus}", "--include-dashboard=false"])

    def add_worker(self, cpus: int = 1, prefix: Optional[list[str]] = None) -> int:
        before = self.raylets()
        self.start_node([f"--address={self.address}", f"--num-cpus={cpus}"], prefix=prefix)
        new = self.raylets() - before
        assert len(new) == 1, f"expected one new raylet, found {new}"
        pid = new.pop()
        self.worker_raylets.append(pid)
        return pid

    def kill_worker(self, raylet: int) -> set[int]:
        """SIGKILL a worker node: its raylet and every process under it (its trial workers)."""
        victims = descendants({raylet})
        kill_pids(victims)
        return victims

    def stop(self) -> None:
        """SIGKILL every process of the cluster: those naming its address and everything below them,
        and those naming its Ray temp folder (the head's gcs_server names neither its parent, `ray
        start`, which has exited, nor ``:PORT``); then remove that folder."""
        kill_pids(descendants(pids_matching(f":{self.port}")))
        cleanup_ray_tmp(self.ray_tmp)
