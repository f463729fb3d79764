"""First-order stationarity condition (FOSC) of an inner maximisation (Wang et al. 2019, "On the
Convergence and Robustness of Adversarial Training", Eq. 4)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import check_eps, eval_mode, forward, kl_divergence, per_example_loss

FOSC_LOSSES = ("ce", "cw", "kl")


def fosc(
    model: nn.Module,
    x0: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor | None,
    lam,
    eps: float,
    loss: str = "ce",
) -> torch.Tensor:
    """FOSC per example: ``c(x') = ε‖g‖₁ − ⟨x' − x⁰, g⟩`` with ``g = ∇ₓ ℓ(x')``, shape ``[B]``.

    For x' in the L∞ ball around x⁰, c ≥ 0 (Hölder); c = 0 at a stationary point of the inner
    maximisation over the ball (e.g. the corner ``x⁰ + ε·sign(g)`` of a linear loss), and large
    values mean a poorly solved inner maximisation. ℓ is ``"ce"``, ``"cw"`` (margin) or ``"kl"``
    (``KL(p(x⁰) ‖ p(x'))``, TRADES' loss; ``y`` may then be None). The model runs in eval mode
    (its modes are restored) and only the input gradient is computed.
    """
    eps = check_eps(eps)
    if loss not in FOSC_LOSSES:
        raise ValueError(f"unknown FOSC loss {loss!r}; choose one of {FOSC_LOSSES}")
    if x0.shape != x_adv.shape:
        raise ValueError(f"x0 and x_adv differ in shape: {list(x0.shape)} vs {list(x_adv.shape)}")
    if loss != "kl" and (y is None or y.shape != x0.shape[:1]):
        raise ValueError(f"loss {loss!r} needs labels y of shape [{x0.shape[0]}]")
    x0 = x0.detach()
    x_adv = x_adv.detach().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        logits = forward(model, x_adv, lam)
        if loss == "kl":
            with torch.no_grad():
                log_p_clean = F.log_softmax(forward(model, x0, lam), dim=1)
            losses = kl_divergence(log_p_clean, F.log_softmax(logits, dim=1))
        else:
            losses = per_example_loss(logits, y, loss)
        (grad,) = torch.autograd.grad(losses.sum(), x_adv)
    grad = grad.flatten(1)
    delta = (x_adv.detach() - x0).flatten(1)
    return eps * grad.abs().sum(dim=1) - (delta * grad).sum(dim=1)
