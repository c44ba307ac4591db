"""Packed training: K students in one process end where K separate ``train`` runs end.

Separate runs are the reference: each ``train(spec_k)`` builds its model from the same seed, draws
the same batches and augmentation (the loader is seeded by the spec's seed) and runs its own teacher
forward. A pack must give every student the same final weights, BatchNorm statistics, per-epoch
losses and test metrics, up to float rounding (exactly, for the ``loop`` strategy on CPU)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from bkdbench.models import create_model
from bkdbench.models.packing import GroupedPack, pack_models
from bkdbench.training.packed import PackedTrainingDiverged, check_packable, train_packed
from bkdbench.specs import make_spec
from bkdbench.training.train import TrainingDiverged, train

EPOCHS = 2


pytestmark = pytest.mark.usefixtures("one_thread_for_module")  # conftest: tiny CPU models, one thread


def students(method: str, grid: list[dict], model: str | None = None):
    return [make_spec("digits", 10, method, epochs=EPOCHS, model=model, params=p) for p in grid]


@pytest.fixture(scope="module")
def kd_pack():
    specs = students("kd", [{"alpha": 0.5, "temperature": 1.0}, {"alpha": 1.0, "temperature": 2.0},
                            {"alpha": 2.0, "temperature": 4.0}])
    teacher = train(specs[0].teacher, device="cpu").state_dict
    separate = [train(s, device="cpu", teacher_state=teacher) for s in specs]
    return specs, teacher, separate


def assert_same_run(packed, separate, rtol, atol):
    assert packed.spec == separate.spec
    assert packed.state_dict.keys() == separate.state_dict.keys()
    for key, want in separate.state_dict.items():
        got = packed.state_dict[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        assert torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol), \
            f"{key}: max diff {(got.float() - want.float()).abs().max():.3g}"
    np.testing.assert_allclose([h["train_loss"] for h in packed.history],
                               [h["train_loss"] for h in separate.history], rtol=rtol * 10, atol=atol)
    assert [h["epoch"] for h in packed.history] == [h["epoch"] for h in separate.history]
    assert [h["lr"] for h in packed.history] == [h["lr"] for h in separate.history]
    for key in ("top1", "many", "medium", "few", "val_top1", "top1_best_epoch"):
        assert packed.metrics[key] == pytest.approx(separate.metrics[key], abs=1e-9), key
    for key in ("ece", "nll"):
        assert packed.metrics[key] == pytest.approx(separate.metrics[key], rel=1e-3, abs=1e-4), key
    assert packed.metrics["per_class_acc"] == pytest.approx(separate.metrics["per_class_acc"], abs=1e-9)
    assert packed.metrics["best_epoch"] == separate.metrics["best_epoch"]
    assert packed.class_counts == separate.class_counts


def test_loop_pack_equals_separate_runs(kd_pack):
    specs, teacher, separate = kd_pack
    packed = train_packed(specs, teacher_state=teacher, device="cpu", strategy="loop")
    assert len(packed) == len(specs)
    for p, s in zip(packed, separate):
        assert_same_run(p, s, rtol=0, atol=0)  # the same operations: bit for bit
    # the students really differ: different losses, different weights
    assert not torch.equal(packed[0].state_dict["fc.weight"], packed[2].state_dict["fc.weight"])


def test_grouped_pack_equals_separate_runs(kd_pack):
    specs, teacher, separate = kd_pack
    packed = train_packed(specs, teacher_state=teacher, device="cpu", strategy="grouped")
    # Grouped convolutions sum in another order than three separate ones, and which order depends on the
    # CPU's kernels: on an AMD EPYC two epochs end 3e-5 apart (weights ~0.05); a wrong student loss moves
    # them by ~1e-2, so 1e-4 still catches it.
    for p, s in zip(packed, separate):
        assert_same_run(p, s, rtol=1e-4, atol=1e-4)


def test_grouped_resnet_with_cosine_head_equals_separate_runs():
    """Option-A shortcuts padded per group, wide BatchNorm and the grouped cosine head (LDAM). With
    the default scale s=30 this 2-epoch digits run is chaotic (two separate runs that differ only in
    memory layout end 0.03 apart), so the students use s=5 and s=7, where rounding stays rounding (s=10
    drifted 0.03 once the first epoch's warm-up ramped per step)."""
    specs = students("ldam", [{"max_m": 0.3, "s": 5.0}, {"max_m": 0.5, "s": 7.0}], model="resnet8")
    separate = [train(s, device="cpu") for s in specs]
    packed = train_packed(specs, device="cpu", strategy="grouped")
    for p, s in zip(packed, separate):
        assert_same_run(p, s, rtol=1e-4, atol=1e-5)


def test_report_and_resume_from_a_pack_checkpoint(kd_pack):
    specs, teacher, separate = kd_pack
    kept, seen = {}, []

    def report(metrics, make_checkpoint):
        assert isinstance(metrics, list) and len(metrics) == len(specs)
        seen.append(metrics[0]["epoch"])
        if metrics[0]["epoch"] == 0:
            kept["ckpt"] = make_checkpoint()

    train_packed(specs, teacher_state=teacher, device="cpu", strategy="loop", report=report)
    assert seen == list(range(EPOCHS))
    resumed = train_packed(specs, teacher_state=teacher, device="cpu", strategy="loop", checkpoint=kept["ckpt"])
    for p, s in zip(resumed, separate):
        assert_same_run(p, s, rtol=0, atol=0)  # the same operations: bit for bit
        assert [h["session"] for h in p.history] == [0] + [1] * (EPOCHS - 1)  # continued after epoch 0
    with pytest.raises(ValueError, match="another pack"):
        train_packed(specs[:2], teacher_state=teacher, device="cpu", strategy="loop", checkpoint=kept["ckpt"])


# ---------------------------------------------------------------- the grouped network itself


@pytest.mark.parametrize("name,channels,size,head", [
    ("resnet32", 3, 32, "linear"), ("resnet8", 1, 8, "cosine"), ("cnn-small", 1, 28, "linear"),
])
def test_grouped_network_reproduces_each_model_in_training_mode(name, channels, size, head):
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(create_model(name, 10, channels, head=head))
    x = torch.randn(6, channels, size, size)
    packed = pack_models(models, x, "grouped")
    out = packed(x)  # training mode: batch statistics per student
    want = torch.stack([m(x) for m in models], dim=1)
    assert out.shape == (6, 3, 10)
    assert torch.allclose(out, want, rtol=1e-4, atol=1e-5)
    # running statistics moved in the packed BatchNorms; unpack copies them (and weights) back
    fresh = [create_model(name, 10, channels, head=head) for _ in range(3)]
    for seed, m in enumerate(fresh):
        torch.manual_seed(seed)
        m.load_state_dict(create_model(name, 10, channels, head=head).state_dict())
    for m in fresh:
        m(x)  # one training-mode forward each, as the packed network did
    packed.unpack()
    for m, f in zip(models, fresh):
        for (key, a), b in zip(m.state_dict().items(), f.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), key


def test_grouped_packer_refuses_layers_it_does_not_know():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x.flatten(1) * self.scale[0]

    with pytest.raises(ValueError, match="does not support Odd"):
        GroupedPack([Odd(), Odd()])


def test_grouped_packer_refuses_a_model_it_would_pack_wrongly():
    """The packer treats the first registered convolution as the one reading the input; a model that
    registers its layers in another order must be refused, not trained as something else."""

    class Reordered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.second = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.first = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.second(torch.relu(self.first(x))).mean((2, 3)))

    models = [Reordered() for _ in range(3)]
    x = torch.randn(2, 8, 6, 6)
    with pytest.raises(ValueError, match="does not support model Reordered"):
        pack_models(models, x, "grouped")
    out = pack_models(models, x, "loop")(x)  # the loop strategy runs any model as it is
    assert torch.allclose(out, torch.stack([m(x) for m in models], dim=1))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("change,field", [
    (dict(seed=1), "seed"), (dict(epochs=EPOCHS + 1), "epochs"), (dict(imbalance_factor=50), "imbalance_factor"),
    (dict(data_seed=3), "data_seed"), (dict(model="resnet8"), "model"),
    (dict(method="ce"), "teacher"),  # a student and a run without a teacher: other initial weights and batches
    (dict(method="dive"), "teacher"),  # DiVE distils from a Balanced-Softmax teacher, KD from a CE one
])
def test_specs_that_differ_beyond_method_and_params_are_refused(change, field):
    base = dict(dataset="digits", imbalance_factor=10, method="kd", epochs=EPOCHS)
    other = {**base, **change}
    a = make_spec(base.pop("dataset"), base.pop("imbalance_factor"), base.pop("method"), **base)
    b = make_spec(other.pop("dataset"), other.pop("imbalance_factor"), other.pop("method"), **other)
    with pytest.raises(ValueError, match=f"differ only in their method and its parameters.*{field}"):
        check_packable([a, b])
    with pytest.raises(ValueError, match="differ only in their method and its parameters"):
        train_packed([a, b], device="cpu")  # refused before any work


@pytest.mark.parametrize("methods,field", [
    (("ce", "ldam"), "head"),  # LDAM's cosine classifier is another network
    (("ce", "ldam-drw"), "head"),
])
def test_methods_that_need_another_network_are_not_packed_together(methods, field):
    specs = [make_spec("digits", 10, m, epochs=EPOCHS) for m in methods]
    with pytest.raises(ValueError, match=f"differ only in their method and its parameters.*{field}"):
        check_packable(specs)


MIXED_PLAIN = ("ce", "reweight-cb", "balanced-softmax", "focal")  # one seed, no teacher: one signature


def test_a_pack_of_different_methods_equals_their_separate_runs():
    """CE, class-balanced re-weighting, Balanced Softmax and focal loss of one seed in one loop pack:
    each ends bit for bit where its own ``train`` run ends (same initial weights, same batches, its own
    loss), and the four really are different runs."""
    specs = [make_spec("digits", 10, m, epochs=EPOCHS) for m in MIXED_PLAIN]
    check_packable(specs)
    separate = [train(s, device="cpu") for s in specs]
    packed = train_packed(specs, device="cpu", strategy="loop")
    for p, s in zip(packed, separate):
        assert_same_run(p, s, rtol=0, atol=0)
    weights = [r.state_dict["fc.weight"] for r in packed]
    assert all(not torch.equal(weights[0], w) for w in weights[1:])


def test_students_of_different_methods_share_one_teacher_in_a_pack(kd_pack):
    """KD, BKD and DKD students of one CE teacher: one teacher forward per batch for all three, each
    student exactly its separate run."""
    specs, teacher, _ = kd_pack
    mixed = [specs[0], make_spec("digits", 10, "bkd", epochs=EPOCHS), make_spec("digits", 10, "dkd", epochs=EPOCHS)]
    assert len({s.teacher.run_id for s in mixed}) == 1
    separate = [train(s, device="cpu", teacher_state=teacher) for s in mixed]
    packed = train_packed(mixed, teacher_state=teacher, device="cpu", strategy="loop")
    for p, s in zip(packed, separate):
        assert_same_run(p, s, rtol=0, atol=0)


def test_empty_repeated_and_teacherless_packs_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        train_packed([], device="cpu")
    a, b = students("kd", [{"alpha": 0.5}, {"alpha": 1.0}])
    with pytest.raises(ValueError, match="repeats spec 0"):
        train_packed([a, b, a], device="cpu")
    with pytest.raises(ValueError, match="teacher_state"):
        train_packed([a, b], device="cpu")
    with pytest.raises(ValueError, match="strategy"):
        train_packed([a, b], device="cpu", strategy="vmap", teacher_state={})


def test_a_diverging_student_is_named(monkeypatch):
    from bkdbench.methods.focal import FocalLoss

    real = FocalLoss.loss

    def loss(self, logits, targets, **kw):
        out = real(self, logits, targets, **kw)
        return out * float("nan") if self.params.gamma == 2.0 else out

    monkeypatch.setattr(FocalLoss, "loss", loss)
    specs = students("focal", [{"gamma": 1.0}, {"gamma": 2.0}])
    with pytest.raises(PackedTrainingDiverged, match="epoch 0.*1: focal") as err:
        train_packed(specs, device="cpu", strategy="loop")
    assert err.value.students == [1] and isinstance(err.value, TrainingDiverged)
    assert re.fullmatch(r"training loss became nan at epoch 0 \(focal on .*\)", err.value.reasons[1]), err.value.reasons


def test_evaluation_every_k_epochs_and_always_at_the_end(monkeypatch):
    """The recipe's eval_every sets the cadence, in ``train`` and in ``train_packed`` alike; the last
    epoch is always evaluated (5 epochs, every 3: epochs 2 and 4)."""
    from dataclasses import replace

    from bkdbench.specs import recipes

    monkeypatch.setitem(recipes.RECIPES, "small", replace(recipes.get_recipe("small"), eval_every=3))
    specs = [make_spec("digits", 10, "focal", epochs=5, params={"gamma": g}) for g in (1.0, 2.0)]
    single = train(specs[0], device="cpu")
    packed = train_packed(specs, device="cpu")
    for result in (single, *packed):
        assert [h["epoch"] for h in result.history if "val_top1" in h] == [2, 4]
        assert [h["epoch"] for h in result.history if "test_top1" in h] == [2, 4]
        assert result.metrics["top1"] == result.history[-1]["test_top1"]
