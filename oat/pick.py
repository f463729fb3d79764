"""Choose λ from an evaluation (``oat pick``): a constraint on one figure, the best of the other.

The figures are clean accuracy and ``robust_worst`` (per-example worst case over every attack: the
robust accuracy we trust). ``min_clean=c`` keeps the λ whose clean accuracy reaches c and maximises
robust accuracy; ``min_robust=r`` keeps those whose robust accuracy reaches r and maximises clean
accuracy; ``maximize`` alone is unconstrained and, with a constraint, overrides its objective (it
must be given when both constraints are). Ties on the objective go to the better other figure,
then to the smaller λ.

The answer is an evaluated λ, each figure with its 95% Wilson interval, and ``confident``: whether
the constraint still holds at the lower end of its figure's interval. A model that serves every λ in
[0, 1] (``continuous_lambda``) may do better between evaluated λ. Reading both figures as piecewise
linear between neighbouring evaluated λ (never beyond the evaluated range), each segment's feasible
part is an interval and the objective is linear on it, so the optimum lies at an evaluated λ or
where a constrained figure crosses its bound; a crossing that beats the evaluated pick is reported
as ``interpolated``: an estimate, not a measurement, to confirm with ``oat eval --lambdas``. With a
dual BatchNorm (``dual_bn``, the default) λ = 0 is served by a BatchNorm of its own, so nothing is
interpolated between λ = 0 and the next evaluated λ; likewise between the last evaluated λ below 1
and λ = 1 where λ = 1 has parameters of its own (``separate_lambdas`` holds 1: a triple BatchNorm).

A λ chosen on the test split has optimistic test figures (it was selected for them): pick on a
validation evaluation and report that λ's test figures.
"""

from __future__ import annotations

import math
import shlex

from .intervals import LEVEL, wilson_interval

FIGURES = {"clean": "clean", "robust": "robust_worst"}  # objective name -> key of an evaluated point
NAMES = {"clean": "clean accuracy", "robust": "robust accuracy"}
DECIMALS = 4  # an interpolated λ is reported to this many decimals
# Accuracies are float32 means written as doubles (27/30 reads 0.8999999762), and 1/n is far above
# this, so a figure within it of a bound reaches the bound.
TOLERANCE = 1e-6


class PickError(ValueError):
    """The options or the evaluation cannot give an answer (the user's input, not a bug)."""


def _meets(value: float, bound: float) -> bool:
    return value >= bound - TOLERANCE


def goal(min_clean, min_robust, maximize) -> tuple[dict, str]:
    """The constraints ({figure: bound}) and the objective the options ask for; PickError if they
    ask for nothing or for nonsense."""
    constraints = {name: bound for name, bound in (("clean", min_clean), ("robust", min_robust)) if bound is not None}
    for name, bound in constraints.items():
        if not (isinstance(bound, (int, float)) and 0.0 <= bound <= 1.0):  # also refuses NaN
            raise PickError(f"--min-{name} must lie in [0, 1], got {bound}")
    if maximize is not None and maximize not in FIGURES:
        raise PickError(f"--maximize must be robust or clean, got {maximize!r}")
    if maximize is None and not constraints:
        raise PickError("nothing to pick by: give --min-clean, --min-robust or --maximize")
    if maximize is None and len(constraints) == 2:
        raise PickError("with both --min-clean and --min-robust, say what to maximise: --maximize robust|clean")
    if maximize is None:
        maximize = "robust" if "clean" in constraints else "clean"
    return constraints, maximize


def _has_robust(result: dict) -> bool:
    """Whether the evaluation measured robust accuracy (with no attacks ``robust_worst`` is just clean)."""
    points = result.get("points") or []
    return result.get("attacks") != [] and bool(points) and all(
        isinstance(p, dict) and p.get("robust_worst") is not None for p in points)


def _points(result: dict, robust: bool) -> list[dict]:
    """The evaluated points as {"lambda", "clean", "robust"}, sorted by λ (robust None when not measured)."""
    if not isinstance(result, dict) or not isinstance(result.get("points"), list) or not result["points"]:
        raise PickError("not an evaluation: no 'points' (write one with oat eval)")
    keys = ("lambda", "clean", "robust_worst") if robust else ("lambda", "clean")
    points = []
    for k, point in enumerate(result["points"]):
        missing = [key for key in keys if not isinstance(point, dict) or not isinstance(point.get(key), (int, float))]
        if missing:
            raise PickError(f"point {k} of the evaluation has no {', '.join(repr(m) for m in missing)}")
        points.append({"lambda": float(point["lambda"]), "clean": float(point["clean"]),
                       "robust": float(point["robust_worst"]) if robust else None})
    return sorted(points, key=lambda p: p["lambda"])


def _feasible(point: dict, constraints: dict) -> bool:
    return all(_meets(point[name], bound) for name, bound in constraints.items())


def _key(point: dict, objective: str) -> tuple:
    """Larger is better: the objective, then the other figure, then the smaller λ."""
    other = point["robust" if objective == "clean" else "clean"]
    return point[objective], -math.inf if other is None else other, -point["lambda"]


def _at(p: dict, q: dict, lam: float) -> dict:
    """Both figures linearly interpolated at ``lam`` between evaluated points ``p`` and ``q``."""
    t = (lam - p["lambda"]) / (q["lambda"] - p["lambda"])
    figure = lambda name: None if p[name] is None else p[name] + t * (q[name] - p[name])  # noqa: E731
    return {"lambda": lam, "clean": figure("clean"), "robust": figure("robust"), "between": [p["lambda"], q["lambda"]]}


def _crossings(p: dict, q: dict, constraints: dict) -> list[dict]:
    """The feasible points of segment p–q where a constrained figure equals its bound, λ rounded to
    DECIMALS on the feasible side (none when the rounded λ leaves the segment or the feasible set)."""
    found = []
    for name, bound in constraints.items():
        if (p[name] - bound) * (q[name] - bound) >= 0:  # no crossing strictly inside the segment
            continue
        exact = p["lambda"] + (bound - p[name]) / (q[name] - p[name]) * (q["lambda"] - p["lambda"])
        nearest = round(exact, DECIMALS)
        # The nearest 4-decimal λ, else its neighbour on the feasible side of the crossing.
        for lam in (nearest, round(nearest - 10 ** -DECIMALS, DECIMALS), round(nearest + 10 ** -DECIMALS, DECIMALS)):
            if p["lambda"] <= lam <= q["lambda"] and _feasible(_at(p, q, lam), constraints):
                found.append(_at(p, q, lam))
                break
    return found


def _interpolated(points: list[dict], constraints: dict, objective: str, separate: set) -> dict | None:
    """The best crossing point over every segment between consecutive evaluated λ, or None. With a
    dual BatchNorm, λ = 0 has a BatchNorm of its own and every λ > 0 the other, so the figures jump
    just above 0: no segment starts there (``0 in separate``); nor ends at λ = 1 when λ = 1 has
    parameters of its own (``1 in separate``)."""
    candidates = [c for p, q in zip(points, points[1:])
                  if q["lambda"] > p["lambda"] and not (0 in separate and p["lambda"] == 0)
                  and not (1 in separate and q["lambda"] == 1)
                  for c in _crossings(p, q, constraints)]
    return max(candidates, key=lambda c: _key(c, objective), default=None)


def _describe(constraints: dict) -> str:
    return " and ".join(f"{NAMES[name]} {bound:g}" for name, bound in constraints.items())


def _reason(points: list[dict], constraints: dict) -> str:
    """Why no evaluated λ meets the constraints, naming the best figure there is."""
    for name, bound in constraints.items():
        if not any(_meets(p[name], bound) for p in points):
            best = max(points, key=lambda p: (p[name], -p["lambda"]))
            return (f"no evaluated λ reaches {_describe({name: bound})}; "
                    f"the highest is {best[name]:.3f} at λ = {best['lambda']:g}")
    # Each constraint alone is met somewhere, never both: say how far the other falls short.
    (first, bound), (second, _) = constraints.items()
    best = max((p for p in points if _meets(p[first], bound)), key=lambda p: (p[second], -p["lambda"]))
    return (f"no evaluated λ reaches both {_describe(constraints)}; where {NAMES[first]} reaches {bound:g}, "
            f"the highest {NAMES[second]} is {best[second]:.3f} at λ = {best['lambda']:g}")


def pick(result: dict, min_clean: float | None = None, min_robust: float | None = None,
         maximize: str | None = None) -> dict:
    """Choose λ from ``result`` (an ``eval.json``) by the rule of the module docstring.

    Returns a JSON-ready dict: ``lambda``, ``clean``, ``robust_worst`` of the evaluated pick, each
    figure's ``*_interval`` (95% Wilson) and ``confident`` (all None when no evaluated λ meets the
    constraints; ``reason`` then says why), ``interpolated`` (None, or an unmeasured estimate
    between evaluated λ), ``constraints``, ``objective``, the evaluation's ``dataset``, ``split``,
    ``n``, ``eps``, ``attacks``, ``checkpoint``, and ``warning`` (picked on the test split) or None.
    Raises PickError (a ValueError) for bad options or an evaluation that cannot answer them.
    """
    constraints, objective = goal(min_clean, min_robust, maximize)
    if not isinstance(result, dict):
        raise PickError("not an evaluation: no 'points' (write one with oat eval)")
    need = "robust" in constraints or objective == "robust"
    if need and isinstance(result, dict) and result.get("attacks") == []:
        raise PickError("the evaluation ran no attacks, so it has no robust accuracy to pick by "
                        "(evaluate with oat eval --attacks)")
    points = _points(result, robust=need or _has_robust(result))
    n = result.get("n")
    if not isinstance(n, int) or n < 1:
        raise PickError("the evaluation has no 'n' (the number of examples it measured)")
    best = max((p for p in points if _feasible(p, constraints)), key=lambda p: _key(p, objective), default=None)
    # An evaluation that does not say is taken to have the default dual BatchNorm (the cautious reading).
    separate = set(result.get("separate_lambdas", [0.0] if result.get("dual_bn", True) is not False else []))
    estimate = _interpolated(points, constraints, objective, separate) if result.get("continuous_lambda") else None
    if estimate is not None and best is not None and not estimate[objective] > best[objective] + TOLERANCE:
        estimate = None
    return {**_measured(best, constraints, n),
            "reason": None if best else _reason(points, constraints),
            "interpolated": _estimate(estimate, result),
            **_context(result, constraints, objective)}


def _measured(best: dict | None, constraints: dict, n: int) -> dict:
    """The evaluated pick's figures, their intervals and whether the constraints hold at the lower ends."""
    if best is None:
        return dict.fromkeys(("lambda", "clean", "clean_interval", "robust_worst", "robust_worst_interval",
                              "confident"))
    intervals = {name: None if best[name] is None else list(wilson_interval(best[name], n)) for name in FIGURES}
    return {"lambda": best["lambda"],
            "clean": best["clean"], "clean_interval": intervals["clean"],
            "robust_worst": best["robust"], "robust_worst_interval": intervals["robust"],
            "confident": all(_meets(intervals[name][0], bound) for name, bound in constraints.items())}


def _estimate(estimate: dict | None, result: dict) -> dict | None:
    if estimate is None:
        return None
    return {"lambda": estimate["lambda"], "clean": estimate["clean"], "robust_worst": estimate["robust"],
            "between": estimate["between"], "measured": False,
            "confirm": confirm_command(result, estimate["lambda"])}


def confirm_command(result: dict, lam: float) -> str:
    """The ``oat eval`` that measures ``lam`` as ``result`` was measured, into a file of its own
    (the default, the run's eval.json, would be overwritten)."""
    words = ["oat", "eval", "--checkpoint", result.get("checkpoint") or "CHECKPOINT", "--lambdas", f"{lam:g}"]
    if result.get("attacks"):
        words += ["--attacks", ",".join(result["attacks"])]
    for flag, key in (("--eps", "eps"), ("--n", "n"), ("--seed", "seed"), ("--split", "split")):
        if result.get(key) is not None:
            words += [flag, str(result[key])]
    return shlex.join(words + ["--out", "eval_confirm.json"])


def _context(result: dict, constraints: dict, objective: str) -> dict:
    return {"constraints": {"min_clean": constraints.get("clean"), "min_robust": constraints.get("robust")},
            "objective": objective, "level": LEVEL, "continuous_lambda": bool(result.get("continuous_lambda")),
            **{key: result.get(key) for key in ("dataset", "split", "n", "eps", "attacks", "checkpoint")},
            "warning": _warning(result.get("split"))}


def _warning(split: str | None) -> str | None:
    advice = "pick on a validation evaluation (oat eval --split validation) and report that λ's test figures"
    if split == "test":
        return f"λ was chosen on the test split, so its test figures are optimistic: {advice}"
    if split is None:
        return ("the evaluation does not record its split (an older eval.json: most likely the test split); "
                f"a λ chosen on the test split has optimistic test figures: {advice}")
    return None


def format_pick(picked: dict) -> str:
    """The pick for the terminal: the λ and its figures (or why there is none), the rule, the
    interpolated estimate if any, and the ``oat export`` command."""
    lines = [_figures_line(picked) if picked["lambda"] is not None else f"no λ picked: {picked['reason']}",
             _rule_line(picked)]
    estimate = picked["interpolated"]
    if estimate is not None:
        robust = "" if estimate["robust_worst"] is None else f", robust ≈ {estimate['robust_worst']:.3f}"
        a, b = estimate["between"]
        lines += [f"between the evaluated λ (this model serves any λ in [0, 1]): λ = {estimate['lambda']:g} "
                  f"(between {a:g} and {b:g}) would give clean ≈ {estimate['clean']:.3f}{robust} by linear "
                  "interpolation, not measured",
                  f"confirm it: {estimate['confirm']}"]
    if picked["lambda"] is not None and picked.get("checkpoint"):
        lines.append(f"export it: oat export --checkpoint {shlex.quote(picked['checkpoint'])} "
                     f"--lambda {picked['lambda']:g} --out model.pt")
    return "\n".join(lines)


def _interval(value: float, interval: list[float]) -> str:
    return f"{value:.3f} ({interval[0]:.3f}–{interval[1]:.3f})"


def _figures_line(picked: dict) -> str:
    line = f"λ = {picked['lambda']:g}: clean {_interval(picked['clean'], picked['clean_interval'])}"
    if picked["robust_worst"] is not None:
        line += (f", robust {_interval(picked['robust_worst'], picked['robust_worst_interval'])}, worst case of "
                 f"{', '.join(picked['attacks'] or ['the attacks'])}")
    eps = "" if picked["eps"] is None else f" at ε = {picked['eps']:.4g}"
    return line + f" over {picked['n']} examples{eps}"


def _rule_line(picked: dict) -> str:
    """Which rule chose, on what data, and how sure it is."""
    bounds = {"clean": picked["constraints"]["min_clean"], "robust": picked["constraints"]["min_robust"]}
    held = [f"{NAMES[name]} ≥ {bound:g}" for name, bound in bounds.items() if bound is not None]
    rule = f"rule: the {'most robust' if picked['objective'] == 'robust' else 'cleanest'} evaluated λ"
    rule += f" with {' and '.join(held)}" if held else ""
    where = f" on the {picked['split'] or 'unrecorded'} split"
    where += f" of {picked['dataset']}" if picked["dataset"] else ""
    if picked["lambda"] is None or not held:
        return rule + where
    if picked["confident"]:
        return f"{rule}{where}; the bound holds at the lower end of its {picked['level']:.0%} interval"
    short = [f"{NAMES[name]} reaches down to {picked[FIGURES[name] + '_interval'][0]:.3f}, below {bound:g}"
             for name, bound in bounds.items()
             if bound is not None and not _meets(picked[FIGURES[name] + "_interval"][0], bound)]
    return f"{rule}{where}; not confident: the {picked['level']:.0%} interval of {' and of '.join(short)}"
