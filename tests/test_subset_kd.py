"""Class-subset multi-teacher distillation (`subset-kd`): the class-subset data, the loss against an
independent numpy computation for each weighting, the planned teachers, and a run through `bkdbench train`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bkdbench.cli import app
from bkdbench.data import get_dataset, restrict_classes
from bkdbench.data.longtail import longtail_counts
from bkdbench.data.splits import LongTailData
from bkdbench.leaderboard.store import read_rows
from bkdbench.methods import MethodError, build, validate_params
from bkdbench.specs import SpecError, make_spec


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: CPU tests stay fast on a busy machine


# ------------------------------------------------------------------------------------------------
# restrict_classes
# ------------------------------------------------------------------------------------------------

def _labelled(labels):
    """Images whose single pixel holds (label, position): what survives can be traced back."""
    labels = np.asarray(labels, dtype=np.int64)
    x = np.stack([labels, np.arange(len(labels))], axis=1).astype(np.uint8)[:, None, :, None]
    return x, labels


def test_restrict_classes_keeps_only_the_subset_in_every_split_relabelled_in_the_given_order():
    train_x, train_y = _labelled([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    val_x, val_y = _labelled([0, 1, 2, 3, 3, 2])
    test_x, test_y = _labelled([3, 2, 1, 0, 0, 1, 2, 3])
    data = LongTailData(info=get_dataset("digits"), train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y,
                        test_x=test_x, test_y=test_y, class_counts=[4, 3, 2, 1], classes=["a", "b", "c", "d"])

    sub = restrict_classes(data, [3, 1])
    assert sub.classes == ["d", "b"] and sub.class_counts == [1, 3]
    for x, y, original in ((sub.train_x, sub.train_y, train_y), (sub.val_x, sub.val_y, val_y),
                           (sub.test_x, sub.test_y, test_y)):
        kept = [i for i, c in enumerate(original) if c in (3, 1)]  # order of the images is kept
        assert x[:, 0, 1, 0].tolist() == kept
        assert y.tolist() == [{3: 0, 1: 1}[original[i]] for i in kept]
        assert x[:, 0, 0, 0].tolist() == [original[i] for i in kept]  # the images are the right ones
    assert sub.shots == {"many": [], "medium": [], "few": [0, 1]}  # digits' thresholds on counts [1, 3]
    for bad in ([], [1, 1], [4], [-1]):
        with pytest.raises(Exception, match="distinct classes in 0..3"):
            restrict_classes(data, bad)


# ------------------------------------------------------------------------------------------------
# The loss, against explicit loops in numpy
# ------------------------------------------------------------------------------------------------

GROUPS = [[0, 3, 1], [2, 4], [5, 6]]  # deliberately not in label order
COUNTS = [50, 40, 30, 20, 10, 5, 2]


def format_groups(groups):
    return "|".join(",".join(map(str, g)) for g in groups)


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _reference(z, y, teachers, weighting, alpha, T, beta=0.9999):
    """CE + alpha*T^2 * weighted KL of each sample against its own group's teacher, by loops."""
    z, y = z.astype(np.float64), list(y)
    B = len(y)
    ce = np.mean([-np.log(_softmax(z[i])[y[i]]) for i in range(B)])
    group_of = {c: g for g, cls in enumerate(GROUPS) for c in cls}
    kl = []
    for i in range(B):
        g = group_of[y[i]]
        q = _softmax(teachers[g][i].astype(np.float64) / T)
        p = _softmax(z[i, GROUPS[g]] / T)  # the student restricted to the group, renormalised
        kl.append(sum(q[j] * np.log(q[j] / p[j]) for j in range(len(q))))
    if weighting == "instance":
        distill = sum(kl) / B
    elif weighting == "subset":
        means = []
        for g in range(len(GROUPS)):
            mine = [kl[i] for i in range(B) if group_of[y[i]] == g]
            if mine:
                means.append(sum(mine) / len(mine))
        distill = sum(means) / len(means)
    else:
        w = np.array([(1 - beta) / (1 - beta ** n) for n in COUNTS])
        w = w * len(COUNTS) / w.sum()
        distill = sum(w[y[i]] * kl[i] for i in range(B)) / sum(w[y[i]] for i in range(B))
    return ce + alpha * T * T * distill


def _batch(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(labels), len(COUNTS), generator=g) * 3
    teachers = [torch.randn(len(labels), len(cls), generator=g) * 3 for cls in GROUPS]
    return z, torch.tensor(labels), teachers


@pytest.mark.parametrize("weighting", ["subset", "instance", "class-balanced"])
@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4, 5, 6, 0, 0, 1],  # every group, unevenly
                                    [0, 3, 3, 1, 5, 6, 0]],          # group 1 ({2, 4}) has no sample
                         ids=["all-groups", "a-group-missing"])
def test_loss_matches_an_independent_computation(weighting, labels):
    z, y, teachers = _batch(labels)
    method = build("subset-kd", COUNTS, groups=format_groups(GROUPS), weighting=weighting, alpha=0.7, temperature=3.0)
    got = method.loss(z, y, teacher_logits=teachers)
    want = _reference(z.numpy(), y.numpy(), [t.numpy() for t in teachers], weighting, alpha=0.7, T=3.0)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_subset_weighting_gives_every_present_group_the_same_say():
    # One sample of group 2 against six of group 0: "subset" weights it like all six together.
    labels = [0, 0, 1, 1, 3, 3, 5]
    z, y, teachers = _batch(labels, seed=3)
    kw = dict(groups=format_groups(GROUPS), alpha=1.0, temperature=2.0)
    subset = build("subset-kd", COUNTS, weighting="subset", **kw)
    kl, member = subset.per_sample_kl(z, y, teachers)
    assert member.tolist() == [0, 0, 0, 0, 0, 0, 2]
    ce = torch.nn.functional.cross_entropy(z, y)
    expected_subset = ce + 4 * (kl[:6].mean() + kl[6]) / 2
    expected_instance = ce + 4 * kl.mean()
    assert subset.loss(z, y, teacher_logits=teachers).item() == pytest.approx(expected_subset.item(), rel=1e-6)
    instance = build("subset-kd", COUNTS, weighting="instance", **kw)
    assert instance.loss(z, y, teacher_logits=teachers).item() == pytest.approx(expected_instance.item(), rel=1e-6)


def test_loss_is_ce_when_the_student_matches_every_teacher_and_gradients_flow():
    z, y, _ = _batch([0, 2, 5, 6, 4])
    teachers = [z[:, cls].clone() for cls in GROUPS]  # each teacher = the student restricted to its group
    z.requires_grad_(True)
    method = build("subset-kd", COUNTS, groups=format_groups(GROUPS))
    loss = method.loss(z, y, teacher_logits=teachers)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(z, y).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_one_group_in_label_order_is_vanilla_kd():
    z, y, _ = _batch([0, 1, 2, 3, 4, 5, 6, 6])
    t = torch.randn_like(z)
    one = build("subset-kd", COUNTS, groups="0,1,2,3,4,5,6", weighting="instance")
    kd = build("kd", COUNTS)
    assert one.loss(z, y, teacher_logits=[t]).item() == pytest.approx(kd.loss(z, y, teacher_logits=t).item(), rel=1e-6)


def test_loss_refuses_teacher_logits_that_do_not_fit_the_groups():
    z, y, teachers = _batch([0, 1, 2])
    method = build("subset-kd", COUNTS, groups=format_groups(GROUPS))
    with pytest.raises(MethodError, match="list of 3 tensors"):
        method.loss(z, y, teacher_logits=teachers[:2])
    with pytest.raises(MethodError, match="list of 3 tensors"):
        method.loss(z, y, teacher_logits=torch.randn(3, 7))
    with pytest.raises(MethodError, match=r"teacher 1 gave logits of shape \(3, 3\)"):
        method.loss(z, y, teacher_logits=[teachers[0], torch.randn(3, 3), teachers[2]])
    with pytest.raises(MethodError, match="must be resolved"):
        build("subset-kd", COUNTS).loss(z, y, teacher_logits=teachers)


@pytest.mark.parametrize("groups, message", [
    ("0,1|2,x", "bad group '2,x'"),
    ("0,1||2,3", "bad group ''"),
    ("0,1|1,2", r"classes \[1\] appear more than once"),
    ("0,-1|2,3", ">= 0"),
    ("0|1,2,3,4,5,6", r"at least 2 classes per group \(one-class groups \[\[0\]\]"),
])
def test_malformed_groups_are_refused_with_the_reason(groups, message):
    with pytest.raises(MethodError, match=f"groups.*{message}"):
        validate_params("subset-kd", groups=groups)


def test_params_defaults_and_canonical_groups():
    assert validate_params("subset-kd") == {"alpha": 1.0, "temperature": 2.0, "groups": "shots",
                                            "weighting": "subset", "beta": 0.9999}
    assert validate_params("subset-kd", groups=" 0, 1 | 2,3 ")["groups"] == "0,1|2,3"
    with pytest.raises(MethodError, match="weighting"):
        validate_params("subset-kd", weighting="uniform")
    with pytest.raises(MethodError, match="temperature must be > 0"):
        validate_params("subset-kd", temperature=0)


# ------------------------------------------------------------------------------------------------
# Specs: groups from the shot thresholds, one teacher per group
# ------------------------------------------------------------------------------------------------

def _shot_groups_by_hand(counts, many, few):
    return [[c for c, n in enumerate(counts) if test(n)]
            for test in (lambda n: n > many, lambda n: few <= n <= many, lambda n: n < few)]


def test_make_spec_resolves_shot_groups_and_plans_one_subset_teacher_per_group():
    info = get_dataset("digits")
    counts = longtail_counts(100, 10, 10)
    assert counts == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    by_hand = _shot_groups_by_hand(counts, info.many_threshold, info.few_threshold)
    assert by_hand == [[0, 1, 2], [3, 4, 5, 6, 7], [8, 9]]

    spec = make_spec("digits", 10, "subset-kd")
    assert spec.params["groups"] == "0,1,2|3,4,5,6,7|8,9"
    assert spec.teacher is None and len(spec.teachers) == 3
    ce = make_spec("digits", 10, "ce")
    for teacher, group in zip(spec.teachers, by_hand):
        assert teacher.train_classes == tuple(group)
        assert teacher.model_copy(update={"train_classes": None}) == ce  # same seed, model, recipe, epochs
        assert teacher.run_id != ce.run_id
    assert len({t.run_id for t in spec.teachers}) == 3
    assert spec.all_teachers == list(spec.teachers)

    # The explicit grouping that "shots" resolves to is the same run; another grouping is another run.
    assert make_spec("digits", 10, "subset-kd", params={"groups": "0,1,2|3,4,5,6,7|8,9"}).run_id == spec.run_id
    other = make_spec("digits", 10, "subset-kd", params={"groups": "0,1,2,3,4|5,6,7,8,9"})
    assert other.run_id != spec.run_id and [t.train_classes for t in other.teachers] == [(0, 1, 2, 3, 4),
                                                                                        (5, 6, 7, 8, 9)]
    # IF 50 moves the thresholds' cut: counts 100, 64, 41, 27, 17, 11, 7, 4, 3, 2.
    assert make_spec("digits", 50, "subset-kd").params["groups"] == "0,1|2,3,4|5,6,7,8,9"


def test_one_group_in_label_order_shares_the_plain_ce_teacher():
    spec = make_spec("digits", 10, "subset-kd", params={"groups": "0,1,2,3,4,5,6,7,8,9"})
    assert spec.teachers == (make_spec("digits", 10, "ce"),)
    reordered = make_spec("digits", 10, "subset-kd", params={"groups": "9,8,7,6,5,4,3,2,1,0"})
    assert reordered.teachers[0].train_classes == tuple(range(9, -1, -1))


def test_a_one_class_shot_group_is_merged_toward_the_tail():
    from bkdbench.methods.subset_kd import shot_groups

    assert shot_groups({"many": [0], "medium": [1, 2], "few": [3, 4]}) == [[0, 1, 2], [3, 4]]
    assert shot_groups({"many": [0, 1], "medium": [2, 3], "few": [4]}) == [[0, 1], [2, 3, 4]]
    assert shot_groups({"many": [0], "medium": [], "few": [1, 2]}) == [[0, 1, 2]]
    assert shot_groups({"many": [0, 1], "medium": [2], "few": [3]}) == [[0, 1], [2, 3]]
    assert shot_groups({"many": list(range(10)), "medium": [], "few": []}) == [list(range(10))]


@pytest.mark.parametrize("groups, message", [
    ("0,1,2|3,4,5,6|8,9", "leave out classes \\[7\\]"),
    ("0,1,2|3,4,5,6,7|8,9,10", "name classes \\[10\\].*0..9"),
    ("0,1,2|3,4,5,6,7|8,9,2", "classes \\[2\\] appear more than once"),
])
def test_a_bad_user_grouping_is_a_clear_spec_error(groups, message):
    with pytest.raises(SpecError, match=message):
        make_spec("digits", 10, "subset-kd", params={"groups": groups})


def test_a_suite_file_gives_its_own_grouping_and_weighting(tmp_path):
    from bkdbench.specs.suites import SuiteError, load_suite

    suite = tmp_path / "skd.yaml"
    suite.write_text("name: skd\ndatasets: [digits]\nimbalance: [10]\nseeds: 1\nmethods:\n"
                     "  - {method: subset-kd, params: {groups: '0,1,2,3,4 | 5,6,7,8,9', weighting: instance}}\n")
    loaded = load_suite(str(suite))
    loaded.check()
    (spec,) = loaded.expand()
    assert spec.params["groups"] == "0,1,2,3,4|5,6,7,8,9" and spec.params["weighting"] == "instance"
    assert [t.train_classes for t in spec.teachers] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    suite.write_text(suite.read_text().replace("5,6,7,8,9'", "5,6,7,8'"))
    with pytest.raises((SpecError, SuiteError), match=r"leave out classes \[9\]"):
        load_suite(str(suite)).expand()


# ------------------------------------------------------------------------------------------------
# Through `bkdbench train`: subset teachers first, then the student
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread_for_module):
    results = tmp_path_factory.mktemp("subset-kd")
    result = CliRunner().invoke(app, ["train", "--dataset", "digits", "--imbalance", "10", "--method", "subset-kd",
                                      "--epochs", "3", "--results", str(results)])
    rows, bad = read_rows(Path(results) / "leaderboard")
    return result, rows, bad


def _params(value):
    return json.loads(value) if isinstance(value, str) else dict(value)


def test_bkdbench_train_trains_the_three_subset_teachers_first_then_the_student(trained):
    result, rows, bad = trained
    assert result.exit_code == 0, result.output
    spec = make_spec("digits", 10, "subset-kd", epochs=3)
    order = [result.output.find(f"({t.run_id})") for t in spec.teachers]
    assert all(i >= 0 for i in order) and order == sorted(order), result.output
    assert bad == [] and sorted(rows.method) == ["ce", "ce", "ce", "subset-kd"]
    student = rows[rows.method == "subset-kd"].iloc[0]
    assert student.run_id == spec.run_id
    assert student.teacher_run_id == ",".join(t.run_id for t in spec.teachers)
    assert len(student.per_class_acc) == 10 and 0 <= student.top1 <= 100


def test_a_subset_teachers_row_names_its_classes_and_scores_only_them(trained):
    _, rows, _ = trained
    teachers = rows[rows.method == "ce"]
    classes = sorted(_params(p)["classes"] for p in teachers.params)
    assert classes == ["0,1,2", "3,4,5,6,7", "8,9"]
    for _, row in teachers.iterrows():
        k = len(_params(row.params)["classes"].split(","))
        assert len(row.per_class_acc) == k
