"""How sure the comparison is: binomial intervals for every accuracy (:mod:`oat.intervals`), a
bootstrap interval for the hypervolume ratio.

Every accuracy is a fraction of a fixed test subset, so it carries sampling error. Each SA and RA
gets its Wilson score 95% interval (Wilson 1927; well behaved near 0 and 1, unlike p ± 2σ). The
hypervolume ratio depends on every model at once, so its interval is a percentile bootstrap over
test examples (Efron & Tibshirani 1993): each resample draws n of the shared n test examples with
replacement and applies that same draw to every model, since all were evaluated on the same
examples (the protocol check guarantees it), then recomputes every SA, RA, both hypervolumes and
their ratio.
"""

from __future__ import annotations

import numpy as np

from oat.bits import unpack_bits
from oat.intervals import LEVEL

from .pareto import hypervolume

RESAMPLES = 2000


def _flags(points: list[dict], n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """[points, n] boolean arrays of clean and worst-case correctness, or None when a point lacks them."""
    if not points or any(not p.get("per_example") for p in points):
        return None
    clean = np.stack([unpack_bits(p["per_example"]["clean"], n) for p in points])
    worst = np.stack([unpack_bits(p["per_example"]["robust_worst"], n) for p in points])
    return clean, worst


def bootstrap_ratio(oat_points: list[dict], frontier_points: list[dict], n: int, resamples: int = RESAMPLES,
                    seed: int = 0, level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of hypervolume(OAT) / hypervolume(frontier), resampling the
    ``n`` shared test examples; None when per-example results are missing."""
    oat, front = _flags(oat_points, n), _flags(frontier_points, n)
    if oat is None or front is None:
        return None
    rng = np.random.default_rng(seed)
    # Each resample as how often each example was drawn: every accuracy of every model is then one
    # integer matrix product (exact counts, so an accuracy of n/n is exactly 1).
    draws = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])
    sa_oat, ra_oat = (draws @ flags.T.astype(np.int64) / n for flags in oat)
    sa_front, ra_front = (draws @ flags.T.astype(np.int64) / n for flags in front)
    ratios = []
    for b in range(resamples):
        denominator = hypervolume(list(zip(sa_front[b], ra_front[b])))
        if denominator > 0:
            ratios.append(hypervolume(list(zip(sa_oat[b], ra_oat[b]))) / denominator)
    if not ratios:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)
