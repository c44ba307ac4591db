"""benchmarks/gpu_check.py runs where a bare GPU machine would run it: Ray, Optuna and the other
packages such a machine lacks cannot be imported (a sys.meta_path finder refuses them), and pydantic
is there because its wheels are carried (benchmarks/README.md). Quick, on the CPU: the script runs to
its JSON; the figures mean nothing here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "optuna", "typer", "rich", "mlflow", "wandb", "jinja2", "tensorboard")

RUNNER = """
import runpy, sys
BLOCKED = {blocked!r}

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on a bare GPU machine)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
sys.argv = ["gpu_check.py", *{args!r}]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    sys.exit(exc.code)
"""


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    code = RUNNER.format(blocked=BLOCKED, args=args, script=str(REPO / "benchmarks" / "gpu_check.py"))
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
                               "BKDBENCH_CACHE": str(tmp_path / "cache")})


def test_the_finder_refuses_what_a_bare_machine_lacks(tmp_path):
    code = RUNNER.format(blocked=BLOCKED, args=[], script="/dev/null").replace("runpy.run_path", "import ray; runpy.run_path")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "No module named 'ray' (not on a bare GPU machine)" in out.stderr


@pytest.mark.slow
def test_gpu_check_runs_without_ray_optuna_typer_rich(tmp_path):
    out_file = tmp_path / "gpu-check.json"
    done = _run(["--device", "cpu", "--quick", "--no-compile", "--out", str(out_file)], tmp_path)
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
