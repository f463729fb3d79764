"""Benchmark: a full ``evaluate()`` of an OAT model at 8 λ, against the sum of its parts, and with
the cascade, the device's default batch size and several λ per batch.

    python bench/eval.py [--checkpoint RUN_DIR] [--n 500] [--attacks pgd-20,apgd-ce] [--threads N]
                         [--device cpu|cuda]

Without ``--checkpoint`` it first trains the digits OAT config for 5 epochs into a temporary
directory (about a minute on 2 cores). Five timings, in one run:
- ``parts``: the clean forward and each attack called directly on the clean-correct examples, λ by
  λ, with nothing else (what ``evaluate()`` cannot avoid doing);
- ``evaluate``: ``oat.evaluate(..., cascade=False)``, every attack on every clean-correct example,
  in batches of ``--batch-size`` (500: the default before issue 12), λ after λ;
- ``cascade``: the same with ``cascade=True``, each attack only on the examples still robust;
- ``default``: ``cascade=True`` at the device's default batch size (128 on the CPU, 500 on a GPU);
- ``mixed``: ``default`` with ``mix_lambdas=True``, the (λ, example) pairs of all λ attacked
  together (the default on a GPU).
It prints each time, ``ratio evaluate/parts`` (the machinery's overhead), ``ratio X/evaluate``
for the other three (the issue's target: ≤ 0.5), and how many (λ, example) worst-case outcomes
differ from ``evaluate`` (every attack but the full ``autoattack`` draws its starts per example,
so none should).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import oat
from oat.attacks.base import eval_mode
from oat.datasets.base import dataset_tensors, to_unit
from oat.attacks.names import parse_attack
from oat.bits import unpack_bits
from oat.evaluation import _survivors, subset_indices
from oat.runs import load_run, run_data

LAMBDAS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.7, 1.0]


def parts_seconds(model, splits, attacks, eps, n, seed, batch_size, device) -> float:
    """Clean forward plus each attack on the clean-correct examples, λ by λ, nothing else."""
    images, labels = dataset_tensors(splits.test)
    index = subset_indices(len(labels), n, seed)
    x, y = to_unit(images[index].to(device)), labels[index].to(device)
    started = time.perf_counter()
    with eval_mode(model):
        for lam in LAMBDAS:
            with torch.no_grad():
                correct = torch.cat([model(x[s:s + batch_size], lam).argmax(1) for s in range(0, len(y), batch_size)]) == y
            keep = correct.nonzero().squeeze(1)
            for name in attacks:
                _survivors(parse_attack(name), model, x, y, keep, lam, eps, seed, batch_size, index[keep.cpu()])
    return time.perf_counter() - started


def differing(a: dict, b: dict) -> int:
    n = a["n"]
    return sum(int((unpack_bits(p["per_example"]["robust_worst"], n)
                    != unpack_bits(q["per_example"]["robust_worst"], n)).sum())
               for p, q in zip(a["points"], b["points"]))


def train_digits(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "oat", "train", "--config", "configs/digits_oat.yaml", "--out", str(out),
                    "--set", "train.epochs=5", "--quiet"], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="an OAT run directory (default: train the digits config)")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--attacks", default="pgd-20,apgd-ce")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    attacks = [a for a in args.attacks.split(",") if a]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.checkpoint) if args.checkpoint else train_digits(Path(tmp) / "oat")
        model, state = load_run(run / "checkpoint.pt", args.device)
        splits = run_data(state)
        eps, device = state["eps"], torch.device(args.device)
        print(f"device {device}, {torch.get_num_threads()} threads; {state['model_spec']['name']} on "
              f"{splits.info.name}, {len(LAMBDAS)} λ, {', '.join(attacks)}, n = {args.n}, ε = {eps:g}")
        common = dict(eps=eps, n=args.n, seed=0, batch_size=args.batch_size, device=device)
        parts = parts_seconds(model, splits, attacks, eps, args.n, 0, args.batch_size, device)
        full = oat.evaluate(model, splits, LAMBDAS, attacks, mix_lambdas=False, **common)
        cascaded = oat.evaluate(model, splits, LAMBDAS, attacks, cascade=True, mix_lambdas=False, **common)
        common.pop("batch_size")
        default = oat.evaluate(model, splits, LAMBDAS, attacks, cascade=True, mix_lambdas=False, **common)
        mixed = oat.evaluate(model, splits, LAMBDAS, attacks, cascade=True, mix_lambdas=True, **common)
    worst = np.mean([p["robust_worst"] for p in full["points"]])
    print(f"parts     {parts:8.1f} s")
    print(f"evaluate  {full['seconds']:8.1f} s   ratio evaluate/parts {full['seconds'] / parts:.3f}")
    print(f"cascade   {cascaded['seconds']:8.1f} s   ratio cascade/evaluate {cascaded['seconds'] / full['seconds']:.3f}")
    for name, result in (("default", default), ("mixed", mixed)):
        print(f"{name:9} {result['seconds']:8.1f} s   ratio {name}/evaluate {result['seconds'] / full['seconds']:.3f}")
    total = full['n'] * len(LAMBDAS)
    changed = ", ".join(f"{name} {differing(full, result)}"
                        for name, result in (("cascade", cascaded), ("default", default), ("mixed", mixed)))
    print(f"mean worst-case RA {worst:.4f}; worst-case outcomes (of {total}) that differ from evaluate: {changed}")


if __name__ == "__main__":
    main()
