"""The model registry: ``create(name, num_classes=10, conditioned=True, **options)`` and ``names()``.

Each architecture registers one class that builds both versions: ``conditioned=False`` gives the
plain network a dedicated baseline trains (single BN, no FiLM); ``conditioned=True`` the OAT
network. Options that configure the conditioning (:class:`oat.ConditioningConfig`'s fields:
``encoding``, ``code_dim``, ``film``, ``film_width``, ``dual_bn``, ``lambdas``, ``seed``) are
separated from the architecture's own options (``in_channels``, ``input_size``, ``mean``, ``std``…).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import fields
from typing import Callable

from oat.conditioning import ConditioningConfig
from oat.network import LambdaNetwork

_MODELS: dict[str, Callable[..., LambdaNetwork]] = {}
CONDITIONING_OPTIONS = frozenset(f.name for f in fields(ConditioningConfig))


def register(name: str):
    """Class decorator adding an architecture to the registry under ``name``."""

    def add(cls):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = cls
        return cls

    return add


def names() -> list[str]:
    """Names of every registered architecture."""
    return sorted(_MODELS)


def create(
    name: str,
    num_classes: int = 10,
    conditioned: bool = True,
    input_shape: tuple[int, ...] | None = None,
    **options,
) -> LambdaNetwork:
    """Build architecture ``name``; ``conditioned`` picks the OAT or the plain version.

    ``input_shape`` (C, H, W), e.g. a dataset's, sets ``in_channels`` and, for architectures
    whose layout depends on it (``input_size``), the image size; explicit options win.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known: {', '.join(names())}")
    conditioning_options = {k: options.pop(k) for k in list(options) if k in CONDITIONING_OPTIONS}
    if not conditioned and conditioning_options:
        raise ValueError(
            f"options {sorted(conditioning_options)} configure λ-conditioning, "
            "but conditioned=False builds a plain network"
        )
    conditioning = ConditioningConfig(**conditioning_options) if conditioned else None
    if input_shape is not None:
        options.setdefault("in_channels", input_shape[0])
        if "input_size" in inspect.signature(_MODELS[name]).parameters:
            options.setdefault("input_size", input_shape[-1])
    try:
        return _MODELS[name](num_classes=num_classes, conditioning=conditioning, **options)
    except TypeError as error:  # an unknown architecture option: say which model refused it
        raise ValueError(f"model {name!r}: {error}") from None
