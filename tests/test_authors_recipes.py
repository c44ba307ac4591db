"""Recipes as their authors ran them: DKD's β by student and its per-batch warm-up, DiVE's 120/160
milestones, the teacher's logits in fp32; and the run ids of everything else left as they were."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bkdbench.methods import build
from bkdbench.specs import SpecError, make_spec
from bkdbench.specs.recipes import RecipeError, get_recipe
from test_dive_dkd import np_dkd  # the NumPy transcription of mdistiller's DKD

# Run ids computed on main before the recipe changes (commit df185f7): a run these changes do not touch
# keeps its id, so its finished row and cached teacher stay valid.
UNCHANGED = [
    (("digits", 10, "ce"), "8b09286de5027e17"),
    (("digits", 10, "bkd"), "cfb9d7edd39e494a"),
    (("digits", 10, "kd"), "e20e5d4ff6671d50"),
    (("digits", 10, "ldam-drw"), "7d754a5936b4bdda"),
    (("digits", 10, "balanced-softmax"), "f3a24cbaf5368fe4"),
    (("cifar10", 100, "ce"), "c28ebcee7588c48e"),
    (("cifar100", 100, "bkd"), "ad36f01120035a35"),
    (("cifar100", 100, "ldam-drw"), "fb2dead00d6e3b0b"),
]
# ... and the ids these changes must move (a stale DKD/DiVE row is never taken for the new recipe).
CHANGED = [(("digits", 10, "dkd"), "6f51441b30f7829f"), (("cifar100", 100, "dkd"), "981c0bf0cb295c50"),
           (("digits", 10, "dive"), "747e8493bcaac315"), (("cifar100", 100, "dive"), "7630437a318a4d1a"),
           (("digits", 10, "ssd-lt"), "c2dc1f22921b7815"),
           # computed on main at 8ec8a17, before SSD-LT stage II's drop_last parameter (its stage III moves too)
           (("digits", 10, "ssd-lt-stage2"), "25892b4965252dd7"), (("digits", 10, "ssd-lt"), "58f7c05bb8c7d136")]


@pytest.mark.parametrize("args, run_id", UNCHANGED)
def test_runs_the_changes_do_not_touch_keep_their_ids(args, run_id):
    assert make_spec(*args, seed=0).run_id == run_id


@pytest.mark.parametrize("args, old", CHANGED)
def test_the_changed_recipes_move_their_ids(args, old):
    assert make_spec(*args, seed=0).run_id != old


def test_dkd_beta_by_student_as_mdistiller_sets_it():
    # mdistiller configs/cifar100/dkd/res110_res32.yaml: "STUDENT: resnet32" ... "DKD:\n  BETA: 2.0"
    assert make_spec("cifar100", 100, "dkd").params["nckd_weight"] == 2.0
    assert make_spec("cifar100", 100, "dkd", model="resnet20").params["nckd_weight"] == 2.0
    assert make_spec("cifar10", 100, "dkd", model="resnet8").params["nckd_weight"] == 2.0  # thin, as resnet20/32
    assert make_spec("digits", 10, "dkd").params["nckd_weight"] == 8.0  # res32x4_res8x4.yaml and the rest: 8
    given = make_spec("cifar100", 100, "dkd", params={"nckd_weight": 8})
    assert given.params["nckd_weight"] == 8.0  # the earlier default, one -p away
    assert given.teacher.run_id == make_spec("cifar100", 100, "dkd").teacher.run_id  # same CE teacher


def _batch(seed=0, n=6, c=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, c)), rng.normal(size=(n, c)) * 2, rng.integers(0, c, size=n)


def test_dkd_warms_up_per_batch_on_a_short_budget():
    # 60 images, batch 16: S = ceil(60/16) = 4 batches per epoch; 10 epochs, warmup 0.1 -> W = 1 epoch.
    zs, zt, y = _batch()
    method = build("dkd", [30, 20, 10], epochs=10, batch_size=16)
    expected = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]  # epoch 0 batches 0..3, then epoch 1 batches 0..1
    epochs = [0, 0, 0, 0, 1, 1]
    for epoch, w in zip(epochs, expected):
        got = method.loss(torch.tensor(zs), torch.tensor(y), epoch=epoch, teacher_logits=torch.tensor(zt)).item()
        assert got == pytest.approx(np_dkd(zs, zt, y, 1.0, 8.0, 4.0, w), rel=1e-9)


def test_dkd_per_batch_ramp_at_200_epochs_ends_each_epoch_on_mdistillers_weight():
    zs, zt, y = _batch(1)
    method = build("dkd", [30, 20, 10], epochs=200, batch_size=30)  # S = 2
    for epoch in range(3):  # mdistiller: min(epoch_1based / 20, 1) for the whole epoch; here reached at its end
        first = method.loss(torch.tensor(zs), torch.tensor(y), epoch=epoch, teacher_logits=torch.tensor(zt)).item()
        last = method.loss(torch.tensor(zs), torch.tensor(y), epoch=epoch, teacher_logits=torch.tensor(zt)).item()
        assert first == pytest.approx(np_dkd(zs, zt, y, 1.0, 8.0, 4.0, (epoch + 0.5) / 20), rel=1e-9)
        assert last == pytest.approx(np_dkd(zs, zt, y, 1.0, 8.0, 4.0, (epoch + 1) / 20), rel=1e-9)


def test_dkd_epoch_ramp_is_the_earlier_rule():
    zs, zt, y = _batch(2)
    method = build("dkd", [30, 20, 10], epochs=10, batch_size=16, warmup_ramp="epoch")
    got = method.loss(torch.tensor(zs), torch.tensor(y), epoch=0, teacher_logits=torch.tensor(zt)).item()
    assert got == pytest.approx(np_dkd(zs, zt, y, 1.0, 8.0, 4.0, 1.0), rel=1e-9)  # no warm-up at 10 epochs


def test_dive_steps_at_120_and_160_like_bagoftricks():
    # BagofTricks-LT configs/cao_cifar/DiVE/cifar100_im100/{teacher,student}.yaml:
    #   LR_STEP: [120, 160]  LR_FACTOR: 0.01  WARM_EPOCH: 5  BASE_LR: 0.1
    spec = make_spec("cifar100", 100, "dive")
    assert spec.recipe == spec.teacher.recipe == "reference/milestones=0.6,0.8"
    recipe = get_recipe(spec.recipe)
    assert recipe.milestones(200) == (5, 120, 160)
    lrs = {e: recipe.lr_at(e, 200) for e in (119, 120, 159, 160, 199)}
    assert lrs == pytest.approx({119: 0.1, 120: 0.1 * 0.01, 159: 0.1 * 0.01, 160: 0.1 * 0.01**2, 199: 0.1 * 0.01**2})
    assert recipe.batch_size == 128 and recipe.weight_decay == 2e-4
    kept = make_spec("cifar100", 100, "dive", params={"milestones": "recipe"})
    assert kept.recipe == kept.teacher.recipe == "reference"
    assert get_recipe(kept.recipe).milestones(200) == (5, 160, 180)
    assert make_spec("cifar100", 100, "balanced-softmax").recipe == "reference"  # its own runs are untouched


def test_dive_on_a_cosine_recipe_keeps_it():
    assert make_spec("digits", 10, "dive", recipe="imagenet-lt").recipe == "imagenet-lt"


@pytest.mark.parametrize("name", ["reference/milestones=0.9", "reference/milestones=0.8,0.6",
                                  "reference/milestones=a,b", "nope/milestones=0.6,0.8"])
def test_a_malformed_derived_recipe_is_refused(name):
    with pytest.raises(RecipeError):
        get_recipe(name)
    with pytest.raises(SpecError):
        make_spec("digits", 10, "ce", recipe=name)


def test_the_teacher_runs_in_fp32_under_bf16_autocast():
    from bkdbench.methods.step import plain_step

    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(16, 3), torch.nn.Linear(16, 3)
    x, y = torch.randn(8, 16) * 3, torch.randint(0, 3, (8,))
    method = build("kd", [5, 5, 5])
    seen = {}
    original = method.loss

    def spy(logits, targets, **kw):
        seen["teacher"] = kw["teacher_logits"]
        return original(logits, targets, **kw)

    method.loss = spy
    plain_step(student, torch.optim.SGD(student.parameters(), lr=0.1), method, x, y, epoch=0, teacher=teacher,
               autocast=torch.bfloat16)
    with torch.no_grad():
        exact = teacher(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = teacher(x).float()
    assert seen["teacher"].dtype == torch.float32
    assert torch.equal(seen["teacher"], exact)
    assert not torch.equal(rounded, exact)  # bf16 would have been visibly different


def test_kang_stage2_on_the_large_benchmark_recipes():
    # classifier-balancing config/ImageNet_LT/cls_crt.yaml: "num_epochs: 10", "batch_size: 512",
    # classifier "lr: 0.2", "weight_decay: 0.0005", "coslr: true", "endlr: 0.0"; cls_lws.yaml: "num_epochs: 5".
    crt = make_spec("digits", 50, "crt", recipe="imagenet-lt")
    assert (crt.recipe, crt.epochs) == ("imagenet-lt-stage2", 10)
    assert (crt.teacher.recipe, crt.teacher.epochs) == ("imagenet-lt", 90)  # stage 1 keeps its recipe
    stage2 = get_recipe(crt.recipe)
    assert (stage2.batch_size, stage2.lr, stage2.weight_decay, stage2.schedule) == (512, 0.2, 5e-4, "cosine")
    assert stage2.lr_at(9, 10) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert make_spec("digits", 50, "lws", recipe="imagenet-lt").epochs == 5
    # config/iNaturalist18/cls_crt.yaml: "num_epochs: 30", "weight_decay: 0.0001"
    inat = make_spec("digits", 50, "crt", recipe="inat18")
    assert (inat.recipe, inat.epochs, get_recipe(inat.recipe).weight_decay) == ("inat18-stage2", 30, 1e-4)
    # config/iNaturalist18/cls_lws.yaml: "num_epochs: 5", "batch_size: 512", classifier "lr: 0.2"
    inat_lws = make_spec("digits", 50, "lws", recipe="inat18")
    assert (inat_lws.recipe, inat_lws.epochs) == ("inat18-stage2", 5)
    # config/Places_LT/cls_crt.yaml: "batch_size: 256", classifier "lr: 0.1", "num_epochs: 10"
    places = get_recipe(make_spec("digits", 50, "crt", recipe="places-lt").recipe)
    assert (places.batch_size, places.lr, places.epochs) == (256, 0.1, 10)
    # bkdbench's fraction rule: a shortened budget, a given stage2_fraction, and every other recipe
    assert make_spec("digits", 50, "crt", recipe="imagenet-lt", epochs=20).epochs == 2
    given = make_spec("digits", 50, "crt", recipe="imagenet-lt", params={"stage2_fraction": 0.1})
    assert (given.recipe, given.epochs) == ("imagenet-lt", 9)
    assert make_spec("digits", 10, "crt").run_id == "6d3b0c892945ad7b"  # computed on main: unchanged


def test_ssd_lt_stage2_as_the_authors_ran_it():
    # MCG-NJU/SSD-LT ssd_stage_ii.py: "--epochs', default=5", "'--batch-size', default=512",
    # "'--lr', ... default=0.2", "'--wd', ... default=5e-4", README: "python ssd_stage_ii.py --cos ...",
    # DataLoader(..., drop_last=True)
    stage2 = make_spec("digits", 50, "ssd-lt-stage2", recipe="imagenet-lt")
    assert (stage2.recipe, stage2.epochs) == ("imagenet-lt-stage2", 5)
    assert (stage2.teacher.recipe, stage2.teacher.epochs) == ("imagenet-lt", 90)  # stage I keeps its recipe
    rec = get_recipe(stage2.recipe)
    assert (rec.batch_size, rec.lr, rec.weight_decay, rec.schedule, rec.warmup_frac) == (512, 0.2, 5e-4, "cosine", 0.0)
    assert build("ssd-lt-stage2", [50, 10, 5], epochs=5).drop_last is True
    assert build("ssd-lt-stage2", [50, 10, 5], epochs=5, drop_last=False).drop_last is False  # the earlier rule
    # elsewhere, and with stage2_fraction given: bkdbench's fraction of stage I's budget on its recipe
    short = make_spec("digits", 50, "ssd-lt-stage2", epochs=20)
    assert (short.recipe, short.epochs) == (short.teacher.recipe, 2)
    given = make_spec("digits", 50, "ssd-lt-stage2", recipe="imagenet-lt", params={"stage2_fraction": 0.1})
    assert (given.recipe, given.epochs) == ("imagenet-lt", 9)


def test_ssd_lt_key_momentum_is_tied_to_the_step_budget():
    # 7,650 images, batch 128, drop_last: 59 steps an epoch, 10 epochs = 590 steps. The authors' ~61k steps
    # at 0.999 leave 0.999**61000 of the initial key weights; the per-step momentum m must leave the same.
    method = build("ssd-lt-stage1", [5000, 2000, 500, 100, 50], epochs=10, batch_size=128)
    m = 0.999 ** (61000 / 590)
    assert method.key_momentum == pytest.approx(m, rel=1e-12)
    assert method.key_momentum ** 590 == pytest.approx(0.999 ** 61000, rel=1e-9)
    fixed = build("ssd-lt-stage1", [5000, 2000, 500, 100, 50], epochs=10, batch_size=128, momentum_horizon="fixed")
    assert fixed.key_momentum == 0.999 and fixed.key_momentum ** 590 == pytest.approx(0.554, abs=1e-3)
    long = build("ssd-lt-stage1", [5000, 2000, 500, 100, 50], epochs=2000, batch_size=128)  # 118,000 steps
    assert long.key_momentum == 0.999


def test_select_best_val_is_part_of_the_run_and_its_prerequisites():
    default, best = make_spec("digits", 10, "crt"), make_spec("digits", 10, "crt", select="best-val")
    assert default.run_id == make_spec("digits", 10, "crt", select="last").run_id == "6d3b0c892945ad7b"
    assert best.run_id != default.run_id and best.select == best.teacher.select == "best-val"
    with pytest.raises(SpecError, match="select takes last or best-val"):
        make_spec("digits", 10, "ce", select="best-test")


def test_select_best_val_reports_the_best_validation_epoch():
    from bkdbench.training.train import train

    spec = make_spec("digits", 50, "ce", epochs=6, select="best-val")
    result = train(spec, device="cpu")
    vals = [h["val_top1"] for h in result.history]
    best_epoch = vals.index(max(vals))  # the first best, as Kang's `>` keeps it
    assert result.extra["best_val_epoch"] == best_epoch
    assert result.metrics["val_top1"] == pytest.approx(max(vals))
    row = result.to_row()
    assert row["select"] == "best-val" and row["run_id"] == spec.run_id


@pytest.mark.parametrize("command", [["train", "--dataset", "digits"], ["run", "--suite", "digits-lt"]])
def test_a_bad_select_is_one_line_and_exit_2(tmp_path, command):
    from helpers.cli import invoke_cli

    result = invoke_cli([*command, "--select", "best-test", "--results", tmp_path / "results"], folder=tmp_path)
    assert result.returncode == 2 and "select takes last or best-val" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []
