"""Networks for vector inputs (D,): a linear classifier and a small MLP, e.g. for the Tsipras task.

There is no BatchNorm here, so λ-conditioning has no dual BN to route and acts through FiLM alone
(:class:`oat.conditioning.FiLMLinear`): on the linear classifier, on its input features — which
makes its weight vector a free function of λ, ``w(λ) = γ(λ) ⊙ w`` (a weight mix of two fixed
vectors would confine the model to the classifiers on one line); on the MLP, on each hidden
layer's output, before the ReLU, where the image networks have it after their BatchNorms. The plain
versions are the same layers without FiLM.
"""

from __future__ import annotations

import torch

from oat.conditioning import Conditioning, ConditioningConfig, FiLMLinear
from oat.network import LambdaNetwork

from .registry import register


def _check(conditioning: ConditioningConfig | None) -> None:
    if conditioning is not None and not conditioning.film:
        raise ValueError("vector networks are λ-conditioned through FiLM alone (they have no BatchNorm): "
                         "film=False would leave nothing conditioned")


@register("linear")
class LinearClassifier(LambdaNetwork):
    """``logits = W·x + b`` on normalised features (identity normalisation by default)."""

    def __init__(self, num_classes: int = 2, conditioning: ConditioningConfig | None = None, in_channels: int = 101,
                 mean=0.0, std=1.0):
        _check(conditioning)
        super().__init__(num_classes, in_channels, conditioning, mean, std, input_rank=1)
        self.layer = FiLMLinear(in_channels, num_classes, conditioning, side="input")

    def forward_features(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        return self.layer(x, cond)

    def forward_head(self, features: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        return features

    @torch.no_grad()
    def decision_function(self, lam: float) -> tuple[torch.Tensor, float]:
        """``(w, b)`` with ``logit₁ − logit₀ = w·x + b`` on raw inputs ``x`` at ``lam``: a two-class
        model as one linear classifier, sign(w·x + b) choosing class 1 (what closed forms take)."""
        if self.num_classes != 2:
            raise ValueError(f"a decision function needs two classes, the model has {self.num_classes}")
        code = self.encoder(torch.tensor([float(lam)], device=self.mean.device)) if self.conditioned else None
        weight, bias = self.layer.effective(code)
        std, mean = self.std.reshape(-1), self.mean.reshape(-1)
        weight = weight / std  # the model normalises x as (x − mean) / std before the layer
        bias = bias - weight @ mean
        return (weight[1] - weight[0]).cpu(), float(bias[1] - bias[0])


@register("mlp")
class MLP(LambdaNetwork):
    """``depth`` hidden layers of ``width`` units with ReLU, then a linear layer to the logits."""

    def __init__(self, num_classes: int = 2, conditioning: ConditioningConfig | None = None, in_channels: int = 101,
                 width: int = 128, depth: int = 2, mean=0.0, std=1.0):
        _check(conditioning)
        if width < 1 or depth < 1:
            raise ValueError(f"mlp needs width ≥ 1 and depth ≥ 1, got width={width}, depth={depth}")
        super().__init__(num_classes, in_channels, conditioning, mean, std, input_rank=1)
        sizes = [in_channels] + [width] * depth
        self.hidden = torch.nn.ModuleList(FiLMLinear(i, o, conditioning, side="output")
                                          for i, o in zip(sizes, sizes[1:]))
        self.out = FiLMLinear(width, num_classes, None)

    def forward_features(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x, cond))
        return x

    def forward_head(self, features: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        return self.out(features, None)
