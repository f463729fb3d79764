"""CW∞: L∞ PGD on the Carlini–Wagner margin (Carlini & Wagner 2017; the PGD form used by TRADES/MART)."""

from __future__ import annotations

from .pgd import PGD


class CW(PGD):
    """PGD ascending the margin ``max_{k≠y} z_k − z_y`` instead of cross-entropy.

    The margin does not saturate the way the softmax does, so it still moves examples that CE-PGD
    leaves stuck at a confidently-correct point. Same arguments as :class:`~oat.attacks.pgd.PGD`
    (without ``loss``); 20 steps by default, as an evaluation attack.
    """

    def __init__(self, eps: float, steps: int = 20, **options):
        if "loss" in options:
            raise ValueError("CW's loss is the margin; for cross-entropy use PGD")
        super().__init__(eps, steps=steps, loss="cw", **options)
