"""Choose the OAT recipe for Fashion-MNIST on a validation split (docs/recipe.md).

    python docs/scripts/recipe_search.py frontier OUT [WORKERS]
    python docs/scripts/recipe_search.py candidate OUT NAME [screen|full] [KEY=VALUE ...]
    python docs/scripts/recipe_search.py table OUT

Every run is the cpu preset (configs/bench_fashion-mnist_cpu.yaml) with 2,000 of the 60,000
training images held out (``data.options.validation_size``; the 10,000 training images are drawn
from the other 58,000) and evaluated on those 2,000 with the preset's attacks (PGD-20, then APGD-CE
on what PGD-20 left: the per-example worst case). The test images are never read.

``frontier`` trains and evaluates the preset's whole comparison under that split into OUT/reference:
the dedicated fixed-λ frontier, fixed-β TRADES and the preset's own OAT model (the first candidate,
"reference"), at the preset's eight λ. ``candidate`` trains the preset's OAT model with the given
``--set``-style overrides into OUT/NAME/oat and evaluates it at the screening λ (0, 0.3, 1) or at
the preset's eight; each λ is evaluated once and kept (``lambda-<λ>.json``), so a screened candidate
is completed by evaluating only the λ it lacks. ``table`` rebuilds docs/recipe.md's table from the
run directories.

The selection rule, fixed before the runs, is docs/recipe.md's: screen each candidate at λ = 0, 0.3
and 1; round 1 changes one lever at a time, round 2 combines the best sampler with the levers that
raised the screening ratio by more than 0.01, at the longest length within a third of the
frontier's cost; complete the best screens at all eight λ; choose the highest full validation
ratio within that cost, the simpler candidate where another is within 0.01 of it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "bench_fashion-mnist_cpu.yaml"
VALIDATION = {"data.options": {"train_size": 10000, "validation_size": 2000},
              "base_eval_n": 2000}
SCREEN_LAMBDAS = (0.0, 0.3, 1.0)


def validation_comparison():
    """The preset's comparison with the validation split carved out and evaluated on."""
    from oat.frontier.comparison import load_comparison

    comparison = load_comparison(PRESET)
    base = copy.deepcopy(comparison.base)
    base["data"]["options"] = dict(VALIDATION["data.options"])
    base["eval"] = {**base["eval"], "n": VALIDATION["base_eval_n"], "split": "validation"}
    return dataclasses.replace(comparison, base=base, autoattack=None)


def frontier(out: Path, workers: int) -> None:
    from oat.frontier.comparison import run_comparison

    summary = run_comparison(validation_comparison(), out / "reference", workers)
    print(json.dumps({k: summary[k] for k in ("hypervolume_ratio", "hypervolume_ratio_interval", "cost_ratio")}))


def candidate_task(out: Path, name: str, sets: list[str]):
    """The Task training the preset's OAT model, with ``sets`` (KEY=VALUE, values in YAML) on top,
    into OUT/NAME/oat."""
    import yaml

    from oat.frontier.comparison import model_configs
    from oat.frontier.tasks import Task
    from oat.protocol import Protocol

    comparison = validation_comparison()
    overrides = {key: yaml.safe_load(value) for key, value in (s.split("=", 1) for s in sets)}
    comparison = dataclasses.replace(comparison, oat={**comparison.oat, **overrides})
    oat, _, _ = model_configs(comparison)
    return Task(name, str(out / name / "oat"), oat, Protocol.from_eval(oat.eval), ())


def evaluate_lambdas(task, lambdas) -> dict:
    """The task's model evaluated at ``lambdas``, each λ evaluated once and kept in its own file."""
    from oat.checkpoint import write_text_atomic
    from oat.frontier.tasks import _evaluate, merge_results

    parts = []
    for lam in lambdas:
        path = Path(task.run_dir) / f"lambda-{lam:g}.json"
        if not path.exists():
            write_text_atomic(path, json.dumps(_evaluate(task, [lam])) + "\n")
        parts.append(json.loads(path.read_text()))
    return merge_results(parts)


def candidate(out: Path, name: str, stage: str, sets: list[str]) -> dict:
    """Train (or reuse) candidate NAME, evaluate it for ``stage``, compare it with the validation
    frontier; the figures go to OUT/NAME/row.json and are returned."""
    from oat.checkpoint import write_text_atomic
    from oat.frontier.tasks import _train_job

    task = candidate_task(out, name, sets)
    Path(task.run_dir).mkdir(parents=True, exist_ok=True)
    _train_job(task, retrain_stale=False, wait=True)
    lambdas = SCREEN_LAMBDAS if stage == "screen" else tuple(validation_comparison().lambdas)
    result = evaluate_lambdas(task, lambdas)
    write_text_atomic(Path(task.run_dir) / "eval.json", json.dumps(result) + "\n")
    link = out / name / "frontier"
    if not link.exists():
        link.symlink_to((out / "reference" / "frontier").resolve())
    row = {"name": name, "stage": stage, "sets": sets, **compare(out / name)}
    write_text_atomic(out / name / f"row-{stage}.json", json.dumps(row, indent=1) + "\n")
    print(json.dumps(row), flush=True)
    return row


def compare(directory: Path) -> dict:
    """The figures the selection rule reads, for the OAT run and frontier found in ``directory``."""
    from oat.frontier.report import find_results, summarize

    from oat.frontier.pareto import hypervolume
    from oat.frontier.report import sa_ra
    from oat.frontier.uncertainty import bootstrap_ratio

    comparison = find_results([directory])
    summary = summarize(comparison)
    points = {p["lambda"]: p for p in comparison.oat["points"]}
    dedicated = {p["lambda"]: p for p in comparison.fixed_lambda}
    screened = [points[lam] for lam in SCREEN_LAMBDAS]
    pct = lambda v: round(100 * v, 2)  # noqa: E731
    return {
        "screen_ratio": hypervolume(sa_ra(screened)) / summary["hypervolume_frontier"],
        "screen_interval": bootstrap_ratio(screened, comparison.fixed_lambda, summary["n"]),
        "ratio": summary["hypervolume_ratio"] if len(points) > len(SCREEN_LAMBDAS) else None,
        "interval": summary["hypervolume_ratio_interval"] if len(points) > len(SCREEN_LAMBDAS) else None,
        "monotonicity": summary["monotonicity"],
        "cost_ratio": summary["cost_ratio"], "cost_ratio_work": summary["cost_ratio_work"] or work_ratio(comparison),
        "sa_deficit_0": pct(dedicated[0.0]["clean"] - points[0.0]["clean"]),
        "ra_deficit_1": pct(dedicated[1.0]["robust_worst"] - points[1.0]["robust_worst"]),
        "points": {f"{lam:g}": [pct(p["clean"]), pct(p["robust_worst"])] for lam, p in sorted(points.items())},
        "epochs": comparison.oat.get("epochs"), "train_seconds": comparison.oat.get("train_seconds"),
    }


def work_ratio(comparison) -> float:
    """OAT's training work over the frontier's, measuring the multiply-accumulates of a network
    whose run predates their recording (the frontier here was trained before they were kept)."""
    from oat.passes import forward_macs, work
    from oat.runs import load_run

    def run_work(run: dict) -> int:
        macs = run.get("train_macs_per_example")
        if macs is None:
            model, state = load_run(run["run_dir"])
            macs = forward_macs(model, tuple(state["model_spec"]["input_shape"]), lam=1.0)
        return work(run["train_passes"], macs)

    return run_work(comparison.oat) / sum(run_work(p) for p in comparison.fixed_lambda)


def table(out: Path) -> str:
    """docs/recipe.md's table, one row per run directory's figures (screening, then the full
    evaluation where it ran), in the order the candidates were run."""
    rows = []
    reference = {"name": "reference", "stage": "full", "sets": [], **compare(out / "reference")}
    for path in sorted(out.glob("*/row-*.json"), key=lambda p: p.stat().st_mtime):
        rows.append(json.loads(path.read_text()))
    lines = ["| candidate | stage | epochs | cost (passes) | cost (work) | λ = 0 SA deficit | λ = 1 RA deficit | "
             "SA/RA at λ = 0 | 0.3 | 1 | screening ratio (95% interval) | full ratio (95% interval) |",
             "|---" * 12 + "|"]
    for row in [reference] + rows:
        points = row["points"]
        cells = [row["name"], row["stage"], row["epochs"], _num(row["cost_ratio"]), _num(row["cost_ratio_work"]),
                 f"{row['sa_deficit_0']:.1f}", f"{row['ra_deficit_1']:.1f}",
                 *("/".join(f"{v:.1f}" for v in points.get(key, [])) or "–" for key in ("0", "0.3", "1")),
                 _with_interval(row["screen_ratio"], row["screen_interval"]),
                 _with_interval(row["ratio"], row["interval"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _num(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _with_interval(value, interval) -> str:
    return _num(value) + (f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def main(argv: list[str]) -> None:
    command, out = argv[0], Path(argv[1])
    if command == "frontier":
        frontier(out, int(argv[2]) if len(argv) > 2 else 2)
    elif command == "candidate":
        candidate(out, argv[2], argv[3], argv[4:])
    elif command == "table":
        print(table(out))
    else:
        raise SystemExit(f"unknown command {command!r}; see the docstring")


if __name__ == "__main__":
    main(sys.argv[1:])
