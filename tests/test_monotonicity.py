"""Does λ do what it says? SA falls and RA rises with λ, beyond sampling noise (frontier.monotonicity)."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from oat.bits import pack_bits
from oat.frontier.monotonicity import mcnemar_p, monotonicity

N = 400


def _bits(correct, wrong=(), right=()):
    """The first ``correct`` of N examples right, then the ``wrong`` ones made wrong and the ``right`` ones right."""
    bits = np.arange(N) < correct
    bits[list(wrong)] = False
    bits[list(right)] = True
    return bits


def _point(lam, clean, worst, per_example=True):
    point = {"lambda": lam, "clean": float(clean.mean()), "robust_worst": float(worst.mean())}
    if per_example:
        point["per_example"] = {"clean": pack_bits(torch.from_numpy(clean)),
                                "robust_worst": pack_bits(torch.from_numpy(worst))}
    return point


@pytest.fixture
def points():
    """λ = 0 → 0.5: SA rises 90 → 97% (2 examples lost, 30 gained: beyond noise) and RA falls 50 → 49%
    (6 lost, 2 gained: noise); λ = 0.5 → 1: SA falls and RA rises, as they should."""
    return [_point(1.0, _bits(300), _bits(300)),  # given out of order: sorted by λ
            _point(0.0, _bits(360), _bits(200)),
            _point(0.5, _bits(360, wrong=[0, 1], right=range(360, 390)), _bits(200, wrong=range(6), right=[200, 201]))]


def test_a_significant_rise_in_sa_is_flagged_and_a_small_fall_in_ra_is_not(points):
    result = monotonicity(points, N)
    assert result["sa_non_increasing"] is False and result["ra_non_decreasing"] is True
    sa, ra = result["violations"]
    assert sa["lambdas"] == [0.0, 0.5] and sa["metric"] == "SA rises" and sa["values"] == [0.9, 0.97]
    assert (sa["b"], sa["c"], sa["significant"]) == (2, 30, True) and sa["p"] < 1e-6
    assert ra["metric"] == "RA falls" and ra["values"] == [0.5, 0.49] and (ra["b"], ra["c"]) == (6, 2)
    assert ra["p"] == pytest.approx(2 * (1 + 8 + 28) / 256) and ra["significant"] is False
    assert sa["test"] == ra["test"] == "exact McNemar"


def test_a_model_that_does_what_lambda_says_has_no_violation(points):
    result = monotonicity([points[0], points[1]], N)
    assert result == {"sa_non_increasing": True, "ra_non_decreasing": True, "violations": []}
    assert monotonicity(points[:1], N) is None  # one λ: nothing to compare


@pytest.mark.parametrize("b, c", [(0, 0), (0, 1), (2, 30), (6, 2), (17, 17), (40, 61), (250, 200)])
def test_mcnemar_is_the_exact_two_sided_binomial_test(b, c):
    assert mcnemar_p(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0)


def test_without_per_example_results_the_wilson_intervals_decide():
    old = [_point(0.0, _bits(320), _bits(100), per_example=False),
           _point(0.5, _bits(380), _bits(110), per_example=False)]  # SA 80 → 95%
    (violation,) = monotonicity(old, N)["violations"]
    assert violation["significant"] and violation["test"] == "Wilson 95% intervals"
    assert violation["b"] is violation["c"] is violation["p"] is None
    # The paired test sees what overlapping intervals hide: 16 examples gained, none lost (80 → 84%).
    gained = [_point(0.0, _bits(320), _bits(100)), _point(0.5, _bits(336), _bits(100))]
    assert monotonicity(gained, N)["violations"][0]["significant"]
    unpaired = [{k: v for k, v in p.items() if k != "per_example"} for p in gained]
    assert not monotonicity(unpaired, N)["violations"][0]["significant"]
    assert not monotonicity(unpaired, None)["violations"][0]["significant"]  # n unknown: nothing to test with
