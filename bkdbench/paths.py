"""Where results live. Torch-free: the CLI, the runner and the results layer share it.

The results root is ``--results``/``--storage`` when given, else ``$BKDBENCH_RESULTS``, else
``./results``: a local (or mounted, e.g. NFS) folder or an object-store URI (``s3://``, ``gs://``;
see ``storage.py``). The leaderboard is ``<results>/leaderboard/``, teachers ``<results>/teachers/``,
Tune's experiment state ``<results>/experiments/``; plots stay on this machine (``plots_dir``).
"""
from __future__ import annotations

import os
from pathlib import Path

from .storage import Location

RESULTS_ENV = "BKDBENCH_RESULTS"
DEFAULT_RESULTS = "results"
LOCAL_PLOTS = "plots"  # where plots of a URI results root go: PNGs are for a person on this machine
# Inputs a command names once and every trial reads, on whichever node it runs (ray_session forwards
# them): ``--splits DIR`` (the split lists of ImageNet-LT & co.) and ``--pretrained FILE`` (the weights
# whose content key the runs carry). Like ``--data-dir``, the paths must be visible on every node.
SPLITS_ENV = "BKDBENCH_SPLITS"
PRETRAINED_ENV = "BKDBENCH_PRETRAINED"
WEIGHTS_ENV = "BKDBENCH_WEIGHTS"  # --weights FILE of a foundation model (models/foundation.py)
CLASSNAMES_ENV = "BKDBENCH_CLASSNAMES"  # --classnames FILE (data/classnames.py)
HASH_CONTENTS_ENV = "BKDBENCH_HASH_CONTENTS"  # 1: split-list stores keyed by file bytes (data/large/store.py)


def results_dir(option: "str | os.PathLike | Location | None" = None) -> Location:
    """The results root: the option, else ``$BKDBENCH_RESULTS``, else ``./results``. A malformed URI
    raises LocationError (a ValueError); whether it can be reached is ``check_writable``'s job."""
    if isinstance(option, Location):
        return option
    chosen = os.fspath(option) if option else (os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)
    return Location(chosen)


def leaderboard_dir(results: "str | os.PathLike | Location") -> Location:
    """The leaderboard folder inside a results root."""
    return Location(results) / "leaderboard"


def teachers_dir(results: "str | os.PathLike | Location") -> Location:
    """Cached teacher (and stage-1) weights, keyed by the teacher run's run_id."""
    return Location(results) / "teachers"


def experiments_dir(results: "str | os.PathLike | Location") -> Location:
    """Ray Tune experiment folders (state, checkpoints) of suites, sweeps and ablations: what
    ``--resume`` picks up."""
    return Location(results) / "experiments"


def plots_dir(results: "str | os.PathLike | Location") -> Path:
    """The default folder for plots: ``<results>/plots`` for a local root, ``./plots`` for a URI."""
    root = Location(results)
    return root.local / "plots" if root.is_local else Path(LOCAL_PLOTS)
