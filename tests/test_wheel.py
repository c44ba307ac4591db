"""A built wheel is a complete bkdbench: its search spaces (the repository's top-level
search_spaces/) and suites travel inside it, and a 2-trial sweep runs from it, away from the checkout."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers.cli import cli_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The wheel built from this checkout, unpacked into a folder of its own (``pip install --target``,
    no dependencies: they come from this interpreter's environment)."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((out / "dist").glob("bkdbench-*.whl"))
    target = out / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    return wheel, target


def test_the_wheel_carries_every_search_space_and_suite(installed_wheel):
    wheel, _ = installed_wheel
    names = zipfile.ZipFile(wheel).namelist()
    spaces = sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml"))
    suites = sorted(p.name for p in (ROOT / "bkdbench" / "suites").glob("*.yaml"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("bkdbench/search_spaces/")) == spaces
    assert sorted(n.split("/")[-1] for n in names if n.startswith("bkdbench/suites/")) == suites
    assert not any(n.startswith(("tests/", "search_spaces/")) for n in names)
    assert "bkdbench/leaderboard/templates/report.html.j2" in names
    published = sorted(p.name for p in (ROOT / "bkdbench" / "leaderboard" / "published").glob("*.yaml"))
    assert published and sorted(n.split("/")[-1] for n in names
                                if n.startswith("bkdbench/leaderboard/published/")) == published


def test_a_sweep_runs_from_the_installed_wheel(installed_wheel, tmp_path):
    _, target = installed_wheel
    env = cli_env(PYTHONPATH=target, BKDBENCH_CACHE=tmp_path / "cache")
    ray_tmp = env["RAY_TMPDIR"]

    def bkdbench(*args, timeout=400):
        return subprocess.run([sys.executable, "-m", "bkdbench", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)

    try:
        where = subprocess.run([sys.executable, "-c", "import bkdbench; print(bkdbench.__file__)"], cwd=tmp_path, env=env,
                               capture_output=True, text=True)
        assert Path(where.stdout.strip()).is_relative_to(target), where.stdout + where.stderr  # not the checkout
        helptext = bkdbench("sweep", "bkd", "--help", timeout=60)
        assert helptext.returncode == 0 and "--trials" in helptext.stdout, helptext.stderr
        sweep = bkdbench("sweep", "bkd", "--dataset", "digits", "--imbalance", "10", "--trials", "2", "--epochs", "1",
                         "--final-seeds", "1", "--scheduler", "none", "--results", str(tmp_path / "results"))
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
        assert len(list((tmp_path / "results" / "sweeps").iterdir())) == 1
        assert list((tmp_path / "results" / "leaderboard").glob("*.parquet"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
