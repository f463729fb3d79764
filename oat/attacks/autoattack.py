"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks") at one λ, through the authors' PyPI package ``pyautoattack``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from oat.network import fix_lambda

from .base import check_eps, check_count, eval_mode

NORMS = ("Linf", "L2", "L1")
VERSIONS = ("standard", "plus", "rand", "custom")
# Slack for the returned points' distance and box checks: float32 rounding of x ± ε, not a loosening.
_TOLERANCE = 1e-5


@dataclass
class AutoAttackResult:
    """robust: bool ``[N]``, True where the prediction on ``x_adv`` equals y.
    x_adv: the adversarial examples ``[N, ...]`` (x itself where no attack succeeded).
    accuracy: robust accuracy, the mean of ``robust``."""

    robust: torch.Tensor
    x_adv: torch.Tensor
    accuracy: float


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lam,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks: list[str] | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: torch.device | str | None = None,
    verbose: bool = False,
) -> AutoAttackResult:
    """Run AutoAttack on ``model`` at trade-off ``lam`` (one float, or None for a plain ``model(x)``).

    ``version="standard"`` is APGD-CE, APGD-T, FAB-T and Square (the RobustBench protocol); with
    ``version="custom"`` pass ``attacks``, e.g. ``["apgd-ce", "apgd-t"]`` (run with the standard
    version's settings: APGD-CE one restart, APGD-T nine target classes). The model runs in eval
    mode and every module's mode is restored; parameters are frozen during the run (FAB calls
    ``backward()``, which would otherwise write parameter ``.grad``); torch's global RNG, which
    the package reseeds, is restored afterwards. The package's ``'auto-attack'`` logger is silent
    unless ``verbose``. ``device`` defaults to the model's device. Raises ``RuntimeError`` if
    the package returns a point outside the ε-ball or [0, 1].
    """
    # Imported here: the package is only needed for this evaluation, not to import oat.attacks.
    from pyautoattack import AutoAttack

    eps = check_eps(eps)
    batch_size = check_count("batch_size", batch_size)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; choose one of {VERSIONS}")
    if (version == "custom") != (attacks is not None):
        raise ValueError("pass attacks=[...] exactly when version='custom'")
    if version == "custom" and not attacks:
        raise ValueError("version='custom' needs a non-empty list of attacks, e.g. ['apgd-ce']")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError("x must be a float image batch of shape [N, C, H, W]")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != x.shape[:1]:
        raise ValueError(f"y must be a long tensor of shape [{x.shape[0]}]")
    if x.numel() and bool((x < 0).any() | (x > 1).any()):
        raise ValueError("x must lie in [0, 1] (normalise inside the model)")
    if isinstance(lam, torch.Tensor) and lam.numel() != 1:
        raise ValueError("autoattack evaluates one λ at a time: pass a float, not one λ per example")

    target = fix_lambda(model, lam) if lam is not None else model
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else x.device
    device = torch.device(device)
    x = x.detach()

    logger = logging.getLogger("auto-attack")
    was_disabled = logger.disabled
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        logger.disabled = not verbose
        for p, _ in frozen:
            p.requires_grad_(False)
        with eval_mode(model), torch.random.fork_rng(devices=rng_devices):
            runner = AutoAttack(target, attacks=attacks, device=device, eps=eps, norm=norm, seed=seed, version=version)
            if version == "custom" and norm in ("Linf", "L2"):
                # A subset of the standard attacks runs with the standard version's settings (the
                # package otherwise gives a custom APGD-CE 5 restarts): the numbers stay comparable.
                runner.apgd.n_restarts = 1
                runner.apgd_targeted.n_target_classes = 9
            x_adv, _ = runner.run_standard_evaluation(x, y, batch_size=batch_size)
            x_adv = x_adv.detach().to(x.device)
            robust = _predictions(target, x_adv, device, batch_size).to(y.device) == y
    finally:
        for p, requires_grad in frozen:
            p.requires_grad_(requires_grad)
        logger.disabled = was_disabled

    _check_threat_model(x_adv, x, eps, norm)
    accuracy = robust.float().mean().item() if robust.numel() else float("nan")
    return AutoAttackResult(robust=robust, x_adv=x_adv, accuracy=accuracy)


@torch.no_grad()
def _predictions(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Predicted classes, recomputed on the returned points: 'robust' means exactly that."""
    parts = [model(x[i : i + batch_size].to(device)).argmax(dim=1) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=device)


def _check_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> None:
    """Fail loudly if a returned point violates the threat model: its robust flag would be meaningless."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"AutoAttack returned shape {list(x_adv.shape)} for inputs {list(x.shape)}")
    if not x_adv.numel():
        return
    if not bool(torch.isfinite(x_adv).all()):
        raise RuntimeError("AutoAttack returned non-finite adversarial examples")
    if bool((x_adv < -_TOLERANCE).any() | (x_adv > 1 + _TOLERANCE).any()):
        raise RuntimeError(
            f"AutoAttack returned points outside [0, 1]: from {x_adv.min().item():g} to {x_adv.max().item():g}"
        )
    delta = (x_adv - x).flatten(1)
    order = {"Linf": float("inf"), "L2": 2.0, "L1": 1.0}[norm]
    distance = torch.linalg.vector_norm(delta, ord=order, dim=1).max().item()
    if distance > eps + _TOLERANCE:
        raise RuntimeError(f"AutoAttack returned a point at {norm} distance {distance:g} > eps = {eps:g}")
