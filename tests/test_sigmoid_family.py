"""The sigmoid family (sigmoid, balanced-sigmoid, cb-sigmoid, cb-focal): each loss against a NumPy
transcription of its authors' code and against a case worked by hand; the prior bias of the head; the
unshifted prediction logits of Balanced Sigmoid; the normalised-sigmoid probabilities of ECE and NLL;
and one `bkdbench train` of each through the CLI."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bkdbench.methods import MethodError, build
from bkdbench.models import create_model
from bkdbench.training.evaluate import classification_metrics
from helpers.cli import cli_app

FAMILY = ["sigmoid", "balanced-sigmoid", "cb-sigmoid", "cb-focal"]
COUNTS = [500, 200, 80, 20, 5]


def tt(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64))


# ------------------------------------------------------------------------------------------------
# NumPy transcriptions of the authors' code (read from their repositories, written out here)
# ------------------------------------------------------------------------------------------------

def tf_sigmoid_cross_entropy_with_logits(labels, logits):
    """TensorFlow's documented formula: max(x, 0) - x * z + log(1 + exp(-|x|))."""
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def cui_weights(img_num_per_cls, beta):
    """richardaecn/class-balanced-loss, cifar_main.main: effective number, then sum to C."""
    effective_num = 1.0 - np.power(beta, np.asarray(img_num_per_cls, dtype=np.float64))
    weights = (1.0 - beta) / np.array(effective_num)
    return weights / np.sum(weights) * len(img_num_per_cls)


def cui_tower_loss(label, logits, weights, loss_type, gamma):
    """cifar_main._tower_fn for loss_type 'sigmoid' / 'focal' (and its focal_loss), without reg_loss."""
    num_classes = logits.shape[1]
    one_hot_labels = np.eye(num_classes)[label]
    w = np.tile(np.asarray(weights)[None, :], (one_hot_labels.shape[0], 1)) * one_hot_labels
    w = np.tile(w.sum(axis=1)[:, None], (1, num_classes))
    cross_entropy = tf_sigmoid_cross_entropy_with_logits(one_hot_labels, logits)
    if loss_type == "sigmoid":
        return np.sum(w * cross_entropy) / np.sum(one_hot_labels)
    modulator = 1.0 if gamma == 0.0 else np.exp(-gamma * one_hot_labels * logits
                                                 - gamma * np.log1p(np.exp(-1.0 * logits)))
    return np.sum(w * (modulator * cross_entropy)) / np.sum(one_hot_labels)


def balms_expanded_label(gt_classes, n_i, n_c):
    target = np.zeros((n_i, n_c + 1))
    target[np.arange(n_i), gt_classes] = 1
    return target[:, :n_c]


def balms_sigmoid_loss(logits, gt_classes):
    """BALMS fast_rcnn.SigmoidFastRCNNOutputs.sigmoid_loss; gt_classes == n_c is background."""
    n_i, n_c = logits.shape
    target = balms_expanded_label(gt_classes, n_i, n_c)
    return np.sum(tf_sigmoid_cross_entropy_with_logits(target, logits)) / n_i


def balms_balanced_softmax_loss(logits, gt_classes, freq_info):
    """BALMS fast_rcnn.BalancedSoftmaxFastRCNNOutputs.balanced_softmax_loss (the sigmoid variant)."""
    logits = np.array(logits, dtype=np.float64)
    n_i, n_c = logits.shape
    target = balms_expanded_label(gt_classes, n_i, n_c)
    weight = np.tile(((1.0 - freq_info) / freq_info)[None, :], (n_i, 1))
    fg_ind = gt_classes != n_c
    logits[fg_ind] = (logits - np.log(weight))[fg_ind]
    return np.sum(tf_sigmoid_cross_entropy_with_logits(target, logits)) / n_i


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    z = rng.normal(scale=3.0, size=(9, 5))
    y = np.array([0, 1, 2, 3, 4, 4, 3, 0, 2])
    return z, y


def test_sigmoid_matches_both_authors_codes(batch):
    z, y = batch
    ours = build("sigmoid", COUNTS).loss(tt(z), torch.tensor(y)).item()
    assert ours == pytest.approx(balms_sigmoid_loss(z, y), rel=1e-12)
    assert ours == pytest.approx(cui_tower_loss(y, z, np.ones(5), "sigmoid", 0.0), rel=1e-12)


def test_balanced_sigmoid_matches_balms_code(batch):
    z, y = batch
    freq = np.asarray(COUNTS, dtype=np.float64) / sum(COUNTS)  # image_count / #images, one label per image
    ours = build("balanced-sigmoid", COUNTS).loss(tt(z), torch.tensor(y)).item()
    assert ours == pytest.approx(balms_balanced_softmax_loss(z, y, freq), rel=1e-12)
    assert ours != pytest.approx(balms_sigmoid_loss(z, y), rel=1e-3)  # the shift does something


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.99, 0.9999])
def test_cb_sigmoid_matches_cui_code(batch, beta):
    z, y = batch
    ours = build("cb-sigmoid", COUNTS, beta=beta).loss(tt(z), torch.tensor(y)).item()
    assert ours == pytest.approx(cui_tower_loss(y, z, cui_weights(COUNTS, beta), "sigmoid", 0.0), rel=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.999, 0.9999])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_cb_focal_matches_cui_code(batch, beta, gamma):
    z, y = batch
    ours = build("cb-focal", COUNTS, beta=beta, gamma=gamma).loss(tt(z), torch.tensor(y)).item()
    ref = cui_tower_loss(y, z, cui_weights(COUNTS, beta), "focal", gamma)
    assert ours == pytest.approx(ref, rel=1e-12)


def test_float32_matches_the_transcriptions(batch):
    z, y = batch
    w = cui_weights(COUNTS, 0.9999)
    freq = np.asarray(COUNTS, dtype=np.float64) / sum(COUNTS)
    refs = {"sigmoid": balms_sigmoid_loss(z, y), "balanced-sigmoid": balms_balanced_softmax_loss(z, y, freq),
            "cb-sigmoid": cui_tower_loss(y, z, w, "sigmoid", 0.0), "cb-focal": cui_tower_loss(y, z, w, "focal", 1.0)}
    for name, ref in refs.items():
        m = build(name, COUNTS)
        f32 = m.loss(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
        bf16 = m.loss(torch.tensor(z, dtype=torch.bfloat16), torch.tensor(y))
        assert f32.dtype == torch.float32 and f32.item() == pytest.approx(ref, rel=1e-6), name
        assert bf16.dtype == torch.float32 and bf16.item() == pytest.approx(ref, rel=0.05), name


# ------------------------------------------------------------------------------------------------
# Cases worked by hand: two classes, counts [3, 1], logits 0 and ln 3
# ------------------------------------------------------------------------------------------------
# Sample A: z = (0, ln 3), label 1.  Sample B: z = (0, 0), label 0.
# BCE(z, t) = log(1 + e^z) - t z:  BCE(0, .) = ln 2;  BCE(ln 3, 1) = ln 4 - ln 3 = ln(4/3);  BCE(ln 3, 0) = ln 4.
LN2, LN3 = math.log(2), math.log(3)
Z_HAND = [[0.0, LN3], [0.0, 0.0]]
Y_HAND = [1, 0]


def test_sigmoid_by_hand():
    # A: ln 2 + ln(4/3) = ln(8/3);  B: 2 ln 2;  mean over the two samples.
    got = build("sigmoid", [3, 1]).loss(tt(Z_HAND), torch.tensor(Y_HAND)).item()
    assert got == pytest.approx((math.log(8 / 3) + 2 * LN2) / 2, rel=1e-14)


def test_balanced_sigmoid_by_hand():
    # pi = (3/4, 1/4): log((1 - pi)/pi) = (-ln 3, +ln 3).  A: shifted (ln 3, 0) -> BCE(ln 3, 0) + BCE(0, 1)
    # = ln 4 + ln 2 = 3 ln 2.  B: shifted (ln 3, -ln 3), label 0 -> BCE(ln 3, 1) + BCE(-ln 3, 0)
    # = ln(4/3) + ln(4/3).
    got = build("balanced-sigmoid", [3, 1]).loss(tt(Z_HAND), torch.tensor(Y_HAND)).item()
    assert got == pytest.approx((3 * LN2 + 2 * math.log(4 / 3)) / 2, rel=1e-14)


def test_cb_sigmoid_by_hand():
    # beta = 1/2: raw w = (1/2)/(1 - 1/8) = 4/7 and (1/2)/(1 - 1/2) = 1; sum 11/7; times 2 / (11/7): (8/11, 14/11).
    m = build("cb-sigmoid", [3, 1], beta=0.5)
    got = m.loss(tt(Z_HAND), torch.tensor(Y_HAND)).item()
    assert got == pytest.approx((14 / 11 * math.log(8 / 3) + 8 / 11 * 2 * LN2) / 2, rel=1e-14)
    # Sample A alone: divided by its one positive label, not by its weight (PyTorch's weighted CE would).
    alone = m.loss(tt(Z_HAND[:1]), torch.tensor(Y_HAND[:1])).item()
    assert alone == pytest.approx(14 / 11 * math.log(8 / 3), rel=1e-14)


def test_cb_focal_by_hand():
    # gamma = 2, p_t = sigmoid of the right sign: A: class 0 (t=0, z=0) p_t = 1/2 -> (1/2)^2 ln 2;
    # class 1 (t=1, z=ln 3) p_t = 3/4 -> (1/4)^2 ln(4/3).  B: both p_t = 1/2 -> 2 * ln 2 / 4.
    m = build("cb-focal", [3, 1], beta=0.5, gamma=2.0)
    got = m.loss(tt(Z_HAND), torch.tensor(Y_HAND)).item()
    a = LN2 / 4 + math.log(4 / 3) / 16
    assert got == pytest.approx((14 / 11 * a + 8 / 11 * LN2 / 2) / 2, rel=1e-14)
    assert m.loss(tt(Z_HAND[:1]), torch.tensor(Y_HAND[:1])).item() == pytest.approx(14 / 11 * a, rel=1e-14)


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_extreme_logits_stay_finite(name, gamma):
    z = torch.tensor([[100.0, -100.0, 0.0], [100.0, -100.0, 0.0], [-100.0, 100.0, 100.0]], requires_grad=True)
    y = torch.tensor([0, 1, 0])  # certain and right, certain and wrong, certain and wrong
    params = {"gamma": gamma} if name == "cb-focal" else {}
    loss = build(name, [10, 5, 1], **params).loss(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert loss.item() > 50  # two certain mistakes cost ~100 each, whatever the weights


# ------------------------------------------------------------------------------------------------
# The head's prior bias, the prediction logits and the probability rule
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILY)
def test_attach_sets_the_prior_bias(name):
    model = create_model("cnn-small", 10, 1)
    weight = model.fc.weight.detach().clone()
    assert build(name, [9, 8, 7, 6, 5, 4, 3, 2, 1, 1]).attach(model) == []
    # pi = 1/C = 0.1 (Cui et al.'s CIFAR-10 value): -log(0.9 / 0.1) = -log 9
    np.testing.assert_allclose(model.fc.bias.detach().numpy(), np.full(10, -math.log(9)), rtol=1e-6)
    assert torch.equal(model.fc.weight, weight)  # the kernel keeps the model's own initialisation
    assert torch.sigmoid(model.fc.bias).detach().numpy() == pytest.approx(np.full(10, 0.1), rel=1e-6)


@pytest.mark.parametrize("name", FAMILY)
def test_never_packed_since_packed_students_skip_attach(name):
    from bkdbench.specs import make_spec
    from bkdbench.training.packed import pack_refusal

    assert pack_refusal(make_spec("digits", 10, name)) is not None  # they would train without the prior bias


def test_attach_refuses_a_head_without_a_matching_bias():
    with pytest.raises(MethodError, match="bias"):
        build("sigmoid", [5, 1]).attach(create_model("cnn-small", 10, 1))  # 2 classes, a 10-class head
    with pytest.raises(MethodError, match="bias"):
        build("sigmoid", [5, 1]).attach(torch.nn.Linear(3, 2))  # no `fc`
    with pytest.raises(MethodError, match="at least 2 classes"):
        build("sigmoid", [5])


def test_balanced_sigmoid_predicts_from_the_unshifted_logits(batch):
    z, _ = batch
    m = build("balanced-sigmoid", COUNTS)
    got = m.eval_logits(tt(z)).numpy()
    np.testing.assert_allclose(got, -np.log1p(np.exp(-z)), rtol=1e-12)  # log sigmoid(z), no prior shift
    assert (got.argmax(1) == z.argmax(1)).all()


@pytest.mark.parametrize("name", FAMILY)
def test_probabilities_are_normalised_sigmoid_scores(name, batch):
    z, y = batch
    m = build(name, COUNTS)
    metrics = classification_metrics(m.eval_logits(tt(z)), torch.tensor(y), 5)
    s = 1 / (1 + np.exp(-z))
    p = s / s.sum(1, keepdims=True)
    assert metrics["nll"] == pytest.approx(-np.log(p[np.arange(len(y)), y]).mean(), rel=1e-6)
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for b in range(15):  # bins (b/15, (b+1)/15]
        inside = (conf > b / 15) & (conf <= (b + 1) / 15)
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    assert metrics["ece"] == pytest.approx(100 * ece, rel=1e-6)
    assert metrics["top1"] == pytest.approx(100 * np.mean([(pred[y == c] == c).mean() for c in range(5)]))


def test_probability_rule_by_hand():
    # z = (0, ln 3): sigmoid = (1/2, 3/4), normalised (2/5, 3/5); label 1 -> NLL = -ln(3/5).
    # Softmax of z would give (1/4, 3/4), NLL -ln(3/4): the rule is not softmax.
    m = build("sigmoid", [3, 1])
    metrics = classification_metrics(m.eval_logits(tt([[0.0, LN3]])), torch.tensor([1]), 2)
    assert metrics["nll"] == pytest.approx(-math.log(3 / 5), rel=1e-6)
    assert metrics["ece"] == pytest.approx(100 * (1 - 3 / 5), rel=1e-6)  # right, at confidence 3/5


# ------------------------------------------------------------------------------------------------
# Through the CLI
# ------------------------------------------------------------------------------------------------

def test_each_trains_through_bkdbench_train(tmp_path, monkeypatch):
    from bkdbench.leaderboard.store import read_rows
    from bkdbench.paths import leaderboard_dir

    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    app = cli_app("train")
    for name in FAMILY:
        result = CliRunner().invoke(app, ["train", "--method", name, "--epochs", "2", "--imbalance", "10",
                                          "--results", str(tmp_path / "results")])
        assert result.exit_code == 0, result.output
    rows, skipped = read_rows(leaderboard_dir(tmp_path / "results"))
    assert not skipped and sorted(rows.method) == sorted(FAMILY)
    for row in rows.itertuples():
        assert row.status == "finished" and 0 <= row.top1 <= 100
        assert math.isfinite(row.nll) and 0 <= row.ece <= 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", FAMILY)
def test_cuda_loss_matches_cpu_without_host_syncs(batch, name):
    z, y = batch
    m = build(name, COUNTS)
    ref = m.loss(tt(z), torch.tensor(y)).item()
    x, yy = torch.tensor(z, dtype=torch.float32, device="cuda"), torch.tensor(y, device="cuda")
    m.loss(x, yy)  # the first call copies the per-class constants over
    x.requires_grad_(True)
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync in the step now raises
    try:
        loss = m.loss(x, yy)
        loss.backward()
        m.eval_logits(x.detach())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.item() == pytest.approx(ref, rel=1e-5)
