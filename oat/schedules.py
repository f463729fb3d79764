"""Learning-rate schedules as a pure function of training progress.

The factor multiplying the base learning rate depends only on how far training is (in epochs,
fractional within an epoch), so a resumed run recomputes exactly the rate an uninterrupted one
would have used, without carrying a scheduler object's hidden state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("cosine", "multistep", "onecycle", "constant")


def lr_factor(
    name: str,
    progress: float,
    total_epochs: int,
    milestones: list | tuple = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> float:
    """Factor at ``progress`` epochs (0 ≤ progress ≤ total_epochs).

    cosine: ½(1 + cos(π·t/T)); multistep: γ^(number of milestones passed); onecycle: linear rise
    from 1/25 to 1 over the first 30% then cosine decay to 0 (Smith & Topin 2019); constant: 1.
    A linear warm-up from 0 over ``warmup_epochs`` multiplies any of them.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    t = min(max(progress / max(total_epochs, 1e-12), 0.0), 1.0)
    if name == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * t))
    elif name == "multistep":
        factor = gamma ** sum(progress >= m for m in milestones)
    elif name == "onecycle":
        peak = 0.3
        if t < peak:
            factor = 1 / 25 + (1 - 1 / 25) * t / peak
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * (t - peak) / (1 - peak)))
    else:
        factor = 1.0
    if warmup_epochs > 0 and progress < warmup_epochs:
        factor *= progress / warmup_epochs
    return factor


@dataclass(frozen=True)
class LearningRate:
    """The learning rate at any point of training: ``base`` times :func:`lr_factor` of the named
    schedule over ``epochs`` (what the builder makes of a config's ``optim.lr`` and ``schedule``)."""

    base: float
    name: str
    epochs: int
    milestones: tuple = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0

    def __call__(self, epochs_done: float) -> float:
        return self.base * lr_factor(self.name, epochs_done, self.epochs, self.milestones, self.gamma,
                                     self.warmup_epochs)
