"""Attacks: λ-aware, eval-mode, ``autograd.grad``-based, projecting the iterate every step.

>>> from oat.attacks import PGD
>>> x_adv = PGD(eps=8 / 255, steps=20, restarts=2, seed=0)(model, x, y, lam=0.3)

Every attack is called as ``attack(model, x, y, lam)`` with ``lam`` a float, a tensor ``[B]``
(one λ per example), or None for a plain ``model(x)``. :func:`autoattack` wraps the
``pyautoattack`` package at one λ; :func:`fosc` measures how well an inner maximisation was solved.
The names evaluation accepts (``pgd-20``, ``apgd-ce``, ``autoattack`` …) are :mod:`.names`'.
"""

from .apgd import APGD
from .autoattack import AutoAttackResult, autoattack
from .base import Attack
from .cw import CW
from .fgsm import FGSM
from .fosc import fosc
from .names import AttackSpec, check_bounds, parse_attack
from .pgd import PGD, reference_step_size
from .square import Square
from .trades import TradesKL

__all__ = [
    "APGD",
    "Attack",
    "AttackSpec",
    "AutoAttackResult",
    "CW",
    "FGSM",
    "PGD",
    "Square",
    "TradesKL",
    "autoattack",
    "check_bounds",
    "fosc",
    "parse_attack",
    "reference_step_size",
]
