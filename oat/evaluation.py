"""Per-λ robustness evaluation of one model, shaped like RobustBench's: a function from
(model, data, λ values, attacks) to a plain dict.

One model (one checkpoint) serves every λ — there is no per-λ checkpoint selection. For each λ
the clean accuracy and, for each attack, the robust accuracy are measured on the same fixed,
seeded subset of the test set; an example counts as robust only if it is classified correctly
clean and after the attack. ``robust_worst`` is the per-example worst case over every attack
run. Attacks run with BatchNorm in eval mode; the model's mode is restored afterwards.

``cascade=True`` runs each attack only on the examples that every earlier attack failed on (what
AutoAttack's standard version does inside): the worst case is measured the same way at a fraction
of the cost, since no attack spends its steps on an example already broken. Each attack's own
figure is then its robust accuracy *after the earlier attacks* (cumulative), so only the first
attack's figure is a standalone one; the results say ``"cascade": true``.

Attack names: ``fgsm``; ``pgd-N`` / ``pgd-NxR`` (CE-PGD, N steps of 2.5ε/N, R random restarts,
worst case over restarts); ``cw-N`` / ``cw-NxR`` (CW∞-margin PGD); ``autoattack`` (the standard
version through pyautoattack: APGD-CE, APGD-T, FAB-T, Square); ``apgd`` (its APGD-CE + APGD-T
pair, the cheap subset); ``apgd-ce``, ``apgd-t``.
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .attacks import CW, FGSM, PGD, autoattack
from .attacks.base import eval_mode
from .datasets.base import dataset_tensors, to_unit
from .lam import as_lambda
from .progress import Progress
from .protocol import subset_digest

UNSEEN_LAMBDAS = (0.05, 0.25, 0.5, 0.7, 0.9)
MASKING_GAP = 0.05  # PGD above AutoAttack by more than this: suspect gradient masking

_STEPPED = re.compile(r"^(pgd|cw)-(\d+)(?:x(\d+))?$")
_AUTOATTACK = {
    "autoattack": ("standard", None),
    "apgd": ("custom", ["apgd-ce", "apgd-t"]),
    "apgd-ce": ("custom", ["apgd-ce"]),
    "apgd-t": ("custom", ["apgd-t"]),
}


@dataclass(frozen=True)
class AttackSpec:
    """A parsed attack name: ``family`` is fgsm, pgd, cw or autoattack."""

    name: str
    family: str
    steps: int = 0
    restarts: int = 1

    @property
    def is_autoattack(self) -> bool:
        return self.family == "autoattack"


def parse_attack(name: str) -> AttackSpec:
    """Parse an attack name (see the module docstring); unknown names raise ``ValueError``."""
    name = name.strip().lower()
    if name == "fgsm":
        return AttackSpec(name, "fgsm")
    if name in _AUTOATTACK:
        return AttackSpec(name, "autoattack")
    match = _STEPPED.match(name)
    if match:
        steps, restarts = int(match.group(2)), int(match.group(3) or 1)
        if steps < 1 or restarts < 1:
            raise ValueError(f"attack {name!r}: steps and restarts must be at least 1")
        return AttackSpec(name, match.group(1), steps, restarts)
    raise ValueError(
        f"unknown attack {name!r}; use fgsm, pgd-N, pgd-NxR (R restarts), cw-N, cw-NxR, autoattack, apgd, "
        "apgd-ce or apgd-t"
    )


def _robust_flags(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float, eps: float,
                  seed: int, batch_size: int, ids: torch.Tensor) -> torch.Tensor:
    """Per example: still classified correctly after the attack (x holds clean-correct examples;
    ``ids``, their test-set indices, give PGD and CW each example's own random start)."""
    if spec.is_autoattack:
        version, attacks = _AUTOATTACK[spec.name]
        result = autoattack(model, x, y, lam, eps, version=version, attacks=attacks,
                            batch_size=batch_size, seed=seed, device=x.device)
        return result.robust.to(x.device)
    if spec.family == "fgsm":
        attack = FGSM(eps)
    else:
        cls = PGD if spec.family == "pgd" else CW
        attack = cls(eps, steps=spec.steps, restarts=spec.restarts, seed=seed)
    flags = []
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        x_adv = attack(model, xb, yb, lam, example_ids=ids[start:start + batch_size])
        with torch.no_grad():
            flags.append(model(x_adv, lam).argmax(1) == yb)
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool, device=x.device)


def _noise(p: float, n: int) -> float:
    """Two binomial standard errors of an accuracy p measured on n examples (at least one example)."""
    return 2.0 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)) + 1.0 / max(n, 1)


def consistency_flags(points: list[dict], n: int) -> list[dict]:
    """Flags for each λ where an AutoAttack-family RA exceeds a PGD-family RA by more than
    sampling noise (the stronger attack should never lose), or where PGD's exceeds AutoAttack's by
    more than 5 points (a sign of gradient masking: PGD is being fooled, not the model robust)."""
    flags = []
    for point in points:
        robust = point["robust"]
        strong = [a for a in robust if parse_attack(a).is_autoattack]
        weak = [a for a in robust if parse_attack(a).family in ("pgd", "cw")]
        for a in strong:
            for p in weak:
                gap = robust[a] - robust[p]
                if gap > _noise(robust[p], n):
                    flags.append({"lambda": point["lambda"], "kind": "autoattack_above_pgd",
                                  "message": f"λ={point['lambda']:g}: {a} RA {robust[a]:.3f} exceeds {p} RA "
                                             f"{robust[p]:.3f} by more than sampling noise"})
                elif -gap > MASKING_GAP:
                    flags.append({"lambda": point["lambda"], "kind": "pgd_above_autoattack",
                                  "message": f"λ={point['lambda']:g}: {p} RA {robust[p]:.3f} exceeds {a} RA "
                                             f"{robust[a]:.3f} by more than 5 points (gradient masking?)"})
    return flags


def pack_flags(flags: torch.Tensor) -> str:
    """Per-example booleans as a hex string, eight examples a byte (10,000 examples: 2,500 characters)."""
    return np.packbits(flags.detach().cpu().numpy().astype(bool)).tobytes().hex()


def unpack_flags(text: str, n: int) -> np.ndarray:
    """The ``n`` booleans :func:`pack_flags` packed."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8), count=n).astype(bool)


def subset_indices(size: int, n: int | None, seed: int) -> torch.Tensor:
    """A fixed, seeded subset of ``n`` of ``size`` test examples (all of them when n is None)."""
    if n is None or n >= size:
        return torch.arange(size)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def evaluate(
    model: nn.Module,
    dataset,
    lambdas: Sequence[float],
    attacks: Sequence[str] = ("pgd-20",),
    eps: float = 8 / 255,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    show_progress: bool = False,
    dataset_name: str | None = None,
    split: str = "test",
    cascade: bool = False,
) -> dict:
    """Evaluate ``model`` at every λ in ``lambdas`` with every attack in ``attacks``.

    ``dataset``: a torch Dataset of ([0, 1] image, label) pairs, or :class:`oat.datasets.Splits`
    (its test split is used). Returns what ``eval.json`` holds: ``dataset``, ``split``, ``n``,
    ``eps``, ``norm``, ``subset`` (a fingerprint of the test examples used, so that comparisons can
    check every model saw the same ones; see :mod:`oat.protocol`), ``attacks``, ``seed``,
    ``points`` (per λ: ``lambda``, ``clean``, ``robust`` per attack, ``robust_worst``, and
    ``per_example``: which examples were correct clean and under every attack, as
    :func:`pack_flags` strings in subset order), ``cascade``, ``flags`` and ``seconds``;
    accuracies are fractions in [0, 1]. ``cascade``: see the module docstring.
    """
    specs = [parse_attack(a) for a in attacks]
    lambdas = [float(v) for v in lambdas]
    for lam in lambdas:
        as_lambda(lam, 1)
    if not lambdas:
        raise ValueError("no λ values to evaluate")
    if hasattr(dataset, "info") and hasattr(dataset, "test"):
        dataset_name = dataset_name or dataset.info.name
        split = dataset.test_name  # "validation" for a split carved from the training set
        dataset = dataset.test
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    images, labels = dataset_tensors(dataset)
    index = subset_indices(len(labels), n, seed)
    x_all = to_unit(images[index].to(device))
    y_all = labels[index].to(device)
    total = len(y_all)

    started = time.perf_counter()
    points = []
    progress = Progress(len(lambdas) * (1 + len(specs)), "eval", enabled=show_progress)
    with eval_mode(model):
        for li, lam in enumerate(lambdas):
            with torch.no_grad():
                predictions = torch.cat([model(x_all[s:s + batch_size], lam).argmax(1)
                                         for s in range(0, total, batch_size)])
            correct = predictions == y_all
            worst = correct.clone()
            robust = {}
            step = li * (1 + len(specs)) + 1
            progress.update(step, f"λ={lam:g} clean {correct.float().mean().item():.3f}")
            for si, spec in enumerate(specs):
                attacked = (worst if cascade else correct).nonzero().squeeze(1)
                flags = torch.zeros_like(correct)
                if attacked.numel():
                    flags[attacked] = _robust_flags(spec, model, x_all[attacked], y_all[attacked], lam, eps, seed,
                                                    batch_size, index[attacked.cpu()])
                robust[spec.name] = flags.float().mean().item()
                worst &= flags
                progress.update(step + si + 1, f"λ={lam:g} {spec.name} {robust[spec.name]:.3f}")
            points.append({"lambda": lam, "clean": correct.float().mean().item(), "robust": robust,
                           "robust_worst": worst.float().mean().item(),
                           # which examples: lets a comparison bootstrap over the shared test subset
                           "per_example": {"clean": pack_flags(correct), "robust_worst": pack_flags(worst)}})
    return {
        "dataset": dataset_name,
        "split": split,
        "n": total,
        "eps": float(eps),
        "norm": "Linf",
        "subset": subset_digest(index, labels[index]),
        "checkpoint": None,
        "attacks": [s.name for s in specs],
        "seed": seed,
        "cascade": bool(cascade),
        "points": points,
        "flags": consistency_flags(points, total),
        "seconds": time.perf_counter() - started,
    }


def format_table(result: dict) -> str:
    """The evaluation as a terminal table (accuracies in percent)."""
    attacks = result["attacks"]
    header = ["λ", "clean"] + attacks + (["worst"] if attacks else [])
    rows = []
    for point in result["points"]:
        row = [f"{point['lambda']:g}", f"{100 * point['clean']:.1f}"]
        row += [f"{100 * point['robust'][a]:.1f}" for a in attacks]
        if attacks:
            row.append(f"{100 * point['robust_worst']:.1f}")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [f"{result['dataset']} {result['split']}, n={result['n']}, ε={result['eps']:.4g} (L∞), accuracy in %",
           line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    for flag in result["flags"]:
        out.append(f"FLAG {flag['message']}")
    return "\n".join(out)


def print_table(result: dict, stream=None) -> None:
    print(format_table(result), file=stream or sys.stdout)

