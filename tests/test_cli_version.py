"""`bkdbench --version`: bkdbench's version and commit and the installed torch and Ray, in a
process that imports neither."""
from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import bkdbench

CHECK = """
import sys
from bkdbench.cli import app
try:
    app(["--version"], standalone_mode=False)
except SystemExit:
    pass
print("imported:", "torch" in sys.modules, "ray" in sys.modules)
"""


def test_version_names_bkdbench_its_commit_torch_and_ray_without_importing_them():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"bkdbench {bkdbench.__version__} (commit ")
    assert f"torch {version('torch')}" in lines[1] and f"ray {version('ray')}" in lines[1]
    assert lines[-1] == "imported: False False"
