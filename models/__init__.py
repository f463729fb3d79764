"""Architectures, each in a plain and a λ-conditioned version built from the same code.

>>> from oat import models
>>> net = models.create("resnet34", num_classes=10, conditioned=True)
>>> logits = net(images, 0.3)          # images in [0, 1], λ = 0.3
"""

from . import preact_resnet, resnet, small_cnn, vector, wide_resnet  # noqa: F401  (they register)
from .registry import CONDITIONING_OPTIONS, create, names, register

__all__ = ["create", "names", "register", "CONDITIONING_OPTIONS"]
