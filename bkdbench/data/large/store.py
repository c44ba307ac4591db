"""The decoded store of the split-list benchmarks (lists.py): every listed image decoded once
into a memory-mapped uint8 square, content-keyed, built atomically by a process pool.

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
format; with ``$BKDBENCH_HASH_CONTENTS=1`` every file's bytes instead of its mtime (slower: every
image is read once more per scan; for trees copied or restored with new timestamps, or file systems
whose mtimes cannot be trusted). It is built in a temporary folder and renamed into place, so an interrupted decode leaves no
folder that is later trusted; a folder without a matching ``meta.json`` is never read. Decoding uses a
process pool over chunks (every core, or ``$BKDBENCH_DECODE_WORKERS``); each worker writes its rows
straight into the memory-mapped file. Progress goes to a callback (``decode_progress``): the core
never prints, the CLI shows a bar with images/s.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ..registry import DataError, ImageArrays
from .lists import CACHE_FORMAT, EVAL_RATIO, SPLITS, Listing

CACHE_ENV = "BKDBENCH_CACHE"
WORKERS_ENV = "BKDBENCH_DECODE_WORKERS"
_CHUNK = 256  # images per decoding task

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


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/bkdbench").expanduser() / "splitlist"


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
        _install(tmp, target, listing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install(tmp: Path, target: Path, listing: Listing) -> None:
    """Rename the finished store ``tmp`` to ``target``. A valid store found there (another process
    decoded the same listing first) is kept and ``tmp`` dropped; a folder there that is no valid store
    is renamed aside, then removed. A valid store is never removed: another process may be about to
    open it (two processes decoding one listing at once once lost the first one's store that way)."""
    for _ in range(5):
        try:
            os.rename(tmp, target)
            return
        except OSError:  # a folder is there
            if _valid(target, listing):  # another process finished the same store first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return
        aside = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        try:
            os.rename(target, aside)  # atomic: nobody sees a half-removed folder under the store's name
        except FileNotFoundError:  # someone else moved it aside: try again
            continue
        if _valid(aside, listing):  # became valid between the look and the move: put it back
            try:
                os.rename(aside, target)
            except OSError:
                pass  # a valid store is at target again; this one stays aside, hidden, never removed
            continue
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"could not put the decoded store in place at {target}")


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
        # A folder under our name is not removed here: it may be another process's store, finished
        # since the look above; _install replaces it only if it is still no valid store.
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
