"""SSD-LT's three stages against NumPy transcriptions of the authors' formulas (float64, never calling
bkdbench), the queue and momentum encoder by hand, the stages as cached runs trained once, and the
batched MoCo-v2 key view checked statistically."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bkdbench.data.augment import crop_boxes, moco_v2_view
from bkdbench.methods import build
from bkdbench.methods.decoupled import ScaledLinear
from bkdbench.methods.ssd_lt import KeyBranch, label_masked_contrastive
from bkdbench.models import create_model
from bkdbench.specs import make_spec


def np_authors_contrastive(q, k, labels, queue, queue_labels, T):
    """The authors' cal_contrastive_loss, line by line: exp of the positive and of every queue logit,
    queue entries of the query's label multiplied by 0, −(l_pos − log Σ exp).mean()."""
    l_pos = (q * k).sum(1, keepdims=True) / T
    l_neg = q @ queue / T
    mask = 1.0 - (labels[:, None] == queue_labels[None, :]).astype(np.float64)
    exp_logits = np.concatenate([np.exp(l_pos), np.exp(l_neg) * mask], axis=1)
    return -(l_pos[:, 0] - np.log(exp_logits.sum(1))).mean()


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("T", [0.2, 0.07, 1.0])
def test_label_masked_contrastive_matches_the_authors_formula(T):
    rng = np.random.default_rng(3)
    B, D, K = 6, 8, 24
    q, k = unit(rng.normal(size=(B, D))), unit(rng.normal(size=(B, D)))
    queue = unit(rng.normal(size=(K, D))).T
    labels = rng.integers(0, 4, size=B)
    queue_labels = rng.integers(0, 4, size=K)
    got = label_masked_contrastive(*(torch.tensor(a) for a in (q, k, labels, queue, queue_labels)), T).item()
    assert got == pytest.approx(np_authors_contrastive(q, k, labels, queue, queue_labels, T), rel=1e-9)
    # same-label queue entries really leave the denominator: relabelling them changes the loss
    other = np.where(queue_labels == labels[0], (queue_labels + 1) % 4, queue_labels)
    changed = label_masked_contrastive(*(torch.tensor(a) for a in (q, k, labels, queue, other)), T).item()
    assert changed != pytest.approx(got)


def test_contrastive_by_hand():
    """One query, its key equal to it (l_pos = 1/T), a queue of two: one of its own label
    (dropped) and one orthogonal (l_neg = 0). Loss = log(e^{1/T} + 1) − 1/T."""
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # columns: same direction, orthogonal
    got = label_masked_contrastive(q, q.clone(), torch.tensor([3]), queue, torch.tensor([3, 1]), 0.5).item()
    assert got == pytest.approx(math.log(math.exp(2.0) + 1.0) - 2.0, rel=1e-12)


def test_queue_length_is_the_largest_multiple_of_the_batch():
    counts = [int(500 * (0.01) ** (i / 99)) for i in range(100)]  # CIFAR-100-LT IF100: 10,847 images
    assert sum(counts) == 10847
    assert build("ssd-lt-stage1", counts, batch_size=128).queue_length() == 10752
    assert build("ssd-lt-stage1", counts, batch_size=128, queue=4096).queue_length() == 4096
    with pytest.raises(Exception, match="batch size"):
        build("ssd-lt-stage1", counts).queue_length()


def test_queue_momentum_encoder_and_enqueue_by_hand():
    torch.manual_seed(0)
    model = create_model("cnn-small", 10, 1)
    branch = KeyBranch(model, dim=4, queue=6)
    assert torch.allclose(branch.queue.norm(dim=0), torch.ones(6)) and branch.queue_labels.eq(0).all()  # as the authors
    before = {n: p.detach().clone() for n, p in branch.encoder_k.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    branch.momentum_update(model, 0.9)
    for name, p in branch.encoder_k.named_parameters():
        query = dict(model.named_parameters())[name]
        assert torch.allclose(p, 0.9 * before[name] + 0.1 * query), name
    keys = torch.eye(4)[:4]
    branch.enqueue(keys, torch.tensor([1, 2, 3, 4]))
    branch.enqueue(keys[:4] * 2, torch.tensor([5, 6, 7, 8]))  # wraps: slots 4, 5, 0, 1
    assert branch.queue_labels.tolist() == [7, 8, 3, 4, 5, 6] and int(branch.queue_ptr) == 2
    assert torch.equal(branch.queue[:, 0], keys[2] * 2) and torch.equal(branch.queue[:, 3], keys[3])


def test_keys_use_separate_batchnorm_statistics_per_shuffled_group():
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 3)
    branch = KeyBranch(model, dim=8, queue=16).train()
    x = torch.randn(8, 3, 32, 32)
    gen = torch.Generator().manual_seed(5)
    keys = branch.keys(x, 2, gen)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = torch.empty(8, 8)
        for idx in order.chunk(2):  # each half on its own: its own batch statistics
            want[idx] = torch.nn.functional.normalize(branch.proj_k(branch.encoder_k(x[idx], features=True)[1]), dim=1)
        whole = torch.nn.functional.normalize(branch.proj_k(branch.encoder_k(x, features=True)[1]), dim=1)
    assert torch.allclose(keys, want, atol=1e-5)
    assert not torch.allclose(keys, whole, atol=1e-3)


def test_stage2_scales_the_classifier_output_bias_included():
    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]))
        linear.bias.copy_(torch.tensor([0.5, -1.0]))
    scaled = ScaledLinear(linear, scale_bias=True)
    with torch.no_grad():
        scaled.scale.copy_(torch.tensor([2.0, 3.0]))
    x = torch.tensor([[1.0, 1.0, 1.0]])
    assert torch.allclose(scaled(x), torch.tensor([[(3.0 + 0.5) * 2, (0.0 - 1.0) * 3]]))


def test_stage2_trains_only_the_scales_and_reestimates_batchnorm():
    torch.manual_seed(0)
    stage1 = create_model("cnn-small", 10, 1)
    state = {**stage1.state_dict(), "ssd.queue": torch.zeros(1)}  # stage I's own entries are left out when loading
    model = create_model("cnn-small", 10, 1)
    method = build("ssd-lt-stage2", [50] * 10)
    (scales,) = method.prepare(model, state)
    assert scales is model.fc.scale and [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.scale"]
    method.set_train_mode(model)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.randn(16, 1, 8, 8) + 3)
    assert not torch.allclose(bn.running_mean, before)  # BatchNorm in training mode, as the authors' model.train()


def np_kd(zs, zt, T):
    def sm(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    p, q = sm(zt / T), sm(zs / T)
    return T * T * (p * (np.log(p) - np.log(q))).sum(1).mean()


def test_stage3_loss_is_hard_ce_plus_soft_kd():
    rng = np.random.default_rng(1)
    hard, soft, teacher = (rng.normal(size=(5, 4)) * 2 for _ in range(3))
    y = rng.integers(0, 4, size=5)
    sm = np.exp(hard - hard.max(1, keepdims=True))
    ce = -np.log((sm / sm.sum(1, keepdims=True))[np.arange(5), y]).mean()
    method = build("ssd-lt", [10, 10, 10, 10])
    got = method.loss(torch.tensor(hard), torch.tensor(y), teacher_logits=torch.tensor(teacher), soft_logits=torch.tensor(soft))
    assert got.item() == pytest.approx(ce + np_kd(soft, teacher, 2.0), rel=1e-9)


def test_the_three_stages_are_runs_of_their_own():
    spec = make_spec("digits", 10, "ssd-lt", epochs=20)
    stage1, stage2 = spec.prerequisites
    assert (stage1.method, stage2.method, spec.teacher) == ("ssd-lt-stage1", "ssd-lt-stage2", stage2)
    assert stage2.teacher == stage1 and (stage1.epochs, stage2.epochs, spec.epochs) == (20, 2, 20)
    assert make_spec("digits", 10, "ssd-lt", epochs=20, params={"temperature": 4.0}).prerequisites == [stage1, stage2]


def test_a_suite_plans_stage_one_then_two_then_the_students(tmp_path):
    """Stage I first (with the CE run, which needs no teacher and so does not wait), then stage II,
    then the stage-III students."""
    from bkdbench.orchestrate.runner import plan_runs

    students = [make_spec("digits", 10, "ssd-lt", epochs=2, params={"temperature": t}) for t in (2.0, 4.0)]
    ce = make_spec("digits", 10, "ce", epochs=2)
    plan = plan_runs([*students, ce], tmp_path)
    assert plan.stage_names == ["teachers", "teachers-2", "runs"]
    assert [s.method for s in plan.stages[0]] == ["ssd-lt-stage1", "ce"]
    assert [s.method for s in plan.stages[1]] == ["ssd-lt-stage2"]
    assert {s.run_id for s in plan.stages[2]} == {s.run_id for s in students}


def test_ssd_lt_cannot_be_packed():
    from bkdbench.training.packed import check_packable

    with pytest.raises(ValueError, match="training step or network modules of its own"):
        check_packable([make_spec("digits", 10, "ssd-lt", epochs=2, params={"temperature": t}) for t in (2.0, 4.0)])


@pytest.mark.usefixtures("one_thread")
def test_stage1_resumes_from_a_checkpoint_exactly():
    """Key encoder, queue, queue pointer and the shuffle generator are all in the checkpoint: 2 + 2
    epochs end where 4 straight epochs end, bit for bit."""
    from bkdbench.training.train import train

    spec = make_spec("digits", 10, "ssd-lt-stage1", epochs=4)
    straight = train(spec, device="cpu")
    saved = {}

    def report(metrics, make_checkpoint):
        if metrics["epoch"] == 1:
            saved["ckpt"] = make_checkpoint()

    train(spec, device="cpu", report=report)
    resumed = train(spec, device="cpu", checkpoint=saved["ckpt"])
    for key, want in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[key], want), key
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert straight.history[0]["images"] % 64 == 0  # whole batches only (the recipe's batch is 64)


@pytest.mark.usefixtures("one_thread")
def test_bkdbench_train_runs_the_three_stages_once_and_reuses_them(tmp_path, cache):
    from bkdbench.cli import app
    from bkdbench.leaderboard.store import read_rows

    args = ["train", "--method", "ssd-lt", "--epochs", "3", "--results", str(tmp_path / "r")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    rows, _ = read_rows(tmp_path / "r" / "leaderboard")
    assert sorted(rows.method) == ["ssd-lt", "ssd-lt-stage1", "ssd-lt-stage2"]
    row = rows[rows.method == "ssd-lt"].iloc[0]
    extra = __import__("json").loads(row["extra"])
    assert set(extra) == {"hard_head_top1", "hard_head_val_top1"} and 0 <= extra["hard_head_top1"] <= 100
    stage2 = rows[rows.method == "ssd-lt-stage2"].run_id.item()
    assert row["teacher_run_id"] == stage2
    second = CliRunner().invoke(app, [*args, "--temperature", "4"])
    assert second.exit_code == 0, second.output
    assert second.output.count("reusing the cached") == 2 and "training the" not in second.output
    rows, _ = read_rows(tmp_path / "r" / "leaderboard")
    assert sorted(rows.method) == ["ssd-lt", "ssd-lt", "ssd-lt-stage1", "ssd-lt-stage2"]


# ---------------------------------------------------------------- the key view


def test_crop_boxes_follow_the_random_resized_crop_distribution():
    gen = torch.Generator().manual_seed(0)
    boxes = crop_boxes(20000, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), gen, "cpu")
    top, left, h, w = boxes.unbind(1)
    area = h * w / (32 * 32)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    assert area.min() >= 0.18 and area.max() <= 1.0  # rounding of h and w allows a little under 0.2
    ratio = w / h
    assert ratio.min() >= 0.6 and ratio.max() <= 1.7
    # spread over the range: every tenth of [0.2, 1] gets crops
    hist = torch.histc(area.clamp(0.2, 1.0), bins=8, min=0.2, max=1.0)
    assert (hist > 500).all(), hist


def test_moco_view_flip_jitter_and_grayscale_rates():
    gen = torch.Generator().manual_seed(1)
    n = 4000
    # one bright pixel in the left half of a colour image: a flip moves it to the right half
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, 0, :, :4] = 200
    images[:, 1, :, :4] = 50
    out = moco_v2_view(images, gen, scale=(1.0, 1.0), jitter=(0.0, 0.0, 0.0, 0.0))
    left, right = out[:, :, :, :4].float().mean((1, 2, 3)), out[:, :, :, 4:].float().mean((1, 2, 3))
    flipped = (right > left).float().mean().item()
    assert flipped == pytest.approx(0.5, abs=0.03)
    gray = (out[:, 0] == out[:, 1]).all(-1).all(-1).float().mean().item()
    assert gray == pytest.approx(0.2, abs=0.03)
    # brightness alone: factors in [0.6, 1.4], applied to 80 % of the images
    flat = torch.full((n, 1, 4, 4), 100, dtype=torch.uint8)
    bright = moco_v2_view(flat, gen, scale=(1.0, 1.0), jitter=(0.4, 0.0, 0.0, 0.0), flip=False).float()[:, 0, 0, 0] / 100
    assert bright.min() >= 0.595 and bright.max() <= 1.405
    assert (bright != 1.0).float().mean().item() == pytest.approx(0.8, abs=0.03)
    assert ((bright < 0.8) | (bright > 1.2)).float().mean().item() > 0.3  # spread over the range


def test_gaussian_blur_by_hand_and_left_out_on_small_images():
    from bkdbench.data.augment import gaussian_blur

    impulse = torch.zeros(2, 1, 15, 15, dtype=torch.float64)
    impulse[:, 0, 7, 7] = 1.0
    out = gaussian_blur(impulse, torch.tensor([1.0, 0.5]))
    for i, sigma in enumerate((1.0, 0.5)):
        radius = math.ceil(3 * 1.0)  # one radius for the batch, from its largest σ
        k = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
        k /= k.sum()
        assert out[i, 0, 7, 7].item() == pytest.approx(k[radius] ** 2, rel=1e-9)
        assert out[i, 0, 7, 8].item() == pytest.approx(k[radius] * k[radius + 1], rel=1e-9)
    small = (torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    a = moco_v2_view(small, torch.Generator().manual_seed(3), blur_p=1.0)
    b = moco_v2_view(small, torch.Generator().manual_seed(3), blur_p=0.0)
    assert torch.equal(a, b)  # under 64 px: no blur, whatever blur_p says
    big = (torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    c = moco_v2_view(big, torch.Generator().manual_seed(3), blur_p=1.0, flip=False)
    d = moco_v2_view(big, torch.Generator().manual_seed(3), blur_p=0.0, flip=False)
    assert not torch.equal(c, d)  # same crops and colours (same draws before the blur), then blurred
    assert c.float().std() < d.float().std()
