"""What ``bkdbench bench`` measures: a ``BenchConfig`` and its named presets. Plain data, no torch."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from bkdbench.data.longtail import longtail_counts

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``rounds`` × ``steps``: windows of (a)/(b); ``pack_rounds`` × ``pack_steps``:
    windows of bkd_teacher / packed (a packed step trains ``pack`` students)."""

    model: str = "resnet32"
    num_classes: int = 100
    imbalance: float = 100.0  # CIFAR-100-LT IF100: 10,847 images
    n_max: int = 500
    image_size: int = 32
    batch_size: int = 128
    warmup_steps: int = 2
    rounds: int = 5
    steps: int = 6
    pack: int = 8
    pack_rounds: int = 3
    pack_steps: int = 2
    strategy: str = "auto"
    compare_strategies: bool = False  # also measure the other packing strategy ("packed_loop"/"packed_grouped")
    num_workers: Optional[int] = None  # reference DataLoader workers: 2 on CPU, 4 on CUDA
    bf16: bool = True  # CPU: also measure (b) under bf16 autocast, reported apart
    compile: bool = False
    eval_images: int = 2048  # timed evaluation pass, scaled to the CIFAR-100-LT val+test size
    preset: str = "default"

    @property
    def class_counts(self) -> list[int]:
        return longtail_counts(self.n_max, self.num_classes, self.imbalance, "exp")

    @property
    def images(self) -> int:
        return sum(self.class_counts)


PRESETS = {
    # about a minute on 2 CPU cores
    "default": BenchConfig(rounds=5, steps=5, pack_rounds=3, pack_steps=1, eval_images=1024),
    # several minutes on 2 CPU cores; more, longer windows
    "full": BenchConfig(rounds=9, steps=16, pack_rounds=5, pack_steps=4, warmup_steps=3, eval_images=12000, preset="full"),
    # benchmarks/gpu_check.py: a few minutes on one GPU, 16 packed students, both packing strategies
    "gpu": BenchConfig(rounds=7, steps=30, warmup_steps=10, pack=16, pack_rounds=5, pack_steps=4, eval_images=12000,
                       compile=True, compare_strategies=True, preset="gpu"),
    # seconds: structure checks (tests), never figures to quote
    "quick": BenchConfig(model="resnet8", num_classes=10, n_max=40, imbalance=10.0, batch_size=16, warmup_steps=1,
                         rounds=2, steps=1, pack=2, pack_rounds=1, pack_steps=1, eval_images=64, preset="quick"),
}


def config_for(preset: str = "default", **overrides) -> BenchConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown bench preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
