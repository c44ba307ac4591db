"""Files the tests write or look at: suite files, leaderboard row files, PNGs, and the one check
that a command wrote nothing (``nothing_written`` / ``assert_nothing_written``, over ``snapshot``).

Paths are relative to the folder looked at, with ``/`` between parts; a folder's ends in ``/``."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

import yaml

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = "."  # the key of the looked-at folder itself in a snapshot


def write_suite(path: Path, **fields) -> Path:
    """A suite YAML file with these top-level keys (``name`` defaults to the file's stem)."""
    fields.setdefault("name", path.stem)
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def suite_run_ids(suite_file: Path, **filters) -> list[str]:
    """The run ids a suite file expands to (in its order)."""
    from bkdbench.specs.suites import load_suite

    return [spec.run_id for spec in load_suite(str(suite_file)).expand(**filters)]


def row_files(results: Path) -> list[Path]:
    """The leaderboard's row files (``results/leaderboard/*.parquet``), sorted."""
    return sorted((Path(results) / "leaderboard").glob("*.parquet"))


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def tree(folder: Path) -> list[str]:
    """Every file and folder below ``folder`` (not following links to folders), sorted; [] when
    ``folder`` is missing."""
    root = Path(folder)
    if not root.is_dir():
        return []
    out = []
    for where, folders, files in os.walk(root):
        here = Path(where).relative_to(root)
        out += [(here / name).as_posix() + "/" for name in folders]
        out += [(here / name).as_posix() for name in files]
    return sorted(out)


def snapshot(folder: Path) -> dict[str, Optional[tuple[int, bytes]]]:
    """``tree(folder)`` with each file's (mtime in ns, bytes) and None for each folder, plus
    ``ROOT`` when ``folder`` itself exists."""
    root = Path(folder)
    out: dict[str, Optional[tuple[int, bytes]]] = {ROOT: None} if root.is_dir() else {}
    for name in tree(root):
        path = root / name
        out[name] = None if name.endswith("/") or not path.is_file() else (path.stat().st_mtime_ns, path.read_bytes())
    return out


def assert_nothing_written(before: dict, folder: Path, *, allow_empty_folders: bool = False) -> None:
    """Fail, naming each one, if any file or folder below ``folder`` (or ``folder`` itself) was
    created, removed or rewritten since ``before = snapshot(folder)``. ``allow_empty_folders``: new
    folders pass as long as no file came with them (for a command known to make its output folders
    before it refuses)."""
    after = snapshot(folder)

    def names(keys):
        return ", ".join(f"{folder} itself" if k == ROOT else k for k in sorted(keys))

    new = after.keys() - before.keys()
    if allow_empty_folders:  # a file in a new folder is new itself, and named
        new = {k for k in new if not (k == ROOT or k.endswith("/"))}
    problems = []
    if new:
        problems.append(f"new: {names(new)}")
    if before.keys() - after.keys():
        problems.append(f"removed: {names(before.keys() - after.keys())}")
    changed = [k for k in before.keys() & after.keys() if before[k] != after[k]]
    if changed:
        problems.append(f"rewritten: {names(changed)}")
    assert not problems, f"something was written in {folder}: " + "; ".join(problems)



def assert_refused(main, args, words, folder: Path, capsys) -> None:
    """``main(args)`` (the CLI in-process) exits 2 with one ``error:`` line on stderr holding every one
    of ``words``, no traceback, and nothing written below ``folder``."""
    import pytest

    before = snapshot(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2, f"exit {exit_.value.code}; stderr: {err}; stdout: {out}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for word in words:
        assert word in lines[0], f"{word!r} missing from: {lines[0]}"
    assert_nothing_written(before, folder)

@contextlib.contextmanager
def nothing_written(folder: Path, *, allow_empty_folders: bool = False) -> Iterator[None]:
    """``with nothing_written(folder): ...``: the block creates, removes and rewrites nothing below
    ``folder``, nor ``folder`` itself (see ``assert_nothing_written``)."""
    before = snapshot(folder)
    yield
    assert_nothing_written(before, folder, allow_empty_folders=allow_empty_folders)


def latest_train_checkpoint_epoch(results: Path) -> int:
    """The epoch of the last checkpoint Ray Train registered for a multi-worker trial under
    ``results/experiments`` (-1: none yet)."""
    import json

    for snap in (Path(results) / "experiments").glob("**/workers/*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
        except (OSError, ValueError):
            continue
        if latest:
            return int(latest["metrics"]["epoch"])
    return -1
