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
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import models
from oat.checkpoint import write_text_atomic
from oat.config import Config, ConfigError, EvalConfig, from_dict, load_config, read_yaml_mapping

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


@dataclass(frozen=True)
class Protocol:
    """How every model of a comparison is evaluated: same attacks, ε, subset and seed."""

    attacks: tuple[str, ...]
    eps: float | None
    n: int | None
    seed: int
    batch_size: int = 500

    def as_dict(self) -> dict:
        return {"attacks": list(self.attacks), "eps": self.eps, "n": self.n, "seed": self.seed}

    @classmethod
    def from_eval(cls, config: EvalConfig) -> "Protocol":
        return cls(tuple(config.attacks), config.eps, config.n, config.seed, config.batch_size)


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
    for lam in sweep.fixed_lambda.values:
        lam = float(lam)
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"fixed_lambda.values: λ must lie in [0, 1], got {lam:g}")
        points.append(Point(f"lambda-{_fmt(lam)}", "fixed_lambda", lam, lam,
                            _dedicated(base, "pgd", {}, lam)))
    betas = [float(b) for b in sweep.trades.betas]
    if betas:
        beta_max = float(sweep.trades.beta_max if sweep.trades.beta_max is not None else max(betas))
        for beta in betas:
            if beta < 0 or beta_max <= 0 or beta > beta_max:
                raise ConfigError(f"trades: β must lie in [0, beta_max = {beta_max:g}], got {beta:g}")
            lam = beta / beta_max
            points.append(Point(f"trades-beta-{_fmt(beta)}", "trades", beta, lam,
                                _dedicated(base, "trades", {"beta_max": beta_max}, lam)))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"the sweep lists a value twice: {sorted(n for n in names if names.count(n) > 1)}")
    return points


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


# ---------------------------------------------------------------- running one run directory
def run_status(run_dir: Path, config: Config, protocol: Protocol) -> str:
    """``done`` (trained and evaluated with this protocol), ``evaluate``, ``resume`` or ``train``."""
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        return "train"
    try:
        epoch = int(torch.load(checkpoint, weights_only=True, map_location="cpu")["epoch"])
    except Exception:  # an unreadable checkpoint is reported by the training that follows
        return "resume"
    if epoch < config.train.epochs:
        return "resume"
    result = run_dir / "eval.json"
    if result.exists():
        try:
            stored = json.loads(result.read_text()).get("protocol")
        except json.JSONDecodeError:
            stored = None
        if stored == protocol.as_dict():
            return "done"
    return "evaluate"


def run_one(run_dir: Path, config: Config, protocol: Protocol, lambdas: list[float], threads: int | None = None) -> dict:
    """Train (or resume) the run in ``run_dir`` and evaluate it at ``lambdas`` with ``protocol``,
    unless that was already done; returns the stored evaluation."""
    from oat.runs import evaluate_run, load_run
    from oat.trainer import train

    if threads:
        torch.set_num_threads(threads)
    status = run_status(run_dir, config, protocol)
    if status in ("train", "resume"):
        train(config, run_dir, resume=(status == "resume"), show_progress=False)
    result_path = run_dir / "eval.json"
    if status != "done":
        model, state = load_run(run_dir)
        result = evaluate_run(model, state, lambdas, protocol.attacks, eps=protocol.eps, n=protocol.n,
                              seed=protocol.seed, batch_size=protocol.batch_size)
        result["checkpoint"] = str(run_dir / "checkpoint.pt")
        result["protocol"] = protocol.as_dict()
        write_text_atomic(result_path, json.dumps(result, indent=2) + "\n")
    return json.loads(result_path.read_text())


def _run_task(task: tuple) -> tuple[str, float, str]:
    name, run_dir, config, protocol, lambdas, threads = task
    started = time.perf_counter()
    status = run_status(Path(run_dir), config, protocol)
    run_one(Path(run_dir), config, protocol, lambdas, threads)
    return name, time.perf_counter() - started, status


def run_tasks(tasks: list[tuple], workers: int = 1, log=print) -> None:
    """Run ``(name, run_dir, config, protocol, lambdas)`` tasks, ``workers`` processes at a time.

    Each worker process gets an equal share of the CPU threads, so parallel points don't fight
    over cores."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    full = [(*task, threads) for task in tasks]
    if workers == 1 or len(full) <= 1:
        for task in full:
            _report(log, *_run_task(task))
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(full))) as pool:
        for outcome in pool.imap_unordered(_run_task, full):
            _report(log, *outcome)


def _report(log, name: str, seconds: float, status: str) -> None:
    if log is not None:
        what = {"done": "already finished", "evaluate": "evaluated", "resume": "resumed and evaluated",
                "train": "trained and evaluated"}[status]
        log(f"  {name}: {what} ({seconds:.0f}s)")


# ---------------------------------------------------------------- the whole sweep
def run_sweep(sweep: SweepConfig, base: Config, out: str | Path, workers: int = 1,
              shard: tuple[int, int] | None = None, log=print) -> dict:
    """Train and evaluate the sweep's points into ``out`` and write ``out/frontier.json``."""
    out = Path(out)
    protocol = Protocol.from_eval(sweep.eval or base.eval)
    points = select_shard(make_points(sweep, base), shard)
    tasks = point_tasks(points, out, protocol)
    if log is not None:
        log(f"sweep: {len(tasks)} dedicated baselines into {out / POINTS_DIR}"
            + (f" (shard {shard[0]}/{shard[1]})" if shard else ""))
    run_tasks(tasks, workers, log)
    return write_frontier(out, make_points(sweep, base), protocol)


def point_tasks(points: list[Point], out: Path, protocol: Protocol) -> list[tuple]:
    """The :func:`run_tasks` tasks that train and evaluate ``points``, each in ``out/points/<name>``."""
    return [(p.name, str(out / POINTS_DIR / p.name), p.config, protocol, [p.lam]) for p in points]


def write_frontier(out: Path, points: list[Point], protocol: Protocol) -> dict:
    """:func:`collect` the points and write ``out/frontier.json`` atomically; returns what was written."""
    summary = collect(out, points, protocol)
    write_text_atomic(out / FRONTIER_JSON, json.dumps(summary, indent=2) + "\n")
    return summary


def collect(out: Path, points: list[Point], protocol: Protocol) -> dict:
    """Every finished point's (SA, RA per attack), whichever process or shard produced it."""
    rows, missing = [], []
    for point in points:
        path = out / POINTS_DIR / point.name / "eval.json"
        if not path.exists():
            missing.append(point.name)
            continue
        result = json.loads(path.read_text())
        if result.get("protocol") != protocol.as_dict():
            missing.append(point.name)
            continue
        (measured,) = result["points"]
        rows.append({
            "name": point.name, "kind": point.kind, "value": point.value, "lambda": point.lam,
            "clean": measured["clean"], "robust": measured["robust"], "robust_worst": measured["robust_worst"],
            "train_seconds": result["train_seconds"], "epochs": result["epochs"], "flags": result["flags"],
            "run_dir": str(path.parent),
        })
    return {"protocol": protocol.as_dict(), "points": rows, "missing": missing,
            "train_seconds_total": sum(r["train_seconds"] for r in rows)}
