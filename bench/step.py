"""Benchmark: oat's training step against a minimal hand-written step doing exactly the same passes.

    python bench/step.py [--models small_cnn,preact_resnet18] [--steps 10] [--repeats 5]
                         [--threads N] [--device cpu|cuda]

For each architecture (28×28×1 inputs, 10 classes, the Fashion-MNIST presets' shape; random
images, since speed does not depend on them) and each of two runs:
- ``oat``: the OAT model — conditioned network, the reference λ sampler, PGD-7 at the reference
  step, batch 128 — through oat's own loop (:func:`oat.trainer.train_one_epoch`: λ, attack,
  loss, update, on-device metrics, the FOSC probe on every 4th batch, pass counting);
- ``dedicated``: the plain network at λ = 1 (PGD-AT), through the same loop;
each against its *floor*: the same data, λ values, model and optimiser driven by a loop written
out here with only the necessary passes — k = 7 forward/input-backward steps for the attacked
examples (λ > 0) in eval mode, then one clean and one adversarial forward in train mode, one
backward, one SGD step. Epochs of ``--steps`` batches alternate between the two sides, so drift
in the machine's speed hits both; it prints the median time per step of each and
``ratio oat_step/floor X``, ``ratio dedicated_step/floor X`` (targets: 1.10 and 1.05 on CPU).
On CUDA both sides run under bf16 autocast (``train.precision: bf16``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oat.attacks import PGD
from oat.config import from_dict
from oat.distributed import DistEnv
from oat.progress import Progress
from oat.experiment import build
from oat.trainer import _autocast, setup_training, train_one_epoch
from _timing import timed  # noqa: E402  (bench/ is the script's folder)

BATCH, EPS, STEPS = 128, 0.1, 7


def config_for(model: str, conditioned: bool, data: Path, device: torch.device, steps: int) -> dict:
    lambdas = ({"sampler": "reference", "params": {"values": [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]}} if conditioned
               else {"sampler": "fixed", "params": {"value": 1.0}})
    return {"data": {"name": "npz", "options": {"path": str(data), "test_fraction": 0.5, "eps": EPS}},
            "model": {"name": model, "conditioned": conditioned}, "objective": {"name": "pgd"},
            "attack": {"steps": STEPS}, "lambdas": lambdas,
            "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "constant"},
            "train": {"epochs": 1000, "batch_size": BATCH, "seed": 0, "device": str(device),
                      "precision": "bf16" if device.type == "cuda" else "fp32"}}


def floor_epoch(run, epoch: int) -> None:
    """The necessary passes of one epoch, written out."""
    device, model = run.device, run.model
    sampler = run.exp.new_sampler(seed=epoch)
    attack = PGD(run.exp.eps, alpha=run.exp.alpha, steps=run.objective.attack.steps, best=False)
    order = torch.randperm(len(run.labels), generator=torch.Generator().manual_seed(epoch))
    model.train()
    for step in range(run.steps_per_epoch):
        index = order[step * BATCH:(step + 1) * BATCH]
        x = run.images[index].to(device).float().div_(255)
        y = run.labels[index].to(device)
        lam = sampler.sample(len(y)).to(device)
        attacked = (lam > 0).nonzero().squeeze(1)
        x_adv = attack(model, x[attacked], y[attacked], lam[attacked])
        with _autocast(device, run.exp.loop.precision):
            clean = F.cross_entropy(model(x, lam), y, reduction="none")
            adv = F.cross_entropy(model(x_adv, lam[attacked]), y[attacked], reduction="none")
        loss = ((1 - lam) * clean).sum() + (lam[attacked] * adv).sum()
        run.optimizer.zero_grad(set_to_none=True)
        (loss / len(y)).backward()
        run.optimizer.step()


def compare(label: str, model: str, conditioned: bool, data: Path, out: Path, device, steps: int, repeats: int):
    run = setup_training(build(from_dict(config_for(model, conditioned, data, device, steps))), out, None, device,
                         DistEnv())
    quiet = Progress(1, enabled=False)
    sides = {"oat": lambda e: train_one_epoch(run, e, quiet), "floor": lambda e: floor_epoch(run, e)}
    for name, side in sides.items():  # warm-up
        side(0)
    times = {name: [] for name in sides}
    for epoch in range(1, repeats + 1):
        for name, side in sides.items():
            times[name].append(timed(lambda: side(epoch), device) / run.steps_per_epoch)
    ours, floor = statistics.median(times["oat"]), statistics.median(times["floor"])
    run.counter.detach()
    print(f"{model:16s} {label:9s} step {ours * 1000:8.1f} ms   floor {floor * 1000:8.1f} ms   "
          f"{BATCH / ours:7.0f} images/s   ratio {label}_step/floor {ours / floor:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small_cnn", help="comma-separated, e.g. small_cnn,preact_resnet18")
    parser.add_argument("--steps", type=int, default=10, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs of each side")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), {torch.get_num_threads()} threads, batch {BATCH}, PGD-{STEPS}, "
          f"{args.steps} steps an epoch, median of {args.repeats} epochs")
    with tempfile.TemporaryDirectory() as tmp:
        generator = np.random.default_rng(0)
        data = Path(tmp) / "images.npz"
        count = 2 * BATCH * args.steps  # half of it is the (unused) test split
        np.savez(data, x=generator.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8),
                 y=generator.integers(0, 10, count))
        for model in [m for m in args.models.split(",") if m]:
            compare("oat", model, True, data, Path(tmp) / f"{model}-oat", device, args.steps, args.repeats)
            compare("dedicated", model, False, data, Path(tmp) / f"{model}-dedicated", device, args.steps,
                    args.repeats)


if __name__ == "__main__":
    main()
