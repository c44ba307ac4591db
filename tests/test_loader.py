"""The device-resident loader: sampling, crop-with-padding, flips and normalisation.

Input images encode who they are: channels 0/1 hold the image index (high/low byte), channel 2 the
row + 1 and channel 3 the column + 1, so zero padding is recognisable and each output pixel says
where it came from. Outputs are then checked against a brute-force search over every crop offset
and flip of the zero-padded input, written here without the code under test."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bkdbench.data import DeviceLoader, normalize, random_crop_flip

H = W = 8


def encoded_images(n: int, h: int = H, w: int = W) -> torch.Tensor:
    x = torch.zeros(n, 4, h, w, dtype=torch.uint8)
    idx = torch.arange(n)
    x[:, 0] = (idx // 256)[:, None, None].to(torch.uint8)
    x[:, 1] = (idx % 256)[:, None, None].to(torch.uint8)
    x[:, 2] = (torch.arange(h) + 1)[None, :, None].to(torch.uint8)
    x[:, 3] = (torch.arange(w) + 1)[None, None, :].to(torch.uint8)
    return x


def decode_index(batch_uint8: torch.Tensor) -> torch.Tensor:
    """The source index: every non-padding pixel carries it and padding is 0, so take the maximum
    (with pad = H/2 no single pixel position is guaranteed to be inside the image)."""
    top = batch_uint8.amax(dim=(2, 3)).long()
    return top[:, 0] * 256 + top[:, 1]


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """Undo normalisation with mean 0, std 1: x / 255."""
    return torch.round(batch * 255).to(torch.uint8)


def all_crops(image: np.ndarray, pad: int, hflip: bool) -> dict:
    """Every (dy, dx, flip) view of the zero-padded image, built with NumPy slicing."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), dtype=image.dtype)
    padded[:, pad : pad + h, pad : pad + w] = image
    out = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out[(dy, dx, False)] = crop
            if hflip:
                out[(dy, dx, True)] = crop[:, :, ::-1]
    return out


def matching_views(output: np.ndarray, source: np.ndarray, pad: int, hflip: bool) -> list:
    return [key for key, view in all_crops(source, pad, hflip).items() if np.array_equal(view, output)]


def test_random_crop_flip_outputs_are_crops_of_the_padded_input():
    x = encoded_images(256)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=4, hflip=True, generator=gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    seen = set()
    for i in range(256):
        views = matching_views(out[i].numpy(), x[i].numpy(), 4, True)
        assert len(views) == 1, f"image {i}: output is not a crop/flip of its zero-padded input"
        seen.add(views[0])
    offsets = {(dy, dx) for dy, dx, _ in seen}
    flips = {f for _, _, f in seen}
    assert len(offsets) >= 30  # 81 possible offsets; 256 draws should hit most of them
    assert flips == {True, False}
    # both extremes of the padding are used
    assert {dy for dy, _ in offsets} == set(range(9)) and {dx for _, dx in offsets} == set(range(9))


def test_flip_frequency_is_about_half():
    x = encoded_images(2000)
    out = random_crop_flip(x, pad=0, hflip=True, generator=torch.Generator().manual_seed(1))
    # column channel runs 1..W left to right when unflipped, W..1 when flipped
    flipped = (out[:, 3, 0, 0] == W).float().mean().item()
    assert 0.45 < flipped < 0.55
    assert ((out[:, 3, 0, 0] == 1) | (out[:, 3, 0, 0] == W)).all()


def test_no_pad_no_flip_is_identity():
    x = encoded_images(16)
    assert torch.equal(random_crop_flip(x, pad=0, hflip=False, generator=torch.Generator().manual_seed(0)), x)


def test_random_crop_flip_is_reproducible_by_seed():
    x = encoded_images(64)
    a = random_crop_flip(x, 4, True, torch.Generator().manual_seed(7))
    b = random_crop_flip(x, 4, True, torch.Generator().manual_seed(7))
    c = random_crop_flip(x, 4, True, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_normalize_matches_hand_formula():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # 1×2×1×2
    mean = torch.tensor([0.5, 0.2]).view(1, 2, 1, 1)
    std = torch.tensor([0.25, 0.1]).view(1, 2, 1, 1)
    expected = torch.tensor([[[[(0 - 0.5) / 0.25, (1 - 0.5) / 0.25]], [[(0.2 - 0.2) / 0.1, (0.4 - 0.2) / 0.1]]]])
    torch.testing.assert_close(normalize(x, mean, std), expected, rtol=0, atol=1e-6)


def _loader(images, labels, **kw):
    kw.setdefault("pad", 4)
    kw.setdefault("hflip", True)
    return DeviceLoader(images, labels, kw.pop("batch_size", 128), (0.0,) * 4, (1.0,) * 4, **kw)


def test_batches_keep_shapes_dtypes_and_labels():
    n = 300
    images = encoded_images(n)
    labels = torch.from_numpy(np.random.RandomState(0).randint(0, 7, n)).long()
    loader = _loader(images, labels, seed=0)
    checked = 0
    for x, y in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (4, H, W)
        assert y.dtype == torch.int64 and len(y) == len(x)
        raw = to_uint8(x)
        idx = decode_index(raw)
        assert torch.equal(y, labels[idx]), "labels do not belong to the images drawn"
        for i in range(0, len(x), 25):  # brute-force a sample of each batch
            assert matching_views(raw[i].numpy(), images[idx[i]].numpy(), 4, True), "not a crop of its source"
            checked += 1
    assert checked >= 12


def test_instance_sampling_visits_every_index_once_per_epoch_last_batch_kept():
    n, batch = 1000, 128
    images = encoded_images(n)
    labels = torch.arange(n) % 10
    loader = _loader(images, labels, batch_size=batch, seed=3)
    assert len(loader) == 8
    epochs = []
    for _ in range(2):
        sizes, seen = [], []
        for x, _ in loader:
            sizes.append(len(x))
            seen.append(decode_index(to_uint8(x)))
        assert sizes == [128] * 7 + [1000 - 7 * 128]  # the last partial batch (104) is kept
        order = torch.cat(seen)
        assert sorted(order.tolist()) == list(range(n))
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1])  # a fresh permutation each epoch
    assert not torch.equal(epochs[0], torch.arange(n))  # and actually shuffled


def test_loader_reproducible_by_seed():
    images, labels = encoded_images(200), torch.arange(200) % 5

    def run(seed):
        return [(x.clone(), y.clone()) for _ in range(2) for x, y in _loader(images, labels, seed=seed, batch_size=64)]

    a, b, c = run(11), run(11), run(12)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))


def test_augment_false_returns_plain_normalised_images():
    images, labels = encoded_images(50), torch.zeros(50, dtype=torch.long)
    loader = DeviceLoader(images, labels, 50, (0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.5, 0.5), pad=4, hflip=True,
                          augment=False, seed=0)
    (x, _), = list(loader)
    raw = images.float() / 255
    idx = torch.round((x[:, 1, H // 2, W // 2] * 0.5 + 0.2) * 255).long()  # low byte of the index
    mean = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1)
    torch.testing.assert_close(x, (raw[idx] - mean) / 0.5, rtol=0, atol=1e-6)


def test_class_balanced_sampling_is_roughly_uniform():
    counts = [2000, 300, 40, 5, 1]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    images = encoded_images(len(labels))
    loader = _loader(images, labels, sampler="class-balanced", seed=5, batch_size=256, pad=0, hflip=False)
    assert len(loader) == -(-len(labels) // 256)
    drawn_labels, drawn_idx = [], []
    for _ in range(5):
        for x, y in loader:
            idx = decode_index(to_uint8(x))
            assert torch.equal(y, labels[idx])
            drawn_labels.append(y)
            drawn_idx.append(idx)
    y = torch.cat(drawn_labels)
    assert len(y) == 5 * len(labels)
    freq = torch.bincount(y, minlength=5).double()
    expected = len(y) / 5
    chi2 = float(((freq - expected) ** 2 / expected).sum())
    assert chi2 < 18.5, f"class frequencies {freq.tolist()} far from uniform (chi2 {chi2:.1f}, 4 dof, p=0.001 at 18.5)"
    # Within a class, images are drawn uniformly: all 300 images of class 1 show up (≈ 39 draws each).
    idx = torch.cat(drawn_idx)
    class1 = torch.nonzero(labels == 1).flatten()
    assert set(idx[y == 1].tolist()) == set(class1.tolist())
    assert (idx[y == 4] == torch.nonzero(labels == 4).flatten()[0]).all()


def test_class_balanced_skips_absent_labels():
    labels = torch.tensor([0] * 50 + [3] * 10)  # classes 1 and 2 have no images
    loader = _loader(encoded_images(60), labels, sampler="class-balanced", seed=0, pad=0, hflip=False, batch_size=60)
    ys = torch.cat([y for _ in range(20) for _, y in loader])
    assert set(ys.tolist()) == {0, 3}
    assert abs((ys == 3).float().mean().item() - 0.5) < 0.07


def test_unknown_sampler_lists_choices():
    with pytest.raises(ValueError, match="instance.*class-balanced"):
        _loader(encoded_images(4), torch.zeros(4, dtype=torch.long), sampler="balanced")
