"""Pareto tools for SA–RA points (both to be maximised, as fractions in [0, 1]).

- :func:`non_dominated` — the Pareto-optimal subset.
- :func:`hypervolume` — the area of the SA–RA plane dominated by a set, reference point (0, 0):
  the area of the union of the rectangles [0, SA] × [0, RA].
- :func:`deficit` / :func:`gap` — how far each point of a curve lies behind a frontier: the
  smallest equal improvement t ≥ 0 of both SA and RA that leaves the point strictly dominated by no
  frontier point, i.e. max(0, max_f min(f.SA − SA, f.RA − RA)). Zero means the point is on or
  beyond the frontier.
- :func:`hypervolume_ratio` — hypervolume of a curve over that of a frontier.
"""

from __future__ import annotations

from typing import Iterable, Sequence

SaRa = tuple[float, float]  # one model's (clean accuracy, robust accuracy)


def _as_points(points: Iterable[Sequence[float]]) -> list[SaRa]:
    result = []
    for point in points:
        sa, ra = float(point[0]), float(point[1])
        if not (0.0 <= sa <= 1.0 and 0.0 <= ra <= 1.0):
            raise ValueError(f"SA and RA must be fractions in [0, 1], got ({sa}, {ra})")
        result.append((sa, ra))
    return result


def dominates(a: SaRa, b: SaRa) -> bool:
    """``a`` is at least as good as ``b`` in both and strictly better in one."""
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def non_dominated(points: Iterable[Sequence[float]]) -> list[SaRa]:
    """The Pareto-optimal points (duplicates kept once), sorted by SA ascending (RA descending)."""
    unique = sorted(set(_as_points(points)), key=lambda p: (-p[0], -p[1]))
    front, best_ra = [], -1.0
    for sa, ra in unique:  # by SA descending: a point survives if its RA beats every higher-SA point
        if ra > best_ra:
            front.append((sa, ra))
            best_ra = ra
    return sorted(front)


def hypervolume(points: Iterable[Sequence[float]]) -> float:
    """Area dominated by ``points`` in the SA–RA plane with reference point (0, 0)."""
    front = non_dominated(points)  # SA ascending, RA descending
    area, previous_sa = 0.0, 0.0
    for sa, ra in front:
        area += (sa - previous_sa) * ra
        previous_sa = sa
    return area


def hypervolume_ratio(curve: Iterable[Sequence[float]], frontier: Iterable[Sequence[float]]) -> float:
    """hypervolume(curve) / hypervolume(frontier)."""
    denominator = hypervolume(frontier)
    if denominator == 0:
        raise ValueError("the frontier has zero hypervolume")
    return hypervolume(curve) / denominator


def deficit(point: Sequence[float], frontier: Iterable[Sequence[float]]) -> float:
    """How far ``point`` lies behind ``frontier`` (0 when no frontier point dominates it)."""
    (sa, ra), = _as_points([point])
    worst = 0.0
    for f_sa, f_ra in _as_points(frontier):
        worst = max(worst, min(f_sa - sa, f_ra - ra))
    return worst


def gap(curve: Iterable[Sequence[float]], frontier: Iterable[Sequence[float]]) -> dict:
    """Per-point deficits of ``curve`` behind ``frontier`` and their mean and maximum."""
    frontier = _as_points(frontier)
    deficits = [deficit(p, frontier) for p in _as_points(curve)]
    if not deficits:
        raise ValueError("the curve has no points")
    return {
        "deficits": deficits,
        "mean_deficit": sum(deficits) / len(deficits),
        "worst_deficit": max(deficits),
        "dominated": sum(d > 0 for d in deficits),
    }
