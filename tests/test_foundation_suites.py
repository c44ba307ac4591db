"""The two foundation suites validate and plan (no GPU, no data, no weights needed)."""
from __future__ import annotations

import pytest

from bkdbench.specs.suites import SuiteError, load_suite
from helpers.files import write_suite


def test_cifar100_foundation_suite_plans(tmp_path):
    pytest.importorskip("open_clip")
    from bkdbench.orchestrate.runner import plan_runs

    suite = load_suite("cifar100-lt-foundation")
    assert suite.runs_on == "gpu" and suite.size() == 8
    specs = suite.expand()
    by = {(s.method, s.teacher.method if s.teacher else None): s for s in specs}
    lift = by[("lift", None)]
    assert (lift.model, lift.weights, lift.recipe, lift.epochs) == ("clip-vit-b16", "openai", "lift", 10)
    assert by[("zero-shot", None)].epochs == 1
    for student in ("bkd", "kd", "dive"):
        s = by[(student, "lift")]
        # DiVE steps at 120/160 of 200, as BagofTricks-LT's config does (docs/published.md)
        recipe = "reference/milestones=0.6,0.8" if student == "dive" else "reference"
        assert s.model == "resnet32" and s.recipe == recipe and s.teacher.run_id == lift.run_id
    ce_student = by[("bkd", "ce")]
    assert ce_student.teacher.model == "resnet32" and ce_student.run_id != by[("bkd", "lift")].run_id
    plan = plan_runs(specs, tmp_path / "results", force=False)
    assert len(plan.specs) == 8 and plan.todo == 9 and len(plan.stages) == 2  # + the CE teacher; teachers first
    assert not (tmp_path / "results").exists()


def test_imagenet_foundation_suite_validates():
    suite = load_suite("imagenet-lt-foundation")
    assert suite.runs_on == "gpu" and suite.size() == 8
    assert {e.model for e in suite.method_entries() if e.teacher is None} == {"clip-vit-b16", None}


@pytest.mark.parametrize("teacher,words", [
    ({"model": "clip-tiny", "method": "zero-shot"}, "trains no classifier"),
    ({"model": "nope", "method": "lift"}, "nope"),
])
def test_bad_teacher_in_a_suite(tmp_path, teacher, words):
    path = write_suite(tmp_path / "s.yaml", datasets=["digits"], imbalance=[10], seeds=1,
                       methods=[{"method": "bkd", "teacher": teacher}])
    with pytest.raises(SuiteError, match=words):
        load_suite(str(path))


def test_rows_with_in1k_weights_are_marked_and_teachers_named():
    import pandas as pd

    from bkdbench.leaderboard.aggregate import SEEN_IN1K, with_labels

    rows = pd.DataFrame([
        dict(method="lift", params="{}", dataset="imagenet-lt", imbalance_factor=256.0, model="vit-b16-in21k-ft-in1k",
             weights="augreg_in21k_ft_in1k", seen_in1k=True, teacher=None),
        dict(method="lift", params="{}", dataset="imagenet-lt", imbalance_factor=256.0, model="clip-vit-b16",
             weights="openai", seen_in1k=False, teacher=None),
        dict(method="bkd", params="{}", dataset="imagenet-lt", imbalance_factor=256.0, model="resnext50_32x4d",
             weights=None, seen_in1k=None, teacher=None),
        dict(method="bkd", params="{}", dataset="imagenet-lt", imbalance_factor=256.0, model="resnext50_32x4d",
             weights=None, seen_in1k=False, teacher="clip-vit-b16:lift"),
    ])
    labels = list(with_labels(rows)["label"])
    assert labels[0].endswith(SEEN_IN1K) and not labels[1].endswith(SEEN_IN1K)
    assert labels[0] != labels[1] and "teacher=clip-vit-b16:lift" in labels[3] and labels[2] == "bkd"


def test_ablation_students_of_a_foundation_teacher():
    from bkdbench.orchestrate.ablate import ablation_id, ablation_specs

    settings = [{"alpha": 0.5}, {"alpha": 0.9}]
    own = ablation_specs("bkd", settings, ["digits"], [10], 1, epochs=1)
    lifted = ablation_specs("bkd", settings, ["digits"], [10], 1, epochs=1, teacher=("clip-tiny", "lift"), weights="none")
    assert all(s.teacher.model == "clip-tiny" and s.teacher.method == "lift" and s.teacher.weights == "none" for s in lifted)
    assert all(s.teacher.method == "ce" for s in own)
    assert len({s.teacher.run_id for s in lifted}) == 1 and ablation_id("bkd", own) != ablation_id("bkd", lifted)


@pytest.mark.parametrize("args,words", [
    (["ablate", "focal", "--grid", "gamma=1", "--teacher", "clip-tiny:lift", "--weights", "none"], "distillation students"),
    (["ablate", "bkd", "--grid", "alpha=0.5", "--teacher", "clip-tiny"], "MODEL:METHOD"),
])
def test_bad_ablation_teacher(args, words, tmp_path, monkeypatch, capsys):
    from bkdbench.cli import main
    from helpers.files import assert_nothing_written, snapshot

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BKDBENCH_RESULTS", raising=False)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--epochs", "1", "--seeds", "1", "--imbalance", "10"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and words in err and len([x for x in err.splitlines() if x.strip()]) == 1, err
    assert_nothing_written(before, tmp_path)
