"""Your own images as a dataset: ``--dataset imagefolder --data-dir ROOT``.

Layout. ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``, optionally ``ROOT/val/<class>/*`` (images
may also sit in sub-folders of a class folder). Classes are the sorted folder names, label 0 first;
every split has the same class folders, each holding at least one image. Hidden files (``.DS_Store``)
are skipped; any other file must be an image (see ``IMAGE_SUFFIXES``). The CIFAR-10 JPEG export
(``shared/data/cifar10-jpeg.tar.gz``) sorts into CIFAR-10's own label order -- airplane, automobile,
bird, cat, deer, dog, frog, horse, ship, truck -- so class 0 is the head class, as in the reference.

Decoding (decode.py). Each image is decoded once (torchvision's decoders, Pillow as the fallback) to
RGB uint8, resized to N×N with ``image_size`` N; the first load of CIFAR-10's 60,000 JPEGs took 6 s
on 2 shared cores, cache write included. Without ``image_size`` every image must have the same size;
the error names two that differ and says to pass it. The per-channel mean/std used for normalisation
come from the decoded training images.

Cache. The decoded splits, labels, class names, mean/std and the data key are one torch file,
``<cache>/<listing key>.pt`` under ``$BKDBENCH_CACHE/imagefolder`` (default
``~/.cache/bkdbench/imagefolder``), written under a temporary name and renamed into place, and loaded
memory-mapped: a second run pays for listing the folder (~0.3 s for 60k files), not for decoding.
The listing key hashes every file's relative path, size and mtime (and ``image_size`` and the cache
format), so touching, adding, removing or renaming a file makes a new entry. A cache file that does
not load is rebuilt. Old entries are never deleted: remove the cache folder to reclaim the space.

Identity. A run on a folder carries the folder's ``data_key`` in its RunSpec: SHA-256 over every
file's relative path and bytes (and ``image_size``). Two folders with different contents never share
a run id; copies of one folder (another machine, another path, fresh mtimes) do, since they are the
same data. ``train`` refuses a folder whose key is not the run's. The fixed datasets have no key and
their run ids are unchanged.

Long-tailed subsets (splits.py). A balanced folder is subsampled like CIFAR (``longtail_indices``,
n_max = the largest training class); ``natural`` keeps every training image, needs ``val/``, and is
recorded as profile "natural" with the folder's own n_max / n_min (2 decimals) as imbalance factor.
Validation: ``val/`` when present, else ``val_per_class`` = min(20, max(1, n_max // 10)) training
images per class (20 as for CIFAR and ImageNet-LT's val), from the images the subsample did not keep;
under the default ``every-class`` split a class without enough of them (the head, which keeps its
whole folder) makes up the shortfall from the last of its kept images. Augmentation: crop with
max(1, side // 8) pixels of padding (4 for 32×32) and horizontal flip.
"""
from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from . import decode
from .registry import DataError, DatasetInfo, ImageArrays, register_dataset

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
CACHE_ENV = "BKDBENCH_CACHE"
CACHE_FORMAT = 1  # bump when the cached layout or the decoding changes
LAYOUT = "expected ROOT/train/<class>/<image> and ROOT/test/<class>/<image> (ROOT/val/<class>/ optional)"
_CHUNK = 512  # images per decoding task


def cache_dir() -> Path:
    """Where decoded folders are cached: ``$BKDBENCH_CACHE/imagefolder``, else ``~/.cache/bkdbench/imagefolder``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/bkdbench").expanduser() / "imagefolder"


@dataclass(frozen=True)
class Listing:
    """A folder's image files, without reading them: per split, (relative path, label) in label
    order, paths sorted within a class; ``key`` hashes paths, sizes and mtimes."""
    root: Path
    classes: tuple[str, ...]
    files: dict[str, tuple[tuple[str, int], ...]]
    key: str


@dataclass
class FolderData:
    root: Path
    arrays: ImageArrays
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data_key: str
    cache_file: Path
    decoded: bool  # True when this call decoded the images, False when it read the cache


# ---------------------------------------------------------------------------------------------- listing

_listings: Optional[dict] = None


@contextmanager
def scan_once() -> Iterator[None]:
    """Inside the block each folder is listed once: a suite makes dozens of specs from one folder,
    and listing 60,000 files costs ~0.3 s. Outside it every call looks at the folder afresh."""
    global _listings
    outer = _listings
    _listings = {} if outer is None else outer
    try:
        yield
    finally:
        _listings = outer


def scan_folder(root: Path, image_size: Optional[int] = None) -> Listing:
    """List ``root``'s images and check the layout; every problem is a DataError naming the path."""
    root = Path(root).expanduser()
    memo_key = (str(root.absolute()), image_size)
    if _listings is not None and memo_key in _listings:
        return _listings[memo_key]
    listing = _scan(root, image_size)
    if _listings is not None:
        _listings[memo_key] = listing
    return listing


def _scan(root: Path, image_size: Optional[int]) -> Listing:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; {LAYOUT}")
    present = [s for s in SPLITS if (root / s).is_dir()]
    for needed in ("train", "test"):
        if needed not in present:
            raise DataError(f"{root / needed} is missing; {LAYOUT}")
    class_names = {split: _class_folders(root / split) for split in present}
    classes = class_names["train"]
    for split in present[1:]:
        missing = [c for c in classes if c not in class_names[split]]
        if missing:
            raise DataError(f"{root / split / missing[0]} is missing: class {missing[0]!r} has a train/ folder "
                            f"but no {split}/ folder; every split needs the same class folders")
        extra = [c for c in class_names[split] if c not in classes]
        if extra:
            raise DataError(f"{root / split / extra[0]} has no train/ counterpart: class {extra[0]!r} is in {split}/ "
                            "but not in train/; every split needs the same class folders")
    digest = hashlib.sha256(f"bkdbench imagefolder listing {CACHE_FORMAT} image_size={image_size}\n".encode())
    files = {}
    for split in present:
        items = []
        for label, name in enumerate(classes):
            found = _images_below(root, f"{split}/{name}")
            if not found:
                raise DataError(f"{root / split / name} is an empty class folder (no images); "
                                "add images or remove the class from every split")
            for rel, size, mtime in found:
                digest.update(f"{rel}\t{size}\t{mtime}\n".encode())
                items.append((rel, label))
        files[split] = tuple(items)
    return Listing(root, tuple(classes), files, digest.hexdigest()[:32])


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{folder} is unreadable ({exc.strerror or exc})") from None


def _class_folders(split_dir: Path) -> list[str]:
    names = []
    for entry in _entries(split_dir):
        if not entry.is_dir():
            raise DataError(f"{entry.path} is not in a class folder; {LAYOUT}")
        names.append(entry.name)
    if not names:
        raise DataError(f"{split_dir} has no class folders; {LAYOUT}")
    return names


def _images_below(root: Path, rel_dir: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every image under ``root/rel_dir``, sorted by path."""
    out, todo = [], [rel_dir]
    while todo:
        current = todo.pop()
        for entry in _entries(root / current):
            rel = f"{current}/{entry.name}"
            if entry.is_dir():
                todo.append(rel)
                continue
            if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{entry.path} is not an image file (class folders hold only "
                                f"{', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))} files)")
            try:
                st = entry.stat()
            except OSError as exc:
                raise DataError(f"{entry.path} is unreadable ({exc.strerror or exc})") from None
            out.append((rel, st.st_size, st.st_mtime_ns))
    out.sort()
    return out


# --------------------------------------------------------------------------------------------- decoding

def _build(listing: Listing, image_size: Optional[int]) -> dict:
    """Decode every image of the listing into the cache's dict (see ``_to_folder_data``)."""
    import torch

    root = listing.root
    order = [(split, rel) for split, items in listing.files.items() for rel, _ in items]
    chunks = [order[i : i + _CHUNK] for i in range(0, len(order), _CHUNK)]
    content = hashlib.sha256(f"bkdbench imagefolder data image_size={image_size}\n".encode())
    images: dict[str, np.ndarray] = {}  # split → N×3×H×W, filled in listing order as chunks arrive
    filled = dict.fromkeys(listing.files, 0)
    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))  # file reads overlap decoding
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they are still
            # the fastest here (3x Pillow on small JPEGs, same pixels), and Pillow takes over once they go.
            warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision",
                                    category=DeprecationWarning)
            parts = pool.map(lambda c: decode.decode_files(root, [rel for _, rel in c], image_size), chunks)
            for chunk, part in zip(chunks, parts):
                for (split, rel), (image, file_hash) in zip(chunk, part):
                    if not images:
                        first = (rel, image.shape)
                        images = {s: np.empty((len(items), *image.shape), np.uint8) for s, items in listing.files.items()}
                    if image.shape != first[1]:
                        raise DataError(
                            f"{root / rel} is {image.shape[1]}×{image.shape[2]} but {root / first[0]} is "
                            f"{first[1][1]}×{first[1][2]}; images of different sizes need image_size "
                            "(--image-size N resizes every image to N×N)")
                    images[split][filled[split]] = image
                    filled[split] += 1
                    content.update(rel.encode() + b"\0" + file_hash)
    finally:
        pool.shutdown(cancel_futures=True)  # after a bad file, stop instead of decoding the rest
    blob = {"format": CACHE_FORMAT, "listing_key": listing.key, "data_key": content.hexdigest()[:16],
            "classes": list(listing.classes)}
    for split, items in listing.files.items():
        blob[f"{split}_x"] = torch.from_numpy(images[split])
        blob[f"{split}_y"] = torch.tensor([label for _, label in items], dtype=torch.int64)
    blob["mean"], blob["std"] = decode.channel_stats(images["train"])
    return blob


# ------------------------------------------------------------------------------------------------ cache

def _read_cache(path: Path, listing: Listing) -> Optional[dict]:
    import torch

    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated or foreign: decode again and overwrite it
        return None
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT or blob.get("listing_key") != listing.key:
        return None
    return blob


def _write_cache(path: Path, blob: dict) -> None:
    """Atomically: a temporary name in the same folder, then a rename. Concurrent writers of the
    same folder each rename a complete file; readers never see half of one."""
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the image cache {path} ({exc}); the folder will be decoded again next time",
                      stacklevel=3)


def _to_folder_data(root: Path, blob: dict, path: Path, decoded: bool) -> FolderData:
    arr = lambda key: blob[key].numpy() if key in blob else None  # noqa: E731
    arrays = ImageArrays(arr("train_x"), arr("train_y"), arr("test_x"), arr("test_y"), list(blob["classes"]),
                         val_x=arr("val_x"), val_y=arr("val_y"))
    return FolderData(root, arrays, tuple(blob["mean"]), tuple(blob["std"]), blob["data_key"], path, decoded)


def _check_image_size(image_size: Optional[int]) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive number of pixels (got {image_size!r})")


def load_folder(root: Path, image_size: Optional[int] = None) -> FolderData:
    """The folder's decoded images: from the cache when its listing is unchanged, else decoded now
    (and cached). Raises DataError naming the path for any problem with the folder."""
    _check_image_size(image_size)
    listing = scan_folder(root, image_size)
    path = cache_dir() / f"{listing.key}.pt"
    blob = _read_cache(path, listing)
    if blob is not None:
        return _to_folder_data(listing.root, blob, path, decoded=False)
    blob = _build(listing, image_size)
    _write_cache(path, blob)
    return _to_folder_data(listing.root, blob, path, decoded=True)


# ------------------------------------------------------------------------------------- dataset registry

def _need_root(root: Optional[Path]) -> Path:
    if root is None:
        raise DataError(f"imagefolder needs its folder: pass --data-dir ROOT ({LAYOUT})")
    return Path(root).expanduser()


def folder_info(root: Optional[Path], image_size: Optional[int] = None) -> DatasetInfo:
    """The DatasetInfo of one folder: its classes, statistics and content key."""
    data = load_folder(_need_root(root), image_size)
    arrays = data.arrays
    num_classes = len(arrays.classes)
    n_max = int(np.bincount(arrays.train_y, minlength=num_classes).max())
    _, _, height, width = arrays.train_x.shape
    return DatasetInfo(
        name="imagefolder",
        description=f"image folder {data.root} ({num_classes} classes, {height}×{width} RGB)",
        num_classes=num_classes,
        channels=3,
        image_size=height if height == width else max(height, width),
        mean=data.mean,
        std=data.std,
        load=lambda _root=None: arrays,
        locate=lambda _root=None: (True, str(data.root)),
        n_max=n_max,
        val_per_class=min(20, max(1, n_max // 10)),
        pad=max(1, min(height, width) // 8),
        hflip=True,
        default_model="resnet32",
        default_recipe="reference",
        # As the reference BKD code: class weights from 80% of the budget for 10 classes, from the start for 100.
        method_defaults={"bkd": {"cb_start": 0.8 if num_classes <= 10 else 0.0}},
        data_key=data.data_key,
    )


def _locate(root=None) -> tuple[bool, str]:
    if root is None:
        return False, "pass --data-dir ROOT (ROOT/train/<class>/, ROOT/test/<class>/)"
    try:
        listing = scan_folder(Path(root))
    except DataError as exc:
        return False, str(exc)
    sizes = ", ".join(f"{split} {len(items)}" for split, items in listing.files.items())
    return True, f"{listing.root} ({len(listing.classes)} classes; {sizes} images)"


register_dataset(
    DatasetInfo(
        name="imagefolder",
        description="your own images: ROOT/train/<class>/*, ROOT/test/<class>/* (val/ optional), RGB",
        num_classes=None,  # per folder: see folder_info
        channels=3,
        image_size=None,
        mean=(0.5, 0.5, 0.5),  # unused: a folder's own statistics are computed on decoding
        std=(0.25, 0.25, 0.25),
        load=lambda root=None: load_folder(_need_root(root)).arrays,
        locate=_locate,
        n_max=None,
        val_per_class=20,
        pad=4,
        hflip=True,
        default_model="resnet32",
        default_recipe="reference",
        resolve=folder_info,
    )
)
