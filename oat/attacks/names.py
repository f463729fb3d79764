"""Attack names: what ``eval.attacks``, ``oat eval --attacks`` and the training monitor accept.

Every name belongs to a family registered here, on the shared :class:`~oat.registry.Registry`, with
what the rest of oat needs to know of it: how to build its attacks, whether it needs inputs in
[0, 1] (the pyautoattack package's iterations clip to that box), and its side in the masking
checks — *weak* (fixed-step gradient attacks that overestimate under gradient masking) or *strong*
(AutoAttack's family, which the overestimation is measured against).

Names: ``fgsm``; ``pgd-N`` / ``pgd-NxR`` (CE-PGD, N steps of 2.5ε/N, R random restarts, worst case
over restarts); ``cw-N`` / ``cw-NxR`` (CW∞-margin PGD); ``autoattack`` (the standard version
through pyautoattack: APGD-CE, APGD-T, FAB-T, Square); ``apgd`` (its APGD-CE + APGD-T pair, the
cheap subset); ``apgd-ce``, ``apgd-t``; ``apgd-dlr`` (APGD on the untargeted DLR loss, blind neither
to saturated logits nor to nine target classes' cost); ``square`` (the black-box Square attack alone,
5,000 queries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ..registry import Registry
from .apgd import APGD
from .cw import CW
from .fgsm import FGSM
from .pgd import PGD
from .square import Square


@dataclass(frozen=True)
class Family:
    """A registered attack family. ``build(spec, eps, seed, bounds)``: the attack objects a name of
    the family runs, in order (None: run through :func:`oat.attacks.autoattack` instead);
    ``unit_box``: needs inputs in [0, 1]; ``side``: "weak", "strong" or "" (neither);
    ``white_box``: follows the model's gradients (Square only queries it)."""

    build: Callable
    unit_box: bool = False
    side: str = ""
    stepped: bool = False  # named NAME-N or NAME-NxR
    white_box: bool = True


FAMILIES = Registry("attack")
_APGD_LOSSES = {"apgd-ce": ["ce"], "apgd-dlr": ["dlr"], "apgd-t": ["dlr-targeted"], "apgd": ["ce", "dlr-targeted"]}
_STEPPED = re.compile(r"^([a-z]+)-(\d+)(?:x(\d+))?$")
WITH_APGD_CE = ("apgd-ce", "apgd", "autoattack")  # never weaker than PGD on cross-entropy, short of noise

FAMILIES.register("fgsm", Family(lambda spec, eps, seed, bounds: [FGSM(eps, bounds=bounds)], side="weak"))
FAMILIES.register("pgd", Family(lambda spec, eps, seed, bounds: [
    PGD(eps, steps=spec.steps, restarts=spec.restarts, seed=seed, bounds=bounds)], side="weak", stepped=True))
FAMILIES.register("cw", Family(lambda spec, eps, seed, bounds: [
    CW(eps, steps=spec.steps, restarts=spec.restarts, seed=seed, bounds=bounds)], side="weak", stepped=True))
FAMILIES.register("apgd", Family(lambda spec, eps, seed, bounds: [
    APGD(eps, loss=loss, seed=seed) for loss in _APGD_LOSSES[spec.name]], unit_box=True, side="strong"))
FAMILIES.register("square", Family(lambda spec, eps, seed, bounds: [Square(eps, seed=seed)], unit_box=True,
                                   white_box=False))
FAMILIES.register("autoattack", Family(lambda spec, eps, seed, bounds: None, unit_box=True, side="strong"))


@dataclass(frozen=True)
class AttackSpec:
    """A parsed attack name: its ``family`` (a key of :data:`FAMILIES`), steps and restarts."""

    name: str
    family: str
    steps: int = 0
    restarts: int = 1

    @property
    def kind(self) -> Family:
        return FAMILIES.get(self.family)

    @property
    def strong(self) -> bool:
        """One of AutoAttack's attacks or the whole of it (the strong side of a comparison)."""
        return self.kind.side == "strong"

    @property
    def weak(self) -> bool:
        """A fixed-step gradient attack, which overestimates under gradient masking."""
        return self.kind.side == "weak"

    @property
    def white_box(self) -> bool:
        return self.kind.white_box

    @property
    def loss(self) -> str:
        """The loss a PGD-family attack ascends (and its FOSC is measured on)."""
        return "cw" if self.family == "cw" else "ce"

    def build(self, eps: float, seed: int, bounds: tuple[float, float] | None) -> list | None:
        """The attack objects this name runs, in order; None for the full AutoAttack."""
        return self.kind.build(self, eps, seed, bounds)


def parse_attack(name: str) -> AttackSpec:
    """Parse an attack name (see the module docstring); unknown names raise ``ValueError``."""
    name = str(name).strip().lower()
    if name in _APGD_LOSSES:
        return AttackSpec(name, "apgd")
    if name in FAMILIES and not FAMILIES.get(name).stepped:
        return AttackSpec(name, name)
    match = _STEPPED.match(name)
    if match and match.group(1) in FAMILIES and FAMILIES.get(match.group(1)).stepped:
        steps, restarts = int(match.group(2)), int(match.group(3) or 1)
        if steps < 1 or restarts < 1:
            raise ValueError(f"attack {name!r}: steps and restarts must be at least 1")
        return AttackSpec(name, match.group(1), steps, restarts)
    raise ValueError(
        f"unknown attack {name!r}; use fgsm, pgd-N, pgd-NxR (R restarts), cw-N, cw-NxR, autoattack, apgd, "
        "apgd-ce, apgd-dlr, apgd-t or square"
    )


def check_bounds(attacks: Sequence[str], bounds: tuple[float, float] | None) -> None:
    """Refuse (ValueError) an attack that cannot search the dataset's threat model: the APGD family,
    Square and AutoAttack run the package's iterations, which clip to [0, 1], so on any other box or
    on unbounded inputs (the whole L∞ ball) only oat's own FGSM, PGD and CW apply."""
    for name in attacks:
        spec = parse_attack(name)
        if spec.kind.unit_box and bounds != (0.0, 1.0):
            where = "unbounded (the whole L∞ ball)" if bounds is None else f"in {list(bounds)}"
            raise ValueError(f"{spec.name} needs inputs in [0, 1] (the package clips to that box); this dataset's "
                             f"inputs are {where}: use fgsm, pgd-N or cw-N")


def check_monitor_attacks(attacks: Sequence[str]) -> None:
    """The training monitor compares the two sides: it needs at least one weak and one strong
    attack (ValueError otherwise)."""
    specs = [parse_attack(a) for a in attacks]
    if not any(s.weak for s in specs) or not any(s.strong for s in specs):
        raise ValueError("must hold a PGD-family attack (pgd-N, cw-N, fgsm) and an APGD-family one (apgd-ce, "
                         f"apgd-dlr, apgd, autoattack) to compare, got {list(attacks)}")
