"""What the large benchmarks' centre-cropped store costs in accuracy, measured on real images.

    tar xzf ../shared/data/cifar10-jpeg.tar.gz -C /tmp/cifar10-jpeg
    python benchmarks/centre_crop_cost.py --cifar /tmp/cifar10-jpeg --work /tmp/centre-crop --seeds 3

The store of ImageNet-LT & co. (bkdbench/data/large/) keeps the central square of each image
(short side resized to ``store_size``), and random-resized crops are drawn from that square; the
reference code draws them from the whole image. This script trains the same runs both ways and
reports the paired difference:

- The images: CIFAR-10's real photographs (the JPEG tree in ../shared/data), long-tailed as
  CIFAR-10-LT (IF 100; the last 20 training images of each class validate, so the head class keeps
  4,980 and 12,386 images train, as bkdbench's every-class split; the 10,000 test images), each stretched to 64×48 (4:3, ImageNet's most common shape) and written
  as a JPEG (quality 90) in the ImageNet-LT list layout (ImageNet_LT_{train,val,test}.txt).
- ``square``: the store exactly as ``bkdbench train --dataset imagenet-lt`` builds it
  (``splitlist.scan`` + ``load_listing``, a 10-class copy of the ImageNet-LT benchmark): at
  ``--image-size 32`` each image becomes its central 37×37 after resizing to 49×37, a quarter of its
  width never seen.
- ``full``: the same resize without the crop (37×49 arrays), so the random-resized crops (area
  0.08–1 and ratio 3/4–4/3 of the *whole* image) can reach the sides.
- Evaluation is the same for both: the stored square's centre 32×32 crop (= Resize(37) +
  CenterCrop(32) of the image). Both train through ``bkdbench.training.train`` with the
  ``imagenet`` augmentation (crop, flip, colour jitter), ResNet-8, the ``cpu-short`` recipe
  (10 epochs), CE, seeds 0..N-1: the same seed gives the same initial weights and batch order in
  both, so the difference per seed is paired.

Stretching a 32×32 photograph to 4:3 is a stand-in for a wider scene: its sides hold real image
content (the object's surroundings), but no more detail than the original. The figure is therefore
one measured point for this geometry, not a prediction for ImageNet at 224 px.

Writes ``--out`` (JSON: per-seed test and validation top-1 of both, the paired differences, mean ±
sample std) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPE = (64, 48)  # (width, height) of every written image: 4:3


def write_tree(cifar: Path, root: Path, imbalance: float) -> None:
    """The long-tailed CIFAR-10 subset, stretched to SHAPE, as an ImageNet-LT-format tree with lists."""
    from PIL import Image

    from bkdbench.data.longtail import longtail_counts

    classes = sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir())
    counts = longtail_counts(5000, len(classes), imbalance, "exp")
    lines = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        train_files = sorted((cifar / "train" / name).iterdir())
        # the last 20 training images validate (the head class gives them up, as the every-class split does)
        picks = {"train": train_files[: min(counts[label], 4980)], "val": train_files[4980:5000],
                 "test": sorted((cifar / "test" / name).iterdir())}
        for split, files in picks.items():
            for f in files:
                rel = f"{'val' if split == 'test' else 'train'}/{name}/{split}_{f.stem}.JPEG"
                out = root / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(f) as im:
                    im.convert("RGB").resize(SHAPE, Image.BICUBIC).save(out, "JPEG", quality=90)
                lines[split].append(f"{rel} {label}")
    for split, split_lines in lines.items():
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(split_lines) + "\n")


def decode_full(path: Path, store: int) -> np.ndarray:
    """``splitstore.decode_store``'s resize (short side to ``store``, bilinear, antialiased) without
    its centre crop: the whole image, 3×store×(store·4/3)."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    size = (int(store * w / h), store) if w >= h else (store, int(store * h / w))
    return np.asarray(rgb.resize(size, Image.BILINEAR), dtype=np.uint8).transpose(2, 0, 1)


def register(name: str, arrays, image_size: int):
    from bkdbench.data.registry import DatasetInfo, register_dataset
    from bkdbench.data.large.lists import IMAGENET_MEAN, IMAGENET_STD

    return register_dataset(DatasetInfo(
        name=name, description=f"centre-crop cost: {name}", num_classes=10, channels=3, image_size=image_size,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, load=lambda _root=None: arrays, locate=lambda _root=None: (True, name),
        n_max=5000, val_per_class=20, pad=0, hflip=True, default_model="resnet8", default_recipe="cpu-short",
        augmentation="imagenet", natural_only=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, required=True, help="the extracted cifar10-jpeg tree (train/, test/)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the written tree and the store")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--imbalance", type=float, default=100.0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the cpu-short recipe's 10")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import os

    import torch

    from bkdbench.data.large import lists as splitlist, store as splitstore
    from bkdbench.data.large.imagenet_lt import IMAGENET_LT
    from bkdbench.data.registry import ImageArrays
    from bkdbench.specs import make_spec
    from bkdbench.training.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    tree = args.work / "images"
    if not (tree / "ImageNet_LT_test.txt").exists():
        print(f"writing the 4:3 tree under {tree}", flush=True)
        write_tree(args.cifar, tree, args.imbalance)
    os.environ[splitstore.CACHE_ENV] = str(args.work / "cache")
    benchmark = replace(IMAGENET_LT, name="cifar10-lt-4x3", num_classes=10)
    store = splitlist.store_size_for(args.image_size)
    listing = splitlist.scan(tree, benchmark, store)
    square = splitstore.load_listing(listing).arrays  # exactly what `bkdbench train --dataset imagenet-lt` stores
    full_x = np.stack([decode_full(tree / e.rel, store) for e in listing.splits["train"]])
    full = ImageArrays(full_x, square.train_y, square.test_x, square.test_y, square.classes,
                       val_x=square.val_x, val_y=square.val_y)
    variants = {"square": register("cc-square", square, args.image_size), "full": register("cc-full", full, args.image_size)}
    print(f"train {square.train_x.shape} square, {full_x.shape} full; val {square.val_x.shape}; test {square.test_x.shape}",
          flush=True)

    runs = []
    for seed in range(args.seeds):
        for variant, info in variants.items():
            spec = make_spec(info.name, "natural", "ce", seed=seed, model="resnet8", recipe="cpu-short", epochs=args.epochs)
            t0 = time.perf_counter()
            result = train(spec, device="cpu")
            m = result.metrics
            runs.append({"variant": variant, "seed": seed, "top1": m["top1"], "val_top1": m["val_top1"],
                         "many": m.get("many"), "few": m.get("few"), "seconds": time.perf_counter() - t0})
            print(f"seed {seed} {variant:6s}: test top-1 {m['top1']:.2f}  val {m['val_top1']:.2f}  "
                  f"({runs[-1]['seconds']:.0f} s)", flush=True)

    def stats(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                "values": values}

    out = {"image_shape": list(SHAPE), "image_size": args.image_size, "store_size": store,
           "imbalance": args.imbalance, "seeds": args.seeds, "model": "resnet8", "recipe": "cpu-short",
           "train_images": int(len(square.train_y)), "runs": runs, "torch": torch.__version__}
    for metric in ("top1", "val_top1"):
        by = {v: [r[metric] for r in runs if r["variant"] == v] for v in variants}
        out[metric] = {v: stats(by[v]) for v in variants}
        out[metric]["square_minus_full"] = stats([a - b for a, b in zip(by["square"], by["full"])])
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print("\n| crops drawn from | test top-1 (mean ± std) | val top-1 |\n|---|---:|---:|")
    for v in variants:
        t, vv = out["top1"][v], out["val_top1"][v]
        print(f"| {v} | {t['mean']:.2f} ± {t['std'] or 0:.2f} | {vv['mean']:.2f} ± {vv['std'] or 0:.2f} |")
    d = out["top1"]["square_minus_full"]
    print(f"| square − full (paired) | {d['mean']:+.2f} ± {d['std'] or 0:.2f} | "
          f"{out['val_top1']['square_minus_full']['mean']:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
