"""Thresholds a trained model must beat, computed from the test set alone (never from bkdbench)."""
from __future__ import annotations

import math


def chance_bound(classes: int, n: int, z: float = 3.29) -> float:
    """Top-1 (%) that guessing among ``classes`` exceeds on ``n`` test images with probability about
    0.0005: the normal approximation to the binomial, p + z·sqrt(p(1-p)/n) (z 3.29: one-sided 0.9995)."""
    p = 1.0 / classes
    return 100.0 * (p + z * math.sqrt(p * (1 - p) / n))
