"""``oat demo``: the whole comparison on the bundled digits, offline, in a few minutes on a CPU.

Trains one OAT model, the dedicated fixed-λ frontier (one plain network per λ) and fixed-β
TRADES points; evaluates every model on the same fixed subset of the test set with the same
attacks; writes the plot, ``report.md`` and ``summary.json``. Every model is an ordinary run
directory, so rerunning reuses finished work.

The demo's attacks are PGD-20 and AutoAttack's APGD-CE + APGD-T pair (the standard version adds
FAB-T and Square, which cost minutes per model on a CPU); the report says so. The figures use the
per-example worst case over both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from oat.checkpoint import write_text_atomic
from oat.config import Config, from_dict

from .plot import plot
from .report import find_results, write_report
from .sweep import FRONTIER_JSON, POINTS_DIR, Protocol, SweepConfig, collect, make_points, run_tasks

# The OAT model: small CNN on 8×8 digits, ε = 0.3, λ per example from the reference set.
DEMO_BASE = {
    "data": {"name": "digits"},
    # 16/32 channels: a quarter of the default's convolution cost, ample for 8×8 digits.
    "model": {"name": "small_cnn", "conditioned": True, "options": {"channels": [16, 32]}},
    "objective": {"name": "pgd"},
    "attack": {"eps": 0.3, "steps": 5},
    "lambdas": {"sampler": "reference", "params": {"values": [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 20, "batch_size": 64, "seed": 0},
    "eval": {"attacks": ["pgd-20", "apgd"], "n": 200, "seed": 0},
}
DEMO_SWEEP = {
    "fixed_lambda": {"values": [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]},
    "trades": {"betas": [1.0, 3.0, 6.0], "beta_max": 6.0},
}
DEMO_LAMBDAS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.7, 1.0]  # the training values and two unseen ones


def demo_configs(overrides: dict | None = None) -> tuple[Config, SweepConfig]:
    data = json.loads(json.dumps(DEMO_BASE))
    for key, value in (overrides or {}).items():
        section, name = key.split(".", 1)
        data[section][name] = value
    return from_dict(data), from_dict(DEMO_SWEEP, SweepConfig)


def run_demo(out: str | Path = "runs/demo", workers: int = 2, overrides: dict | None = None, log=print) -> dict:
    """Run the demo into ``out``; returns the summary (also in ``out/summary.json``)."""
    out = Path(out)
    started = time.perf_counter()
    base, sweep = demo_configs(overrides)
    protocol = Protocol.from_eval(base.eval)
    points = make_points(sweep, base)
    frontier_dir = out / "frontier"
    # The OAT model first: it is the longest task, so the dedicated runs fill the other worker.
    tasks = [("oat", str(out / "oat"), base, protocol, DEMO_LAMBDAS)]
    tasks += [(p.name, str(frontier_dir / POINTS_DIR / p.name), p.config, protocol, [p.lam]) for p in points]
    if log:
        log(f"oat demo: 1 OAT model + {len(points)} dedicated baselines on digits (ε = {base.attack.eps}), "
            f"{workers} worker{'s' if workers > 1 else ''}, into {out}")
    run_tasks(tasks, workers, log)
    summary_rows = collect(frontier_dir, points, protocol)
    write_text_atomic(frontier_dir / FRONTIER_JSON, json.dumps(summary_rows, indent=2) + "\n")

    comparison = find_results([out])
    figures = plot(comparison, out / "frontier_plot", title="digits, ε = 0.3: one OAT model vs dedicated models")
    summary = write_report(comparison, out, extra={"demo_seconds": time.perf_counter() - started,
                                                  "plots": [str(p) for p in figures]})
    if log:
        log(f"plot:    {figures[0]} (and .svg)")
        log(f"report:  {out / 'report.md'}  summary: {out / 'summary.json'}")
        log(f"hypervolume ratio OAT / dedicated frontier: {summary['hypervolume_ratio']:.3f} "
            f"({summary['hypervolume_oat']:.4f} vs {summary['hypervolume_frontier']:.4f}); "
            f"cost ratio OAT / frontier: {summary['cost_ratio']:.3f} "
            f"({summary['train_seconds_oat']:.0f} s vs {summary['train_seconds_frontier']:.0f} s of training)")
        log(f"demo took {summary['demo_seconds']:.0f} s")
    return summary
