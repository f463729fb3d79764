"""Pictures of the comparison: the SA–RA plane, and SA and RA against λ for the OAT model.

Left panel: the OAT curve (worst-case RA, each point labelled by its λ), the dedicated fixed-λ
models and their Pareto frontier (a staircase), the fixed-β TRADES points labelled by β, and —
where several attacks were run — each attack's RA as its own marker (PGD-family hollow, the
AutoAttack family filled), so the gap between a weak and a strong attack is visible.
Right panel: SA and RA of the OAT model against λ, with the dedicated fixed-λ models at their λ.
Where the comparison has one, the frontier's two end models mixed at inference (:mod:`.mixed`) are a
third curve in both panels, their mixing weight α on the λ axis, and their weights interpolated a
fourth (in the plane) where the interpolation barrier says it is usable.
A comparison whose models were evaluated differently (drawn only on request) carries a red
"PROTOCOL MISMATCH" note above both panels, so the picture cannot be mistaken for a fair one.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from oat.attacks.names import parse_attack  # noqa: E402

from .analytic import true_frontier  # noqa: E402
from .pareto import non_dominated  # noqa: E402
from .report import Comparison, sa_ra  # noqa: E402

OAT_COLOR, FIXED_COLOR, TRADES_COLOR = "#1f77b4", "#d62728", "#2ca02c"
MIXED_COLOR = "#ff7f0e"  # the two end models mixed at inference
INTERPOLATED_COLOR = "#9467bd"  # their weights interpolated (where usable)
MISMATCH_COLOR = "#cc0000"
TRUE_COLOR = "#222222"  # the true frontier of a task with closed forms


def _attack_marker(attack: str) -> dict:
    strong = parse_attack(attack).strong
    return {"marker": "s" if strong else "^", "strong": strong}


def _staircase(front: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The boundary of the region a non-dominated set dominates (SA ascending)."""
    xs, ys = [], []
    for index, (sa, ra) in enumerate(front):
        if index == 0:
            xs.append(0.0), ys.append(ra)
        else:
            xs.append(front[index - 1][0]), ys.append(ra)
        xs.append(sa), ys.append(ra)
    if front:
        xs.append(front[-1][0]), ys.append(0.0)
    return xs, ys


@dataclass
class Labels:
    """One series' point labels: colour, offset from the point (typographic points), alignment,
    prefix (``"λ="``) and the (value, point) pairs to label."""

    color: str
    offset: tuple[float, float]
    ha: str
    prefix: str
    points: list[tuple[float, dict]]


def place_labels(ax, series: list[Labels], fontsize: float = 8.0) -> list:
    """Label the series' points legibly; returns the texts drawn.

    Points of one series at the same place share one label (``0.2, 0.4``). A label that would
    overlap another label on the same side of its point (closer than one line vertically, and
    near it horizontally) moves up past it, so labels of points a fraction of a percent apart stay
    readable. Call it after the axes' limits and the figure's layout are final: the spacing is
    worked out in display units.
    """
    to_points = 72.0 / ax.figure.dpi
    line = 1.25 * fontsize / to_points  # one line of text, in pixels
    wanted = []  # (target y, x, anchor y, series, (SA, RA), values), in pixels
    for labels in series:
        groups: dict[tuple[float, float], list[float]] = {}
        for value, p in labels.points:
            groups.setdefault((round(100 * p["clean"], 6), round(100 * p["robust_worst"], 6)), []).append(value)
        for anchor, values in groups.items():
            x, y = ax.transData.transform(anchor)
            wanted.append((y + labels.offset[1] / to_points, x, y, labels, anchor, values))
    placed: dict[str, list[tuple[float, float]]] = {}  # per side: (x, y) of the labels drawn
    texts = []
    for target, x, y, labels, anchor, values in sorted(wanted, key=lambda w: (w[0], w[1])):
        side = placed.setdefault(labels.ha, [])
        for other_x, other_y in sorted(side, key=lambda xy: xy[1]):
            if abs(other_x - x) < 4 * line and abs(other_y - target) < line:
                target = other_y + line
        side.append((x, target))
        text = labels.prefix + ", ".join(f"{v:g}" for v in sorted(values))
        texts.append(ax.annotate(text, anchor, textcoords="offset points", fontsize=fontsize, color=labels.color,
                                 xytext=(labels.offset[0], (target - y) * to_points), ha=labels.ha))
    return texts


def _layout(fig, mismatches: list[str]) -> None:
    """Tight layout, with a red protocol-mismatch note above both panels when there is one."""
    if not mismatches:
        fig.tight_layout()
        return
    note = textwrap.fill("PROTOCOL MISMATCH (compared anyway): " + "; ".join(mismatches), width=160)
    lines = note.count("\n") + 1
    fig.suptitle(note, color=MISMATCH_COLOR, fontsize=9, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.025 * lines + 0.01)))


def _draw_true_frontier(plane, comparison: Comparison, oat_points: list[dict], fixed: list[dict]) -> None:
    """Where the task has closed forms (oat.frontier.analytic): the true frontier over every linear
    classifier, and each model's exact (SA, RA) from its weights."""
    true = true_frontier(comparison.oat) if comparison.oat else None
    if true is None:
        return
    plane.plot(100 * true[:, 0], 100 * true[:, 1], "-", color=TRUE_COLOR, lw=1.3, zorder=1,
               label="true frontier: every linear classifier (exact)")
    curve = comparison.oat.get("analytic_curve") or []
    if curve:  # the exact curve at λ = 0, 0.01, …, 1: what happens between the evaluated λ
        plane.plot([100 * p["clean"] for p in curve], [100 * p["robust"] for p in curve], ":", color=OAT_COLOR,
                   lw=1.2, zorder=3, label="OAT, exact curve (λ step 0.01)")
    exact = [p for p in oat_points if p.get("analytic")]
    if exact:
        plane.scatter([100 * p["analytic"]["clean"] for p in exact], [100 * p["analytic"]["robust"] for p in exact],
                      marker="x", s=40, color=OAT_COLOR, zorder=4, label="OAT, exact from its weights")
    exact = [p for p in fixed if p.get("analytic")]
    if exact:
        plane.scatter([100 * p["analytic"]["clean"] for p in exact], [100 * p["analytic"]["robust"] for p in exact],
                      marker="x", s=40, color=FIXED_COLOR, zorder=3, label="dedicated, exact from its weights")


def plot(comparison: Comparison, out: str | Path, title: str | None = None) -> list[Path]:
    """Draw the comparison; writes ``out`` with suffix .png and .svg and returns both paths."""
    out = Path(out)
    attacks = comparison.attacks
    fig, (plane, by_lambda) = plt.subplots(1, 2, figsize=(13, 6.5), gridspec_kw={"width_ratios": [1.35, 1]})
    pct = lambda values: [100 * v for v in values]  # noqa: E731

    fixed, trades = comparison.fixed_lambda, comparison.trades
    labels: list[Labels] = []  # drawn last, once the axes' limits and size are final
    if fixed:
        xs, ys = _staircase(non_dominated(sa_ra(fixed)))
        plane.plot(pct(xs), pct(ys), "--", color=FIXED_COLOR, lw=1.5, alpha=0.8,
                   label=f"dedicated fixed-λ frontier ({len(fixed)} runs)")
        plane.scatter(pct([p["clean"] for p in fixed]), pct([p["robust_worst"] for p in fixed]), s=55,
                      color=FIXED_COLOR, zorder=3, label="dedicated fixed-λ model (worst case)")
        labels.append(Labels(FIXED_COLOR, (6, -11), "left", "λ=", [(p["lambda"], p) for p in fixed]))
    if trades:
        plane.scatter(pct([p["clean"] for p in trades]), pct([p["robust_worst"] for p in trades]), s=70,
                      marker="D", color=TRADES_COLOR, zorder=3, label=f"fixed-β TRADES ({len(trades)} runs)")
        labels.append(Labels(TRADES_COLOR, (6, 4), "left", "β=", [(p["value"], p) for p in trades]))
    oat_points = sorted(comparison.oat["points"], key=lambda p: p["lambda"]) if comparison.oat else []
    if oat_points:
        plane.plot(pct([p["clean"] for p in oat_points]), pct([p["robust_worst"] for p in oat_points]), "-o",
                   color=OAT_COLOR, lw=2, ms=6, zorder=4, label="OAT, one model (worst case)")
        labels.append(Labels(OAT_COLOR, (-4, 7), "right", "", [(p["lambda"], p) for p in oat_points]))
    mixed_points = sorted(comparison.mixed["points"], key=lambda p: p["lambda"]) if comparison.mixed else []
    if mixed_points:
        plane.plot(pct([p["clean"] for p in mixed_points]), pct([p["robust_worst"] for p in mixed_points]), ":d",
                   color=MIXED_COLOR, lw=1.8, ms=5, zorder=3, label="two end models, mixed (α; worst case)")
    interpolated = sorted(comparison.interpolated["points"], key=lambda p: p["lambda"]) if comparison.interpolated else []
    if interpolated:
        plane.plot(pct([p["clean"] for p in interpolated]), pct([p["robust_worst"] for p in interpolated]), "-.v",
                   color=INTERPOLATED_COLOR, lw=1.5, ms=5, zorder=3, label="two end models, weights interpolated (α)")
    _draw_true_frontier(plane, comparison, oat_points, fixed)
    if len(attacks) > 1:  # per-attack markers show how much each attack finds
        for attack in attacks:
            style = _attack_marker(attack)
            for points, color in ((oat_points, OAT_COLOR), (fixed + trades, None)):
                points = [p for p in points if attack in p["robust"]]  # models may differ when mismatched
                if not points:
                    continue
                colors = [color or (TRADES_COLOR if p.get("kind") == "trades" else FIXED_COLOR) for p in points]
                plane.scatter(pct([p["clean"] for p in points]), pct([p["robust"][attack] for p in points]),
                              marker=style["marker"], s=28, zorder=2, alpha=0.7,
                              facecolors=colors if style["strong"] else "none", edgecolors=colors, linewidths=1)
            plane.scatter([], [], marker=style["marker"], s=28, facecolors="grey" if style["strong"] else "none",
                          edgecolors="grey", label=f"RA under {attack} alone")
    # Zoom on the data: the interesting region is a few points of SA wide.
    xs = [c.get_offsets()[:, 0] for c in plane.collections if len(c.get_offsets())]
    ys = [c.get_offsets()[:, 1] for c in plane.collections if len(c.get_offsets())]
    if xs:
        low, high = min(min(v) for v in xs), max(max(v) for v in xs)
        top = max(max(v) for v in ys)
        span = max(high - low, 2.0)
        plane.set_xlim(max(0.0, low - 0.15 * span), min(100.0, high + 0.1 * span) + 0.5)
        plane.set_ylim(-1.0, min(100.0, top * 1.12 + 2.0))
    plane.set_xlabel("clean accuracy SA (%)")
    plane.set_ylabel("robust accuracy RA (%)")
    plane.set_title(title or "SA–RA trade-off")
    plane.grid(alpha=0.3)
    plane.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=3, frameon=False)

    if oat_points:
        lams = [p["lambda"] for p in oat_points]
        by_lambda.plot(lams, pct([p["clean"] for p in oat_points]), "-o", color=OAT_COLOR, label="OAT SA")
        by_lambda.plot(lams, pct([p["robust_worst"] for p in oat_points]), "-s", color=OAT_COLOR, alpha=0.6,
                       label="OAT RA (worst case)")
    if mixed_points:
        alphas = [p["lambda"] for p in mixed_points]
        by_lambda.plot(alphas, pct([p["clean"] for p in mixed_points]), ":d", color=MIXED_COLOR, ms=4,
                       label="two end models mixed: SA at α = λ")
        by_lambda.plot(alphas, pct([p["robust_worst"] for p in mixed_points]), ":d", color=MIXED_COLOR, ms=4,
                       alpha=0.6, label="two end models mixed: RA")
    if fixed:
        lams = [p["lambda"] for p in fixed]
        by_lambda.plot(lams, pct([p["clean"] for p in fixed]), "o", mfc="none", color=FIXED_COLOR, ms=8,
                       label="dedicated SA")
        by_lambda.plot(lams, pct([p["robust_worst"] for p in fixed]), "s", mfc="none", color=FIXED_COLOR, ms=8,
                       label="dedicated RA (worst case)")
    by_lambda.set_xlabel("λ (trade-off weight)")
    by_lambda.set_ylabel("accuracy (%)")
    by_lambda.set_title("one OAT model across λ vs one model per λ")
    by_lambda.set_xlim(-0.03, 1.03)
    by_lambda.grid(alpha=0.3)
    by_lambda.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, frameon=False)
    _layout(fig, comparison.mismatches)
    place_labels(plane, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths
