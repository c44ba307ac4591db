"""`bkdbench train` on ImageNet-LT from its split lists, end to end in a subprocess: a generated tree of
the real shape (1,000 classes, the three ImageNet_LT_*.txt lists in ROOT/splits/; each class its own
colour, so learnable), decoded once into a 32 px store by a process pool, 28 px random-resized crops,
six epochs of ResNet-10 that must beat guessing; and bad lists ending with exit 2, one line naming the
file and line, and nothing written."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from helpers.cli import cli_env, invoke_cli, run_cli
from helpers.files import assert_nothing_written, snapshot
from helpers.learning import binomial_bound
from splitlist_files import write_imagenet_lt

COUNTS = (20,) * 10 + (1,) * 990  # 1,190 training images; 1,000 val and 1,000 test (1 per class)
# 6 epochs: the ten 20-image classes are learnt (here: 7 of their 10 test images and 13 of all 1,000
# right; 4 epochs: 3 and 6; 8 epochs: 10 and 21), where guessing gets 2 of 10 or 7 of 1,000 right with
# probability under 0.0005 (binomial_bound)
EPOCHS = 6


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    write_imagenet_lt(root, counts=COUNTS, val_per_class=1, test_per_class=1)
    return root


def train_args(root: Path, results: Path, *extra) -> list:
    return ["train", "--dataset", "imagenet-lt", "--data-dir", root, "--imbalance", "natural", "--image-size", 28,
            "--model", "resnet10", "--epochs", EPOCHS, "--threads", 2, "--results", results, *extra]


def test_six_epochs_of_imagenet_lt_at_28px_beat_guessing(imagenet_root, tmp_path):
    env = cli_env(BKDBENCH_DECODE_WORKERS=2)
    result = run_cli(train_args(imagenet_root, tmp_path / "results"), folder=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "decoding imagenet-lt at 32px" in out and "images/s" in out
    stores = list((tmp_path / "cache" / "splitlist").iterdir())
    assert len(stores) == 1 and stores[0].name.startswith("imagenet-lt-")  # decoded once, read thereafter
    rows = pd.read_parquet(tmp_path / "results" / "leaderboard")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row.dataset == "imagenet-lt" and row.model == "resnet10" and row.epochs == EPOCHS
    assert row.imbalance_factor == 20.0 and math.isfinite(row.val_top1)
    assert list(row.class_counts) == list(COUNTS)
    # many > 100, medium 20..100, few < 20 training images: the ten 20-image classes are medium-shot
    assert math.isnan(row.many) and math.isfinite(row.few)
    # one test image a class, so balanced top-1 is the share of the 1,000 right, medium that of 10
    assert row.top1 >= binomial_bound(1000, 1000), row.top1  # 0.7 %: 7 right
    assert row.medium >= binomial_bound(1000, 10), row.medium  # 20 %: 2 right
    again = run_cli(train_args(imagenet_root, tmp_path / "results"), folder=tmp_path, env=env, timeout=600)
    assert again.returncode == 0 and "already in the leaderboard" in again.stdout + again.stderr
    assert "decoding" not in again.stdout + again.stderr  # the cache: no second decode


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    """2 training images a class, written once for the refusal tests (each works on its own copy)."""
    root = tmp_path_factory.mktemp("imagenet-small")
    write_imagenet_lt(root, counts=(2,) * 1000, val_per_class=1, test_per_class=1)
    return root


def _copy_tree(src: Path, dst: Path) -> Path:
    """Images hard-linked (4,000 links instead of 4,000 JPEG encodings), the lists copied, so a test may
    edit its lists; one that edits an image unlinks it first."""
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("splits"))
    shutil.copytree(src / "splits", dst / "splits")
    return dst


def _break_list(root: Path, split: str, line: int, text: str) -> Path:
    path = root / "splits" / f"ImageNet_LT_{split}.txt"
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("split,line,text,message", [
    ("train", 7, "train/n00000000/n00000000_6.JPEG six", "label 'six' is not an integer"),
    ("val", 3, "train/n00000002/n00000002_val0.JPEG 1000", "label 1000 is out of range 0..999"),
    ("test", 2, "val/n00000000/ILSVRC2012_val_00000000.JPEG 0", "is listed twice (first on line 1)"),
])
def test_a_bad_list_exits_2_naming_file_and_line_with_nothing_written(small_tree, tmp_path, split, line, text,
                                                                      message):
    root = _copy_tree(small_tree, tmp_path / "imagenet")
    path = _break_list(root, split, line, text)
    before = snapshot(tmp_path)
    result = invoke_cli(train_args(root, tmp_path / "results"), folder=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{path}:{line}:" in err and message in err, err
    assert_nothing_written(before, tmp_path)


def test_a_truncated_image_exits_2_naming_it_and_its_list_line(small_tree, tmp_path):
    root = _copy_tree(small_tree, tmp_path / "imagenet")
    image = root / "train/n00000005/n00000005_1.JPEG"
    head = image.read_bytes()[:150]
    image.unlink()  # a link of the shared tree's file: break it, not the file
    image.write_bytes(head)
    before = snapshot(tmp_path)
    result = invoke_cli(train_args(root, tmp_path / "results"), folder=tmp_path, env={"BKDBENCH_DECODE_WORKERS": 1})
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr.strip().splitlines()[-1]
    assert f"ImageNet_LT_train.txt:12: {image} is not a readable image" in err, result.stderr
    assert_nothing_written(before, tmp_path)


def test_a_subsampled_profile_exits_2_with_nothing_written(small_tree, tmp_path):
    root = _copy_tree(small_tree, tmp_path / "imagenet")
    before = snapshot(tmp_path)
    args = [a if a != "natural" else "10" for a in train_args(root, tmp_path / "results")]
    result = invoke_cli(args, folder=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "imagenet-lt is long-tailed already and is used as it is: pass --imbalance natural" in result.stderr
    assert_nothing_written(before, tmp_path)
