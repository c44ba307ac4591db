"""Generated image trees in the exact layout of the decoupling code's split lists, for the split-list
benchmarks (bkdbench/data/large/): varied sizes and aspect ratios, a grayscale JPEG, a CMYK
JPEG and a PNG named .JPEG. Pixels are a per-image random pattern plus a class-dependent colour, so a
small network can learn the classes in two epochs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZES = ((40, 30), (30, 40), (48, 48), (64, 36), (36, 64), (50, 41))  # (width, height)


def class_colour(label: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + label)
    return rng.integers(30, 225, 3)


def write_image(path: Path, label: int, index: int, kind: str = "rgb") -> None:
    rng = np.random.default_rng(index * 7919 + label)
    w, h = SIZES[index % len(SIZES)]
    pixels = np.clip(class_colour(label)[None, None, :] + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels, "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "gray":
        im.convert("L").save(path, "JPEG", quality=90)
    elif kind == "cmyk":
        im.convert("CMYK").save(path, "JPEG", quality=90)
    elif kind == "png":
        im.save(path, "PNG")  # a PNG under a .JPEG name, as a few ImageNet files are
    else:
        im.save(path, "JPEG", quality=90)


def write_imagenet_lt(root: Path, counts=(12, 6, 3), val_per_class: int = 2, test_per_class: int = 3,
                      splits_folder: str = "splits") -> dict:
    """An ImageNet-LT-shaped tree under ``root`` with its three lists in ``root/splits_folder``.
    Needs num_classes=len(counts) (tests patch the benchmark's class count). Returns the lists'
    lines per split."""
    lines = {"train": [], "val": [], "test": []}
    special = {(0, 1): "gray", (1, 0): "cmyk", (2, 1): "png"}
    for label, n in enumerate(counts):
        wnid = f"n{label:08d}"
        for i in range(n):
            rel = f"train/{wnid}/{wnid}_{i}.JPEG"
            write_image(root / rel, label, i, special.get((label, i), "rgb"))
            lines["train"].append(f"{rel} {label}")
        for i in range(val_per_class):
            rel = f"train/{wnid}/{wnid}_val{i}.JPEG"
            write_image(root / rel, label, 100 + i)
            lines["val"].append(f"{rel} {label}")
        for i in range(test_per_class):
            rel = f"val/{wnid}/ILSVRC2012_val_{label:04d}{i:04d}.JPEG"
            write_image(root / rel, label, 200 + i)
            lines["test"].append(f"{rel} {label}")
    folder = root / splits_folder if splits_folder else root
    folder.mkdir(parents=True, exist_ok=True)
    for split, split_lines in lines.items():
        (folder / f"ImageNet_LT_{split}.txt").write_text("\n".join(split_lines) + "\n")
    return lines


def _write_lists(folder: Path, names: dict, lines: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in names.items():
        (folder / name).write_text("\n".join(lines[split]) + "\n")


def write_places_lt(root: Path, counts, val_per_class: int = 4, test_per_class: int = 10) -> dict:
    """A Places-LT-shaped tree: training and validation images in Places-365's ``data_256/<letter>/<scene>/``
    folders, listed with a leading ``/`` as the OLTR lists write them, test images in ``val_256/`` as
    ``Places365_val_<8 digits>.jpg``; the lists ``Places_LT_{train,val,test}.txt`` in ``root``.
    Returns the lists' lines per split."""
    lines = {"train": [], "val": [], "test": []}
    serial = 0
    for label, n in enumerate(counts):
        scene = f"scene{label:03d}"
        for split, k, first in (("train", n, 0), ("val", val_per_class, 500)):
            for i in range(k):
                rel = f"data_256/{scene[0]}/{scene}/{first + i + 1:08d}.jpg"
                write_image(root / rel, label, first + i)
                lines[split].append(f"/{rel} {label}")
        for i in range(test_per_class):
            serial += 1
            rel = f"val_256/Places365_val_{serial:08d}.jpg"
            write_image(root / rel, label, 200 + i)
            lines["test"].append(f"/{rel} {label}")
    _write_lists(root, {s: f"Places_LT_{s}.txt" for s in lines}, lines)
    return lines


def write_inat18(root: Path, counts, val_per_class: int = 10) -> dict:
    """An iNaturalist-2018-shaped tree: ``train_val2018/<kingdom>/<class id>/<hash>.jpg`` for both lists,
    ``iNaturalist18_train.txt`` and ``iNaturalist18_val.txt`` (no test list: bkdbench carves validation
    from train and reports the val list as test). Returns the lists' lines per list."""
    lines = {"train": [], "val": []}
    kingdoms = ("Plantae", "Insecta", "Aves")
    for label, n in enumerate(counts):
        folder = f"train_val2018/{kingdoms[label % len(kingdoms)]}/{label}"
        for split, k, first in (("train", n, 0), ("val", val_per_class, 300)):
            for i in range(k):
                rel = f"{folder}/{label:04d}{first + i:05d}.jpg"
                write_image(root / rel, label, first + i)
                lines[split].append(f"{rel} {label}")
    _write_lists(root, {s: f"iNaturalist18_{s}.txt" for s in lines}, lines)
    return lines
