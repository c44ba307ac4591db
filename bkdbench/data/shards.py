"""One trial on several workers: each worker's shard of every global batch (torch only).

Every worker holds the same ``DeviceLoader`` with the same seed, so every worker draws the same
permutation (or class-balanced draws) of each epoch. The global batch ``b`` (the recipe's batch
size; the epoch's last batch may be smaller) is cut into ``world_size`` contiguous slices:
worker ``r`` takes rows ``[b·r // W, b·(r+1) // W)``, so the slices are disjoint, cover the batch
and differ in size by at most one image. The union of the shards is exactly the batch one worker
would train on.

Augmentation draws its random numbers for the *whole* global batch from the shared generator and
applies this worker's rows of them, so (a) every worker's generator stays in step with the others
(the next epoch's permutation is the same everywhere) and (b) every image gets the crop and flip it
would get in a one-worker run. For crop-with-padding (the CIFAR-style datasets) only the shard's
images are gathered and cropped. For the other augmentations ("imagenet" random-resized crops and
colour jitter, SimCLR colour jitter, and methods with a second view) each worker augments the whole
global batch exactly as one worker would (``DeviceLoader._global_batches``) and keeps its rows: exact, but the augmentation work is repeated on every worker (a known cost; the
model's forward and backward, which dominate, are split).

The last batch of an epoch with fewer images than workers is skipped (at most ``W - 1`` images an
epoch) because a worker would otherwise hold an empty shard; ``len(loader)`` counts it out, so the
learning-rate schedule sees the batches that are trained.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .imagenet_augment import gather


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a batch of ``n`` that worker ``rank`` of ``world_size`` trains on."""
    return n * rank // world_size, n * (rank + 1) // world_size


def num_batches(n: int, batch_size: int, drop_last: bool, world_size: int) -> int:
    """Global batches of an epoch of ``n`` images on ``world_size`` workers (see the module docstring)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest and not drop_last and rest >= world_size else 0)


def crop_flip_rows(x: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator, lo: int, hi: int,
                   total: int) -> torch.Tensor:
    """``random_crop_flip`` of rows ``[lo, hi)`` of a batch of ``total``: the same draws, in the same
    order (row offsets, column offsets, flips; each for the whole batch), applied to ``x``, which
    holds only those rows."""
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (total,), device=dev, generator=generator)[lo:hi]
        dx = torch.randint(0, 2 * pad + 1, (total,), device=dev, generator=generator)[lo:hi]
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chans = torch.arange(c, device=dev)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if hflip:
        flip = (torch.rand(total, device=dev, generator=generator) < 0.5)[lo:hi]
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def iter_shards(loader, normalize) -> Iterator[tuple[torch.Tensor, ...]]:
    """What ``DeviceLoader`` yields on one worker, cut to ``loader.rank``'s shard of every global
    batch. Sets ``loader.global_batch`` to the size of the global batch the shard came from.
    (``normalize`` is loader.py's, passed in: loader.py imports this module.)"""
    rank, world = loader.rank, loader.world_size
    own_rows_only = (loader.augmentation != "imagenet" and loader.second_view is None
                     and not getattr(loader, "color_jitter", False))
    if not own_rows_only:  # augment the whole global batch as one worker would, keep this worker's rows
        for batch in loader._global_batches():
            total = len(batch[1])
            lo, hi = shard_bounds(total, rank, world)
            loader.global_batch = total
            yield tuple(t[lo:hi] for t in batch)
        return
    idx = loader._indices()
    host = loader.images.device != loader.device
    idx_host = idx.cpu() if host else None
    bs = loader.batch_size
    for step in range(len(loader)):
        start = step * bs
        take = idx[start:start + bs]
        total = len(take)
        lo, hi = shard_bounds(total, rank, world)
        loader.global_batch = total
        raw = gather(loader.images, idx_host[start + lo:start + hi], loader.device) if host else loader.images[take[lo:hi]]
        x = crop_flip_rows(raw, loader.pad, loader.hflip, loader.generator, lo, hi, total) if loader.augment else raw
        yield normalize(x, loader.mean, loader.std), loader.labels[take[lo:hi]]
