"""Breadcrumb (feature back-tracking): the per-class rings, the class-mean alignment, class-balanced
draws, which parameters each loss term reaches, prediction through the balanced head, checkpoint /
resume, the memory bound, and runs through `train` and `bkdbench train`. Values are checked against
hand computations, not against the method's own output."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from bkdbench.cli import app
from bkdbench.data import normalize
from bkdbench.training.evaluate import classification_metrics, predict
from bkdbench.leaderboard.store import read_rows
from bkdbench.methods import MethodError, build, validate_params
from bkdbench.methods.breadcrumb import MAX_MEMORY_BYTES, BalancedHeadView, FeatureMemory
from bkdbench.models import create_model
from bkdbench.specs.search_spaces import load_space
from bkdbench.specs import make_spec
from bkdbench.training.train import build_model, load_checkpoint, load_run_data, save_checkpoint, train


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: CPU tests stay fast on a busy machine


def rows(*values) -> torch.Tensor:
    """Features [n, 2] whose first coordinate is the given value (easy to recognise)."""
    return torch.tensor([[float(v), 0.0] for v in values])


def held_values(memory: FeatureMemory, c: int) -> tuple[list[float], list[int]]:
    feats, tags = memory.class_features(c)
    return feats[:, 0].tolist(), tags.tolist()


# ---------------------------------------------------------------- the rings


def test_push_fills_each_ring_in_arrival_order_and_overwrites_the_oldest():
    memory = FeatureMemory(torch.tensor([3, 1]), queue=2, epochs=3, dim=2)
    assert memory.capacity.tolist() == [5, 3]  # queue + n_c: room for the epoch being written

    memory.push(rows(1, 10, 2, 3), torch.tensor([0, 1, 0, 0]), epoch=0)
    assert memory.written.tolist() == [3, 1] and memory.held().tolist() == [3, 1]
    assert held_values(memory, 0) == ([1, 2, 3], [0, 0, 0])
    assert held_values(memory, 1) == ([10], [0])

    # Interleaved labels; class 1 gets 4 features in one batch, more than its ring's 3 rows.
    memory.push(rows(11, 4, 12, 5, 13, 6, 14), torch.tensor([1, 0, 1, 0, 1, 0, 1]), epoch=1)
    assert memory.written.tolist() == [6, 5] and memory.held().tolist() == [5, 3]
    assert held_values(memory, 0) == ([2, 3, 4, 5, 6], [0, 0, 1, 1, 1])  # 1, the oldest, is gone
    assert held_values(memory, 1) == ([12, 13, 14], [1, 1, 1])

    # The means count every feature of the epoch, overwritten or not.
    assert memory.counts.tolist() == [[3, 1], [3, 4], [0, 0]]
    assert memory.sums[1, 1].tolist() == [11 + 12 + 13 + 14, 0]
    assert memory.sums[0, 0].tolist() == [1 + 2 + 3, 0]


def test_only_the_newest_queue_features_of_completed_epochs_are_readable():
    memory = FeatureMemory(torch.tensor([2]), queue=3, epochs=4, dim=2)
    memory.push(rows(1, 2), torch.tensor([0, 0]), epoch=0)
    count, _, target = memory.readable(0)
    assert count.tolist() == [2] and target.tolist() == [0]  # first epoch: its own features
    memory.push(rows(3, 7), torch.tensor([0, 0]), epoch=1)
    memory.push(rows(9), torch.tensor([0]), epoch=2)
    count, _, target = memory.readable(2)
    assert count.tolist() == [3] and target.tolist() == [1]  # 7, 3, 2: not 9 (this epoch), not 1 (past queue)

    g = torch.Generator().manual_seed(0)
    feats, classes = memory.sample(600, 2, g)
    mu0, mu1 = 1.5, 5.0
    expected = {7.0, 3.0, 2 + mu1 - mu0}  # epoch-1 features as they are, epoch 0's shifted by μ1 − μ0
    assert set(feats[:, 0].tolist()) == expected and set(classes.tolist()) == {0}


def test_back_tracked_features_are_shifted_by_their_class_mean_change():
    """f − μ[e, c] + μ[t−1, c], computed by hand for two classes over two epochs."""
    memory = FeatureMemory(torch.tensor([2, 2]), queue=10, epochs=3, dim=2)
    a1, a2, b1 = [1.0, 0.0], [3.0, 2.0], [0.0, 4.0]  # epoch 0: μ0 = (2, 1) for class 0, (0, 4) for class 1
    a3, a4, b2, b3 = [5.0, 5.0], [7.0, 1.0], [2.0, 2.0], [4.0, 0.0]  # epoch 1: μ1 = (6, 3) and (3, 1)
    memory.push(torch.tensor([a1, b1, a2]), torch.tensor([0, 1, 0]), epoch=0)

    g = torch.Generator().manual_seed(1)
    feats, classes = memory.sample(400, 0, g)  # during epoch 0: the features as they are
    assert {tuple(f) for f, c in zip(feats.tolist(), classes.tolist()) if c == 0} == {tuple(a1), tuple(a2)}
    assert {tuple(f) for f, c in zip(feats.tolist(), classes.tolist()) if c == 1} == {tuple(b1)}

    memory.push(torch.tensor([b2, a3, a4, b3]), torch.tensor([1, 0, 0, 1]), epoch=1)
    memory.push(torch.tensor([[100.0, 100.0]]), torch.tensor([0]), epoch=2)  # epoch 2 is not read in epoch 2
    feats, classes = memory.sample(4000, 2, g)
    drawn = {c: {tuple(f) for f, k in zip(feats.tolist(), classes.tolist()) if k == c} for c in (0, 1)}
    assert drawn[0] == {(1 + 4, 0 + 2), (3 + 4, 2 + 2), tuple(a3), tuple(a4)}  # μ1 − μ0 = (4, 2)
    assert drawn[1] == {(0 + 3, 4 - 3), tuple(b2), tuple(b3)}  # μ1 − μ0 = (3, −3)


def test_draws_are_class_balanced_and_never_from_an_empty_class():
    memory = FeatureMemory(torch.tensor([50, 10, 2, 1]), queue=60, epochs=1, dim=2)
    labels = torch.tensor([0] * 50 + [1] * 10 + [3] * 1)
    memory.push(rows(*range(len(labels))), labels[torch.randperm(len(labels))], epoch=0)
    g = torch.Generator().manual_seed(0)
    n = 30_000
    feats, classes = memory.sample(n, 0, g)
    share = torch.bincount(classes, minlength=4).double() / n
    assert share[2] == 0  # class 2 has nothing stored
    assert share[[0, 1, 3]].tolist() == pytest.approx([1 / 3] * 3, abs=0.02)
    # Uniform within a class too: each of class 0's 50 features about n / 3 / 50 = 200 times.
    per_item = torch.unique(feats[classes == 0, 0], return_counts=True)[1]
    assert len(per_item) == 50 and per_item.min() > 130 and per_item.max() < 270


def test_same_generator_state_gives_the_same_draws():
    memory = FeatureMemory(torch.tensor([3, 2]), queue=3, epochs=1, dim=2)
    memory.push(rows(1, 2, 3, 4, 5), torch.tensor([0, 1, 0, 1, 0]), epoch=0)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    first = memory.sample(50, 0, g)
    g.set_state(state)
    second = memory.sample(50, 0, g)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# ---------------------------------------------------------------- the method


COUNTS = [6, 3, 2]


def _model_and_method(**params):
    torch.manual_seed(0)
    model = create_model("cnn-small", len(COUNTS), 1)
    method = build("breadcrumb", COUNTS, epochs=3, **params)
    new = method.attach(model)
    return model, method, new


def test_defaults_and_parameter_ranges():
    assert validate_params("breadcrumb") == {"queue": 0, "balanced_weight": 1.0}
    assert build("breadcrumb", [10, 1]).queue == math.ceil(11 / 2)  # the mean class size, rounded up
    assert build("breadcrumb", [10, 1], queue=4).queue == 4
    with pytest.raises(MethodError, match="balanced_weight must be > 0"):
        build("breadcrumb", COUNTS, balanced_weight=0)
    with pytest.raises(MethodError, match="queue must be >= 0"):
        build("breadcrumb", COUNTS, queue=-1)


def test_attach_adds_a_balanced_head_and_returns_its_parameters():
    model, method, new = _model_and_method()
    assert isinstance(model.fc_balanced, torch.nn.Linear)
    assert (model.fc_balanced.in_features, model.fc_balanced.out_features) == (model.feature_dim, len(COUNTS))
    assert [id(p) for p in new] == [id(model.fc_balanced.weight), id(model.fc_balanced.bias)]
    assert {"fc_balanced.weight", "fc_balanced.bias"} <= set(model.state_dict())  # saved with the model


def test_balanced_term_trains_only_the_balanced_head_and_the_rest_is_plain_ce():
    model, method, _ = _model_and_method()
    reference = copy.deepcopy(model)
    x, y = torch.randn(8, 1, 8, 8), torch.tensor([0, 0, 0, 1, 1, 2, 0, 2])

    logits, feats = model(x, features=True)
    loss = method.loss(logits, y, epoch=0, features=feats)
    loss.backward()

    ref_logits, ref_feats = reference(x, features=True)
    F.cross_entropy(ref_logits, y).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        if name.startswith("fc_balanced"):
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)  # the second term adds nothing
    assert reference.fc_balanced.weight.grad is None  # CE alone never reaches the balanced head
    assert model.fc_balanced.weight.grad.abs().sum() > 0

    # The main head's gradient is CE's, written out: (softmax(z) − onehot(y))ᵀ h / B.
    p = F.softmax(ref_logits.detach(), dim=1) - F.one_hot(y, len(COUNTS)).float()
    torch.testing.assert_close(model.fc.weight.grad, p.T @ ref_feats.detach() / len(y))
    assert not method.memory.feats.requires_grad
    assert loss.item() > F.cross_entropy(ref_logits, y).item()  # the balanced CE term is in the total


def test_balanced_weight_scales_only_the_balanced_heads_gradient():
    grads = []
    for w in (1.0, 3.0):
        model, method, _ = _model_and_method(balanced_weight=w)
        x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
        y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
        logits, feats = model(x, features=True)
        method.loss(logits, y, epoch=0, features=feats).backward()
        grads.append((model.fc_balanced.weight.grad.clone(), model.fc.weight.grad.clone()))
    torch.testing.assert_close(grads[1][0], 3 * grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])


def test_loss_needs_features_and_an_attached_head():
    method = build("breadcrumb", COUNTS, epochs=2)
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(MethodError, match="penultimate features"):
        method.loss(logits, y)
    with pytest.raises(MethodError, match="attach"):
        method.loss(logits, y, features=torch.randn(4, 5))


def test_prediction_goes_through_the_balanced_head():
    model, method, _ = _model_and_method()
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    view = method.eval_model(model)
    assert isinstance(view, BalancedHeadView)
    with torch.no_grad():
        expected = model.fc_balanced(model(x, features=True)[1])
        torch.testing.assert_close(view(x), expected, rtol=0, atol=0)
        assert not torch.allclose(view(x), model(x))
    view.train()
    assert model.training  # predict's eval()/train() reach the model through the view


def test_memory_bound_is_refused_with_advice():
    # (C·queue + N) rows of 4 float32 + an int64 tag, and E·C sums of 4 float32 + an int64 count
    expected = (2 * 2 + 4) * (4 * 4 + 8) + 5 * 2 * (4 * 4 + 8)
    assert FeatureMemory.nbytes(torch.tensor([3, 1]), queue=2, epochs=5, dim=4) == expected

    class Wide(torch.nn.Module):
        feature_dim = 4096

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    method = build("breadcrumb", [1000] * 1000, epochs=200)
    assert method.memory_bytes(4096) > MAX_MEMORY_BYTES
    with pytest.raises(MethodError, match=r"GiB.*lower 'queue'"):
        method.attach(Wide())


# ---------------------------------------------------------------- through train()


@pytest.fixture(scope="module")
def four_epochs(tmp_path_factory, one_thread_for_module):
    """An uninterrupted 4-epoch digits run whose callback writes the checkpoint after epoch 2 to disk."""
    spec = make_spec("digits", 10, "breadcrumb", epochs=4)
    path = tmp_path_factory.mktemp("bc") / "after2.pt"

    def report(metrics, make_checkpoint):
        if metrics["epoch"] == 1:
            save_checkpoint(make_checkpoint(), path)

    return spec, train(spec, device="cpu", report=report), path


def test_resume_from_checkpoint_equals_uninterrupted_run(four_epochs):
    spec, full, path = four_epochs
    torch.load(path, weights_only=True)  # the method's state is plain tensors too
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 2
    memory = ckpt["method"]["memory"]
    assert int(memory["counts"][:2].sum()) == 2 * sum(full.class_counts)  # two epochs of features, every image
    assert {"fc_balanced.weight", "fc_balanced.bias"} <= set(ckpt["model"])

    resumed = train(spec, device="cpu", checkpoint=ckpt)
    assert full.state_dict.keys() == resumed.state_dict.keys()
    for key in full.state_dict:
        assert torch.equal(full.state_dict[key], resumed.state_dict[key]), key
    assert resumed.metrics["top1"] == full.metrics["top1"] and resumed.metrics["nll"] == full.metrics["nll"]
    strip = lambda h: {k: v for k, v in h.items() if k not in ("seconds", "session")}  # noqa: E731
    assert [strip(h) for h in resumed.history] == [strip(h) for h in full.history]
    assert [h["session"] for h in full.history] == [0] * len(full.history)
    # the row shows where the run continued: epochs trained after the resume are session 1
    assert [h["session"] for h in resumed.history] == [0 if h["epoch"] < ckpt["epoch"] else 1 for h in resumed.history]


def test_reported_metrics_come_from_the_balanced_head(four_epochs):
    spec, full, _ = four_epochs
    data = load_run_data(spec, None)
    model = build_model(spec, len(data.classes), data.info.channels, "linear", torch.device("cpu"))
    build("breadcrumb", data.class_counts, epochs=spec.epochs).attach(model)
    model.load_state_dict(full.state_dict)
    mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std).view(1, -1, 1, 1)
    prepare = lambda x: normalize(x, mean, std).contiguous(memory_format=torch.channels_last)  # noqa: E731
    x, y = torch.from_numpy(data.test_x), torch.from_numpy(data.test_y)
    num_classes = len(data.classes)

    balanced = classification_metrics(predict(BalancedHeadView(model), x, prepare), y, num_classes)
    main = classification_metrics(predict(model, x, prepare), y, num_classes)
    assert balanced["top1"] == pytest.approx(full.metrics["top1"], abs=1e-9)
    assert balanced["nll"] == pytest.approx(full.metrics["nll"], rel=1e-5)
    assert main["nll"] != pytest.approx(full.metrics["nll"], rel=1e-3)


def test_breadcrumb_through_bkdbench_train(tmp_path):
    result = CliRunner().invoke(app, ["train", "--dataset", "digits", "--imbalance", "10", "--method", "breadcrumb",
                                      "--epochs", "2", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows_, bad = read_rows(Path(tmp_path) / "leaderboard")
    assert bad == [] and list(rows_.method) == ["breadcrumb"]
    top1 = float(rows_.top1.iloc[0])
    assert 0 <= top1 <= 100 and np.isfinite(top1)


def test_search_space_loads_and_its_range_validates():
    space, _ = load_space("breadcrumb")
    assert space.method == "breadcrumb" and set(space.params) == {"balanced_weight"}
    for name, param in space.params.items():
        for value in param.probe_values():
            validate_params("breadcrumb", **{name: value})
