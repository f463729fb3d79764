"""Benchmark: cost of λ-conditioning (FiLM + dual BN) in a training step, and in parameters.

    python bench/conditioning_overhead.py [--steps 20] [--threads 2]

Times an OAT training step of the digits small CNN (batch 64, PGD-7, the reference λ sampler's
mix) against the plain network's step at one fixed λ, alternating the two so that drift in the
machine's speed hits both, and prints the per-step times and their ratio; then the parameter
overhead of the default conditioning on ResNet-34.
"""

import argparse
import time

import torch

from oat import models
from oat.conditioning import conditioning_overhead
from oat.objectives import make_objective
from oat.sampling import make_sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    objective = make_objective("pgd", eps=0.3, steps=7)
    setups = {}
    for conditioned in (False, True):
        net = models.create("small_cnn", input_size=8, conditioned=conditioned).train()
        lam = make_sampler("reference", seed=0).sample(64) if conditioned else torch.full((64,), 0.5)
        setups[conditioned] = (net, torch.optim.SGD(net.parameters(), lr=0.01), lam)

    def step(conditioned: bool) -> float:
        net, optimizer, lam = setups[conditioned]
        started = time.perf_counter()
        objective(net, x, y, lam).loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    for conditioned in (False, True):  # warm-up
        step(conditioned)
    times = {False: [], True: []}
    for _ in range(args.steps):
        for conditioned in (False, True):
            times[conditioned].append(step(conditioned))
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"threads {args.threads}, {args.steps} alternating steps each")
    print(f"plain step        {median[False] * 1e3:8.1f} ms (median)")
    print(f"conditioned step  {median[True] * 1e3:8.1f} ms (median)   ratio {median[True] / median[False]:.3f}")
    overhead = conditioning_overhead(models.create("resnet34"), models.create("resnet34", conditioned=False))
    print(f"ResNet-34 parameter overhead of the default conditioning: {100 * overhead:.1f}%")


if __name__ == "__main__":
    main()
