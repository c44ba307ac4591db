"""Fashion-MNIST from its IDX files (gzipped or not): Debian's ``dataset-fashion-mnist`` puts them in
/usr/share/datasets/fashion-mnist, which is found automatically; ``--data-dir`` points elsewhere
(the folder itself, or a torchvision-style ``FashionMNIST/raw`` below it)."""
from __future__ import annotations

import gzip
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from .registry import DataError, DatasetInfo, ImageArrays, register_dataset

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _candidates(root: Optional[Path]) -> list[Path]:
    bases = [Path(root).expanduser()] if root else [SYSTEM_DIR]
    return [p for b in bases for p in (b, b / "FashionMNIST" / "raw", b / "fashion-mnist")]


def _file(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _find(root: Optional[Path]) -> Optional[Path]:
    for folder in _candidates(root):
        if all(_file(folder, s) for s in FILES):
            return folder
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (big-endian header: 0, 0, dtype code 0x08 = uint8, ndim; then dims)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # missing, truncated or corrupt gzip body
        raise DataError(f"unreadable IDX file {path} ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"truncated IDX file {path}: header says {dims}, found {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


@lru_cache(maxsize=2)
def _load(root: Optional[Path]) -> ImageArrays:
    folder = _find(root)
    if folder is None:
        looked = ", ".join(str(p) for p in _candidates(root))
        raise DataError(
            f"fashion-mnist not found (looked in {looked}); install Debian's `dataset-fashion-mnist` "
            "or pass `--data-dir` to a folder with the four IDX files"
        )
    tx, ty, sx, sy = (read_idx(_file(folder, s)) for s in FILES)
    return ImageArrays(tx[:, None], ty.astype(np.int64), sx[:, None], sy.astype(np.int64), CLASSES)


def _locate(root=None) -> tuple[bool, str]:
    found = _find(Path(root) if root else None)
    return (True, str(found)) if found else (False, "looked in " + ", ".join(map(str, _candidates(root))))


register_dataset(
    DatasetInfo(
        name="fashion-mnist",
        description="Fashion-MNIST (IDX files), 28×28 grey, 10 classes",
        num_classes=10,
        channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        load=lambda root=None: _load(Path(root).expanduser() if root else None),
        locate=_locate,
        # n_max below the 6,000 per class so the head class also leaves images for validation: every
        # class gives 100 unused images, under either split, and the training set is the reference one.
        n_max=5000,
        val_per_class=100,
        pad=2,
        hflip=True,
        default_model="cnn-small",
        default_recipe="fashion",
        method_defaults={"bkd": {"cb_start": 0.8}},
    )
)
