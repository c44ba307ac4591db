"""Foundation runs end to end on clip-tiny / vit-tiny (random weights, real open_clip and timm code):
weights files through the users' loader, run identity, the four methods, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("timm")

from bkdbench.cli import main  # noqa: E402
from bkdbench.models import create_model  # noqa: E402
from bkdbench.models.foundation import FOUNDATIONS, WeightsError, build_library_model, resolve_weights  # noqa: E402
from bkdbench.paths import WEIGHTS_ENV  # noqa: E402
from bkdbench.specs import make_spec  # noqa: E402
from helpers.files import assert_refused  # noqa: E402


def test_existing_run_ids_are_unchanged():
    # pinned from main before foundation models existed: the weights field stays out of their JSON
    assert make_spec("digits", 10, "ce").run_id == "8b09286de5027e17"
    assert make_spec("digits", 10, "bkd").run_id == "cfb9d7edd39e494a"
    assert make_spec("cifar100", 100, "ce", model="resnet32").run_id == "3fc858b9736f1fe5"


def test_weights_and_teachers_are_part_of_the_run_id():
    a = make_spec("digits", 10, "lift", model="clip-tiny", weights="none")
    assert a.weights == "none" and a.recipe == "lift" and a.epochs == 10
    b = make_spec("digits", 10, "lift", model="vit-tiny", weights="none")
    assert a.run_id != b.run_id
    s1 = make_spec("digits", 10, "bkd", teacher=a)
    s2 = make_spec("digits", 10, "bkd", teacher=make_spec("digits", 10, "full-ft", model="clip-tiny", weights="none"))
    s0 = make_spec("digits", 10, "bkd")
    assert len({s0.run_id, s1.run_id, s2.run_id}) == 3


@pytest.mark.parametrize("name", ["clip-tiny", "vit-tiny"])
def test_weights_file_round_trip_gives_identical_predictions(name, tmp_path, monkeypatch):
    entry = FOUNDATIONS[name]
    torch.manual_seed(3)
    net, _ = build_library_model(entry, "none")
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)  # what a user has: the library model's own state dict
    key = resolve_weights(name, str(path))
    assert key.startswith("file:") and len(key) == 21
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    torch.manual_seed(3)
    direct = create_model(name, 4, 3, weights="none").eval()  # the same library init, then the same head init
    torch.manual_seed(3)
    loaded = create_model(name, 4, 3, weights=key).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(direct(x), loaded(x))
    torch.manual_seed(4)
    other = create_model(name, 4, 3, weights="none").eval()
    with torch.no_grad():
        assert not torch.equal(other(x), loaded(x))  # the file's weights, not a fresh draw
    bad = tmp_path / "bad.pt"
    torch.save({k: v for k, v in list(net.state_dict().items())[1:]}, bad)
    monkeypatch.setenv(WEIGHTS_ENV, str(bad))
    with pytest.raises(WeightsError, match="does not fit"):
        create_model(name, 4, 3, weights=resolve_weights(name, str(bad)))


@pytest.mark.slow
def test_the_four_methods_train_on_digits():
    from bkdbench.training.train import train

    for method in ("zero-shot", "linear-probe", "full-ft", "lift"):
        spec = make_spec("digits", 10, method, model="clip-tiny", weights="none", epochs=1)
        result = train(spec, device="cpu")
        assert 0 <= result.metrics["top1"] <= 100 and len(result.metrics["per_class_acc"]) == 10
        assert len(result.history) == (0 if method == "zero-shot" else 1)
        if method == "zero-shot":
            assert result.extra == {"prompt": "a photo of a {}."}
        row = result.to_row()
        assert row["weights"] == "none" and row["seen_in1k"] is False


def test_foundation_modules_import_no_library():
    code = ("import sys, bkdbench.models, bkdbench.methods, bkdbench.specs;"
            "print(any(m in sys.modules for m in ('open_clip', 'timm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


BAD = [
    (["--model", "clip-tiny", "--weights", "pretrained", "--method", "lift"], ["no pretrained weights"]),
    (["--model", "clip-tiny", "--weights", "laion", "--method", "lift"], ["pretrained, none or an existing"]),
    (["--method", "lift"], ["needs a foundation model"]),
    (["--model", "resnet32", "--weights", "none"], ["--weights is for the foundation models"]),
    (["--method", "bkd", "--teacher", "clip-tiny"], ["MODEL:METHOD"]),
    (["--method", "bkd", "--teacher", "clip-tiny:zero-shot", "--weights", "none"], ["trains no classifier"]),
    (["--method", "bkd", "--teacher", "nope:lift"], ["unknown model"]),
    (["--method", "ce", "--teacher", "clip-tiny:lift", "--weights", "none"], ["distillation students"]),
    (["--model", "clip-tiny", "--weights", "none", "--method", "zero-shot", "--classnames", "NAMES3"], ["3 names for 10 classes"]),
    (["--model", "clip-vit-b16", "--method", "lift"], ["not in the local cache"]),
    (["--model", "clip-tiny", "--weights", "none", "--method", "lift", "--pretrained", "NAMES3"], ["--weights FILE"]),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_foundation_input_is_one_line_exit_2_and_writes_nothing(args, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BKDBENCH_RESULTS", raising=False)
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache on a machine that reaches no hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    args = [str(tmp_path / "names.txt") if a == "NAMES3" else a for a in args]
    assert_refused(main, ["train", "--dataset", "digits", "--epochs", "1", *args], words, tmp_path, capsys)


@pytest.mark.slow
def test_bkd_student_of_a_lift_teacher(tmp_path):
    """The done-when: a BKD student with --teacher clip-tiny:lift trains and its row names its teacher."""
    from helpers.cli import run_cli

    out = run_cli(["train", "--dataset", "digits", "--imbalance", "10", "--method", "bkd", "--teacher", "clip-tiny:lift",
                   "--weights", "none", "--epochs", "1", "--results", tmp_path / "results"], folder=tmp_path)
    assert out.returncode == 0, out.stderr
    import pandas as pd

    rows = pd.concat([pd.read_parquet(p) for p in (tmp_path / "results" / "leaderboard").glob("*.parquet")])
    student = rows[rows.method == "bkd"].iloc[0]
    teacher = rows[rows.method == "lift"].iloc[0]
    assert student.teacher == "clip-tiny:lift" and student.teacher_run_id == teacher.run_id
    assert teacher.weights == "none" and not teacher.seen_in1k and student.model == "cnn-small"
    assert json.loads(teacher.recipe)["name"] == "lift"


@pytest.mark.slow
def test_packed_students_of_a_foundation_teacher_match_separate_runs():
    """``run`` packs KD/BKD students of one teacher: the foundation teacher sees the same input there."""
    from bkdbench.training.packed import train_packed
    from bkdbench.training.train import train

    teacher = make_spec("digits", 10, "lift", model="clip-tiny", weights="none", epochs=1)
    state = train(teacher, device="cpu").state_dict
    students = [make_spec("digits", 10, m, teacher=teacher, epochs=1) for m in ("kd", "bkd")]
    packed = train_packed(students, teacher_state=state, device="cpu", strategy="loop")
    alone = train(students[1], teacher_state=state, device="cpu")
    assert packed[1].metrics["top1"] == pytest.approx(alone.metrics["top1"], abs=0.5)
    assert packed[1].history[0]["train_loss"] == pytest.approx(alone.history[0]["train_loss"], rel=1e-4)
