"""The thresholds of guessing that learning tests compare with, against values worked out by hand."""
from __future__ import annotations

import math

from helpers.learning import binomial_bound, chance_bound


def test_binomial_bound_by_hand():
    # Binomial(10, 1/2): P(X >= 8) = (45 + 10 + 1) / 1024 = 0.0547 <= 0.06 < P(X >= 7) = 176 / 1024
    assert binomial_bound(2, 10, alpha=0.06) == 80.0
    # ... and P(X >= 10) = 1/1024 > 5e-4: no k/n below 100 % is that unlikely
    assert binomial_bound(2, 10) == 100.0
    # 1,000 guesses among 1,000 classes: about Poisson(1); P(X >= 6) = 0.00059, P(X >= 7) = 0.000083
    poisson_tail = lambda k: 1 - sum(math.exp(-1) / math.factorial(i) for i in range(k))  # noqa: E731
    assert poisson_tail(6) > 5e-4 > poisson_tail(7)
    assert binomial_bound(1000, 1000) == 0.7
    # 10 guesses among 1,000: P(X >= 1) = 1 - 0.999^10 = 0.00996; P(X >= 2) = 4.5e-5
    assert binomial_bound(1000, 10) == 20.0


def test_the_normal_approximation_understates_the_bound_when_few_are_expected_right():
    # 1 expected right of 1,000: p + 3.29 sqrt(p(1-p)/n) = 0.43 %, where 4 or 5 right is not rare (0.019, 0.0037)
    assert round(chance_bound(1000, 1000), 2) == 0.43 < binomial_bound(1000, 1000)
