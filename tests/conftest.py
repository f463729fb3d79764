"""Test-wide settings.

One intra-op thread: the test models are tiny, and on a small shared machine a second OpenMP
thread costs far more in synchronisation than it gains (measured here: a tiny CNN forward went
from ~3 ms to ~0.5 s under contention). Set OAT_TEST_THREADS to change it.
"""

import os

import torch

THREADS = os.environ.get("OAT_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = THREADS  # what oat's training and evaluation read (oat.distributed.set_threads)
torch.set_num_threads(int(THREADS))


# ---------------------------------------------------------------- masked models (oat.masking, oat.monitor)
import pytest  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class Saturated(nn.Module):
    """A plain network whose logits are multiplied by ``scale``: cross-entropy's input gradient
    underflows to exactly zero, so PGD and APGD-CE stall while APGD-DLR (scale-free) does not."""

    conditioned = False

    def __init__(self, net, scale=1000.0):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x, lam=0.0):
        return self.scale * self.net(x, lam)


@pytest.fixture(scope="session")
def plain_digits_net():
    """A plain small CNN trained without attacks on the digits (200 held out for validation): not
    robust, and honest about it."""
    from oat import datasets, models

    torch.manual_seed(0)
    splits = datasets.load("digits", validation_size=200)
    net = models.create("small_cnn", num_classes=10, conditioned=False, input_shape=(1, 8, 8))
    x, y = datasets.dataset_tensors(splits.train)
    x = datasets.to_unit(x)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(8):
        for start in range(0, len(y), 64):
            loss = F.cross_entropy(net(x[start:start + 64], 0.0), y[start:start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval(), splits
