"""Attacks: SCIENCE.md's test vector, the threat-model invariants (ball, box), stronger-never-weaker,
eval mode without side effects, per-example λ, FOSC's exact values, and the AutoAttack wrapper."""

import copy
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from oat import models
import oat
from oat.attacks import CW, FGSM, PGD, Attack, AutoAttackResult, TradesKL, autoattack, fosc, reference_step_size


class Linear(nn.Module):
    """logits = x W^T (no bias); accepts and ignores λ like oat's plain networks."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight, dtype=torch.float32))

    def forward(self, x, lam=None):
        return x.flatten(1) @ self.weight.T


def science_vector():
    """SCIENCE.md: W = [[2, 0], [−2, 0]], x = [1, 0], y = 0, ε = 0.5."""
    return Linear([[2.0, 0.0], [-2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([0]), 0.5


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return models.create("small_cnn", input_size=8, channels=(8, 16), hidden=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread only adds contention
    (measured here: a forward 6× slower with 2 threads than with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16
    return x, torch.tensor(data.target)


@pytest.fixture(scope="module")
def trained(digits):
    """A conditioned small CNN briefly trained on clean 8×8 digits with random per-example λ
    (so both BNs and the FiLM layers learn), then with extra noise on the FiLM outputs so that λ
    visibly changes the function."""
    x, y = digits
    model = tiny_cnn(0)
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        index = torch.randint(0, 1500, (64,), generator=generator)
        lam = (torch.rand(64, generator=generator) * 10).round() / 10
        loss = F.cross_entropy(model(x[index], lam), y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "film.mlp.2" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=generator))
    model.zero_grad(set_to_none=True)
    return model.eval()


def robust(model, x_adv, y, lam):
    with torch.no_grad():
        return model(x_adv, lam).argmax(1) == y


# --- SCIENCE.md's test vector ------------------------------------------------------------------


def test_fgsm_science_vector_gives_exactly_half_zero():
    model, x, y, eps = science_vector()
    for bounds in [(0.0, 1.0), None]:
        x_adv = FGSM(eps, bounds=bounds)(model, x, y)
        assert torch.equal(x_adv, torch.tensor([[0.5, 0.0]]))
    p = F.softmax(model(x_adv), 1)
    assert p[0].tolist() == pytest.approx([0.880797, 0.119203], abs=1e-6)


@pytest.mark.parametrize("best", [True, False])
def test_pgd_one_step_of_eps_equals_fgsm_on_science_vector(best):
    model, x, y, eps = science_vector()
    attack = PGD(eps, alpha=eps, steps=1, random_start=False, best=best, bounds=None)
    assert torch.equal(attack(model, x, y), torch.tensor([[0.5, 0.0]]))


def test_cw_reaches_the_corner_of_a_linear_margin_where_fosc_is_zero():
    # The margin z_1 − z_0 = (w_1 − w_0)·x is linear: its maximiser over the ball is x + ε·sign(w_1 − w_0).
    model = Linear([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0]])
    x, y, eps = torch.tensor([[0.2, -0.4, 0.5]]), torch.tensor([0]), 0.25  # margin −0.85: correct
    x_adv = CW(eps, alpha=eps, steps=1, random_start=False, bounds=None)(model, x, y)
    assert torch.allclose(x_adv, x + eps * torch.tensor([[-1.0, 1.0, 1.0]]))
    assert fosc(model, x, x_adv, y, None, eps, loss="cw").abs().item() <= 1e-6
    # best=True checks the start point too: an input already misclassified comes back unchanged.
    wrong = torch.tensor([[0.2, -0.4, 3.0]])
    assert torch.equal(CW(eps, alpha=eps, steps=1, random_start=False, bounds=None)(model, wrong, y), wrong)
    moved = CW(eps, alpha=eps, steps=1, random_start=False, best=False, bounds=None)(model, wrong, y)
    assert torch.allclose(moved, wrong + eps * torch.tensor([[-1.0, 1.0, 1.0]]))


def test_reference_step_size_and_default_alpha():
    assert reference_step_size(8 / 255, 7) == pytest.approx(10 / 255 / 7)  # 1.25ε < ε + 4/255
    assert reference_step_size(0.3, 40) == pytest.approx((0.3 + 4 / 255) / 40)
    assert PGD(0.3, steps=40).alpha == pytest.approx(2.5 * 0.3 / 40)
    assert CW(8 / 255).alpha == pytest.approx(2.5 * 8 / 255 / 20)


# --- threat model: every output in the ε-ball and in [0, 1] --------------------------------------

# Steps as large as ε or larger (at least 0.05) push iterates against the ball's and the box's edges.
ATTACKS = {
    "fgsm": lambda eps: FGSM(eps),
    "pgd": lambda eps: PGD(eps, alpha=max(eps, 0.05), steps=3, restarts=2, seed=1),
    "pgd-train": lambda eps: PGD(eps, steps=3, best=False, seed=1),
    "cw": lambda eps: CW(eps, alpha=max(eps, 0.05), steps=3, seed=1),
    "trades": lambda eps: TradesKL(eps, alpha=max(eps / 2, 0.05), steps=3, seed=1),
}


@pytest.fixture(scope="module")
def random_cnn():
    return tiny_cnn(3).eval()


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(ATTACKS)),
    eps=st.floats(0.0, 0.6),
    seed=st.integers(0, 2**31 - 1),
    lam=st.sampled_from([0.0, 0.4, 1.0]),
)
def test_every_attack_stays_in_ball_and_box(random_cnn, name, eps, seed, lam):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 8, 8, generator=generator)
    corner = torch.rand(x.shape, generator=generator)
    x[corner < 0.3] = 0.0  # pixels exactly on the box's edges, where a bad projection leaks out
    x[corner > 0.7] = 1.0
    y = torch.randint(0, 10, (4,), generator=generator)
    x_adv = ATTACKS[name](eps)(random_cnn, x, y, lam)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def test_unbounded_inputs_leave_the_box_but_not_the_ball():
    model = Linear([[1.0, -1.0], [-1.0, 1.0]])
    x, y = torch.tensor([[0.0, 1.0]]), torch.tensor([1])
    x_adv = PGD(0.5, steps=2, bounds=None, random_start=False)(model, x, y)
    assert torch.allclose(x_adv, torch.tensor([[0.5, 0.5]]))  # both coordinates moved by the full ε
    bounded = PGD(0.5, steps=2, random_start=False)(model, torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert torch.allclose(bounded, torch.tensor([[0.5, 0.5]]))
    x_adv = FGSM(0.5, bounds=None)(model, torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    assert torch.allclose(x_adv, torch.tensor([[-0.5, 1.5]]))


# --- stronger never weaker ----------------------------------------------------------------------


def test_more_steps_or_restarts_never_report_higher_robust_accuracy(trained, digits):
    x, y = digits
    x, y = x[1500:1564], y[1500:1564]
    eps, alpha, lam = 0.1, 0.025, 0.5
    flags = {}
    for steps, restarts in [(2, 1), (6, 1), (6, 3), (2, 3)]:
        flags[steps, restarts] = robust(trained, PGD(eps, alpha, steps, restarts, seed=7)(trained, x, y, lam), y, lam)
    weaker_than = [((2, 1), (6, 1)), ((6, 1), (6, 3)), ((2, 1), (2, 3)), ((2, 3), (6, 3))]
    for weak, strong in weaker_than:
        assert not (flags[strong] & ~flags[weak]).any(), f"{strong} missed an example {weak} broke"
    accuracy = {k: v.float().mean().item() for k, v in flags.items()}
    # Not vacuous: the attack breaks some but not all examples, and strength matters here.
    assert 0 < accuracy[6, 3] < accuracy[2, 1] < 1
    # Training-mode PGD (final iterate only) follows the same path, so best=True is never weaker.
    train = robust(trained, PGD(eps, alpha, 6, seed=7, best=False)(trained, x, y, lam), y, lam)
    assert not (flags[6, 1] & ~train).any()


def test_same_seed_same_result_and_seed_changes_start(trained, digits):
    x, y = digits[0][:16], digits[1][:16]
    first = PGD(0.1, steps=2, seed=3)(trained, x, y, 0.3)
    assert torch.equal(first, PGD(0.1, steps=2, seed=3)(trained, x, y, 0.3))
    assert torch.equal(first, PGD(0.1, steps=2, generator=torch.Generator().manual_seed(3))(trained, x, y, 0.3))
    assert not torch.equal(first, PGD(0.1, steps=2, seed=4)(trained, x, y, 0.3))
    # A stronger attack with the same seed draws the same starts on every later batch too.
    weak, strong = PGD(0.1, 0.025, 2, 1, seed=3), PGD(0.1, 0.025, 2, 4, seed=3)
    for _ in range(2):
        assert weak.call_generator(x.device).initial_seed() == strong.call_generator(x.device).initial_seed()


# --- eval mode, BN statistics, parameter gradients -----------------------------------------------


ALL_ATTACKS = [
    FGSM(0.1),
    PGD(0.1, steps=2, seed=0),
    PGD(0.1, steps=2, best=False, seed=0),
    CW(0.1, steps=2, seed=0),
    TradesKL(0.1, steps=2, seed=0),
]


@pytest.mark.parametrize("attack", ALL_ATTACKS, ids=lambda a: type(a).__name__)
def test_attack_restores_modes_and_has_no_side_effects(trained, digits, attack):
    model = copy.deepcopy(trained).train()
    frozen_bn = model.norms[0].bn.bn_clean
    frozen_bn.eval()  # a deliberately mixed mode must survive too
    x, y = digits[0][:8], digits[1][:8]
    lam = torch.tensor([0.0, 1.0] * 4)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    attack(model, x, y, lam)
    assert model.training and not frozen_bn.training
    assert all(m.training for m in model.modules() if m is not frozen_bn)
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), f"{key} changed"
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    attack(model, x, y, 0.2)
    assert not any(m.training for m in model.modules())


def test_mode_restored_when_the_model_raises():
    class Broken(nn.Module):
        def forward(self, x, lam=None):
            raise RuntimeError("broken forward")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="broken forward"):
        PGD(0.1)(model, torch.rand(2, 3), torch.tensor([0, 1]))
    assert model.training


def test_attack_inside_no_grad_still_works(trained, digits):
    x, y = digits[0][:4], digits[1][:4]
    with torch.no_grad():
        x_adv = FGSM(0.1)(trained, x, y, 0.5)
    assert (x_adv - x).abs().max().item() == pytest.approx(0.1, abs=1e-6)


# --- per-example λ --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attack",
    [FGSM(0.1), PGD(0.1, steps=3, random_start=False, best=False), CW(0.1, steps=3, random_start=False, best=False)],
    ids=lambda a: type(a).__name__,
)
def test_per_example_lambda_is_routed_per_example(trained, digits, attack):
    x, y = digits[0][:6], digits[1][:6]
    lams = [0.0, 0.3, 1.0, 0.0, 0.7, 0.1]
    mixed = attack(trained, x, y, torch.tensor(lams))
    alone = {lam: attack(trained, x, y, lam) for lam in set(lams)}
    for i, lam in enumerate(lams):
        assert torch.allclose(mixed[i], alone[lam][i], atol=1e-6), f"example {i} (λ = {lam})"
    # Not vacuous: λ changes the attack on these examples.
    assert not torch.allclose(alone[0.0], alone[1.0])


def test_trades_per_example_lambda_and_clean_target(trained, digits):
    x, y = digits[0][:6], digits[1][:6]
    lams = torch.tensor([0.0, 1.0, 0.3, 0.0, 1.0, 0.3])
    mixed = TradesKL(0.1, steps=3, seed=5)(trained, x, y, lams)
    for lam in (0.0, 0.3, 1.0):
        alone = TradesKL(0.1, steps=3, seed=5)(trained, x, y, lam)
        rows = lams == lam
        assert torch.allclose(mixed[rows], alone[rows], atol=1e-6)


# --- FOSC -------------------------------------------------------------------------------------------


def test_fosc_at_clean_point_is_eps_times_gradient_l1():
    model, x, y, eps = science_vector()
    # ∇ₓ CE = Wᵀ(p − e_y) = [−4·p_1, 0] with p_1 = 0.017986 (SCIENCE.md).
    assert fosc(model, x, x, y, None, eps).item() == pytest.approx(eps * 4 * 0.017986, rel=1e-4)
    for loss in ("ce", "cw"):
        x_adv = x.clone().requires_grad_(True)
        logits = model(x_adv)
        value = F.cross_entropy(logits, y) if loss == "ce" else logits[0, 1] - logits[0, 0]
        (grad,) = torch.autograd.grad(value, x_adv)
        assert fosc(model, x, x, y, None, eps, loss=loss).item() == pytest.approx(eps * grad.abs().sum().item(), rel=1e-6)
    assert model.weight.grad is None


def test_fosc_is_zero_with_zero_gradient_and_nonnegative_in_ball(trained, digits):
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))

        def forward(self, x, lam=None):
            return self.bias.expand(x.shape[0], 3) + 0 * x.flatten(1).sum(1, keepdim=True)

    x = torch.rand(3, 4)
    assert torch.equal(fosc(Constant(), x, (x + 0.1).clamp(0, 1), torch.tensor([0, 1, 2]), None, 0.1), torch.zeros(3))
    # In the ball, ⟨x' − x⁰, g⟩ ≤ ε‖g‖₁ (Hölder), for every loss; KL at x' = x⁰ has zero gradient.
    x, y = digits[0][:8], digits[1][:8]
    x_adv = PGD(0.1, steps=3, seed=0)(trained, x, y, 0.5)
    for loss in ("ce", "cw", "kl"):
        assert (fosc(trained, x, x_adv, y, 0.5, 0.1, loss=loss) >= -1e-6).all()
    # (float32 rounding of q − p, the KL gradient w.r.t. the logits, leaves ~1e-6; CE's is ~1e-3 or more)
    assert fosc(trained, x, x, None, 0.5, 0.1, loss="kl").abs().max().item() <= 1e-5
    assert fosc(trained, x, x, y, 0.5, 0.1, loss="ce").max().item() > 1e-2


def test_fosc_restores_mode_and_leaves_grads_alone(trained, digits):
    model = copy.deepcopy(trained).train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = digits[0][:4], digits[1][:4]
    fosc(model, x, x, y, torch.tensor([0.0, 1.0, 0.5, 0.2]), 0.1)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PGD(-0.1), "eps"),
        (lambda: PGD(float("nan")), "eps"),
        (lambda: PGD(0.1, steps=0), "steps"),
        (lambda: PGD(0.1, alpha=0.0), "alpha"),
        (lambda: PGD(0.1, loss="dlr"), "loss"),
        (lambda: PGD(0.1, restarts=2, random_start=False), "random_start"),
        (lambda: PGD(0.1, seed=0, generator=torch.Generator()), "either seed or generator"),
        (lambda: FGSM(0.1, bounds=(1.0, 0.0)), "low < high"),
        (lambda: TradesKL(0.1, steps=-1), "steps"),
    ],
)
def test_bad_hyperparameters_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_are_rejected(trained):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="outside the bounds"):
        FGSM(0.1)(trained, x * 2, torch.tensor([0, 1]), 0.5)
    with pytest.raises(ValueError, match="long tensor of shape"):
        FGSM(0.1)(trained, x, torch.tensor([0, 1, 2]), 0.5)
    with pytest.raises(ValueError, match="lam"):
        FGSM(0.1)(trained, x, torch.tensor([0, 1]), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="FOSC loss"):
        fosc(trained, x, x, torch.tensor([0, 1]), 0.5, 0.1, loss="dlr")
    with pytest.raises(TypeError):
        Attack(0.1)  # abstract: perturb is what an attack is


# --- AutoAttack -----------------------------------------------------------------------------------


def test_autoattack_custom_flags_ball_modes_and_side_effects(trained, digits, caplog):
    model = copy.deepcopy(trained).train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = digits[0][1500:1516], digits[1][1500:1516]
    rng = torch.get_rng_state()
    caplog.set_level(logging.DEBUG, logger="auto-attack")
    result = autoattack(model, x, y, 0.5, eps=0.1, version="custom", attacks=["apgd-ce"], batch_size=8)
    assert isinstance(result, AutoAttackResult)
    assert not [r for r in caplog.records if r.name == "auto-attack"]  # silent by default
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # the package reseeds torch: kept inside
    model.eval()
    assert torch.equal(result.robust, robust(model, result.x_adv, y, 0.5))
    assert result.accuracy == pytest.approx(result.robust.float().mean().item())
    assert (result.x_adv - x).abs().max().item() <= 0.1 + 1e-6
    assert 0.0 <= result.x_adv.min().item() and result.x_adv.max().item() <= 1.0
    # APGD-CE (100 steps) is at least as strong here as a short PGD.
    pgd = robust(model, PGD(0.1, steps=5, seed=0)(model, x, y, 0.5), y, 0.5)
    assert result.accuracy <= pgd.float().mean().item()
    assert result.accuracy < robust(model, x, y, 0.5).float().mean().item()  # it did break something

    caplog.clear()
    autoattack(model, x[:4], y[:4], 0.5, eps=0.1, version="custom", attacks=["apgd-ce"], verbose=True)
    assert [r for r in caplog.records if r.name == "auto-attack"]
    assert not logging.getLogger("auto-attack").disabled


@pytest.fixture(scope="module")
def plain(digits):
    """A plain (unconditioned) small CNN briefly trained on clean digits: half the cost per forward
    of the conditioned one, for the full standard AutoAttack."""
    x, y = digits
    torch.manual_seed(0)
    model = models.create("small_cnn", conditioned=False, input_size=8, channels=(8, 16), hidden=32)
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        index = torch.randint(0, 1500, (64,), generator=generator)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def test_autoattack_standard_on_a_handful(plain, digits):
    # Four digits and a small ε: one example survives APGD-CE, so APGD-T, FAB-T (which calls
    # backward()) and Square's 5000 queries all run on it. λ = None: the plain model(x) path.
    x, y = digits[0][1600:1604], digits[1][1600:1604]
    result = autoattack(plain, x, y, None, eps=0.05)
    assert torch.equal(result.robust, robust(plain, result.x_adv, y, None))
    assert result.robust.any() and result.accuracy < robust(plain, x, y, None).float().mean().item()
    assert (result.x_adv - x).abs().max().item() <= 0.05 + 1e-6
    assert all(p.grad is None for p in plain.parameters())


def test_autoattack_rejects_bad_arguments(trained):
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="one λ at a time"):
        autoattack(trained, x, y, torch.tensor([0.0, 1.0]), eps=0.1)
    with pytest.raises(ValueError, match="custom"):
        autoattack(trained, x, y, 0.5, eps=0.1, attacks=["apgd-ce"])
    with pytest.raises(ValueError, match="norm"):
        autoattack(trained, x, y, 0.5, eps=0.1, norm="L3")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        autoattack(trained, x + 1, y, 0.5, eps=0.1)


def test_attack_conditions_once_per_call_and_finds_what_the_per_step_path_finds(trained, digits):
    """Attacks build a frozen conditioning (each layer's λ-affine once per call, not once per step);
    a wrapper that hides the network from that fast path must get the very same examples."""

    class Opaque(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, lam):
            return self.net(x, lam)

    x, y = digits[0][:8], digits[1][:8]
    lam = torch.tensor([0.0, 0.3, 1.0, 0.0, 0.7, 0.1, 1.0, 0.5])
    mlp_calls = []
    films = [m for m in trained.modules() if isinstance(m, oat.FiLM)]
    handles = [film.mlp.register_forward_hook(lambda *args: mlp_calls.append(1)) for film in films]
    try:
        fast = PGD(0.1, steps=10, seed=3)(trained, x, y, lam)
        assert len(mlp_calls) == len(films)
        slow = PGD(0.1, steps=10, seed=3)(Opaque(trained), x, y, lam)
        assert len(mlp_calls) > 10 * len(films)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(fast, slow)
