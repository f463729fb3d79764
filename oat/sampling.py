"""λ samplers: which trade-off weight each training example gets.

OAT (Wang et al., NeurIPS 2020) trains one network for every λ by drawing λ per example. The
reference draws from Λ = {0, 0.1, 0.2, 0.3, 0.4, 1.0}, forcing ⌈B/|Λ|⌉ examples of every batch to
λ = 0 (so the clean BatchNorm of a dual-BN network sees a steady share of the batch) and spreading
the rest uniformly over the non-zero values. The continuous samplers here keep the same forced
share of zeros for the same reason: under a continuous law λ = 0 has probability 0. The sandwich
sampler forces a share of both ends, λ = 0 and λ = 1, into every batch.

Every sampler owns its ``torch.Generator`` (never the global RNG, which data loading and dropout
also consume), so a seed fixes the whole stream, and ``state_dict()`` / ``load_state_dict()``
carry the generator state through a checkpoint so that a resumed run continues the same stream.
Samples are float32 tensors of shape ``[B]`` on the CPU; move them with ``.to(device)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from numbers import Real
from typing import Sequence

import scipy.special
import torch

from .conditioning import REFERENCE_LAMBDAS
from .registry import Registry


def _check_unit(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def forced_zero_count(batch_size: int, share: float) -> int:
    """⌈B·share⌉, robust to float rounding (6 · (1/6) must give 1, not 2)."""
    return min(batch_size, math.ceil(round(batch_size * share, 9)))


class Sampler(ABC):
    """Base class: ``sample(batch_size) -> Tensor[B]`` (float32, CPU) from a seeded generator."""

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    @abstractmethod
    def sample(self, batch_size: int) -> torch.Tensor:
        """λ for one batch: a float32 tensor of shape ``[batch_size]``."""

    @property
    def discrete_values(self) -> tuple[float, ...] | None:
        """Every λ the sampler can draw, sorted, when that is a finite set (what a categorical
        λ encoding must know); None for a continuous law."""
        return None

    def state_dict(self) -> dict:
        """The generator state (and the sampler's kind, to catch a mismatched load)."""
        return {"kind": type(self).__name__, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream saved by :meth:`state_dict`."""
        kind = state.get("kind")
        if kind != type(self).__name__:
            raise ValueError(f"state of a {kind} cannot be loaded into a {type(self).__name__}")
        if "generator" not in state:
            raise ValueError("sampler state has no 'generator' entry")
        self.generator.set_state(state["generator"])

    def _with_forced_zeros(self, values: torch.Tensor, n_zero: int) -> torch.Tensor:
        """Set ``n_zero`` entries, at random positions, to λ = 0."""
        if n_zero:
            positions = torch.randperm(values.shape[0], generator=self.generator)[:n_zero]
            values[positions] = 0.0
        return values


class ReferenceSampler(Sampler):
    """The OAT reference scheme (Wang et al. 2020): λ from a finite set Λ.

    ⌈B/|Λ|⌉ examples per batch are forced to λ = 0, at random positions; the others are uniform
    over the non-zero values of Λ. If Λ has no 0, every example is uniform over Λ (nothing is
    forced); if Λ = {0}, every example gets 0.
    """

    def __init__(self, values: Sequence[float] = REFERENCE_LAMBDAS, seed: int = 0):
        super().__init__(seed)
        values = tuple(_check_unit("λ value", v) for v in values)
        if not values:
            raise ValueError("ReferenceSampler needs at least one λ value")
        if len(set(values)) != len(values):
            raise ValueError(f"λ values must be distinct, got {values}")
        self.values = values
        self.nonzero = torch.tensor([v for v in values if v != 0.0], dtype=torch.float32)
        self.has_zero = 0.0 in values

    @property
    def discrete_values(self) -> tuple[float, ...]:
        return self.values

    def sample(self, batch_size: int) -> torch.Tensor:
        batch_size = _check_batch_size(batch_size)
        if self.nonzero.numel() == 0:
            return torch.zeros(batch_size)
        picks = torch.randint(self.nonzero.numel(), (batch_size,), generator=self.generator)
        lam = self.nonzero[picks]
        n_zero = math.ceil(batch_size / len(self.values)) if self.has_zero else 0
        return self._with_forced_zeros(lam, n_zero)


class UniformSampler(Sampler):
    """λ ~ U[low, high], with ⌈B·zero_share⌉ examples per batch forced to λ = 0.

    Without the forced zeros λ = 0 would have probability 0, and the clean BatchNorm of a dual-BN
    network would never be trained.
    """

    def __init__(self, low: float = 0.0, high: float = 1.0, zero_share: float = 1 / 6, seed: int = 0):
        super().__init__(seed)
        self.low = _check_unit("low", low)
        self.high = _check_unit("high", high)
        if self.low > self.high:
            raise ValueError(f"low must not exceed high, got low={low}, high={high}")
        self.zero_share = _check_unit("zero_share", zero_share)

    def sample(self, batch_size: int) -> torch.Tensor:
        batch_size = _check_batch_size(batch_size)
        lam = self.low + (self.high - self.low) * torch.rand(batch_size, generator=self.generator)
        # low + (high − low)·u can round a hair past high; λ outside [0, 1] is rejected downstream.
        lam = lam.clamp_(self.low, self.high)
        return self._with_forced_zeros(lam, forced_zero_count(batch_size, self.zero_share))


class BetaSampler(Sampler):
    """λ ~ Beta(a, b), with ⌈B·zero_share⌉ examples per batch forced to λ = 0.

    Drawn by inverse-transform sampling, λ = I⁻¹(u; a, b) for u ~ U(0, 1) from the sampler's own
    generator (the regularised incomplete beta function's inverse, ``scipy.special.betaincinv``):
    exact, seeded, and one uniform per example, so the stream does not depend on rejection counts.
    """

    def __init__(self, a: float, b: float, zero_share: float = 1 / 6, seed: int = 0):
        super().__init__(seed)
        for name, value in (("a", a), ("b", b)):
            if isinstance(value, bool) or not isinstance(value, Real) or not float(value) > 0:
                raise ValueError(f"Beta parameter {name} must be a positive number, got {value!r}")
        self.a, self.b = float(a), float(b)
        self.zero_share = _check_unit("zero_share", zero_share)

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    def sample(self, batch_size: int) -> torch.Tensor:
        batch_size = _check_batch_size(batch_size)
        u = torch.rand(batch_size, generator=self.generator, dtype=torch.float64)
        lam = torch.from_numpy(scipy.special.betaincinv(self.a, self.b, u.numpy()))
        lam = lam.to(torch.float32).clamp_(0.0, 1.0)
        return self._with_forced_zeros(lam, forced_zero_count(batch_size, self.zero_share))


class SandwichSampler(Sampler):
    """Both ends in every batch, the interior between them (the slimmable networks' "sandwich
    rule", Yu & Huang 2019: train the smallest and largest width in every step).

    Exactly ⌈B·zero_share⌉ examples per batch get λ = 0 and ⌈B·one_share⌉ get λ = 1, at random
    positions; the rest are drawn from the interior: uniformly from ``values`` when given (a
    discrete set, as the reference's), else from U(low, high). So the accurate and the robust end
    each train on a fixed share of every batch however the interior is spread.
    """

    def __init__(self, zero_share: float = 1 / 6, one_share: float = 1 / 6, values: Sequence[float] | None = None,
                 low: float = 0.0, high: float = 1.0, seed: int = 0):
        super().__init__(seed)
        self.zero_share = _check_unit("zero_share", zero_share)
        self.one_share = _check_unit("one_share", one_share)
        if self.zero_share + self.one_share > 1:
            raise ValueError(f"zero_share + one_share must be at most 1, got {zero_share} + {one_share}")
        self.low, self.high = _check_unit("low", low), _check_unit("high", high)
        if self.low > self.high:
            raise ValueError(f"low must not exceed high, got low={low}, high={high}")
        self.values = None
        if values is not None:
            self.values = tuple(_check_unit("λ value", v) for v in values)
            if not self.values:
                raise ValueError("values, when given, must hold at least one λ value")

    @property
    def discrete_values(self) -> tuple[float, ...] | None:
        return None if self.values is None else tuple(sorted({0.0, 1.0, *self.values}))

    def sample(self, batch_size: int) -> torch.Tensor:
        batch_size = _check_batch_size(batch_size)
        if self.values is not None:
            table = torch.tensor(self.values, dtype=torch.float32)
            lam = table[torch.randint(len(self.values), (batch_size,), generator=self.generator)]
        else:
            lam = self.low + (self.high - self.low) * torch.rand(batch_size, generator=self.generator)
            lam = lam.clamp_(self.low, self.high)
        n_zero = forced_zero_count(batch_size, self.zero_share)
        n_one = min(batch_size - n_zero, forced_zero_count(batch_size, self.one_share))
        positions = torch.randperm(batch_size, generator=self.generator)
        lam[positions[:n_zero]] = 0.0
        lam[positions[n_zero:n_zero + n_one]] = 1.0
        return lam


class FixedSampler(Sampler):
    """Every example gets the same λ: the dedicated fixed-λ baselines."""

    def __init__(self, value: float, seed: int = 0):
        super().__init__(seed)
        self.value = _check_unit("λ value", value)

    @property
    def discrete_values(self) -> tuple[float, ...]:
        return (self.value,)

    def sample(self, batch_size: int) -> torch.Tensor:
        return torch.full((_check_batch_size(batch_size),), self.value, dtype=torch.float32)


SAMPLERS = Registry("λ sampler")
for _name, _cls in (("reference", ReferenceSampler), ("uniform", UniformSampler), ("beta", BetaSampler),
                    ("sandwich", SandwichSampler), ("fixed", FixedSampler)):
    SAMPLERS.register(_name, _cls)


def sampler_names() -> list[str]:
    """Names accepted by :func:`make_sampler`."""
    return SAMPLERS.names()


def make_sampler(name: str, seed: int = 0, **params) -> Sampler:
    """Build the λ sampler ``name`` ("reference", "uniform", "beta", "sandwich", "fixed") with ``params``.

    Unknown names, unknown or missing parameters and out-of-range values raise ``ValueError``.
    """
    cls = SAMPLERS.get(name)
    SAMPLERS.check_options(name, params, skip=("seed",))
    return cls(seed=seed, **params)
