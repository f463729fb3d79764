"""The base every oat architecture derives from, and ``fix_lambda`` for outside tools.

A network maps images in [0, 1] and a trade-off weight λ to logits: ``model(x, lam)``.
Normalisation (mean/std) happens inside, so every attack sees the same [0, 1] box. A plain
network (a dedicated baseline) accepts and validates λ but does not depend on it; a conditioned
network encodes λ once per forward and hands the resulting :class:`Conditioning` to every norm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conditioning import (CategoricalEncoder, Conditioning, ConditioningConfig, DualBatchNorm, NormFactory,
                           TripleBatchNorm, make_encoder)
from .lam import as_lambda


class LambdaNetwork(nn.Module, ABC):
    """Base class: subclasses build layers with ``self.norm(channels)`` and implement
    ``forward_features(x, cond)`` (normalised input → features); ``forward_head(features, cond)``
    pools and applies ``self.fc`` unless a subclass overrides it. A subclass whose head is
    conditioned too folds it at one λ in :meth:`fold_head`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        conditioning: ConditioningConfig | None = None,
        mean: Sequence[float] | float = 0.5,
        std: Sequence[float] | float = 0.5,
        input_rank: int = 3,
    ):
        """``input_rank``: 3 for images (C, H, W), 1 for vectors (D,), where ``in_channels`` is D."""
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.conditioning = conditioning
        self.norm = NormFactory(conditioning)
        self.encoder = make_encoder(conditioning) if conditioning is not None else None
        self.register_buffer("mean", _per_channel(mean, in_channels, input_rank))
        self.register_buffer("std", _per_channel(std, in_channels, input_rank))

    @property
    def conditioned(self) -> bool:
        return self.conditioning is not None

    @property
    def serves_every_lambda(self) -> bool:
        """Whether every λ in [0, 1] has a code: a conditioned network with a continuous encoding (a
        categorical one knows only its training values; a plain network has no λ at all)."""
        return self.conditioned and not isinstance(self.encoder, CategoricalEncoder)

    @property
    def separate_lambdas(self) -> list[float]:
        """The λ values served by parameters of their own (a BatchNorm or a head that no other λ
        uses), so the network's figures jump there: [0.0] under the dual BatchNorm, [0.0, 1.0]
        under the triple one, [] for a network whose every λ shares every parameter."""
        if not self.conditioned:
            return []
        routed = [m for m in self.modules() if isinstance(m, (DualBatchNorm, TripleBatchNorm))]
        triple = any(isinstance(m, TripleBatchNorm) for m in routed)
        return ([0.0] if routed else []) + ([1.0] if triple else [])

    def condition(self, lam: torch.Tensor, frozen: bool = False) -> Conditioning:
        """What the layers need to know about λ ``[B]``; ``frozen=True`` for an attack's repeated
        forward passes (see :class:`~oat.conditioning.Conditioning`). λ may live on the CPU while
        the network is on an accelerator: the dual BN's routing is then computed on the CPU and
        nothing waits for the device."""
        host = lam if lam.device.type == "cpu" else None
        lam = lam.to(self.mean.device, non_blocking=True)
        return Conditioning.build(lam, self.encoder(lam), frozen, host)

    def forward(self, x: torch.Tensor, lam=None) -> torch.Tensor:
        """Logits of images ``x`` in [0, 1] at trade-off ``lam`` (float or tensor of shape [B], or
        a :class:`~oat.conditioning.Conditioning` from :meth:`condition` for this batch size)."""
        cond = None
        if isinstance(lam, Conditioning):
            if not self.conditioned:
                raise ValueError("a plain network takes no Conditioning")
            if lam.lam.shape[0] != x.shape[0]:
                raise ValueError(f"the conditioning is for {lam.lam.shape[0]} examples, the batch has {x.shape[0]}")
            cond = lam
        elif self.conditioned:
            cond = self.condition(as_lambda(lam, x.shape[0]))
        elif lam is not None:
            as_lambda(lam, x.shape[0])  # validate even though a plain net ignores it
        x = (x - self.mean) / self.std
        return self.forward_head(self.forward_features(x, cond), cond)

    @abstractmethod
    def forward_features(self, x: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        """Normalised images → features (before global pooling and the classifier)."""

    def forward_head(self, features: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        """Features → logits: by default global average pooling, then the linear layer ``self.fc``."""
        return self.fc(F.adaptive_avg_pool2d(features, 1).flatten(1))

    def fold_head(self, cond: Conditioning) -> None:
        """Fold a conditioned head at the one λ of ``cond`` into the plain network's head, in place
        (:func:`oat.deploy.fold`); nothing to do for a head that does not read λ."""


def _per_channel(value, channels: int, rank: int = 3) -> torch.Tensor:
    values = torch.as_tensor(value, dtype=torch.float32).flatten()
    if values.numel() == 1:
        values = values.expand(channels)
    if values.numel() != channels:
        raise ValueError(f"mean/std has {values.numel()} values for {channels} input channels")
    return values.reshape((1, channels) + (1,) * (rank - 1)).clone()


class FixedLambda(nn.Module):
    """A λ-conditioned network with λ fixed: a plain ``nn.Module`` mapping [0, 1] images to
    logits, as AutoAttack, torchattacks and RobustBench expect.

    The wrapper has no mode of its own: ``training`` is the wrapped model's, so ``.train()`` or
    ``.eval()`` on either reaches both, and a library that saves the wrapper's mode before an
    attack and restores it afterwards (torchattacks does) leaves the model as it found it. A
    wrapper with a mode of its own is born in train mode: restoring that would switch an
    evaluated model to training and let the next forward overwrite BatchNorm's statistics.
    """

    def __init__(self, model: nn.Module, lam: float):
        super().__init__()
        as_lambda(lam, 1)  # validates: a float in [0, 1]
        self.model = model
        self.lam = float(lam)

    @property
    def training(self) -> bool:
        model = self.__dict__.get("_modules", {}).get("model")
        return self.__dict__.get("_training", True) if model is None else model.training

    @training.setter
    def training(self, mode: bool) -> None:
        # nn.Module.train(mode) sets this, then sets every child's: the model's mode follows.
        self.__dict__["_training"] = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.lam)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"


def fix_lambda(model: nn.Module, lam: float) -> FixedLambda:
    """Return ``model`` at a fixed trade-off ``lam``: ``fix_lambda(model, 0.5)(x) == model(x, 0.5)``."""
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1:
            raise ValueError("fix_lambda takes one λ value, not one per example")
        lam = lam.item()
    return FixedLambda(model, lam)


def init_from_plain(conditioned: LambdaNetwork, plain: LambdaNetwork) -> LambdaNetwork:
    """Copy a plain network's weights into its conditioned twin (both BNs get the plain BN's
    parameters and statistics; FiLM stays the identity), e.g. to warm-start OAT from a
    standard-trained model. Every plain tensor must find its place: nothing is dropped silently.
    """
    plain_state = plain.state_dict()
    used: set[str] = set()
    target = conditioned.state_dict()
    for key in target:
        source = key
        for part in (".bn.bn_clean.", ".bn.bn_mixed.", ".bn.bn_adv.", ".bn."):
            if part in key:
                source = key.replace(part, ".")
                break
        if source in plain_state:
            if plain_state[source].shape != target[key].shape:
                raise ValueError(f"shape mismatch for {key}: {list(target[key].shape)} vs {list(plain_state[source].shape)}")
            target[key] = plain_state[source].clone()
            used.add(source)
    missing = sorted(set(plain_state) - used)
    if missing:
        raise ValueError(f"plain weights with no place in the conditioned network: {missing[:5]}")
    conditioned.load_state_dict(target)
    return conditioned
