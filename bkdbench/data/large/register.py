"""The split-list benchmarks as datasets: a ``Benchmark`` (lists.py: its lists and rules)
registered as a ``DatasetInfo`` that is resolved per image root and image size, and whose images
are the decoded store (store.py). ImageNet-LT, Places-LT and iNat18 each register one."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..registry import DataError, DatasetInfo, register_dataset
from .lists import DEFAULT_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, Benchmark, scan, store_size_for
from .store import load_listing


def _need_root(benchmark: Benchmark, root: Optional[Path]) -> Path:
    if root is None:
        raise DataError(f"{benchmark.name} needs its images: pass --data-dir ROOT (the folder the paths in "
                        f"{', '.join(benchmark.lists.values())} are relative to)")
    return Path(root).expanduser()


def _check_image_size(image_size: Optional[int]) -> int:
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"image_size must be at least 8 pixels (got {image_size!r})")
    return image_size


def _resolved(benchmark: Benchmark, root: Optional[Path], image_size: Optional[int]) -> DatasetInfo:
    size = _check_image_size(image_size)
    listing = scan(_need_root(benchmark, root), benchmark, store_size_for(size))
    counts = np.bincount([e.label for e in listing.splits["train"]], minlength=benchmark.num_classes)
    return _info(benchmark, size, load=lambda _root=None: load_listing(scan(listing.root, benchmark, listing.store_size)).arrays,
                 n_max=int(counts.max()), data_key=listing.data_key,
                 description=f"{benchmark.description}; {listing.root}, {size}px crops of a {listing.store_size}px store")


def _info(benchmark: Benchmark, image_size: int, load, n_max=None, data_key=None, description=None,
          resolve=None) -> DatasetInfo:
    return DatasetInfo(
        name=benchmark.name,
        description=description or benchmark.description,
        num_classes=benchmark.num_classes,
        channels=3,
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        load=load,
        locate=lambda root=None: _locate(benchmark, root),
        n_max=n_max,
        val_per_class=20,
        pad=0,
        hflip=True,
        default_model=benchmark.default_model,
        default_recipe=benchmark.default_recipe,
        augmentation="imagenet",
        natural_only=True,
        resolve=resolve,
        data_key=data_key,
    )


def _locate(benchmark: Benchmark, root=None) -> tuple[bool, str]:
    if root is None:
        return False, f"pass --data-dir ROOT with {', '.join(benchmark.lists.values())} in ROOT/splits/ or ROOT/"
    try:
        listing = scan(Path(root), benchmark, store_size_for(DEFAULT_IMAGE_SIZE))
    except DataError as exc:
        return False, str(exc)
    sizes = ", ".join(f"{s} {len(e)}" for s, e in listing.splits.items())
    return True, f"{listing.root} ({benchmark.num_classes} classes; {sizes} images)"


def register_benchmark(benchmark: Benchmark) -> DatasetInfo:
    """Register a split-list benchmark: its DatasetInfo is resolved per image root and image size."""
    def load_unresolved(root=None):
        return _resolved(benchmark, root, None).load(root)

    return register_dataset(_info(benchmark, DEFAULT_IMAGE_SIZE, load=load_unresolved,
                                  resolve=lambda root, image_size: _resolved(benchmark, root, image_size)))
