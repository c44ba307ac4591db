"""Long-tailed subsampling, exactly as the reference code builds CIFAR-LT (Cao et al. 2019).

Class i (label order, class 0 is the head) keeps n_i = int(n_max * (1/IF) ** (i / (C - 1)))
images ("exp" profile) or n_max / n_max/IF for the first / second half ("step"). Which images:
NumPy's global generator is seeded with the data seed, then for each class in label order its
indices are shuffled with ``np.random.shuffle`` and the first n_i are kept.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PROFILES = ("exp", "step")


def longtail_counts(n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp") -> list[int]:
    """Images kept per class, head first. ``int`` truncates, as in the reference."""
    if profile not in PROFILES:
        raise ValueError(f"unknown long-tail profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if imbalance_factor < 1:
        raise ValueError(f"imbalance factor must be >= 1 (got {imbalance_factor})")
    if num_classes == 1:
        return [int(n_max)]
    if profile == "exp":
        return [int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    half = num_classes // 2
    return [int(n_max)] * half + [int(n_max / imbalance_factor)] * (num_classes - half)


def longtail_indices(
    targets: Sequence[int],
    imbalance_factor: float,
    profile: str = "exp",
    data_seed: int = 0,
    n_max: int | None = None,
) -> np.ndarray:
    """Indices of the kept images, in the reference order (class by class, shuffled within class).

    ``n_max`` defaults to the size of the largest class. The global NumPy state is seeded as the
    reference does, then restored, so callers' random streams are left undisturbed.
    """
    kept, _ = _split(np.asarray(targets), imbalance_factor, profile, data_seed, n_max)
    return kept


def unused_indices(
    targets: Sequence[int],
    imbalance_factor: float,
    profile: str = "exp",
    data_seed: int = 0,
    n_max: int | None = None,
) -> list[np.ndarray]:
    """Per class, the shuffled indices the subsample did not keep (where validation comes from)."""
    _, rest = _split(np.asarray(targets), imbalance_factor, profile, data_seed, n_max)
    return rest


def _split(targets: np.ndarray, imbalance_factor, profile, data_seed, n_max):
    classes = np.unique(targets)
    num_classes = int(classes.max()) + 1 if classes.size else 0
    if n_max is None:
        n_max = int(np.bincount(targets, minlength=num_classes).max())
    counts = longtail_counts(n_max, num_classes, imbalance_factor, profile)
    saved = np.random.get_state()
    try:
        np.random.seed(data_seed)
        kept, rest = [], []
        for label, n_keep in enumerate(counts):
            idx = np.where(targets == label)[0]
            if n_keep > len(idx):
                raise ValueError(f"class {label} has {len(idx)} images but the profile keeps {n_keep}")
            np.random.shuffle(idx)
            kept.append(idx[:n_keep])
            rest.append(idx[n_keep:])
    finally:
        np.random.set_state(saved)
    return np.concatenate(kept).astype(np.int64), rest


def validation_indices(unused: list[np.ndarray], per_class: int) -> np.ndarray:
    """The ``reference`` split's validation images: only images the subsample did not keep.

    Rule: each class gives its first ``per_class`` unused images (already shuffled by the data
    seed). A class that kept (almost) all its images -- CIFAR's head class keeps every one --
    gives what it has, possibly none; balanced validation accuracy then averages over the classes
    present. Training images are never reused for validation and the test set is never touched.
    The default split (``every_class_split``) fills such classes from their kept images instead.
    """
    return np.concatenate([idx[:per_class] for idx in unused]).astype(np.int64)


def validation_shortfall(class_sizes: Sequence[int], kept_counts: Sequence[int], per_class: int) -> list[int]:
    """Per class, how many of its kept images the every-class split moves to validation: what its
    unused images (class size − kept) lack of ``per_class``, but never its last training image."""
    return [max(0, min(per_class - (size - kept), kept - 1)) for size, kept in zip(class_sizes, kept_counts)]


def every_class_split(targets: Sequence[int], kept: np.ndarray, unused: list[np.ndarray],
                      per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) with ``per_class`` validation images in every class.

    ``kept`` is ``longtail_indices``' output (class by class, reference order) and ``unused`` is
    ``unused_indices``'. Each class gives its first ``per_class`` unused images; a class with fewer
    (CIFAR's head keeps all of its images) makes up the shortfall with the *last* of its kept images
    in the reference order, so the training set is the reference one except in those classes, by at
    most ``per_class`` images each, and a class always keeps at least one training image.
    """
    labels = np.asarray(targets)[kept]
    train, val = [], []
    for label, rest in enumerate(unused):
        own = kept[labels == label]  # this class's kept images, still in the reference order
        short = max(0, min(per_class - len(rest), len(own) - 1))
        train.append(own[:len(own) - short])
        val.append(np.concatenate([rest[:per_class], own[len(own) - short:]]))
    return np.concatenate(train).astype(np.int64), np.concatenate(val).astype(np.int64)


def shot_split(class_counts: Sequence[int], many: int = 100, few: int = 20) -> dict[str, list[int]]:
    """Class ids by training count: many-shot > ``many``, few-shot < ``few``, medium in between."""
    out = {"many": [], "medium": [], "few": []}
    for label, n in enumerate(class_counts):
        out["many" if n > many else "few" if n < few else "medium"].append(label)
    return out
