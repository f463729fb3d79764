"""TRADES' inner maximisation (Zhang et al. 2019, "Theoretically Principled Trade-off between
Robustness and Accuracy", official code ``trades.py``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Attack, check_count, check_positive, forward, kl_divergence


class TradesKL(Attack):
    """Sign-gradient ascent of ``KL(p(x) ‖ p(x'))`` in the L∞ ball, from ``x + 0.001·N(0, I)``.

    p(x) is computed once, in eval mode, and held fixed (detached); the label is not used. The
    final iterate is returned (a training attack, like the official code).

    Args:
        eps: L∞ radius ε (TRADES: 0.031 on CIFAR-10, 0.3 on MNIST).
        alpha: step size; default ``2.5·ε/steps`` as for PGD (TRADES: 0.007 CIFAR, 0.01 MNIST).
        steps: ascent steps (TRADES: 10 CIFAR, 40 MNIST).
        bounds, seed, generator: see :class:`~oat.attacks.base.Attack`.

    Shapes: x ``[B, ...]``, y ``[B]`` (long, checked but unused), λ a float or ``[B]``.
    """

    #: Standard deviation of the start's Gaussian noise: KL's gradient is zero at x' = x exactly.
    start_std = 0.001

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(eps, bounds, seed, generator)
        self.steps = check_count("steps", steps)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else check_positive("alpha", alpha)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam, example_ids=None) -> torch.Tensor:
        with torch.no_grad():
            log_p_clean = F.log_softmax(forward(model, x, lam), dim=1)
        generator = self.call_generator(x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = self.project(x + self.start_std * noise, x)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            log_p_adv = F.log_softmax(forward(model, x_adv, lam), dim=1)
            # Summed per-example KL (the official KLDivLoss(reduction="sum")): batch-size independent steps.
            loss = kl_divergence(log_p_clean, log_p_adv).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = self.project(x_adv.detach() + self.alpha * grad.sign(), x)
        return x_adv.detach()
