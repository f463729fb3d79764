"""Benchmark: oat's attacks against minimal hand-written loops doing exactly the same passes.

    python bench/attacks.py [--repeats 7] [--batch 500] [--threads N] [--device cpu|cuda|all]

Two attacks on the Fashion-MNIST preset's network (the λ-conditioned small CNN, 32/64 channels,
28×28×1 inputs, at λ = 1, eval mode):
- PGD-20 as evaluation runs it (``oat.attacks.PGD``, best mode): 20 steps of forward + input
  backward and one more forward to check the last iterate, against a loop of exactly those
  passes (uniform start, sign step, projection, the first misclassified iterate kept);
- TRADES' KL inner maximisation as training runs it (``oat.attacks.TradesKL``, 10 steps, batch
  128): one clean forward, then 10 steps of forward + input backward, against the same loop.
The two sides alternate, in alternating order, so drift in the machine's speed hits both; each prints the median time
per call and ``ratio X/floor`` (medians; below 1 is faster than the floor). On a CUDA device the
loops run under bf16 autocast and the device is synchronised before each clock reading.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from oat import models
from oat.attacks import PGD, TradesKL
from oat.attacks.base import kl_divergence
from _timing import timed  # noqa: E402  (bench/ is the script's folder)

EPS = 0.1  # Fashion-MNIST's radius


def pgd_floor(model, x, y, lam, eps, alpha, steps, generator):
    """PGD-20 in best mode, written out: the passes oat's PGD makes, nothing else."""
    x_adv = (x + (2 * torch.rand(x.shape, generator=generator, device=x.device) - 1) * eps).clamp(0, 1)
    kept, found = x.clone(), torch.zeros(len(y), dtype=torch.bool, device=x.device)
    for step in range(steps + 1):
        x_adv = x_adv.detach().requires_grad_(step < steps)
        with torch.set_grad_enabled(step < steps):
            logits = model(x_adv, lam)
        wrong = (logits.argmax(1) != y) & ~found
        kept = torch.where(wrong[:, None, None, None], x_adv.detach(), kept)
        found |= wrong
        if step == steps:
            break
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return torch.where(found[:, None, None, None], kept, x_adv.detach())


def trades_floor(model, x, lam, eps, alpha, steps, generator):
    """TRADES' KL ascent, written out."""
    with torch.no_grad():
        log_p = F.log_softmax(model(x, lam), dim=1)
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=generator, device=x.device)).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = kl_divergence(log_p, F.log_softmax(model(x_adv, lam), dim=1)).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def compare(name: str, ours, floor, repeats: int, device: torch.device) -> None:
    ours(), floor()  # warm-up
    times = {"ours": [], "floor": []}
    for repeat in range(repeats):  # the order alternates: whichever runs first in a pair is not favoured
        pair = [("ours", ours), ("floor", floor)]
        for side, call in pair if repeat % 2 == 0 else pair[::-1]:
            times[side].append(timed(call, device))
    mine, base = statistics.median(times["ours"]), statistics.median(times["floor"])
    print(f"{name:10s} oat {mine * 1000:8.1f} ms   floor {base * 1000:8.1f} ms   ratio {name}/floor {mine / base:.3f}")


def run(device: torch.device, batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = models.create("small_cnn", input_shape=(1, 28, 28), conditioned=True).to(device).eval()
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    lam = torch.ones(batch, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    pgd = PGD(EPS, steps=20, seed=0)
    trades = TradesKL(EPS, steps=10, seed=0)
    generator = torch.Generator(device=device).manual_seed(0)
    small = 128
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{torch.get_num_threads()} threads, {precision}; PGD batch {batch}, TRADES batch {small}")
    with autocast:
        compare("pgd-20", lambda: pgd(model, x, y, lam),
                lambda: pgd_floor(model, x, y, lam, EPS, pgd.alpha, 20, generator), repeats, device)
        compare("trades-kl", lambda: trades(model, x[:small], y[:small], lam[:small]),
                lambda: trades_floor(model, x[:small], lam[:small], EPS, trades.alpha, 10, generator), repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: the CPU, and the GPU when CUDA is present")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for name in devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("device cuda: not present, skipped")
            continue
        run(torch.device(name), args.batch, args.repeats)


if __name__ == "__main__":
    main()
