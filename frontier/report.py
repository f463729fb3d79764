"""The comparison the project exists for: one OAT model against the dedicated baselines.

:func:`find_results` gathers an OAT run's ``eval.json`` and a sweep's ``frontier.json`` from
directories; :func:`summarize` computes the headline figures; :func:`write_report` writes
``report.md`` and ``summary.json``.

Training cost is given in passes (:mod:`oat.passes`: comparable between runs of one architecture)
and in work, the passes weighted by each network's multiply-accumulates (comparable across
architectures). The report also asks whether the OAT model's λ does what its name says — SA
falling, RA rising as λ grows — beyond sampling noise (:mod:`.monotonicity`).

Every figure uses the strongest evaluation that was run: an example counts as robust only if it
survived every attack (``robust_worst``). The *dedicated frontier* is the set of fixed-λ PGD-AT
baselines — the same objective family the OAT model is trained with, one run per λ, as in the
OAT paper; fixed-β TRADES points are reported beside it, and so is the ratio against every
dedicated model together.

Every model of one comparison must have been evaluated the same way (dataset, split, ε, norm,
test subset, attacks, seed; see :mod:`oat.protocol`): :func:`find_results` refuses a mismatch
unless asked to compare anyway, and then the report and summary say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from oat.checkpoint import write_text_atomic
from oat.intervals import LEVEL, wilson_interval
from oat.passes import total, work
from oat.protocol import check_same_protocol, common_protocol, find_mismatches, protocol_of
from oat.runs import CONFIG, EVAL_RESULT, is_conditioned, is_mixture, mixing_of, read_result

from .analytic import true_frontier_summary
from .mixed import interpolated_lines, mixed_lines, read_interpolation, summarize_mixed
from .monotonicity import ALPHA, monotonicity
from .pareto import gap, hypervolume, non_dominated
from .sweep import FRONTIER_JSON
from .uncertainty import RESAMPLES, bootstrap_ratio

SUMMARY_JSON = "summary.json"
REPORT_MD = "report.md"


@dataclass
class Comparison:
    """An OAT evaluation (``oat``: eval.json's dict plus train_seconds) and dedicated points
    (frontier.json's rows, each with its measured ``protocol``)."""

    oat: dict | None
    dedicated: list[dict] = field(default_factory=list)
    mixed: dict | None = None  # two end models mixed at inference (oat.mixture): its eval.json
    interpolated: dict | None = None  # the same two models' weights interpolated, where usable

    @property
    def protocols(self) -> list[tuple[str, dict]]:
        """(where it comes from, measured protocol) of every model, the OAT model first."""
        sources = [(self.oat.get("run_dir") or "the OAT run", protocol_of(self.oat))] if self.oat else []
        for other in (self.mixed, self.interpolated):
            if other:
                sources.append((other.get("run_dir") or "the mixed end models", protocol_of(other)))
        return sources + [(p.get("run_dir") or p["name"], protocol_of(p.get("protocol") or {}))
                          for p in self.dedicated]

    @property
    def attacks(self) -> list[str]:
        """Every attack any model's RA was measured with, in the order first run."""
        points = [p for run in (self.oat, self.mixed, self.interpolated) for p in (run or {}).get("points", [])]
        points += self.dedicated
        return list(dict.fromkeys(a for p in points for a in p["robust"]))

    @property
    def mismatches(self) -> list[str]:
        """How the models' evaluations differ (empty for a fair comparison). Derived from the
        data, not stored, so a comparison built by hand cannot claim a fairness it lacks."""
        return find_mismatches(self.protocols)

    @property
    def fixed_lambda(self) -> list[dict]:
        return sorted((p for p in self.dedicated if p["kind"] == "fixed_lambda"), key=lambda p: p["lambda"])

    @property
    def trades(self) -> list[dict]:
        return sorted((p for p in self.dedicated if p["kind"] == "trades"), key=lambda p: p["value"])


def _candidates(directory: Path) -> list[Path]:
    return [directory] + sorted(p for p in directory.iterdir() if p.is_dir())


def find_results(directories: list[str | Path], allow_mismatch: bool = False) -> Comparison:
    """Find an OAT run (a conditioned model's eval.json) and sweeps (frontier.json) in
    ``directories`` or their immediate subdirectories (the demo's layout), and check that every
    model was evaluated with one protocol: a mismatch raises :class:`oat.protocol.ProtocolMismatch`
    unless ``allow_mismatch``, which records it in the comparison instead."""
    oat, dedicated, mixed, interpolated = None, [], None, None
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise FileNotFoundError(f"not a directory: {directory}")
        for candidate in _candidates(directory):
            frontier = candidate / FRONTIER_JSON
            if frontier.exists():
                dedicated.extend(read_results(frontier, FRONTIER_ROW)["points"])
            result = candidate / EVAL_RESULT
            if result.exists() and is_mixture(candidate):
                found = read_results(result, EVAL_POINT)
                found["run_dir"] = str(candidate)
                found["interpolation"] = read_interpolation(candidate)
                if mixing_of(candidate) == "weights":
                    interpolated = found
                else:
                    mixed = found
            if result.exists() and (candidate / CONFIG).exists() and is_conditioned(candidate):
                if oat is not None:
                    raise ValueError(f"two OAT runs found ({oat['run_dir']} and {candidate}); plot one at a time")
                oat = read_results(result, EVAL_POINT)
                oat["run_dir"] = str(candidate)
    if oat is None and not dedicated:
        raise FileNotFoundError(
            f"no results in {', '.join(map(str, directories))}: expected an OAT run directory with eval.json "
            "or a sweep directory with frontier.json")
    comparison = Comparison(oat, dedicated, mixed, interpolated)
    check_same_protocol(comparison.protocols, allow_mismatch)
    return comparison


# The keys each point of a result file must have for the report and the plot.
EVAL_POINT = ("lambda", "clean", "robust", "robust_worst")
FRONTIER_ROW = ("name", "kind", "value", "lambda", "clean", "robust", "robust_worst", "train_seconds")


def read_results(path: Path, point_keys: tuple[str, ...]) -> dict:
    """An eval.json or frontier.json, or a one-line ``ValueError`` naming the file and what is wrong."""
    data = read_result(path)
    if not isinstance(data.get("points"), list):
        raise ValueError(f"{path} holds no list of 'points'; is it an oat eval.json or frontier.json?")
    for index, point in enumerate(data["points"]):
        missing = [k for k in point_keys if k not in point] if isinstance(point, dict) else list(point_keys)
        if missing or not isinstance(point.get("robust"), dict):
            raise ValueError(f"{path}: point {index} lacks {', '.join(missing) or 'a robust mapping'}")
    return data


def sa_ra(points: list[dict]) -> list[tuple[float, float]]:
    """(SA, worst-case RA) of each point."""
    return [(p["clean"], p["robust_worst"]) for p in points]


def summarize(comparison: Comparison) -> dict:
    """The headline figures: hypervolumes, their ratio, the gap, training cost, flags."""
    oat_points = comparison.oat["points"] if comparison.oat else []
    fixed = comparison.fixed_lambda
    trades = comparison.trades
    shared = common_protocol(comparison.protocols)
    summary: dict = {
        "attacks": comparison.attacks,
        "n": shared.get("n"),
        "eps": shared.get("eps"),
        "protocol": shared,
        "protocol_mismatches": comparison.mismatches,
        "runs_oat": 1 if comparison.oat else 0,
        "runs_frontier": len(fixed),
        "runs_trades": len(trades),
        "hypervolume_oat": hypervolume(sa_ra(oat_points)) if oat_points else None,
        "hypervolume_frontier": hypervolume(sa_ra(fixed)) if fixed else None,
        "hypervolume_trades": hypervolume(sa_ra(trades)) if trades else None,
        "hypervolume_all_dedicated": hypervolume(sa_ra(fixed + trades)) if fixed or trades else None,
        "train_seconds_oat": comparison.oat.get("train_seconds") if comparison.oat else None,
        "train_seconds_frontier": sum(p["train_seconds"] for p in fixed) if fixed else None,
        "train_seconds_trades": sum(p["train_seconds"] for p in trades) if trades else None,
        "train_passes_oat": total((comparison.oat or {}).get("train_passes")),
        "train_passes_frontier": _total_passes(fixed),
        "train_passes_trades": _total_passes(trades),
        "train_work_oat": _run_work(comparison.oat) if comparison.oat else None,
        "train_work_frontier": _total_work(fixed),
        "train_work_trades": _total_work(trades),
    }
    summary["hypervolume_ratio"] = _ratio(summary["hypervolume_oat"], summary["hypervolume_frontier"])
    # Resampling one example set for every model is only meaningful when they share it.
    shared_subset = bool(shared.get("n")) and not comparison.mismatches
    interval = bootstrap_ratio(oat_points, fixed, shared["n"]) if shared_subset and oat_points and fixed else None
    summary["hypervolume_ratio_interval"] = list(interval) if interval else None
    summary["interval_method"] = (f"percentile bootstrap over the {shared['n']} shared test examples, "
                                  f"{RESAMPLES} resamples, {LEVEL:.0%}") if interval else None
    summary["hypervolume_ratio_all_dedicated"] = _ratio(summary["hypervolume_oat"],
                                                        summary["hypervolume_all_dedicated"])
    # Cost counted in forward and backward passes over examples (oat.passes): the machine and its
    # load cannot move it. The ratio of wall-clock seconds stays beside it.
    summary["cost_ratio"] = _ratio(summary["train_passes_oat"], summary["train_passes_frontier"])
    summary["cost_ratio_seconds"] = _ratio(summary["train_seconds_oat"], summary["train_seconds_frontier"])
    # Passes weighted by each network's multiply-accumulates: comparable when the architectures differ.
    summary["cost_ratio_work"] = _ratio(summary["train_work_oat"], summary["train_work_frontier"])
    if oat_points and fixed:
        result = gap(sa_ra(oat_points), sa_ra(fixed))
        summary["gap"] = {"mean_deficit": result["mean_deficit"], "worst_deficit": result["worst_deficit"],
                          "dominated_points": result["dominated"], "points": len(oat_points)}
    else:
        summary["gap"] = None
    summary["true_frontier"] = true_frontier_summary(comparison.oat, fixed + trades)
    summary["mixed_ends"] = summarize_mixed(comparison.mixed, fixed, summary)
    summary["interpolated_ends"] = summarize_mixed(comparison.interpolated, fixed, summary, inference_forwards=1)
    summary["monotonicity"] = monotonicity(oat_points, protocol_of(comparison.oat).get("n")) if comparison.oat else None
    flags = [dict(flag, model="oat") for flag in (comparison.oat or {}).get("flags", [])]
    flags += [dict(flag, model="mixed ends") for flag in (comparison.mixed or {}).get("flags", [])]
    flags += [dict(flag, model="interpolated ends") for flag in (comparison.interpolated or {}).get("flags", [])]
    for point in comparison.dedicated:
        flags += [dict(flag, model=point["name"]) for flag in point.get("flags", [])]
    summary["flags"] = flags
    return summary


def _total_passes(points: list[dict]) -> int | None:
    """All the training passes of ``points``; None when there are none or one was not counted."""
    totals = [total(p.get("train_passes")) for p in points]
    return sum(totals) if totals and None not in totals else None


def _run_work(run: dict) -> int | None:
    """A run's training work in multiply-accumulates (oat.passes.work); None when uncounted."""
    return work(run.get("train_passes"), run.get("train_macs_per_example"))


def _total_work(points: list[dict]) -> int | None:
    """All the training work of ``points``; None when there are none or one is unknown."""
    works = [_run_work(p) for p in points]
    return sum(works) if works and None not in works else None


def _ratio(a, b):
    return None if a is None or not b else a / b


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _pct2(value: float) -> str:
    return f"{100 * value:.2f}"


def _pct_interval(value, n: int | None) -> str:
    """A percentage with its Wilson 95% interval when the number of examples is known."""
    if value is None or not n:
        return _pct(value)
    low, high = wilson_interval(value, n)
    return f"{100 * value:.1f} ({100 * low:.1f}–{100 * high:.1f})"


def _accuracy_cells(point: dict, attacks: list[str], n: int | None) -> str:
    """SA, RA under each attack and worst-case RA, as table cells."""
    values = [point["clean"], *(point["robust"].get(a) for a in attacks), point["robust_worst"]]
    return " | ".join(_pct_interval(v, n) for v in values)


def _evaluation_lines(summary: dict) -> list[str]:
    """What the evaluation was, or — when models were evaluated differently — a warning and each
    difference, so nobody reads a ratio of unlike measurements as a result."""
    attacks = ", ".join(summary["attacks"] or []) or "no attack"
    mismatches = summary["protocol_mismatches"]
    if not mismatches:
        eps = "unknown" if summary["eps"] is None else f"{summary['eps']:.4g}"
        n = "" if summary["n"] is None else f"{summary['n']} "
        cascade = (" The attacks ran as a cascade: each only on the examples every earlier one failed on "
                   "(AutoAttack's own procedure), which measures the same worst case for less; so each attack's "
                   "column counts the examples that survive it and every attack run before it."
                   if summary["protocol"].get("cascade") else "")
        shared = summary["protocol"]
        which = ", ".join(f"{name} {shared[name]}" for name in ("dataset", "split", "seed", "subset") if name in shared)
        return [f"Evaluation: {attacks} at ε = {eps} (L∞) on the same {n}test examples for every model"
                + (f" ({which})" if which else "") + "; RA is the per-example worst case over those attacks (an "
                f"example counts as robust only if it survives every one).{cascade}", ""]
    return [f"**PROTOCOL MISMATCH: the models were not evaluated the same way** (compared anyway with "
            f"--allow-mismatch), so these figures do not compare like with like. Attacks run: {attacks}; RA is "
            "each model's per-example worst case over its own attacks.", "",
            "## Protocol mismatches", ""] + [f"- {message}" for message in mismatches] + [""]


def format_report(comparison: Comparison, summary: dict, title: str = "OAT vs dedicated baselines") -> str:
    attacks = summary["attacks"] or []
    lines = [f"# {title}", ""] + _evaluation_lines(summary)
    lines += [
        "## Headline",
        "",
        "| figure | value |",
        "|---|---|",
        f"| hypervolume, OAT (one run) | {_num(summary['hypervolume_oat'])} |",
        f"| hypervolume, dedicated fixed-λ frontier ({summary['runs_frontier']} runs) | "
        f"{_num(summary['hypervolume_frontier'])} |",
        f"| **hypervolume ratio OAT / frontier** | **{_num(summary['hypervolume_ratio'])}**"
        f"{_interval(summary['hypervolume_ratio_interval'])} |",
        f"| hypervolume, fixed-β TRADES ({summary['runs_trades']} runs) | {_num(summary['hypervolume_trades'])} |",
        f"| hypervolume ratio OAT / every dedicated model | {_num(summary['hypervolume_ratio_all_dedicated'])} |",
        f"| training passes (work), OAT | {_passes(summary['train_passes_oat'])}; "
        f"work {_work(summary['train_work_oat'])} (1 run) |",
        f"| training passes (work), fixed-λ frontier | {_passes(summary['train_passes_frontier'])}; "
        f"work {_work(summary['train_work_frontier'])} ({summary['runs_frontier']} runs) |",
        f"| training passes (work), TRADES points | {_passes(summary['train_passes_trades'])}; "
        f"work {_work(summary['train_work_trades'])} ({summary['runs_trades']} runs) |",
        f"| **cost ratio OAT / frontier (passes)** | **{_num(summary['cost_ratio'])}** |",
        f"| cost ratio OAT / frontier (work: multiply-accumulates) | {_num(summary['cost_ratio_work'])} |",
        f"| training time, OAT / fixed-λ frontier / TRADES | {_secs(summary['train_seconds_oat'])} / "
        f"{_secs(summary['train_seconds_frontier'])} / {_secs(summary['train_seconds_trades'])} |",
        f"| cost ratio OAT / frontier (wall-clock seconds) | {_num(summary['cost_ratio_seconds'])} |",
    ]
    if summary["gap"]:
        g = summary["gap"]
        lines += [
            f"| OAT points behind the frontier | {g['dominated_points']} of {g['points']} |",
            f"| mean deficit (points of SA and RA) | {100 * g['mean_deficit']:.2f} |",
            f"| worst deficit (points of SA and RA) | {100 * g['worst_deficit']:.2f} |",
        ]
    lines += ["", "A point's deficit is the smallest equal gain in SA and RA that would leave no dedicated "
              "model strictly better in both; 0 means it lies on or beyond the frontier. Training passes: "
              "forward and backward passes over single examples, attack steps included (one forward of one "
              "example is one pass, its backward another). Work: each pass weighted by its network's "
              "multiply-accumulates (MACs) per example, M for a forward or an input-only backward, 2M for a "
              "backward with weight gradients; unlike passes it compares networks of different sizes.", ""]
    lines += ["## All points", "", "| model | λ | β | SA | " + " | ".join(f"RA {a}" for a in attacks)
              + " | RA worst | train passes | train s |", "|---" * (6 + len(attacks)) + "|---|"]
    n = summary["n"]
    for point in (comparison.oat or {}).get("points", []):
        lines.append(f"| OAT | {point['lambda']:g} | | " + _accuracy_cells(point, attacks, n) + " | | |")
    for label, run in (("two end models, mixed (α)", comparison.mixed),
                       ("two end models, weights interpolated (α)", comparison.interpolated)):
        for point in (run or {}).get("points", []):
            lines.append(f"| {label} | {point['lambda']:g} | | " + _accuracy_cells(point, attacks, n) + " | | |")
    for point in comparison.fixed_lambda + comparison.trades:
        beta = f"{point['value']:g}" if point["kind"] == "trades" else ""
        lines.append(f"| {point['name']} | {point['lambda']:g} | {beta} | " + _accuracy_cells(point, attacks, n)
                     + f" | {_passes(total(point.get('train_passes')))} | {point['train_seconds']:.0f} |")
    if n:
        lines += ["", f"Accuracies in %, each with its Wilson 95% interval on the {n} test examples."]
    non_dom = set(non_dominated(sa_ra(comparison.fixed_lambda))) if comparison.fixed_lambda else set()
    if non_dom:
        names = [p["name"] for p in comparison.fixed_lambda if (p["clean"], p["robust_worst"]) in non_dom]
        lines += ["", f"Fixed-λ models on the frontier: {', '.join(names)}."]
    lines += _monotonicity_lines(summary.get("monotonicity"))
    lines += mixed_lines(summary.get("mixed_ends"))
    lines += interpolated_lines(summary.get("interpolated_ends"))
    lines += _autoattack_lines(summary.get("autoattack") or [])
    lines += _true_frontier_lines(summary.get("true_frontier"))
    lines += ["", "## Evaluation flags", ""]
    if summary["flags"]:
        lines += [f"- {flag['model']}: {flag['message']}" for flag in summary["flags"]]
    else:
        lines.append("None: no masking check fired (oat/masking.py lists them).")
    return "\n".join(lines) + "\n"


def _monotonicity_lines(result: dict | None) -> list[str]:
    """Whether SA falls and RA rises with λ, each violation beyond sampling noise on its own line."""
    if not result:
        return []
    lines = ["", "## Does λ do what it says?", "",
             "Between consecutive evaluated λ, SA should not rise and RA should not fall. Each step that goes "
             "the wrong way is tested on the shared test examples: an exact two-sided McNemar test on the "
             f"examples that change, significant at p < {ALPHA:g} (without per-example results: disjoint "
             "Wilson 95% intervals).", ""]
    significant = [v for v in result["violations"] if v["significant"]]
    noise = [v for v in result["violations"] if not v["significant"]]
    if not significant:
        lines.append("SA falls and RA rises with λ within sampling noise." if noise else
                     "SA never rises and RA never falls as λ grows: λ does what it says.")
    else:
        lines.append("**Beyond sampling noise, λ does not do what its name says here:**")
        lines += [f"- {_step(v)}: {_change(v)}" for v in significant]
    if noise:
        lines += ["", "Within sampling noise: " + "; ".join(f"{_step(v)} ({_change(v)})" for v in noise) + "."]
    return lines


def _step(violation: dict) -> str:
    low, high = violation["lambdas"]
    return f"{violation['metric']} from λ = {low:g} to {high:g}"


def _change(violation: dict) -> str:
    before, after = violation["values"]
    text = f"{100 * before:.1f}% → {100 * after:.1f}%"
    if violation["p"] is not None:
        text += f"; examples lost {violation['b']}, gained {violation['c']}, p = {violation['p']:.2g}"
    return text


def _true_frontier_lines(true: dict | None) -> list[str]:
    """The closed-form section: every linear model's exact SA and RA, and how far behind the true
    frontier (every linear classifier's) it lies."""
    if not true:
        return []
    f = true["frontier"]
    lines = ["", "## Against the true frontier", "",
             f"The task has closed forms (oat.frontier.analytic): the Pareto frontier over every linear classifier "
             f"runs from SA {_pct2(f['max_clean'])} (RA {_pct2(f['robust_at_max_clean'])}) to RA {_pct2(f['max_robust'])}, "
             f"computed to within {100 * f['tolerance']:.2f} points. Each model's SA and RA below are exact, from its "
             "weights; its distance is how much some linear classifier beats it in both SA and RA at once "
             "(0: on the frontier).", "",
             "| model | λ | SA (exact) | RA (exact) | distance behind the true frontier |", "|---|---|---|---|---|"]
    for row in true["oat"] + true["dedicated"]:
        lines.append(f"| {row['name']} | {row['lambda']:g} | {_pct2(row['clean'])} | {_pct2(row['robust'])} | "
                     f"{100 * row['distance']:.2f} |")
    if true["max_distance_oat"] is not None:
        lines += ["", f"OAT's largest distance behind the true frontier: **{100 * true['max_distance_oat']:.2f} points** "
                  "of SA and RA at the evaluated λ"]
        if true.get("max_distance_oat_curve") is not None:
            lines[-1] += (f"; between them too, on its exact curve at λ = 0, 0.01, …, 1: "
                          f"**{100 * true['max_distance_oat_curve']:.2f} points** "
                          f"(λ = {true['lambda_max_distance_oat_curve']:g})")
        lines[-1] += "."
    return lines


def _autoattack_lines(rows: list[dict]) -> list[str]:
    """The second protocol's table: the standard AutoAttack on its own smaller fixed subset."""
    if not rows:
        return []
    n, eps = rows[0]["n"], rows[0]["eps"]
    lines = ["", "## Standard AutoAttack", "",
             f"APGD-CE, APGD-T, FAB-T and Square at ε = {eps:.4g} on a fixed subset of {n} test examples (its own "
             "protocol, shared by the models below; RA counts an example only if it is classified correctly clean "
             "and after the attack).", "", "| model | λ | SA | RA AutoAttack |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['lambda']:g} | {_pct_interval(row['clean'], row['n'])} | "
                     f"{_pct_interval(row['robust'], row['n'])} |")
    return lines


def _num(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def _interval(interval) -> str:
    return "" if not interval else f" (95% bootstrap interval {interval[0]:.3f}–{interval[1]:.3f})"


def _passes(value) -> str:
    return "–" if value is None else f"{value / 1e6:.2f} M"


def _work(value) -> str:
    """Multiply-accumulates with an SI prefix (``12.3 T MACs``)."""
    if value is None:
        return "–"
    for exponent, prefix in ((15, "P "), (12, "T "), (9, "G "), (6, "M ")):
        if value >= 10**exponent:
            return f"{value / 10**exponent:.3g} {prefix}MACs"
    return f"{value} MACs"


def _secs(value) -> str:
    return "–" if value is None else f"{value:.0f} s"


def write_report(comparison: Comparison, out_dir: str | Path, extra: dict | None = None,
                 autoattack: list[dict] | None = None) -> dict:
    """Write ``report.md`` and ``summary.json`` into ``out_dir``; returns the summary.
    ``autoattack``: rows of a second, standard-AutoAttack evaluation (model, λ, clean, robust, n, eps)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(comparison)
    summary["autoattack"] = autoattack or []
    summary.update(extra or {})
    write_text_atomic(out_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out_dir / REPORT_MD, format_report(comparison, summary))
    return summary
