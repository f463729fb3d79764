"""The trade-off weight λ: validation and the one shape every layer sees.

Every λ-aware call in oat (`model(x, lam)`, attacks, objectives) accepts λ as a Python
number, a 0-d tensor, or a tensor of shape ``[B]`` (one λ per example), and turns it into a
float tensor of shape ``[B]`` on the input's device with :func:`as_lambda`. Bad values fail
loudly here instead of silently producing a different trade-off downstream.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

def as_lambda(lam, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Return λ as a float32 tensor of shape ``[batch_size]``.

    Raises ``ValueError`` naming the problem when λ is missing, not a number, NaN, outside
    [0, 1], or a tensor whose shape is neither ``[]`` nor ``[batch_size]``.
    """
    if lam is None:
        raise ValueError("lam is required: pass a float in [0, 1] or a tensor of shape [B]")
    if isinstance(lam, bool) or not isinstance(lam, (Real, torch.Tensor)):
        raise ValueError(f"lam must be a float or a tensor, got {type(lam).__name__}")
    if isinstance(lam, Real):
        value = float(lam)
        if math.isnan(value):
            raise ValueError("lam is NaN")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {value}")
        return torch.full((batch_size,), value, dtype=torch.float32, device=device)
    if lam.dtype == torch.bool or lam.is_complex():
        raise ValueError(f"lam must be a real tensor, got dtype {lam.dtype}")
    if lam.dim() == 0:
        lam = lam.reshape(1).expand(batch_size)
    elif lam.dim() != 1 or lam.shape[0] != batch_size:
        raise ValueError(
            f"lam must be a float or a tensor of shape [{batch_size}] (one per example), "
            f"got shape {list(lam.shape)}"
        )
    lam = lam.to(dtype=torch.float32)
    # Checked where λ is: free on the CPU (a training step keeps λ there), one device sync for
    # λ already on an accelerator; the detailed message only when it fails.
    if lam.numel() and bool(((lam < 0) | (lam > 1) | torch.isnan(lam)).any()):
        if torch.isnan(lam).any():
            raise ValueError("lam contains NaN")
        raise ValueError(
            f"lam must lie in [0, 1], got values from {lam.min().item():g} to {lam.max().item():g}"
        )
    return lam.to(device=device) if device is not None else lam
