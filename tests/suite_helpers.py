"""Helpers of the suite-runner tests: suite files, the ``bkdbench`` console script in a subprocess,
snapshots of a results folder, and the Ray processes a driver started (to prove none is left)."""
from __future__ import annotations

import os
import re
import signal
import atexit
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

# The console script next to this interpreter (bkdbench.cli has no __main__, so no `python -m`).
BKDBENCH = Path(sys.executable).parent / "bkdbench"


def write_suite(path: Path, **fields) -> Path:
    """A suite YAML file with these top-level keys (name defaults to the file's stem)."""
    fields.setdefault("name", path.stem)
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


_ray_tmp: Optional[str] = None


def ray_tmpdir() -> str:
    """A Ray temp folder private to this test session (short: Ray's socket paths must stay under
    107 bytes), so that the drivers under test never meet the Ray sessions, logs or
    ``ray_current_cluster`` file of anyone else on the machine (see
    test_local_run_starts_its_own_ray for why that file matters)."""
    global _ray_tmp
    if _ray_tmp is None:
        _ray_tmp = tempfile.mkdtemp(prefix="bkdt", dir="/tmp")
        atexit.register(shutil.rmtree, _ray_tmp, True)
    return _ray_tmp


def cli_env() -> dict:
    """The environment of a CLI subprocess: no inherited cluster address or results folder, and
    a private Ray temp folder."""
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "BKDBENCH_RESULTS"):
        env.pop(name, None)
    env["RAY_TMPDIR"] = ray_tmpdir()
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli_in(args: list[str], folder: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    """Run ``bkdbench ARGS`` to the end in ``folder`` with its own cache (``folder/cache``) and a wide
    terminal; stdout and stderr captured."""
    env = cli_env()
    env.update(BKDBENCH_CACHE=str(folder / "cache"), COLUMNS="200")
    return subprocess.run([str(BKDBENCH), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=folder)


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``bkdbench ARGS`` in its own session (so one signal reaches the driver only), with
    stdout and stderr going to ``log`` (a file never fills up and blocks the driver like a pipe)."""
    handle = open(log, "w")
    try:
        return subprocess.Popen([str(BKDBENCH), *args], stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=cli_env(), start_new_session=True)
    finally:
        handle.close()  # the child holds its own descriptor


def run_cli(args: list[str], log: Path, timeout: float = 180) -> tuple[int, str]:
    """Run ``bkdbench ARGS`` to the end; return (exit status, its output). On a timeout the whole
    process group (the driver and the Ray processes it started) is killed and the test fails."""
    proc = start_cli(args, log)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"bkdbench {' '.join(args)} ran past {timeout} s; output:\n{log.read_text()}")
    return proc.returncode, log.read_text()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a started driver's process group (it was started in a session of its own)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def wait_for(condition: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def row_files(results: Path) -> list[Path]:
    folder = results / "leaderboard"
    return sorted(p for p in folder.glob("*.parquet")) if folder.is_dir() else []


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file below ``folder``: relative path -> (mtime in ns, bytes)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = (path.stat().st_mtime_ns, path.read_bytes())
    return out


def suite_run_ids(suite_file: Path, **filters) -> list[str]:
    from bkdbench.specs.suites import load_suite

    return [spec.run_id for spec in load_suite(str(suite_file)).expand(**filters)]


# --- processes -----------------------------------------------------------------------------

def _processes() -> list[tuple[int, int, str]]:
    """(pid, session id, command line) of every process."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if fields[0] == "Z":
            continue  # a zombie has already exited
        out.append((int(entry), int(fields[3]), cmdline))
    return out


def ray_daemon_pids() -> set[int]:
    """PIDs of every gcs_server and raylet on this machine (whoever started them)."""
    return {pid for pid, _, cmd in _processes() if re.search(r"/(gcs_server|raylet)\b", cmd.split(" ")[0])}


def processes_of_driver(driver_pid: int, known_daemons: Optional[set[int]] = None) -> dict[int, str]:
    """Processes a (now finished) driver left behind: those in its session (it was started in a
    session of its own, and Ray's workers stay in it) and Ray daemons of its Ray session (Ray
    names the session ``session_<date>_<time>_<micro>_<driver pid>``). Other users' Ray processes
    on the machine are neither."""
    session = re.compile(rf"session_[0-9_-]+_{driver_pid}\b")
    known = known_daemons or set()
    found = {}
    for pid, sid, cmd in _processes():
        if pid == os.getpid():
            continue
        if sid == driver_pid or (pid not in known and session.search(cmd)):
            found[pid] = cmd[:160]
    return found


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
