"""The ImageNet-style augmentation of the large benchmarks (large/lists.py), batched on the training
device, and the host-memory gathering for stores that do not fit on it.

Training (``train_view``), as the decoupling code's transform: ``RandomResizedCrop(image_size)``
(area 0.08–1, ratio 3/4–4/3; augment.crop_boxes draws the boxes as torchvision does), horizontal flip
(p = 0.5), ``ColorJitter(0.4, 0.4, 0.4, 0)`` (augment.color_jitter), then the loader normalises. The
crops come from the stored centre square (``store_size`` = image_size / 0.875), not from the full
image: see docs/large-benchmarks.md for what that loses. Evaluation (``eval_view``): resize the store
to ``store_size_for(image_size)`` when it is another size (antialiased bilinear, as PIL's), then the
centre ``image_size`` crop with torchvision's rounding -- at the default pairing (store 256, crop 224)
that is the stored pixels themselves, i.e. PIL's ``Resize(256)`` + ``CenterCrop(224)`` exactly.

Host gathering (``place``, ``gather``). A split whose bytes exceed half the device's free memory (of the
trial's share of it, for a fractional GPU: ``device_budget``) stays
in host memory (the memory-mapped store itself; ``$BKDBENCH_HOST_GATHER=1`` forces it); each batch is
gathered from it with one ``index_select`` into pinned memory and copied with ``non_blocking=True``. The
copy is queued behind the previous step's kernels and the loop never waits on the device, so the next
batch's gather runs on the host while the device trains on this one (double buffering by the CUDA
stream; the caching host allocator keeps a pinned block alive until its copy is done).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from .augment import color_jitter, crop_boxes, resized_crop
from .large.lists import store_size_for as eval_resize_size  # the side evaluation resizes to: 256 for 224

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.0)  # brightness, contrast, saturation, hue (the decoupling code's)
HOST_ENV = "BKDBENCH_HOST_GATHER"
# The fraction of its GPU this process may use: a fractional Ray trial's share (orchestrate/trial.py
# sets it with the memory cap); the other trials on the GPU hold the rest.
SHARE_ENV = "BKDBENCH_GPU_SHARE"


def train_view(images: torch.Tensor, generator: torch.Generator, image_size: int, *, hflip: bool = True,
               scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO,
               jitter: tuple[float, float, float, float] = JITTER) -> torch.Tensor:
    """uint8 N×3×S×S → uint8 N×3×image_size²: random-resized crop, flip, colour jitter."""
    n, _, height, width = images.shape
    dev = images.device
    boxes = crop_boxes(n, height, width, scale, ratio, generator, dev)
    x = resized_crop(images.float().div_(255.0), boxes, (image_size, image_size)).clamp_(0, 1)
    if hflip:
        mirror = torch.rand(n, generator=generator, device=dev) < 0.5
        x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(3), x)  # no boolean mask: its size would need a host sync
    if any(jitter):
        x = color_jitter(x, *jitter, generator, inplace=True)
    return x.mul_(255.0).round_().to(torch.uint8)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's CenterCrop offsets: round((side − size) / 2)."""
    height, width = x.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def eval_view(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 N×3×S×S → uint8 N×3×image_size²: resize to image_size / 0.875 when the store is another
    size (antialiased bilinear), then the centre crop."""
    side = eval_resize_size(image_size)
    x = images
    if tuple(x.shape[-2:]) != (side, side):
        x = F.interpolate(x.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return center_crop(x, image_size).contiguous()


def fits_on(nbytes: int, device: torch.device) -> bool:
    """Whether a split of ``nbytes`` should be copied to ``device`` rather than gathered from host memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return True  # CPU: the array (a memory map for a large store) is used where it is
    if os.environ.get(HOST_ENV, "") not in ("", "0"):
        return False
    return nbytes <= device_budget(device) // 2  # the other half for the model, activations and the other splits


def device_budget(device: torch.device) -> int:
    """Bytes this process may still place on ``device``: the free memory, and with a GPU share below 1
    (``SHARE_ENV``) no more than that share of the whole device less what this process holds already."""
    free, total = torch.cuda.mem_get_info(device)
    share = float(os.environ.get(SHARE_ENV, "") or 1.0)
    if share < 1:
        free = min(free, int(total * share) - torch.cuda.memory_reserved(device))
    return max(0, free)


def place(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A split as a tensor on ``device``, or left in host memory when it does not fit there (``fits_on``)."""
    host = torch.from_numpy(array)
    return host.to(device) if fits_on(array.nbytes, device) else host


def gather(images: torch.Tensor, take: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``images[take]`` from host memory onto ``device``: pinned staging, asynchronous copy."""
    device = torch.device(device)
    take = take.cpu()
    pinned = device.type == "cuda"
    out = torch.empty((len(take), *images.shape[1:]), dtype=images.dtype, pin_memory=pinned)
    torch.index_select(images, 0, take, out=out)
    return out.to(device, non_blocking=pinned)
