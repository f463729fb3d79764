"""Why the overestimation monitor's default attacks include APGD-DLR (README, "Watching for
robustness overestimation"): scale a plain network's logits and cross-entropy attacks stall alike.

A small CNN trained without attacks on the bundled digits (200 training digits held out for
validation), its logits multiplied by 1, 10, 100 and 1000, attacked at ε = 0.1 on the 200
validation digits with PGD-10, APGD-CE, APGD-DLR and APGD-T. Run: python docs/scripts/saturated_logits.py
"""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import oat
from oat import datasets, models


class Scaled(nn.Module):
    conditioned = False

    def __init__(self, net, scale):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x, lam=0.0):
        return self.scale * self.net(x, lam)


def main() -> None:
    torch.manual_seed(0)
    splits = datasets.load("digits", validation_size=200)
    net = models.create("small_cnn", num_classes=10, conditioned=False, input_shape=(1, 8, 8))
    x, y = datasets.dataset_tensors(splits.train)
    x = datasets.to_unit(x)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(15):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 64):
            batch = order[start:start + 64]
            loss = F.cross_entropy(net(x[batch], 0.0), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    attacks = ["pgd-10", "apgd-ce", "apgd-dlr", "apgd-t"]
    print("scale  clean  " + "  ".join(attacks) + "  zero-gradient share  (validation, n=200, ε=0.1, RA in %)")
    for scale in (1, 10, 100, 1000):
        started = time.perf_counter()
        point = oat.evaluate(Scaled(net, scale), splits, [0.0], attacks, eps=0.1)["points"][0]
        print(f"{scale:5d}  {100 * point['clean']:5.1f}  " + "  ".join(f"{100 * point['robust'][a]:{len(a)}.1f}"
                                                                    for a in attacks)
              + f"  {100 * point['checks']['zero_gradient']:.1f}%  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
