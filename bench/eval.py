"""Benchmark: a full ``evaluate()`` of an OAT model at 8 λ, against the sum of its parts and with
and without the cascade.

    python bench/eval.py [--checkpoint RUN_DIR] [--n 500] [--attacks pgd-20,apgd-ce] [--threads N]
                         [--device cpu|cuda]

Without ``--checkpoint`` it first trains the digits OAT config for 5 epochs into a temporary
directory (about a minute on 2 cores). Three timings, in one run:
- ``parts``: the clean forward and each attack called directly on the clean-correct examples, λ by
  λ, with nothing else (what ``evaluate()`` cannot avoid doing);
- ``evaluate``: ``oat.evaluate(..., cascade=False)``, every attack on every clean-correct example;
- ``cascade``: ``oat.evaluate(..., cascade=True)``, each attack only on the examples still robust.
It prints each time, ``ratio evaluate/parts`` (the machinery's overhead), ``ratio cascade/evaluate``
(the issue's target: ≤ 0.5 with batching), and how many (λ, example) worst-case outcomes differ
between the two (PGD's starts are per example, so only APGD's batch-dependent starts can differ).
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
from oat.evaluation import _robust_flags, parse_attack, subset_indices, unpack_flags
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
                _robust_flags(parse_attack(name), model, x[keep], y[keep], lam, eps, seed, batch_size, index[keep.cpu()])
    return time.perf_counter() - started


def differing(a: dict, b: dict) -> int:
    n = a["n"]
    return sum(int((unpack_flags(p["per_example"]["robust_worst"], n)
                    != unpack_flags(q["per_example"]["robust_worst"], n)).sum())
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
        full = oat.evaluate(model, splits, LAMBDAS, attacks, **common)
        cascaded = oat.evaluate(model, splits, LAMBDAS, attacks, cascade=True, **common)
    worst = np.mean([p["robust_worst"] for p in full["points"]])
    print(f"parts     {parts:8.1f} s")
    print(f"evaluate  {full['seconds']:8.1f} s   ratio evaluate/parts {full['seconds'] / parts:.3f}")
    print(f"cascade   {cascaded['seconds']:8.1f} s   ratio cascade/evaluate {cascaded['seconds'] / full['seconds']:.3f}")
    print(f"mean worst-case RA {worst:.4f}; worst-case outcomes that differ with the cascade: "
          f"{differing(full, cascaded)} of {full['n'] * len(LAMBDAS)}")


if __name__ == "__main__":
    main()
