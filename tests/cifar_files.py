"""Write CIFAR-10 / CIFAR-100 folders in the standard python-pickle format, with the real layout.

The real files are Python-2 cPickle dicts with bytes keys: ``cifar-10-batches-py`` holds
``data_batch_1..5`` (10,000 images each) and ``test_batch`` with ``b'data'`` (N×3072 uint8, channel
planes R, G, B) and ``b'labels'``, plus ``batches.meta`` with ``b'label_names'``;
``cifar-100-python`` holds ``train`` / ``test`` with ``b'fine_labels'`` and ``b'coarse_labels'``, plus
``meta`` with ``b'fine_label_names'``. Labels come in shuffled order, every class equally often.

To let tests tell images apart (and recover which source image ended up where), every image carries
its identity in its first three bytes: byte 0 = 0 for the training split / 1 for the test split,
bytes 1-2 = its index in that split, big-endian. The other 3,069 bytes are random.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(n: int, split_flag: int, rng: np.random.RandomState) -> np.ndarray:
    data = np.frombuffer(rng.bytes(n * 3072), dtype=np.uint8).reshape(n, 3072).copy()
    index = np.arange(n)
    data[:, 0] = split_flag
    data[:, 1] = index // 256
    data[:, 2] = index % 256
    return data


def image_ids(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(split flag, index) of images written by this module; ``images`` is N×3×32×32 or N×3072."""
    head = np.asarray(images).reshape(len(images), -1)[:, :3].astype(np.int64)
    return head[:, 0], head[:, 1] * 256 + head[:, 2]


def _labels(num_classes: int, per_class: int, rng: np.random.RandomState) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)  # the real files list labels in shuffled order
    return labels


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 with bytes written as Python-2 ``str`` opcodes (BINSTRING), as cPickle wrote the real
    files; ``pickle.load(..., encoding="bytes")`` turns them back into bytes. (Python 3's own protocol-2
    pickler routes bytes through ``_codecs.encode`` of a latin-1 str: valid, but 10x slower for 150 MB.)"""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _dump(obj, path: Path) -> None:
    with open(path, "wb") as fh:
        _Py2Pickler(fh, protocol=2).dump(obj)


def write_cifar10(root: Path, train_per_class: int = 5000, test_per_class: int = 1000, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` and return that folder."""
    rng = np.random.RandomState(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_y = _labels(10, train_per_class, rng)
    train_x = _images(len(train_y), 0, rng)
    per_batch = len(train_y) // 5
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        _dump({b"batch_label": f"training batch {b + 1} of 5".encode(), b"labels": train_y[part].tolist(),
               b"data": train_x[part], b"filenames": [b"img.png"] * per_batch}, folder / f"data_batch_{b + 1}")
    test_y = _labels(10, test_per_class, rng)
    _dump({b"batch_label": b"testing batch 1 of 1", b"labels": test_y.tolist(),
           b"data": _images(len(test_y), 1, rng), b"filenames": [b"img.png"] * len(test_y)}, folder / "test_batch")
    _dump({b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in CIFAR10_NAMES],
           b"num_vis": 3072}, folder / "batches.meta")
    return folder


def write_cifar100(root: Path, train_per_class: int = 500, test_per_class: int = 100, seed: int = 1) -> Path:
    """Write ``root/cifar-100-python`` and return that folder."""
    rng = np.random.RandomState(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class, flag in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        fine = _labels(100, per_class, rng)
        _dump({b"filenames": [b"img.png"] * len(fine), b"batch_label": name.encode(), b"fine_labels": fine.tolist(),
               b"coarse_labels": (fine // 5).tolist(), b"data": _images(len(fine), flag, rng)}, folder / name)
    _dump({b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
           b"coarse_label_names": [f"super_{i:02d}".encode() for i in range(20)]}, folder / "meta")
    return folder


def read_labels(folder: Path, files: list[str], key: bytes) -> np.ndarray:
    """Labels straight from the pickles (independently of bkdbench), concatenated in file order."""
    out = []
    for name in files:
        with open(Path(folder) / name, "rb") as fh:
            out.append(np.asarray(pickle.load(fh, encoding="bytes")[key], dtype=np.int64))
    return np.concatenate(out)
