"""From a dataset's full arrays to the long-tailed train set, the validation split and the test set.

Profiles: ``exp`` and ``step`` subsample a balanced training set (longtail.py); ``natural`` keeps
every training image of a set that is already long-tailed (an image folder), and its imbalance factor
is the set's own n_max / n_min, rounded to 2 decimals (``natural_imbalance``). Validation: the
dataset's own split when it has one (an image folder's ``val/``), else up to ``val_per_class`` of
the training images the subsample did not keep -- so ``natural``, which keeps them all, needs one.
``val_per_class`` (a run's ``--val-per-class``; None: the dataset's own) overrides that V.
Shot splits (many/medium/few) always come from the counts actually kept.

Splits (``split``, part of a run's identity): ``every-class`` (the default) gives every class
``val_per_class`` validation images, a class with fewer unused images (CIFAR's head) making up the
shortfall from the last of its kept images (``every_class_split``); ``reference`` keeps the
reference training set index-identical and validates only on unused images, so a class without
any (CIFAR's head) has no validation image. A dataset with a validation split of its own (an image
folder's ``val/``) and the ``natural`` profile use that split either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .longtail import (every_class_split, longtail_counts, longtail_indices, shot_split, unused_indices,
                       validation_indices, validation_shortfall)
from .registry import DataError, DatasetInfo, ImageArrays, dataset_info

NATURAL = "natural"  # keep the training set as it is
EVERY_CLASS, REFERENCE = "every-class", "reference"
SPLITS = (EVERY_CLASS, REFERENCE)  # how validation is drawn (module docstring); EVERY_CLASS is the default


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return split


def check_profile(info: DatasetInfo, profile: str) -> None:
    """A set that is long-tailed already (``natural_only``) is used as it is, never subsampled."""
    if info.natural_only and profile != NATURAL:
        raise DataError(f"{info.name} is long-tailed already and is used as it is: pass --imbalance natural "
                        f"(not the {profile} profile)")


@dataclass
class LongTailData:
    info: DatasetInfo
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_counts: list[int]
    classes: list[str]

    @property
    def shots(self) -> dict[str, list[int]]:
        return shot_split(self.class_counts, self.info.many_threshold, self.info.few_threshold)


def natural_imbalance(info: DatasetInfo, data_dir: Optional[Path] = None) -> float:
    """The imbalance factor of the dataset's training set as it is: n_max / n_min, 2 decimals.
    Raises DataError when the dataset has no validation split of its own (``natural`` leaves no
    unused training images to validate on)."""
    arrays = info.load(Path(data_dir) if data_dir else None)
    _need_own_validation(info, arrays, data_dir)
    counts = np.bincount(arrays.train_y, minlength=len(arrays.classes))
    if counts.min() == 0:
        empty = arrays.classes[int(np.argmin(counts))]
        raise DataError(f"{info.name}: class {empty!r} has no training images")
    return round(float(counts.max()) / float(counts.min()), 2)


def _need_own_validation(info: DatasetInfo, arrays: ImageArrays, data_dir) -> None:
    if arrays.val_x is None:
        where = f" at {data_dir}" if data_dir else ""
        raise DataError(
            f"{info.name}{where} has no validation split of its own, and the natural profile keeps every training "
            "image, so none is left to validate on: add a val/<class>/ folder, or subsample with an imbalance factor")


def load_longtail(
    dataset: str,
    imbalance_factor: float,
    profile: str = "exp",
    data_seed: int = 0,
    data_dir: Optional[Path] = None,
    *,
    image_size: Optional[int] = None,
    split: str = EVERY_CLASS,
    val_per_class: Optional[int] = None,
) -> LongTailData:
    check_split(split)
    info = dataset_info(dataset, data_dir, image_size)
    check_profile(info, profile)
    arrays = info.load(Path(data_dir) if data_dir else None)
    targets = arrays.train_y
    kept, val = _split_indices(info, arrays, imbalance_factor, profile, data_seed, data_dir, split, val_per_class)
    if val is None:
        val_x, val_y = arrays.val_x, arrays.val_y
    else:
        val_x, val_y = arrays.train_x[val], targets[val]
    num_classes = len(arrays.classes)
    return LongTailData(
        info=info,
        # natural keeps everything: no copy, so a memory-mapped store (large/store.py) stays on disk
        train_x=arrays.train_x if profile == NATURAL else arrays.train_x[kept],
        train_y=targets[kept].astype(np.int64),
        val_x=np.asarray(val_x),
        val_y=np.asarray(val_y).astype(np.int64),
        test_x=arrays.test_x,
        test_y=arrays.test_y.astype(np.int64),
        class_counts=np.bincount(targets[kept], minlength=num_classes).tolist(),
        classes=arrays.classes,
    )


def _split_indices(info: DatasetInfo, arrays: ImageArrays, imbalance_factor: float, profile: str, data_seed: int,
                   data_dir, split: str, val_per_class: Optional[int] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(kept training indices, validation indices into the training set, or None for the dataset's own
    validation split): the labels alone decide, no image is read. ``val_per_class``: V (None: the
    dataset's own)."""
    targets = arrays.train_y
    if profile == NATURAL:
        _need_own_validation(info, arrays, data_dir)
        kept = np.arange(len(targets), dtype=np.int64)
    else:
        _check_enough(info, arrays, imbalance_factor, profile, data_dir)
        kept = longtail_indices(targets, imbalance_factor, profile, data_seed, n_max=info.n_max)
    if arrays.val_x is not None:
        return kept, None
    unused = unused_indices(targets, imbalance_factor, profile, data_seed, n_max=info.n_max)
    per_class = val_per_class or info.val_per_class
    if split == EVERY_CLASS:
        return every_class_split(targets, kept, unused, per_class)
    return kept, validation_indices(unused, per_class)


def validation_count(info: DatasetInfo, imbalance_factor: float, profile: str = "exp", data_seed: int = 0,
                     data_dir: Optional[Path] = None, split: str = EVERY_CLASS, val_per_class: Optional[int] = None) -> int:
    """Images in the validation split ``load_longtail`` gives (what a sweep's scores are measured on)."""
    check_split(split)
    arrays = info.load(Path(data_dir) if data_dir else None)
    _, val = _split_indices(info, arrays, imbalance_factor, profile, data_seed, data_dir, split, val_per_class)
    return len(arrays.val_y) if val is None else len(val)


def check_val_per_class(info: DatasetInfo, imbalance_factor: float, profile: str, data_dir, split: str,
                        per_class: int) -> None:
    """Refuse a V of a run's own (``--val-per-class``) where it cannot apply (a dataset with a validation
    split of its own) or where the every-class split would move more than a tenth of a class's kept
    training images to validation: the training set would no longer be the one its imbalance factor
    names (V = 2,500 would halve CIFAR-10-LT's head, an imbalance of 50 reported as 100). Raises
    DataError. Not asked of the dataset's own V, which every run without the option uses."""
    arrays = info.load(Path(data_dir) if data_dir else None)
    if profile == NATURAL or arrays.val_x is not None:
        raise DataError(f"--val-per-class: {info.name} has a validation split of its own (an image folder's val/, "
                        "a benchmark's official list); it applies where validation comes from the training images")
    if split != EVERY_CLASS:
        return  # the reference split moves no training image: a class gives what it has unused
    counts, sizes = _kept_and_sizes(info, arrays, imbalance_factor, profile)
    limit = min(size - n + n // 10 for size, n in zip(sizes, counts))  # unused images + a tenth of the kept ones
    if per_class > limit:
        label = min(range(len(counts)), key=lambda c: sizes[c] - counts[c] + counts[c] // 10)
        unused = sizes[label] - counts[label]
        raise DataError(f"--val-per-class {per_class}: class {label} ({arrays.classes[label]}) has {unused} unused "
                        f"training images, so {per_class - unused} of its {counts[label]} kept ones would move to "
                        f"validation, more than a tenth, and its imbalance factor would no longer hold; choose at most "
                        f"{limit} (or --split reference)")


def kept_class_counts(info: DatasetInfo, imbalance_factor: float, profile: str = "exp",
                      data_dir: Optional[Path] = None, split: str = EVERY_CLASS,
                      val_per_class: Optional[int] = None) -> list[int]:
    """Training images per class that ``load_longtail`` keeps, without building the subsample: a
    method whose teachers depend on the counts (class subsets by shot) plans them from this."""
    check_split(split)
    if profile == NATURAL:
        arrays = info.load(Path(data_dir) if data_dir else None)
        return np.bincount(arrays.train_y, minlength=len(arrays.classes)).tolist()
    counts = longtail_counts(info.n_max, info.num_classes, imbalance_factor, profile)
    if split == REFERENCE:
        return counts
    arrays = info.load(Path(data_dir) if data_dir else None)
    if arrays.val_x is not None:  # the dataset's own validation split: nothing moves
        return counts
    sizes = np.bincount(arrays.train_y, minlength=len(counts)).tolist()
    return [n - short for n, short in zip(counts, validation_shortfall(sizes, counts, val_per_class or info.val_per_class))]


def classes_without_validation(info: DatasetInfo, imbalance_factor: float, profile: str = "exp",
                               data_dir: Optional[Path] = None) -> list[int]:
    """The classes that the ``reference`` split leaves without a validation image (every unused
    image of theirs kept: CIFAR's head class); [] where the dataset has its own validation split."""
    if profile == NATURAL:
        return []
    arrays = info.load(Path(data_dir) if data_dir else None)
    if arrays.val_x is not None:
        return []
    counts, sizes = _kept_and_sizes(info, arrays, imbalance_factor, profile)
    return [label for label, (size, n) in enumerate(zip(sizes, counts)) if size <= n]


def _kept_and_sizes(info: DatasetInfo, arrays: ImageArrays, imbalance_factor: float,
                    profile: str) -> tuple[list[int], list[int]]:
    """Per class: the images the subsample keeps (the reference counts) and the training images there are."""
    counts = longtail_counts(info.n_max, len(arrays.classes), imbalance_factor, profile)
    return counts, np.bincount(arrays.train_y, minlength=len(counts)).tolist()


def restrict_classes(data: LongTailData, classes: Sequence[int]) -> LongTailData:
    """Only the images of ``classes`` in every split, relabelled 0..k-1 in the given order: a
    class-subset teacher is trained and evaluated on its own classes only."""
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0 or max(classes) >= len(data.classes):
        raise DataError(f"a class subset must list distinct classes in 0..{len(data.classes) - 1} (got {classes})")
    lookup = np.full(len(data.classes), -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))

    def pick(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = lookup[y] >= 0
        return x[keep], lookup[y[keep]]

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        pick(data.train_x, data.train_y), pick(data.val_x, data.val_y), pick(data.test_x, data.test_y))
    return LongTailData(info=data.info, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, test_x=test_x,
                        test_y=test_y, class_counts=[data.class_counts[c] for c in classes],
                        classes=[data.classes[c] for c in classes])


def _check_enough(info: DatasetInfo, arrays: ImageArrays, imbalance_factor: float, profile: str, data_dir) -> None:
    """A class with fewer images than the profile keeps: say which, and what to do instead."""
    have = np.bincount(arrays.train_y, minlength=len(arrays.classes))
    need = longtail_counts(info.n_max, len(arrays.classes), imbalance_factor, profile)
    for label, (n_have, n_need) in enumerate(zip(have, need)):
        if n_have < n_need:
            name = arrays.classes[label]
            where = Path(data_dir).expanduser() / "train" / name if info.data_key and data_dir else f"{info.name} class {name!r}"
            raise DataError(
                f"{where} has {n_have} training images, but IF {imbalance_factor:g} ({profile} profile, "
                f"n_max {info.n_max}) keeps {n_need} of class {label}; a folder that is already long-tailed "
                "is used as it is with the natural profile (--imbalance natural)")
