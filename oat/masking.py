"""Signs that an evaluation overestimates robustness (gradient masking), as AutoAttack's authors
list them (Croce & Hein 2020; Carlini et al. 2019, "On Evaluating Adversarial Robustness"), and
the one rule the training monitor and ``oat eval`` share for "PGD says more than the strong attacks".

Each check reads one λ's evaluation point (see :func:`oat.evaluation.evaluate`):

* ``pgd_above_autoattack`` — overestimation: the share of examples a PGD-family attack leaves
  standing that the APGD-family attacks (or the full AutoAttack) break exceeds ``margin`` plus two
  standard errors (Arxiv 2410.07675's sign, PGD-10 well above AutoAttack);
* ``autoattack_above_pgd`` — an attack that includes APGD-CE (``apgd-ce``, ``apgd``, ``autoattack``)
  lost to a PGD-family one by more than sampling noise (APGD-DLR alone may: another loss);
* ``square_beats_white_box`` — the black-box Square attack breaks examples every white-box attack
  left standing (more than :data:`BLACK_BOX_SHARE`, beyond noise);
* ``zero_gradients`` — more than :data:`ZERO_GRADIENT_SHARE` of the examples have an exactly zero
  input gradient of the cross-entropy (saturated logits: gradient attacks on CE cannot move);
* ``ra_rises_with_eps`` / ``ra_flat_with_eps`` — on a robustness curve (``oat eval --eps-sweep``),
  robust accuracy that grows with ε, or does not fall from ε to 2ε or more.

The first-order stationarity (FOSC) of the final PGD iterate is reported beside them, unflagged:
its scale depends on ε and the loss, so it has no threshold that holds across models.
"""

from __future__ import annotations

import math

import numpy as np

from .attacks.names import WITH_APGD_CE, parse_attack
from .bits import unpack_bits

MARGIN = 0.05  # PGD above the strong attacks' worst case by more than this (plus noise): overestimation
BLACK_BOX_SHARE = 0.01  # Square breaking more than this share that white-box attacks missed
ZERO_GRADIENT_SHARE = 0.05  # more than this share of examples with an exactly zero CE input gradient



def noise(p: float, n: int) -> float:
    """Two binomial standard errors of a share p measured on n examples, plus one example."""
    return 2.0 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)) + 1.0 / max(n, 1)


def overestimation(weak: np.ndarray, strong: np.ndarray, margin: float = MARGIN) -> dict:
    """How far a weak attack's robust accuracy sits above the worst case with a strong one.

    ``weak``, ``strong``: per-example survival (booleans, same examples). ``gap`` is the share
    the weak attack leaves standing and the strong one breaks, which is the weak attack's figure
    minus the two attacks' worst case (and equals weak − strong when the strong attack only ran
    on the weak one's survivors, as in a cascade). ``flagged``: gap > margin + :func:`noise`.
    """
    weak, strong = np.asarray(weak, dtype=bool), np.asarray(strong, dtype=bool)
    n = len(weak)
    gap = float((weak & ~strong).mean()) if n else 0.0
    threshold = margin + noise(gap, n)
    return {"gap": gap, "threshold": threshold, "flagged": bool(gap > threshold)}


def _bits(point: dict, name: str, n: int):
    packed = point.get("per_example", {}).get("robust", {}).get(name)
    return None if packed is None else unpack_bits(packed, n)


def pgd_overestimations(point: dict, n: int, margin: float = MARGIN) -> list[dict]:
    """Per PGD-family attack of one λ's evaluation point: how far its RA sits above the worst case
    with every APGD-family attack of the point (:func:`overestimation`, plus the attacks' names
    as ``weak`` and ``strong``). An older ``eval.json`` without per-attack bits is read from its
    figures: the weak RA minus the lowest strong RA, against ``margin`` alone. The monitor's
    flag and ``oat eval``'s ``pgd_above_autoattack`` are both this."""
    robust = point["robust"]
    strong = [a for a in robust if parse_attack(a).strong]
    if not strong:
        return []
    strong_bits = [_bits(point, a, n) for a in strong]
    out = []
    for weak in (a for a in robust if parse_attack(a).weak):
        weak_bits = _bits(point, weak, n)
        if weak_bits is not None and all(b is not None for b in strong_bits):
            gap = overestimation(weak_bits, np.logical_and.reduce(strong_bits), margin)
        else:
            value = robust[weak] - min(robust[a] for a in strong)
            gap = {"gap": value, "threshold": margin, "flagged": value > margin}
        out.append({"weak": weak, "strong": strong, **gap})
    return out


def point_flags(point: dict, n: int, cascade: bool = False, margin: float = MARGIN) -> list[dict]:
    """The masking flags of one λ's evaluation point measured on ``n`` examples."""
    lam, robust = point["lambda"], point["robust"]
    weak_attacks = [name for name in robust if parse_attack(name).weak]
    flags = []

    def flag(kind: str, message: str) -> None:
        flags.append({"lambda": lam, "kind": kind, "message": f"λ={lam:g}: {message}"})

    for gap in pgd_overestimations(point, n, margin):
        if gap["flagged"]:
            weak = gap["weak"]
            flag("pgd_above_autoattack", f"{weak} RA {robust[weak]:.3f} exceeds the worst case with "
                 f"{'+'.join(gap['strong'])} by {gap['gap']:.3f} (> {gap['threshold']:.3f}): gradient masking?")
    for strong in (a for a in robust if a in WITH_APGD_CE and not cascade):
        for weak in weak_attacks:
            if robust[strong] - robust[weak] > noise(robust[weak], n):
                flag("autoattack_above_pgd", f"{strong} RA {robust[strong]:.3f} exceeds {weak} RA "
                     f"{robust[weak]:.3f} by more than sampling noise")
    _black_box_flags(point, n, flag)
    zero = point.get("checks", {}).get("zero_gradient")
    if zero is not None and zero > ZERO_GRADIENT_SHARE:
        flag("zero_gradients", f"{zero:.1%} of the examples have an exactly zero input gradient "
             f"(> {ZERO_GRADIENT_SHARE:.0%}): saturated logits mask gradient attacks on cross-entropy")
    return flags


def _black_box_flags(point: dict, n: int, flag) -> None:
    white = [a for a in point["robust"] if parse_attack(a).white_box]
    for square in (a for a in point["robust"] if not parse_attack(a).white_box):
        square_bits = _bits(point, square, n)
        white_bits = [_bits(point, a, n) for a in white]
        if square_bits is None or not white or any(b is None for b in white_bits):
            continue
        share = float((np.logical_and.reduce(white_bits) & ~square_bits).mean())
        if share > max(BLACK_BOX_SHARE, noise(share, n)):
            flag("square_beats_white_box", f"the black-box {square} breaks {share:.1%} of the examples every "
                 f"white-box attack ({', '.join(white)}) left standing: gradient masking?")


def curve_flags(lam: float, eps: list[float], robust: list[float], n: int) -> list[dict]:
    """Flags of one λ's robustness curve: RA at radii ``eps`` (increasing) on ``n`` examples; each
    kind at most once, for the first pair of radii that shows it."""
    flags = []
    seen = set()
    for i in range(len(eps)):
        for j in range(i + 1, len(eps)):
            if robust[j] - robust[i] > noise(robust[i], n) and "rises" not in seen:
                seen.add("rises")
                flags.append({"lambda": lam, "kind": "ra_rises_with_eps",
                              "message": f"λ={lam:g}: RA {robust[j]:.3f} at ε={eps[j]:g} exceeds RA {robust[i]:.3f} "
                                         f"at ε={eps[i]:g}: a stronger threat cannot help the model"})
            elif (eps[j] >= 2 * eps[i] > 0 and robust[i] > noise(robust[i], n)  # room to fall, beyond noise
                  and robust[i] - robust[j] <= noise(robust[i], n) and "flat" not in seen):
                seen.add("flat")
                flags.append({"lambda": lam, "kind": "ra_flat_with_eps",
                              "message": f"λ={lam:g}: RA does not fall from ε={eps[i]:g} ({robust[i]:.3f}) to "
                                         f"ε={eps[j]:g} ({robust[j]:.3f}): gradient masking?"})
    return flags
