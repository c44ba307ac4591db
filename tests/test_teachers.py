"""Teacher cache: round trips, refusals, and train-once semantics."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from bkdbench.models import create_model
from helpers.files import tree
from bkdbench.specs import make_spec
from bkdbench.training.teachers import (
    TeacherError,
    check_teacher_fits,
    ensure_teacher,
    load_teacher,
    save_teacher,
    teacher_path,
)


@pytest.fixture
def spec():
    return make_spec("digits", 10, "ce", epochs=3)


@pytest.fixture
def weights():
    torch.manual_seed(0)
    return create_model("cnn-small", num_classes=10, in_channels=1).state_dict()


METRICS = {"top1": 91.5, "ece": 3.2, "per_class_acc": [90.0] * 10, "best_epoch": None}


def test_round_trip(tmp_path, spec, weights):
    assert load_teacher(tmp_path, spec) is None  # nothing cached yet
    path = save_teacher(tmp_path, spec, weights, METRICS)
    assert path == teacher_path(tmp_path, spec) and path.local == tmp_path / f"{spec.run_id}.pt"
    assert tree(tmp_path) == [path.name]  # no temp file beside it
    back = load_teacher(tmp_path, spec, num_classes=10)
    assert back.keys() == weights.keys()
    assert all(torch.equal(back[k], weights[k]) for k in weights)
    blob = torch.load(path, weights_only=True)  # a plain file anyone can load safely
    meta = json.loads(blob["meta"])
    assert meta["run_id"] == spec.run_id and meta["spec"]["method"] == "ce"
    assert meta["metrics"] == {"top1": 91.5, "ece": 3.2, "best_epoch": None}  # lists dropped
    # and the weights load into a fresh model
    create_model("cnn-small", num_classes=10, in_channels=1).load_state_dict(back)


def test_file_of_another_run_is_refused(tmp_path, spec, weights):
    other = make_spec("digits", 10, "ce", epochs=3, seed=1)
    src = save_teacher(tmp_path, spec, weights, METRICS)
    shutil.copy(src, teacher_path(tmp_path, other))
    with pytest.raises(TeacherError) as err:
        load_teacher(tmp_path, other)
    assert spec.run_id in str(err.value) and other.run_id in str(err.value)


@pytest.mark.parametrize("damage", ["random", "truncated", "unsafe"])
def test_corrupt_file_is_refused(tmp_path, spec, weights, damage):
    path = save_teacher(tmp_path, spec, weights, METRICS)
    if damage == "random":
        path.write_bytes(bytes(range(256)) * 20)
    elif damage == "truncated":
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    else:  # a pickle that needs arbitrary code to load: weights_only must refuse it
        torch.save({"state_dict": weights, "meta": SimpleNamespace(run_id=spec.run_id)}, path)
    with pytest.raises(TeacherError, match=f"{path}.*delete it to retrain"):
        load_teacher(tmp_path, spec)


def test_class_count_mismatch_is_refused(tmp_path, spec, weights):
    save_teacher(tmp_path, spec, weights, METRICS)
    with pytest.raises(TeacherError, match="predicts 10 classes; the student has 100"):
        load_teacher(tmp_path, spec, num_classes=100)


def test_check_teacher_fits():
    student = make_spec("digits", 10, "bkd", epochs=3)
    check_teacher_fits(student, student.teacher)  # its own default teacher fits
    for change, key in ((dict(dataset="fashion-mnist"), "dataset"), (dict(imbalance_factor=50), "imbalance_factor"),
                        (dict(data_seed=1), "data_seed"), (dict(profile="step"), "profile"),
                        (dict(split="reference"), "split")):  # it trained on the student's validation images
        kw = {"dataset": "digits", "imbalance_factor": 10, "epochs": 3, **change}
        wrong = make_spec(kw.pop("dataset"), kw.pop("imbalance_factor"), "ce", **kw)
        with pytest.raises(TeacherError, match=key) as err:
            check_teacher_fits(student, wrong)
        assert wrong.run_id in str(err.value)
    # a different seed or model does not change the long-tailed set: allowed
    check_teacher_fits(student, make_spec("digits", 10, "ce", epochs=3, seed=5))


def test_ensure_teacher_trains_once(tmp_path, spec, weights):
    calls = []

    def train_fn(s):
        calls.append(s.run_id)
        return SimpleNamespace(state_dict=weights, metrics=METRICS)

    first, trained_now = ensure_teacher(tmp_path, spec, train_fn)
    assert trained_now is True and calls == [spec.run_id]
    assert teacher_path(tmp_path, spec).local.is_file()
    second, trained_now = ensure_teacher(tmp_path, spec, train_fn)
    assert trained_now is False and calls == [spec.run_id]  # not called again
    assert all(torch.equal(first[k], second[k]) for k in weights)


@pytest.mark.usefixtures("one_thread")  # tiny CPU runs
def test_distilled_student_trains_from_an_ensured_teacher(tmp_path):
    from bkdbench.training.train import train

    student = make_spec("digits", 10, "kd", epochs=2)
    teacher_state, trained_now = ensure_teacher(tmp_path, student.teacher, lambda s: train(s, device="cpu"))
    assert trained_now
    result = train(student, device="cpu", teacher_state=teacher_state)
    assert len(result.history) == 2 and 0 <= result.metrics["top1"] <= 100
    assert ensure_teacher(tmp_path, student.teacher, lambda s: pytest.fail("retrained"))[1] is False


@pytest.mark.parametrize("method", ["ce", "ldam", "ce-cosine20", "lws"])
def test_class_count_is_read_from_every_kind_of_classifier(tmp_path, method):
    """A linear classifier's weight is (classes, features), a cosine one's (features, classes); LWS
    and the fixed-scale cosine head keep theirs under another key. Each is counted right: weights of
    10 classes are refused for a student of 7 (cnn-small has 64 features: no shape is ambiguous)."""
    from bkdbench.methods import method_class

    spec = make_spec("digits", 10, method, epochs=3)
    model = create_model("cnn-small", num_classes=10, in_channels=1, head=method_class(method).head)
    method_class(method).restructure(model)
    state = model.state_dict()
    save_teacher(tmp_path, spec, state, METRICS)
    assert load_teacher(tmp_path, spec, num_classes=10) is not None
    with pytest.raises(TeacherError, match="predicts 10 classes; the student has 7"):
        load_teacher(tmp_path, spec, num_classes=7)
