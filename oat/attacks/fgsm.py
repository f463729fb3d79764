"""FGSM (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples")."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Attack, forward, per_example_loss


class FGSM(Attack):
    """One signed-gradient step of size ε: ``x' = Π(x + ε·sign ∇ₓ CE(f(x, λ), y))``.

    Shapes: x ``[B, ...]`` in ``bounds``, y ``[B]`` (long), λ a float or ``[B]``; returns ``[B, ...]``.
    """

    def __init__(self, eps: float, bounds: tuple[float, float] | None = (0.0, 1.0)):
        super().__init__(eps, bounds)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam, example_ids=None) -> torch.Tensor:
        x_adv = x.clone().requires_grad_(True)
        # The sum of per-example losses: each example's gradient is its own, whatever the batch size.
        loss = per_example_loss(forward(model, x_adv, lam), y, "ce").sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        return self.project(x + self.eps * grad.sign(), x)
