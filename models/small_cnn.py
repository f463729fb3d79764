"""A small CNN for 8×8 and 28×28 grayscale digits (scikit-learn digits, MNIST, Fashion-MNIST).

The layout of TRADES' MNIST ``SmallCNN`` (Zhang et al. 2019): conv32–conv32–pool–conv64–conv64–
pool–fc200–fc200–fc, with 3×3 convolutions padded so that 8×8 inputs fit too, and a BatchNorm
after every convolution — the place where λ-conditioning (dual BN + FiLM) acts.

The fully connected head holds about nine tenths of the parameters (at 28×28, 32/64 channels) and
has no BatchNorm, so by default λ does not reach it. Two options condition it too (conditioned
networks only):

* ``film_head``: FiLM (from the same λ code, in the network's FiLM form) after each hidden linear
  layer, before its ReLU;
* ``dual_head``: a second head of the same shape for λ = 0, routed per example like the dual
  BatchNorm (λ = 0 → ``classifier_clean``, λ > 0 → ``classifier``): the accurate end gets a
  classifier of its own on the shared convolutional features.

At one fixed λ both fold into the plain network's head (:meth:`fold_head`), so an exported model
is the plain small CNN whatever the options.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from oat.conditioning import Conditioning, ConditioningConfig, FiLM
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
        film_head: bool = False,
        dual_head: bool = False,
    ):
        super().__init__(num_classes, in_channels, conditioning, mean, std)
        if input_size % 4:
            raise ValueError(f"small_cnn needs an input size divisible by 4, got {input_size}")
        if (film_head or dual_head) and conditioning is None:
            raise ValueError("film_head and dual_head condition the head on λ: they need a conditioned network")
        if film_head and not conditioning.film:
            raise ValueError("film_head needs FiLM (film: true)")
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
        self.classifier_clean = copy.deepcopy(self.classifier) if dual_head else None
        if dual_head:
            for module in self.classifier_clean.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()  # its own initialisation, not a copy of the other head's
        self.head_films = None
        if film_head:
            self.head_films = nn.ModuleList(
                FiLM(hidden, conditioning.code_dim, conditioning.film_width, conditioning.film_form) for _ in range(2))

    def forward_features(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x), cond))
            if index % 2 == 1:
                x = F.max_pool2d(x, 2)
        return x

    def forward_head(self, features: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        if self.head_films is None and self.classifier_clean is None:
            return self.classifier(features)
        logits = self._head(self.classifier, features, cond)
        if self.classifier_clean is None:
            return logits
        # Both heads on the whole batch, each example keeping its own: tensor operations only (a
        # served network traces), and the gradient reaches only the head an example used. The
        # head is 3.5% of the network's multiply-accumulates at 28×28, so the second costs little.
        clean = (cond.lam == 0)[:, None]
        return torch.where(clean, self._head(self.classifier_clean, features, cond), logits)

    def _head(self, head: nn.Sequential, features: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """``head`` (flatten, linear, ReLU, linear, ReLU, linear) with FiLM after its hidden linears."""
        h = features.flatten(1)
        for layer, film in zip((head[1], head[3]), self.head_films or (None, None)):
            h = layer(h)
            h = F.relu(film(h, cond.code) if film is not None else h)
        return head[5](h)

    @property
    def separate_lambdas(self) -> list[float]:
        separate = super().separate_lambdas
        return sorted({0.0, *separate}) if self.classifier_clean is not None else separate

    @torch.no_grad()
    def fold_head(self, cond: Conditioning) -> None:
        """At the one λ of ``cond``: the routed head becomes ``classifier``, each hidden FiLM folds
        into its linear layer (``W ← diag(γ)·W``, ``b ← γ ⊙ b + β``), and both extras go."""
        if self.classifier_clean is not None:
            if float(cond.lam[0]) == 0:
                self.classifier.load_state_dict(self.classifier_clean.state_dict())
            self.classifier_clean = None
        if self.head_films is not None:
            for layer, film in zip((self.classifier[1], self.classifier[3]), self.head_films):
                gamma, beta = (v[0] for v in film.modulation(cond.code))
                layer.weight.mul_(gamma[:, None])
                layer.bias.copy_(gamma * layer.bias + beta)
            self.head_films = None
