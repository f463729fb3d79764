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
