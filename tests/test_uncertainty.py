"""Binomial intervals for every accuracy, the bootstrap interval of the hypervolume ratio."""

import numpy as np
import pytest
import torch

from oat.bits import pack_bits, unpack_bits
from oat.frontier.uncertainty import bootstrap_ratio
from oat.intervals import wilson_interval


def test_wilson_interval_matches_the_formula_and_stays_in_the_unit_interval():
    # p = 0.1, n = 50, z = 1.959964: centre 0.12854, half-width 0.08507
    low, high = wilson_interval(0.1, 50)
    assert (low, high) == pytest.approx((0.04348, 0.21360), abs=1e-5)
    assert wilson_interval(0.0, 200)[0] == 0.0 and wilson_interval(0.0, 200)[1] == pytest.approx(0.01884, abs=1e-5)
    assert wilson_interval(1.0, 200)[1] == 1.0
    wide, narrow = wilson_interval(0.5, 100), wilson_interval(0.5, 10_000)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 9  # ∝ 1/√n
    with pytest.raises(ValueError, match="n must be at least 1"):
        wilson_interval(0.5, 0)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 10_000])
def test_per_example_bits_round_trip(n):
    bits = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
    text = pack_bits(bits)
    assert len(text) == 2 * ((n + 7) // 8)
    assert np.array_equal(unpack_bits(text, n), bits.numpy())


def _point(clean, worst):
    return {"clean": float(clean.mean()), "robust_worst": float(worst.mean()),
            "per_example": {"clean": pack_bits(torch.from_numpy(clean)),
                            "robust_worst": pack_bits(torch.from_numpy(worst))}}


def _model_points(rng, n, rates):
    """Points with (SA, RA) rates, RA-correct examples a subset of the clean-correct ones."""
    points = []
    for sa, ra in rates:
        clean = rng.random(n) < sa
        points.append(_point(clean, clean & (rng.random(n) < ra / sa)))
    return points


def test_the_bootstrap_interval_holds_the_ratio_and_shrinks_with_more_examples():
    rng = np.random.default_rng(0)
    rates_oat = [(0.90, 0.60), (0.95, 0.40)]
    rates_frontier = [(0.88, 0.58), (0.96, 0.30), (0.99, 0.0)]
    widths = []
    for n in (400, 4000):
        oat, frontier = _model_points(rng, n, rates_oat), _model_points(rng, n, rates_frontier)
        low, high = bootstrap_ratio(oat, frontier, n, resamples=500, seed=1)
        from oat.frontier.pareto import hypervolume

        ratio = hypervolume([(p["clean"], p["robust_worst"]) for p in oat]) / hypervolume(
            [(p["clean"], p["robust_worst"]) for p in frontier])
        assert low < ratio < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ten times the examples: about a third of the width
    assert bootstrap_ratio(oat, frontier, 4000, resamples=500, seed=1) == (low, high)  # seeded


def test_identical_models_give_a_ratio_of_exactly_one_in_every_resample():
    rng = np.random.default_rng(3)
    points = _model_points(rng, 300, [(0.9, 0.5), (0.97, 0.2)])
    assert bootstrap_ratio(points, points, 300, resamples=200) == (1.0, 1.0)


def test_no_interval_without_per_example_results():
    rng = np.random.default_rng(4)
    points = _model_points(rng, 50, [(0.9, 0.5)])
    old = [{k: v for k, v in p.items() if k != "per_example"} for p in points]
    assert bootstrap_ratio(old, points, 50) is None
