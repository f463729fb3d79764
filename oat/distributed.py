"""Devices and multi-process training under ``torchrun``.

The process group is set up from the environment torchrun provides (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``): NCCL on GPUs, gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from .conditioning import BatchNorm2d


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's local rank), then Apple MPS, then CPU."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ValueError(f"unknown device {preference!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} requested but CUDA is not available here")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available here")
    return device


SAMPLE_SECONDS = 0.25  # how long free_cores watches the cores


def free_cores(seconds: float = SAMPLE_SECONDS) -> int:
    """Cores this process may use that are idle *now*, at least 1: each core's busy share over
    ``seconds`` (from /proc/stat), summed and taken away from the cores this process may run on.
    The 1-minute load average lags by a minute: a command started right after a 2-core job ends
    would get half the machine. Where /proc/stat is missing (macOS), the load average it is."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    first = cpu_times()
    if first is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(1, min(len(cores), int(len(cores) - load + 0.5)))
    time.sleep(seconds)
    second = cpu_times() or first
    busy = 0.0
    for core in cores:
        if core in first and core in second:
            (idle_a, total_a), (idle_b, total_b) = first[core], second[core]
            elapsed = total_b - total_a
            busy += 1.0 - (idle_b - idle_a) / elapsed if elapsed > 0 else 0.0
    return max(1, min(len(cores), int(len(cores) - busy + 0.5)))


def cpu_times() -> dict[int, tuple[int, int]] | None:
    """Per core, (idle, total) clock ticks since boot from /proc/stat (idle counts iowait), or None."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in fields[:8]]
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times or None


def set_threads(requested: int | None = None) -> int:
    """Set torch's CPU thread count and return it: ``requested``, else ``$OMP_NUM_THREADS``, else
    :func:`free_cores`. Torch's own default (every core) collapses when other jobs share the
    machine: OpenMP threads spin waiting for a busy core (one digits epoch took 97 s instead of
    3 s), so oat never asks for more cores than are idle."""
    if requested is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        requested = int(env) if env.isdigit() and int(env) > 0 else free_cores()
    torch.set_num_threads(requested)
    return requested


def setup(device: torch.device) -> DistEnv:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return env


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


class _SyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm with the plain networks' call signature ``bn(h, cond)`` (λ ignored)."""

    def forward(self, h: torch.Tensor, cond=None) -> torch.Tensor:
        return super().forward(h)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (plain, clean or adversarial) by a SyncBatchNorm, keeping its
    statistics and parameters; oat's λ-ignoring plain norms keep their two-argument call."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        cls = _SyncBatchNorm if isinstance(module, BatchNorm2d) else nn.SyncBatchNorm
        synced = cls(module.num_features, module.eps, module.momentum, module.affine,
                     module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
