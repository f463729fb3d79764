"""Square (Andriushchenko et al. 2020): a black-box, score-based random search, λ-aware.

AutoAttack runs it last because it uses no gradient: where it breaks examples that every
white-box attack left standing, the gradients are lying (masking). oat runs the package's own
iterations (``pyautoattack``'s ``SquareAttack``, AutoAttack's standard settings: 5,000 queries,
p_init = 0.8, the margin loss), one run per λ value in the batch. Its random squares are drawn batch by
batch from the seed, as in the package, so an example's outcome may depend on its batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Attack, check_count, forward


class Square(Attack):
    """Square L∞ (``queries`` model evaluations per example at most), inputs in [0, 1].

    Returns, per example, the first point found that the model misclassifies, or ``x`` itself.
    """

    def __init__(self, eps: float, queries: int = 5000, p_init: float = 0.8, seed: int = 0):
        super().__init__(eps, bounds=(0.0, 1.0), seed=seed)
        self.queries = check_count("queries", queries)
        self.p_init = float(p_init)

    freezes_lambda = False  # the package queries subsets of the batch: λ goes in as one float per run

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam,
                example_ids: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(lam, torch.Tensor) or lam.dim() == 0:
            return self._run(model, x, y, lam if lam is None else float(lam))
        x_adv = x.clone()
        lam = lam.to(x.device)
        for value in lam.unique().tolist():  # one run per λ in the batch
            pick = (lam == value).nonzero().squeeze(1)
            x_adv[pick] = self._run(model, x[pick], y[pick], value)
        return x_adv

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float | None) -> torch.Tensor:
        from pyautoattack.square import SquareAttack

        runner = SquareAttack(lambda inputs: forward(model, inputs, lam), norm="Linf", n_queries=self.queries,
                              eps=self.eps, p_init=self.p_init, n_restarts=1, seed=self.seed, device=x.device)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
            return runner.perturb(x, y)
