"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016): WRN-16-8 (SVHN), WRN-40-2 (STL-10, 96×96),
WRN-34-10 (the TRADES / RobustBench CIFAR standard).

Pre-activation blocks, (d − 4) / 6 per group, widths 16·k, 32·k, 64·k; global average pooling,
so any input size works. Every BatchNorm is on the main path and FiLM-modulated when conditioned.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from oat.conditioning import Conditioning, ConditioningConfig
from oat.network import LambdaNetwork

from .preact_resnet import PreActBlock
from .registry import register
from .resnet import CIFAR_MEAN, CIFAR_STD


class WideResNet(LambdaNetwork):
    DEPTH, WIDEN = 0, 0  # WRN-depth-widen; each registered size sets its own

    def __init__(
        self,
        num_classes: int = 10,
        conditioning: ConditioningConfig | None = None,
        in_channels: int = 3,
        dropout: float = 0.0,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    ):
        super().__init__(num_classes, in_channels, conditioning, mean, std)
        depth, widen = self.DEPTH, self.WIDEN
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        per_group = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for group, planes in enumerate(widths[1:]):
            for index in range(per_group):
                stride = 2 if (group > 0 and index == 0) else 1
                blocks.append(PreActBlock(in_planes, planes, stride, self.norm, dropout))
                in_planes = planes
        self.blocks = nn.ModuleList(blocks)
        self.bn = self.norm(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x, cond)
        return F.relu(self.bn(x, cond))


@register("wrn16_8")
class WRN16_8(WideResNet):
    DEPTH, WIDEN = 16, 8


@register("wrn40_2")
class WRN40_2(WideResNet):
    DEPTH, WIDEN = 40, 2


@register("wrn34_10")
class WRN34_10(WideResNet):
    DEPTH, WIDEN = 34, 10
