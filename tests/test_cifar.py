"""Dataset file readers on generated files: CIFAR-10/100 pickles (the real layout, written by
``cifar_files``) and Fashion-MNIST IDX files, including the ways such files break.

Every generated CIFAR image carries its split and index in its first bytes (see ``cifar_files``), so
the tests can say exactly which source images landed in train / val / test and compare that with the
reference subsampling procedure computed here from the pickled labels."""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from bkdbench.data import DataError, get_dataset, load_longtail
from bkdbench.data import cifar as cifar_module
from cifar_files import image_ids, read_labels, write_cifar10, write_cifar100

CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CASES = [  # (dataset, IF, published training-set size)
    ("cifar10", 100, 12406), ("cifar10", 50, 13996), ("cifar10", 10, 20431),
    ("cifar100", 100, 10847), ("cifar100", 50, 12608), ("cifar100", 10, 19573),
]


def _layout(name):
    if name == "cifar10":
        return "cifar-10-batches-py", CIFAR10_TRAIN_FILES, ["test_batch"], b"labels", 10, 5000, 1000, 20
    return "cifar-100-python", ["train"], ["test"], b"fine_labels", 100, 500, 100, 20


# ---------------------------------------------------------------- long-tailed CIFAR on full-size files


@pytest.mark.parametrize("name,imbalance,size", CASES)
def test_longtail_cifar_sizes_and_images(cifar_root, name, imbalance, size, reference_longtail, reference_counts):
    folder, train_files, test_files, key, classes, n_max, n_test, val_per_class = _layout(name)
    train_labels = read_labels(cifar_root / folder, train_files, key)
    test_labels = read_labels(cifar_root / folder, test_files, key)
    counts = reference_counts(n_max, classes, imbalance)
    kept, rest = reference_longtail(train_labels, counts, 0)

    # the reference split: the published training set, index-identical (the default every-class split,
    # which moves the head's shortfall to validation, is tested in test_validation_split.py)
    data = load_longtail(name, imbalance, data_dir=cifar_root, split="reference")

    # training set: the published size, the profile's counts, exactly the reference's images in order
    assert len(data.train_y) == len(data.train_x) == size
    np.testing.assert_array_equal(np.bincount(data.train_y, minlength=classes), counts)
    flag, idx = image_ids(data.train_x)
    assert (flag == 0).all()
    np.testing.assert_array_equal(idx, kept)
    np.testing.assert_array_equal(data.train_y, train_labels[idx])
    assert data.train_x.shape[1:] == (3, 32, 32) and data.train_x.dtype == np.uint8

    # test set: the full balanced test set, untouched and in file order
    assert len(data.test_y) == classes * n_test
    np.testing.assert_array_equal(np.bincount(data.test_y, minlength=classes), [n_test] * classes)
    flag, idx = image_ids(data.test_x)
    assert (flag == 1).all()
    np.testing.assert_array_equal(idx, np.arange(classes * n_test))
    np.testing.assert_array_equal(data.test_y, test_labels)

    # validation: from the training files, disjoint from the kept images, per class min(quota, leftover)
    flag, val_idx = image_ids(data.val_x)
    assert (flag == 0).all()
    assert not np.isin(val_idx, kept).any()
    assert len(np.unique(val_idx)) == len(val_idx)
    np.testing.assert_array_equal(val_idx, np.concatenate([r[:val_per_class] for r in rest]))
    np.testing.assert_array_equal(data.val_y, train_labels[val_idx])
    expected_val = [min(val_per_class, n_max - n) for n in counts]
    np.testing.assert_array_equal(np.bincount(data.val_y, minlength=classes), expected_val)
    assert expected_val[0] == 0  # the head class keeps every image: no validation images from it
    assert data.class_counts == counts and len(data.classes) == classes


def test_data_seed_changes_cifar_subset(cifar_root, reference_longtail, reference_counts):
    labels = read_labels(cifar_root / "cifar-10-batches-py", CIFAR10_TRAIN_FILES, b"labels")
    data = load_longtail("cifar10", 100, data_seed=3, data_dir=cifar_root, split="reference")
    kept, _ = reference_longtail(labels, reference_counts(5000, 10, 100), 3)
    np.testing.assert_array_equal(image_ids(data.train_x)[1], kept)
    seed0 = image_ids(load_longtail("cifar10", 100, data_seed=0, data_dir=cifar_root, split="reference").train_x)[1]
    assert not np.array_equal(np.sort(seed0), np.sort(kept))


def test_class_names_from_meta(cifar_root):
    assert load_longtail("cifar10", 100, data_dir=cifar_root).classes[:3] == ["airplane", "automobile", "bird"]
    assert load_longtail("cifar100", 100, data_dir=cifar_root).classes[99] == "class_99"


# ---------------------------------------------------------------- the reader on small folders


@pytest.fixture
def small_cifar10(tmp_path):
    """A small CIFAR-10 folder (20 train / 4 test images per class) that a test may break."""
    return write_cifar10(tmp_path, train_per_class=20, test_per_class=4, seed=5)


def _load(name, root):
    return get_dataset(name).load(root)


def test_reader_returns_the_pickled_arrays(small_cifar10):
    arrays = _load("cifar10", small_cifar10.parent)
    # independently unpickled
    raw = []
    for f in CIFAR10_TRAIN_FILES:
        with open(small_cifar10 / f, "rb") as fh:
            raw.append(pickle.load(fh, encoding="bytes")[b"data"])
    np.testing.assert_array_equal(arrays.train_x, np.concatenate(raw).reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(arrays.train_y, read_labels(small_cifar10, CIFAR10_TRAIN_FILES, b"labels"))
    np.testing.assert_array_equal(arrays.test_y, read_labels(small_cifar10, ["test_batch"], b"labels"))
    assert arrays.train_x.shape == (200, 3, 32, 32) and arrays.test_x.shape == (40, 3, 32, 32)
    # the channel planes: bytes 0..1023 are red, so pixel (0, 0, 0) is byte 0 (the split flag)
    assert (arrays.train_x[:, 0, 0, 0] == 0).all() and (arrays.test_x[:, 0, 0, 0] == 1).all()
    assert arrays.train_x[:, 0, 0, 1].tolist() == (np.arange(200) // 256).tolist()


def test_reader_accepts_the_folder_itself(small_cifar10):
    arrays = _load("cifar10", small_cifar10)
    assert arrays.train_x.shape == (200, 3, 32, 32)


@pytest.fixture
def fresh_cifar_cache():
    """The reader caches by (name, root); with root None the key does not see $BKDBENCH_DATA."""
    cifar_module._load.cache_clear()
    yield
    cifar_module._load.cache_clear()


def test_reader_finds_data_via_environment(tmp_path, monkeypatch, fresh_cifar_cache):
    root = tmp_path / "envdata"
    write_cifar100(root, train_per_class=3, test_per_class=1, seed=2)
    monkeypatch.setenv("BKDBENCH_DATA", str(root))
    monkeypatch.chdir(tmp_path)
    arrays = _load("cifar100", None)
    assert arrays.train_x.shape == (300, 3, 32, 32) and len(arrays.classes) == 100


def _expect_error(name, root, *fragments):
    with pytest.raises(DataError) as err:
        _load(name, root)
    message = str(err.value)
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return message


def test_truncated_pickle(small_cifar10):
    path = small_cifar10 / "data_batch_2"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    _expect_error("cifar10", small_cifar10.parent, path, "truncated")


def test_random_bytes_instead_of_a_pickle(small_cifar10):
    path = small_cifar10 / "test_batch"
    path.write_bytes(np.random.RandomState(0).randint(0, 256, 5000, dtype=np.uint8).tobytes())
    _expect_error("cifar10", small_cifar10.parent, path)


def test_wrong_data_shape(small_cifar10):
    path = small_cifar10 / "data_batch_3"
    with open(path, "rb") as fh:
        entry = pickle.load(fh, encoding="bytes")
    entry[b"data"] = entry[b"data"][:, :1024]  # one colour plane only
    with open(path, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)
    _expect_error("cifar10", small_cifar10.parent, path, "3072", "(40, 1024)")


def test_label_count_mismatch(small_cifar10):
    path = small_cifar10 / "data_batch_1"
    with open(path, "rb") as fh:
        entry = pickle.load(fh, encoding="bytes")
    entry[b"labels"] = entry[b"labels"][:-1]
    with open(path, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)
    _expect_error("cifar10", small_cifar10.parent, path)


def test_missing_data_batch(small_cifar10):
    (small_cifar10 / "data_batch_4").unlink()
    _expect_error("cifar10", small_cifar10.parent, small_cifar10 / "data_batch_4", "bkdbench data download")


def test_missing_test_batch_cifar100(tmp_path):
    folder = write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    (folder / "test").unlink()
    _expect_error("cifar100", tmp_path, folder / "test")


def test_truncated_cifar100_train(tmp_path):
    folder = write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    blob = (folder / "train").read_bytes()
    (folder / "train").write_bytes(blob[: len(blob) // 2])
    _expect_error("cifar100", tmp_path, folder / "train")


def test_corrupt_meta(small_cifar10):
    (small_cifar10 / "batches.meta").write_bytes(b"not a pickle at all")
    _expect_error("cifar10", small_cifar10.parent, small_cifar10 / "batches.meta")


def test_labels_outside_the_classes(small_cifar10):
    path = small_cifar10 / "batches.meta"
    with open(path, "wb") as fh:  # only 5 class names for labels 0..9
        pickle.dump({b"label_names": [b"a", b"b", b"c", b"d", b"e"]}, fh, protocol=2)
    _expect_error("cifar10", small_cifar10.parent, "outside the 5 classes")


def test_negative_labels_are_a_data_error(small_cifar10):
    path = small_cifar10 / "data_batch_5"
    with open(path, "rb") as fh:
        entry = pickle.load(fh, encoding="bytes")
    entry[b"labels"][0] = -1
    with open(path, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)
    _expect_error("cifar10", small_cifar10.parent, "outside")


def test_missing_folder_says_where_it_looked(tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_longtail("cifar10", 100, data_dir=nowhere)
    message = str(err.value)
    assert "looked in" in message and str(nowhere / "cifar-10-batches-py") in message
    assert "bkdbench data download" in message


def test_missing_default_folders_say_where_they_looked(tmp_path, monkeypatch, fresh_cifar_cache):
    monkeypatch.setenv("BKDBENCH_DATA", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        load_longtail("cifar100", 10)
    message = str(err.value)
    assert str(tmp_path / "env" / "cifar-100-python") in message
    assert os.path.join("data", "cifar-100-python") in message
    assert "bkdbench data download" in message


def test_locate_reports_found_and_missing(small_cifar10, tmp_path):
    found, where = get_dataset("cifar10").locate(small_cifar10.parent)
    assert found and where == str(small_cifar10)
    found, where = get_dataset("cifar10").locate(tmp_path / "nowhere")
    assert not found and "looked in" in where


# ---------------------------------------------------------------- Fashion-MNIST IDX files

from bkdbench.data.fashion import read_idx  # noqa: E402


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written out by hand: 0, 0, 0x08 (uint8), ndim, then big-endian int32 dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.randint(0, 10, 7).astype(np.uint8)
    suffix = ".gz" if gz else ""
    got_images = read_idx(_write_idx(tmp_path / f"img{suffix}", images, gz))
    got_labels = read_idx(_write_idx(tmp_path / f"lab{suffix}", labels, gz))
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.shape == (7, 28, 28) and got_images.dtype == np.uint8


def test_read_idx_truncated_raw(tmp_path):
    path = _write_idx(tmp_path / "img", np.zeros((5, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated IDX file .*img"):
        read_idx(path)


def test_read_idx_truncated_gz(tmp_path):
    rng = np.random.RandomState(1)
    path = _write_idx(tmp_path / "img.gz", rng.randint(0, 256, (5, 28, 28), dtype=np.uint8), gz=True)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_wrong_type_code(tmp_path):
    path = tmp_path / "floats"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + (2).to_bytes(4, "big") + np.zeros(2, ">f4").tobytes())
    with pytest.raises(DataError, match="not a uint8 IDX file"):
        read_idx(path)


def test_read_idx_corrupt_gz_body(tmp_path):
    # Compressible content gives Huffman-coded deflate blocks; overwriting bytes inside them makes
    # zlib fail with "invalid distance too far back" and similar.
    path = _write_idx(tmp_path / "img.gz", (np.arange(5 * 28 * 28) % 7).astype(np.uint8).reshape(5, 28, 28), gz=True)
    blob = bytearray(path.read_bytes())
    for pos in range(12, len(blob) - 8, 3):
        blob[pos] ^= 0x5A
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_fashion_folder_of_generated_files(tmp_path):
    rng = np.random.RandomState(2)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.repeat(np.arange(10), 3).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(10).astype(np.uint8),
    }
    for i, (stem, array) in enumerate(arrays.items()):  # a mix of gzipped and raw files
        _write_idx(raw / (stem + (".gz" if i % 2 else "")), array, gz=bool(i % 2))
    out = get_dataset("fashion-mnist").load(tmp_path)
    np.testing.assert_array_equal(out.train_x[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(out.test_y, arrays["t10k-labels-idx1-ubyte"])
    assert out.train_x.shape == (30, 1, 28, 28) and out.train_y.dtype == np.int64


def test_fashion_missing_folder(tmp_path):
    with pytest.raises(DataError, match="looked in .*nowhere"):
        get_dataset("fashion-mnist").load(tmp_path / "nowhere")


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_longtail(reference_counts):
    data = load_longtail("fashion-mnist", 100)
    assert len(data.train_y) == 12406 and len(data.test_y) == 10000
    np.testing.assert_array_equal(np.bincount(data.train_y, minlength=10), reference_counts(5000, 10, 100))
    np.testing.assert_array_equal(np.bincount(data.test_y, minlength=10), [1000] * 10)
    assert data.train_x.shape[1:] == (1, 28, 28) and data.train_x.dtype == np.uint8
    # validation: 100 per class from the 6,000-image classes' leftovers
    np.testing.assert_array_equal(np.bincount(data.val_y, minlength=10), [100] * 10)
