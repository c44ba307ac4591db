"""scikit-learn's 8×8 digits (1,797 images, shipped inside the scikit-learn wheel): runs anywhere.

Split (fixed, independent of the data seed): per class, a permutation from RandomState(2024);
the first 50 images of each class form the balanced test set (500 images), the rest (124–133 per
class) the training pool that the long-tail profile subsamples with n_max = 100. Validation:
10 per class from the pool images the subsample did not keep (every class has at least 24), so both
splits (``every-class``, ``reference``) give the same 100 validation images and the reference training set.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .registry import DatasetInfo, ImageArrays, register_dataset

TEST_PER_CLASS = 50


def _csv() -> "Path | None":
    """scikit-learn's own copy of the data (``datasets/data/digits.csv.gz``: 64 pixels and the label per
    line), found without importing scikit-learn: its import costs 2-3 s of CPU in every process that
    loads digits (each CLI command, each Ray trial), the read 10 ms."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # a top-level package: located, not imported
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    return path if path is not None and path.is_file() else None


def _pixels_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """(1797×8×8 float pixels 0..16, 1797 labels), as ``sklearn.datasets.load_digits`` gives them."""
    path = _csv()
    if path is None:  # a scikit-learn that lays its data out otherwise
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


@lru_cache(maxsize=1)
def _load(_root=None) -> ImageArrays:
    pixels, target = _pixels_and_labels()
    # Pixel values are 0..16; scale to 0..255 so every dataset is uint8 images.
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = target.astype(np.int64)
    rng = np.random.RandomState(2024)
    train, test = [], []
    for label in range(10):
        idx = rng.permutation(np.where(labels == label)[0])
        test.append(idx[:TEST_PER_CLASS])
        train.append(idx[TEST_PER_CLASS:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    return ImageArrays(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], [str(i) for i in range(10)])


def _locate(_root=None):
    return True, "inside the scikit-learn package"


register_dataset(
    DatasetInfo(
        name="digits",
        description="scikit-learn digits, 8×8 grey, 10 classes (embedded, no download)",
        num_classes=10,
        channels=1,
        image_size=8,
        mean=(0.3053,),
        std=(0.3759,),
        load=lambda root=None: _load(),
        locate=_locate,
        n_max=100,
        val_per_class=10,
        pad=1,
        hflip=False,  # a mirrored digit is a different glyph
        default_model="cnn-small",
        default_recipe="small",
        many_threshold=50,
        few_threshold=15,
        # 10 classes: follow the reference's CIFAR-10 schedule (class weights from 80% of the budget).
        method_defaults={"bkd": {"cb_start": 0.8}},
    )
)
