"""From a dataset's full arrays to the long-tailed train set, the validation split and the test set."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .longtail import longtail_counts, longtail_indices, shot_split, unused_indices, validation_indices
from .registry import DatasetInfo, get_dataset


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


def load_longtail(
    dataset: str,
    imbalance_factor: float,
    profile: str = "exp",
    data_seed: int = 0,
    data_dir: Optional[Path] = None,
) -> LongTailData:
    info = get_dataset(dataset)
    arrays = info.load(Path(data_dir) if data_dir else None)
    kept = longtail_indices(arrays.train_y, imbalance_factor, profile, data_seed, n_max=info.n_max)
    val = validation_indices(
        unused_indices(arrays.train_y, imbalance_factor, profile, data_seed, n_max=info.n_max),
        info.val_per_class,
    )
    counts = longtail_counts(info.n_max, info.num_classes, imbalance_factor, profile)
    return LongTailData(
        info=info,
        train_x=arrays.train_x[kept],
        train_y=arrays.train_y[kept].astype(np.int64),
        val_x=arrays.train_x[val],
        val_y=arrays.train_y[val].astype(np.int64),
        test_x=arrays.test_x,
        test_y=arrays.test_y.astype(np.int64),
        class_counts=counts,
        classes=arrays.classes,
    )
