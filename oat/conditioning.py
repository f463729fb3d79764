"""λ-conditioning: encoders of λ, FiLM, and per-example dual BatchNorm.

OAT (Wang et al., NeurIPS 2020) conditions one network on the trade-off weight λ in two ways:

* **FiLM** after a BatchNorm: ``out = γ(λ) ⊙ h + β(λ)`` with per-channel γ, β produced by a small
  MLP from an encoding of λ. By default γ = 1 + Δγ and the MLP's last layer starts at zero, so a
  fresh conditioned network computes exactly what its plain twin with the same weights computes;
  YOTO's near-identity start and the reference's form are options (:class:`FiLM`).
* **Dual BatchNorm**: examples with λ = 0 are normalised by ``bn_clean``, examples with λ > 0 by
  ``bn_adv`` — for their clean and their adversarial forward pass alike. The triple BatchNorm
  (:class:`TripleBatchNorm`) gives λ = 1 a third of its own. Routing is per example
  with index sets computed once per forward (never an integer split of the batch, which breaks
  as soon as the batch is shuffled or sharded), in train and eval mode, and only the BN an
  example used sees it, so only its running statistics move.

With BatchNorm in eval mode (attacks, evaluation) a norm layer is one per-example affine map:
BN's running statistics and FiLM's (γ, β) fold into a scale and shift per example and channel,
one ``addcmul`` instead of a routed BN and a FiLM. Attacks go further: they build their
conditioning once per call with ``frozen=True``, so each layer's scale and shift are computed once
and reused by every step of the attack (parameters are constants there; no attack needs their
gradients).

Everything the encoders hold (the random orthogonal table included) is a registered buffer, so a
saved and reloaded model conditions identically — the reference implementation regenerated its
random encoding on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Registry

REFERENCE_LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)


@dataclass(frozen=True)
class ConditioningConfig:
    """How a conditioned network reads λ.

    encoding: ``"sinusoidal"`` (continuous, default: every λ in [0, 1] means something) or
        ``"categorical"`` (the reference: a row of a fixed random orthogonal matrix per training λ).
    code_dim: size of the λ encoding (the reference's categorical encoding uses 128).
    film: FiLM after every main-path BatchNorm; ``False`` leaves only the dual BN.
    film_width: hidden width of each FiLM MLP; None: twice the layer's channels (the reference's).
    film_form: how the MLP's outputs become γ and β (:class:`FiLM`): ``identity``,
        ``near_identity`` or ``reference``.
    dual_bn: separate BatchNorms for λ = 0 and λ > 0; ``False`` is the single-BN ablation.
    triple_bn: three BatchNorms, for λ = 0, 0 < λ < 1 and λ = 1 (:class:`TripleBatchNorm`).
    lambdas: the training λ values a categorical encoding knows.
    seed: seed of the categorical encoding's random matrix.
    """

    encoding: str = "sinusoidal"
    code_dim: int = 16
    film: bool = True
    film_width: int | None = 64
    film_form: str = "identity"
    dual_bn: bool = True
    triple_bn: bool = False
    lambdas: tuple[float, ...] = REFERENCE_LAMBDAS
    seed: int = 0

    def __post_init__(self):
        ENCODERS.get(self.encoding)  # an unknown name: ValueError naming the closest known one
        if self.code_dim < 1 or (self.film_width is not None and self.film_width < 1):
            raise ValueError("code_dim and film_width must be positive")
        if self.film_form not in FILM_FORMS:
            raise ValueError(f"film_form must be one of {FILM_FORMS}, got {self.film_form!r}")
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))


class Conditioning(NamedTuple):
    """What a conditioned layer needs to know about the batch's λ, computed once per forward.

    lam: λ per example, shape [B]. code: the λ encoding, shape [B, code_dim].
    n_clean: how many examples have λ = 0 (−1 when unknown: :meth:`unrouted`). order / inverse: a
    permutation putting the λ = 0 examples first, and its inverse (only set when the batch mixes
    both kinds). eval_affine: in a frozen conditioning, each norm layer's eval-mode (scale, shift)
    once computed; else None.
    """

    lam: torch.Tensor
    code: torch.Tensor
    n_clean: int
    order: torch.Tensor | None
    inverse: torch.Tensor | None
    eval_affine: dict | None = None

    @classmethod
    def build(cls, lam: torch.Tensor, code: torch.Tensor, frozen: bool = False,
              host: torch.Tensor | None = None) -> "Conditioning":
        """``frozen=True``: an attack's conditioning. Each norm layer's eval-mode scale and shift
        are computed once, without parameter gradients, and kept in ``eval_affine`` for the
        attack's later forward passes (valid while the parameters do not change). ``host``: the
        same λ on the CPU, to route from without waiting for the device."""
        clean = (host if host is not None else lam) == 0
        n_clean = int(clean.sum())  # free on the host; else one device sync per forward, not one per layer
        order = inverse = None
        if 0 < n_clean < lam.shape[0]:
            order = torch.cat([clean.nonzero().squeeze(1), (~clean).nonzero().squeeze(1)])
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel(), device=order.device)
            order, inverse = order.to(lam.device, non_blocking=True), inverse.to(lam.device, non_blocking=True)
        return cls(lam, code, n_clean, order, inverse, {} if frozen else None)

    @classmethod
    def unrouted(cls, lam: torch.Tensor, code: torch.Tensor) -> "Conditioning":
        """A conditioning without the dual BN's routing, for norms in eval mode only (each example
        is mapped by its own λ there and nothing is routed): no host sync and no data-dependent
        shapes, so a served network traces and exports. ``n_clean`` is −1; a norm in train mode
        refuses it."""
        return cls(lam, code, -1, None, None, None)


class SinusoidalEncoder(nn.Module):
    """Continuous λ encoding: ``[sin(πkλ), cos(πkλ)]`` for k = 1 … dim/2 (plus λ if dim is odd).

    Smooth in λ and injective on [0, 1] (cos(πλ) alone is), so λ values never seen in training
    interpolate between those that were.
    """

    def __init__(self, dim: int = 16):
        super().__init__()
        self.dim = dim
        self.register_buffer("frequencies", math.pi * torch.arange(1, dim // 2 + 1).float())

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        return self.encode(lam)

    def encode(self, lam: torch.Tensor) -> torch.Tensor:
        """The code of λ ``[B]``: ``[B, dim]`` (every λ has one; nothing to check)."""
        angles = lam[:, None] * self.frequencies
        parts = [torch.sin(angles), torch.cos(angles)]
        if self.dim % 2:
            parts.append(lam[:, None])
        return torch.cat(parts, dim=1)


class CategoricalEncoder(nn.Module):
    """The reference's encoding: λ's position in the training set of λ values picks a row of a
    fixed random orthogonal matrix. λ values outside that set have no encoding (ValueError)."""

    def __init__(self, lambdas: Sequence[float] = REFERENCE_LAMBDAS, dim: int = 128, seed: int = 0):
        super().__init__()
        if len(lambdas) > dim:
            raise ValueError(f"categorical encoding of {len(lambdas)} λ values needs code_dim ≥ {len(lambdas)}")
        self.dim = dim
        generator = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        self.register_buffer("lambdas", torch.tensor(list(lambdas), dtype=torch.float32))
        self.register_buffer("table", q[: len(lambdas)].contiguous())

    TOLERANCE = 1e-6  # how far a λ may lie from a known value and still be it

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        unknown = ~self.known(lam)
        if bool(unknown.any()):
            values = sorted({round(v, 6) for v in lam[unknown].tolist()})
            raise ValueError(
                f"λ values {values} have no categorical encoding; it knows only "
                f"{[round(v, 6) for v in self.lambdas.tolist()]} (use encoding='sinusoidal' for unseen λ)"
            )
        return self.encode(lam)

    def known(self, lam: torch.Tensor) -> torch.Tensor:
        """Per example, whether λ is one of the training values (and so has a code)."""
        return (lam[:, None] - self.lambdas[None, :]).abs().amin(dim=1) <= self.TOLERANCE

    def encode(self, lam: torch.Tensor) -> torch.Tensor:
        """The row of the nearest known λ, unchecked (the caller checks with :meth:`known`): tensor
        operations only, so a served network traces and exports."""
        return self.table[(lam[:, None] - self.lambdas[None, :]).abs().argmin(dim=1)]


ENCODERS = Registry("λ encoding")  # name → builder from a ConditioningConfig
ENCODERS.register("sinusoidal", lambda cfg: SinusoidalEncoder(cfg.code_dim))
ENCODERS.register("categorical", lambda cfg: CategoricalEncoder(cfg.lambdas, cfg.code_dim, cfg.seed))


def make_encoder(config: ConditioningConfig) -> nn.Module:
    return ENCODERS.get(config.encoding)(config)


class FiLM(nn.Module):
    """Feature-wise linear modulation ``h ↦ γ(c) ⊙ h + β(c)`` from a λ code ``c``.

    MLP: Linear(code_dim → width) – LeakyReLU – Linear(width → 2·channels), whose two halves give
    γ and β in one of three forms (:data:`FILM_FORMS`):

    * ``identity`` (default): γ = 1 + Δγ, β as is, the last layer zero-initialised, so a fresh
      FiLM is exactly the identity and a conditioned network starts as its plain twin;
    * ``near_identity`` (YOTO, Dosovitskiy & Djolonga 2020): γ = 1 + 0.1·Δγ, β = 0.1·β under the
      ordinary initialisation: near, not at, the identity, so λ moves the features from the start;
    * ``reference`` (the OAT reference code's ``models/FiLM.py``): γ = lrelu(·), β = lrelu(·),
      hidden LeakyReLU of slope 0.01, ordinary initialisation (a fresh γ is about 0.08, not 1).

    ``width`` None: 2·channels, the reference's width.
    """

    def __init__(self, channels: int, code_dim: int, width: int | None = 64, form: str = "identity"):
        super().__init__()
        if form not in FILM_FORMS:
            raise ValueError(f"film_form must be one of {FILM_FORMS}, got {form!r}")
        self.channels = channels
        self.form = form
        width = 2 * channels if width is None else width
        slope = 0.01 if form == "reference" else 0.2
        self.mlp = nn.Sequential(
            nn.Linear(code_dim, width), nn.LeakyReLU(slope), nn.Linear(width, 2 * channels)
        )
        if form == "identity":
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def modulation(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(γ, β)``, each ``[B, channels]``, for λ codes ``[B, code_dim]``."""
        first, second = self.mlp(code).chunk(2, dim=1)
        if self.form == "identity":
            return 1 + first, second
        if self.form == "near_identity":
            return 1 + 0.1 * first, 0.1 * second
        return F.leaky_relu(first, 0.01), F.leaky_relu(second, 0.01)

    def forward(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(code)
        shape = (h.shape[0], self.channels) + (1,) * (h.dim() - 2)
        return torch.addcmul(beta.reshape(shape), h, gamma.reshape(shape))


FILM_FORMS = ("identity", "near_identity", "reference")


class FiLMLinear(nn.Module):
    """A linear layer of a vector network, its input (``side="input"``) or its output
    (``side="output"``) FiLM-modulated by λ when conditioned: the conditioning of networks without
    BatchNorm, where there is nothing to make dual. λ = 0 is told apart by its own code.

    At a fixed λ FiLM is a per-feature affine map, so it folds into the layer (:meth:`fold`): on the
    input, ``W ← W·diag(γ)``, ``b ← b + Wβ``; on the output, ``W ← diag(γ)·W``, ``b ← γ⊙b + β``.
    On a linear classifier FiLM on the input makes the weight vector itself a function of λ,
    ``w(λ) = γ(λ) ⊙ w``, free in every coordinate, so one model can follow any path of classifiers.
    """

    SIDES = ("input", "output")

    def __init__(self, in_features: int, out_features: int, config: ConditioningConfig | None, side: str = "output"):
        super().__init__()
        if side not in self.SIDES:
            raise ValueError(f"side must be one of {self.SIDES}, got {side!r}")
        self.side = side
        self.linear = nn.Linear(in_features, out_features)
        width = in_features if side == "input" else out_features
        self.film = FiLM(width, config.code_dim, config.film_width, config.film_form) if config is not None else None

    def forward(self, h: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        if self.film is None:
            return self.linear(h)
        if self.side == "input":
            return self.linear(self.film(h, cond.code))
        return self.film(self.linear(h), cond.code)

    @torch.no_grad()
    def effective(self, code: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (weight, bias) of the one linear map this layer is at the λ whose code
        ``[1, code_dim]`` is given (its own when it has no FiLM)."""
        weight, bias = self.linear.weight.clone(), self.linear.bias.clone()
        if self.film is None:
            return weight, bias
        gamma, beta = (v[0] for v in self.film.modulation(code))
        if self.side == "input":
            return weight * gamma[None, :], bias + weight @ beta
        return weight * gamma[:, None], gamma * bias + beta

    @torch.no_grad()
    def fold(self, code: torch.Tensor) -> None:
        """Fold FiLM at the one λ whose code ``[1, code_dim]`` is given into the linear layer, in
        place, and drop it: what remains is a plain ``nn.Linear``'s parameters."""
        weight, bias = self.effective(code)
        self.linear.weight.copy_(weight)
        self.linear.bias.copy_(bias)
        self.film = None


class BatchNorm2d(nn.BatchNorm2d):
    """The plain networks' BatchNorm: same call signature as the conditioned norm, λ ignored."""

    def forward(self, h: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        return super().forward(h)


class DualBatchNorm(nn.Module):
    """Two BatchNorms routed per example: λ = 0 → ``bn_clean``, λ > 0 → ``bn_adv``."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn_clean = nn.BatchNorm2d(channels)
        self.bn_adv = nn.BatchNorm2d(channels)

    def forward(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if cond.n_clean < 0:
            raise RuntimeError("an unrouted conditioning (a served network) needs its BatchNorms in eval mode")
        batch = h.shape[0]
        if cond.n_clean == batch:
            return self.bn_clean(h)
        if cond.n_clean == 0:
            return self.bn_adv(h)
        grouped = h.index_select(0, cond.order)
        clean = self.bn_clean(grouped[: cond.n_clean])
        adv = self.bn_adv(grouped[cond.n_clean :])
        return torch.cat([clean, adv]).index_select(0, cond.inverse)


class TripleBatchNorm(nn.Module):
    """Three BatchNorms routed per example: λ = 0 → ``bn_clean``, 0 < λ < 1 → ``bn_mixed``,
    λ = 1 → ``bn_adv``: the robust end gets statistics and an affine map of its own, as the
    accurate end does under the dual BN."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn_clean = nn.BatchNorm2d(channels)
        self.bn_mixed = nn.BatchNorm2d(channels)
        self.bn_adv = nn.BatchNorm2d(channels)

    def forward(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if cond.n_clean < 0:
            raise RuntimeError("an unrouted conditioning (a served network) needs its BatchNorms in eval mode")
        groups = [cond.lam == 0, (cond.lam > 0) & (cond.lam < 1), cond.lam == 1]
        out = torch.empty_like(h)
        for mask, bn in zip(groups, (self.bn_clean, self.bn_mixed, self.bn_adv)):
            index = mask.nonzero().squeeze(1)
            if index.numel() == h.shape[0]:
                return bn(h)
            if index.numel():
                out = out.index_copy(0, index, bn(h.index_select(0, index)))
        return out


class LambdaNorm(nn.Module):
    """A conditioned network's norm layer: (dual or single) BatchNorm, then FiLM if enabled."""

    def __init__(self, channels: int, config: ConditioningConfig, film: bool = True):
        super().__init__()
        # Every kind is called as bn(h, cond); the single-BN ablation's simply ignores λ.
        if config.triple_bn:
            self.bn = TripleBatchNorm(channels)
        else:
            self.bn = DualBatchNorm(channels) if config.dual_bn else BatchNorm2d(channels)
        self.film = (FiLM(channels, config.code_dim, config.film_width, config.film_form)
                     if film and config.film else None)

    def forward(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self._batch_norms_in_eval_mode():
            scale, shift = self.eval_affine(cond)
            shape = (h.shape[0], -1) + (1,) * (h.dim() - 2)
            return torch.addcmul(shift.reshape(shape), h, scale.reshape(shape))
        h = self.bn(h, cond)
        if self.film is not None:
            h = self.film(h, cond.code)
        return h

    def _batch_norms(self) -> tuple[nn.Module, ...]:
        """The BatchNorms inside: (bn_clean, bn_adv) for the dual BN, (bn_clean, bn_mixed, bn_adv)
        for the triple one, the one BN otherwise."""
        return tuple(m for m in self.bn.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def _batch_norms_in_eval_mode(self) -> bool:
        return all(not bn.training and bn.running_mean is not None for bn in self._batch_norms())

    def eval_affine(self, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example ``(scale, shift)``, each ``[B, C]``, such that this layer in eval mode maps
        ``h`` to ``scale ⊙ h + shift``: the routed BN's running-statistics affine, then FiLM."""
        if cond.eval_affine is None:
            return self._eval_affine(cond)
        key = id(self)
        if key not in cond.eval_affine:
            with torch.no_grad():
                cond.eval_affine[key] = self._eval_affine(cond)
        return cond.eval_affine[key]

    def _eval_affine(self, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        affines = []
        for bn in self._batch_norms():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            affines.append((scale, shift))
        batch = cond.lam.shape[0]
        if len(affines) > 1:
            clean = (cond.lam == 0)[:, None]
            (clean_scale, clean_shift), (adv_scale, adv_shift) = affines[0], affines[-1]
            if len(affines) == 3:  # the triple BN: 0 < λ < 1 has its own
                mixed = (cond.lam < 1)[:, None]
                adv_scale = torch.where(mixed, affines[1][0], adv_scale)
                adv_shift = torch.where(mixed, affines[1][1], adv_shift)
            scale, shift = torch.where(clean, clean_scale, adv_scale), torch.where(clean, clean_shift, adv_shift)
        else:
            scale, shift = affines[0][0].expand(batch, -1), affines[0][1].expand(batch, -1)
        if self.film is not None:
            gamma, beta = self.film.modulation(cond.code)
            scale, shift = scale * gamma, torch.addcmul(beta, shift, gamma)
        return scale, shift


@dataclass
class NormFactory:
    """``norm(channels, film=True)`` for an architecture: plain BN, or a :class:`LambdaNorm`.

    Blocks only ever call ``norm(channels)`` (main path, FiLM-modulated) or
    ``norm(channels, film=False)`` (shortcuts), so one block definition serves both versions.
    """

    config: ConditioningConfig | None = None

    def __call__(self, channels: int, film: bool = True) -> nn.Module:
        if self.config is None:
            return BatchNorm2d(channels)
        return LambdaNorm(channels, self.config, film=film)


def conditioning_overhead(conditioned: nn.Module, plain: nn.Module) -> float:
    """Extra parameters of a conditioned network relative to its plain twin (0.05 = +5%)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return count(conditioned) / count(plain) - 1.0
