"""CIFAR-style ResNet-18 and ResNet-34 (He et al. 2016), as used by the OAT reference.

3×3 stem with 64 channels and no max-pool (32×32 inputs), four stages of basic blocks, global
average pooling. In the conditioned version FiLM follows every main-path BatchNorm (33 in
ResNet-34, as in the reference); shortcut BatchNorms are dual but not FiLM-modulated.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from oat.conditioning import Conditioning, ConditioningConfig
from oat.network import LambdaNetwork

from .registry import register

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut_conv = self.shortcut_bn = None
        if stride != 1 or in_planes != planes:
            self.shortcut_conv = nn.Conv2d(in_planes, planes, 1, stride, bias=False)
            self.shortcut_bn = norm(planes, film=False)

    def forward(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x), cond))
        out = self.bn2(self.conv2(out), cond)
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x), cond)
        return F.relu(out + shortcut)


class ResNet(LambdaNetwork):
    DEPTHS: Sequence[int] = ()  # blocks per stage; each registered depth sets its own

    def __init__(
        self,
        num_classes: int = 10,
        conditioning: ConditioningConfig | None = None,
        in_channels: int = 3,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    ):
        super().__init__(num_classes, in_channels, conditioning, mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = self.norm(64)
        blocks, in_planes = [], 64
        for stage, depth in enumerate(self.DEPTHS):
            planes = 64 * 2**stage
            for index in range(depth):
                stride = 2 if (stage > 0 and index == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, self.norm))
                in_planes = planes
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x), cond))
        for block in self.blocks:
            x = block(x, cond)
        return x


@register("resnet18")
class ResNet18(ResNet):
    DEPTHS = (2, 2, 2, 2)


@register("resnet34")
class ResNet34(ResNet):
    DEPTHS = (3, 4, 6, 3)
