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

Attack names (``fgsm``, ``pgd-N``, ``pgd-NxR``, ``cw-N``, ``apgd-ce``, ``apgd``, ``autoattack`` …)
are :mod:`oat.attacks.names`'.

Every point also carries the masking checks of :mod:`oat.masking` (the share of examples with a
zero input gradient, the FOSC of each PGD-family attack's final iterate), and ``flags`` lists
those that fire.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attacks import autoattack, fosc
from .attacks.names import AttackSpec, check_bounds, parse_attack
from .bits import pack_bits
from .attacks.base import eval_mode
from .datasets import closed_form
from .datasets.base import dataset_tensors, to_unit
from .lam import as_lambda
from .masking import curve_flags, point_flags
from .progress import Progress
from .protocol import subset_digest

UNSEEN_LAMBDAS = (0.05, 0.25, 0.5, 0.7, 0.9)

def _survivors(spec: AttackSpec, model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor,
               examples: torch.Tensor, lam, eps: float, seed: int, batch_size: int,
               ids: torch.Tensor, bounds: tuple[float, float] | None = (0.0, 1.0)):
    """Per attacked (λ, example) pair: still classified correctly after the attack; and, for the
    PGD family, the FOSC of each pair's final iterate (else None).

    ``examples`` (on x's device): each pair's row of ``x_all``, clean-correct ones only; ``lam``:
    one float for every pair, or a CPU tensor with each pair's λ; ``ids`` (CPU): each pair's
    test-set index, which fixes its random starts in PGD, CW and APGD whatever its batch holds;
    ``bounds``: the input box (the dataset's), which every attack stays in.
    """
    check_bounds([spec.name], bounds)
    attack = spec.build(eps, seed, bounds)
    if attack is None:  # the full AutoAttack: through the package
        return _autoattack_survivors(model, x_all, y_all, examples, lam, eps, seed, batch_size), None
    survived, stationarity = [], []
    for start in range(0, len(examples), batch_size):
        chunk = slice(start, start + batch_size)
        xb, yb = x_all[examples[chunk]], y_all[examples[chunk]]
        lb = lam[chunk] if isinstance(lam, torch.Tensor) else lam
        robust = torch.ones_like(yb, dtype=torch.bool)
        for part in attack:  # "apgd": APGD-T only on what APGD-CE left, as AutoAttack runs them
            keep = robust.nonzero().squeeze(1)
            if keep.numel() == 0:  # an earlier part broke every example: nothing left to attack
                break
            lk = lb[keep.cpu()] if isinstance(lb, torch.Tensor) else lb
            x_adv = part(model, xb[keep], yb[keep], lk, example_ids=ids[chunk][keep.cpu()])
            with torch.no_grad():
                robust[keep] = model(x_adv, lk).argmax(1) == yb[keep]
            if spec.family in ("pgd", "cw"):
                stationarity.append(fosc(model, xb[keep], x_adv, yb[keep], lk, eps, loss=spec.loss))
        survived.append(robust)
    if not survived:
        return torch.zeros(0, dtype=torch.bool, device=x_all.device), None
    return torch.cat(survived), torch.cat(stationarity) if stationarity else None


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


def consistency_flags(points: list[dict], n: int, cascade: bool = False) -> list[dict]:
    """Every point's masking flags (:func:`oat.masking.point_flags`), in order."""
    return [flag for point in points for flag in point_flags(point, n, cascade)]




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
    split: str | None = None,
    cascade: bool = False,
    mix_lambdas: bool | None = None,
) -> dict:
    """Evaluate ``model`` at every λ in ``lambdas`` with every attack in ``attacks``.

    ``dataset``: a torch Dataset of ([0, 1] image, label) pairs, or :class:`oat.datasets.Splits`
    (its input bounds bind every attack). ``split``: which split of a ``Splits`` ("test" or
    "validation"; None: the validation split when one was carved, else the test split), or the name
    a plain Dataset is reported under (None: "test"). Returns what ``eval.json`` holds: ``dataset``, ``split``, ``n``,
    ``eps``, ``norm``, ``subset`` (a fingerprint of the test examples used, so that comparisons can
    check every model saw the same ones; see :mod:`oat.protocol`), ``attacks``, ``seed``,
    ``points`` (per λ: ``lambda``, ``clean``, ``robust`` per attack, ``robust_worst``;
    ``per_example``: which examples were correct clean, under every attack and under each one
    (``robust``), as :func:`pack_bits` strings in subset order; ``checks``: ``zero_gradient``, the
    share of examples whose cross-entropy has an exactly zero input gradient, and ``fosc``, per
    PGD-family attack the mean and 90% quantile of its final iterates' FOSC), ``cascade``,
    ``flags`` (:mod:`oat.masking`) and ``seconds``;
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
    bounds, info = (0.0, 1.0), None
    if hasattr(dataset, "info") and hasattr(dataset, "split"):
        info = dataset.info
        bounds = info.bounds
        dataset_name = dataset_name or dataset.info.name
        split = split or dataset.evaluated  # the validation split when one was carved, else the test split
        dataset = dataset.split(split)
    split = split or "test"
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
    worst, zero_gradient = correct.clone(), correct.clone()
    robust = {spec.name: correct.clone() for spec in specs}
    stationarity = {spec.name: [None] * len(lambdas) for spec in specs if spec.family in ("pgd", "cw")}
    progress = Progress(len(groups) * (1 + len(specs)), "eval", enabled=show_progress)
    with eval_mode(model):
        for gi, group in enumerate(groups):
            # The group's (λ, example) pairs, λ-major: pair p is example p % total at λ group[p // total].
            examples = torch.arange(total, device=device).repeat(len(group))
            pair_lam = torch.tensor([lambdas[k] for k in group], dtype=torch.float32).repeat_interleave(total)
            ids = index.repeat(len(group))
            label = "λ=" + ",".join(f"{lambdas[k]:g}" for k in group)
            clean, zero = _clean_pass(model, x_all, y_all, examples, pair_lam, batch_size)
            correct[group], worst[group] = clean.view(len(group), total), clean.view(len(group), total)
            zero_gradient[group] = zero.view(len(group), total)
            step = gi * (1 + len(specs)) + 1
            progress.update(step, f"{label} clean {clean.float().mean().item():.3f}")
            for si, spec in enumerate(specs):
                attacked = (worst[group] if cascade else correct[group]).flatten().nonzero().squeeze(1)
                survived = torch.zeros(len(examples), dtype=torch.bool, device=device)
                if attacked.numel():
                    on_host = attacked.cpu()
                    survived[attacked], values = _survivors(spec, model, x_all, y_all, examples[attacked],
                                                            pair_lam[on_host], eps, seed, batch_size, ids[on_host],
                                                            bounds)
                    if values is not None:  # each λ of the group: the FOSC of its attacked pairs
                        owner = (attacked // total).cpu()
                        for position, k in enumerate(group):
                            stationarity[spec.name][k] = values[owner == position]
                robust[spec.name][group] = survived.view(len(group), total)
                worst[group] &= robust[spec.name][group]
                progress.update(step + si + 1, f"{label} {spec.name} {survived.float().mean().item():.3f}")
    points = [_point(lam, correct[k], robust, worst[k], zero_gradient[k], stationarity, k)
              for k, lam in enumerate(lambdas)]
    extra = _analytic(model, info, points, eps) if info is not None else {}
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
        "flags": consistency_flags(points, total, cascade),
        "seconds": time.perf_counter() - started,
        **extra,
    }


ANALYTIC_CURVE = [k / 100 for k in range(101)]  # a conditioned model's exact figures: λ = 0, 0.01, …, 1


def _analytic(model: nn.Module, info, points: list[dict], eps: float) -> dict:
    """Where the task has a closed form that covers the model (:func:`oat.datasets.closed_form`):
    each point's exact SA and RA as ``analytic`` {clean, robust}; the result's ``data_params`` (the
    task's parameters, from which oat.frontier computes the true frontier); and for a conditioned
    model ``analytic_curve``, its exact figures at λ = 0, 0.01, …, 1, which show the curve between
    the evaluated λ too (they cost no attack)."""
    form = closed_form(info)
    if form is None:
        return {}
    for point in points:
        figures = form(model, point["lambda"], eps, info)
        if figures is not None:
            point["analytic"] = {"clean": figures[0], "robust": figures[1]}
    extra = {"data_params": dict(info.params)}
    if getattr(model, "serves_every_lambda", False) and any("analytic" in point for point in points):
        extra["analytic_curve"] = [dict(zip(("lambda", "clean", "robust"), (lam, *form(model, lam, eps, info))))
                                   for lam in ANALYTIC_CURVE]
    return extra


def _clean_pass(model, x_all, y_all, examples, lam, batch_size):
    """Per pair: classified correctly, and whether the input gradient of its cross-entropy is
    exactly zero (saturated logits; see :mod:`oat.masking`)."""
    correct, zero = [], []
    for s in range(0, len(examples), batch_size):
        x = x_all[examples[s:s + batch_size]].detach().requires_grad_(True)
        y = y_all[examples[s:s + batch_size]]
        with torch.enable_grad():
            logits = model(x, lam[s:s + batch_size])
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
        correct.append(logits.detach().argmax(1) == y)
        zero.append(grad.flatten(1).abs().amax(1) == 0)
    return torch.cat(correct), torch.cat(zero)


def _point(lam: float, correct, robust: dict, worst, zero_gradient, stationarity: dict, k: int) -> dict:
    """One λ's entry of the results (see :func:`evaluate`)."""
    fosc_summary = {}
    for name, values in stationarity.items():
        if values[k] is not None and values[k].numel():
            v = values[k].float()
            fosc_summary[name] = {"mean": v.mean().item(), "q90": v.quantile(0.9).item()}
    return {"lambda": lam, "clean": correct.float().mean().item(),
            "robust": {name: survived[k].float().mean().item() for name, survived in robust.items()},
            "robust_worst": worst.float().mean().item(),
            # which examples: lets a comparison bootstrap over the shared test subset, and the
            # masking checks compare attacks example by example
            "per_example": {"clean": pack_bits(correct), "robust_worst": pack_bits(worst),
                            "robust": {name: pack_bits(survived[k]) for name, survived in robust.items()}},
            "checks": {"zero_gradient": zero_gradient.float().mean().item(), "fosc": fosc_summary}}


def robustness_curve(model: nn.Module, dataset, lambdas: Sequence[float], attacks: Sequence[str],
                     eps_values: Sequence[float], **options) -> dict:
    """Worst-case robust accuracy per λ at each radius in ``eps_values`` (sorted), with the
    masking flags of :func:`oat.masking.curve_flags`: RA that rises with ε, or does not fall from
    ε to 2ε. ``options``: those of :func:`evaluate` (one subset, one seed for every radius)."""
    eps_values = sorted(float(e) for e in eps_values)
    if not eps_values:
        raise ValueError("no ε values for the robustness curve")
    results = [evaluate(model, dataset, lambdas, attacks, eps=e, **options) for e in eps_values]
    n = results[0]["n"]
    points = [{"lambda": float(lam), "clean": results[0]["points"][k]["clean"],
               "robust_worst": [r["points"][k]["robust_worst"] for r in results]}
              for k, lam in enumerate(lambdas)]
    return {"eps": eps_values, "attacks": results[0]["attacks"], "n": n, "split": results[0]["split"],
            "points": points,
            "flags": [f for p in points for f in curve_flags(p["lambda"], eps_values, p["robust_worst"], n)],
            "seconds": sum(r["seconds"] for r in results)}


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
    sweep = result.get("eps_sweep")
    if sweep:
        out.append(f"robustness curve, worst case of {', '.join(sweep['attacks'])} (RA in % at each ε)")
        out.append("  ".join(["λ".rjust(5)] + [f"ε={e:g}".rjust(8) for e in sweep["eps"]]))
        for point in sweep["points"]:
            out.append("  ".join([f"{point['lambda']:g}".rjust(5)] + [f"{100 * r:.1f}".rjust(8)
                                                                        for r in point["robust_worst"]]))
    for flag in result["flags"]:
        out.append(f"FLAG {flag['message']}")
    return "\n".join(out)


def print_table(result: dict, stream=None) -> None:
    print(format_table(result), file=stream or sys.stdout)

