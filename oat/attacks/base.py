"""What every oat attack shares: the λ-aware forward, eval mode, projection and random starts.

An attack is a small object holding its hyperparameters, called as ``attack(model, x, y, lam)``
(the torchattacks shape, plus λ). ``lam`` is passed to the model unchanged — a float, or a
tensor of shape ``[B]`` with one λ per example — or, when it is ``None``, the model is called as
``model(x)``. Three rules hold for every attack (Madry et al. 2018; Carlini et al. 2019, "On
Evaluating Adversarial Robustness"):

* the model runs in eval mode, so BatchNorm neither uses batch statistics nor updates its
  running statistics; every module's previous mode is restored afterwards, even on error;
* input gradients come from ``torch.autograd.grad(loss, x_adv)``, so no parameter's ``.grad``
  is ever written;
* the iterate itself is projected onto the L∞ ball ``‖x' − x‖∞ ≤ ε`` and the input box
  ``bounds`` after every step (clamping only inside the forward would stall PGD).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import contextmanager
from numbers import Real
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lam import as_lambda
from ..network import LambdaNetwork

LOSSES = ("ce", "cw")


def forward(model: nn.Module, x: torch.Tensor, lam) -> torch.Tensor:
    """Logits of ``model`` at ``x``: ``model(x)`` when ``lam`` is None, else ``model(x, lam)``."""
    return model(x) if lam is None else model(x, lam)


def frozen_lambda(model: nn.Module, lam, x: torch.Tensor):
    """``lam`` as an attack on ``model`` at ``x`` should pass it: for a conditioned
    :class:`~oat.network.LambdaNetwork`, a frozen conditioning built once for the whole attack
    (each layer's λ-dependent scale and shift computed once, not once per step); else ``lam``."""
    if lam is None or not isinstance(model, LambdaNetwork) or not model.conditioned:
        return lam
    return model.condition(as_lambda(lam, x.shape[0]), frozen=True)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every module's own previous mode.

    Restoring per module (not ``model.train(previous)``) keeps deliberately mixed modes, such as
    a frozen BatchNorm inside a network that is otherwise training.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example CW margin ``max_{k≠y} z_k − z_y`` (Carlini & Wagner 2017, L∞ PGD form).

    Positive exactly when some other class beats the true one, so ascending it aims straight at
    misclassification, independent of the softmax's saturation.
    """
    if logits.shape[1] < 2:
        raise ValueError("the margin loss needs at least two classes")
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-example ``KL(p ‖ q) = Σ_k p_k (log p_k − log q_k)`` from log-probabilities.

    Inputs come from ``log_softmax`` of finite logits, so they are finite and a p_k that
    underflows to 0 contributes 0 (no 0·∞).
    """
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Loss of each example, shape ``[B]``: ``"ce"`` (cross-entropy) or ``"cw"`` (margin)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "cw":
        return margin_loss(logits, y)
    raise ValueError(f"unknown attack loss {loss!r}; choose one of {LOSSES}")


def example_noise(seed: int, restart: int, example_ids: torch.Tensor, shape) -> torch.Tensor:
    """U(0, 1) noise ``[B, *shape]`` on the CPU, row b drawn from a generator seeded by (seed,
    restart, example_ids[b]) alone: the same example gets the same noise in any batch, any order,
    any subset of the test set."""
    rows = []
    for example in example_ids.tolist():
        state = np.random.SeedSequence([int(seed) % 2**63, int(restart), int(example)]).generate_state(2, np.uint64)
        generator = torch.Generator().manual_seed(int(state[0] % np.uint64(2**63 - 1)))
        rows.append(torch.rand(tuple(shape), generator=generator))
    return torch.stack(rows) if rows else torch.zeros((0, *shape))


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")
    return float(eps)


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


class Attack(ABC):
    """Base class: validation, eval mode, projection and reproducible randomness.

    Args:
        eps: L∞ radius ε of the threat model (inputs in [0, 1]: 8/255 on CIFAR, 0.3 on MNIST).
        bounds: the input box ``(low, high)``, ``(0.0, 1.0)`` by default; ``None`` for unbounded
            inputs (the synthetic vector task).
        seed: seed for random starts; runs with the same seed draw the same starts.
        generator: a ``torch.Generator`` to draw random starts from instead of ``seed``.

    Randomness: each call that needs random numbers first draws one 63-bit seed — from the
    attack's own generator (``seed`` / ``generator``) or, without one, from torch's global RNG —
    and seeds a fresh generator on the input's device with it. Every call therefore consumes the
    same amount of the outer stream whatever the attack's strength, so two attacks built with the
    same seed see identical random starts batch after batch (what makes "more restarts never
    weaker" hold over a whole test set, not only on the first batch).

    Subclasses implement :meth:`perturb`; call the attack as ``attack(model, x, y, lam)``.

    ``check_inputs`` (default True): refuse inputs outside ``bounds``. The check reads the
    tensor's values, so on an accelerator it waits for the device; a caller that guarantees its
    inputs (the training loop) turns it off.
    """

    check_inputs: bool = True
    freezes_lambda: bool = True  # build one frozen conditioning for the whole call (False: the attack does)

    def __init__(
        self,
        eps: float,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        self.eps = check_eps(eps)
        if bounds is not None:
            if len(bounds) != 2:
                raise ValueError(f"bounds must be (low, high) or None, got {bounds!r}")
            low, high = (float(b) for b in bounds)
            if not low < high:
                raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
            bounds = (low, high)
        self.bounds = bounds
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            generator = torch.Generator().manual_seed(seed)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.seed = seed
        self._generator = generator

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam=None,
                 example_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial examples for ``(x, y)`` at trade-off ``lam``: a detached tensor shaped like ``x``.

        ``example_ids`` (CPU integers ``[B]``, e.g. test-set indices): draw each example's random
        start from its own id and the attack's seed (:func:`example_noise`), so an example's
        attack does not depend on which other examples share its batch."""
        self._check_inputs(x, y)
        if example_ids is not None and (example_ids.device.type != "cpu" or example_ids.shape != x.shape[:1]):
            raise ValueError(f"example_ids must be a CPU tensor of shape [{x.shape[0]}], one id per example")
        x = x.detach()
        with eval_mode(model), torch.enable_grad():
            lam = frozen_lambda(model, lam, x) if self.freezes_lambda else lam
            x_adv = self.perturb(model, x, y, lam, example_ids)
        return x_adv.detach()

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam,
                example_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The attack proper; the model is already in eval mode and ``x`` is detached."""

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor of shape [B, ...]")
        if x.dim() < 2:
            raise ValueError(f"x must have a batch dimension and features, got shape {list(x.shape)}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != x.shape[:1]:
            raise ValueError(
                f"y must be a long tensor of shape [{x.shape[0]}] (one label per example), "
                f"got {getattr(y, 'dtype', type(y).__name__)} of shape {list(getattr(y, 'shape', []))}"
            )
        if self.check_inputs and self.bounds is not None and x.numel():
            low, high = self.bounds
            if bool((x < low).any() | (x > high).any()):
                raise ValueError(
                    f"x has values from {x.min().item():g} to {x.max().item():g}, outside the "
                    f"bounds {self.bounds} (images must be in [0, 1]; normalise inside the model)"
                )

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Π onto {x' : ‖x' − x‖∞ ≤ ε} ∩ bounds, applied to the iterate itself.

        Clamping to the ball first and the box second lands in the intersection because x lies in
        both: the box clamp only moves a coordinate towards x's side of the box edge.
        """
        x_adv = torch.clamp(x_adv, min=x - self.eps, max=x + self.eps)
        if self.bounds is not None:
            x_adv = x_adv.clamp(*self.bounds)
        return x_adv

    def call_generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator on ``device`` for one call, seeded from the attack's stream."""
        outer = self._generator
        seed = torch.randint(
            0, 2**63 - 1, (1,), generator=outer, device=outer.device if outer is not None else "cpu"
        ).item()
        return torch.Generator(device=device).manual_seed(seed)

    def uniform_start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x + U(−ε, ε)ⁿ, projected (Madry et al. 2018's random start)."""
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.project(x + (2 * noise - 1) * self.eps, x)

    def example_start(self, x: torch.Tensor, example_ids: torch.Tensor, seed: int, restart: int) -> torch.Tensor:
        """:meth:`uniform_start` with each example's noise drawn from its own id (:func:`example_noise`)."""
        noise = example_noise(seed, restart, example_ids, x.shape[1:]).to(device=x.device, dtype=x.dtype)
        return self.project(x + (2 * noise - 1) * self.eps, x)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
