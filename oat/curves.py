"""Pictures of single runs: training curves with the overestimation monitor's signals
(``oat plot --curves RUN...``), and robustness curves, RA against ε (``oat plot --eps-curve``).

Training curves, one colour per run, three panels against epochs:

1. validation accuracy at each watched λ — clean (solid), the PGD attack (dashed), the worst case
   with the APGD attacks (dotted) — with each span the monitor flagged shaded in the run's colour;
2. FOSC — of the training attack (solid) and of the validation PGD iterate (dashed), and the
   epochs whose first batches got the FOSC noise (marked ×);
3. the weight-gradient norm per step — each epoch's median (dashed) and maximum (solid), and the
   spikes (steps above 3× the median) counted above the epochs that had any.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import runs  # noqa: E402
from .checkpoint import CheckpointError  # noqa: E402
from .monitor import overestimation_summary  # noqa: E402
from .runs import METRICS  # noqa: E402

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
MARKERS = ("o", "s", "^", "D", "v")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """A run's epoch records (:func:`oat.runs.read_metrics`: a torn last line is dropped, as
    ``--resume`` drops it); a one-line error when there are none."""
    if not (Path(run_dir) / METRICS).is_file():
        raise FileNotFoundError(f"{run_dir}: no {METRICS} (is it a training run directory?)")
    try:
        records = runs.read_metrics(run_dir)
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    if not records:
        raise ValueError(f"{Path(run_dir) / METRICS} holds no epoch yet")
    return records


def plot_training(run_dirs: list[str | Path], out: str | Path) -> tuple[Path, Path]:
    """Draw the training curves of ``run_dirs`` into ``out`` (PNG) and an SVG beside it."""
    runs = [(Path(d).name or str(d), read_metrics(d)) for d in run_dirs]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for index, (name, records) in enumerate(runs):
        color = COLORS[index % len(COLORS)]
        _accuracy_panel(axes[0], name, records, color)
        _fosc_panel(axes[1], name, records, color)
        _gradient_panel(axes[2], name, records, color)
    axes[0].set(title="validation accuracy (shaded: overestimation flagged)", xlabel="epoch", ylabel="accuracy")
    axes[1].set(title="FOSC (solid: training attack; dashed: validation PGD)", xlabel="epoch", ylabel="FOSC")
    axes[2].set(title="gradient norm per step (solid: max, dashed: median)", xlabel="epoch",
                ylabel="‖∇θ ℓ‖₂")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out)


def _accuracy_panel(ax, name: str, records: list[dict], color: str) -> None:
    validated = [r for r in records if r.get("validation")]
    if not validated:
        return
    lambdas = [p["lambda"] for p in validated[0]["validation"]["points"]]
    for k, lam in enumerate(lambdas):
        epochs = [r["epoch"] for r in validated]
        points = [next(p for p in r["validation"]["points"] if p["lambda"] == lam) for r in validated]
        weak = points[0]["overestimation"]["weak"]
        marker = MARKERS[k % len(MARKERS)]
        label = f"{name} λ={lam:g}"
        ax.plot(epochs, [p["clean"] for p in points], "-", color=color, marker=marker, ms=3, label=f"{label} clean")
        ax.plot(epochs, [p["robust"][weak] for p in points], "--", color=color, marker=marker, ms=3,
                label=f"{label} {weak}")
        ax.plot(epochs, [p["robust"][weak] - p["overestimation"]["gap"] for p in points], ":", color=color,
                marker=marker, ms=3, label=f"{label} worst with {'+'.join(points[0]['overestimation']['strong'])}")
    last = records[-1]["epoch"]
    step = validated[1]["epoch"] - validated[0]["epoch"] if len(validated) > 1 else 1
    for point in overestimation_summary(records)["lambdas"]:
        for began, cleared in point["spans"]:
            end = cleared - step / 2 if cleared else last + step / 2
            ax.axvspan(began - step / 2, end, color=color, alpha=0.12, lw=0)


def _fosc_panel(ax, name: str, records: list[dict], color: str) -> None:
    train = [(r["epoch"], r["fosc"]) for r in records if r.get("fosc") is not None]
    if train:
        ax.plot(*zip(*train), "-", color=color, label=f"{name} training attack")
    validated = [(r["epoch"], max(p["fosc"]["mean"] for p in r["validation"]["points"] if p.get("fosc")))
                 for r in records if r.get("validation") and any(p.get("fosc") for p in r["validation"]["points"])]
    if validated:
        ax.plot(*zip(*validated), "--", color=color, label=f"{name} validation PGD (largest λ mean)")
    noised = [r["epoch"] for r in records if r.get("fosc_noise_batches")]
    if noised and train:
        values = dict(train)
        ax.plot(noised, [values.get(e, 0.0) for e in noised], "x", color=color, ms=8,
                label=f"{name} epochs with FOSC noise")


def _gradient_panel(ax, name: str, records: list[dict], color: str) -> None:
    rows = [(r["epoch"], r["grad_norm"]) for r in records if r.get("grad_norm", {}).get("max") is not None]
    if not rows:
        return
    epochs = [e for e, _ in rows]
    ax.plot(epochs, [g["max"] for _, g in rows], "-", color=color, label=f"{name} max")
    ax.plot(epochs, [g["median"] for _, g in rows], "--", color=color, label=f"{name} median")
    for epoch, g in rows:
        if g.get("spikes"):
            ax.annotate(str(g["spikes"]), (epoch, g["max"]), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=7, color=color)


def plot_robustness(results: list[tuple[str, dict]], out: str | Path) -> tuple[Path, Path]:
    """Draw RA against ε for each (name, eval.json result with an ``eps_sweep``), one line per λ."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for index, (name, result) in enumerate(results):
        sweep = result.get("eps_sweep")
        if not sweep:
            raise ValueError(f"{name}: no robustness curve in its evaluation (run oat eval --eps-sweep E1,E2,...)")
        styles = ("-", "--", ":", "-.")
        for k, point in enumerate(sweep["points"]):
            ax.plot([0.0, *sweep["eps"]], [point["clean"], *point["robust_worst"]], styles[index % len(styles)],
                    marker=MARKERS[index % len(MARKERS)], ms=4, color=COLORS[k % len(COLORS)],
                    label=f"{name} λ={point['lambda']:g}")
    ax.set(xlabel="ε (L∞)", ylabel="accuracy (worst case over the attacks)", ylim=(0, 1),
           title="robustness curve: RA must fall as ε grows")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    svg = out.with_suffix(".svg")
    fig.savefig(out, dpi=130)
    fig.savefig(svg)
    plt.close(fig)
    return out, svg
