"""CW∞: L∞ PGD on the Carlini–Wagner margin (Carlini & Wagner 2017; the PGD form used by TRADES/MART)."""

from __future__ import annotations

import torch

from .pgd import PGD


class CW(PGD):
    """PGD ascending the margin ``max_{k≠y} z_k − z_y`` instead of cross-entropy.

    The margin does not saturate the way the softmax does, so it still moves examples that CE-PGD
    leaves stuck at a confidently-correct point. Same arguments as :class:`~oat.attacks.pgd.PGD`
    (without ``loss``); 20 steps by default, as an evaluation attack.
    """

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        steps: int = 20,
        restarts: int = 1,
        random_start: bool = True,
        best: bool = True,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(
            eps, alpha, steps, restarts, random_start, loss="cw", best=best,
            bounds=bounds, seed=seed, generator=generator,
        )
