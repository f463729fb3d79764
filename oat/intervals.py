"""How sure one accuracy is: the Wilson score interval of a proportion (Wilson 1927), well behaved
near 0 and 1, unlike p ± 2σ. Every SA and RA oat reports carries one; ``oat pick`` checks its
bound at the interval's lower end.
"""

from __future__ import annotations

import math
from statistics import NormalDist

LEVEL = 0.95


def wilson_interval(p: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` measured on ``n`` examples."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)

