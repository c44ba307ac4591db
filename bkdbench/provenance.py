"""Where a number came from: host, package version, git commit. Torch-free.

The commit is read once, when this module is first imported, i.e. when the process loads bkdbench's
code, not when a run finishes: a commit made while a long run trains must not be stamped on rows
whose code was loaded before it. Uncommitted changes to tracked files of the package add ``+dirty``.
"""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Optional

from . import __version__

_REPO = Path(__file__).parent


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _read_git_sha() -> Optional[str]:
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return None  # not a git checkout (an installed wheel): no commit to report
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return f"{sha}+dirty" if changes else sha


_GIT_SHA = _read_git_sha()


def git_sha() -> Optional[str]:
    """The commit of the bkdbench code this process imported (``+dirty`` if tracked files differed)."""
    return _GIT_SHA


def provenance() -> dict:
    return {"host": socket.gethostname(), "bkdbench_version": __version__, "git_sha": git_sha()}
