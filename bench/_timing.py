"""What the bench scripts share: one timed call, with the device drained before each clock reading."""

from __future__ import annotations

import time

import torch


def timed(function, device: torch.device) -> float:
    """Seconds ``function()`` takes, including the device work it queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
