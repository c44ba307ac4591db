"""The validation split covers every class (issue "Numbers a reviewer can trust", §1).

Expected values are computed here independently: the reference subsampling is conftest's own
transcription (``reference_longtail``), the counts are written out by hand, and the every-class
rule is transcribed below in plain NumPy ("each class gives its first V unused images; a class
short of them gives the last of its kept images in the reference order").
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from bkdbench.data import load_longtail
from bkdbench.data.splits import classes_without_validation, kept_class_counts, validation_count
from bkdbench.data.registry import get_dataset
from bkdbench.leaderboard.store import read_rows, write_row
from bkdbench.specs import SpecError, make_spec, spec_columns
from bkdbench.specs.suites import SuiteError, load_suite
from cifar_files import image_ids, read_labels

CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # = 12,406 (Cao et al. 2019)
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def expected_every_class(labels, counts, per_class, data_seed, reference_longtail):
    """The every-class rule in plain NumPy over the reference procedure: (train idx, val idx)."""
    kept, rest = reference_longtail(labels, counts, data_seed)
    train, val, start = [], [], 0
    for c, n in enumerate(counts):
        own = kept[start:start + n]
        start += n
        spare = rest[c][:per_class]
        short = per_class - len(spare)
        if short > 0:
            short = min(short, n - 1)
            train.append(own[:n - short])
            val.append(np.concatenate([spare, own[n - short:]]))
        else:
            train.append(own)
            val.append(spare)
    return np.concatenate(train), np.concatenate(val)


# ---------------------------------------------------------------- CIFAR on generated full-size files


def test_cifar10_if100_every_class_covers_the_head(cifar_root, reference_longtail):
    labels = read_labels(cifar_root / "cifar-10-batches-py", CIFAR10_FILES, b"labels")
    kept, rest = reference_longtail(labels, CIFAR10_IF100, 0)
    head_kept = kept[:5000]  # class 0 first, in the reference order

    data = load_longtail("cifar10", 100, data_dir=cifar_root)  # the default split

    assert len(data.train_y) == 12386  # 12,406 − 20: only the head gives images, 20 of them
    assert data.class_counts == [4980] + CIFAR10_IF100[1:]
    np.testing.assert_array_equal(np.bincount(data.val_y, minlength=10), [20] * 10)
    _, train_idx = image_ids(data.train_x)
    _, val_idx = image_ids(data.val_x)
    # the training set is the reference one minus the head's last 20 kept images, in the same order
    np.testing.assert_array_equal(train_idx, np.concatenate([head_kept[:4980], kept[5000:]]))
    # the head's validation images are exactly those 20; the other classes' are their first 20 unused
    np.testing.assert_array_equal(np.sort(val_idx[data.val_y == 0]), np.sort(head_kept[4980:]))
    for c in range(1, 10):
        np.testing.assert_array_equal(val_idx[data.val_y == c], rest[c][:20])
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    np.testing.assert_array_equal(data.val_y, labels[val_idx])
    exp_train, exp_val = expected_every_class(labels, CIFAR10_IF100, 20, 0, reference_longtail)
    np.testing.assert_array_equal(train_idx, exp_train)
    np.testing.assert_array_equal(val_idx, exp_val)


def test_cifar10_reference_split_is_the_reference_training_set(cifar_root, reference_longtail):
    labels = read_labels(cifar_root / "cifar-10-batches-py", CIFAR10_FILES, b"labels")
    kept, rest = reference_longtail(labels, CIFAR10_IF100, 0)
    data = load_longtail("cifar10", 100, data_dir=cifar_root, split="reference")
    _, train_idx = image_ids(data.train_x)
    np.testing.assert_array_equal(train_idx, kept)  # index-identical, 12,406 images
    assert len(train_idx) == 12406
    np.testing.assert_array_equal(np.bincount(data.val_y, minlength=10), [0] + [20] * 9)
    assert classes_without_validation(get_dataset("cifar10"), 100, "exp", cifar_root) == [0]


def test_cifar10_step_profile_covers_the_whole_head(cifar_root, reference_longtail):
    labels = read_labels(cifar_root / "cifar-10-batches-py", CIFAR10_FILES, b"labels")
    counts = [5000] * 5 + [50] * 5  # step, IF 100: 25,250 images in the reference
    data = load_longtail("cifar10", 100, "step", data_dir=cifar_root)
    assert len(data.train_y) == 25250 - 5 * 20
    np.testing.assert_array_equal(np.bincount(data.val_y, minlength=10), [20] * 10)
    exp_train, exp_val = expected_every_class(labels, counts, 20, 0, reference_longtail)
    np.testing.assert_array_equal(image_ids(data.train_x)[1], exp_train)
    np.testing.assert_array_equal(image_ids(data.val_x)[1], exp_val)
    reference = load_longtail("cifar10", 100, "step", data_dir=cifar_root, split="reference")
    np.testing.assert_array_equal(np.bincount(reference.val_y, minlength=10), [0] * 5 + [20] * 5)
    assert classes_without_validation(get_dataset("cifar10"), 100, "step", cifar_root) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("data_seed", [0, 4])
def test_cifar100_if100_and_if10(cifar_root, reference_longtail, data_seed):
    labels = read_labels(cifar_root / "cifar-100-python", ["train"], b"fine_labels")
    for factor, reference_size, size in ((100, 10847, 10827), (10, 19573, 19545)):
        counts = [int(500 * (1 / factor) ** (i / 99)) for i in range(100)]
        assert sum(counts) == reference_size
        data = load_longtail("cifar100", factor, data_seed=data_seed, data_dir=cifar_root)
        assert len(data.train_y) == size  # IF 10: class 0 gives 20, class 1 (488 kept, 12 unused) gives 8
        np.testing.assert_array_equal(np.bincount(data.val_y, minlength=100), [20] * 100)
        exp_train, exp_val = expected_every_class(labels, counts, 20, data_seed, reference_longtail)
        np.testing.assert_array_equal(image_ids(data.train_x)[1], exp_train)
        np.testing.assert_array_equal(image_ids(data.val_x)[1], exp_val)
    assert kept_class_counts(get_dataset("cifar100"), 10, "exp", cifar_root)[:3] == [480, 480, 477]  # 500, 488, 477 kept; 0, 12, 23 unused


def test_kept_class_counts_follow_the_split(cifar_root):
    info = get_dataset("cifar10")
    assert kept_class_counts(info, 100, "exp", cifar_root) == [4980] + CIFAR10_IF100[1:]
    assert kept_class_counts(info, 100, "exp", cifar_root, split="reference") == CIFAR10_IF100


# ---------------------------------------------------------------- digits (embedded)


@pytest.mark.parametrize("factor,counts", [
    (10, [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]),
    (50, [100, 64, 41, 27, 17, 11, 7, 4, 3, 2]),
    (100, [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]),
])
def test_digits_both_splits_agree(factor, counts):
    # int(100 · (1/IF)^(i/9)) by hand; every digits class has 24+ unused images, so nothing moves.
    every = load_longtail("digits", factor)
    reference = load_longtail("digits", factor, split="reference")
    assert every.class_counts == reference.class_counts == counts
    assert len(every.train_y) == sum(counts) and len(every.val_y) == 100
    for name in ("train_x", "train_y", "val_x", "val_y"):
        np.testing.assert_array_equal(getattr(every, name), getattr(reference, name))
    np.testing.assert_array_equal(np.bincount(every.val_y, minlength=10), [10] * 10)


def test_a_class_always_keeps_one_training_image(reference_longtail):
    from bkdbench.data.longtail import every_class_split, longtail_indices, unused_indices

    targets = np.repeat(np.arange(3), [6, 6, 6])
    np.random.RandomState(0).shuffle(targets)
    kept = longtail_indices(targets, 6, n_max=6)  # keeps 6, 2, 1: class 0 has no unused image
    train, val = every_class_split(targets, kept, unused_indices(targets, 6, n_max=6), per_class=10)
    # V = 10 exceeds every class: class 0 gives 5 of its 6 kept, class 1 its 4 unused + 1 of 2 kept,
    # class 2 its 5 unused (and keeps its only image)
    assert np.bincount(targets[train], minlength=3).tolist() == [1, 1, 1]
    assert np.bincount(targets[val], minlength=3).tolist() == [5, 5, 5]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(18))


def test_unknown_split_is_refused():
    from bkdbench.data import DataError
    from bkdbench.specs import SpecError

    with pytest.raises(DataError, match="every-class, reference"):
        load_longtail("digits", 10, split="balanced")
    with pytest.raises(SpecError, match="unknown split"):
        make_spec("digits", 10, split="balanced")


# ---------------------------------------------------------------- identity, suites, leaderboard

RUN_ID_BEFORE_SPLIT = "887116c667359b63"  # make_spec("digits", 10, "ce").run_id before the split existed (protocol 1)


def test_split_is_part_of_the_run_identity():
    every, reference = make_spec("digits", 10), make_spec("digits", 10, split="reference")
    assert every.split == "every-class" and reference.split == "reference"
    # the old runs were reference runs, but trained without the per-step warm-up: a new protocol, a new id
    assert RUN_ID_BEFORE_SPLIT not in (reference.run_id, every.run_id) and every.run_id != reference.run_id
    assert json.loads(every.canonical_json())["split"] == "every-class"
    assert json.loads(reference.canonical_json())["split"] == "reference"
    assert spec_columns(every)["split"] == "every-class" and spec_columns(reference)["split"] == "reference"


@pytest.mark.parametrize("method", ["bkd", "cbd", "ssd-lt", "crt"])
def test_teachers_share_their_students_split(method):
    for split in ("every-class", "reference"):
        student = make_spec("digits", 10, method, split=split, epochs=2)
        assert student.prerequisites and all(t.split == split for t in student.prerequisites)


def test_a_given_teacher_must_share_the_split():
    from bkdbench.specs import SpecError

    teacher = make_spec("digits", 10, split="reference")
    assert make_spec("digits", 10, "kd", teacher=teacher, split="reference").teacher == teacher
    with pytest.raises(SpecError, match="validation split"):
        make_spec("digits", 10, "kd", teacher=teacher)


@pytest.mark.parametrize("key,value,override,bad", [("split", "reference", "every-class", "half"),
                                                ("val_per_class", 30, 20, 0)])
def test_suite_validation_keys_and_overrides(tmp_path, key, value, override, bad):
    head = "datasets: [digits]\nimbalance: [10]\nmethods: [ce, bkd]\nseeds: 1\n"
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\n{head}{key}: {value}\n")
    suite = load_suite(str(path))
    assert {getattr(s, key) for s in suite.expand()} == {value}
    assert {getattr(s, key) for s in suite.expand(**{key: override})} == {override}
    assert suite.expand()[0].run_id == make_spec("digits", 10, "ce", seed=0, **{key: value}).run_id
    default = tmp_path / "d.yaml"
    default.write_text(f"name: d\n{head}")
    assert {(s.split, s.val_per_class) for s in load_suite(str(default)).expand()} == {("every-class", None)}
    wrong = tmp_path / "b.yaml"
    wrong.write_text(f"name: b\n{head}{key}: {bad}\n")
    with pytest.raises(SuiteError, match=key):
        load_suite(str(wrong))


def test_leaderboard_split_column_and_older_rows(tmp_path):
    board = tmp_path / "leaderboard"
    spec = make_spec("digits", 10)
    write_row(board, {**spec_columns(spec), "status": "finished", "top1": 50.0})
    old = pa.table({"run_id": ["old"], "schema_version": pa.array([1], pa.int32()), "method": ["ce"],
                    "status": ["finished"], "top1": [40.0]})
    pq.write_table(old, board / "old.parquet")  # a file written before the split column existed
    rows, bad = read_rows(board)
    assert bad == []
    assert dict(zip(rows.run_id, rows.split)) == {spec.run_id: "every-class", "old": "reference"}
    assert read_rows(board, split="reference")[0].run_id.tolist() == ["old"]


def test_cli_split_option(tmp_path):
    from bkdbench.cli import app

    result = CliRunner().invoke(app, ["train", "--split", "half", "--results", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--split takes one of: every-class, reference" in result.output
    assert not (tmp_path / "r").exists()
    for command in (["train"], ["run"], ["sweep", "bkd"], ["ablate", "bkd"], ["leaderboard"]):
        assert "--split" in CliRunner().invoke(app, [*command, "--help"]).output


def test_reference_split_note_names_the_uncovered_classes_once(cifar_root, capsys):
    from bkdbench.cli.options import note_reference_split

    specs = [make_spec("cifar10", 100, m, split="reference", seed=s) for m in ("ce", "bkd") for s in (0, 1)]
    note_reference_split(specs + [make_spec("cifar10", 100)], cifar_root)
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert text.count("--split reference") == 1 and "cifar10-LT IF100 (1 of 10 classes: 0)" in text
    note_reference_split([make_spec("digits", 10, split="reference")])  # digits: every class has some
    captured = capsys.readouterr()
    assert "--split reference" not in captured.out + captured.err


# ---------------------------------------------------------------- --val-per-class: a larger validation split


def test_cifar10_if100_with_200_validation_images_a_class(cifar_root, reference_longtail):
    labels = read_labels(cifar_root / "cifar-10-batches-py", CIFAR10_FILES, b"labels")
    data = load_longtail("cifar10", 100, data_dir=cifar_root, val_per_class=200)
    # the head (no unused image) gives its last 200 kept ones; every other class its first 200 unused
    assert len(data.train_y) == 12406 - 200 and data.class_counts == [4800] + CIFAR10_IF100[1:]
    np.testing.assert_array_equal(np.bincount(data.val_y, minlength=10), [200] * 10)
    exp_train, exp_val = expected_every_class(labels, CIFAR10_IF100, 200, 0, reference_longtail)
    np.testing.assert_array_equal(image_ids(data.train_x)[1], exp_train)
    np.testing.assert_array_equal(image_ids(data.val_x)[1], exp_val)
    info = get_dataset("cifar10")
    assert kept_class_counts(info, 100, "exp", cifar_root, val_per_class=200) == [4800] + CIFAR10_IF100[1:]
    assert validation_count(info, 100, "exp", 0, cifar_root, val_per_class=200) == 2000
    assert validation_count(info, 100, "exp", 0, cifar_root) == 200  # the default: 20 a class
    # at most the unused images plus a tenth of the kept ones: the head has 0 + 5000 // 10 = 500
    make_spec("cifar10", 100, data_dir=cifar_root, val_per_class=500)
    with pytest.raises(SpecError, match="choose at most 500"):
        make_spec("cifar10", 100, data_dir=cifar_root, val_per_class=501)


def test_the_dataset_s_own_v_names_the_same_run_and_another_v_another():
    default = make_spec("digits", 10, "bkd")
    assert make_spec("digits", 10, "bkd", val_per_class=10).run_id == default.run_id  # digits' own V
    assert "val_per_class" not in default.canonical_json() and spec_columns(default)["val_per_class"] is None
    larger = make_spec("digits", 10, "bkd", val_per_class=30)
    assert larger.run_id != default.run_id and larger.val_per_class == 30
    assert json.loads(larger.canonical_json())["val_per_class"] == 30 and spec_columns(larger)["val_per_class"] == 30
    # digits' class 0 has 128 images and keeps 100 at IF 10, so 28 unused: V = 30 moves 2 of its kept ones
    assert load_longtail("digits", 10, val_per_class=30).class_counts == [98, 77, 59, 46, 35, 27, 21, 16, 12, 10]


@pytest.mark.parametrize("method", ["bkd", "cbd", "ssd-lt", "crt"])
def test_teachers_share_their_students_validation_images(method):
    student = make_spec("digits", 10, method, val_per_class=30, epochs=2)
    assert student.prerequisites and all(t.val_per_class == 30 for t in student.prerequisites)


def test_a_given_teacher_must_share_the_validation_images():
    teacher = make_spec("digits", 10, val_per_class=30)
    assert make_spec("digits", 10, "kd", teacher=teacher, val_per_class=30).teacher == teacher
    with pytest.raises(SpecError, match=r"'every-class' \(30 a class\) validation split, the student uses 'every-class'"):
        make_spec("digits", 10, "kd", teacher=teacher)


def test_a_v_that_cannot_apply_is_refused(tmp_path):
    # digits at IF 10: class 0 keeps 100 of 128 (28 unused), so at most 28 + 10 = 38; class 1 keeps 77 of
    # 132 (55 unused): 55 + 7 = 62
    make_spec("digits", 10, val_per_class=38)
    with pytest.raises(SpecError, match=r"class 0 \(0\) has 28 unused training images, so 11 of its 100 kept ones "
                                        r"would move to validation, more than a tenth, .* choose at most 38"):
        make_spec("digits", 10, val_per_class=39)
    assert make_spec("digits", 10, val_per_class=500, split="reference").val_per_class == 500  # moves nothing
    with pytest.raises(SpecError, match="an integer >= 1"):
        make_spec("digits", 10, val_per_class=0)
    from test_imagefolder import balanced, write_folder

    write_folder(tmp_path, balanced(10, 2, val=3))
    with pytest.raises(SpecError, match="has a validation split of its own"):
        make_spec("imagefolder", 2, data_dir=tmp_path, val_per_class=5)


def test_cli_val_per_class_option(tmp_path):
    from bkdbench.cli import app

    result = CliRunner().invoke(app, ["train", "--val-per-class", "79", "--results", str(tmp_path / "r")])
    assert result.exit_code == 2 and "choose at most 38" in " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    for command in (["train"], ["run"], ["sweep", "bkd"], ["ablate", "bkd"]):
        assert "--val-per-class" in " ".join(CliRunner().invoke(app, [*command, "--help"]).output.split())


def test_leaderboard_keeps_another_v_apart_and_retrains_it_by_command(tmp_path):
    from bkdbench.leaderboard.aggregate import with_labels
    from bkdbench.leaderboard.tables import run_records

    board = tmp_path / "leaderboard"
    specs = [make_spec("digits", 10), make_spec("digits", 10, val_per_class=30)]
    for spec in specs:
        write_row(board, {**spec_columns(spec), "status": "finished", "top1": 50.0})
    rows, _ = read_rows(board)
    labels = dict(zip(rows.run_id, with_labels(rows).label))
    assert labels == {specs[0].run_id: "ce", specs[1].run_id: "ce (val_per_class=30)"}  # two cells, not two seeds
    commands = {r["run_id"]: r["command"] for r in run_records(rows)}
    assert "--val-per-class" not in commands[specs[0].run_id]
    assert commands[specs[1].run_id].endswith("--val-per-class 30") or "--val-per-class 30 " in commands[specs[1].run_id]


def test_another_v_is_another_sweep():
    from dataclasses import replace

    from bkdbench.orchestrate.sweeps.driver import SweepConfig

    cfg = SweepConfig(method="bkd", dataset="digits", imbalance=10.0, space_file="x.yaml", space_hash="abc")
    assert replace(cfg, val_per_class=30).sweep_id != cfg.sweep_id
    assert replace(cfg, val_per_class=None).sweep_id == cfg.sweep_id
