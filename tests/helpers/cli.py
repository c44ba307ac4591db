"""The ``bkdbench`` console script in a subprocess, the whole CLI in this process (invoke_cli), and
in-process Typer apps of one command group.

Every subprocess gets ``cli_env()``: no inherited cluster address, results folder or Ray
authentication mode, a private Ray temp folder (helpers.ray_tmp), unbuffered output and one wide
terminal (``COLUMNS``), so that rich wraps no line the tests read."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from helpers.ray_tmp import ray_tmpdir, token_file

# The console script next to this interpreter.
BKDBENCH = Path(sys.executable).parent / "bkdbench"
COLUMNS = "250"
NOT_INHERITED = ("RAY_ADDRESS", "BKDBENCH_RESULTS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


def cli_env(ray_tmp: Optional[str] = None, **extra) -> dict:
    """The environment of a CLI subprocess: this one's, less ``NOT_INHERITED``, with
    ``RAY_TMPDIR=ray_tmp`` (a new private folder when not given), Ray's token in a file in that
    folder (``RAY_AUTH_TOKEN_PATH``, never ~/.ray/auth_token) and ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    ray_tmp = ray_tmp or ray_tmpdir()
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_TOKEN_PATH=token_file(ray_tmp), PYTHONUNBUFFERED="1", COLUMNS=COLUMNS)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(args, *, folder: Optional[Path] = None, cache: Optional[Path] = None, env: Optional[dict] = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``bkdbench ARGS`` to the end, stdout and stderr captured. ``env`` defaults to
    ``cli_env()``. With ``folder``: run there, with bkdbench's cache in ``folder/cache`` unless
    ``cache`` names another."""
    env = dict(env) if env is not None else cli_env()
    if folder is not None and cache is None:
        cache = Path(folder) / "cache"
    if cache is not None:
        env["BKDBENCH_CACHE"] = str(cache)
    return subprocess.run([str(BKDBENCH), *map(str, args)], env=env, cwd=folder, capture_output=True, text=True,
                          timeout=timeout)


def invoke_cli(args, *, folder: Optional[Path] = None, cache: Optional[Path] = None,
               env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """``bkdbench ARGS`` in this process, through typer's CliRunner: the console script's code without a
    new interpreter (whose imports cost ~4 s here, twice that beside the other tests), for checks of what
    a command prints, exits with and writes. ``folder`` and ``cache`` as for run_cli; ``env``: variables
    set on top of this process's (less ``NOT_INHERITED``). Returns what run_cli returns."""
    import pytest
    from typer.testing import CliRunner

    from bkdbench.cli import app

    with pytest.MonkeyPatch.context() as mp:
        for name in NOT_INHERITED:
            mp.delenv(name, raising=False)
        if folder is not None:
            mp.chdir(folder)
            cache = cache or Path(folder) / "cache"
        if cache is not None:
            mp.setenv("BKDBENCH_CACHE", str(cache))
        for name, value in {"COLUMNS": COLUMNS, **(env or {})}.items():
            mp.setenv(name, str(value))
        result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback the console script would print: the test shows it
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def start_cli(args, log: Path, *, env: Optional[dict] = None, stderr: Optional[Path] = None) -> subprocess.Popen:
    """Start ``bkdbench ARGS`` in a session of its own (so that one signal reaches the driver only,
    and ``kill_group`` reaches everything it started), stdout and stderr going to the file ``log``
    (a file never fills up and blocks the driver like a pipe); stderr to a file of its own if
    ``stderr`` names one."""
    out = open(log, "w")
    err = open(stderr, "w") if stderr is not None else None
    try:
        return subprocess.Popen([str(BKDBENCH), *map(str, args)], stdout=out, stderr=err or subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env if env is not None else cli_env(),
                                start_new_session=True)
    finally:
        out.close()  # the child holds its own descriptors
        if err is not None:
            err.close()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a started driver's process group (``start_cli`` gave it a session of its own)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def run_logged(args, log: Path, timeout: float = 180) -> tuple[int, str]:
    """``start_cli``, then wait for the end; return (exit status, output). On a timeout the whole
    process group (the driver and the Ray processes it started) is killed and the test fails."""
    proc = start_cli(args, log)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"bkdbench {' '.join(map(str, args))} ran past {timeout} s; output:\n{log.read_text()}")
    return proc.returncode, log.read_text()


def cli_app(group: str):
    """A Typer app holding only the command group ``bkdbench GROUP`` (``bkdbench.cli.GROUP``), for
    in-process tests through typer's CliRunner."""
    import importlib

    import typer

    module = importlib.import_module(f"bkdbench.cli.{group}")
    app = typer.Typer()
    app.callback()(lambda: None)  # keep GROUP a subcommand
    module.register(app)
    return app
