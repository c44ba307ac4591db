"""The device-resident loader (airbench-style): the whole training set lives on the training device
as one uint8 tensor; crop-with-padding, horizontal flip and normalisation run batched on that device.
No DataLoader, no worker processes, no per-image Python.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch

from .augment import simclr_color_jitter
from .imagenet_augment import eval_view, gather, train_view
from .shards import iter_shards, num_batches

SAMPLERS = ("instance", "class-balanced")
AUGMENTATIONS = ("crop-flip", "imagenet")  # DatasetInfo.augmentation


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float().div_(255.0) - mean) / std


def random_crop_flip(x: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the original size from a zero-padded batch, then a random mirror.

    Zero padding matches torchvision's ``RandomCrop(padding=pad)`` on uint8 images (fill 0 before
    normalisation). Each image gets its own offset and flip, drawn from ``generator``.
    """
    n, c, h, w = x.shape
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if hflip:
        flip = torch.rand(n, device=x.device, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class DeviceLoader:
    """Yields (normalised float batch, labels) for one epoch at a time.

    ``instance`` sampling is a fresh permutation per epoch with the last partial batch kept (as a
    shuffled DataLoader does; ``drop_last`` skips it); ``class-balanced`` draws a class uniformly,
    then an image of that class uniformly, as many draws as there are images. With ``second_view``
    (a function of the batch's uint8 images and the loader's generator) each batch comes with a
    second, differently augmented view: (view 1, labels, view 2). ``augmentation="imagenet"`` (the
    large benchmarks) replaces crop-with-padding by random-resized crops of ``image_size``, flip and
    colour jitter (imagenet_augment.py); images left in host memory (``device`` set) are gathered per batch.
    ``color_jitter`` adds SimCLR's colour distortion (augment.simclr_color_jitter) to every training
    batch after the crop and flip (CBD's jittered teachers).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        pad: int = 0,
        hflip: bool = False,
        sampler: str = "instance",
        seed: int = 0,
        augment: bool = True,
        drop_last: bool = False,
        second_view: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None,
        augmentation: str = "crop-flip",
        image_size: Optional[int] = None,
        device: Optional[torch.device] = None,
        color_jitter: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if augmentation not in AUGMENTATIONS or (augmentation == "imagenet" and not image_size):
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)} ('imagenet' needs image_size)")
        # ``device`` may differ from the images' (a store too large for it, imagenet_augment.place):
        # each batch is then gathered from host memory; labels and augmentation live on ``device``.
        self.device = torch.device(device) if device is not None else images.device
        self.images, self.labels = images, labels.to(self.device)
        labels = self.labels
        self.augmentation, self.image_size = augmentation, image_size
        self.batch_size, self.pad, self.hflip, self.sampler, self.augment = batch_size, pad, hflip, sampler, augment
        self.drop_last, self.second_view, self.color_jitter = drop_last, second_view, color_jitter
        # Several workers (world_size > 1): each yields its shard of every global batch (shards.py).
        self.rank, self.world_size, self.global_batch = rank, world_size, batch_size
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        if sampler == "class-balanced":
            num_classes = int(labels.max()) + 1
            order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels, minlength=num_classes)
            self._order, self._counts = order, counts
            self._starts = torch.cumsum(counts, 0) - counts

    def __len__(self) -> int:
        n = len(self.labels)
        if self.world_size > 1:
            return num_batches(n, self.batch_size, self.drop_last, self.world_size)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.sampler == "instance":
            return torch.randperm(n, device=self.device, generator=self.generator)
        nonempty = torch.nonzero(self._counts).flatten()
        cls = nonempty[torch.randint(0, len(nonempty), (n,), device=self.device, generator=self.generator)]
        offset = (torch.rand(n, device=self.device, generator=self.generator) * self._counts[cls]).long()
        return self._order[self._starts[cls] + offset]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.world_size > 1:
            return iter_shards(self, normalize)
        return self._global_batches()

    def _global_batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        idx = self._indices()
        host = self.images.device.type == "cpu" and self.device.type != "cpu"  # (cuda vs cuda:0 is not host)
        idx_host = idx.cpu() if host else None  # one host sync per epoch, not per batch
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            take = idx[start : start + self.batch_size]
            raw = gather(self.images, idx_host[start : start + self.batch_size], self.device) if host else self.images[take]
            if self.augmentation == "imagenet":
                x = (train_view(raw, self.generator, self.image_size, hflip=self.hflip) if self.augment
                     else eval_view(raw, self.image_size))
            else:
                x = random_crop_flip(raw, self.pad, self.hflip, self.generator) if self.augment else raw
            if self.color_jitter and self.augment:
                x = simclr_color_jitter(x, self.generator)
            if self.second_view is None:
                yield normalize(x, self.mean, self.std), self.labels[take]
            else:
                # imagenet: the second view is made from the evaluation crop, so both views are image_size
                source = eval_view(raw, self.image_size) if self.augmentation == "imagenet" else raw
                key = self.second_view(source, self.generator)
                yield normalize(x, self.mean, self.std), self.labels[take], normalize(key, self.mean, self.std)

    def eval_batch(self, x: torch.Tensor) -> torch.Tensor:
        """An evaluation batch of uint8 images (on any device) on the loader's device, with the
        evaluation transform of its augmentation (imagenet: resize + centre crop; crop-flip: none)."""
        x = x.to(self.device, non_blocking=True)
        return eval_view(x, self.image_size) if self.augmentation == "imagenet" else x
