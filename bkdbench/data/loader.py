"""The device-resident loader (airbench-style): the whole training set lives on the training device
as one uint8 tensor; crop-with-padding, horizontal flip and normalisation run batched on that device.
No DataLoader, no worker processes, no per-image Python.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch

SAMPLERS = ("instance", "class-balanced")


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
    second, differently augmented view: (view 1, labels, view 2).
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
    ):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        self.images, self.labels = images, labels
        self.device = images.device
        self.batch_size, self.pad, self.hflip, self.sampler, self.augment = batch_size, pad, hflip, sampler, augment
        self.drop_last, self.second_view = drop_last, second_view
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
        idx = self._indices()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            take = idx[start : start + self.batch_size]
            raw = self.images[take]
            x = random_crop_flip(raw, self.pad, self.hflip, self.generator) if self.augment else raw
            if self.second_view is None:
                yield normalize(x, self.mean, self.std), self.labels[take]
            else:
                key = self.second_view(raw, self.generator)
                yield normalize(x, self.mean, self.std), self.labels[take], normalize(key, self.mean, self.std)
