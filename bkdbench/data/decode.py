"""Image files to uint8 arrays, for the image-folder dataset (``imagefolder.py``).

``decode_bytes`` uses ``torchvision.io.decode_image`` (libjpeg-turbo, libpng) and falls back to Pillow
for the formats it does not read (bmp, tiff) or once torchvision drops its decoders; every image
becomes RGB uint8 3×H×W (an animated GIF gives its first frame, a 16-bit PNG is rounded to 8 bits),
resized to N×N (bilinear, antialiased) with ``image_size`` N. An unreadable or foreign file is a
DataError naming its path. ``channel_stats`` gives the exact per-channel mean/std for normalisation.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Optional

import numpy as np

from .registry import DataError


def decode_bytes(path: Path, data: bytes, image_size: Optional[int]) -> np.ndarray:
    """One image file's bytes → RGB uint8 3×H×W (N×N with ``image_size``)."""
    import torch

    if not data:
        raise DataError(f"{path} is an empty file, not an image")
    try:
        from torchvision.io import ImageReadMode, decode_image

        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (ImportError, RuntimeError):  # no torchvision decoders, a format they do not read (bmp, tiff), or a broken file
        image = _decode_pillow(path, data)
    if image.ndim == 4:  # an animated GIF: its first frame
        image = image[0]
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = ((image.to(torch.int64) * 255 + 32767) // 65535).to(torch.uint8)
    if image_size is not None and tuple(image.shape[1:]) != (image_size, image_size):
        from torchvision.transforms.v2 import functional as TF

        image = TF.resize(image, [image_size, image_size], antialias=True)
    return np.ascontiguousarray(image.numpy())


def _decode_pillow(path: Path, data: bytes):
    import torch
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as exc:  # Pillow raises many types for truncated or foreign files
        raise DataError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from None
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def decode_files(root: Path, rels: list[str], image_size: Optional[int]) -> list[tuple[np.ndarray, bytes]]:
    """Read and decode ``root/rel`` for each rel: (image, SHA-256 digest of the file's bytes) each."""
    out = []
    for rel in rels:
        path = root / rel
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path} is unreadable ({exc.strerror or exc})") from None
        out.append((decode_bytes(path, data, image_size), hashlib.sha256(data).digest()))
    return out


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 N×C×H×W images, on the 0..1 scale; exact,
    from each channel's histogram of the 256 pixel values."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = np.bincount(images[:, channel].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float(counts @ values / total)
        means.append(mean)
        stds.append(float(np.sqrt(max(counts @ (values - mean) ** 2 / total, 0.0))))
    return means, stds
