"""Private Ray temp folders (``RAY_TMPDIR``): each one short, under /tmp (Ray's Unix socket paths
must stay under ~107 bytes), removed when the test process exits if not before. Ray started with
one keeps its session files apart from every other Ray on the machine, and each of its processes
(gcs_server, raylet, workers) names the folder on its command line, so a test finds its own
processes by PID.

Every folder made here is remembered, with the Ray sessions found in it when it is removed
(``remove``), so that conftest can tell whether a test not marked slow started Ray: a Ray session
leaves a ``session_*`` folder in its temp folder (``sessions_in_folders_made_since``)."""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

_MADE: list[str] = []
_SESSIONS_OF_REMOVED: dict[str, list[str]] = {}


def ray_tmpdir() -> str:
    """A new, empty Ray temp folder of this test process, e.g. ``/tmp/bkdtab12cd34``."""
    folder = tempfile.mkdtemp(prefix="bkdt", dir="/tmp")
    _MADE.append(folder)
    return folder


def ray_sessions(folders) -> list[str]:
    """The Ray session folders in these temp folders (``RAY_TMPDIR/ray/session_*``, and
    ``FOLDER/session_*`` for a temp dir given to ray.init itself)."""
    found = []
    for folder in folders:
        for pattern in ("session_*", "*/session_*"):
            found += [str(p) for p in Path(folder).glob(pattern)]
    return sorted(found)


def remove(folder: str) -> None:
    """Remove a Ray temp folder, remembering the Ray sessions that were in it."""
    if folder in _MADE:
        _SESSIONS_OF_REMOVED.setdefault(folder, []).extend(ray_sessions([folder]))
    shutil.rmtree(folder, ignore_errors=True)


def made_count() -> int:
    """How many folders ``ray_tmpdir`` has made so far."""
    return len(_MADE)


def sessions_in_folders_made_since(count: int) -> list[str]:
    """The Ray sessions in (or, for a folder removed meanwhile, found at its removal in) the folders
    made after the first ``count``."""
    found = []
    for folder in _MADE[count:]:
        found += ray_sessions([folder]) + _SESSIONS_OF_REMOVED.get(folder, [])
    return sorted(set(found))


@atexit.register
def _remove_all() -> None:
    for folder in _MADE + _TOKEN_FOLDER:
        shutil.rmtree(folder, ignore_errors=True)


# --- Ray's authentication token (REFERENCE.md §5, trap 7) ------------------------------------------
# Ray 2.60 reads the token from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else
# ~/.ray/auth_token, which it writes (not atomically) when it is missing. The tests never touch that
# one: each CLI's Ray (and a `ray start` cluster's nodes and drivers) reads a token file in its own
# temp folder, and Ray started in the test process reads the process's own.

_TOKEN_FOLDER: list[str] = []


def token_file(folder: str) -> str:
    """``FOLDER/auth_token``, a new random token (as Ray makes one: 64 hex digits) written atomically
    the first time it is asked for."""
    path = os.path.join(folder, "auth_token")
    if not os.path.exists(path):
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "w") as handle:
            handle.write(secrets.token_hex(32))
        os.replace(tmp, path)
    return path


def process_token_file() -> str:
    """The token file of Ray started in this process: one for the process's life, since Ray's C++
    core loads the token once per process."""
    if not _TOKEN_FOLDER:
        _TOKEN_FOLDER.append(tempfile.mkdtemp(prefix="bkdtok", dir="/tmp"))
    return token_file(_TOKEN_FOLDER[0])


def in_process_ray_env(mp, ray_tmp: str) -> None:
    """With ``mp`` (a pytest MonkeyPatch context), the environment a test that calls ``ray_session`` in
    its own process needs: a private temp folder, no cluster address, and the two variables that
    ``ray_session`` would otherwise set for the rest of the test process (restored when ``mp`` ends),
    and the process's own Ray token file."""
    mp.delenv("RAY_ADDRESS", raising=False)
    mp.setenv("RAY_TMPDIR", ray_tmp)
    mp.setenv("RAY_AUTH_TOKEN_PATH", process_token_file())
    mp.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    mp.setenv("RAY_AIR_NEW_OUTPUT", "0")
