"""A small CNN for 8×8 and 28×28 grayscale digits (scikit-learn digits, MNIST, Fashion-MNIST).

The layout of TRADES' MNIST ``SmallCNN`` (Zhang et al. 2019): conv32–conv32–pool–conv64–conv64–
pool–fc200–fc200–fc, with 3×3 convolutions padded so that 8×8 inputs fit too, and a BatchNorm
after every convolution — the place where λ-conditioning (dual BN + FiLM) acts.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from oat.conditioning import Conditioning, ConditioningConfig
from oat.network import LambdaNetwork

from .registry import register


@register("small_cnn")
class SmallCNN(LambdaNetwork):
    def __init__(
        self,
        num_classes: int = 10,
        conditioning: ConditioningConfig | None = None,
        in_channels: int = 1,
        input_size: int = 28,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 200,
        mean=0.5,
        std=0.5,
    ):
        super().__init__(num_classes, in_channels, conditioning, mean, std)
        if input_size % 4:
            raise ValueError(f"small_cnn needs an input size divisible by 4, got {input_size}")
        c1, c2 = channels
        widths = [(in_channels, c1), (c1, c1), (c1, c2), (c2, c2)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1, bias=False) for i, o in widths)
        self.norms = nn.ModuleList(self.norm(o) for _, o in widths)
        flat = c2 * (input_size // 4) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward_features(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x), cond))
            if index % 2 == 1:
                x = F.max_pool2d(x, 2)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)
