"""Sweeps of dedicated baselines: one plain network per fixed λ (PGD-AT family) and fixed-β
TRADES, each an ordinary run directory, all evaluated with one protocol.

A sweep config names its base training config and the values to sweep — no copy-pasted per-point
configs::

    base: digits_oat.yaml          # relative to the sweep file
    set: {train.epochs: 30}        # overrides applied to every point
    fixed_lambda: {values: [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]}
    trades: {betas: [0, 1, 3, 6, 10], beta_max: 10.0}
    eval: {attacks: [pgd-20, autoattack], n: 300}

Each point lives in ``OUT/points/<name>/`` (config.yaml, checkpoint.pt, metrics.jsonl, eval.json),
so it can be inspected, resumed or re-evaluated on its own. Rerunning a sweep skips finished
points and resumes unfinished ones; ``workers`` runs points in parallel processes; ``shard=(i, n)``
runs only the i-th of n slices so a cluster job array can share one output directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from oat import models
from oat.checkpoint import write_text_atomic
from oat.config import Config, ConfigError, EvalConfig, from_dict, load_config, read_yaml_mapping
from oat.protocol import Protocol
from oat.runs import EVAL_RESULT, read_result

from .tasks import Task, run_tasks

DEFAULT_LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)
DEFAULT_BETAS = (0.0, 1.0, 3.0, 6.0, 10.0)
POINTS_DIR = "points"
FRONTIER_JSON = "frontier.json"


@dataclass
class FixedLambdaSweep:
    values: list = field(default_factory=lambda: list(DEFAULT_LAMBDAS))


@dataclass
class TradesSweep:
    betas: list = field(default_factory=lambda: list(DEFAULT_BETAS))
    beta_max: float | None = None  # None: the largest β


@dataclass
class SweepConfig:
    base: str = ""
    set: dict = field(default_factory=dict)
    fixed_lambda: FixedLambdaSweep = field(default_factory=FixedLambdaSweep)
    trades: TradesSweep = field(default_factory=TradesSweep)
    eval: EvalConfig | None = None  # None: the base config's eval section


@dataclass
class Point:
    """One dedicated baseline: its name, family (``fixed_lambda`` or ``trades``), swept value,
    and the full training config that trains it."""

    name: str
    kind: str
    value: float
    lam: float
    config: Config


def _fmt(value: float) -> str:
    return f"{value:g}"


def load_sweep(path: str | Path, overrides: list[str] = ()) -> tuple[SweepConfig, Config]:
    """Read a sweep config and its base training config (with the sweep's and the caller's
    ``key=value`` overrides applied to the base)."""
    path = Path(path)
    sweep = from_dict(read_yaml_mapping(path, "sweep config"), SweepConfig)
    if not sweep.base:
        raise ConfigError(f"{path}: the sweep needs 'base', the training config its points derive from")
    base_path = (path.parent / sweep.base).resolve()
    base_overrides = [f"{k}={json.dumps(v)}" for k, v in sweep.set.items()] + list(overrides)
    base = load_config(base_path, base_overrides)
    return sweep, base


def make_points(sweep: SweepConfig, base: Config) -> list[Point]:
    """The dedicated baselines a sweep describes, each a plain network with one fixed λ."""
    points = []
    for lam in _numbers(sweep.fixed_lambda.values, "fixed_lambda.values"):
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"config key 'fixed_lambda.values' must hold λ values in [0, 1], got {lam:g}")
        points.append(Point(f"lambda-{_fmt(lam)}", "fixed_lambda", lam, lam,
                            _dedicated(base, "pgd", {}, lam)))
    betas = _numbers(sweep.trades.betas, "trades.betas")
    if betas:
        beta_max = sweep.trades.beta_max if sweep.trades.beta_max is not None else max(betas)
        if not (math.isfinite(beta_max) and beta_max > 0):
            raise ConfigError(f"config key 'trades.beta_max' must be a positive number, got {beta_max:g}")
        for beta in betas:
            if not 0 <= beta <= beta_max:
                raise ConfigError(f"config key 'trades.betas' must hold β values in [0, trades.beta_max = "
                                  f"{beta_max:g}], got {beta:g}")
            lam = beta / beta_max
            points.append(Point(f"trades-beta-{_fmt(beta)}", "trades", beta, lam,
                                _dedicated(base, "trades", {"beta_max": beta_max}, lam)))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"the sweep lists a value twice: {sorted(n for n in names if names.count(n) > 1)}")
    return points


def _numbers(values, key: str) -> list[float]:
    """A sweep's list of values as floats, or a one-line refusal naming ``key``."""
    if not isinstance(values, list):
        raise ConfigError(f"config key '{key}' must be a list of numbers, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ConfigError(f"config key '{key}' must hold numbers, got {value!r}")
    return [float(v) for v in values]


def _dedicated(base: Config, objective: str, params: dict, lam: float) -> Config:
    """The base config turned into a dedicated baseline: plain network, one fixed λ."""
    data = base.to_dict()
    data["model"]["conditioned"] = False
    data["model"]["options"] = {k: v for k, v in data["model"]["options"].items()
                                if k not in models.CONDITIONING_OPTIONS}
    data["objective"] = {"name": objective, "params": dict(params)}
    data["lambdas"] = {"sampler": "fixed", "params": {"value": lam}}
    return from_dict(data)


def _check_shard(index: int, count: int) -> None:
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard i/n needs 1 ≤ i ≤ n, got {index}/{count}")


def select_shard(points: list, shard: tuple[int, int] | None) -> list:
    """The i-th (1-based) of n interleaved slices of ``points``."""
    if shard is None:
        return points
    _check_shard(*shard)
    index, count = shard
    return points[index - 1::count]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` → (2, 4); None stays None."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 2/4), got {text!r}") from None
    _check_shard(index, count)
    return index, count


# ---------------------------------------------------------------- the whole sweep
def run_sweep(sweep: SweepConfig, base: Config, out: str | Path, workers: int = 1,
              shard: tuple[int, int] | None = None, log=print, retrain_stale: bool = False) -> dict:
    """Train and evaluate the sweep's points into ``out`` and write ``out/frontier.json``."""
    out = Path(out)
    protocol = Protocol.from_eval(sweep.eval or base.eval)
    points = select_shard(make_points(sweep, base), shard)
    tasks = point_tasks(points, out, protocol)
    if log is not None:
        log(f"sweep: {len(tasks)} dedicated baselines into {out / POINTS_DIR}"
            + (f" (shard {shard[0]}/{shard[1]})" if shard else ""))
    run_tasks(tasks, workers, log, retrain_stale)
    return write_frontier(out, make_points(sweep, base), protocol)


def point_tasks(points: list[Point], out: Path, protocol: Protocol) -> list[Task]:
    """The :func:`run_tasks` tasks that train and evaluate ``points``, each in ``out/points/<name>``."""
    return [Task(p.name, str(out / POINTS_DIR / p.name), p.config, protocol, (p.lam,)) for p in points]


def write_frontier(out: Path, points: list[Point], protocol: Protocol) -> dict:
    """:func:`collect` the points and write ``out/frontier.json`` atomically; returns what was written."""
    summary = collect(out, points, protocol)
    write_text_atomic(out / FRONTIER_JSON, json.dumps(summary, indent=2) + "\n")
    return summary


def collect(out: Path, points: list[Point], protocol: Protocol) -> dict:
    """Every finished point's (SA, RA per attack), whichever process or shard produced it, with
    the protocol it was measured with (so a comparison can check it against the OAT model's)."""
    from oat.protocol import protocol_of

    rows, missing = [], []
    for point in points:
        path = out / POINTS_DIR / point.name / EVAL_RESULT
        if not path.exists():
            missing.append(point.name)
            continue
        result = read_result(path)
        if result.get("protocol") != protocol.as_dict():
            missing.append(point.name)
            continue
        (measured,) = result["points"]
        rows.append({
            "name": point.name, "kind": point.kind, "value": point.value, "lambda": point.lam,
            "clean": measured["clean"], "robust": measured["robust"], "robust_worst": measured["robust_worst"],
            "per_example": measured.get("per_example"), "analytic": measured.get("analytic"),
            "train_seconds": result["train_seconds"], "train_passes": result.get("train_passes"),
            "train_macs_per_example": result.get("train_macs_per_example"),
            "epochs": result["epochs"], "flags": result["flags"],
            "run_dir": str(path.parent), "protocol": protocol_of(result),
        })
    return {"protocol": protocol.as_dict(), "points": rows, "missing": missing,
            "train_seconds_total": sum(r["train_seconds"] for r in rows)}
