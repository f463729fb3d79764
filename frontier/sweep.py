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
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import models
from oat.checkpoint import load_checkpoint, write_text_atomic
from oat.config import (Config, ConfigError, EvalConfig, check_config, check_eval, config_differences, from_dict,
                        load_config, read_yaml_mapping)
from oat.lock import RunLock

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
    cascade: bool = False

    def as_dict(self) -> dict:
        # "cascade" only when set: results evaluated before it existed stay current.
        return {"attacks": list(self.attacks), "eps": self.eps, "n": self.n, "seed": self.seed,
                **({"cascade": True} if self.cascade else {})}

    @classmethod
    def from_eval(cls, config: EvalConfig) -> "Protocol":
        """The protocol an eval section asks for, checked before anything trains."""
        check_eval(config)
        return cls(tuple(config.attacks), config.eps, config.n, config.seed, config.batch_size, config.cascade)


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


# ---------------------------------------------------------------- running one run directory
@dataclass(frozen=True)
class Task:
    """One model to train (or resume) into ``run_dir`` and evaluate at ``lambdas`` with ``protocol``."""

    name: str
    run_dir: str
    config: Config
    protocol: Protocol
    lambdas: tuple[float, ...]
    result: str = "eval.json"  # where in run_dir the evaluation goes (a second protocol: another file)


AUTOATTACK_RESULT = "eval_autoattack.json"  # a comparison's second protocol (frontier.comparison)
RESULT_FILES = ("eval.json", AUTOATTACK_RESULT)
RUN_FILES = ("checkpoint.pt", "config.yaml", "metrics.jsonl", *RESULT_FILES)


def stale_keys(run_dir: Path, config: Config) -> list[str]:
    """The result-changing keys in which the run in ``run_dir`` was trained differently from
    ``config`` (empty for a run that has no checkpoint yet: it trains from scratch anyway)."""
    if not (run_dir / "checkpoint.pt").exists():
        return []
    saved_path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(saved_path.read_text()) if saved_path.exists() else None
    except yaml.YAMLError:
        saved = None
    if not isinstance(saved, dict):
        saved = load_checkpoint(run_dir / "checkpoint.pt")["config"]
    return config_differences(saved, config)


def run_status(run_dir: Path, config: Config, protocol: Protocol, lambdas=None, result: str = "eval.json") -> str:
    """``done`` (trained, and evaluated with this protocol at these λ), ``evaluate``, ``resume``,
    ``train``, or ``stale`` (trained under another config: see :func:`stale_keys`)."""
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        return "train"
    if stale_keys(run_dir, config):
        return "stale"
    if int(load_checkpoint(checkpoint)["epoch"]) < config.train.epochs:
        return "resume"
    try:
        stored = json.loads((run_dir / result).read_text())
    except (OSError, json.JSONDecodeError):
        return "evaluate"
    same_lambdas = lambdas is None or [p.get("lambda") for p in stored.get("points", [])] == list(lambdas)
    # An evaluation from before test subsets were fingerprinted cannot be matched: evaluate again.
    fingerprinted = "subset" in stored
    return "done" if stored.get("protocol") == protocol.as_dict() and same_lambdas and fingerprinted else "evaluate"


def clear_run(run_dir: Path) -> None:
    """Remove what a run directory's training and evaluation wrote, so it trains afresh."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def run_one(task: Task, retrain_stale: bool = False) -> str:
    """Train (or resume) and evaluate ``task`` unless that was done already; returns the status
    it found. The caller holds the run's lock."""
    from oat.runs import evaluate_run, load_run
    from oat.trainer import train

    run_dir = Path(task.run_dir)
    status = run_status(run_dir, task.config, task.protocol, task.lambdas, task.result)
    if status == "stale":
        if not retrain_stale:
            raise ConfigError(_stale_message(task))
        clear_run(run_dir)
    if status in ("train", "resume", "stale"):
        train(task.config, run_dir, resume=(status == "resume"), show_progress=False)
    if status != "done":
        model, state = load_run(run_dir)
        protocol = task.protocol
        result = evaluate_run(model, state, list(task.lambdas), protocol.attacks, eps=protocol.eps, n=protocol.n,
                              seed=protocol.seed, batch_size=protocol.batch_size, cascade=protocol.cascade)
        result["checkpoint"] = str(run_dir / "checkpoint.pt")
        result["protocol"] = protocol.as_dict()
        write_text_atomic(run_dir / task.result, json.dumps(result, indent=2) + "\n")
    return status


def _stale_message(task: Task, others: int = 0) -> str:
    keys = stale_keys(Path(task.run_dir), task.config)
    shown = "; ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    more = f" (and {others} more point{'s' if others > 1 else ''})" if others else ""
    return (f"{task.name} in {task.run_dir} was trained with another config ({shown}){more}; "
            "pass --retrain-stale to retrain it")


def _run_task(job: tuple) -> tuple[str, float, str]:
    """Run one task in this process if its lock is free (or once it frees, with ``wait``)."""
    task, threads, retrain_stale, wait = job
    if threads:  # read by the trainer and evaluation (oat.distributed.set_threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    lock = RunLock(task.run_dir)
    if not lock.try_acquire():
        if not wait:
            return task.name, 0.0, f"held by {lock.holder()}"
        lock.acquire()
    started = time.perf_counter()
    try:
        status = run_one(task, retrain_stale)
    finally:
        lock.release()
    return task.name, time.perf_counter() - started, status


def check_tasks(tasks: list[Task], retrain_stale: bool = False) -> None:
    """Refuse, before anything trains, configs that cannot train and points trained under
    another config (unless ``retrain_stale``)."""
    for task in tasks:
        check_config(task.config)
    stale = [t for t in tasks if stale_keys(Path(t.run_dir), t.config)]
    if stale and not retrain_stale:
        raise ConfigError(_stale_message(stale[0], len(stale) - 1))


def run_tasks(tasks: list[Task], workers: int = 1, log=print, retrain_stale: bool = False) -> None:
    """Run ``tasks``, ``workers`` processes at a time, each under its run's lock.

    Each worker process gets an equal share of the CPU threads, so parallel points don't fight
    over cores. A task whose lock another process holds (a second sweep on the same directory)
    is skipped at first and waited for at the end, when it is usually finished and only read."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    check_tasks(tasks, retrain_stale)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    held = []
    for name, seconds, status in _map(_run_task, [(t, threads, retrain_stale, False) for t in tasks], workers):
        if status.startswith("held"):
            held.append(next(t for t in tasks if t.name == name))
        _report(log, name, seconds, status)
    for outcome in _map(_run_task, [(t, threads, retrain_stale, True) for t in held], workers):
        _report(log, *outcome)


def _map(function, jobs: list, workers: int):
    if workers == 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(function, jobs)


def _report(log, name: str, seconds: float, status: str) -> None:
    if log is not None:
        what = {"done": "already finished", "evaluate": "evaluated", "resume": "resumed and evaluated",
                "train": "trained and evaluated", "stale": "retrained (stale config) and evaluated"}
        if status.startswith("held"):
            log(f"  {name}: {status}; waiting for it")
        else:
            log(f"  {name}: {what[status]} ({seconds:.0f}s)")


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
            "per_example": measured.get("per_example"),
            "train_seconds": result["train_seconds"], "train_passes": result.get("train_passes"),
            "epochs": result["epochs"], "flags": result["flags"],
            "run_dir": str(path.parent), "protocol": protocol_of(result),
        })
    return {"protocol": protocol.as_dict(), "points": rows, "missing": missing,
            "train_seconds_total": sum(r["train_seconds"] for r in rows)}
