"""APGD-CE, APGD-DLR and APGD-T (Croce & Hein 2020) with AutoAttack's standard settings, λ-aware.

The iterations are the authors' own (``pyautoattack``'s ``attack_single_run``: 100 steps, step
size 2ε halved at the checkpoints, momentum 0.75; APGD-T on the targeted DLR loss against the 9
classes ranked highest at the clean point; APGD-DLR on the untargeted DLR loss, which — unlike
cross-entropy — does not vanish when the logits saturate). What oat drives itself is what the package's runner
fixes per batch:

* λ may differ per example (a tensor ``[B]``), so one attack covers several λ values at once;
* each example's random start is drawn from its own id (:func:`~oat.attacks.base.example_noise`)
  when ``example_ids`` are given, so its attack does not depend on which examples share its
  batch — what lets an evaluation attack only the examples earlier attacks failed on (the
  cascade), or batch several λ, and get the same per-example outcome.

The start is AutoAttack's: ``x + ε·t/‖t‖∞`` with ``t ~ U(−1, 1)ⁿ``, clipped to [0, 1]. Restart r
of target class k always starts from the same point, whatever else runs.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from .base import Attack, check_count, example_noise, forward, frozen_lambda

LOSSES = ("ce", "dlr", "dlr-targeted")
_SILENT = logging.getLogger("oat.apgd")
_SILENT.disabled = True  # the package's "zero gradient" warnings; AutoAttack's runner silences them too


class APGD(Attack):
    """APGD on the cross-entropy (``loss="ce"``, APGD-CE), the DLR loss (``loss="dlr"``, APGD-DLR;
    needs at least 3 classes) or the targeted DLR loss (``loss="dlr-targeted"``, APGD-T).

    Args:
        eps: L∞ radius ε (inputs in [0, 1]).
        loss: ``"ce"`` or ``"dlr-targeted"``.
        steps: iterations per run (AutoAttack: 100).
        restarts: runs per example (and per target class), each on the examples not yet broken.
        target_classes: APGD-T's number of target classes (AutoAttack: 9).
        seed: seed of the random starts.

    Returns, per example, the first point found that the model misclassifies, or ``x`` itself.
    """

    freezes_lambda = False  # conditions each run's subset itself

    def __init__(self, eps: float, loss: str = "ce", steps: int = 100, restarts: int = 1,
                 target_classes: int = 9, seed: int = 0):
        super().__init__(eps, bounds=(0.0, 1.0), seed=seed)
        if loss not in LOSSES:
            raise ValueError(f"unknown APGD loss {loss!r}; choose one of {LOSSES}")
        self.loss = loss
        self.steps = check_count("steps", steps)
        self.restarts = check_count("restarts", restarts)
        self.target_classes = check_count("target_classes", target_classes)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam,
                example_ids: torch.Tensor | None = None) -> torch.Tensor:
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

        targeted = self.loss == "dlr-targeted"
        kind = APGDAttack_targeted if targeted else APGDAttack
        runner = kind(None, n_iter=self.steps, norm="Linf", n_restarts=1, eps=self.eps, seed=self.seed,
                      eot_iter=1, rho=0.75, device=x.device, logger=_SILENT,
                      **({"n_target_classes": self.target_classes} if targeted else {"loss": self.loss}))
        runner.init_hyperparam(x)
        generator = self.call_generator(x.device) if example_ids is None else None
        with torch.no_grad():
            logits = forward(model, x, frozen_lambda(model, lam, x))
        if self.loss != "ce" and logits.shape[1] < 3:
            raise ValueError(f"APGD's {self.loss} loss needs at least 3 classes, the model has {logits.shape[1]}")
        robust = logits.argmax(1) == y
        x_adv = x.clone()
        runs = [(k, r) for k in (range(2, self.target_classes + 2) if targeted else [0]) for r in range(self.restarts)]
        for key, (target, restart) in enumerate(runs):
            index = robust.nonzero().squeeze(1)
            if not index.numel():
                break
            xs, ys = x[index], y[index]
            cond = frozen_lambda(model, _select(lam, index), xs)
            runner.model = lambda inputs, cond=cond: forward(model, inputs, cond)
            if targeted:
                with torch.no_grad():
                    runner.y_target = runner.model(xs).sort(dim=1)[1][:, -target]
            ids = example_ids[index.cpu()] if example_ids is not None else None
            start = self._start(xs, ids, key, generator)
            with torch.random.fork_rng(devices=[]):  # the package draws a start it then discards
                _, _, _, found = runner.attack_single_run(xs, ys, x_init=start)
            with torch.no_grad():
                broken = forward(model, found, cond).argmax(1) != ys
            x_adv[index[broken]] = found[broken]
            robust[index[broken]] = False
        return x_adv

    def _start(self, x: torch.Tensor, ids: torch.Tensor | None, key: int, generator) -> torch.Tensor:
        """AutoAttack's Linf start ``x + ε·t/‖t‖∞`` (t uniform in [−1, 1]ⁿ), clipped to [0, 1]."""
        if ids is not None:
            noise = example_noise(self.seed, key, ids, x.shape[1:]).to(device=x.device, dtype=x.dtype)
        else:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        t = 2 * noise - 1
        scale = t.abs().flatten(1).amax(1).view((-1,) + (1,) * (x.dim() - 1)) + 1e-12
        return (x + self.eps * t / scale).clamp(0.0, 1.0)


def _select(lam, index: torch.Tensor):
    """λ of the examples at ``index``: a float stays a float; a tensor ``[B]`` is indexed where it lives."""
    if isinstance(lam, torch.Tensor) and lam.dim() == 1:
        return lam[index.to(lam.device)]
    return lam
