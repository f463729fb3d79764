"""The synthetic task with a provable accuracy/robustness trade-off (Tsipras et al., ICLR 2019,
"Robustness May Be at Odds with Accuracy", Section 2.1).

    y ∈ {−1, +1} uniform;  x₁ = y with probability p, else −y;  x₂ … x_{d+1} ~ N(η·y, 1) independently.

Stored as float32 vectors ``[N, d+1]`` with class labels ``(y + 1) / 2`` ∈ {0, 1}. Inputs are unbounded
reals (``bounds=None``), and the default radius is ε = 2η, at which the robust and the accurate
classifier part ways (ibid., Theorem 2.1). :func:`tsipras_accuracy` gives any linear classifier's exact SA and RA.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch

from .base import DatasetInfo, Splits, TensorVectorDataset
from .registry import register


def _check_params(p, eta) -> None:
    if isinstance(p, bool) or not isinstance(p, Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"tsipras: p must be a probability in [0, 1], got {p!r}")
    if isinstance(eta, bool) or not isinstance(eta, Real) or not math.isfinite(eta):
        raise ValueError(f"tsipras: eta must be a finite number, got {eta!r}")


def sample_tsipras(n: int, p: float, d: int, eta: float, rng: np.random.Generator):
    """``n`` draws of (x float32 [n, d+1], y ∈ {−1, +1} int64 [n]) from the distribution above."""
    y = rng.choice(np.array([-1, 1]), size=n)
    agrees = rng.random(n) < p  # x₁ = y with probability p
    x = np.empty((n, d + 1), dtype=np.float64)
    x[:, 0] = np.where(agrees, y, -y)
    x[:, 1:] = eta * y[:, None] + rng.standard_normal((n, d))
    return x.astype(np.float32), y.astype(np.int64)


@register("tsipras")
def load_tsipras(
    root: Path,
    download: bool,
    *,
    n_train: int = 10_000,
    n_test: int = 10_000,
    p: float = 0.95,
    d: int = 100,
    eta: float = 0.3,
    seed: int = 0,
) -> Splits:
    """Sample the train and test sets (10 000 each by default: accuracy to about ±0.005).

    Train and test come from independent streams spawned from ``seed``, so changing ``n_train``
    leaves the test set unchanged. ``root`` and ``download`` are unused.
    """
    _check_params(p, eta)
    for key, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("d", d, 1)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise ValueError(f"tsipras: {key} must be an integer ≥ {low}, got {value!r}")
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
    splits = []
    for n, rng in ((n_train, train_rng), (n_test, test_rng)):
        x, y = sample_tsipras(int(n), float(p), int(d), float(eta), rng)
        splits.append(TensorVectorDataset(torch.from_numpy(x), torch.from_numpy((y + 1) // 2)))
    # Identity normalisation: the features are already centred at unit scale, and it keeps a linear
    # model's weights the w of tsipras_accuracy.
    info = DatasetInfo(
        name="tsipras",
        num_classes=2,
        input_shape=(int(d) + 1,),
        mean=(0.0,) * (int(d) + 1),
        std=(1.0,) * (int(d) + 1),
        eps=2 * abs(float(eta)),
        augment="none",
        bounds=None,
        params=(("p", float(p)), ("d", int(d)), ("eta", float(eta))),
    )
    return Splits(train=splits[0], test=splits[1], info=info)


def closed_form(model, lam: float, eps: float, info: DatasetInfo) -> tuple[float, float] | None:
    """Exact (SA, RA) of ``model`` at ``lam`` on the task ``info`` describes, when the model is one
    linear classifier (a two-class network with a ``decision_function``, such as ``linear``);
    None for any other network."""
    decision = getattr(model, "decision_function", None)
    if decision is None or getattr(model, "num_classes", None) != 2:
        return None
    params = dict(info.params)
    w, b = decision(lam)
    return tsipras_accuracy(w, b, eps, params["p"], params["eta"])


def _normal_cdf(z: float) -> float:
    # erfc keeps relative precision in the lower tail, where RA values such as Φ(−3) live.
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _prob_positive(mean: float, sigma: float) -> float:
    """P(mean + sigma·Z > 0) for Z ~ N(0, 1); with sigma = 0 a step, and a margin of exactly 0 is wrong."""
    if sigma > 0:
        return _normal_cdf(mean / sigma)
    return 1.0 if mean > 0 else 0.0


def tsipras_accuracy(w, b: float = 0.0, eps: float = 0.0, p: float = 0.95, eta: float = 0.3) -> tuple[float, float]:
    """Exact (SA, RA) of the linear classifier sign(w·x + b) on the Tsipras et al. (2019) task.

    With S = Σ_{j≥2} w_j and σ = ‖w_{2..}‖₂, the margin y(w·x + b) is distributed as
    ±w₁ + ηS + y·b + σ·N(0, 1), the sign of w₁ being + with probability p. An L∞ adversary of radius
    ε (inputs unbounded, so every coordinate moves, x₁ included) lowers the margin by exactly ε‖w‖₁,
    with δ = −ε·y·sign(w). Averaging over y ∈ {−1, +1}:

        SA = ½ Σ_y [p Φ((w₁ + ηS + yb)/σ) + (1 − p) Φ((−w₁ + ηS + yb)/σ)],

    and RA the same with −ε‖w‖₁ in each numerator. ``w`` has length d + 1 (x₁'s weight first).
    """
    w = np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float64).reshape(-1)
    if w.size < 1 or not np.isfinite(w).all():
        raise ValueError(f"tsipras_accuracy: w must be a non-empty finite vector, got {w.size} values")
    _check_params(p, eta)
    for key, value in (("b", b), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"tsipras_accuracy: {key} must be a finite number, got {value!r}")
    if eps < 0:
        raise ValueError(f"tsipras_accuracy: eps must be non-negative, got {eps}")
    w1, rest = float(w[0]), w[1:]
    shift = eta * float(rest.sum())
    sigma = float(np.linalg.norm(rest))
    attack = eps * float(np.abs(w).sum())

    def accuracy(loss: float) -> float:
        return 0.5 * sum(
            p * _prob_positive(w1 + shift + y * b - loss, sigma)
            + (1 - p) * _prob_positive(-w1 + shift + y * b - loss, sigma)
            for y in (-1.0, 1.0)
        )

    return accuracy(0.0), accuracy(attack)
