"""Per-example adversarial training objectives with a per-example trade-off weight λ.

Every family is a loss of the form

    ℓ_i = w_clean(λ_i)·CE(f(x_i; λ_i), y_i) + w_adv(λ_i)·CE(f(x'_i; λ_i), y_i)
          + w_kl(λ_i)·KL(p(x_i; λ_i) ‖ p(x'_i; λ_i))

evaluated with each example's own λ (once-for-all adversarial training, Wang et al. 2020):

* ``pgd``    — the OAT paper's PGD-AT family, weights (1 − λ, λ, 0), x' from CE-PGD.
* ``trades`` — TRADES (Zhang et al. 2019), weights (1, 0, β_max·λ), x' from the KL inner
  maximisation; a fixed-β TRADES model is the point λ = β/β_max.
* ``mixed``  — weights (1 − λ, λ(1 − μ), λ·μ·β): PGD-AT and TRADES blended by μ.
* ``mart``   — MART (Wang et al. 2020, ICLR), blended with the clean loss:
  (1 − λ)·CE(f(x), y) + λ·[BCE(f(x'), y) + β·KL(p(x) ‖ p(x'))·(1 − p_y(x))].

An objective is used in two steps so that AWP (:mod:`oat.awp`) can re-evaluate the loss at
perturbed weights on the same adversarial examples:

>>> batch = objective.generate(model, x, y, lam)   # attack only the examples with λ > 0
>>> out = objective.loss(model, batch)             # per-example loss [B], logits, accuracy counts
>>> out.loss.mean().backward()

The attack switches the model to eval mode and back; the loss forward passes run in whatever
mode the model is in (train mode during training), so BatchNorm sees the clean batch and the
adversarial batch as two separate batches, as in the TRADES, MART and OAT reference code.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from numbers import Real
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attacks import PGD, TradesKL, reference_step_size
from .attacks.base import kl_divergence
from .lam import as_lambda
from .registry import Registry

# What an objective calls to attack: attack(model, x, y, lam) -> x_adv (an oat.attacks.Attack, or any such callable).
AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AdversarialBatch:
    """A training batch with adversarial examples for the examples that need them.

    x: clean inputs ``[B, ...]`` in [0, 1]; y: labels ``[B]``; lam: λ per example ``[B]`` (a float
    is broadcast); index: positions (long ``[A]``) of the attacked examples; x_adv: their
    adversarial inputs ``[A, ...]`` (detached), or ``None`` when no example was attacked.

    ``lam`` and ``index`` end up on the inputs' device. Given on the CPU (as the trainer gives
    them), their CPU copies are kept too (``host_lam``, ``host_index``): the loss then routes the
    dual BN from them and no forward waits for the device.
    """

    x: torch.Tensor
    y: torch.Tensor
    lam: torch.Tensor
    x_adv: torch.Tensor | None
    index: torch.Tensor
    host_lam: torch.Tensor | None = field(default=None, init=False, repr=False)
    host_index: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        batch_size = self.x.shape[0]
        lam = as_lambda(self.lam, batch_size)
        index = torch.as_tensor(self.index, dtype=torch.long).reshape(-1)
        if lam.device.type == "cpu" and index.device.type == "cpu":
            self.host_lam, self.host_index = lam, index
        self.lam = lam.to(self.x.device, non_blocking=True)
        if not isinstance(self.y, torch.Tensor) or self.y.shape != (batch_size,):
            raise ValueError(f"y must be a tensor of shape [{batch_size}], got {list(getattr(self.y, 'shape', []))}")
        self.index = index.to(self.x.device, non_blocking=True)
        attacked = self.index.numel()
        if self.x_adv is None:
            if attacked:
                raise ValueError(f"index names {attacked} attacked examples but x_adv is None")
        elif self.x_adv.shape != (attacked,) + self.x.shape[1:]:
            raise ValueError(
                f"x_adv has shape {list(self.x_adv.shape)}; expected {[attacked] + list(self.x.shape[1:])} "
                "(one adversarial input per index)"
            )

    @property
    def lam_adv(self) -> torch.Tensor:
        """λ of the attacked examples, ``[A]``."""
        return self.lam[self.index]

    def routing_lam(self) -> torch.Tensor:
        """λ ``[B]`` to hand the network: the CPU copy when there is one."""
        return self.host_lam if self.host_lam is not None else self.lam

    def routing_lam_adv(self) -> torch.Tensor:
        """λ of the attacked examples ``[A]`` to hand the network."""
        return self.host_lam[self.host_index] if self.host_lam is not None else self.lam_adv

    @property
    def y_adv(self) -> torch.Tensor:
        """Labels of the attacked examples, ``[A]``."""
        return self.y[self.index]


@dataclass
class ObjectiveOutput:
    """What one objective evaluation returns.

    loss: per-example loss ``[B]`` (average it for the update).
    logits_clean: ``[B, C]``. logits_adv: ``[A, C]`` for the attacked examples (``batch.index``),
    or ``None``. clean_correct / adv_correct: detached 0-d counts of correct predictions on the
    clean batch and on the attacked examples; n_adv: how many examples were attacked.
    """

    loss: torch.Tensor
    logits_clean: torch.Tensor
    logits_adv: torch.Tensor | None
    clean_correct: torch.Tensor
    adv_correct: torch.Tensor
    n_adv: int


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Per-example ``KL(p(x) ‖ p(x')) = Σ_k p_k(x)(log p_k(x) − log p_k(x'))``.

    The direction of TRADES' official code (``KLDivLoss(log_softmax(f(x')), softmax(f(x)))``),
    with the gradient kept through f(x) as there.
    """
    return kl_divergence(F.log_softmax(logits_clean, dim=1), F.log_softmax(logits_adv, dim=1))


class Objective(ABC):
    """Base class of the training objectives: :meth:`generate`, then :meth:`loss`.

    Subclasses implement :meth:`combine` (the per-example loss from the two forward passes).
    ``attack`` is called as ``attack(model, x, y, lam) -> x_adv`` on the attacked examples only.
    """

    name: str = ""
    default_attack: str = "pgd"  # the inner maximisation make_objective builds (a key of ATTACK_KINDS)
    attack_choosable: bool = False  # whether make_objective takes attack_kind to pick another

    def __init__(self, attack: AttackFn):
        if not callable(attack):
            raise ValueError(f"attack must be callable as attack(model, x, y, lam), got {attack!r}")
        self.attack = attack

    def attacked(self, lam: torch.Tensor) -> torch.Tensor:
        """Which examples need an adversarial input: those with a nonzero adversarial weight,
        which in every family here are exactly the examples with λ > 0."""
        return lam > 0

    def generate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam) -> AdversarialBatch:
        """Attack the examples with λ > 0 (no attack at all if there are none)."""
        batch_size = x.shape[0]
        lam = as_lambda(lam, batch_size)  # where it is: on the CPU, choosing the examples needs no sync
        index = self.attacked(lam).nonzero().squeeze(1)
        if index.numel() == 0:
            x_adv = None
        elif index.numel() == batch_size:
            x_adv = self.attack(model, x, y, lam).detach()
        else:
            on_device = index.to(x.device, non_blocking=True)
            x_adv = self.attack(model, x[on_device], y[on_device], lam[index]).detach()
        return AdversarialBatch(x, y, lam, x_adv, index)

    def loss(self, model: nn.Module, batch: AdversarialBatch) -> ObjectiveOutput:
        """The per-example loss on a generated batch, in the model's current mode."""
        host = batch.host_lam is not None
        needed = self.attacked(batch.host_lam if host else batch.lam)
        covered = torch.zeros_like(needed)
        covered[batch.host_index if host else batch.index] = True
        if bool((needed & ~covered).any()):
            raise ValueError(
                f"{self.name}: examples with λ > 0 have no adversarial input in the batch "
                "(build it with objective.generate)"
            )
        logits_clean = model(batch.x, batch.routing_lam())
        logits_adv = model(batch.x_adv, batch.routing_lam_adv()) if batch.x_adv is not None else None
        loss = self.combine(batch, logits_clean, logits_adv)
        with torch.no_grad():
            clean_correct = (logits_clean.argmax(dim=1) == batch.y).sum()
            if logits_adv is None:
                adv_correct = torch.zeros((), dtype=torch.long, device=batch.x.device)
            else:
                adv_correct = (logits_adv.argmax(dim=1) == batch.y_adv).sum()
        return ObjectiveOutput(loss, logits_clean, logits_adv, clean_correct, adv_correct, batch.index.numel())

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam) -> ObjectiveOutput:
        """``loss(model, generate(model, x, y, lam))``."""
        return self.loss(model, self.generate(model, x, y, lam))

    @abstractmethod
    def combine(
        self, batch: AdversarialBatch, logits_clean: torch.Tensor, logits_adv: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-example loss ``[B]`` from the clean logits ``[B, C]`` and the attacked examples'
        adversarial logits ``[A, C]`` (``None`` when no example was attacked)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params}{', ' if params else ''}attack={self.attack!r})"

    def params(self) -> dict:
        """The family's own parameters (for logs and configs)."""
        return {}


class WeightedObjective(Objective):
    """ℓ = w_clean(λ)·CE(f(x), y) + w_adv(λ)·CE(f(x'), y) + w_kl(λ)·KL(p(x) ‖ p(x'))."""

    @abstractmethod
    def weights(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w_clean, w_adv, w_kl), each of λ's shape."""

    def combine(self, batch, logits_clean, logits_adv):
        w_clean, w_adv, w_kl = self.weights(batch.lam)
        loss = w_clean * F.cross_entropy(logits_clean, batch.y, reduction="none")
        if logits_adv is None:
            return loss
        index = batch.index
        adv = w_adv[index] * F.cross_entropy(logits_adv, batch.y_adv, reduction="none")
        adv = adv + w_kl[index] * trades_kl(logits_clean[index], logits_adv)
        return loss.index_add(0, index, adv)


class PGDObjective(WeightedObjective):
    """OAT's PGD-AT family (Wang et al. 2020): ℓ = (1 − λ)·CE(f(x), y) + λ·CE(f(x'), y).

    λ = 0 is standard training, λ = 1 Madry et al.'s PGD-AT; x' from CE-PGD.
    """

    name = "pgd"

    def weights(self, lam):
        return 1 - lam, lam, torch.zeros_like(lam)


class TradesObjective(WeightedObjective):
    """TRADES (Zhang et al. 2019) with β = β_max·λ: ℓ = CE(f(x), y) + β_max·λ·KL(p(x) ‖ p(x')).

    A fixed-β TRADES model corresponds to λ = β/β_max; x' from TRADES' KL inner maximisation.
    """

    name = "trades"
    default_attack = "trades"

    def __init__(self, attack: AttackFn, beta_max: float = 6.0):
        super().__init__(attack)
        self.beta_max = _check_number("trades", "beta_max", beta_max, positive=True)

    def weights(self, lam):
        return torch.ones_like(lam), torch.zeros_like(lam), self.beta_max * lam

    def params(self):
        return {"beta_max": self.beta_max}


class MixedObjective(WeightedObjective):
    """PGD-AT and TRADES blended: weights (1 − λ, λ(1 − μ), λ·μ·β).

    μ = 0 is the PGD-AT family; μ = 1 replaces the adversarial CE by TRADES' β-weighted KL.
    """

    name = "mixed"
    attack_choosable = True

    def __init__(self, attack: AttackFn, mu: float = 0.5, beta: float = 6.0):
        super().__init__(attack)
        self.mu = _check_number("mixed", "mu", mu, unit=True)
        self.beta = _check_number("mixed", "beta", beta)

    def weights(self, lam):
        return 1 - lam, lam * (1 - self.mu), lam * (self.mu * self.beta)

    def params(self):
        return {"mu": self.mu, "beta": self.beta}


class MartObjective(Objective):
    """MART (Wang et al., ICLR 2020), blended with the clean loss by λ:

    ℓ = (1 − λ)·CE(f(x), y) + λ·[BCE(f(x'), y) + β·KL(p(x) ‖ p(x'))·(1 − p_y(x))],
    BCE(f(x'), y) = CE(f(x'), y) − log(1.0001 − max_{k≠y} p_k(x') + 1e-12).

    The constants follow the official code: 1.0001 and 1e-12 guard the log, the KL uses
    log(p(x') + 1e-12), and the weight is (1.0000001 − p_y(x)); gradients flow through p(x)
    everywhere. At λ = 1 this is MART exactly; x' from CE-PGD.
    """

    name = "mart"

    def __init__(self, attack: AttackFn, beta: float = 6.0):
        super().__init__(attack)
        self.beta = _check_number("mart", "beta", beta)

    def combine(self, batch, logits_clean, logits_adv):
        lam = batch.lam
        loss = (1 - lam) * F.cross_entropy(logits_clean, batch.y, reduction="none")
        if logits_adv is None:
            return loss
        index, y = batch.index, batch.y_adv
        probs_adv = F.softmax(logits_adv, dim=1)
        is_true = F.one_hot(y, probs_adv.shape[1]).bool()
        # The most likely wrong class: the official code's argsort top-2 without the true class.
        top_wrong = probs_adv.masked_fill(is_true, float("-inf")).amax(dim=1)
        bce = F.cross_entropy(logits_adv, y, reduction="none") - torch.log(1.0001 - top_wrong + 1e-12)
        clean = logits_clean[index]
        kl = kl_divergence(F.log_softmax(clean, dim=1), torch.log(probs_adv + 1e-12))
        true_prob = F.softmax(clean, dim=1).gather(1, y[:, None]).squeeze(1)
        robust = kl * (1.0000001 - true_prob)
        return loss.index_add(0, index, lam[index] * (bce + self.beta * robust))

    def params(self):
        return {"beta": self.beta}


def _check_number(family: str, name: str, value, positive: bool = False, unit: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{family}: {name} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"{family}: {name} must be > 0, got {value}")
    if value < 0:
        raise ValueError(f"{family}: {name} must be ≥ 0, got {value}")
    if unit and value > 1:
        raise ValueError(f"{family}: {name} must lie in [0, 1], got {value}")
    return value


def _pgd_attack(eps, alpha, steps, bounds):
    # Training PGD: plain Madry PGD, one random start, the final iterate (best=False).
    return PGD(eps, alpha=alpha, steps=steps, restarts=1, random_start=True, loss="ce", best=False, bounds=bounds)


def _trades_attack(eps, alpha, steps, bounds):
    return TradesKL(eps, alpha, steps, bounds=bounds)


ATTACK_KINDS = {"pgd": _pgd_attack, "trades": _trades_attack}

OBJECTIVES = Registry("objective")
for _family in (PGDObjective, TradesObjective, MixedObjective, MartObjective):
    OBJECTIVES.register(_family.name, _family)


def objective_names() -> list[str]:
    """Names accepted by :func:`make_objective`."""
    return OBJECTIVES.names()


def make_objective(
    name: str,
    attack: AttackFn | None = None,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    **params,
) -> Objective:
    """Build the objective family ``name`` ("pgd", "trades", "mixed", "mart").

    Either pass a ready ``attack`` or let the family build its own from ``eps``, ``alpha`` and
    ``steps`` (default 10): CE-PGD in training form (``best=False``) for pgd, mixed and mart,
    TRADES' KL attack for trades; ``alpha=None`` is the OAT reference's step
    :func:`~oat.attacks.reference_step_size`, as ``attack.alpha: null`` is in a config; ``bounds``
    is the input box the attack stays in (the dataset's, ``None`` for unbounded inputs). ``mixed``
    takes ``attack_kind="trades"`` to use the KL attack instead. Unknown names and parameters
    raise ``ValueError``.
    """
    cls = OBJECTIVES.get(name)
    OBJECTIVES.check_options(name, params, skip=("attack",), extra=("attack_kind",) if cls.attack_choosable else ())
    kind = params.get("attack_kind", cls.default_attack)
    if kind not in ATTACK_KINDS:
        raise ValueError(f"unknown attack_kind {kind!r}; choose one of {sorted(ATTACK_KINDS)}")
    if attack is None:
        if eps is None:
            raise ValueError(f"objective {name!r} needs eps (or a ready attack)")
        steps = 10 if steps is None else steps
        attack = ATTACK_KINDS[kind](eps, reference_step_size(eps, steps) if alpha is None else alpha, steps, bounds)
    elif eps is not None or alpha is not None or steps is not None or "attack_kind" in params:
        raise ValueError("pass either a ready attack or eps/alpha/steps/attack_kind to build one, not both")
    params.pop("attack_kind", None)
    return cls(attack, **params)
