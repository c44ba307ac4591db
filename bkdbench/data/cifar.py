"""CIFAR-10 and CIFAR-100 from the standard python-pickle folders (``cifar-10-batches-py``,
``cifar-100-python``). Nothing is downloaded unless asked (``bkdbench data download``)."""
from __future__ import annotations

import os
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from .registry import DataError, DatasetInfo, ImageArrays, register_dataset

_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}
MEAN = (0.4914, 0.4822, 0.4465)  # the reference code's normalisation constants
STD = (0.2023, 0.1994, 0.2010)


def _candidates(name: str, root: Optional[Path]) -> list[Path]:
    folder = _LAYOUT[name][0]
    bases = [root] if root else [Path(os.environ.get("BKDBENCH_DATA", "~/data")).expanduser(), Path("data")]
    out = []
    for base in bases:
        base = Path(base).expanduser()
        out += [base / folder, base] if base.name != folder else [base]
    return out


def _find(name: str, root: Optional[Path]) -> Optional[Path]:
    for path in _candidates(name, root):
        if (path / _LAYOUT[name][3]).is_file():
            return path
    return None


def _read_pickle(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"missing CIFAR file {path}; re-download with `bkdbench data download`") from None
    except Exception as exc:  # truncated or foreign pickles fail in many ways
        raise DataError(f"corrupt or truncated CIFAR file {path} ({type(exc).__name__}); re-download it") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"corrupt CIFAR file {path}: expected N×3072 images with N labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels


@lru_cache(maxsize=2)
def _load(name: str, root: Optional[Path]) -> ImageArrays:
    folder, train_files, test_files, meta_file, label_key, names_key = _LAYOUT[name]
    path = _find(name, root)
    if path is None:
        looked = ", ".join(str(p) for p in _candidates(name, root))
        raise DataError(
            f"{name} not found (looked in {looked}); get it with "
            f"`bkdbench data download {name} --root DIR` and pass `--data-dir DIR`"
        )
    parts = [_read_pickle(path / f, label_key) for f in train_files]
    test_x, test_y = _read_pickle(path / test_files[0], label_key)
    try:
        with open(path / meta_file, "rb") as fh:
            classes = [c.decode() for c in pickle.load(fh, encoding="bytes")[names_key]]
    except Exception as exc:
        raise DataError(f"corrupt CIFAR metadata file {path / meta_file} ({type(exc).__name__})") from None
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([train_y, test_y])
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"corrupt CIFAR files in {path}: labels outside the {len(classes)} classes")
    return ImageArrays(train_x, train_y, test_x, test_y, classes)


def _download(name: str, root: Path) -> Path:
    from torchvision import datasets  # only for the explicit download command

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    cls(str(root), train=True, download=True)
    return root / _LAYOUT[name][0]


def _register(name: str, classes: int, n_max: int, val_per_class: int, method_defaults: dict) -> None:
    register_dataset(
        DatasetInfo(
            name=name,
            description=f"CIFAR-{classes} (python pickles), 32×32 RGB, {classes} classes",
            num_classes=classes,
            channels=3,
            image_size=32,
            mean=MEAN,
            std=STD,
            load=lambda root=None: _load(name, Path(root).expanduser() if root else None),
            locate=lambda root=None: _locate(name, root),
            n_max=n_max,
            val_per_class=val_per_class,
            pad=4,
            hflip=True,
            default_model="resnet32",
            default_recipe="reference",
            method_defaults=method_defaults,
            download=lambda root: _download(name, Path(root)),
        )
    )


def _locate(name: str, root) -> tuple[bool, str]:
    found = _find(name, Path(root).expanduser() if root else None)
    if found:
        return True, str(found)
    return False, "looked in " + ", ".join(str(p) for p in _candidates(name, Path(root) if root else None))


# The reference BKD code switches the class weights on at epoch 160/200 for CIFAR-10, from 0 for CIFAR-100.
# 20 validation images per class, as ImageNet-LT's official val set has. The head class keeps all
# its images, so under the default every-class split its 20 come from the last of its kept ones
# (CIFAR-10-LT IF100 trains on 12,386 images, not 12,406; CIFAR-100-LT IF100 on 10,827, not 10,847).
_register("cifar10", 10, 5000, 20, {"bkd": {"cb_start": 0.8}})
_register("cifar100", 100, 500, 20, {"bkd": {"cb_start": 0.0}})
