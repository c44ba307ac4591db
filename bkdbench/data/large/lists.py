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

Store and cache: store.py (each image decoded once into a memory-mapped uint8 square).

Identity. A run's ``data_key`` hashes the lists' bytes (not paths or mtimes): the same lists on
another machine give the same run ids; edited lists give other ones.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..registry import DataError

CACHE_FORMAT = 2  # bump when the stored layout, the resize or the validation rule changes
DEFAULT_IMAGE_SIZE = 224
EVAL_RATIO = 224 / 256  # evaluation: resize to image_size / 0.875, centre crop image_size
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the decoupling code normalises all three sets with these
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


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


# --------------------------------------------------------------------------------------------- reading

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
    from bkdbench.paths import HASH_CONTENTS_ENV
    from bkdbench.storage import file_digest

    hashed = os.environ.get(HASH_CONTENTS_ENV, "") not in ("", "0")  # store.py: keyed by bytes
    key = hashlib.sha256(f"bkdbench splitlist {CACHE_FORMAT} {benchmark.name} store={store_size} "
                         f"carve={benchmark.carve_val}{' contents' if hashed else ''}\n".encode())
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
            if hashed:  # contents, not stamps: a copy or a touched file keeps its key, an edit changes it
                key.update(f"{entry.rel}\t{st.st_size}\t{file_digest(root / entry.rel)}\n".encode())
            else:
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
