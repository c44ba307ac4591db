"""Evaluation runs in float32 even when training runs under bf16 autocast (tied bf16 logits resolve
to class 0, the head class), and a teacher must come from the student's own data (image folder too)."""
from __future__ import annotations

import pytest
import torch

from bkdbench.specs import make_spec
from bkdbench.training.teachers import TeacherError, check_teacher_fits


def _record_predict(monkeypatch, module):
    seen = []
    real = module.predict

    def spy(model, images, prepare, batch_size=1000, autocast=None):
        seen.append(autocast)
        return real(model, images, prepare, batch_size=batch_size, autocast=autocast)

    monkeypatch.setattr(module, "predict", spy)
    return seen


@pytest.mark.usefixtures("one_thread")
def test_train_under_bf16_evaluates_in_float32(monkeypatch):
    import bkdbench.training.train as train_mod

    seen = _record_predict(monkeypatch, train_mod)
    train_mod.train(make_spec("digits", 10, "ce", epochs=1), device="cpu", bf16=True)
    assert seen and all(a is None for a in seen), seen


@pytest.mark.usefixtures("one_thread")
def test_packed_training_under_bf16_evaluates_in_float32(monkeypatch):
    import bkdbench.training.packed as packed_mod
    from bkdbench.training.train import train

    seen = _record_predict(monkeypatch, packed_mod)
    specs = [make_spec("digits", 10, "kd", epochs=1, params={"alpha": a}) for a in (0.5, 1.0)]
    teacher = train(specs[0].teacher, device="cpu").state_dict
    packed_mod.train_packed(specs, teacher_state=teacher, device="cpu", bf16=True, strategy="loop")
    assert seen and all(a is None for a in seen), seen


def test_a_teacher_from_another_image_folder_is_refused():
    student = make_spec("digits", 10, "kd")
    other = student.teacher.model_copy(update={"data_key": "0123456789abcdef"})
    with pytest.raises(TeacherError, match="data_key"):
        check_teacher_fits(student, other)
    check_teacher_fits(student, student.teacher)  # its own teacher fits
