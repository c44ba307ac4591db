"""The pipelines ``bkdbench bench`` times, on CIFAR-shaped synthetic data (``synthetic_cifar``).

(a) ``ReferencePipeline``: what the public LDAM-DRW / BKD code does: a torch DataLoader (shuffled, 2
    workers on CPU, 4 on CUDA, pinned memory on CUDA) over a dataset that makes a PIL image per item and
    applies torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize; fp32,
    NCHW, SGD (momentum 0.9, weight decay 2e-4), and ``loss.item()`` each step (its loss meter).
(b)/(c) ``BkdbenchPipeline``: the device-resident ``DeviceLoader`` and ``train.train_step`` as ``train``
    runs them, optionally with a frozen teacher (BKD), or K packed students sharing each batch and one
    teacher forward (``packed.packed_step``).

Each has ``run(steps) -> images seen`` and ``worker_pids()``; ``bench.run.run_bench`` alternates them.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from bkdbench.bench.config import BenchConfig
from bkdbench.data import DeviceLoader
from bkdbench.methods import build as build_method
from bkdbench.models import create_model
from bkdbench.models.packing import pack_models
from bkdbench.training.packed import packed_step
from bkdbench.training.train import channels_last_for, train_step


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
EPOCHS_REFERENCE = 200


def synthetic_cifar(config: BenchConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×H×W×3 images (random pixels: throughput does not depend on content) and int64 labels
    with the long-tailed class counts, class 0 the head."""
    rng = np.random.default_rng(seed)
    s = config.image_size
    images = rng.integers(0, 256, size=(config.images, s, s, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(config.num_classes), config.class_counts).astype(np.int64)
    return images, labels


class _PILImages(torch.utils.data.Dataset):
    """torchvision's CIFAR datasets in miniature: one PIL image per item, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        from PIL import Image

        self.images, self.labels, self.transform, self.to_pil = images, labels, transform, Image.fromarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.to_pil(self.images[i])), int(self.labels[i])


def _endless(loader):
    while True:
        yield from loader


class ReferencePipeline:
    """(a): per-image PIL transforms in DataLoader workers, fp32 NCHW model, one host sync per step."""

    name = "reference"
    pack = 0

    def __init__(self, config: BenchConfig, images: np.ndarray, labels: np.ndarray, device: torch.device):
        from torchvision import transforms as T

        cuda = device.type == "cuda"
        self.device = device
        self.num_workers = config.num_workers if config.num_workers is not None else (4 if cuda else 2)
        transform = T.Compose([T.RandomCrop(config.image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                               T.Normalize(CIFAR_MEAN, CIFAR_STD)])
        self.loader = torch.utils.data.DataLoader(_PILImages(images, labels, transform), batch_size=config.batch_size,
                                                  shuffle=True, num_workers=self.num_workers, pin_memory=cuda)
        torch.manual_seed(0)
        self.model = create_model(config.model, config.num_classes, 3).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        self._it = iter(self.loader)
        self.loss_sum = 0.0

    def _next(self):
        try:
            return next(self._it)
        except StopIteration:  # a new epoch: new workers, as in the reference (no persistent workers)
            self._it = iter(self.loader)
            return next(self._it)

    def run(self, steps: int) -> int:
        self.model.train()
        seen = 0
        for _ in range(steps):
            x, y = self._next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.loss_sum += loss.item()  # the reference's AverageMeter: a host sync every step
            seen += len(y)
        return seen

    def worker_pids(self) -> list[int]:
        return [w.pid for w in getattr(self._it, "_workers", []) if w.pid is not None]


class BkdbenchPipeline:
    """(b)/(c): DeviceLoader + ``train_step`` (or K packed students + ``packed_step``)."""

    def __init__(self, name: str, config: BenchConfig, images: np.ndarray, labels: np.ndarray, device: torch.device,
                 *, method: str = "ce", autocast: Optional[torch.dtype] = None, compile: bool = False, pack: int = 0,
                 strategy: str = "loop", shared: Optional["BkdbenchPipeline"] = None):
        self.name, self.device, self.autocast = name, device, autocast
        self.channels_last = channels_last_for(device)
        if shared is not None:  # the same device-resident data: one copy per process, as in train()
            x, y = shared.x, shared.y
        else:
            x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
            y = torch.from_numpy(labels).to(device)
        self.x, self.y = x, y
        self.loader = DeviceLoader(x, y, config.batch_size, CIFAR_MEAN, CIFAR_STD, pad=4, hflip=True, seed=0)
        counts = config.class_counts
        self.teacher = None
        if method != "ce":
            torch.manual_seed(1)
            self.teacher = self._model(config, device).eval().requires_grad_(False)
        self.pack = pack
        if pack:
            # students that differ only in loss parameters, as a sweep over α and T would make them
            grid = [dict(alpha=0.5 + 0.5 * (i % 4), temperature=(1.0, 2.0, 3.0, 4.0)[(i // 4) % 4]) for i in range(pack)]
            self.methods = [build_method(method, counts, epochs=EPOCHS_REFERENCE, **p) for p in grid]
            students = []
            for _ in range(pack):
                torch.manual_seed(0)
                students.append(self._model(config, device))
            self.strategy = strategy
            example = torch.randn(2, 3, config.image_size, config.image_size)
            self.model = pack_models(students, example, self.strategy)
            if self.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
        else:
            self.methods = [build_method(method, counts, epochs=EPOCHS_REFERENCE)]
            torch.manual_seed(0)
            self.model = self._model(config, device)
        self.forward = torch.compile(self.model) if compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        self.batches = _endless(self.loader)
        self.loss_sum = torch.zeros((), device=device)

    def _model(self, config: BenchConfig, device: torch.device) -> torch.nn.Module:
        model = create_model(config.model, config.num_classes, 3).to(device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run(self, steps: int) -> int:
        self.model.train()
        seen = 0
        for _ in range(steps):
            x, y = next(self.batches)
            x = self._layout(x)
            if self.pack:
                losses = packed_step(self.model, self.optimizer, self.methods, x, y, epoch=0, teacher=self.teacher,
                                     autocast=self.autocast)
                self.loss_sum += losses.sum()
                seen += self.pack * len(y)
            else:
                loss = train_step(self.forward, self.optimizer, self.methods[0], x, y, epoch=0, teacher=self.teacher,
                                  autocast=self.autocast)
                self.loss_sum += loss
                seen += len(y)
        return seen

    def worker_pids(self) -> list[int]:
        return []
