"""Thresholds a trained model must beat, computed from the test set alone (never from bkdbench)."""
from __future__ import annotations

import math


def chance_bound(classes: int, n: int, z: float = 3.29) -> float:
    """Top-1 (%) that guessing among ``classes`` exceeds on ``n`` test images with probability about
    0.0005: the normal approximation to the binomial, p + z·sqrt(p(1-p)/n) (z 3.29: one-sided 0.9995)."""
    p = 1.0 / classes
    return 100.0 * (p + z * math.sqrt(p * (1 - p) / n))


def binomial_bound(classes: int, n: int, alpha: float = 5e-4) -> float:
    """Top-1 (%) that guessing among ``classes`` reaches on ``n`` test images with probability at most
    ``alpha``: the smallest k/n with P(Binomial(n, 1/classes) >= k) <= alpha, summed exactly (where
    n/classes is about 1 the normal approximation of chance_bound is far off: 1,000 guesses among
    1,000 classes get 5 right with probability 0.004, not 0.0005)."""
    p = 1.0 / classes
    tail = 1.0  # P(X >= k), from k = 0 up
    for k in range(n + 1):
        if tail <= alpha:
            return 100.0 * k / n
        tail -= math.comb(n, k) * p ** k * (1 - p) ** (n - k)
    return 100.0
