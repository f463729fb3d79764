"""PreAct ResNet-18 (He et al. 2016, "Identity Mappings"), the usual fast-AT CIFAR network.

BatchNorm–ReLU before each convolution; in the conditioned version every BatchNorm is followed by
FiLM (they are all on the main path: the projection shortcut has no norm of its own).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from oat.conditioning import Conditioning, ConditioningConfig
from oat.network import LambdaNetwork

from .registry import register
from .resnet import CIFAR_MEAN, CIFAR_STD


class PreActBlock(nn.Module):
    """The pre-activation basic block (He et al. 2016), with the wide ResNets' dropout between its
    convolutions (Zagoruyko & Komodakis 2016; 0 here, as in PreAct ResNet-18)."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm, dropout: float = 0.0):
        super().__init__()
        self.bn1 = norm(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut_conv = None
        if stride != 1 or in_planes != planes:
            self.shortcut_conv = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        out = F.relu(self.bn1(x, cond))
        shortcut = x if self.shortcut_conv is None else self.shortcut_conv(out)
        out = F.relu(self.bn2(self.conv1(out), cond))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + shortcut


class PreActResNet(LambdaNetwork):
    """A pre-activation ResNet: a 3×3 stem, stages of :class:`PreActBlock` (the first block of each
    stage after the first halves the resolution), a final BatchNorm–ReLU, global average pooling
    and a linear layer. :meth:`layout` gives the widths; the wide ResNets share it all."""

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
        stem, stages, blocks_per_stage = self.layout()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        blocks, in_planes = [], stem
        for stage, planes in enumerate(stages):
            for index in range(blocks_per_stage):
                stride = 2 if (stage > 0 and index == 0) else 1
                blocks.append(PreActBlock(in_planes, planes, stride, self.norm, dropout))
                in_planes = planes
        self.blocks = nn.ModuleList(blocks)
        self.bn = self.norm(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def layout(self) -> tuple[int, tuple[int, ...], int]:
        """(stem width, each stage's width, blocks per stage): PreAct ResNet-18's."""
        return 64, (64, 128, 256, 512), 2

    def forward_features(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x, cond)
        return F.relu(self.bn(x, cond))


@register("preact_resnet18")
class PreActResNet18(PreActResNet):
    """PreAct ResNet-18: 2 blocks in each of 4 stages, 64 to 512 channels."""
