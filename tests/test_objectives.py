import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from oat import models
from oat.attacks import PGD, TradesKL
from oat.lam import as_lambda
from oat.objectives import (
    AdversarialBatch,
    MartObjective,
    MixedObjective,
    PGDObjective,
    TradesObjective,
    make_objective,
    objective_names,
    trades_kl,
)

# SCIENCE.md's test vector: W = [[2, 0], [-2, 0]], x = [1, 0], y = 0, x' = [0.5, 0].
CE_CLEAN, CE_ADV = 0.018150, 0.126928
KL_CLEAN_ADV, KL_ADV_CLEAN = 0.072806, 0.129628


class Linear(nn.Module):
    """logits = W x (no bias); λ is validated and ignored."""

    def __init__(self, weight=((2.0, 0.0), (-2.0, 0.0))):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))

    def forward(self, x, lam=None):
        if lam is not None:
            as_lambda(lam, x.shape[0], x.device)
        return x @ self.weight.T


class LambdaLinear(nn.Module):
    """logits = (W + λ·V) x: a model whose output depends on each example's own λ."""

    def __init__(self, features=4, classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, features, generator=g))
        self.shift = nn.Parameter(torch.randn(classes, features, generator=g))

    def forward(self, x, lam):
        lam = as_lambda(lam, x.shape[0], x.device)
        weight = self.weight + lam[:, None, None] * self.shift
        return torch.einsum("bcf,bf->bc", weight, x)


class SpyAttack:
    """A deterministic one-step sign attack that records what it was called with."""

    def __init__(self, eps=0.1):
        self.eps = eps
        self.calls = []

    def __call__(self, model, x, y, lam):
        self.calls.append((x.detach().clone(), y.clone(), torch.as_tensor(lam).clone()))
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x, lam), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        return (x + self.eps * grad.sign()).clamp(0, 1).detach()


def vector_batch(lam):
    x = torch.tensor([[1.0, 0.0]])
    return AdversarialBatch(x, torch.tensor([0]), lam, torch.tensor([[0.5, 0.0]]), torch.tensor([0]))


def test_vector_individual_terms():
    model = Linear()
    z_clean = model(torch.tensor([[1.0, 0.0]]))
    z_adv = model(torch.tensor([[0.5, 0.0]]))
    y = torch.tensor([0])
    assert F.cross_entropy(z_clean, y).item() == pytest.approx(CE_CLEAN, abs=1e-6)
    assert F.cross_entropy(z_adv, y).item() == pytest.approx(CE_ADV, abs=1e-6)
    assert trades_kl(z_clean, z_adv).item() == pytest.approx(KL_CLEAN_ADV, abs=1e-6)
    # The reversed direction (the lecture's mistake) is a different number.
    assert trades_kl(z_adv, z_clean).item() == pytest.approx(KL_ADV_CLEAN, abs=1e-6)


@pytest.mark.parametrize(
    "objective,lam,expected",
    [
        (PGDObjective(SpyAttack()), 0.5, 0.072539),
        (PGDObjective(SpyAttack()), 1.0, CE_ADV),
        (TradesObjective(SpyAttack(), beta_max=6.0), 1.0, 0.454984),
        (TradesObjective(SpyAttack(), beta_max=12.0), 0.5, 0.454984),  # β = β_max·λ = 6 again
        (TradesObjective(SpyAttack(), beta_max=6.0), 1 / 6, CE_CLEAN + KL_CLEAN_ADV),  # β = 1
        (MartObjective(SpyAttack(), beta=6.0), 1.0, 0.261600),
    ],
)
def test_vector_losses(objective, lam, expected):
    out = objective.loss(Linear(), vector_batch(lam))
    assert out.loss.shape == (1,)
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert objective.attack.calls == []  # the loss step never attacks


def test_vector_mixed_matches_its_formula():
    lam, mu, beta = 0.7, 0.3, 4.0
    out = MixedObjective(SpyAttack(), mu=mu, beta=beta).loss(Linear(), vector_batch(lam))
    expected = (1 - lam) * CE_CLEAN + lam * (1 - mu) * CE_ADV + lam * mu * beta * KL_CLEAN_ADV
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)


def test_vector_mart_blend_and_terms():
    # λ = 0.4: (1 − λ)·CE(x) + λ·[CE(x') − log(1.0001 − p_1(x')) + β·KL·(1.0000001 − p_0(x))].
    p_clean0 = 1 / (1 + math.exp(-4))
    p_adv1 = 1 / (1 + math.exp(2))
    bce = CE_ADV - math.log(1.0001 - p_adv1 + 1e-12)
    mart = bce + 6.0 * KL_CLEAN_ADV * (1.0000001 - p_clean0)
    assert mart == pytest.approx(0.261600, abs=1e-5)
    out = MartObjective(SpyAttack(), beta=6.0).loss(Linear(), vector_batch(0.4))
    assert out.loss.item() == pytest.approx(0.6 * CE_CLEAN + 0.4 * mart, abs=1e-5)


@pytest.mark.parametrize("name", ["pgd", "trades", "mixed", "mart"])
def test_lambda_zero_is_standard_training(name):
    out = make_objective(name, attack=SpyAttack()).loss(
        Linear(), AdversarialBatch(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), 0.0, None, [])
    )
    assert out.loss.item() == pytest.approx(CE_CLEAN, abs=1e-6)
    assert out.logits_adv is None and out.n_adv == 0


def test_vector_accuracy_counts():
    out = PGDObjective(SpyAttack()).loss(Linear(), vector_batch(0.5))
    assert out.clean_correct.item() == 1 and out.adv_correct.item() == 1 and out.n_adv == 1
    assert out.logits_clean.shape == (1, 2) and out.logits_adv.shape == (1, 2)


def test_trades_kl_gradient_flows_through_the_clean_prediction():
    model = Linear()
    out = TradesObjective(SpyAttack(), beta_max=6.0).loss(model, vector_batch(1.0))
    (grad,) = torch.autograd.grad(out.loss.sum(), model.weight)

    def reference(detach_clean):
        weight = model.weight
        z_clean = torch.tensor([[1.0, 0.0]]) @ weight.T
        z_adv = torch.tensor([[0.5, 0.0]]) @ weight.T
        log_p = F.log_softmax(z_clean.detach() if detach_clean else z_clean, dim=1)
        kl = (log_p.exp() * (log_p - F.log_softmax(z_adv, dim=1))).sum()
        loss = F.cross_entropy(z_clean, torch.tensor([0])) + 6.0 * kl
        return torch.autograd.grad(loss, weight)[0]

    assert torch.allclose(grad, reference(detach_clean=False), atol=1e-6)
    assert not torch.allclose(grad, reference(detach_clean=True), atol=1e-4)


FAMILIES = [
    ("pgd", {}),
    ("trades", {"beta_max": 6.0}),
    ("mixed", {"mu": 0.4, "beta": 3.0}),
    ("mart", {"beta": 6.0}),
]
MIXED_LAMBDA = torch.tensor([0.0, 0.1, 0.5, 1.0, 0.0, 0.3, 0.8])


@pytest.mark.parametrize("name,params", FAMILIES)
def test_per_example_lambda_matches_each_example_alone(name, params):
    torch.manual_seed(0)
    model = LambdaLinear()
    x = torch.rand(7, 4)
    y = torch.randint(0, 3, (7,))
    objective = make_objective(name, attack=SpyAttack(eps=0.2), **params)
    together = objective(model, x, y, MIXED_LAMBDA).loss
    for i in range(7):
        alone = objective(model, x[i : i + 1], y[i : i + 1], MIXED_LAMBDA[i : i + 1]).loss
        assert together[i].item() == pytest.approx(alone.item(), abs=1e-6)
    # λ matters: the same examples at one common λ give different losses.
    assert not torch.allclose(together, objective(model, x, y, 0.5).loss)


@pytest.mark.parametrize("name,params", FAMILIES)
def test_per_example_lambda_on_a_conditioned_cnn_in_eval_mode(name, params):
    torch.manual_seed(0)
    model = models.create("small_cnn", input_size=8, channels=(4, 8), hidden=16).eval()
    with torch.no_grad():  # FiLM starts as the identity; make λ change the output
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                module.weight.normal_(0, 0.5)
    x = torch.rand(7, 1, 8, 8)
    y = torch.randint(0, 10, (7,))
    objective = make_objective(name, attack=SpyAttack(eps=0.1), **params)
    batch = objective.generate(model, x, y, MIXED_LAMBDA)
    together = objective.loss(model, batch).loss
    position = {int(i): k for k, i in enumerate(batch.index)}
    for i in range(7):
        attacked = i in position
        single = AdversarialBatch(
            x[i : i + 1],
            y[i : i + 1],
            MIXED_LAMBDA[i : i + 1],
            batch.x_adv[position[i] : position[i] + 1] if attacked else None,
            [0] if attacked else [],
        )
        alone = objective.loss(model, single).loss
        assert together[i].item() == pytest.approx(alone.item(), abs=1e-5)


@pytest.mark.parametrize("name,params", FAMILIES)
def test_only_examples_with_positive_lambda_are_attacked(name, params):
    model = LambdaLinear()
    spy = SpyAttack()
    objective = make_objective(name, attack=spy, **params)
    x = torch.rand(5, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    lam = torch.tensor([0.0, 0.5, 0.0, 1.0, 0.0])
    batch = objective.generate(model, x, y, lam)
    assert len(spy.calls) == 1
    seen_x, seen_y, seen_lam = spy.calls[0]
    assert torch.equal(seen_x, x[[1, 3]]) and torch.equal(seen_y, y[[1, 3]])
    assert torch.equal(seen_lam, torch.tensor([0.5, 1.0]))
    assert batch.index.tolist() == [1, 3] and batch.x_adv.shape == (2, 4)
    out = objective.loss(model, batch)
    assert out.logits_adv.shape == (2, 3) and out.n_adv == 2 and out.loss.shape == (5,)

    spy.calls.clear()
    out = objective(model, x, y, 0.0)
    assert spy.calls == []
    assert out.logits_adv is None and out.n_adv == 0 and out.adv_correct.item() == 0
    # With no attack the loss is plain CE for every family.
    expected = F.cross_entropy(model(x, 0.0), y, reduction="none")
    assert torch.allclose(out.loss, expected)

    objective(model, x, y, torch.full((5,), 0.3))
    assert len(spy.calls) == 1 and spy.calls[0][0].shape == (5, 4)


def test_loss_refuses_a_batch_missing_adversarial_inputs():
    batch = AdversarialBatch(torch.rand(2, 2), torch.tensor([0, 1]), torch.tensor([0.0, 0.5]), None, [])
    with pytest.raises(ValueError, match="no adversarial input"):
        PGDObjective(SpyAttack()).loss(Linear(), batch)


def test_adversarial_batch_validates_shapes():
    with pytest.raises(ValueError, match="x_adv"):
        AdversarialBatch(torch.rand(3, 2), torch.tensor([0, 1, 0]), 0.5, torch.rand(2, 2), [0, 1, 2])
    with pytest.raises(ValueError, match="x_adv is None"):
        AdversarialBatch(torch.rand(3, 2), torch.tensor([0, 1, 0]), 0.5, None, [0])
    with pytest.raises(ValueError, match="lam"):
        AdversarialBatch(torch.rand(3, 2), torch.tensor([0, 1, 0]), 1.5, None, [])


class ModeRecorder(Linear):
    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x, lam=None):
        self.modes.append(self.training)
        return super().forward(x, lam)


def test_loss_runs_in_the_models_mode_and_the_attack_in_eval():
    model = ModeRecorder().train()
    objective = make_objective("pgd", eps=0.1, steps=2)
    objective(model, torch.tensor([[1.0, 0.0], [0.2, 0.3]]), torch.tensor([0, 1]), 1.0)
    assert model.training
    # Two attack forwards (eval), then the clean and adversarial loss forwards (train).
    assert model.modes == [False, False, True, True]


def test_make_objective_builds_the_families_attacks():
    assert objective_names() == ["mart", "mixed", "pgd", "trades"]
    pgd = make_objective("pgd", eps=0.3, alpha=0.01, steps=40)
    assert isinstance(pgd, PGDObjective) and isinstance(pgd.attack, PGD)
    assert pgd.attack.best is False and pgd.attack.restarts == 1 and pgd.attack.random_start
    assert (pgd.attack.eps, pgd.attack.alpha, pgd.attack.steps) == (0.3, 0.01, 40)
    trades = make_objective("trades", eps=0.1, beta_max=10.0)
    assert isinstance(trades.attack, TradesKL) and trades.beta_max == 10.0 and trades.attack.steps == 10
    # alpha=None: the OAT reference step, as `attack.alpha: null` means in a config
    assert trades.attack.alpha == pytest.approx(min(1.25 * 0.1, 0.1 + 4 / 255) / 10)
    assert make_objective("pgd", eps=0.3, steps=7).attack.alpha == pytest.approx(min(0.375, 0.3 + 4 / 255) / 7)
    mixed = make_objective("mixed", eps=0.1)
    assert isinstance(mixed.attack, PGD) and (mixed.mu, mixed.beta) == (0.5, 6.0)
    assert isinstance(make_objective("mixed", eps=0.1, attack_kind="trades").attack, TradesKL)
    mart = make_objective("mart", eps=0.1)
    assert isinstance(mart.attack, PGD) and not mart.attack.best and mart.beta == 6.0
    spy = SpyAttack()
    assert make_objective("trades", attack=spy).attack is spy


@pytest.mark.parametrize(
    "args,params,message",
    [
        (("madry",), {"eps": 0.1}, "madry"),
        (("pgd",), {"eps": 0.1, "beta": 6.0}, "beta"),
        (("trades",), {"eps": 0.1, "beta": 6.0}, "beta"),  # trades takes beta_max
        (("mart",), {"eps": 0.1, "mu": 0.5}, "mu"),
        (("trades",), {"eps": 0.1, "beta_max": 0.0}, "beta_max"),
        (("mixed",), {"eps": 0.1, "mu": 1.5}, "mu"),
        (("mixed",), {"eps": 0.1, "beta": -1.0}, "beta"),
        (("mixed",), {"eps": 0.1, "attack_kind": "cw"}, "attack_kind"),
        (("mart",), {"eps": 0.1, "beta": float("nan")}, "beta"),
        (("pgd",), {}, "eps"),
        (("pgd", SpyAttack()), {"eps": 0.1}, "not both"),
        (("pgd",), {"eps": -0.1}, "eps"),
    ],
)
def test_make_objective_rejects_bad_input(args, params, message):
    with pytest.raises(ValueError, match=message):
        make_objective(*args, **params)


@pytest.mark.parametrize("name", ["pgd", "trades", "mixed", "mart"])
def test_training_step_with_the_default_attacks(name):
    torch.manual_seed(0)
    model = models.create("small_cnn", input_size=8, channels=(4, 8), hidden=16).train()
    x = torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    lam = torch.tensor([0.0, 0.1, 0.2, 0.4, 1.0, 0.0])
    objective = make_objective(name, eps=0.1, steps=2)
    out = objective(model, x, y, lam)
    assert out.loss.shape == (6,) and bool(torch.isfinite(out.loss).all())
    assert out.n_adv == 4 and out.logits_adv.shape == (4, 10)
    out.loss.mean().backward()
    assert all(p.grad is not None for p in model.convs.parameters())
