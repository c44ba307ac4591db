"""``bkdbench bench`` and ``benchmarks/gpu_check.py`` run end to end at tiny sizes and write their JSON.

Structure and positivity only: timings on a shared 2-core machine are no test material."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bkdbench.bench import config_for, synthetic_cifar
from bkdbench.bench.measure import ratio as per_round_ratio
from bkdbench.cli import app

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("reference", "bkdbench", "bkdbench_bf16", "bkd_teacher", "packed")


def check_figures(result: dict, pipelines=PIPELINES) -> None:
    assert result["device"] == "cpu" and result["device_type"] == "cpu"
    assert result["torch_version"] and result["torchvision_version"]
    assert result["machine"]["logical_cpus"] >= 1 and result["machine"]["cpu_model"] is not None
    assert set(pipelines) <= set(result["pipelines"])
    for name in pipelines:
        p = result["pipelines"][name]
        lo, hi = p["images_per_second_range"]
        assert 0 < lo <= p["images_per_second"] <= hi, name
        assert all(v > 0 for v in p["windows"]) and len(p["windows"]) >= 1, name
        assert p["seconds_per_epoch"] == pytest.approx(result["config"]["images"] / p["images_per_second"])
        assert p["peak_memory_mb"] > 0, name
        assert p["images_per_cpu_second"] > 0, name
        assert p["description"], name
    ratio = result["ratio"]
    assert ratio > 0 and math.isfinite(ratio)
    assert result["ratio_range"][0] <= ratio <= result["ratio_range"][1]
    assert result["ratio_cpu"]["median"] > 0 and len(result["ratio_cpu"]["per_round"]) == result["config"]["rounds"]
    assert result["packed_vs_separate"]["median"] > 0
    assert result["pipelines"]["packed"]["students"] == result["config"]["pack"]
    assert result["bkd_200_epochs_estimate"]["seconds"] > 0 and result["eval_seconds_c100"] > 0


def test_bench_quick_writes_a_json_with_every_figure(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--quick", "--device", "cpu", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = list((tmp_path / "bench").glob("bench-cpu-*.json"))
    assert len(files) == 1 and str(files[0].name) in result.output.replace("\n", "")
    data = json.loads(files[0].read_text())
    check_figures(data)
    assert data["config"]["preset"] == "quick" and data["pipelines"]["packed"]["strategy"] == "loop"
    assert data["pipelines"]["reference"]["num_workers"] == 2
    assert "bkdbench / reference" in result.output


def test_gpu_check_runs_on_cpu_with_only_core_imports(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--no-train", "--no-tests",  # those two: tests/test_gpu_check.py
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    check_figures(data, PIPELINES + ("packed_grouped",))
    assert data["kind"] == "gpu_check" and data["forbidden_modules_imported"] == []
    assert data["pipelines"]["packed_grouped"]["strategy"] == "grouped"
    assert data["packed_grouped_vs_separate"]["median"] > 0
    big = data["resnet50_224"]  # --quick: a ResNet-10 at 32 px stands in for the ResNet-50 at 224
    assert big["train_images_per_second"] > 0 and big["eval_images_per_second"] > 0
    projected = big["projection"]
    assert projected["hours"] == pytest.approx(projected["train_hours"] + projected["eval_hours"])
    assert projected["train_hours"] == pytest.approx(90 * 115_846 / big["train_images_per_second"] / 3600)
    assert projected["eval_hours"] == pytest.approx(90 * 70_000 / big["eval_images_per_second"] / 3600)
    assert "bkdbench / reference" in proc.stdout


def test_bench_refuses_bad_options(tmp_path):
    runner = CliRunner()
    both = runner.invoke(app, ["bench", "--quick", "--full", "--results", str(tmp_path)])
    assert both.exit_code == 2 and "exclude" in both.output
    strategy = runner.invoke(app, ["bench", "--quick", "--strategy", "vmap", "--results", str(tmp_path)])
    assert strategy.exit_code == 2 and "loop" in strategy.output
    blocked = tmp_path / "file"
    blocked.write_text("")
    unwritable = runner.invoke(app, ["bench", "--quick", "--results", str(blocked)])
    assert unwritable.exit_code == 2 and "--results" in unwritable.output


def test_ratio_is_the_median_of_per_round_ratios():
    r = per_round_ratio([2.0, 3.0, 10.0], [1.0, 2.0, 2.0])
    assert r["per_round"] == [2.0, 1.5, 5.0] and r["median"] == 2.0 and r["range"] == [1.5, 5.0]
    assert r["of_medians"] == 1.5


def test_synthetic_data_has_the_cifar100_lt_if100_shape():
    config = config_for("default")
    images, labels = synthetic_cifar(config)
    assert images.shape == (10847, 32, 32, 3) and images.dtype.name == "uint8"
    counts = [int((labels == c).sum()) for c in range(100)]
    assert counts[0] == 500 and counts[-1] == 5 and sum(counts) == 10847


def test_imagenet_bench_quick_measures_decoding_and_four_pipelines_per_size(tmp_path, monkeypatch):
    from bkdbench.bench.imagenet import PRESETS, run_large_bench

    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "own-cache"))
    config = PRESETS["quick"]
    result = run_large_bench(config, device="cpu", work_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # files and store removed; the cache setting restored
    import os

    assert os.environ["BKDBENCH_CACHE"] == str(tmp_path / "own-cache")
    assert result["dataset"] == "imagenet-lt-synthetic" and result["files"]["count"] == config.images
    assert list(result["sizes"]) == [str(s) for s in config.sizes]
    for size, part in result["sizes"].items():
        assert part["store_size"] == round(int(size) / 0.875)
        assert part["decode"]["images"] == config.images + 2 * config.classes  # train + one val, one test per class
        assert part["decode"]["images_per_second"] > 0
        assert set(part["pipelines"]) == {"reference", "bkdbench", "reference+resnet10", "bkdbench+resnet10"}
        for name, p in part["pipelines"].items():
            assert len(p["windows"]) == config.rounds and all(v > 0 for v in p["windows"]), name
            assert p["seconds_per_epoch"] == pytest.approx(115_846 / p["images_per_second"])
        for key in ("pipeline_ratio", "step_ratio"):
            assert part[key]["median"] > 0 and len(part[key]["per_round"]) == config.rounds
    assert "PIL" in result["sizes"]["32"]["pipelines"]["reference"]["description"]


def test_imagenet_bench_cli_writes_its_json_and_refuses_cifar_only_options(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "--dataset", "imagenet-lt-synthetic", "--pack", "2", "--results", str(tmp_path)])
    assert bad.exit_code == 2 and "--pack: only for --dataset cifar100-lt-synthetic" in bad.output
    unknown = runner.invoke(app, ["bench", "--dataset", "imagenet", "--results", str(tmp_path)])
    assert unknown.exit_code == 2 and "imagenet-lt-synthetic" in unknown.output
    assert not (tmp_path / "bench").exists()
    ok = runner.invoke(app, ["bench", "--dataset", "imagenet-lt-synthetic", "--quick", "--device", "cpu",
                             "--results", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    files = list((tmp_path / "bench").glob("bench-imagenet-lt-cpu-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["config"]["preset"] == "quick"
    assert "pipeline alone" in ok.output
