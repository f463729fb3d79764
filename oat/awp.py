"""Adversarial weight perturbation (AWP; Wu, Xia & Wang, NeurIPS 2020, "Adversarial Weight
Perturbation Helps Robust Generalization").

Before each update, every layer's weight w_l is moved to w_l + v_l with

    v_l = γ·‖w_l‖·g_l / ‖g_l‖,    g_l = ∇_{w_l} ℓ_adv(w)

(one extra forward/backward of the adversarial loss), the training gradient is computed at
w + v, v is removed, and the optimiser applies that gradient to w. Only conv and linear weights
(parameters with more than one dimension) are perturbed: BatchNorm affine parameters, biases and
FiLM biases stay put, as in the authors' code (which perturbs ``weight`` tensors of rank > 1).
The authors take one SGD step on a proxy copy of the model; for a per-layer normalised
direction that step is just g_l, so here the gradient is taken directly with
``torch.autograd.grad`` (no proxy, no ``.grad`` written) and the original weights are saved and
copied back bit for bit.

>>> awp = AWP(gamma=5e-3, warmup_epochs=5)
>>> batch = objective.generate(model, x, y, lam)
>>> loss_fn = lambda: objective.loss(model, batch).loss.mean()
>>> with awp.perturbed(model, loss_fn, epoch):
...     loss = loss_fn()
...     loss.backward()          # gradient at w + v
>>> optimizer.step()             # applied to w (v already removed)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from numbers import Real
from typing import Callable, Iterator

import torch
import torch.nn as nn

#: Guards ‖g‖ = 0 (a layer the loss does not depend on): its perturbation is then zero.
_TINY = 1e-20


def perturbable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters AWP perturbs: trainable tensors of rank > 1 (conv and linear weights)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.dim() > 1]


class AWP:
    """Adversarial weight perturbation around each training step.

    Args:
        gamma: relative size γ of the perturbation, ‖v_l‖ = γ‖w_l‖ (authors: 5e-3; 0 disables).
        warmup_epochs: epochs at the start of training without AWP (epochs are counted from 0,
            so AWP acts from epoch ``warmup_epochs`` on).
    """

    def __init__(self, gamma: float = 5e-3, warmup_epochs: int = 0):
        if isinstance(gamma, bool) or not isinstance(gamma, Real) or not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"AWP gamma must be a finite number ≥ 0, got {gamma!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"AWP warmup_epochs must be an integer ≥ 0, got {warmup_epochs!r}")
        self.gamma = float(gamma)
        self.warmup_epochs = warmup_epochs

    def active(self, epoch: int) -> bool:
        """Whether AWP perturbs the weights in ``epoch``."""
        return self.gamma > 0 and epoch >= self.warmup_epochs

    @contextmanager
    def perturbed(
        self, model: nn.Module, loss_fn: Callable[[], torch.Tensor], epoch: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Hold the model at w + v for the block; restore w exactly on exit, exceptions included.

        ``loss_fn()`` must return the scalar adversarial loss of ``model`` (e.g. the objective's
        mean loss on a fixed :class:`~oat.objectives.AdversarialBatch`); it is called once, in
        the model's current mode, and any running statistics it moves (BatchNorm) are put back.
        Yields the perturbations ``{name: v_l}`` (empty while inactive). Compute the training
        loss and call ``backward()`` inside the block; step the optimiser after it.
        """
        if not self.active(epoch):
            yield {}
            return
        weights = perturbable_weights(model)
        if not weights:
            raise ValueError("AWP found no weight tensor to perturb (no trainable parameter of rank > 1)")
        saved = [p.detach().clone() for _, p in weights]
        try:
            perturbation = self._perturbation(model, loss_fn, weights)
            with torch.no_grad():
                for (_, p), v in zip(weights, perturbation.values()):
                    p.add_(v)
            yield perturbation
        finally:
            with torch.no_grad():
                for (_, p), original in zip(weights, saved):
                    p.copy_(original)

    def _perturbation(self, model, loss_fn, weights) -> dict[str, torch.Tensor]:
        """v_l = γ‖w_l‖·g_l/‖g_l‖ from one forward/backward of ``loss_fn`` at the current weights."""
        # The extra forward runs in train mode during training and would move BatchNorm's running
        # statistics a second time per step; snapshot every buffer and put it back afterwards.
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        try:
            with torch.enable_grad():
                loss = loss_fn()
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise ValueError(
                        "AWP loss_fn must return a scalar tensor (e.g. the mean loss), got "
                        f"{type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else list(loss.shape)}"
                    )
                if not loss.requires_grad:
                    raise ValueError("AWP loss_fn returned a loss with no gradient to the model's weights")
                grads = torch.autograd.grad(loss, [p for _, p in weights], allow_unused=True)
        finally:
            with torch.no_grad():
                for buffer, value in buffers:
                    buffer.copy_(value)
        perturbation = {}
        with torch.no_grad():
            for (name, p), g in zip(weights, grads):
                if g is None:  # the loss does not use this weight: no direction, no perturbation
                    perturbation[name] = torch.zeros_like(p)
                    continue
                scale = self.gamma * p.norm() / (g.norm() + _TINY)
                perturbation[name] = g * scale
        return perturbation

    def __repr__(self) -> str:
        return f"AWP(gamma={self.gamma!r}, warmup_epochs={self.warmup_epochs!r})"
