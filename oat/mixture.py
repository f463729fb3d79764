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
    mixing: probabilities                     # or weights (InterpolatedEnds); probabilities if left out

which :func:`oat.runs.load_run` (and so ``oat eval --checkpoint DIR``) loads like a run: the members'
data, ε and training cost (their passes summed: the mixture costs both end models' training) come
with it. :func:`oat.runs.mix_ends` builds the same from two run directories in Python. This module
holds the model and the arithmetic; the run directory's reader, :mod:`oat.runs`, the files.

**Weight interpolation** (:func:`interpolate`; :class:`InterpolatedEnds` with α per example, as a
mixture directory's ``mixing: weights``) is the other way to mix two models: one network with
weights (1 − α)·w_a + α·w_b, at one forward's cost. It is meaningful only when the two runs are
linearly connected (Frankle et al. 2020), which :func:`interpolation_barrier` measures: the largest
rise of the error along the path above the straight line between its ends.
"""

from __future__ import annotations

import copy

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


class InterpolatedEnds(nn.Module):
    """``model(x, alpha)``: the network whose weights are (1 − α)·w_first + α·w_second (BatchNorm's
    running statistics too), α per example like λ: the examples of each α run through that α's
    interpolated network (``torch.func.functional_call``), so an attack's gradient reaches the input
    as through any network. Meaningful only for linearly connected members
    (:func:`interpolation_barrier`)."""

    serves_every_lambda = True
    separate_lambdas: list = []
    conditioned = False

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        _check_same_architecture(first, second)
        self.first = first
        self.second = second

    def forward(self, x: torch.Tensor, lam=None) -> torch.Tensor:
        if lam is None:
            raise ValueError("an interpolation of two models needs its weight: model(x, alpha), alpha in [0, 1]")
        if x.shape[0] == 0:  # an attack may be handed no examples (an earlier one broke them all)
            return self.first(x)
        alpha = as_lambda(lam, x.shape[0], x.device)
        outputs = []
        values = torch.unique(alpha)
        for value in values:
            index = (alpha == value).nonzero().squeeze(1)
            weights = _interpolated_state(self.first, self.second, float(value))
            outputs.append((index, torch.func.functional_call(self.first, weights, (x[index],))))
        if len(outputs) == 1:
            return outputs[0][1]
        logits = outputs[0][1].new_empty((x.shape[0],) + outputs[0][1].shape[1:])
        for index, part in outputs:
            logits[index] = part
        return logits


def _check_same_architecture(first: nn.Module, second: nn.Module) -> None:
    a, b = first.state_dict(), second.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ValueError("interpolation needs two runs of the same architecture (their weights differ in names or shapes)")


def _interpolated_state(first: nn.Module, second: nn.Module, alpha: float) -> dict:
    """(1 − α)·first + α·second for every floating-point tensor of the state (parameters and
    buffers), the first's own for the others (BatchNorm's batch counts)."""
    a, b = dict(first.named_parameters()), dict(second.named_parameters())
    a.update(first.named_buffers()), b.update(second.named_buffers())
    return {k: (1 - alpha) * a[k] + alpha * b[k] if a[k].is_floating_point() else a[k] for k in a}


def interpolate(first: nn.Module, second: nn.Module, alpha: float) -> nn.Module:
    """One network with weights (1 − α)·w_first + α·w_second (BatchNorm's running statistics too),
    from two networks of the same architecture; in eval mode. Meaningful only for linearly connected
    ones: measure :func:`interpolation_barrier` first. (:func:`oat.runs.interpolate_runs` takes run
    directories.)"""
    alpha = float(as_lambda(float(alpha), 1)[0])
    _check_same_architecture(first, second)
    a, b = first.state_dict(), second.state_dict()
    mixed = copy.deepcopy(first)
    mixed.load_state_dict({k: (1 - alpha) * a[k] + alpha * b[k] if a[k].is_floating_point() else a[k] for k in a})
    return mixed.eval()


@torch.no_grad()
def interpolation_barrier(first: nn.Module, second: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          steps: int = 10) -> dict:
    """How far the error of the interpolated network rises above the straight line between the two
    networks' errors on (``x``, ``y``), at α = 0, 1/steps, …, 1: ``errors`` along the path,
    ``barrier`` (the largest rise, a fraction) and ``usable`` (barrier ≤ :data:`USABLE_BARRIER`)."""
    errors = []
    for k in range(steps + 1):
        logits = interpolate(first, second, k / steps)(x)
        errors.append(float((logits.argmax(dim=1) != y).float().mean()))
    line = [(1 - k / steps) * errors[0] + k / steps * errors[-1] for k in range(steps + 1)]
    barrier = max(e - l for e, l in zip(errors, line))
    return {"alphas": [k / steps for k in range(steps + 1)], "errors": errors, "barrier": barrier,
            "usable": barrier <= USABLE_BARRIER + 1e-12, "n": int(y.numel())}
