"""Batched image augmentations on the training device, drawn per image from one ``torch.Generator``:
random-resized crop, colour jitter, random grayscale, Gaussian blur and flip, as torchvision (and
MoCo v2's blur) define them, for whole
uint8 batches (N×C×H×W) at once. ``moco_v2_view`` composes them into the key view of MoCo v2 that
SSD-LT's stage I uses.

Where a batched version differs from torchvision's per-image PIL transforms: the crop is resized
bilinearly without antialiasing (the crop is never smaller than the image by more than √0.08 per side,
so this is mostly upsampling); colour jitter applies its four adjustments in one random order per
batch (torchvision draws an order per image); one-channel images skip saturation, hue and grayscale,
as torchvision does for grayscale input.
"""
from __future__ import annotations

import math
import random
import weakref

import torch
import torch.nn.functional as F

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's and torchvision's grayscale

# Choices made once per batch (the order of colour jitter's adjustments) steer Python, so they must be
# host values: drawing them on a GPU generator and reading them back would make the host wait for the
# device every batch. Each generator gets a host companion, seeded from it (its state is checkpointed
# by the loader: ``host_rng_state``).
_HOST_RNG: "weakref.WeakKeyDictionary[torch.Generator, random.Random]" = weakref.WeakKeyDictionary()


def host_rng(generator: torch.Generator) -> random.Random:
    """The host-side random stream that goes with ``generator`` (created from its seed on first use)."""
    rng = _HOST_RNG.get(generator)
    if rng is None:
        rng = _HOST_RNG[generator] = random.Random(generator.initial_seed())
    return rng


def host_rng_state(generator: torch.Generator) -> tuple:
    return host_rng(generator).getstate()


def set_host_rng_state(generator: torch.Generator, state) -> None:
    version, internal, gauss = state
    host_rng(generator).setstate((version, tuple(internal), gauss))


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator, device, attempts: int = 10) -> torch.Tensor:
    """(top, left, h, w) per image, drawn as torchvision's RandomResizedCrop.get_params: up to 10
    tries of an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``, then the
    centre crop of the clamped ratio."""
    area = height * width
    target = area * _uniform(n * attempts, *scale, generator, device).view(attempts, n)
    log_r = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), generator, device).view(attempts, n)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(0), ok.float().argmax(0), torch.full((n,), -1, device=device))
    # fallback: the whole image, clamped to the ratio bounds, centred
    in_ratio = width / height
    fw, fh = (width, height)
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    pick = first.clamp_min(0)
    cols = torch.arange(n, device=device)
    bw = torch.where(first >= 0, w[pick, cols], torch.full((n,), float(fw), device=device))
    bh = torch.where(first >= 0, h[pick, cols], torch.full((n,), float(fh), device=device))
    top = torch.floor(torch.rand(n, generator=generator, device=device) * (height - bh + 1))
    left = torch.floor(torch.rand(n, generator=generator, device=device) * (width - bw + 1))
    top = torch.where(first >= 0, top, torch.full((n,), float((height - fh) // 2), device=device))
    left = torch.where(first >= 0, left, torch.full((n,), float((width - fw) // 2), device=device))
    return torch.stack([top, left, bh, bw], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box (top, left, h, w), resized bilinearly to ``size``; float input and output."""
    n, _, height, width = x.shape
    top, left, bh, bw = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = bw / width
    theta[:, 0, 2] = (2 * left + bw) / width - 1
    theta[:, 1, 1] = bh / height
    theta[:, 1, 2] = (2 * top + bh) / height - 1
    grid = F.affine_grid(theta, (n, x.shape[1], *size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of a float RGB batch, N×1×H×W (the weights as Python numbers: no host data to copy over)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return r * GRAY[0] + g * GRAY[1] + b * GRAY[2]


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·a + (1 − factor)·b, clamped to [0, 1], written into ``a`` (the same float operations
    in the same order as the out-of-place formula, so the same bits; a third of the memory traffic,
    which is what the CPU waits on). ``b`` may have one channel (a grayscale image) or be None (0)."""
    f = factor.view(-1, 1, 1, 1)
    a.mul_(f)
    if b is not None:
        a.add_(b * (1 - f))
    return a.clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    v, delta = maxc, maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2 + (b - r) / d, 4 + (r - g) / d))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = [torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = torch.zeros_like(x)
    for k, rgb in enumerate(choices):
        out = torch.where((i == k).unsqueeze(1), rgb, out)
    return out


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 generator: torch.Generator, apply: torch.Tensor | None = None, inplace: bool = False) -> torch.Tensor:
    """torchvision's ColorJitter on a float batch in [0, 1]: factors uniform in [1 − a, 1 + a] per
    image (hue: a shift in [−hue, hue]), the four adjustments in one random order; images where
    ``apply`` is False are left as they are. ``inplace`` (without ``apply``): ``x`` may be
    overwritten (the caller's own temporary), which saves a copy."""
    n, c = x.shape[:2]
    dev = x.device
    factors = {
        "brightness": _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator, dev),
        "contrast": _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator, dev),
        "saturation": _uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator, dev),
        "hue": _uniform(n, -hue, hue, generator, dev),
    }
    order = host_rng(generator).sample(range(4), 4)  # a host value: no wait for the device
    out = x if inplace and apply is None else x.clone()  # the blends write into ``out``
    for k in order:
        name = ("brightness", "contrast", "saturation", "hue")[k]
        if name == "brightness" and brightness > 0:
            out = _blend(out, None, factors[name])
        elif name == "contrast" and contrast > 0:
            gray = grayscale(out) if c == 3 else out
            out = _blend(out, gray.mean(dim=(1, 2, 3), keepdim=True), factors[name])
        elif name == "saturation" and saturation > 0 and c == 3:
            out = _blend(out, grayscale(out), factors[name])
        elif name == "hue" and hue > 0 and c == 3:
            hsv = _rgb_to_hsv(out)
            hsv[:, 0] = (hsv[:, 0] + factors[name].view(-1, 1, 1)) % 1.0
            out = _hsv_to_rgb(hsv)
    if apply is not None:
        out = torch.where(apply.view(-1, 1, 1, 1), out, x)
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float | None = None) -> torch.Tensor:
    """Each image blurred with its own σ (separable Gaussian, edges replicated), the kernel's radius
    ⌈3·sigma_max⌉ for all. In a training step ``sigma_max`` is the largest σ that can be drawn, a host
    value (None reads the largest σ drawn back from the device: a host sync); a smaller σ's kernel is
    normalised over the same window, whose extra taps beyond its own 3σ are below e^-4.5 of its centre."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * (float(sigma.max()) if sigma_max is None else sigma_max)))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # one kernel per image and channel
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


BLUR_MIN_SIZE = 64  # below this the blur is left out (see moco_v2_view)


def moco_v2_view(images: torch.Tensor, generator: torch.Generator, *, scale: tuple[float, float] = (0.2, 1.0),
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8,
                 gray_p: float = 0.2, blur_p: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 flip: bool = True) -> torch.Tensor:
    """MoCo v2's key augmentation on a uint8 batch, returned as uint8 of the same size: random-resized
    crop (area ``scale``, ratio 3/4–4/3), colour jitter with probability ``jitter_p``, grayscale with
    probability ``gray_p``, Gaussian blur (σ uniform in ``blur_sigma``) with probability ``blur_p``,
    horizontal flip. The blur is left out for images under 64 px: a σ of up to 2 px, meant for 224 px
    ImageNet crops (SSD-LT, MoCo v2), wipes out most of an 8–32 px image."""
    n, c, height, width = images.shape
    dev = images.device
    x = images.float().div_(255.0)
    boxes = crop_boxes(n, height, width, scale, (3 / 4, 4 / 3), generator, dev)
    x = resized_crop(x, boxes, (height, width)).clamp_(0, 1)
    x = color_jitter(x, *jitter, generator, apply=torch.rand(n, generator=generator, device=dev) < jitter_p)
    if c == 3:
        to_gray = torch.rand(n, generator=generator, device=dev) < gray_p
        x = torch.where(to_gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
    if min(height, width) >= BLUR_MIN_SIZE and blur_p > 0:
        sigma = _uniform(n, *blur_sigma, generator, dev)
        blur = torch.rand(n, generator=generator, device=dev) < blur_p
        x = torch.where(blur.view(-1, 1, 1, 1), gaussian_blur(x, sigma, blur_sigma[1]), x)
    if flip:
        mirror = torch.rand(n, generator=generator, device=dev) < 0.5
        x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(3), x)
    return x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


def simclr_color_jitter(images: torch.Tensor, generator: torch.Generator, *, strength: float = 1.0,
                        jitter_p: float = 0.8, gray_p: float = 0.2) -> torch.Tensor:
    """SimCLR's colour distortion on a uint8 batch, returned as uint8 of the same shape: colour jitter
    (brightness, contrast, saturation 0.8·strength, hue 0.2·strength; SimCLR v2's multiplicative
    brightness, the order random) with probability ``jitter_p``, then grayscale with probability
    ``gray_p``, each drawn per image. The official CBD code's ``add_color_jitter`` is this with
    strength 1 (its input_pipeline.py, through simclr's data_util). One-channel images get brightness
    and contrast only (see the module docstring)."""
    n, c = images.shape[:2]
    dev = images.device
    x = images.float().div_(255.0)
    s = strength
    x = color_jitter(x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, generator,
                     apply=torch.rand(n, generator=generator, device=dev) < jitter_p)
    if c == 3:
        to_gray = torch.rand(n, generator=generator, device=dev) < gray_p
        x = torch.where(to_gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
    return x.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
