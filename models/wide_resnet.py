"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016): WRN-16-8 (SVHN), WRN-40-2 (STL-10, 96×96),
WRN-34-10 (the TRADES / RobustBench CIFAR standard).

Pre-activation blocks, (d − 4) / 6 per group, widths 16·k, 32·k, 64·k; global average pooling,
so any input size works. Every BatchNorm is on the main path and FiLM-modulated when conditioned.
"""

from __future__ import annotations

from .preact_resnet import PreActResNet
from .registry import register


class WideResNet(PreActResNet):
    DEPTH, WIDEN = 0, 0  # WRN-depth-widen; each registered size sets its own

    def layout(self) -> tuple[int, tuple[int, ...], int]:
        """Stem 16; widths 16·k, 32·k, 64·k; (d − 4) / 6 blocks per stage."""
        if (self.DEPTH - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {self.DEPTH}")
        widen = self.WIDEN
        return 16, (16 * widen, 32 * widen, 64 * widen), (self.DEPTH - 4) // 6


@register("wrn16_8")
class WRN16_8(WideResNet):
    DEPTH, WIDEN = 16, 8


@register("wrn40_2")
class WRN40_2(WideResNet):
    DEPTH, WIDEN = 40, 2


@register("wrn34_10")
class WRN34_10(WideResNet):
    DEPTH, WIDEN = 34, 10
