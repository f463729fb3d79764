"""A whole comparison from one config: one OAT model, the dedicated fixed-λ frontier and fixed-β
TRADES, every model evaluated with one protocol, then the plot, ``report.md`` and ``summary.json``.

``oat demo`` (the bundled digits) and ``oat bench`` (real data, ``configs/bench_*.yaml``) are two
such configs. A comparison config holds the training config every model shares (``base``), the OAT
model's own settings on top of it (``oat``: dotted keys), the λ values the OAT model is evaluated
at, the sweep of dedicated baselines, and optionally a second, stronger protocol — the standard
AutoAttack on a smaller fixed subset — for the OAT model and named dedicated models::

    base: {data: {name: fashion-mnist}, attack: {eps: 0.1, steps: 7}, eval: {attacks: [pgd-20, apgd]}, …}
    oat: {lambdas.sampler: reference}
    lambdas: [0, 0.1, 0.2, 0.3, 0.4, 0.7, 1]
    fixed_lambda: {values: [0, 0.1, 0.2, 0.3, 0.4, 1]}
    trades: {betas: [1, 3, 6], beta_max: 6}
    autoattack: {n: 1000, oat_lambdas: [0, 1], models: [lambda-0, lambda-1]}

Every model is an ordinary run directory (``OUT/oat``, ``OUT/frontier/points/NAME``), so a rerun
reuses finished work, and a model trained under other settings is refused (``retrain_stale``).
"""

from __future__ import annotations

import copy
import importlib.resources
import time
from dataclasses import dataclass, field
from pathlib import Path

from oat.config import Config, ConfigError, EvalConfig, from_dict, read_yaml_mapping, set_key
from oat.protocol import Protocol, common_protocol
from oat.runs import AUTOATTACK_RESULT, read_result

from .mixed import read_interpolation, write_interpolation
from .plot import plot
from .report import find_results, write_report
from .sweep import FixedLambdaSweep, SweepConfig, TradesSweep, make_points, point_tasks, write_frontier
from .tasks import FollowUp, Task, run_tasks


@dataclass
class AutoAttackStage:
    """The standard AutoAttack on ``n`` fixed test examples, for the OAT model at ``oat_lambdas``
    (None: every evaluated λ) and for the dedicated ``models`` (point names)."""

    n: int = 1000
    seed: int = 0
    oat_lambdas: list | None = None
    models: list = field(default_factory=lambda: ["lambda-0", "lambda-1"])


@dataclass
class MixedEndsStage:
    """The third curve: the dedicated points ``accurate`` and ``robust`` mixed at inference
    (:mod:`oat.mixture`), evaluated with the comparison's protocol at its λ list. Left out of a
    comparison config, it mixes ``lambda-0`` and ``lambda-1`` when the comparison trains both;
    ``enabled: false`` turns it off."""

    accurate: str = "lambda-0"
    robust: str = "lambda-1"
    enabled: bool = True


@dataclass
class ComparisonConfig:
    title: str = ""
    base: dict = field(default_factory=dict)
    oat: dict = field(default_factory=dict)
    lambdas: list = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.7, 1.0])
    fixed_lambda: FixedLambdaSweep = field(default_factory=FixedLambdaSweep)
    trades: TradesSweep = field(default_factory=TradesSweep)
    autoattack: AutoAttackStage | None = None
    mixed_ends: MixedEndsStage | None = None  # None: lambda-0 and lambda-1 mixed when both are trained


def load_comparison(path: str | Path) -> ComparisonConfig:
    return from_dict(read_yaml_mapping(path, "comparison config"), ComparisonConfig)


def shipped_configs() -> Path:
    """Where the configs that ship with oat live: the repository's ``configs/``, installed as the
    package data ``oat.configs`` (so a wheel has them too)."""
    return Path(str(importlib.resources.files("oat.configs")))


def bench_presets() -> list[str]:
    """Every shipped preset, as ``<bench>_<preset>`` (``fashion-mnist_cpu``, ``tsipras_cpu`` …)."""
    return sorted(p.stem.removeprefix("bench_") for p in shipped_configs().glob("bench_*.yaml"))


def bench_config(bench: str, preset: str) -> Path:
    """A comparison config file: ``bench`` itself when it is a file, else the shipped preset
    ``bench_<bench>_<preset>.yaml``; a one-line ``ConfigError`` listing the presets otherwise."""
    if Path(bench).is_file():
        return Path(bench)
    path = shipped_configs() / f"bench_{bench}_{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"no bench {bench!r} with preset {preset!r} (no file {path}); known: "
                          f"{', '.join(bench_presets()) or 'none'}, or give a comparison config file")
    return path


def model_configs(comparison: ComparisonConfig, overrides: dict | None = None) -> tuple[Config, Config, SweepConfig]:
    """(OAT config, base config of the dedicated baselines, sweep). ``overrides`` (``section.name``
    keys) apply to both configs, after the OAT model's own settings."""
    base, oat = copy.deepcopy(comparison.base), copy.deepcopy(comparison.base)
    for key, value in {**comparison.oat, **(overrides or {})}.items():
        set_key(oat, key, copy.deepcopy(value))
    for key, value in (overrides or {}).items():
        set_key(base, key, copy.deepcopy(value))
    sweep = SweepConfig(fixed_lambda=comparison.fixed_lambda, trades=comparison.trades)
    return from_dict(oat), from_dict(base), sweep


def run_comparison(comparison: ComparisonConfig, out: str | Path, workers: int = 1, overrides: dict | None = None,
                   log=print, retrain_stale: bool = False, name: str = "comparison") -> dict:
    """Train and evaluate every model of ``comparison`` into ``out``, then write the plot,
    ``report.md`` and ``summary.json``; returns the summary."""
    out = Path(out)
    started = time.perf_counter()
    oat, base, sweep = model_configs(comparison, overrides)
    protocol = Protocol.from_eval(base.eval)
    points = make_points(sweep, base)
    lambdas = _lambdas(comparison.lambdas, "lambdas")
    # The OAT model first: it is the longest task, so the dedicated runs fill the other workers.
    tasks = [Task("oat", str(out / "oat"), oat, protocol, lambdas)] + point_tasks(points, out / "frontier", protocol)
    if log:
        radius = "the dataset's ε" if base.attack.eps is None else f"ε = {base.attack.eps:g}"
        log(f"oat {name}: 1 OAT model + {len(points)} dedicated baselines on {base.data.name} ({radius}), "
            f"{workers} worker{'s' if workers > 1 else ''}, into {out}")
    # Built (and so checked) before anything trains.
    second = autoattack_tasks(comparison.autoattack, tasks, lambdas) if comparison.autoattack else []
    stage = mixed_stage(comparison.mixed_ends, tasks)
    mixed = mixed_task(stage, tasks, out, base, protocol, lambdas) if stage else None
    # The mixture and the AutoAttack evaluations join the pool as soon as their models are trained
    # and evaluated, filling the workers the longest models leave idle.
    follow_ups = [FollowUp(frozenset({t.name}), lambda t=t: [t]) for t in second]
    if mixed:
        def mixtures() -> list[Task]:  # the mixture, and the interpolation where its barrier allows
            interpolated = prepare_mixture(mixed, stage, tasks)
            return [mixed] + ([interpolated] if interpolated else [])

        follow_ups.append(FollowUp(frozenset({stage.accurate, stage.robust}), mixtures))
    run_tasks(tasks, workers, log, retrain_stale, follow_ups)
    write_frontier(out / "frontier", points, protocol)

    found = find_results([out])
    eps = common_protocol(found.protocols).get("eps")  # the radius every model was evaluated at
    title = comparison.title or f"{base.data.name}, ε = {eps:g}: one OAT model vs dedicated models"
    figures = plot(found, out / "frontier_plot", title=title)
    extra = {f"{name}_seconds": time.perf_counter() - started, "plots": [str(p) for p in figures]}
    summary = write_report(found, out, extra=extra, autoattack=autoattack_results(tasks))
    if log:
        _log_summary(log, out, figures, summary, extra[f"{name}_seconds"], name)
    return summary


def _lambdas(values: list, key: str) -> tuple[float, ...]:
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in values):
        raise ConfigError(f"config key '{key}' must be a non-empty list of λ values in [0, 1], got {values!r}")
    return tuple(float(v) for v in values)


def autoattack_tasks(stage: AutoAttackStage, tasks: list[Task], oat_lambdas: tuple[float, ...]) -> list[Task]:
    """The second evaluation: the standard AutoAttack on ``stage.n`` fixed examples."""
    evaluation = EvalConfig(attacks=["autoattack"], n=stage.n, seed=stage.seed)
    protocol = Protocol.from_eval(evaluation, "autoattack")
    by_name = {t.name: t for t in tasks}
    unknown = [m for m in stage.models if m not in by_name]
    if unknown:
        raise ConfigError(f"config key 'autoattack.models' names {unknown}, which the comparison does not train; "
                          f"it trains {sorted(by_name)}")
    lambdas = oat_lambdas if stage.oat_lambdas is None else _lambdas(stage.oat_lambdas, "autoattack.oat_lambdas")
    chosen = [by_name["oat"]] + [by_name[m] for m in stage.models if m != "oat"]
    return [Task(t.name, t.run_dir, t.config, protocol, lambdas if t.name == "oat" else t.lambdas,
                 AUTOATTACK_RESULT) for t in chosen]


MIXED_DIR = "mixed-ends"
INTERPOLATED_DIR = "interpolated-ends"  # only where the interpolation barrier says it is usable


def mixed_stage(stage: MixedEndsStage | None, tasks: list[Task]) -> MixedEndsStage | None:
    """The mixture the comparison evaluates: the one its config names (None when disabled), or by
    default ``lambda-0`` with ``lambda-1`` when it trains both."""
    if stage is not None:
        return stage if stage.enabled else None
    default = MixedEndsStage()
    names = {t.name for t in tasks}
    return default if {default.accurate, default.robust} <= names else None


def mixed_task(stage: MixedEndsStage, tasks: list[Task], out: Path, base: Config, protocol: Protocol,
               lambdas: tuple[float, ...]) -> Task:
    """The mixture of two dedicated points as a task evaluated like the OAT model (nothing to train)."""
    by_name = {t.name: t for t in tasks}
    unknown = [name for name in (stage.accurate, stage.robust) if name not in by_name or name == "oat"]
    if unknown:
        raise ConfigError(f"config key 'mixed_ends' names {unknown}, which the comparison does not train as "
                          f"dedicated points; it trains {sorted(set(by_name) - {'oat'})} (or set mixed_ends: {{enabled: false}})")
    return Task(MIXED_DIR, str(out / MIXED_DIR), base, protocol, lambdas)


def prepare_mixture(task: Task, stage: MixedEndsStage, tasks: list[Task]) -> Task | None:
    """Write the mixture's directory (``mixture.yaml``), measure the weight-interpolation barrier
    between its members on the protocol's examples (once), and where it says interpolation is
    usable, write the interpolation's directory too: returns its task (None otherwise)."""
    from oat.datasets import dataset_tensors, to_unit
    from oat.evaluation import subset_indices
    from oat.runs import load_run, run_data, write_mixture

    by_name = {t.name: t for t in tasks}
    accurate, robust = by_name[stage.accurate].run_dir, by_name[stage.robust].run_dir
    write_mixture(task.run_dir, accurate, robust)
    barrier = read_interpolation(task.run_dir)
    if barrier is None:
        _, state = load_run(accurate)
        splits = run_data(state)
        images, labels = dataset_tensors(splits.split(task.protocol.split))
        index = subset_indices(len(labels), task.protocol.n, task.protocol.seed)
        barrier = write_interpolation(task.run_dir, to_unit(images[index]), labels[index])
    if not barrier["usable"]:
        return None
    directory = Path(task.run_dir).parent / INTERPOLATED_DIR
    write_mixture(directory, accurate, robust, mixing="weights")
    return Task(INTERPOLATED_DIR, str(directory), task.config, task.protocol, task.lambdas)


def autoattack_results(tasks: list[Task]) -> list[dict]:
    """Every model's standard-AutoAttack evaluation that exists (name, and each λ's SA and RA)."""
    rows = []
    for task in tasks:
        path = Path(task.run_dir) / AUTOATTACK_RESULT
        if path.exists():
            result = read_result(path)
            for point in result["points"]:
                rows.append({"model": task.name, "lambda": point["lambda"], "clean": point["clean"],
                             "robust": point["robust_worst"], "n": result["n"], "eps": result["eps"]})
    return rows


def _work_ratio_text(summary: dict) -> str:
    """The cost ratio in work (multiply-accumulates), when every run's is known."""
    if summary.get("cost_ratio_work") is None:
        return ""
    return (f"{summary['cost_ratio_work']:.3f} in work ({summary['train_work_oat']:.3g} vs "
            f"{summary['train_work_frontier']:.3g} multiply-accumulates), ")


def _log_summary(log, out: Path, figures, summary: dict, seconds: float, name: str) -> None:
    log(f"plot:    {figures[0]} (and .svg)")
    log(f"report:  {out / 'report.md'}  summary: {out / 'summary.json'}")
    interval = summary.get("hypervolume_ratio_interval")
    log(f"hypervolume ratio OAT / dedicated frontier: {summary['hypervolume_ratio']:.3f} "
        + (f"(95% interval {interval[0]:.3f}–{interval[1]:.3f}; " if interval else "(")
        + f"{summary['hypervolume_oat']:.4f} vs {summary['hypervolume_frontier']:.4f}); "
        f"cost ratio OAT / frontier: {summary['cost_ratio']:.3f} in passes "
        f"({summary['train_passes_oat'] / 1e6:.2f} M vs {summary['train_passes_frontier'] / 1e6:.2f} M), "
        + _work_ratio_text(summary)
        + f"{summary['cost_ratio_seconds']:.3f} in seconds "
        f"({summary['train_seconds_oat']:.0f} s vs {summary['train_seconds_frontier']:.0f} s of training)")
    mixed = summary.get("mixed_ends")
    if mixed and mixed["hypervolume_ratio"] is not None:
        low_high = mixed["hypervolume_ratio_interval"]
        log(f"two end models mixed at inference / frontier: {mixed['hypervolume_ratio']:.3f}"
            + (f" (95% interval {low_high[0]:.3f}–{low_high[1]:.3f})" if low_high else "")
            + (f", training cost {mixed['cost_ratio']:.3f} in passes" if mixed["cost_ratio"] is not None else "")
            + f", {mixed['inference_forwards']} forward passes per image"
            + (f"; weight interpolation's error barrier {100 * mixed['interpolation']['barrier']:.1f} points"
               if mixed.get("interpolation") else ""))
    interpolated = summary.get("interpolated_ends")
    if interpolated and interpolated["hypervolume_ratio"] is not None:
        low_high = interpolated["hypervolume_ratio_interval"]
        log(f"the same two models' weights interpolated / frontier: {interpolated['hypervolume_ratio']:.3f}"
            + (f" (95% interval {low_high[0]:.3f}–{low_high[1]:.3f})" if low_high else "") + ", 1 forward pass per image")
    true = summary.get("true_frontier")
    if true and true["max_distance_oat"] is not None:
        worst = max(true["oat"], key=lambda row: row["distance"])
        curve = "" if true.get("max_distance_oat_curve") is None else (
            f"; {100 * true['max_distance_oat_curve']:.2f} on its exact curve at λ = 0, 0.01, …, 1 "
            f"(λ = {true['lambda_max_distance_oat_curve']:g})")
        log(f"against the true frontier (every linear classifier, exact): OAT lies at most "
            f"{100 * worst['distance']:.2f} points behind it at the evaluated λ (λ = {worst['lambda']:g}){curve}; "
            f"the dedicated models at most {100 * max((r['distance'] for r in true['dedicated']), default=0.0):.2f}")
    log(f"{name} took {seconds:.0f} s")
