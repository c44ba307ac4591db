"""Teachers and students are independent runs (issue "Numbers a reviewer can trust", §2).

A student (a run with teachers or a stage-1 model) takes its initial weights and its batch order
from seeds derived from (seed, role) with SHA-256; every other run keeps its plain seed, so CE and
the other plain runs keep their weights exactly.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

import bkdbench.training.packed as packed_module
import bkdbench.training.train as train_module
from bkdbench.methods import method_class
from bkdbench.models import create_model
from bkdbench.specs import make_spec
from bkdbench.training.train import build_model

CPU = torch.device("cpu")


def derived(seed: int, purpose: str) -> int:
    """The documented derivation, written out: SHA-256 of "bkdbench:student:<purpose>:<seed>",
    first 8 bytes big-endian, modulo 2**31."""
    digest = hashlib.sha256(f"bkdbench:student:{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def weights(spec) -> list[torch.Tensor]:
    model = build_model(spec, 10, 1, method_class(spec.method).head, CPU)
    return [p.detach().clone() for p in model.state_dict().values() if p.is_floating_point()]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("seed", [0, 3])
def test_student_seeds_are_derived_and_plain_runs_keep_theirs(seed):
    kd, bkd = make_spec("digits", 10, "kd", seed=seed), make_spec("digits", 10, "bkd", seed=seed)
    for plain in (kd.teacher, make_spec("digits", 10, "ce", seed=seed), make_spec("digits", 10, "focal", seed=seed),
                  make_spec("digits", 10, "balanced-softmax", seed=seed)):
        assert plain.role == "run" and plain.init_seed == plain.order_seed == seed
    for student in (kd, bkd):
        assert student.role == "student"
        assert student.init_seed == derived(seed, "init") != seed
        assert student.order_seed == derived(seed, "order") != seed
    # same role and seed: KD and BKD students share both seeds (paired comparisons, one packed trial)
    assert (kd.init_seed, kd.order_seed) == (bkd.init_seed, bkd.order_seed)
    assert kd.init_seed != kd.order_seed
    assert make_spec("digits", 10, "kd", seed=seed + 1).init_seed != kd.init_seed


def test_derivation_does_not_depend_on_pythons_hash():
    code = ("from bkdbench.specs import make_spec; s = make_spec('digits', 10, 'bkd', seed=2); "
            "print(s.init_seed, s.order_seed)")
    # another process with another string-hash seed than this one's: the same two seeds
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    spec = make_spec("digits", 10, "bkd", seed=2)
    assert out == f"{spec.init_seed} {spec.order_seed}" == f"{derived(2, 'init')} {derived(2, 'order')}"


def test_stage2_and_multi_teacher_runs_are_students():
    for method in ("crt", "lws", "ssd-lt", "cbd", "dive", "dkd"):
        spec = make_spec("digits", 10, method, seed=1, epochs=2)
        assert spec.role == "student" and spec.init_seed == derived(1, "init"), method
    cbd = make_spec("digits", 10, "cbd", seed=1)
    assert [t.init_seed for t in cbd.teachers] == [1, 1001, 1, 1001]  # CBD's teachers: plain runs, own seeds


def test_student_init_differs_from_teacher_and_same_spec_same_weights():
    student = make_spec("digits", 10, "bkd", seed=0)
    teacher = student.teacher
    assert student.model == teacher.model
    assert not same(weights(student), weights(teacher))  # today: identical (both torch.manual_seed(0))
    assert same(weights(student), weights(make_spec("digits", 10, "bkd", seed=0)))
    assert same(weights(student), weights(make_spec("digits", 10, "kd", seed=0)))  # one init per (role, seed)


def test_plain_runs_keep_todays_initial_weights():
    ce = make_spec("digits", 10, "ce", seed=4)
    torch.manual_seed(4)
    expected = create_model(ce.model, 10, 1, head=method_class("ce").head)
    assert same(weights(ce), [p for p in expected.state_dict().values() if p.is_floating_point()])


class _Stop(Exception):
    pass


def _spy(seen):
    def loader(*args, seed, **kwargs):
        seen.append(seed)
        raise _Stop
    return loader


def test_train_and_packed_seed_the_loader_with_the_order_seed(monkeypatch):
    student = make_spec("digits", 10, "bkd", seed=0, epochs=1)
    teacher_state = build_model(student.teacher, 10, 1, method_class("ce").head, CPU).state_dict()
    seen: list[int] = []
    monkeypatch.setattr(train_module, "DeviceLoader", _spy(seen))
    monkeypatch.setattr(packed_module, "DeviceLoader", _spy(seen))
    for spec, state in ((student.teacher, None), (student, teacher_state)):
        with pytest.raises(_Stop):
            train_module.train(spec, teacher_state=state, device="cpu")
    other = make_spec("digits", 10, "bkd", seed=0, epochs=1, params={"alpha": 0.5})
    with pytest.raises(_Stop):
        packed_module.train_packed([student, other], teacher_state=teacher_state, device="cpu")
    assert seen == [0, derived(0, "order"), derived(0, "order")]
