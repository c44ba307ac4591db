"""Dataset registry: each dataset is one file that registers a ``DatasetInfo``.

A dataset loader returns the full (balanced) train and test images as uint8 NumPy arrays in
N×C×H×W layout; the long-tailed subsample and the validation split are made in ``splits.py``
from those arrays, the same way for every dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np


class DataError(ValueError):
    """Missing, unreadable or malformed data: the message says where we looked and what to do."""


@dataclass
class ImageArrays:
    train_x: np.ndarray  # uint8, N×C×H×W
    train_y: np.ndarray  # int64
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    # A dataset that ships its own validation split (an image folder's val/) sets these; the others
    # get theirs from training images the long-tailed subsample did not keep (splits.py).
    val_x: Optional[np.ndarray] = None
    val_y: Optional[np.ndarray] = None


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    num_classes: Optional[int]  # None: known only per data folder (see ``resolve``)
    channels: int
    image_size: Optional[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    load: Callable[[Optional[Path]], ImageArrays]
    locate: Callable[[Optional[Path]], tuple[bool, str]]  # (available, where it looked / found)
    n_max: Optional[int]  # images the head class keeps (reference: 5000 for CIFAR-10, 500 for CIFAR-100)
    val_per_class: int
    pad: int  # crop padding for augmentation (4 for 32×32 in the reference)
    hflip: bool
    default_model: str
    default_recipe: str
    many_threshold: int = 100  # many-shot: more than this many training images
    few_threshold: int = 20  # few-shot: fewer than this many
    # Method parameter defaults that depend on the dataset (e.g. BKD's cb_start on CIFAR-10).
    method_defaults: dict = field(default_factory=dict)
    download: Optional[Callable[[Path], Path]] = None
    # Datasets whose contents come from a user's folder (imagefolder): ``resolve(data_dir, image_size)``
    # builds that folder's own DatasetInfo (classes, counts, mean/std, ``data_key``).
    resolve: Optional[Callable[[Optional[Path], Optional[int]], "DatasetInfo"]] = None
    data_key: Optional[str] = None  # content hash of a resolved folder: part of every run id on it
    # How DeviceLoader augments: "crop-flip" (pad-and-crop, flip: the CIFAR recipe) or "imagenet"
    # (random-resized crop to image_size, flip, colour jitter; evaluation resize + centre crop; imagenet_augment.py).
    augmentation: str = "crop-flip"
    # A set that is long-tailed already (ImageNet-LT, Places-LT, iNat18): only the natural profile.
    natural_only: bool = False


_REGISTRY: dict[str, DatasetInfo] = {}


_ORIGIN: dict[str, tuple[str, str]] = {}  # name -> (module, file) that registered it


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    import sys

    caller = sys._getframe(1).f_globals  # the dataset's own file: named in a clash, and a plugin's identity
    origin = (caller.get("__name__", "?"), caller.get("__file__", "?"))
    known = _ORIGIN.get(info.name)
    if info.name in _REGISTRY and known != origin:
        where = lambda o: f"{o[0]} ({o[1]})"  # noqa: E731
        raise DataError(f"dataset '{info.name}' is already registered by {where(known)}; {where(origin)} registers it "
                        "again: choose another name")
    _REGISTRY[info.name] = info
    _ORIGIN[info.name] = origin
    return info


def dataset_module(name: str) -> Optional[str]:
    """The module that registered dataset ``name`` (a plugin's, or bkdbench's)."""
    return _ORIGIN.get(name, (None,))[0]


def get_dataset(name: str) -> DatasetInfo:
    if name not in _REGISTRY:
        from bkdbench.plugins import import_on_miss

        if import_on_miss():
            return get_dataset(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}") from None


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def dataset_info(name: str, data_dir: Optional[Path] = None, image_size: Optional[int] = None) -> DatasetInfo:
    """The DatasetInfo a run on ``name`` uses: the registered one for the fixed datasets, the folder's
    own for those that ``resolve`` per folder (imagefolder: its classes, mean/std and content key)."""
    info = get_dataset(name)
    if info.resolve is None:
        if image_size is not None:
            sized = ", ".join(n for n in dataset_names() if _REGISTRY[n].resolve is not None)
            raise DataError(f"{name} has fixed {info.image_size}×{info.image_size} images; image_size is for {sized}")
        return info
    return info.resolve(Path(data_dir).expanduser() if data_dir else None, image_size)
