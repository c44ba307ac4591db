"""Where results live on disk. Torch-free: the CLI, the runner and the results layer share it.

The results root is ``--results DIR`` when given, else ``$BKDBENCH_RESULTS``, else ``./results``.
The leaderboard is ``<results>/leaderboard/``, plots go to ``<results>/plots/``.
"""
from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "BKDBENCH_RESULTS"
DEFAULT_RESULTS = "results"


def results_dir(option: str | os.PathLike | None = None) -> Path:
    """The results root: the option, else ``$BKDBENCH_RESULTS``, else ``./results``.

    Only local (or mounted, e.g. NFS) folders: a ``scheme://`` URI would be mangled by Path,
    so it is refused with a ValueError instead of silently writing to a folder named ``s3:``.
    """
    chosen = os.fspath(option) if option else (os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)
    if "://" in chosen:
        raise ValueError(f"the results folder must be a local path, got the URI {chosen!r}")
    return Path(chosen).expanduser()


def leaderboard_dir(results: str | os.PathLike) -> Path:
    """The leaderboard folder inside a results root."""
    return Path(results) / "leaderboard"


def plots_dir(results: str | os.PathLike) -> Path:
    """The default folder for plots inside a results root."""
    return Path(results) / "plots"


def teachers_dir(results: str | os.PathLike) -> Path:
    """Cached teacher (and stage-1) weights, by run id."""
    return Path(results) / "teachers"


def experiments_dir(results: str | os.PathLike) -> Path:
    """Ray Tune experiment folders (state, checkpoints, logs) of suites, sweeps and ablations."""
    return Path(results) / "experiments"


def teachers_dir(results: str | os.PathLike) -> Path:
    """Cached teacher weights, keyed by the teacher run's run_id."""
    return Path(results) / "teachers"


def experiments_dir(results: str | os.PathLike) -> Path:
    """Ray Tune experiment state and logs (what ``--resume`` picks up)."""
    return Path(results) / "experiments"
