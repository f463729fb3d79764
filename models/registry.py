"""The model registry: ``create(name, num_classes=10, conditioned=True, **options)`` and ``names()``.

Each architecture registers one class that builds both versions: ``conditioned=False`` gives the
plain network a dedicated baseline trains (single BN, no FiLM); ``conditioned=True`` the OAT
network. Options that configure the conditioning (:class:`oat.ConditioningConfig`'s fields:
``encoding``, ``code_dim``, ``film``, ``film_width``, ``dual_bn``, ``lambdas``, ``seed``) are
separated from the architecture's own options (``in_channels``, ``input_size``, ``mean``, ``std``…).
"""

from __future__ import annotations

from dataclasses import fields

from oat.conditioning import ConditioningConfig
from oat.network import LambdaNetwork
from oat.registry import Registry

MODELS = Registry("model")
CONDITIONING_OPTIONS = frozenset(f.name for f in fields(ConditioningConfig))


def register(name: str):
    """Class decorator adding an architecture to the registry under ``name``."""
    return MODELS.register(name)


def names() -> list[str]:
    """Names of every registered architecture."""
    return MODELS.names()


def create(
    name: str,
    num_classes: int = 10,
    conditioned: bool = True,
    input_shape: tuple[int, ...] | None = None,
    **options,
) -> LambdaNetwork:
    """Build architecture ``name``; ``conditioned`` picks the OAT or the plain version.

    ``input_shape`` (C, H, W), e.g. a dataset's, sets ``in_channels`` and, for architectures
    whose layout depends on it (``input_size``), the image size; explicit options win. Unknown
    options are refused, naming them, before anything is built; an error raised while building
    keeps its own type and message.
    """
    cls = MODELS.get(name)
    conditioning_options = {k: options.pop(k) for k in list(options) if k in CONDITIONING_OPTIONS}
    if not conditioned and conditioning_options:
        raise ValueError(
            f"options {sorted(conditioning_options)} configure λ-conditioning, "
            "but conditioned=False builds a plain network"
        )
    conditioning = ConditioningConfig(**conditioning_options) if conditioned else None
    if input_shape is not None:
        options.setdefault("in_channels", input_shape[0])
        if "input_size" in MODELS.options(name):
            options.setdefault("input_size", input_shape[-1])
    MODELS.check_options(name, options, skip=("num_classes", "conditioning"))
    return cls(num_classes=num_classes, conditioning=conditioning, **options)
