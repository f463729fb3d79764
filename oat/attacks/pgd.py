"""L∞ PGD (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks")."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import LOSSES, Attack, check_count, check_positive, forward, per_example_loss


def reference_step_size(eps: float, steps: int) -> float:
    """The OAT reference's PGD step size ``min(1.25·ε, ε + 4/255) / steps`` (Wang et al. 2020)."""
    return min(1.25 * eps, eps + 4 / 255) / steps


class PGD(Attack):
    """Projected gradient ascent with sign steps in the L∞ ball, from a uniform random start.

    ``x ← Π_{B(x₀, ε) ∩ bounds}(x + α·sign ∇ₓ ℓ(f(x, λ), y))`` for ``steps`` steps, where ℓ is
    cross-entropy (``loss="ce"``) or the CW margin ``max_{k≠y} z_k − z_y`` (``loss="cw"``).

    Args:
        eps: L∞ radius ε.
        alpha: step size α; default ``2.5·ε/steps`` (Madry et al.), so that the path can cross the
            ball and back. :func:`reference_step_size` gives the OAT reference's rule.
        steps: gradient steps per restart (training: 7–10; evaluation: ≥ 20).
        restarts: independent random starts.
        random_start: start at x + U(−ε, ε) (else at x itself, which allows only one restart).
        loss: ``"ce"`` or ``"cw"``.
        best: evaluation mode. Per example, return the first iterate — of any restart, start
            points and final iterates included — that the model misclassifies; when there is
            none, the final iterate of the restart whose final loss is highest. Restart r always
            follows the same path whatever ``restarts`` and ``steps`` are (starts are drawn in a
            fixed order), so with the same seed and the same α more steps or more restarts can
            only break more examples. Costs one extra forward per restart.
            ``best=False`` (training) is plain Madry PGD: the final iterate of the last restart.
        bounds, seed, generator: see :class:`~oat.attacks.base.Attack`.

    Shapes: x ``[B, ...]``, y ``[B]`` (long), λ a float or ``[B]``; returns ``[B, ...]``.
    """

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        best: bool = True,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(eps, bounds, seed, generator)
        self.steps = check_count("steps", steps)
        self.restarts = check_count("restarts", restarts)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else check_positive("alpha", alpha)
        if loss not in LOSSES:
            raise ValueError(f"unknown PGD loss {loss!r}; choose one of {LOSSES}")
        if restarts > 1 and not random_start:
            raise ValueError("restarts > 1 needs random_start=True: without it every restart repeats the same path")
        self.random_start = bool(random_start)
        self.loss = loss
        self.best = bool(best)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam,
                example_ids: torch.Tensor | None = None) -> torch.Tensor:
        generator = self.call_generator(x.device) if self.random_start else None
        if example_ids is not None and self.random_start:
            # Per-example starts: from the attack's seed (or one draw of its stream) and each id.
            seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,), generator=generator,
                                                                            device=x.device).item())
        restart = iter(range(self.restarts))

        def start(discard: bool = False) -> torch.Tensor | None:
            # Restart r always begins at the same point whatever the number of restarts or
            # steps: its starts come from this call's generator in restart order, or per example
            # (which needs no draw to keep the order, so a discarded one is not computed).
            r = next(restart)
            if not self.random_start:
                return x
            if example_ids is not None:
                return None if discard else self.example_start(x, example_ids, seed, r)
            return self.uniform_start(x, generator)

        if not self.best:
            # Training: only the last restart's final iterate is returned, so the earlier
            # restarts need not run (their starts are still drawn, to keep the order).
            for _ in range(self.restarts - 1):
                start(discard=True)
            x_adv, _ = self._ascend(model, start(), x, y, lam, None)
            return x_adv

        first_wrong = _FirstMisclassified(x)
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        x_best = x.clone()
        for _ in range(self.restarts):
            x_adv, final_loss = self._ascend(model, start(), x, y, lam, first_wrong)
            better = _as_mask(final_loss > best_loss, x)  # strict: on a tie the earlier restart stays
            x_best = torch.where(better, x_adv, x_best)
            best_loss = torch.where(better.flatten(), final_loss, best_loss)
            if bool(first_wrong.found.all()):
                break  # every example already has its first misclassified iterate
        return torch.where(_as_mask(first_wrong.found, x), first_wrong.x, x_best)

    def _ascend(self, model, x_adv, x, y, lam, first_wrong):
        """One restart from ``x_adv``; returns the final iterate and, in best mode, its loss.

        In best mode (``first_wrong`` given) every iterate, the start and the final one included,
        is checked for misclassification, which costs one forward more than the steps.
        """
        tracking = first_wrong is not None
        for step in range(self.steps + tracking):
            last = step == self.steps
            x_adv = x_adv.detach().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                logits = forward(model, x_adv, lam)
                loss = per_example_loss(logits, y, self.loss)
            if tracking:
                first_wrong.update(x_adv.detach(), logits.detach(), y)
            if last:
                return x_adv.detach(), loss.detach()
            # Summed per-example losses: each example's step is independent of the batch.
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            x_adv = self.project(x_adv.detach() + self.alpha * grad.sign(), x)
        return x_adv.detach(), None


def _as_mask(flags: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example flags ``[B]`` shaped to broadcast against ``x`` ``[B, ...]``."""
    return flags.view((-1,) + (1,) * (x.dim() - 1))


class _FirstMisclassified:
    """Per example, the first iterate seen that the model misclassifies (x itself until then)."""

    def __init__(self, x: torch.Tensor):
        self.found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.x = x.clone()

    def update(self, x_adv: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        wrong = logits.argmax(dim=1) != y
        self.x = torch.where(_as_mask(wrong & ~self.found, x_adv), x_adv, self.x)
        self.found = self.found | wrong
