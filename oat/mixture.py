"""Two end models mixed at inference: the trade-off knob a user would build without OAT.

Train only an accurate model (λ = 0) and a robust one (λ = 1) — both are part of every frontier oat
trains — and mix them per image with a weight α ∈ [0, 1]:

    log p(x; α) = log((1 − α)·softmax(z_acc(x)) + α·softmax(z_rob(x)))

the output mixing of MixedNUTS (Bai et al., TMLR 2024) without its nonlinear transform of the robust
logits (not implemented here; every figure oat reports for a mixture is of the plain mixture above).
:class:`MixedEnds` takes α exactly where a conditioned network takes λ, ``model(x, alpha)`` with a
float or one α per example, so every tool works on it unchanged: :func:`oat.evaluate` and every
attack, ``fix_lambda`` (and through it torchattacks and AutoAttack), ``oat eval``, ``oat pick``.

It is one differentiable module: an attack's gradient flows through both members, end to end, so
its robust accuracy is that of the mixture under an adaptive attack, never of one member alone.

**On disk** a mixture is a directory holding ``mixture.yaml`` (:data:`MIXTURE`)::

    accurate: ../frontier/points/lambda-0     # run directories, relative to this file
    robust: ../frontier/points/lambda-1

which :func:`oat.runs.load_run` (and so ``oat eval --checkpoint DIR``) loads like a run: the members'
data, ε and training cost (their passes summed: the mixture costs both end models' training) come
with it. :func:`mix_ends` builds the same from two run directories in Python.

**Weight interpolation** (:func:`interpolate`) is the other way to mix two models: one network with
weights (1 − α)·w_a + α·w_b, at one forward's cost. It is meaningful only when the two runs are
linearly connected (Frankle et al. 2020), which :func:`interpolation_barrier` measures: the largest
rise of the error along the path above the straight line between its ends.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lam import as_lambda

MIXTURE = "mixture.yaml"
USABLE_BARRIER = 0.02  # Frankle et al.'s "linearly connected": the error rises ≤ 2 points along the path


class MixedEnds(nn.Module):
    """``model(x, alpha)``: the log of the α-mixture of ``accurate``'s and ``robust``'s class
    probabilities (see the module docstring). Both members are called as ``member(x)``."""

    serves_every_lambda = True  # every α in [0, 1] means something
    separate_lambdas: list = []  # α moves the output continuously: no parameter belongs to one α
    conditioned = False  # it holds no λ-conditioned network of its own (nothing to fold or export)

    def __init__(self, accurate: nn.Module, robust: nn.Module):
        super().__init__()
        self.accurate = accurate
        self.robust = robust

    def forward(self, x: torch.Tensor, lam=None) -> torch.Tensor:
        if lam is None:
            raise ValueError("a mixture of two models needs its mixing weight: model(x, alpha), alpha in [0, 1]")
        alpha = as_lambda(lam, x.shape[0], x.device)[:, None]
        accurate = F.log_softmax(self.accurate(x), dim=1)
        robust = F.log_softmax(self.robust(x), dim=1)
        if bool((alpha == 0).all()):  # exactly the member, and no gradient through the other
            return accurate
        if bool((alpha == 1).all()):
            return robust
        # log((1 − α)·p + α·q) as a log-sum-exp of log-weights plus log-probabilities: stable for
        # saturated members; a weight of 0 gives −inf there, which logsumexp drops exactly.
        weighted = torch.stack([torch.log1p(-alpha) + accurate, torch.log(alpha) + robust])
        return torch.logsumexp(weighted, dim=0)


def mix_ends(accurate_run: str | Path, robust_run: str | Path, device: str | torch.device = "cpu") -> MixedEnds:
    """The mixture of two trained runs (their run directories or checkpoints), in eval mode."""
    from .runs import load_run

    accurate, _ = load_run(accurate_run, device)
    robust, _ = load_run(robust_run, device)
    return MixedEnds(accurate, robust).eval()


def interpolate(run_a: str | Path | nn.Module, run_b: str | Path | nn.Module, alpha: float) -> nn.Module:
    """One network with weights (1 − α)·w_a + α·w_b (BatchNorm's running statistics too), from two
    runs of the same architecture; in eval mode. Meaningful only for linearly connected runs:
    measure :func:`interpolation_barrier` first."""
    from .runs import load_run

    first = run_a if isinstance(run_a, nn.Module) else load_run(run_a)[0]
    second = run_b if isinstance(run_b, nn.Module) else load_run(run_b)[0]
    alpha = float(as_lambda(float(alpha), 1)[0])
    a, b = first.state_dict(), second.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ValueError("interpolation needs two runs of the same architecture (their weights differ in names or shapes)")
    mixed = copy.deepcopy(first)
    mixed.load_state_dict({k: (1 - alpha) * a[k] + alpha * b[k] if a[k].is_floating_point() else a[k] for k in a})
    return mixed.eval()


@torch.no_grad()
def interpolation_barrier(run_a, run_b, x: torch.Tensor, y: torch.Tensor, steps: int = 10) -> dict:
    """How far the error of the interpolated network rises above the straight line between the two
    runs' errors on (``x``, ``y``), at α = 0, 1/steps, …, 1: ``errors`` along the path,
    ``barrier`` (the largest rise, a fraction) and ``usable`` (barrier ≤ :data:`USABLE_BARRIER`)."""
    from .runs import load_run

    run_a, run_b = (run if isinstance(run, nn.Module) else load_run(run)[0] for run in (run_a, run_b))
    errors = []
    for k in range(steps + 1):
        logits = interpolate(run_a, run_b, k / steps)(x)
        errors.append(float((logits.argmax(dim=1) != y).float().mean()))
    line = [(1 - k / steps) * errors[0] + k / steps * errors[-1] for k in range(steps + 1)]
    barrier = max(e - l for e, l in zip(errors, line))
    return {"alphas": [k / steps for k in range(steps + 1)], "errors": errors, "barrier": barrier,
            "usable": barrier <= USABLE_BARRIER + 1e-12, "n": int(y.numel())}


def is_mixture(path: str | Path) -> bool:
    """Whether ``path`` is a mixture directory (it holds :data:`MIXTURE`) or that file itself."""
    path = Path(path)
    return (path / MIXTURE).is_file() if path.is_dir() else path.name == MIXTURE and path.is_file()


def write_mixture(directory: str | Path, accurate_run: str | Path, robust_run: str | Path) -> Path:
    """Write ``directory/mixture.yaml`` naming the two runs, relative to it."""
    import os

    import yaml

    from .checkpoint import write_text_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    members = {"accurate": os.path.relpath(Path(accurate_run).resolve(), directory.resolve()),
               "robust": os.path.relpath(Path(robust_run).resolve(), directory.resolve())}
    path = directory / MIXTURE
    write_text_atomic(path, yaml.safe_dump(members, sort_keys=False))
    return path


def member_runs(directory: str | Path) -> tuple[Path, Path]:
    """The (accurate, robust) run directories a mixture directory names, or a one-line ValueError."""
    from .config import read_yaml_mapping

    directory = Path(directory)
    spec = read_yaml_mapping(directory / MIXTURE, "mixture")
    unknown = sorted(set(spec) - {"accurate", "robust"})
    missing = [key for key in ("accurate", "robust") if not isinstance(spec.get(key), str)]
    if unknown or missing:
        raise ValueError(f"{directory / MIXTURE} must name two run directories, 'accurate' and 'robust'"
                         + (f"; it lacks {', '.join(missing)}" if missing else "")
                         + (f"; unknown key {', '.join(unknown)}" if unknown else ""))
    return directory / spec["accurate"], directory / spec["robust"]


def load_mixture(directory: str | Path, device: str | torch.device = "cpu") -> tuple[MixedEnds, dict]:
    """A mixture directory's model and a run state for evaluation: the accurate member's config
    (data) and ε, both members' training cost summed (seconds, passes by kind; work per example
    when the two networks cost the same), their epochs (the larger)."""
    from .runs import load_run

    directory = Path(directory)
    accurate_dir, robust_dir = member_runs(directory if directory.is_dir() else directory.parent)
    accurate, first = load_run(accurate_dir, device)
    robust, second = load_run(robust_dir, device)
    if not math.isclose(float(first["eps"]), float(second["eps"])):
        raise ValueError(f"the mixture's members were trained at different radii ({first['eps']:g} and "
                         f"{second['eps']:g}); mix two models of one threat model")
    if first["config"]["data"] != second["config"]["data"]:
        raise ValueError("the mixture's members were trained on different data; mix two models of one task")
    state = {
        "config": first["config"], "eps": first["eps"], "epoch": max(int(first["epoch"]), int(second["epoch"])),
        "train_seconds": float(first["train_seconds"]) + float(second["train_seconds"]),
        "passes": _summed(first.get("passes"), second.get("passes")),
        "macs_per_example": first.get("macs_per_example") if first.get("macs_per_example") == second.get(
            "macs_per_example") else None,
        "model_spec": {"mixture": {"accurate": str(accurate_dir), "robust": str(robust_dir)}},
        "members": [str(accurate_dir), str(robust_dir)],
    }
    return MixedEnds(accurate, robust).to(device).eval(), state


def _summed(first: dict | None, second: dict | None) -> dict | None:
    if not first or not second:
        return None
    return {kind: int(first.get(kind, 0)) + int(second.get(kind, 0)) for kind in set(first) | set(second)}
