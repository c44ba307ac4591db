"""The ImageNet-style batched augmentation (bkdbench/data/imagenet_augment.py): crop areas, aspect
ratios, flips and colour jitter measured from the output images themselves; the evaluation transform
against Pillow's Resize + CenterCrop on real JPEGs (CIFAR-10 q75, /work/shared/data); the DeviceLoader
path and the host gathering."""
from __future__ import annotations

import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bkdbench.data import DeviceLoader
from bkdbench.data.large import lists as splitlist, store as splitstore
from bkdbench.data.imagenet_augment import eval_view, gather, place, train_view
from splitlist_files import write_image

ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"
S = 200  # store side: row and column indices fit in uint8
OUT = 64


def coordinate_images(n: int) -> torch.Tensor:
    """Channel 0 = row index, channel 1 = column index, channel 2 = 0: a crop's box is readable back."""
    rows = torch.arange(S).view(S, 1).expand(S, S)
    cols = torch.arange(S).view(1, S).expand(S, S)
    one = torch.stack([rows, cols, torch.zeros(S, S, dtype=torch.long)]).to(torch.uint8)
    return one.unsqueeze(0).expand(n, 3, S, S).contiguous()


def measured_boxes(out: torch.Tensor):
    """(area fraction, aspect w/h, flipped) of each crop, from the coordinates it shows. Bilinear
    sampling at output pixel centres spans (OUT - 1) / OUT of the box."""
    rows, cols = out[:, 0].double(), out[:, 1].double()
    h = (rows[:, -1, 0] - rows[:, 0, 0]) * OUT / (OUT - 1)
    w = (cols[:, 0, -1] - cols[:, 0, 0]).abs() * OUT / (OUT - 1)
    flipped = cols[:, 0, -1] < cols[:, 0, 0]
    return (h * w / S**2), w / h, flipped


def test_crop_areas_ratios_and_flips_follow_the_recipe():
    n = 4000
    g = torch.Generator().manual_seed(0)
    out = train_view(coordinate_images(n), g, OUT, jitter=(0, 0, 0, 0))
    assert out.shape == (n, 3, OUT, OUT) and out.dtype == torch.uint8
    area, aspect, flipped = measured_boxes(out)
    # one pixel of rounding on either side of a box of at least ~56 px
    assert area.min() >= 0.08 * 0.95 and area.max() <= 1.0 + 1e-9
    assert aspect.min() >= 0.75 * 0.95 and aspect.max() <= (4 / 3) * 1.05
    assert area.min() < 0.1 and area.max() > 0.95  # spread over the whole range
    assert aspect.min() < 0.78 and aspect.max() > 1.28
    # torchvision draws the area uniformly (first try that fits): the median is near (0.08 + 1) / 2
    assert 0.45 < float(area.median()) < 0.62
    log_aspect = torch.log(aspect)  # log-uniform ratio: symmetric around 1
    assert abs(float(log_aspect.mean())) < 0.02
    rate = float(flipped.double().mean())
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / n)


def test_brightness_and_contrast_stay_within_their_ranges():
    n = 3000
    g = torch.Generator().manual_seed(1)
    grey = torch.full((n, 3, 40, 40), 128, dtype=torch.uint8)
    bright = train_view(grey, g, 32, hflip=False, jitter=(0.4, 0, 0, 0)).double().mean(dim=(1, 2, 3)) / 128
    assert bright.min() >= 0.6 - 0.01 and bright.max() <= 1.4 + 0.01
    assert bright.min() < 0.63 and bright.max() > 1.37 and abs(float(bright.mean()) - 1) < 0.02
    halves = torch.full((n, 3, 40, 40), 64, dtype=torch.uint8)
    halves[:, :, :, 20:] = 192
    # scale 1, ratio 1: the whole image, so both halves survive the crop
    out = train_view(halves, g, 40, hflip=False, scale=(1, 1), ratio=(1, 1), jitter=(0, 0.4, 0, 0)).double()
    factor = (out[:, 0, 20, 30] - out[:, 0, 20, 5]) / 128
    assert factor.min() >= 0.6 - 0.02 and factor.max() <= 1.4 + 0.02
    assert factor.min() < 0.65 and factor.max() > 1.35
    sat = train_view(halves, g, 40, hflip=False, scale=(1, 1), ratio=(1, 1), jitter=(0, 0, 0.4, 0))
    assert torch.equal(sat, halves)  # saturation leaves grey pixels as they are


def pil_eval(path: Path, image_size: int) -> np.ndarray:
    """torchvision's eval transform, Resize(round(size / 0.875)) + CenterCrop(size), on PIL directly."""
    side = round(image_size / 0.875)
    im = Image.open(path).convert("RGB")
    w, h = im.size
    new = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
    im = im.resize(new, Image.BILINEAR)
    w, h = im.size
    top, left = int(round((h - image_size) / 2)), int(round((w - image_size) / 2))
    return np.asarray(im.crop((left, top, left + image_size, top + image_size))).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def cifar_jpegs(tmp_path_factory):
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} is not here")
    root = tmp_path_factory.mktemp("cifar-jpeg")
    with tarfile.open(ARCHIVE) as tar:
        members = [m for m in tar if m.isfile() and m.name.endswith(".jpg") and "/test/" in f"/{m.name}"][:200]
        tar.extractall(root, members=members, filter="data")
    return sorted(root.rglob("*.jpg"))


@pytest.mark.parametrize("image_size", [28, 16, 12])
def test_eval_transform_matches_pillow_on_real_jpegs(cifar_jpegs, image_size):
    """Store 32 px (CIFAR's own size); evaluation at 28 is a plain centre crop, at 16 and 12 a device
    resize to 18 and 14 first: within one grey level of Pillow."""
    stored = torch.from_numpy(np.stack([splitstore.decode_store(p, 32) for p in cifar_jpegs]))
    ours = eval_view(stored, image_size).numpy().astype(int)
    theirs = np.stack([pil_eval(p, image_size) for p in cifar_jpegs]).astype(int)
    assert ours.shape == theirs.shape == (len(cifar_jpegs), 3, image_size, image_size)
    assert np.abs(ours - theirs).max() <= 1


def test_eval_of_the_store_is_pillows_resize_and_crop_of_the_full_image(tmp_path):
    """The default pairing (store = image_size / 0.875): eval pixels are exactly Pillow's Resize +
    CenterCrop of the original, whatever its aspect ratio."""
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.JPEG")
        write_image(paths[-1], i % 3, i, ("rgb", "gray", "cmyk", "png")[i % 4])
    for image_size in (28, 21):
        store = splitlist.store_size_for(image_size)
        stored = torch.from_numpy(np.stack([splitstore.decode_store(p, store) for p in paths]))
        np.testing.assert_array_equal(eval_view(stored, image_size).numpy(),
                                      np.stack([pil_eval(p, image_size) for p in paths]))


def test_loader_batches_are_crops_of_image_size_and_eval_batches_the_eval_view():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(50) % 5
    loader = DeviceLoader(images, labels, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), hflip=True, seed=3,
                          augmentation="imagenet", image_size=28)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(16, 3, 28, 28)] * 3 + [(2, 3, 28, 28)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(labels.tolist())
    assert all(x.abs().max() <= 2.0 + 1e-6 for x, _ in batches)  # normalised: (0..1 − 0.5) / 0.25
    assert torch.equal(loader.eval_batch(images), images[:, :, 2:30, 2:30])
    with pytest.raises(ValueError, match="'imagenet' needs image_size"):
        DeviceLoader(images, labels, 16, (0.5,) * 3, (0.25,) * 3, augmentation="imagenet")


def test_host_gather_and_place_on_cpu():
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    take = torch.tensor([5, 0, 39, 5])
    assert torch.equal(gather(images, take, torch.device("cpu")), images[take])
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 2, 2)
    placed = place(array, torch.device("cpu"))
    assert placed.data_ptr() == torch.from_numpy(array).data_ptr()  # a memory map is used where it is


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_gathered_batches_equal_device_resident_ones(monkeypatch):
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(300) % 7
    kw = dict(hflip=True, seed=5, augmentation="imagenet", image_size=28, device="cuda")
    resident = DeviceLoader(images.cuda(), labels, 64, (0.5,) * 3, (0.25,) * 3, **kw)
    gathered = DeviceLoader(images, labels, 64, (0.5,) * 3, (0.25,) * 3, **kw)
    for (xa, ya), (xb, yb) in zip(resident, gathered):
        assert xb.device.type == "cuda" and torch.equal(xa, xb) and torch.equal(ya, yb)
    monkeypatch.setenv("BKDBENCH_HOST_GATHER", "1")
    assert place(np.zeros((4, 3, 8, 8), np.uint8), torch.device("cuda")).device.type == "cpu"
