"""The field's large benchmarks from their standard split lists: ImageNet-LT, Places-LT, iNaturalist 2018.

Lists. One ``relative/path label`` per line, exactly the files the decoupling code (Kang et al., ICLR
2020, facebookresearch/classifier-balancing, ``data/<set>/``) ships: ``ImageNet_LT_{train,val,test}.txt``,
``Places_LT_{train,val,test}.txt``, ``iNaturalist18_{train,val}.txt``. Paths are relative to the image
root given as ``--data-dir ROOT`` (a leading ``/`` is ignored); the lists are found in ``--splits DIR``
when given (``$BKDBENCH_SPLITS``), else ``ROOT/splits/``, else ``ROOT/``. Blank lines are skipped; anything else that is not
``path integer-label`` with the label in range, a path listed twice in one list, a missing file or an
image that does not decode is a DataError naming the list file and the line.

Splits. ImageNet-LT and Places-LT: the official val list (20 per class) validates, the test list is
only reported. iNat18 has no separate test list: validation is carved from the train list -- per
class, the last ``inat_val_count(n)`` images in list order (``min(3, max(1, n // 10))`` when the class
has at least 2, else none) -- and the official val list is reported as test, so nothing is chosen on
the reported split. The carved images leave the training set (437,513 listed; between one and three
per class, at most 24,426, are held out).

Store. Each image is decoded once (Pillow: grayscale, CMYK and palette images become RGB; the file's
contents decide the format, so a PNG named .JPEG reads fine), its short side resized to
``store_size`` (bilinear, antialiased, as torchvision's ``Resize(int)``) and centre-cropped to
``store_size``² (torchvision's ``CenterCrop``, moved by at most a pixel so that evaluation's crop is
exactly ``Resize(store_size)`` + ``CenterCrop(image_size)`` of the original image). ``store_size`` is ``round(image_size / 0.875)``:
256 for 224 training, the standard 256→224 evaluation ratio (``--image-size 28`` stores 32).

Cache. Per split, a uint8 N×3×S×S ``.npy`` file opened memory-mapped (ImageNet-LT's train split is
22.8 GB at 256 px, and never has to fit in RAM), its labels, and ``meta.json``, in one folder
``$BKDBENCH_CACHE/splitlist/<name>-<key>/`` (default ``~/.cache/bkdbench``). The key hashes the lists'
bytes, every listed file's (path, size, mtime), ``store_size``, the validation rule and the cache
format. It is built in a temporary folder and renamed into place, so an interrupted decode leaves no
folder that is later trusted; a folder without a matching ``meta.json`` is never read. Decoding uses a
process pool over chunks (every core, or ``$BKDBENCH_DECODE_WORKERS``); each worker writes its rows
straight into the memory-mapped file. Progress goes to a callback (``decode_progress``): the core
never prints, the CLI shows a bar with images/s.

Identity. A run's ``data_key`` hashes the lists' bytes (not paths or mtimes): the same lists on
another machine give the same run ids; edited lists give other ones.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from .registry import DataError, DatasetInfo, ImageArrays, register_dataset

CACHE_ENV = "BKDBENCH_CACHE"
WORKERS_ENV = "BKDBENCH_DECODE_WORKERS"
CACHE_FORMAT = 2  # bump when the stored layout, the resize or the validation rule changes
DEFAULT_IMAGE_SIZE = 224
EVAL_RATIO = 224 / 256  # evaluation: resize to image_size / 0.875, centre crop image_size
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the decoupling code normalises all three sets with these
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
_CHUNK = 256  # images per decoding task


def store_size_for(image_size: int) -> int:
    """The stored side for training crops of ``image_size``: 256 for 224 (the 256→224 ratio)."""
    return max(1, round(image_size / EVAL_RATIO))


def inat_val_count(n: int) -> int:
    """How many of a class's ``n`` training images iNat18 validation takes (the last ones in list order)."""
    return min(3, max(1, n // 10)) if n >= 2 else 0


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    num_classes: int
    lists: dict  # split → list file name; iNat18 has no "test" list of its own
    carve_val: bool = False  # validation carved from the train list (iNat18), the val list reported as test
    default_model: str = "resnet50"
    default_recipe: str = "imagenet-lt"
    sizes: dict = field(default_factory=dict)  # the documented sizes (docs/large-benchmarks.md)

    def list_files(self) -> dict:
        """split → list file name, after the carve (iNat18: its val list is the test split)."""
        if self.carve_val:
            return {"train": self.lists["train"], "test": self.lists["val"]}
        return dict(self.lists)


@dataclass(frozen=True)
class Entry:
    rel: str
    label: int
    list_file: Path
    line: int


@dataclass(frozen=True)
class Listing:
    root: Path
    benchmark: Benchmark
    store_size: int
    splits: dict  # split → tuple[Entry, ...]
    classes: tuple
    key: str  # cache key: list bytes, file stats, store size, rule, format
    data_key: str  # run identity: list bytes only


# -------------------------------------------------------------------------------------------- progress

_progress: Optional[Callable[[str, int, int], None]] = None


def set_progress(callback: Optional[Callable[[str, int, int], None]]) -> None:
    """From now on (a CLI process), decoding calls ``callback(description, done, total)``."""
    global _progress
    _progress = callback


@contextmanager
def decode_progress(callback: Callable[[str, int, int], None]) -> Iterator[None]:
    """Inside the block, decoding calls ``callback(description, done, total)`` as chunks finish."""
    global _progress
    outer, _progress = _progress, callback
    try:
        yield
    finally:
        _progress = outer


# --------------------------------------------------------------------------------------------- reading

def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/bkdbench").expanduser() / "splitlist"


def splits_dir_given() -> Optional[Path]:
    """``--splits DIR`` (``$BKDBENCH_SPLITS``, set by the CLI and forwarded to trials), else None."""
    from bkdbench.paths import SPLITS_ENV

    given = os.environ.get(SPLITS_ENV)
    return Path(given).expanduser() if given else None


def find_list(root: Path, name: str, splits_dir: Optional[Path] = None) -> Path:
    splits_dir = splits_dir or splits_dir_given()
    places = ([Path(splits_dir).expanduser()] if splits_dir else []) + [root / "splits", root]
    for place in places:
        if (place / name).is_file():
            return place / name
    raise DataError(f"split list {name} not found (looked in {', '.join(str(p) for p in places)}); "
                    "put the decoupling code's lists (data/<set>/*.txt) in ROOT/splits/ or pass --splits DIR")


def read_list(path: Path, num_classes: int) -> tuple[list[Entry], bytes]:
    """The entries of one list file and its bytes; every malformed line is a DataError naming it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path} is unreadable ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not a text file ({exc})") from None
    entries, seen = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        where = f"{path}:{number}"
        if len(parts) != 2:
            raise DataError(f"{where}: expected 'relative/path label', got {line.strip()!r}")
        rel, token = parts[0].lstrip("/"), parts[1]
        try:
            label = int(token)
        except ValueError:
            raise DataError(f"{where}: label {token!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise DataError(f"{where}: label {label} is out of range 0..{num_classes - 1}")
        if rel in seen:
            raise DataError(f"{where}: {rel} is listed twice (first on line {seen[rel]})")
        seen[rel] = number
        entries.append(Entry(rel, label, path, number))
    if not entries:
        raise DataError(f"{path} is an empty list (no 'relative/path label' lines)")
    return entries, data


def _carve(train: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """iNat18's validation: per class the last ``inat_val_count`` train entries in list order."""
    by_class: dict[int, list[int]] = {}
    for i, entry in enumerate(train):
        by_class.setdefault(entry.label, []).append(i)
    held = set()
    for positions in by_class.values():
        k = inat_val_count(len(positions))
        held.update(positions[len(positions) - k:] if k else [])
    return [e for i, e in enumerate(train) if i not in held], [e for i, e in enumerate(train) if i in held]


def scan(root: Path, benchmark: Benchmark, store_size: int, splits_dir: Optional[Path] = None) -> Listing:
    """Read the lists, check every line and stat every listed file (no decoding)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{benchmark.name}: image root {root} does not exist; pass --data-dir ROOT "
                        "(the folder the list paths are relative to)")
    key = hashlib.sha256(f"bkdbench splitlist {CACHE_FORMAT} {benchmark.name} store={store_size} "
                         f"carve={benchmark.carve_val}\n".encode())
    identity = hashlib.sha256(f"bkdbench splitlist {benchmark.name}\n".encode())
    splits: dict[str, list[Entry]] = {}
    for split, name in benchmark.list_files().items():
        path = find_list(root, name, splits_dir)
        entries, data = read_list(path, benchmark.num_classes)
        key.update(name.encode() + b"\0" + data + b"\0")
        identity.update(name.encode() + b"\0" + data + b"\0")
        for entry in entries:
            try:
                st = os.stat(root / entry.rel)
            except OSError as exc:
                raise DataError(f"{entry.list_file}:{entry.line}: {root / entry.rel} "
                                f"{'does not exist' if isinstance(exc, FileNotFoundError) else 'is unreadable'}") from None
            key.update(f"{entry.rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        splits[split] = entries
    if benchmark.carve_val:
        splits["train"], splits["val"] = _carve(splits["train"])
    counts = np.bincount([e.label for e in splits["train"]], minlength=benchmark.num_classes)
    if counts.min() == 0:
        missing = int(np.argmin(counts))
        raise DataError(f"{find_list(root, benchmark.list_files()['train'], splits_dir)}: class {missing} has no "
                        f"training images (labels must cover 0..{benchmark.num_classes - 1})")
    names: dict[int, str] = {}
    for entry in splits["train"]:  # a class's name: the folder of its first training image
        names.setdefault(entry.label, Path(entry.rel).parent.name or str(entry.label))
    classes = tuple(names[c] for c in range(benchmark.num_classes))
    return Listing(root, benchmark, store_size, {s: tuple(splits[s]) for s in SPLITS}, classes,
                   key.hexdigest()[:32], identity.hexdigest()[:16])


# -------------------------------------------------------------------------------------------- decoding

def decode_store(path: Path, store_size: int, where: str = "") -> np.ndarray:
    """One image file → RGB uint8 3×S×S: short side resized to S (torchvision's ``Resize(S)`` on a PIL
    image: bilinear, antialiased, long side truncated), then the centre S×S (``CenterCrop(S)``)."""
    from PIL import Image

    prefix = f"{where}: " if where else ""
    try:
        with Image.open(path) as im:
            im.load()  # truncated files raise here
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{prefix}{path} does not exist") from None
    except Exception as exc:  # Pillow raises many types for truncated or foreign files
        raise DataError(f"{prefix}{path} is not a readable image ({type(exc).__name__}: {exc})") from None
    w, h = rgb.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = store_size, int(store_size * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != (w, h):
        rgb = rgb.resize(size, Image.BILINEAR)
    w, h = rgb.size
    top, left = _store_offset(h, store_size), _store_offset(w, store_size)
    rgb = rgb.crop((left, top, left + store_size, top + store_size))
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _store_offset(side: int, store_size: int) -> int:
    """Where the stored square starts along a resized side: the centre, moved by at most one pixel so
    that the evaluation crop of ``crop = round(0.875 · store_size)`` inside the store is exactly
    torchvision's ``CenterCrop(crop)`` of the whole resized side (its offsets round half to even, so
    two centre crops in a row can land one pixel off the one-step crop)."""
    crop = round(store_size * EVAL_RATIO)
    offset = int(round((side - crop) / 2.0)) - int(round((store_size - crop) / 2.0))
    return min(max(offset, 0), side - store_size)


def _decode_chunk(npy: str, start: int, items: list[tuple[str, str]], store_size: int) -> int:
    """Decode ``items`` ((path, "list:line")) into rows ``start..`` of the memory-mapped ``npy`` file."""
    out = np.load(npy, mmap_mode="r+")
    for i, (path, where) in enumerate(items):
        out[start + i] = decode_store(Path(path), store_size, where)
    out.flush()
    del out
    return len(items)


def decode_workers() -> int:
    if os.environ.get(WORKERS_ENV):
        return max(1, int(os.environ[WORKERS_ENV]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _build(listing: Listing, target: Path) -> None:
    """Decode every split into a temporary folder next to ``target``, then rename it into place."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        tasks, total = [], 0
        for split, entries in listing.splits.items():
            npy = tmp / f"{split}_x.npy"
            rows = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8,
                                             shape=(len(entries), 3, listing.store_size, listing.store_size))
            del rows
            np.save(tmp / f"{split}_y.npy", np.array([e.label for e in entries], dtype=np.int64))
            for start in range(0, len(entries), _CHUNK):
                items = [(str(listing.root / e.rel), f"{e.list_file}:{e.line}") for e in entries[start : start + _CHUNK]]
                tasks.append((str(npy), start, items, listing.store_size))
            total += len(entries)
        description = f"decoding {listing.benchmark.name} at {listing.store_size}px"
        done, workers = 0, min(decode_workers(), max(1, len(tasks)))
        if _progress:
            _progress(description, 0, total)
        if workers == 1:
            for task in tasks:
                done += _decode_chunk(*task)
                if _progress:
                    _progress(description, done, total)
        else:
            import multiprocessing

            # spawn: a fresh interpreter per worker, safe next to Ray's and torch's threads
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_decode_chunk, *task) for task in tasks]
                try:
                    for future in as_completed(futures):
                        done += future.result()
                        if _progress:
                            _progress(description, done, total)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
        meta = {"format": CACHE_FORMAT, "key": listing.key, "data_key": listing.data_key,
                "store_size": listing.store_size, "classes": list(listing.classes),
                "counts": {s: len(e) for s, e in listing.splits.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same cache first: keep theirs
            if not _valid(target, listing):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _valid(folder: Path, listing: Listing) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == CACHE_FORMAT and meta.get("key") == listing.key


@dataclass
class StoredSplits:
    arrays: ImageArrays
    folder: Path
    decoded: bool  # True when this call decoded the images, False on a cache hit


def load_listing(listing: Listing) -> StoredSplits:
    """The listing's stored images, memory-mapped: from the cache when its key matches, else decoded now."""
    folder = cache_dir() / f"{listing.benchmark.name}-{listing.key}"
    decoded = False
    if not _valid(folder, listing):
        if folder.exists():  # a foreign or damaged folder under our name: replace it
            shutil.rmtree(folder, ignore_errors=True)
        made = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            _build(listing, folder)
        except BaseException:
            for empty in made:  # a failed decode leaves not even an empty cache folder behind
                try:
                    empty.rmdir()
                except OSError:
                    break
            raise
        decoded = True
    # copy-on-write: torch gets a writable array; nothing is ever written back to the file
    x = {s: np.load(folder / f"{s}_x.npy", mmap_mode="c") for s in SPLITS}
    y = {s: np.load(folder / f"{s}_y.npy") for s in SPLITS}
    arrays = ImageArrays(x["train"], y["train"], x["test"], y["test"], list(listing.classes),
                         val_x=x["val"], val_y=y["val"])
    return StoredSplits(arrays, folder, decoded)


# ------------------------------------------------------------------------------------ dataset registry

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
