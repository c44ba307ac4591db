"""benchmarks/gpu_check.py runs where a bare GPU machine would run it: Ray, Optuna and the other
packages such a machine lacks cannot be imported (a sys.meta_path finder refuses them), and pydantic
and its dependencies cannot be imported from this environment either: only from a folder holding the
carried copies benchmarks/README.md names (the same pinned versions, copied from the installed ones, as
``pip install --target`` of the carried wheels would lay them out). Quick, on the CPU: the script runs
to its JSON; the figures mean nothing here."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "optuna", "typer", "rich", "mlflow", "wandb", "jinja2", "tensorboard")
# What benchmarks/README.md says to carry: the import name and the distribution of each.
CARRIED = {"pydantic": "pydantic", "pydantic_core": "pydantic_core", "annotated_types": "annotated-types",
           "typing_inspection": "typing-inspection", "typing_extensions": "typing_extensions"}

RUNNER = """
import importlib.machinery, runpy, sys
BLOCKED, CARRIED, FOLDER = {blocked!r}, {carried!r}, {folder!r}

class Refuse:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on a bare GPU machine)", name=name)
        if top in CARRIED and name == top:  # submodules follow their package's __path__, in FOLDER
            spec = importlib.machinery.PathFinder.find_spec(name, [FOLDER]) if FOLDER else None
            if spec is None:
                raise ModuleNotFoundError(f"No module named {{name!r}} (not carried)", name=name)
            return spec
        return None

sys.meta_path.insert(0, Refuse())
sys.argv = ["gpu_check.py", *{args!r}]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
loaded = sorted(m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] in CARRIED and getattr(m, "__file__", None))
if any(not f.startswith(FOLDER) for f in loaded):
    sys.exit(f"imported from this environment, not the carried folder: {{loaded}}")
sys.exit(code)
"""


def _carry(folder: Path) -> str:
    """The carried packages, copied from this environment's installed ones into ``folder``."""
    folder.mkdir()
    for name in CARRIED:
        origin = Path(importlib.util.find_spec(name).origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, folder / name)
        else:
            shutil.copy2(origin, folder / origin.name)
    return str(folder)


def _run(args: list[str], tmp_path: Path, carried: str = "") -> subprocess.CompletedProcess:
    code = RUNNER.format(blocked=BLOCKED, carried=tuple(CARRIED), folder=carried, args=args,
                         script=str(REPO / "benchmarks" / "gpu_check.py"))
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
                               "BKDBENCH_CACHE": str(tmp_path / "cache")})


def test_the_finder_refuses_what_a_bare_machine_lacks(tmp_path):
    for module, message in (("ray", "not on a bare GPU machine"), ("pydantic", "not carried")):
        code = RUNNER.format(blocked=BLOCKED, carried=tuple(CARRIED), folder="", args=[], script="/dev/null")
        code = code.replace("runpy.run_path", f"import {module}; runpy.run_path")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and f"No module named '{module}' ({message})" in out.stderr, out.stderr[-2000:]


def test_the_carried_versions_are_the_ones_the_readme_names():
    """The README's `pip download` line pins what this environment has, so the copies the slow test
    carries are the wheels a user would carry."""
    readme = (REPO / "benchmarks" / "README.md").read_text()
    pins = dict(re.findall(r"([A-Za-z_-]+)==([0-9.]+)", readme.split("pip download", 1)[1].split("```", 1)[0]))
    assert set(pins) == set(CARRIED.values()), pins
    for dist, version in pins.items():
        assert importlib.metadata.version(dist) == version, dist


@pytest.mark.slow
def test_gpu_check_runs_without_ray_optuna_or_an_installed_pydantic(tmp_path):
    out_file = tmp_path / "gpu-check.json"
    done = _run(["--device", "cpu", "--quick", "--no-compile", "--out", str(out_file)], tmp_path,
                carried=_carry(tmp_path / "carried"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out_file.read_text())
    assert result["kind"] == "gpu_check" and result["forbidden_modules_imported"] == []
    assert {"reference", "bkdbench", "bkd_teacher", "packed", "packed_grouped"} <= set(result["pipelines"])
    assert result["resnet50_224"]["eval_precision"] == "float32"
    student = result["bkd_student_train"]
    assert student["student"]["device"] == "cpu" and student["teacher"]["wall_seconds"] > 0
    assert student["projection_200_epochs"]["seconds"] == pytest.approx(200 * student["student"]["wall_seconds"])
    tests = result["cuda_tests"]
    assert tests["exit_status"] == 0 and tests["counts"].get("skipped") == 13, tests  # no GPU here: all skipped
