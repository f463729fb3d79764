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

from pathlib import Path

from oat.config import Config

from .comparison import ComparisonConfig, model_configs, run_comparison
from .sweep import FixedLambdaSweep, SweepConfig, TradesSweep

# What every model of the demo shares: data, architecture, ε, training attack, optimiser, epochs
# and the evaluation protocol. ε = 0.2 was chosen on a validation split carved from the training
# digits; docs/benchmarks.md lists every radius tried and why.
DEMO_BASE = {
    "data": {"name": "digits"},
    # 16/32 channels: a quarter of the default's convolution cost, ample for 8×8 digits.
    "model": {"name": "small_cnn", "conditioned": True, "options": {"channels": [16, 32]}},
    "objective": {"name": "pgd"},
    "attack": {"eps": 0.2, "steps": 5},
    "lambdas": {"sampler": "reference", "params": {"values": [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 20, "batch_size": 64, "seed": 0},
    # The attacks as a cascade (each only on the examples still robust): the same worst case, cheaper.
    "eval": {"attacks": ["pgd-20", "apgd"], "n": 200, "seed": 0, "cascade": True},
}
# The OAT model's own settings on top of the base: λ ~ Beta(8, 1) with 1/6 of every batch forced
# to λ = 0 (the reference's share), since on digits the robust end of the curve needs most of the
# adversarial signal; 25 epochs keep one OAT run within a third of the six dedicated runs' cost.
# Both were confirmed on the validation split; the measurements are in docs/benchmarks.md.
DEMO_OAT = {
    "lambdas.sampler": "beta",
    "lambdas.params": {"a": 8.0, "b": 1.0},
    "train.epochs": 25,
}
DEMO_SWEEP = {
    "fixed_lambda": {"values": [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]},
    "trades": {"betas": [1.0, 3.0, 6.0], "beta_max": 6.0},
}
DEMO_LAMBDAS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.7, 1.0]  # the dedicated values and two others
DEMO = ComparisonConfig(title="", base=DEMO_BASE, oat=DEMO_OAT, lambdas=DEMO_LAMBDAS,
                        fixed_lambda=FixedLambdaSweep(**DEMO_SWEEP["fixed_lambda"]),
                        trades=TradesSweep(**DEMO_SWEEP["trades"]))


def demo_configs(overrides: dict | None = None) -> tuple[Config, Config, SweepConfig]:
    """(OAT config, base config of the dedicated baselines, sweep). ``overrides`` (``section.name``
    keys) apply to both configs, after the OAT model's own settings."""
    return model_configs(DEMO, overrides)


def run_demo(out: str | Path = "runs/demo", workers: int = 2, overrides: dict | None = None, log=print,
             retrain_stale: bool = False) -> dict:
    """Run the demo into ``out``; returns the summary (also in ``out/summary.json``). A model
    already in ``out`` that was trained under other settings is refused unless ``retrain_stale``."""
    return run_comparison(DEMO, out, workers, overrides, log, retrain_stale, name="demo")
