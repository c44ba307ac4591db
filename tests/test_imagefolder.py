"""The imagefolder dataset: small generated folders (PNG, so pixels are exact), the cache, the
long-tail profiles, bad input, run identity, and a subset of the real CIFAR-10 JPEG archive."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bkdbench.cli import app
from bkdbench.data import DataError, dataset_info, decode, imagefolder, load_longtail, longtail_counts
from bkdbench.data.splits import validation_count
from bkdbench.specs import SpecError, make_spec, spec_columns
from bkdbench.specs.suites import load_suite
from bkdbench.training.train import train
from helpers.files import nothing_written, tree

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# make_spec(...).run_id of the fixed datasets, measured before imagefolder existed: must never change.
# Run ids of protocol 1 (before per-step warm-up, every-class validation and student seeds): the
# same specs train differently now, so none of them may come back.
RUN_IDS_PROTOCOL_1 = {
    ("digits", 10, "ce"): "887116c667359b63",
    ("cifar10", 100, "ce"): "241ec695718fe3db",
    ("cifar10", 10, "bkd"): "a9507cd73687ed96",  # carries a teacher spec
    ("fashion-mnist", 100, "ldam-drw"): "8cf20535dd5fce40",
}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache folder."""
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "imagefolder"


def write_folder(root: Path, counts: dict[str, dict[str, int]], size=(8, 8), seed=0, fmt="png") -> dict[str, np.ndarray]:
    """``counts``: split → class → number of images. Returns relative path → the H×W×3 pixels written."""
    rng = np.random.RandomState(seed)
    written = {}
    for split, classes in counts.items():
        for name, n in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.randint(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
                rel = f"{split}/{name}/{i:03d}.{fmt}"
                Image.fromarray(pixels).save(root / rel)
                written[rel] = pixels
    return written


def balanced(n_train: int, n_test: int, classes=("a", "b", "c"), val: int = 0) -> dict:
    out = {"train": {c: n_train for c in classes}, "test": {c: n_test for c in classes}}
    if val:
        out["val"] = {c: val for c in classes}
    return out


# ---------------------------------------------------------------------------------- decoding, labels


def test_pixels_labels_and_sorted_class_order(tmp_path):
    # Created out of order: labels must follow the sorted folder names, not creation order.
    counts = {"train": {"cat": 2, "ant": 3, "bee": 1}, "test": {"bee": 1, "cat": 1, "ant": 2}}
    written = write_folder(tmp_path, counts, size=(8, 6))
    data = imagefolder.load_folder(tmp_path)
    arrays = data.arrays
    assert arrays.classes == ["ant", "bee", "cat"]
    assert arrays.train_x.shape == (6, 3, 8, 6) and arrays.train_x.dtype == np.uint8
    assert arrays.test_x.shape == (4, 3, 8, 6)
    assert arrays.val_x is None
    assert arrays.train_y.tolist() == [0, 0, 0, 1, 2, 2]
    assert arrays.test_y.tolist() == [0, 0, 1, 2]
    expected_train = [written[f"train/{c}/{i:03d}.png"] for c, n in (("ant", 3), ("bee", 1), ("cat", 2)) for i in range(n)]
    np.testing.assert_array_equal(arrays.train_x, np.stack(expected_train).transpose(0, 3, 1, 2))
    expected_test = [written[f"test/{c}/{i:03d}.png"] for c, n in (("ant", 2), ("bee", 1), ("cat", 1)) for i in range(n)]
    np.testing.assert_array_equal(arrays.test_x, np.stack(expected_test).transpose(0, 3, 1, 2))
    # Normalisation statistics: per channel over the training pixels, computed here independently.
    train = np.stack(expected_train).astype(np.float64) / 255.0
    np.testing.assert_allclose(data.mean, train.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(data.std, train.std(axis=(0, 1, 2)), rtol=1e-12)


def test_grey_and_rgba_become_rgb_and_jpeg_decodes(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "x").mkdir(parents=True)
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "train/x/grey.png")
    rgba = np.dstack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 40)])
    Image.fromarray(rgba).save(tmp_path / "train/x/rgba.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "test/x/flat.jpg", quality=95)
    x = imagefolder.load_folder(tmp_path).arrays
    np.testing.assert_array_equal(x.train_x[0], np.stack([grey] * 3))
    np.testing.assert_array_equal(x.train_x[1], np.stack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30)]))
    assert np.abs(x.test_x[0].astype(int) - 200).max() <= 2  # a flat JPEG decodes (almost) exactly


def test_cache_is_reused_then_invalidated_by_touch_and_by_new_file(tmp_path, own_cache, monkeypatch):
    write_folder(tmp_path / "data", balanced(3, 2))
    first = imagefolder.load_folder(tmp_path / "data")
    assert first.decoded and first.cache_file.is_file() and first.cache_file.parent == own_cache
    assert tree(own_cache) == [first.cache_file.name]  # no temporary file left behind

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    real_decode = decode.decode_bytes
    monkeypatch.setattr(decode, "decode_bytes", no_decoding)
    second = imagefolder.load_folder(tmp_path / "data")
    assert not second.decoded and second.cache_file == first.cache_file and second.data_key == first.data_key
    np.testing.assert_array_equal(second.arrays.train_x, first.arrays.train_x)
    assert second.mean == first.mean and second.arrays.classes == first.arrays.classes

    target = tmp_path / "data/train/b/001.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched: content unchanged
    with pytest.raises(AssertionError, match="decoded although"):
        imagefolder.load_folder(tmp_path / "data")
    monkeypatch.setattr(decode, "decode_bytes", real_decode)
    touched = imagefolder.load_folder(tmp_path / "data")
    assert touched.decoded and touched.cache_file != first.cache_file
    assert touched.data_key == first.data_key  # same bytes: same data, same run ids

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data/train/c/new.png")
    added = imagefolder.load_folder(tmp_path / "data")
    assert added.decoded and len(added.arrays.train_y) == 10 and added.data_key != first.data_key


def test_a_broken_cache_file_is_rebuilt(tmp_path):
    write_folder(tmp_path / "data", balanced(2, 1))
    first = imagefolder.load_folder(tmp_path / "data")
    first.cache_file.write_bytes(b"not a torch file")
    again = imagefolder.load_folder(tmp_path / "data")
    assert again.decoded
    np.testing.assert_array_equal(again.arrays.train_x, first.arrays.train_x)


def test_mixed_sizes_need_image_size_which_resizes(tmp_path):
    write_folder(tmp_path, balanced(2, 1), size=(8, 8))
    Image.fromarray(np.zeros((16, 12, 3), np.uint8)).save(tmp_path / "train/b/big.png")
    with pytest.raises(DataError, match="--image-size") as err:
        imagefolder.load_folder(tmp_path)
    assert str(tmp_path / "train/b/big.png") in str(err.value)
    resized = imagefolder.load_folder(tmp_path, image_size=8).arrays
    assert resized.train_x.shape == (7, 3, 8, 8) and resized.test_x.shape == (3, 3, 8, 8)
    assert int(resized.train_x[4].max()) == 0  # the black 16×12 image, now 8×8 (sorted after 001.png)


# ------------------------------------------------------------------------------------------ profiles


def test_balanced_folder_follows_the_reference_long_tail(tmp_path, reference_longtail, reference_counts):
    write_folder(tmp_path, balanced(20, 2))
    data = load_longtail("imagefolder", 4, data_dir=tmp_path, data_seed=3, split="reference")
    expected_counts = reference_counts(20, 3, 4)  # [20, 10, 5]
    assert data.class_counts == expected_counts == longtail_counts(20, 3, 4)
    full = imagefolder.load_folder(tmp_path).arrays
    kept, rest = reference_longtail(full.train_y, expected_counts, 3)
    np.testing.assert_array_equal(data.train_x, full.train_x[kept])
    np.testing.assert_array_equal(data.train_y, full.train_y[kept])
    # Validation: up to val_per_class = max(1, 20 // 10) = 2 unused images per class; the head keeps all.
    val = np.concatenate([r[:2] for r in rest])
    assert data.val_y.tolist() == [1, 1, 2, 2]
    np.testing.assert_array_equal(data.val_x, full.train_x[val])
    assert not set(val.tolist()) & set(kept.tolist())
    assert data.shots == {"many": [], "medium": [0], "few": [1, 2]}  # from the counts kept: few < 20
    assert len(data.test_y) == 6


def test_shot_split_uses_the_counts_kept(tmp_path):
    write_folder(tmp_path, {"train": {"a": 25, "b": 25}, "test": {"a": 1, "b": 1}})
    data = load_longtail("imagefolder", 5, data_dir=tmp_path)
    # kept 25 and 5; V = max(1, 25 // 10) = 2 and the head has no unused image: it gives 2 of its kept
    assert data.class_counts == [23, 5]
    assert data.shots == {"many": [], "medium": [0], "few": [1]}
    assert validation_count(dataset_info("imagefolder", tmp_path), 5, data_dir=tmp_path) == 2 + 2  # what a sweep says


def test_val_folder_is_the_validation_split(tmp_path):
    written = write_folder(tmp_path, balanced(10, 2, val=3))
    data = load_longtail("imagefolder", 2, data_dir=tmp_path)
    assert data.class_counts == [10, 7, 5]
    assert data.val_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert validation_count(dataset_info("imagefolder", tmp_path), 2, data_dir=tmp_path) == 3 * 3
    np.testing.assert_array_equal(data.val_x[4], written["val/b/001.png"].transpose(2, 0, 1))


def test_natural_keeps_every_image_and_records_its_own_imbalance(tmp_path):
    write_folder(tmp_path, {"train": {"a": 10, "b": 4, "c": 3}, "test": {"a": 2, "b": 2, "c": 2},
                            "val": {"a": 1, "b": 1, "c": 2}})
    spec = make_spec("imagefolder", "natural", data_dir=tmp_path)
    assert spec.profile == "natural" and spec.imbalance_factor == 3.33  # 10 / 3, two decimals
    assert make_spec("imagefolder", 3.33, profile="natural", data_dir=tmp_path).run_id == spec.run_id
    with pytest.raises(SpecError, match="3.33"):
        make_spec("imagefolder", 10, profile="natural", data_dir=tmp_path)
    data = load_longtail("imagefolder", spec.imbalance_factor, spec.profile, data_dir=tmp_path)
    assert data.class_counts == [10, 4, 3] and len(data.train_y) == 17
    assert validation_count(dataset_info("imagefolder", tmp_path), spec.imbalance_factor, "natural",
                            data_dir=tmp_path) == 1 + 1 + 2
    assert data.val_y.tolist() == [0, 1, 2, 2]


def test_natural_without_a_val_folder_is_refused(tmp_path):
    write_folder(tmp_path, {"train": {"a": 6, "b": 2}, "test": {"a": 1, "b": 1}})
    with pytest.raises(SpecError, match="val/"):
        make_spec("imagefolder", "natural", data_dir=tmp_path)


def test_subsampling_a_folder_that_is_too_small_names_the_class(tmp_path):
    write_folder(tmp_path, {"train": {"a": 10, "b": 2}, "test": {"a": 1, "b": 1}})
    with pytest.raises(DataError, match="natural") as err:
        load_longtail("imagefolder", 2, data_dir=tmp_path)  # keeps 10 and 5, but b has 2
    assert str(tmp_path / "train" / "b") in str(err.value)


# --------------------------------------------------------------------------------------- bad input


def _mkdirs(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).mkdir(parents=True, exist_ok=True)


def _missing_train(root):
    write_folder(root, {"test": {"a": 1}})
    return root / "train"


def _missing_test(root):
    write_folder(root, {"train": {"a": 1}})
    return root / "test"


def _class_missing_from_test(root):
    write_folder(root, {"train": {"a": 1, "b": 1}, "test": {"a": 1}})
    return root / "test" / "b"


def _class_only_in_test(root):
    write_folder(root, {"train": {"a": 1}, "test": {"a": 1, "zebra": 1}})
    return root / "test" / "zebra"


def _class_missing_from_val(root):
    write_folder(root, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}, "val": {"b": 1}})
    return root / "val" / "a"


def _empty_class(root):
    write_folder(root, {"train": {"a": 1}, "test": {"a": 1}})
    _mkdirs(root, "train/b", "test/b")
    return root / "train" / "b"


def _not_an_image(root):
    write_folder(root, balanced(1, 1))
    (root / "train/b/notes.txt").write_text("hello")
    return root / "train/b/notes.txt"


def _corrupt_image(root):
    write_folder(root, balanced(1, 1))
    (root / "test/c/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return root / "test/c/broken.jpg"


def _empty_image_file(root):
    write_folder(root, balanced(1, 1))
    (root / "train/a/zero.png").write_bytes(b"")
    return root / "train/a/zero.png"


def _no_folder(root):
    return root / "nowhere"


BAD = [_missing_train, _missing_test, _class_missing_from_test, _class_only_in_test, _class_missing_from_val,
       _empty_class, _not_an_image, _corrupt_image, _empty_image_file, _no_folder]


@pytest.mark.parametrize("make_bad", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_bad_folders_raise_data_error_naming_the_path(tmp_path, make_bad):
    root = tmp_path / "data"
    root.mkdir()
    culprit = make_bad(root)
    data_dir = culprit if make_bad is _no_folder else root
    with pytest.raises(DataError) as err:
        imagefolder.load_folder(data_dir)
    assert str(culprit) in str(err.value)
    with pytest.raises(SpecError) as err:  # and make_spec says the same
        make_spec("imagefolder", 10, data_dir=data_dir)
    assert str(culprit) in str(err.value)


def test_hidden_files_are_ignored(tmp_path):
    write_folder(tmp_path, balanced(1, 1))
    (tmp_path / "train/a/.DS_Store").write_bytes(b"\0junk")
    assert len(imagefolder.load_folder(tmp_path).arrays.train_y) == 3


def test_imagefolder_without_data_dir_is_a_spec_error():
    with pytest.raises(SpecError, match="--data-dir"):
        make_spec("imagefolder", 10)
    with pytest.raises(SpecError, match="digits has fixed 8×8 images; image_size is for ") as refused:
        make_spec("digits", 10, image_size=16)
    named = str(refused.value).split("image_size is for ", 1)[1].split(", ")
    assert {"imagefolder", "imagenet-lt", "inat18", "places-lt"} <= set(named) and "digits" not in named


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("make_bad", [_missing_test, _corrupt_image, _no_folder], ids=["missing-test", "corrupt", "no-folder"])
def test_cli_train_exits_2_with_one_line(tmp_path, make_bad):
    root = tmp_path / "data"
    root.mkdir()
    culprit = make_bad(root)
    data_dir = culprit if make_bad is _no_folder else root
    with nothing_written(tmp_path):
        out = _cli("train", "--dataset", "imagefolder", "--data-dir", data_dir, "--results", tmp_path / "results")
    assert out.exit_code == 2, out.output
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(culprit) in lines[0], out.stderr


def test_cli_rejects_a_word_that_is_not_natural(tmp_path):
    out = _cli("train", "--dataset", "digits", "--imbalance", "lots", "--results", tmp_path)
    assert out.exit_code == 2 and "'natural'" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_run_with_a_bad_data_dir_exits_2_before_ray(tmp_path):
    out = _cli("run", "--suite", "cifar10-jpeg-lt-cpu", "--data-dir", tmp_path / "nowhere", "--results", tmp_path / "r")
    assert out.exit_code == 2 and str(tmp_path / "nowhere") in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("args,old_id", list(RUN_IDS_PROTOCOL_1.items()),
                         ids=[a[0] + "-" + a[2] for a in RUN_IDS_PROTOCOL_1])
def test_fixed_datasets_have_no_folder_fields_and_a_run_id_of_this_protocol(args, old_id):
    """A fixed dataset's spec carries no image-folder fields; its id is the first 16 hex digits of the
    SHA-256 of its canonical JSON, which names the protocol, so a protocol-1 result is never reused."""
    import hashlib
    import json

    from bkdbench.specs.runspec import PROTOCOL

    for split in ("every-class", "reference"):
        spec = make_spec(*args, split=split)
        text = spec.canonical_json()
        assert spec.data_key is None and "data_key" not in text and "image_size" not in text
        assert json.loads(text)["protocol"] == PROTOCOL == 2 and json.loads(text)["split"] == split
        assert spec.run_id == hashlib.sha256(text.encode()).hexdigest()[:16] != old_id


def test_different_folders_never_share_a_run_id(tmp_path):
    write_folder(tmp_path / "one", balanced(4, 1))
    shutil.copytree(tmp_path / "one", tmp_path / "copy", copy_function=shutil.copyfile)  # fresh mtimes
    write_folder(tmp_path / "two", balanced(4, 1))
    pixels = np.array(Image.open(tmp_path / "two/train/a/000.png"))
    pixels[0, 0, 0] ^= 1  # one bit of one pixel
    Image.fromarray(pixels).save(tmp_path / "two/train/a/000.png")
    spec = {name: make_spec("imagefolder", 2, "bkd", data_dir=tmp_path / name) for name in ("one", "copy", "two")}
    assert spec["one"].data_key and spec["one"].data_key != spec["two"].data_key
    assert spec["one"].run_id != spec["two"].run_id
    assert spec["one"].teacher.run_id != spec["two"].teacher.run_id
    assert spec["one"].teacher.data_key == spec["one"].data_key
    assert spec["one"].run_id == spec["copy"].run_id  # the same bytes are the same data
    assert spec_columns(spec["two"])["data_key"] == spec["two"].data_key  # the leaderboard tells folders apart
    assert spec_columns(make_spec("digits", 10))["data_key"] is None
    resized = make_spec("imagefolder", 2, "bkd", data_dir=tmp_path / "one", image_size=4)
    assert resized.run_id != spec["one"].run_id and resized.image_size == 4


def test_train_refuses_a_folder_the_run_was_not_made_for(tmp_path):
    write_folder(tmp_path / "one", balanced(4, 1))
    write_folder(tmp_path / "two", balanced(4, 1), seed=1)
    spec = make_spec("imagefolder", 2, data_dir=tmp_path / "one", model="cnn-small", epochs=1)
    with pytest.raises(DataError, match="other images"):
        train(spec, data_dir=tmp_path / "two", device="cpu")


def test_folder_info_sets_classes_statistics_and_defaults(tmp_path):
    write_folder(tmp_path, balanced(30, 1, classes=[f"c{i:02d}" for i in range(12)]), size=(16, 16))
    info = dataset_info("imagefolder", tmp_path)
    assert (info.num_classes, info.channels, info.image_size, info.n_max) == (12, 3, 16, 30)
    assert (info.val_per_class, info.pad, info.hflip) == (3, 2, True)
    assert info.method_defaults == {"bkd": {"cb_start": 0.0}}  # more than 10 classes: as CIFAR-100
    assert make_spec("imagefolder", 10, "bkd", data_dir=tmp_path).params["cb_start"] == 0.0


def test_jpeg_suites_validate_without_data_and_expand_with_it(tmp_path):
    # 100 per class: IF 100 keeps int(100 / 100) = 1 image of the tail (fewer would empty it: refused)
    write_folder(tmp_path, balanced(100, 1, classes=CIFAR10_CLASSES))
    for name in ("cifar10-jpeg-lt", "cifar10-jpeg-lt-cpu"):
        suite = load_suite(name)  # no folder needed to validate
        specs = suite.expand(data_dir=tmp_path)
        assert len(specs) == suite.size() == 78  # 13 methods (the sigmoid family among them) × 2 imbalance factors × 3 seeds
        key = dataset_info("imagefolder", tmp_path).data_key
        assert {s.data_key for s in specs} == {key}
        assert {s.imbalance_factor for s in specs} == {100.0, 10.0}
        bkd = next(s for s in specs if s.method == "bkd")
        assert bkd.params == make_spec("cifar10", 100, "bkd").params  # CIFAR-10's BKD defaults
        with pytest.raises(SpecError, match="--data-dir"):
            suite.expand()
