"""Read-only commands start instantly: `--help`, `leaderboard`, `compare`, `suites` and `data list` import
neither torch nor Ray (each takes seconds to import). Checked in a fresh interpreter that runs the
command in process and then reads ``sys.modules``; not a timing test."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.report_rows import write_suite_rows

CHECK = """
import json, sys
from bkdbench.cli import app
try:
    app(json.loads(sys.argv[1]), standalone_mode=False)
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "ray": "ray" in sys.modules}))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("readonly") / "results"
    write_suite_rows(root)
    return root


@pytest.mark.parametrize("args", [
    ["--help"], ["suites"], ["data", "list"], ["leaderboard"], ["compare", "bkd", "ce"],
    ["leaderboard", "--help"], ["run", "--help"], ["sweep", "--help"], ["train", "--help"],
])
def test_read_only_commands_import_neither_torch_nor_ray(args, results):
    argv = [*args, "--results", str(results)] if args[0] in ("leaderboard", "compare") and "--help" not in args else args
    out = subprocess.run([sys.executable, "-c", CHECK, json.dumps(argv)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["code"] in (0, None), out.stdout
    assert (state["torch"], state["ray"]) == (False, False), f"bkdbench {' '.join(argv)} imported torch/ray"
