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

from .attacks import APGD, CW, FGSM, PGD, autoattack
from .attacks.base import eval_mode
from .datasets.base import dataset_tensors, to_unit
from .lam import as_lambda
from .progress import Progress
from .protocol import subset_digest

UNSEEN_LAMBDAS = (0.05, 0.25, 0.5, 0.7, 0.9)
MASKING_GAP = 0.05  # PGD above AutoAttack by more than this: suspect gradient masking

_STEPPED = re.compile(r"^(pgd|cw)-(\d+)(?:x(\d+))?$")
_AUTOATTACK = ("autoattack", "apgd", "apgd-ce", "apgd-t")


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


def _survivors(spec: AttackSpec, model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor,
               examples: torch.Tensor, lam, eps: float, seed: int, batch_size: int,
               ids: torch.Tensor, bounds: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Per attacked (λ, example) pair: still classified correctly after the attack.

    ``examples`` (on x's device): each pair's row of ``x_all``, clean-correct ones only; ``lam``:
    one float for every pair, or a CPU tensor with each pair's λ; ``ids`` (CPU): each pair's
    test-set index, which fixes its random starts in PGD, CW and APGD whatever its batch holds;
    ``bounds``: the input box (the dataset's), which every attack stays in.
    """
    if spec.is_autoattack and bounds != (0.0, 1.0):
        raise ValueError(f"{spec.name} needs inputs in [0, 1] (the package clips to that box); these lie in "
                         f"{'the reals' if bounds is None else list(bounds)}: use pgd-N or cw-N")
    if spec.name == "autoattack":
        return _autoattack_survivors(model, x_all, y_all, examples, lam, eps, seed, batch_size)
    attack = _make_attack(spec, eps, seed, bounds)
    survived = []
    for start in range(0, len(examples), batch_size):
        chunk = slice(start, start + batch_size)
        xb, yb = x_all[examples[chunk]], y_all[examples[chunk]]
        lb = lam[chunk] if isinstance(lam, torch.Tensor) else lam
        robust = torch.ones_like(yb, dtype=torch.bool)
        for part in attack:  # "apgd": APGD-T only on what APGD-CE left, as AutoAttack runs them
            keep = robust.nonzero().squeeze(1)
            lk = lb[keep.cpu()] if isinstance(lb, torch.Tensor) else lb
            x_adv = part(model, xb[keep], yb[keep], lk, example_ids=ids[chunk][keep.cpu()])
            with torch.no_grad():
                robust[keep] = model(x_adv, lk).argmax(1) == yb[keep]
        survived.append(robust)
    return torch.cat(survived) if survived else torch.zeros(0, dtype=torch.bool, device=x_all.device)


def _make_attack(spec: AttackSpec, eps: float, seed: int, bounds: tuple[float, float] | None) -> list:
    """The attack objects a spec runs, in order (several only for ``apgd``)."""
    if spec.family == "fgsm":
        return [FGSM(eps, bounds=bounds)]
    if spec.family in ("pgd", "cw"):
        cls = PGD if spec.family == "pgd" else CW
        return [cls(eps, steps=spec.steps, restarts=spec.restarts, seed=seed, bounds=bounds)]
    losses = {"apgd-ce": ["ce"], "apgd-t": ["dlr-targeted"], "apgd": ["ce", "dlr-targeted"]}[spec.name]
    return [APGD(eps, loss=loss, seed=seed) for loss in losses]


def _autoattack_survivors(model, x_all, y_all, examples, lam, eps, seed, batch_size) -> torch.Tensor:
    """The standard AutoAttack through the package, which takes one λ at a time."""
    survived = torch.zeros(len(examples), dtype=torch.bool, device=x_all.device)
    values = lam.unique().tolist() if isinstance(lam, torch.Tensor) else [lam]
    for value in values:
        pick = (lam == value).nonzero().squeeze(1) if isinstance(lam, torch.Tensor) else torch.arange(len(examples))
        chosen = examples[pick.to(examples.device)]
        result = autoattack(model, x_all[chosen], y_all[chosen], value, eps, version="standard",
                            batch_size=batch_size, seed=seed, device=x_all.device)
        survived[pick.to(survived.device)] = result.robust.to(survived.device)
    return survived


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


def pack_bits(bits: torch.Tensor) -> str:
    """Per-example booleans as a hex string, eight examples a byte (10,000 examples: 2,500 characters)."""
    return np.packbits(bits.detach().cpu().numpy().astype(bool)).tobytes().hex()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The ``n`` booleans :func:`pack_bits` packed."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8), count=n).astype(bool)


def subset_indices(size: int, n: int | None, seed: int) -> torch.Tensor:
    """A fixed, seeded subset of ``n`` of ``size`` test examples (all of them when n is None)."""
    if n is None or n >= size:
        return torch.arange(size)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].sort().values


CPU_BATCH_SIZE = 128
DEVICE_BATCH_SIZE = 500


def default_batch_size(device: torch.device) -> int:
    """Examples per attack call: 128 on the CPU, where larger batches fall out of the caches (PGD-20
    on the Fashion-MNIST CNN costs 1.9× as much per example in batches of 512 as of 128; see
    docs/benchmarks.md), 500 on an accelerator, which wants full batches."""
    return CPU_BATCH_SIZE if torch.device(device).type == "cpu" else DEVICE_BATCH_SIZE


def evaluate(
    model: nn.Module,
    dataset,
    lambdas: Sequence[float],
    attacks: Sequence[str] = ("pgd-20",),
    eps: float = 8 / 255,
    n: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    show_progress: bool = False,
    dataset_name: str | None = None,
    split: str = "test",
    cascade: bool = False,
    mix_lambdas: bool | None = None,
) -> dict:
    """Evaluate ``model`` at every λ in ``lambdas`` with every attack in ``attacks``.

    ``dataset``: a torch Dataset of ([0, 1] image, label) pairs, or :class:`oat.datasets.Splits`
    (its test split is used, and its input bounds bind every attack). Returns what ``eval.json`` holds: ``dataset``, ``split``, ``n``,
    ``eps``, ``norm``, ``subset`` (a fingerprint of the test examples used, so that comparisons can
    check every model saw the same ones; see :mod:`oat.protocol`), ``attacks``, ``seed``,
    ``points`` (per λ: ``lambda``, ``clean``, ``robust`` per attack, ``robust_worst``, and
    ``per_example``: which examples were correct clean and under every attack, as
    :func:`pack_bits` strings in subset order), ``cascade``, ``flags`` and ``seconds``;
    accuracies are fractions in [0, 1]. ``cascade``: see the module docstring.

    ``batch_size``: examples per attack call; None: :func:`default_batch_size` for the device.
    The figures do not depend on it (except the full ``autoattack``'s, whose starts the package
    draws batch by batch).

    ``mix_lambdas``: attack the (λ, example) pairs of every λ together, in batches of
    ``batch_size`` pairs with one λ per example, instead of one λ after another. The figures are
    the same (each example's attack depends only on its own λ, its id and the seed); the batches
    are fuller, which pays on an accelerator, hence the default: on for anything but the CPU.
    """
    specs = [parse_attack(a) for a in attacks]
    lambdas = [float(v) for v in lambdas]
    for lam in lambdas:
        as_lambda(lam, 1)
    if not lambdas:
        raise ValueError("no λ values to evaluate")
    bounds = (0.0, 1.0)
    if hasattr(dataset, "info") and hasattr(dataset, "test"):
        bounds = dataset.info.bounds
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

    if mix_lambdas is None:
        mix_lambdas = device.type != "cpu"
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    groups = [list(range(len(lambdas)))] if mix_lambdas else [[k] for k in range(len(lambdas))]
    started = time.perf_counter()
    correct = torch.zeros(len(lambdas), total, dtype=torch.bool, device=device)
    worst = correct.clone()
    robust = {spec.name: correct.clone() for spec in specs}
    progress = Progress(len(groups) * (1 + len(specs)), "eval", enabled=show_progress)
    with eval_mode(model):
        for gi, group in enumerate(groups):
            # The group's (λ, example) pairs, λ-major: pair p is example p % total at λ group[p // total].
            examples = torch.arange(total, device=device).repeat(len(group))
            pair_lam = torch.tensor([lambdas[k] for k in group], dtype=torch.float32).repeat_interleave(total)
            ids = index.repeat(len(group))
            label = "λ=" + ",".join(f"{lambdas[k]:g}" for k in group)
            with torch.no_grad():
                predictions = torch.cat([model(x_all[examples[s:s + batch_size]], pair_lam[s:s + batch_size]).argmax(1)
                                         for s in range(0, len(examples), batch_size)])
            clean = (predictions == y_all[examples]).view(len(group), total)
            correct[group], worst[group] = clean, clean
            step = gi * (1 + len(specs)) + 1
            progress.update(step, f"{label} clean {clean.float().mean().item():.3f}")
            for si, spec in enumerate(specs):
                attacked = (worst[group] if cascade else clean).flatten().nonzero().squeeze(1)
                survived = torch.zeros(len(examples), dtype=torch.bool, device=device)
                if attacked.numel():
                    on_host = attacked.cpu()
                    survived[attacked] = _survivors(spec, model, x_all, y_all, examples[attacked], pair_lam[on_host],
                                                    eps, seed, batch_size, ids[on_host], bounds)
                robust[spec.name][group] = survived.view(len(group), total)
                worst[group] &= robust[spec.name][group]
                progress.update(step + si + 1, f"{label} {spec.name} {survived.float().mean().item():.3f}")
    points = []
    for k, lam in enumerate(lambdas):
        points.append({"lambda": lam, "clean": correct[k].float().mean().item(),
                       "robust": {name: survived[k].float().mean().item() for name, survived in robust.items()},
                       "robust_worst": worst[k].float().mean().item(),
                       # which examples: lets a comparison bootstrap over the shared test subset
                       "per_example": {"clean": pack_bits(correct[k]), "robust_worst": pack_bits(worst[k])}})
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

