"""The true SA–RA frontier of a task with closed forms: on the Tsipras task, over every linear classifier.

On the task of Tsipras et al. (2019) (:mod:`oat.datasets.tsipras`), a linear classifier
sign(w·x + b) has a margin y(w·x + b) distributed as ±w₁ + ηS + y·b + σ·N(0, 1) (the sign + with
probability p), and an L∞ adversary of radius ε lowers it by exactly ε(|w₁| + L), with
S = Σ_{j≥2} w_j, σ = ‖w_{2..}‖₂, L = ‖w_{2..}‖₁. So SA and RA depend on w only through
(w₁, S, σ, L, b), and the frontier over all linear classifiers is a frontier over those statistics:

- S ≤ L, with equality exactly when w_{2..} ≥ 0; a larger S raises every margin, so S = L;
- w₁ ≥ 0 (a negative w₁ turns x₁'s vote against the label, at the same attack cost) and b ≥ 0
  (the classes are symmetric). The bias matters: a classifier can be robust on one class only, and
  the frontier has a plateau at RA = p/2 made of such classifiers (SA 97.4%, RA 47.5% at the
  notes' setting, checked by sampling);
- for w_{2..} ≥ 0 every σ in [L/√d, L] is reached (equal weights give L/√d, one weight L), and the
  frontier uses the whole range: concentrating the weights (σ > L/√d) costs clean accuracy but
  helps when the attacked margin is negative, as a bias does;
- a classifier is a sign, so its scale is free: w₁ + L = 1 (w₁ = L = 0 is a constant, SA = RA = ½).

That leaves three numbers: a = w₁ ∈ [0, 1] (L = 1 − a), ρ = σ/L ∈ [1/√d, 1] and b ≥ 0. The frontier
is the Pareto upper envelope of their grid's (SA, RA), both exact (Φ in float64). Its resolution
(:data:`GRID`) was fixed by refinement: no point of it lies further than :data:`TOLERANCE` behind
the frontier of a grid twice as fine in every axis, in the distance of
:func:`oat.frontier.pareto.deficit` (equal steps of SA and RA). RA at one exact SA is a poorer
measure: where the frontier is steep (15 points of RA per point of SA between SA 95.9% and 97.8%)
a step of SA smaller than the grid's moves it by points.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .pareto import deficit

GRID = {"a": 4001, "rho": 49, "b": 62}  # points along w₁, σ/L, and b (plus b = 0)
B_MAX = 10 ** 0.5  # the largest bias tried, relative to w₁ + L = 1 (beyond it the classifier is all but constant)
TOLERANCE = 5e-4  # how far behind a twice finer grid's frontier this one may lie (docs/tsipras.md)


def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(z)


def _accuracy(a, length, sigma, b, p: float, eta: float, loss) -> torch.Tensor:
    """SA (``loss`` 0) or RA (``loss`` ε(a + L)) of the classifiers with the given statistics."""
    total = torch.zeros_like(a)
    for y in (-1.0, 1.0):
        for sign, weight in ((1.0, p), (-1.0, 1.0 - p)):
            margin = sign * a + eta * length + y * b - loss
            total += 0.5 * weight * torch.where(sigma > 0, _phi(margin / sigma.clamp_min(1e-300)),
                                                (margin > 0).double())
    return total


@functools.lru_cache(maxsize=8)  # a comparison's plot and its report ask for the same one
def tsipras_linear_frontier(p: float, d: int, eta: float, eps: float, refine: int = 1, bias: bool = True) -> np.ndarray:
    """The Pareto frontier of (SA, RA) over every linear classifier on the Tsipras task: an array
    ``[K, 2]``, SA ascending and RA descending (about a second on a CPU core). ``refine``
    multiplies every grid axis (a check of the resolution; 1 is the default grid); ``bias=False``
    keeps to classifiers without bias (b = 0), which treat both classes alike. η < 0 or p < ½ give
    the frontier of |η| and max(p, 1 − p): flipping the sign of the features concerned maps the
    classifiers of one task onto the other's one to one, accuracies unchanged."""
    p, eta = max(p, 1.0 - p), abs(eta)
    a = torch.linspace(0.0, 1.0, (GRID["a"] - 1) * refine + 1, dtype=torch.float64)
    rho = torch.exp(torch.linspace(math.log(1 / math.sqrt(d)), 0.0, (GRID["rho"] - 1) * refine + 1,
                                   dtype=torch.float64))
    b = torch.cat([torch.zeros(1, dtype=torch.float64),
                   torch.logspace(-4, math.log10(B_MAX), GRID["b"] * refine if bias else 0, dtype=torch.float64)])
    best_sa, best_ra = [], []
    for rho_k in rho:  # one σ/L at a time keeps the memory at a few grid slices
        a_k, b_k = torch.meshgrid(a, b, indexing="ij")
        length = 1.0 - a_k
        sigma = rho_k * length
        sa = _accuracy(a_k, length, sigma, b_k, p, eta, 0.0).flatten()
        ra = _accuracy(a_k, length, sigma, b_k, p, eta, eps * (a_k + length)).flatten()
        keep = _pareto(sa, ra)
        best_sa.append(sa[keep])
        best_ra.append(ra[keep])
    sa, ra = torch.cat(best_sa), torch.cat(best_ra)
    keep = _pareto(sa, ra)
    order = torch.argsort(sa[keep])
    frontier = torch.stack([sa[keep][order], ra[keep][order]], dim=1).numpy()
    frontier.flags.writeable = False  # cached: shared by every caller
    return frontier


def _pareto(sa: torch.Tensor, ra: torch.Tensor) -> torch.Tensor:
    """Indices of the points no other point dominates (by SA descending, RA strictly rising; at
    equal SA the highest RA first, so that only it survives)."""
    by_ra = torch.argsort(ra, descending=True, stable=True)
    order = by_ra[torch.argsort(sa[by_ra], descending=True, stable=True)]
    running = torch.cummax(ra[order], dim=0).values
    rises = torch.ones_like(running, dtype=torch.bool)
    rises[1:] = running[1:] > running[:-1]
    return order[rises]


def robust_at(frontier: np.ndarray, sa: float) -> float:
    """The frontier's RA at clean accuracy ``sa``: the best RA of a classifier with SA ≥ ``sa``
    (0 beyond the frontier's highest SA)."""
    reach = frontier[frontier[:, 0] >= sa]
    return float(reach[:, 1].max()) if len(reach) else 0.0


def distance(frontier: np.ndarray, sa: float, ra: float) -> float:
    """How far the point (sa, ra) lies behind the frontier: the largest t such that some linear
    classifier beats it by t in SA and in RA at once (:func:`oat.frontier.pareto.deficit`); 0 on or
    beyond it."""
    # Only frontier points above and to the right can dominate: a cheap prefilter for deficit.
    near = frontier[(frontier[:, 0] > sa) & (frontier[:, 1] > ra)]
    return deficit((min(max(sa, 0.0), 1.0), min(max(ra, 0.0), 1.0)), [tuple(f) for f in near])


FRONTIERS = {  # dataset name → (its data_params, ε) → the true frontier
    "tsipras": lambda params, eps: tsipras_linear_frontier(params["p"], int(params["d"]), params["eta"], eps),
}


def true_frontier(result: dict) -> np.ndarray | None:
    """The true frontier of the task an evaluation (eval.json) was measured on, at its ε, when the
    task has one (it records ``data_params``); else None."""
    source = FRONTIERS.get(result.get("dataset"))
    params = result.get("data_params")
    if source is None or not params or result.get("eps") is None:
        return None
    return source(params, float(result["eps"]))


def true_frontier_summary(oat: dict | None, dedicated: list[dict]) -> dict | None:
    """Every model's closed-form (SA, RA) and its distance behind the true frontier, when the OAT
    evaluation's task has one (``summary.json``'s ``true_frontier``); else None."""
    frontier = true_frontier(oat) if oat else None
    if frontier is None:
        return None

    def rows(points: list[dict]) -> list[dict]:
        return [{"lambda": p["lambda"], "value": p.get("value"), "name": p.get("name", "OAT"),
                 "clean": p["analytic"]["clean"], "robust": p["analytic"]["robust"],
                 "distance": distance(frontier, p["analytic"]["clean"], p["analytic"]["robust"])}
                for p in sorted(points, key=lambda p: p["lambda"]) if p.get("analytic")]

    oat_rows = rows(oat["points"])
    curve = [dict(row, distance=distance(frontier, row["clean"], row["robust"]))
             for row in oat.get("analytic_curve") or []]
    worst = max(curve, key=lambda row: row["distance"], default=None)
    return {"frontier": {"points": len(frontier), "max_clean": float(frontier[:, 0].max()),
                         "robust_at_max_clean": float(frontier[np.argmax(frontier[:, 0]), 1]),
                         "max_robust": float(frontier[:, 1].max()), "tolerance": TOLERANCE},
            "oat": oat_rows, "dedicated": rows(dedicated),
            "max_distance_oat": max((r["distance"] for r in oat_rows), default=None),
            # Between the evaluated λ too: the largest distance on the exact curve λ = 0, 0.01, …, 1.
            "max_distance_oat_curve": worst["distance"] if worst else None,
            "lambda_max_distance_oat_curve": worst["lambda"] if worst else None}
