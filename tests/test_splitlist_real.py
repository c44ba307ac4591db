"""Real photographs through the large benchmarks' path: CIFAR-10's JPEGs (../shared/data) laid out as
an ImageNet-LT-format tree with long-tailed lists (ImageNet_LT_{train,val,test}.txt), decoded into
the store, and trained end to end at a small --image-size through ``train``, the same code a
``--dataset imagenet-lt`` run takes (a 10-class copy of the benchmark: ImageNet-LT itself has 1,000)."""
from __future__ import annotations

import math
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bkdbench.data.large import lists as splitlist, register as splitdata, store as splitstore
from bkdbench.data.large.imagenet_lt import IMAGENET_LT
from bkdbench.data.longtail import longtail_counts

ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"
COUNTS = longtail_counts(40, 10, 10.0, "exp")  # 40 .. 4 training images per class
VAL, TEST = 2, 10


@pytest.fixture(scope="module")
def cifar_lt_tree(tmp_path_factory):
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} is not here")
    root = tmp_path_factory.mktemp("cifar-lists")
    need = {"train": max(COUNTS) + VAL, "test": TEST}  # per class: the first files of each folder
    taken: dict[tuple[str, str], list[str]] = {}
    with tarfile.open(ARCHIVE) as tar:
        members = []
        for m in tar:
            parts = Path(m.name).parts
            if not (m.isfile() and m.name.endswith(".jpg") and len(parts) >= 3 and parts[-3] in need):
                continue
            got = taken.setdefault((parts[-3], parts[-2]), [])
            if len(got) < need[parts[-3]]:
                got.append(m.name)
                members.append(m)
            if len(taken) == 20 and all(len(v) == need[split] for (split, _), v in taken.items()):
                break  # the archive need not be read to its end
        tar.extractall(root, members=members, filter="data")
    classes = sorted({c for (_, c) in taken})
    assert len(classes) == 10
    lines = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(classes):
        train = sorted(taken[("train", cls)])
        lines["train"] += [f"{p} {label}" for p in train[: COUNTS[label]]]
        lines["val"] += [f"{p} {label}" for p in train[-VAL:]]
        lines["test"] += [f"{p} {label}" for p in sorted(taken[("test", cls)])]
    (root / "splits").mkdir()
    for split, split_lines in lines.items():
        (root / "splits" / f"ImageNet_LT_{split}.txt").write_text("\n".join(split_lines) + "\n")
    return root, classes


def test_real_jpegs_in_imagenet_lt_lists_train_end_to_end(cifar_lt_tree, tmp_path, monkeypatch):
    from bkdbench.specs import make_spec
    from bkdbench.training.train import train

    root, classes = cifar_lt_tree
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BKDBENCH_DECODE_WORKERS", "1")
    benchmark = replace(IMAGENET_LT, name="cifar10-lt-lists", num_classes=10)
    splitdata.register_benchmark(benchmark)
    listing = splitlist.scan(root, benchmark, splitlist.store_size_for(28))
    stored = splitstore.load_listing(listing).arrays
    assert stored.train_x.shape == (sum(COUNTS), 3, 32, 32) and stored.train_x.dtype == np.uint8
    assert stored.val_x.shape[0] == 10 * VAL and stored.test_x.shape[0] == 10 * TEST
    assert list(np.bincount(stored.train_y, minlength=10)) == COUNTS
    # CIFAR's images are 32×32: a 32 px store is each image as it is (no resize, no crop)
    from PIL import Image

    first = listing.splits["train"][0]
    assert np.array_equal(stored.train_x[0], np.asarray(Image.open(root / first.rel).convert("RGB")).transpose(2, 0, 1))
    assert listing.classes == tuple(classes)  # a class's name: the folder of its first training image

    spec = make_spec("cifar10-lt-lists", "natural", "ce", model="resnet8", recipe="cpu-short", epochs=2,
                     data_dir=root, image_size=28)
    assert spec.imbalance_factor == 10.0 and spec.data_key == listing.data_key
    result = train(spec, data_dir=root, device="cpu")
    history = result.history
    assert [h["epoch"] for h in history] == [0, 1] and all(math.isfinite(h["train_loss"]) for h in history)
    m = result.metrics
    assert math.isfinite(m["top1"]) and math.isfinite(m["val_top1"]) and 0 <= m["top1"] <= 100
    assert list(result.class_counts) == COUNTS
