"""The ``oat`` command.

User errors (bad input, missing files) are raised as :class:`UserError` and printed as one line
with exit code 2 — no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from . import __version__


class UserError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


def _radii(text: str) -> list[float]:
    """``--eps-sweep``: comma-separated radii, each a finite number ≥ 0."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--eps-sweep must be comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise UserError(f"--eps-sweep must hold radii ≥ 0, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--lambdas must be comma-separated numbers, got {text!r}") from None
    for value in values:
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise UserError(f"λ must lie in [0, 1], got {value:g} in --lambdas")
    if not values:
        raise UserError("--lambdas is empty")
    return values


def cmd_train(args) -> int:
    from .config import load_config
    from .lock import RunLock
    from .runs import CONFIG
    from .experiment import train

    if args.resume:
        if args.out is None:
            raise UserError("--resume needs --out DIR (the run directory to continue)")
        # A config or --set given with --resume must agree with the saved one (the trainer checks).
        given = args.config or (Path(args.out) / CONFIG if args.set else None)
        config = load_config(given, args.set) if given else None
    else:
        if args.config is None:
            raise UserError("--config FILE is required (see configs/ for examples)")
        config = load_config(args.config, args.set)
    out = Path(args.out or f"runs/{Path(args.config).stem}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run directory")
    lock = RunLock(out)
    # Under torchrun every rank runs this command on one directory: rank 0 holds the lock for all.
    if os.environ.get("RANK", "0") == "0" and not lock.try_acquire():
        raise UserError(f"{out} is being trained by {lock.holder()}; wait for it or choose another --out")
    try:
        path = train(config, out, resume=args.resume, show_progress=not args.quiet)
    finally:
        lock.release()
    if not args.quiet:
        print(f"checkpoint: {path}")
    return 0


def _check_eval_args(args) -> None:
    """Refuse nonsense before a checkpoint is loaded or a dataset read."""
    from .distributed import pick_device
    from .attacks.names import parse_attack

    if args.eps is not None and not (math.isfinite(args.eps) and args.eps >= 0):
        raise UserError(f"--eps must be a finite number ≥ 0, got {args.eps}")
    for flag, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.attacks is not None:
        names = [a for a in args.attacks.split(",") if a.strip()]
        if not names:
            raise UserError("--attacks is empty")
        for name in names:
            try:
                parse_attack(name)
            except ValueError as error:
                raise UserError(f"--attacks: {error}") from None
    if args.out is not None and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a directory; give the JSON file to write")
    try:
        pick_device(args.device)
    except ValueError as error:
        raise UserError(f"--device: {error}") from None


def cmd_eval(args) -> int:
    from .distributed import set_threads
    from .attacks.names import check_bounds
    from .evaluation import print_table
    from .protocol import Protocol
    from .datasets import check_eps
    from .config import saved_config
    from .runs import checkpoint_file, default_lambdas, evaluate_run, load_run, run_data, write_result

    lambdas = _float_list(args.lambdas) if args.lambdas is not None else None
    _check_eval_args(args)
    set_threads(args.threads)
    # A run directory means its checkpoint.pt: eval.json then lands in the run directory, where
    # `oat plot RUN_DIR` looks for it, not beside the directory.
    checkpoint = checkpoint_file(args.checkpoint)
    model, state = load_run(checkpoint, args.device)
    # The run's own eval section, as `oat frontier` reads it, with each flag given as an override.
    saved = saved_config(state["config"]).eval
    protocol = Protocol.from_eval(saved).overridden(
        attacks=[a for a in args.attacks.split(",") if a.strip()] if args.attacks else None, eps=args.eps,
        n=args.n, seed=args.seed, batch_size=args.batch_size, cascade=True if args.cascade else None,
        split=args.split)
    lambdas = lambdas or default_lambdas(state, saved.lambdas)
    eps = protocol.eps if protocol.eps is not None else state["eps"]
    try:
        splits = run_data(state, args.data_root)
        check_eps(eps, splits.info, "--eps" if args.eps is not None else f"the ε of {checkpoint},")
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"{checkpoint}: {str(error).splitlines()[0]}") from None
    eps_sweep = _radii(args.eps_sweep) if args.eps_sweep is not None else None
    try:
        for value in eps_sweep or []:
            check_eps(value, splits.info, "--eps-sweep")
        splits.split(protocol.split)
        check_bounds(protocol.attacks, splits.info.bounds)
    except ValueError as error:
        raise UserError(f"{checkpoint}: {str(error).splitlines()[0]}") from None
    result = evaluate_run(model, state, lambdas, protocol, show_progress=not args.quiet, splits=splits,
                          eps_sweep=eps_sweep)
    result["checkpoint"] = str(checkpoint)
    out = write_result(checkpoint.parent, result, path=args.out)
    print_table(result)
    print(f"wrote {out}")
    return 0


def _read_eval(given: str) -> tuple[Path, dict]:
    """``--eval``: an eval.json, or a run directory holding one."""
    from .runs import EVAL_RESULT, read_result

    path = Path(given) / EVAL_RESULT if Path(given).is_dir() else Path(given)
    if not path.is_file():
        raise UserError(f"--eval {given}: " + (f"no {EVAL_RESULT} in this directory (write one with oat eval)"
                                               if Path(given).is_dir() else "no such file"))
    try:
        return path, read_result(path)
    except ValueError as error:
        raise UserError(f"{path} is not an evaluation's JSON: {error}") from None


def cmd_pick(args) -> int:
    from .pick import PickError, format_pick, goal, pick

    try:
        goal(args.min_clean, args.min_robust, args.maximize)  # the options first, before any file is read
    except PickError as error:
        raise UserError(str(error)) from None
    path, result = _read_eval(args.eval)
    try:
        picked = pick(result, args.min_clean, args.min_robust, args.maximize)
    except PickError as error:
        raise UserError(f"{path}: {error}") from None
    if args.json:
        print(json.dumps(picked, indent=2, ensure_ascii=False))
    else:
        if picked["warning"]:
            print(f"oat: warning: {picked['warning']}", file=sys.stderr)
        print(format_pick(picked))
    return 0 if picked["lambda"] is not None else 1


SUFFIX_FORMATS = {".pt": "pt", ".pth": "pt", ".pt2": "pt2", ".ts": "torchscript", ".torchscript": "torchscript",
                  ".onnx": "onnx"}


def _export_target(args) -> tuple[float | str, str]:
    """``--lambda`` (a float in [0, 1] or 'input') and the format (--format, else --out's suffix,
    else pt for a fixed λ and torchscript for λ as an input), refused early when they clash."""
    from . import deploy
    from .deploy import INPUT

    lam = args.lam.strip()
    if lam != INPUT:
        try:
            lam = float(lam)
        except ValueError:
            lam = math.nan
        if not 0.0 <= lam <= 1.0:  # also NaN
            raise UserError(f"--lambda takes one value in [0, 1] or '{INPUT}', got {args.lam!r}")
    fmt = args.format or SUFFIX_FORMATS.get(Path(args.out).suffix.lower(), "torchscript" if lam == INPUT else "pt")
    if lam == INPUT and fmt == "pt":
        raise UserError("--lambda input keeps λ an input: choose --format pt2, torchscript or onnx "
                        "(the conditioned network's .pt is its checkpoint)")
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a directory; give the file to write")
    missing = deploy.missing_onnx() if fmt == "onnx" else []
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install 'oat[onnx]'")
    return lam, fmt


def cmd_export(args) -> int:
    from . import deploy
    from .runs import CHECKPOINT, CONFIG, checkpoint_file, load_run

    lam, fmt = _export_target(args)
    checkpoint = checkpoint_file(args.checkpoint)
    out = Path(args.out)
    if out.resolve() == checkpoint.resolve() or (out.name == CHECKPOINT and (out.parent / CONFIG).exists()):
        raise UserError(f"--out {out} is a run's training checkpoint; write the export to another file")
    model, state = load_run(checkpoint)
    spec = state["model_spec"]
    if lam == deploy.INPUT and not spec["conditioned"]:
        raise UserError(f"{checkpoint} holds a plain network, which does not depend on λ: export it at any one λ")
    try:
        exported = deploy.export(model, lam)
    except ValueError as error:  # a λ a categorical encoding does not know
        raise UserError(f"--lambda: {error}") from None
    input_shape = tuple(spec["input_shape"])
    path = deploy.write(exported, args.out, fmt, input_shape, deploy.plain_spec(spec),
                        None if lam == deploy.INPUT else lam)
    # Read back what was written and compare it with the checkpoint's network on random images.
    probe = deploy.example_inputs(exported, input_shape, batch=64, seed=1)
    difference = deploy.max_difference(model, deploy.load_exported(path, fmt), probe,
                                       None if lam == deploy.INPUT else lam)
    what = "λ as an input" if lam == deploy.INPUT else f"folded at λ = {lam:g} into the plain {spec['name']}"
    print(f"wrote {path} ({fmt}, {what}); max |logit difference| from the checkpoint's network on 64 "
          f"random images{' at mixed λ' if lam == deploy.INPUT else ''}: {difference:.2e}")
    if not difference <= deploy.TOLERANCE:  # also NaN
        print(f"oat: warning: the difference exceeds {deploy.TOLERANCE:g}", file=sys.stderr)
    return 0


def _plot_curves(args) -> int:
    """``oat plot --curves RUN...`` (training curves) or ``--eps-curve`` (RA against ε)."""
    from .curves import plot_robustness, plot_training
    from .runs import read_result

    if args.curves and args.eps_curve:
        raise UserError("--curves and --eps-curve draw different pictures: choose one")
    first = Path(args.dirs[0])
    try:
        if args.curves:
            paths = plot_training(args.dirs, Path(args.out) if args.out else first / "curves.png")
        else:
            results = []
            for item in args.dirs:
                run_dir = Path(item) if Path(item).is_dir() else Path(item).parent
                results.append((run_dir.name, read_result(item)))
            out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "robustness_curve.png"
            paths = plot_robustness(results, out)
    except (FileNotFoundError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise UserError(" ".join(str(error).splitlines())) from None
    print(f"wrote {paths[0]}, {paths[1]}")
    return 0


def cmd_frontier(args) -> int:
    from oat.frontier.sweep import FRONTIER_JSON, load_sweep, parse_shard, run_sweep

    sweep, base = load_sweep(args.config, args.set)
    out = args.out or f"runs/{Path(args.config).stem}"
    summary = run_sweep(sweep, base, out, workers=args.workers, shard=parse_shard(args.shard),
                        log=None if args.quiet else print, retrain_stale=args.retrain_stale)
    if not args.quiet:
        print(f"wrote {Path(out) / FRONTIER_JSON}: {len(summary['points'])} finished points"
              + (f", {len(summary['missing'])} not yet (other shards?)" if summary["missing"] else ""))
    return 0


def cmd_plot(args) -> int:
    from oat.frontier.plot import plot
    from oat.frontier.report import find_results, write_report

    if args.curves or args.eps_curve:
        return _plot_curves(args)
    try:
        comparison = find_results(args.dirs, allow_mismatch=args.allow_mismatch)
    except (FileNotFoundError, ValueError) as error:  # ProtocolMismatch is a ValueError
        raise UserError(" ".join(str(error).splitlines())) from None
    for mismatch in comparison.mismatches:
        print(f"oat: warning: evaluation protocols differ: {mismatch}", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "frontier_plot.png"
    paths = plot(comparison, out)
    summary = write_report(comparison, out.parent)
    print(f"wrote {paths[0]}, {paths[1]}, {out.parent / 'report.md'}, {out.parent / 'summary.json'}")
    if summary["hypervolume_ratio"] is not None:
        print(f"hypervolume ratio OAT / frontier {summary['hypervolume_ratio']:.3f}"
              + (f", cost ratio {summary['cost_ratio']:.3f}" if summary["cost_ratio"] is not None else "")
              + (f" ({summary['cost_ratio_work']:.3f} in work)" if summary.get("cost_ratio_work") is not None else "")
              + (" (PROTOCOL MISMATCH: not a fair comparison)" if comparison.mismatches else ""))
    return 0


def cmd_demo(args) -> int:
    from oat.frontier.demo import run_demo

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.task == "tsipras":  # oat bench tsipras's preset, under the demo's name and directory
        from oat.frontier.comparison import bench_config, load_comparison, run_comparison

        run_comparison(load_comparison(bench_config("tsipras", "cpu")), args.out or "runs/demo-tsipras",
                       workers=args.workers, retrain_stale=args.retrain_stale, name="demo")
        return 0
    run_demo(args.out or "runs/demo", workers=args.workers, retrain_stale=args.retrain_stale)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``oat train: error: …``, exit 2) like every other
    user error; ``--help`` shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def cmd_bench(args) -> int:
    from oat.frontier.comparison import bench_config, load_comparison, run_comparison

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    path = bench_config(args.bench, args.preset)
    comparison = load_comparison(path)
    out = args.out or f"runs/bench-{path.stem.removeprefix('bench_')}"
    run_comparison(comparison, out, workers=args.workers, log=None if args.quiet else print,
                   retrain_stale=args.retrain_stale, name="bench")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="oat",
        description=(
            "Once-for-all adversarial training: train one network conditioned on the "
            "accuracy/robustness trade-off λ ∈ [0, 1], then pick λ at inference."
        ),
    )
    parser.add_argument("--version", action="version", version=f"oat {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train an OAT model or a dedicated baseline from a YAML config",
        description="Train from a YAML config (see configs/). The run directory gets config.yaml, "
                    "checkpoint.pt (every epoch, atomically) and metrics.jsonl.")
    train.add_argument("--config", help="YAML config file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    train.add_argument("--out", help="run directory (default runs/<config name>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint (a --config or --set given with it "
                            "must not change the result)")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(run=cmd_train)

    ev = commands.add_parser(
        "eval", help="evaluate one checkpoint at several λ with several attacks",
        description="Clean and robust accuracy of one checkpoint at each λ; writes eval.json beside the "
                    "checkpoint (or --out) and prints a table.")
    ev.add_argument("--checkpoint", required=True,
                    help="checkpoint.pt, or its run directory (then eval.json goes into that directory)")
    ev.add_argument("--lambdas", help="comma-separated λ values (default: the run's eval.lambdas, else its training "
                                      "values plus 0.05,0.25,0.5,0.7,0.9)")
    ev.add_argument("--attacks", help="comma-separated: fgsm, pgd-N, pgd-NxR, cw-N, autoattack, apgd, apgd-ce, "
                    "apgd-dlr, apgd-t, square "
                                      "(default: the config's eval.attacks)")
    ev.add_argument("--eps", type=float, help="L∞ radius (default: the run's eval.eps, else its training ε)")
    ev.add_argument("--n", type=int, help="evaluate a fixed, seeded subset of N test examples (default: the run's eval.n)")
    ev.add_argument("--seed", type=int, help="seed of the subset and the attacks' random starts (default: the run's "
                                             "eval.seed)")
    ev.add_argument("--batch-size", type=int, default=None,
                    help="examples per attack call (default: the run's eval.batch_size, else 128 on the CPU and 500 "
                         "on a GPU; the figures do not change)")
    ev.add_argument("--cascade", action="store_true",
                    help="run each attack only on the examples every earlier attack failed on: the same worst case, "
                         "cheaper; later attacks' own figures become cumulative (default: the run's eval.cascade)")
    ev.add_argument("--split", choices=("test", "validation"),
                    help="the split to evaluate (default: the run's eval.split, else the validation split when the "
                         "run carved one with data.options.validation_size, else the test split)")
    ev.add_argument("--eps-sweep", metavar="E1,E2,...",
                    help="also measure the robustness curve: worst-case RA per λ at each of these radii (flags RA "
                         "that rises with ε or does not fall from ε to 2ε; drawn by oat plot --eps-curve)")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    ev.add_argument("--threads", type=int, help="CPU threads (default: $OMP_NUM_THREADS, else the idle cores)")
    ev.add_argument("--data-root", help="where the dataset lives (default: the training config's)")
    ev.add_argument("--out", help="output JSON (default: eval.json beside the checkpoint, in its run directory)")
    ev.add_argument("--quiet", action="store_true", help="no progress output")
    ev.set_defaults(run=cmd_eval)

    pk = commands.add_parser(
        "pick", help="choose λ from an evaluation: a bound on one accuracy, the best of the other",
        description="Choose the evaluated λ that meets a bound and is best on the other figure (robust accuracy: "
                    "the per-example worst case over every attack), with 95% Wilson intervals and whether the "
                    "bound holds at the interval's lower end. Ties go to the better other figure, then the smaller "
                    "λ. For a model that serves any λ (sinusoidal encoding) it also estimates, by linear "
                    "interpolation between evaluated λ, a better unmeasured λ to confirm with oat eval. Pick on a "
                    "validation evaluation (oat eval --split validation): figures of a λ picked on the test split "
                    "are optimistic. Exit status 1 when no evaluated λ meets the bound.")
    pk.add_argument("--eval", required=True, metavar="FILE",
                    help="an eval.json written by oat eval, or the run directory holding it")
    pk.add_argument("--min-clean", type=float, metavar="X",
                    help="keep λ with clean accuracy ≥ X (a fraction in [0, 1]); maximise robust accuracy")
    pk.add_argument("--min-robust", type=float, metavar="X",
                    help="keep λ with worst-case robust accuracy ≥ X (a fraction in [0, 1]); maximise clean accuracy")
    pk.add_argument("--maximize", choices=("robust", "clean"),
                    help="the figure to maximise: alone, over every evaluated λ; with a bound, instead of its "
                         "default; required with both bounds")
    pk.add_argument("--json", action="store_true",
                    help="print the pick as JSON (the test-split warning is its 'warning' key) instead of text")
    pk.set_defaults(run=cmd_pick)

    ex = commands.add_parser(
        "export", help="deploy a checkpoint: fold λ away (a plain network), or keep λ as an input",
        description="Fold a conditioned checkpoint at one λ into the project's plain network of the same family "
                    "(every FiLM and dual BatchNorm becomes one plain BatchNorm; models.create(..., "
                    "conditioned=False) loads it, and it runs at the plain network's speed), or, with --lambda "
                    "input, write a module whose forward takes (x, lam) with one λ per image. The file is read back "
                    "and its logits compared with the checkpoint's on random images.")
    ex.add_argument("--checkpoint", required=True, help="checkpoint.pt, or its run directory")
    ex.add_argument("--lambda", dest="lam", required=True, metavar="L",
                    help="the λ in [0, 1] to fold at, or 'input' to serve every λ")
    ex.add_argument("--out", required=True, help="the file to write")
    ex.add_argument("--format", choices=("pt", "pt2", "torchscript", "onnx"),
                    help="pt: the plain network's weights and spec (oat.load reads it); pt2: a torch.export "
                         "program; torchscript; onnx (the onnx extra). Default: from --out's suffix (.pt, .pt2, .ts, "
                         ".onnx), else pt, or torchscript with --lambda input")
    ex.set_defaults(run=cmd_export)

    fr = commands.add_parser(
        "frontier", help="train and evaluate dedicated fixed-λ and fixed-β TRADES baselines",
        description="Train and evaluate the dedicated baselines a sweep config lists (each an ordinary run "
                    "directory under OUT/points/), then write OUT/frontier.json. Rerunning skips finished "
                    "points and resumes unfinished ones.")
    fr.add_argument("--config", required=True, help="sweep config (base: training config, fixed_lambda, trades, eval)")
    fr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the base training config for every point (repeatable)")
    fr.add_argument("--out", help="output directory (default runs/<config name>)")
    fr.add_argument("--workers", type=int, default=1, help="points trained in parallel processes")
    fr.add_argument("--shard", help="run only the i-th of n slices of the points, e.g. 2/4 (job arrays)")
    fr.add_argument("--retrain-stale", action="store_true",
                    help="retrain points trained under another config (otherwise they are refused)")
    fr.add_argument("--quiet", action="store_true", help="no progress output")
    fr.set_defaults(run=cmd_frontier)

    pl = commands.add_parser(
        "plot", help="draw OAT vs the dedicated frontier; write report.md and summary.json",
        description="Find an OAT run (eval.json) and sweeps (frontier.json) in the directories (or one level "
                    "below) and draw the SA–RA plane and SA/RA against λ, as PNG and SVG, with report.md and "
                    "summary.json beside them. Every model must have been evaluated the same way (dataset, split, "
                    "ε, norm, test subset, attacks, seed); a mismatch is refused.")
    pl.add_argument("dirs", nargs="+", metavar="DIR")
    pl.add_argument("--curves", action="store_true",
                    help="instead: draw the training curves of the run directories (validation accuracy with the "
                         "overestimation flag shaded, FOSC, gradient-norm spikes) into DIR/curves.png")
    pl.add_argument("--eps-curve", action="store_true",
                    help="instead: draw RA against ε from evaluations made with oat eval --eps-sweep (run "
                         "directories or eval.json files) into DIR/robustness_curve.png")
    pl.add_argument("--out", help="image path (default DIR/frontier_plot.png; an .svg is written beside it)")
    pl.add_argument("--allow-mismatch", action="store_true",
                    help="compare models evaluated differently anyway; the plot, report.md and summary.json "
                         "are marked PROTOCOL MISMATCH")
    pl.set_defaults(run=cmd_plot)

    de = commands.add_parser(
        "demo", help="the whole comparison on the bundled digits (or the Tsipras task), offline",
        description="Train one OAT model, the dedicated fixed-λ frontier and fixed-β TRADES points on the "
                    "bundled digits, evaluate all with PGD-20 and APGD-CE + APGD-T on one fixed subset, and "
                    "write the plot, report.md and summary.json. With --task tsipras: linear models on the "
                    "synthetic task of Tsipras et al. (2019), each also evaluated exactly from its weights and "
                    "drawn against the true frontier over every linear classifier (configs/bench_tsipras_cpu.yaml; "
                    "about a minute). Rerunning reuses finished work.")
    de.add_argument("--task", choices=("digits", "tsipras"), default="digits", help="the task (default digits)")
    de.add_argument("--out", help="output directory (default runs/demo, or runs/demo-tsipras)")
    de.add_argument("--workers", type=int, default=2, help="models trained in parallel processes (default 2)")
    de.add_argument("--retrain-stale", action="store_true",
                    help="retrain models in --out trained under other settings (otherwise they are refused)")
    de.set_defaults(run=cmd_demo)
    be = commands.add_parser(
        "bench", help="the comparison on real data, from a preset config (configs/bench_*.yaml)",
        description="Train one OAT model, the dedicated fixed-λ frontier and fixed-β TRADES points on real data, "
                    "evaluate all with one protocol (and the standard AutoAttack on a smaller fixed subset for the "
                    "models the config names), and write the plot, report.md and summary.json. BENCH is a dataset "
                    "with a preset (configs/bench_<dataset>_<preset>.yaml) or a comparison config file. Reruns "
                    "reuse finished work.")
    be.add_argument("bench", metavar="BENCH", help="fashion-mnist, or a comparison config file")
    be.add_argument("--preset", default="cpu", help="cpu (a training subset, hours on 2 cores) or gpu (default cpu)")
    be.add_argument("--out", help="output directory (default runs/bench-<dataset>_<preset>)")
    be.add_argument("--workers", type=int, default=2, help="models trained in parallel processes (default 2)")
    be.add_argument("--retrain-stale", action="store_true",
                    help="retrain models in --out trained under other settings (otherwise they are refused)")
    be.add_argument("--quiet", action="store_true", help="no progress output")
    be.set_defaults(run=cmd_bench)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .trainer import TrainingDiverged

    try:
        return args.run(args)
    except (UserError, ConfigError, CheckpointError) as error:
        print(f"oat: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system said no: a path that is a file, read-only, full, gone
        print(f"oat: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"oat: training stopped: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("oat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
