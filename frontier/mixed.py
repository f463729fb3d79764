"""The third curve of every comparison: the frontier's own two end models, mixed at inference.

A user who wants a trade-off knob without OAT trains an accurate (λ = 0) and a robust (λ = 1)
model and mixes their output probabilities per image with a weight α (:mod:`oat.mixture`).
Both models are already part of every frontier, so the curve costs only evaluation: it is
evaluated with the comparison's protocol at the comparison's λ list (read as α), and set beside
OAT's and the frontier's — its hypervolume with its bootstrap interval, its training cost (the two
end models' counted passes) and its inference cost (two forward passes per image, against OAT's
one). The weight-interpolation alternative is measured too: the error barrier along the straight
path between the two models' weights (:func:`oat.mixture.interpolation_barrier`), stored as
``interpolation.json`` in the mixture's directory; where it is within Frankle et al.'s 2 points the
interpolated network is evaluated as a fourth curve (one forward pass per image).
"""

from __future__ import annotations

import json
from pathlib import Path

from oat.checkpoint import write_text_atomic
from oat.mixture import USABLE_BARRIER
from oat.runs import interpolation_barrier_of_runs, member_runs
from oat.passes import total, work

from .pareto import hypervolume
from .uncertainty import bootstrap_ratio

INTERPOLATION = "interpolation.json"
INFERENCE_FORWARDS = 2  # a mixture runs both members on every image


def summarize_mixed(mixed: dict | None, fixed: list[dict], summary: dict, inference_forwards: int = INFERENCE_FORWARDS
                    ) -> dict | None:
    """The mixed curve's figures beside a comparison's ``summary`` (its frontier's hypervolume,
    passes and work already in it); None without a mixture. ``inference_forwards``: forward passes
    per image (2 for mixed outputs, 1 for interpolated weights)."""
    if not mixed or not fixed:
        return None
    points = sorted(mixed["points"], key=lambda p: p["lambda"])
    area = hypervolume([(p["clean"], p["robust_worst"]) for p in points])
    n = summary.get("n")
    interval = bootstrap_ratio(points, fixed, n) if n and not summary["protocol_mismatches"] else None
    passes = total(mixed.get("train_passes"))
    run_work = work(mixed.get("train_passes"), mixed.get("train_macs_per_example"))
    return {
        "hypervolume": area,
        "hypervolume_ratio": _ratio(area, summary["hypervolume_frontier"]),
        "hypervolume_ratio_interval": list(interval) if interval else None,
        "train_passes": passes, "train_work": run_work, "train_seconds": mixed.get("train_seconds"),
        "cost_ratio": _ratio(passes, summary["train_passes_frontier"]),
        "cost_ratio_work": _ratio(run_work, summary["train_work_frontier"]),
        "inference_forwards": inference_forwards,
        "interpolation": mixed.get("interpolation"),
    }


def _ratio(a, b):
    return None if a is None or not b else a / b


def interpolated_lines(interpolated: dict | None) -> list[str]:
    """The report's section on the end models' weights interpolated (only where the barrier said so)."""
    if not interpolated:
        return []
    interval = interpolated["hypervolume_ratio_interval"]
    return ["", "## Two end models, weights interpolated", "",
            "The same two models' weights interpolated, (1 − α)·w₀ + α·w₁, one network per α: offered because "
            "the error barrier along the path is within Frankle et al.'s 2 points (below). Same protocol, at the "
            "comparison's λ read as α.", "", "| figure | value |", "|---|---|",
            f"| hypervolume, weights interpolated | {interpolated['hypervolume']:.4f} |",
            f"| **hypervolume ratio interpolated / frontier** | **{interpolated['hypervolume_ratio']:.3f}**"
            + (f" (95% bootstrap interval {interval[0]:.3f}–{interval[1]:.3f})" if interval else "") + " |",
            f"| training cost interpolated / frontier (passes: the two end models' training) | "
            f"{_show(interpolated['cost_ratio'])} |",
            f"| inference cost | {interpolated['inference_forwards']} forward pass per image |"]


def _show(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def mixed_lines(mixed: dict | None) -> list[str]:
    """The report's section on the mixed end models."""
    if not mixed:
        return []
    interval = mixed["hypervolume_ratio_interval"]
    shown = (f"{mixed['hypervolume_ratio']:.3f}" if mixed["hypervolume_ratio"] is not None else "–") + (
        f" (95% bootstrap interval {interval[0]:.3f}–{interval[1]:.3f})" if interval else "")
    cost = "–" if mixed["cost_ratio"] is None else f"{mixed['cost_ratio']:.3f}"
    lines = ["", "## Two end models, mixed", "",
             "What a user would build without OAT: the frontier's λ = 0 and λ = 1 models, their output "
             "probabilities mixed per image, log((1 − α)·softmax(z₀) + α·softmax(z₁)), attacked end to end "
             "(the attacks' gradients flow through both models) with the same protocol, at the comparison's λ "
             "read as α.", "",
             "| figure | value |", "|---|---|",
             f"| hypervolume, two end models mixed | {mixed['hypervolume']:.4f} |",
             f"| **hypervolume ratio mixed / frontier** | **{shown}** |",
             f"| training cost mixed / frontier (passes: the two end models' training) | {cost} |",
             f"| inference cost | {mixed['inference_forwards']} forward passes per image (OAT: 1) |"]
    barrier = mixed.get("interpolation")
    if barrier:
        verdict = ("usable, so the comparison evaluates it too (next section)" if barrier["usable"] else
                   f"not usable: interpolating the weights is no alternative here (Frankle et al.'s "
                   f"criterion: ≤ {100 * USABLE_BARRIER:g} points)")
        lines += ["", f"Weight interpolation between the same two models, (1 − α)·w₀ + α·w₁: the clean error "
                  f"rises up to **{100 * barrier['barrier']:.1f} points** above the straight line between the "
                  f"ends along the path (α = 0, 0.1, …, 1, on the {barrier['n']} evaluated examples): {verdict}."]
    return lines


def write_interpolation(mixture_dir: str | Path, x, y) -> dict:
    """Measure the weight-interpolation barrier between a mixture's members on (``x``, ``y``) and
    keep it beside the mixture (``interpolation.json``)."""
    accurate, robust = member_runs(mixture_dir)
    result = interpolation_barrier_of_runs(accurate, robust, x, y)
    write_text_atomic(Path(mixture_dir) / INTERPOLATION, json.dumps(result, indent=1) + "\n")
    return result


def read_interpolation(mixture_dir: str | Path) -> dict | None:
    """The stored interpolation barrier of a mixture directory, if measured."""
    path = Path(mixture_dir) / INTERPOLATION
    return json.loads(path.read_text()) if path.exists() else None
