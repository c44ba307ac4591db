"""Class names for prompts and text-initialised heads (zero-shot CLIP, LIFT).

* CIFAR-10/100: the names in the dataset's own ``batches.meta`` / ``meta`` pickle; Fashion-MNIST: its
  ten published names; digits: "0".."9"; an image folder: its class folders' names.
* ImageNet-LT, Places-LT, iNat18: their folders are synset ids, paths or numbers, so names come from a
  file their users already have, found in the data folder: ``classnames.txt`` (one name per line, in
  label order; a leading label, synset id or repeated folder is dropped, as LIFT's read_classnames
  does with its ``folder name`` lines: Places_LT/classnames.txt, ImageNet-LT's) or,
  for iNat18, ``categories.json`` (a list of {"id", "name"}).
* ``--classnames FILE`` (either format) for any dataset; its content key is part of the run's
  parameters (``classnames: file:<key>``), its path reaches trials through ``$BKDBENCH_CLASSNAMES``.

"_" reads as a space in prompts (LIFT's ``c.replace("_", " ")``, models/lift_modules.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from .registry import DataError

OWN_NAMES = ("cifar10", "cifar100", "digits", "fashion-mnist", "imagefolder")
FILES = ("classnames.txt", "categories.json")
DEFAULT = "dataset"  # the method parameter's value when the names are the dataset's own


def read_names(path: "str | os.PathLike") -> list[str]:
    """Names from a text file (one per line, optional leading label) or an iNat-style JSON list."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--classnames {path}: cannot read it ({type(exc).__name__})") from None
    if path.suffix == ".json":
        try:
            items = json.loads(text)
            return [str(c["name"]) for c in sorted(items, key=lambda c: int(c["id"]))]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"--classnames {path}: not a JSON list of {{'id', 'name'}} objects") from None
    names = []
    for line in text.splitlines():
        parts = line.strip().split()
        if not parts:
            continue
        if len(parts) > 1 and _is_id(parts[0], parts[1:]):  # LIFT's "folder name" lines
            parts = parts[1:]
        names.append(" ".join(parts))
    if not names:
        raise DataError(f"--classnames {path} holds no names")
    return names


def _is_id(first: str, rest: list) -> bool:
    """A line's first word is a label or folder, not part of the name: a number, an ImageNet synset
    (n + 8 digits), or the folder a Places-LT name repeats ("airfield airfield")."""
    return first.isdigit() or (len(first) == 9 and first[0] == "n" and first[1:].isdigit()) or first == " ".join(rest)


def names_file(dataset: str, data_dir: Optional[Path]) -> Optional[Path]:
    """A large benchmark's names file in its data folder, if there is one."""
    if dataset in OWN_NAMES or data_dir is None:
        return None
    for name in FILES:
        if (Path(data_dir).expanduser() / name).is_file():
            return Path(data_dir).expanduser() / name
    return None


def class_names(dataset: str, classes, num_classes: int, data_dir: Optional[Path] = None,
                source: str = DEFAULT) -> Optional[list[str]]:
    """The run's class names (None: this dataset has none); ``source`` is the method parameter:
    ``dataset`` or ``file:<key>`` (the file in ``$BKDBENCH_CLASSNAMES``). A wrong count is a DataError."""
    from bkdbench.paths import CLASSNAMES_ENV

    if source != DEFAULT:
        path = os.environ.get(CLASSNAMES_ENV)
        if not path:
            raise DataError(f"this run reads class names {source}: pass --classnames FILE")
        names = read_names(path)
    elif dataset in OWN_NAMES:
        names = list(classes)
    else:
        found = names_file(dataset, data_dir)
        if found is None:
            return None
        names = read_names(found)
    if len(names) != num_classes:
        raise DataError(f"class names: {len(names)} names for {num_classes} classes")
    return names
