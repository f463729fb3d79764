"""Does the knob do what its name says? As λ grows, SA should fall and RA rise.

:func:`monotonicity` walks the OAT model's evaluated λ in order and records every step between
consecutive λ where SA rises or RA falls, and whether that change is beyond sampling noise. Every
λ is evaluated on the same test examples, so the test is paired: of the examples whose outcome
changes between the two λ, ``b`` are correct at the smaller λ only and ``c`` at the larger only;
under "no change" each such example is a fair coin, and the exact two-sided McNemar (sign) test
gives p = min(1, 2·P(X ≤ min(b, c))), X ~ Binomial(b + c, ½). A change is significant when
p < 0.05. Without per-example results (older evaluations) the fallback is whether the two
accuracies' Wilson 95% intervals are disjoint, a cruder and more conservative test.
"""

from __future__ import annotations

import math

from oat.bits import unpack_bits

from oat.intervals import wilson_interval

ALPHA = 0.05
SA_RISES, RA_FALLS = "SA rises", "RA falls"
# (point key, the violation's name, the sign of a change that violates it)
RULES = (("clean", SA_RISES, +1), ("robust_worst", RA_FALLS, -1))


def monotonicity(points: list[dict], n: int | None) -> dict | None:
    """``{"sa_non_increasing", "ra_non_decreasing", "violations"}`` for evaluated points (each with
    ``lambda``, ``clean``, ``robust_worst`` and optionally ``per_example`` bits over ``n``
    examples); a boolean is true when no violation of its kind is significant. None for fewer
    than two λ."""
    ordered = sorted(points, key=lambda p: p["lambda"])
    if len(ordered) < 2:
        return None
    violations = [v for before, after in zip(ordered, ordered[1:]) for v in _step_violations(before, after, n)]
    return {"sa_non_increasing": not _significant(violations, SA_RISES),
            "ra_non_decreasing": not _significant(violations, RA_FALLS),
            "violations": violations}


def _significant(violations: list[dict], metric: str) -> bool:
    return any(v["significant"] and v["metric"] == metric for v in violations)


def _step_violations(before: dict, after: dict, n: int | None) -> list[dict]:
    """The violations between two consecutive λ: SA rising, RA falling, or both."""
    return [_violation(before, after, key, metric, n) for key, metric, sign in RULES
            if (after[key] - before[key]) * sign > 0]


def _violation(before: dict, after: dict, key: str, metric: str, n: int | None) -> dict:
    changed = _changed_examples(before, after, key, n)
    if changed is not None:
        b, c = changed
        p = mcnemar_p(b, c)
        significant, test = p < ALPHA, "exact McNemar"
    else:
        b = c = p = None
        significant = bool(n) and _intervals_disjoint(before[key], after[key], n)
        test = "Wilson 95% intervals" if n else "none (number of examples unknown)"
    return {"lambdas": [before["lambda"], after["lambda"]], "metric": metric,
            "values": [before[key], after[key]], "b": b, "c": c, "p": p, "significant": significant, "test": test}


def _changed_examples(before: dict, after: dict, key: str, n: int | None) -> tuple[int, int] | None:
    """(b, c): examples correct at the smaller λ only, at the larger only; None without bits."""
    if not n:
        return None
    first, second = _bits(before, key, n), _bits(after, key, n)
    if first is None or second is None:
        return None
    return int((first & ~second).sum()), int((~first & second).sum())


def _bits(point: dict, key: str, n: int):
    stored = (point.get("per_example") or {}).get(key)
    return None if stored is None else unpack_bits(stored, n)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant examples (a sign test)."""
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**m)


def _intervals_disjoint(p: float, q: float, n: int) -> bool:
    (low_p, high_p), (low_q, high_q) = wilson_interval(p, n), wilson_interval(q, n)
    return high_p < low_q or high_q < low_p
