"""λ validation, encoders, FiLM, dual BatchNorm routing, fix_lambda."""

import io
import math

import pytest
import torch
import torch.nn as nn

from oat import models
import oat
from oat.conditioning import Conditioning, ConditioningConfig, DualBatchNorm, LambdaNorm, TripleBatchNorm


# ---------------------------------------------------------------- λ validation
@pytest.mark.parametrize(
    "lam, message",
    [
        (float("nan"), "NaN"),
        (1.5, "[0, 1]"),
        (-0.1, "[0, 1]"),
        (torch.tensor([0.1, float("nan"), 0.2]), "NaN"),
        (torch.tensor([0.1, 1.2, 0.2]), "[0, 1]"),
        (torch.zeros(2), "shape [3]"),
        (torch.zeros(3, 1), "shape [3]"),
        ("0.5", "float or a tensor"),
        (True, "float or a tensor"),
        (None, "required"),
    ],
)
def test_bad_lambda_is_refused_with_a_named_problem(lam, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        oat.as_lambda(lam, 3)


def test_lambda_forms_all_become_one_tensor_per_example():
    assert oat.as_lambda(0.3, 4).tolist() == pytest.approx([0.3] * 4)
    assert oat.as_lambda(torch.tensor(1.0), 2).tolist() == [1.0, 1.0]
    assert oat.as_lambda(torch.tensor([0, 1], dtype=torch.int64), 2).dtype == torch.float32


def test_model_call_validates_lambda():
    net = models.create("small_cnn", input_size=8)
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(ValueError, match="NaN"):
        net(x, float("nan"))
    with pytest.raises(ValueError, match="shape"):
        net(x, torch.zeros(4))
    with pytest.raises(ValueError, match="required"):
        net(x)
    plain = models.create("small_cnn", input_size=8, conditioned=False)
    plain(x)  # a plain network needs no λ ...
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plain(x, 2.0)  # ... but still refuses a wrong one


# ---------------------------------------------------------------- encoders
def test_sinusoidal_encoding_is_continuous_and_injective():
    enc = oat.SinusoidalEncoder(16)
    lam = torch.linspace(0, 1, 1001)
    code = enc(lam)
    assert code.shape == (1001, 16)
    steps = (code[1:] - code[:-1]).norm(dim=1)
    assert steps.max() < 0.05  # smooth: a small change of λ moves the code a little
    distances = torch.cdist(code[::50], code[::50])
    off_diagonal = distances + torch.eye(distances.shape[0]) * 10
    assert off_diagonal.min() > 0.1  # distinct λ values get distinct codes


def test_categorical_encoding_is_orthonormal_rows_and_refuses_unseen_lambda():
    enc = oat.CategoricalEncoder((0.0, 0.1, 0.2, 0.3, 0.4, 1.0), dim=128, seed=3)
    codes = enc(torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 1.0]))
    assert torch.allclose(codes @ codes.T, torch.eye(6), atol=1e-5)
    with pytest.raises(ValueError, match="0.25"):
        enc(torch.tensor([0.1, 0.25]))


@pytest.mark.parametrize("encoding", ["sinusoidal", "categorical"])
def test_saved_and_reloaded_model_conditions_identically(encoding):
    torch.manual_seed(0)
    net = models.create("small_cnn", input_size=8, encoding=encoding, code_dim=32, seed=1)
    _randomise_film(net)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    # A fresh network built with another seed has another random table until it loads the state.
    fresh = models.create("small_cnn", input_size=8, encoding=encoding, code_dim=32, seed=2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    net.eval(), fresh.eval()
    x, lam = torch.rand(6, 1, 8, 8), torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 1.0])
    assert torch.equal(net(x, lam), fresh(x, lam))


def test_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="unknown λ encoding 'onehot'"):
        ConditioningConfig(encoding="onehot")


# ---------------------------------------------------------------- FiLM and the plain twin
def _randomise_film(net):
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, oat.FiLM):
                nn.init.normal_(module.mlp[2].weight, std=0.5)
                nn.init.normal_(module.mlp[2].bias, std=0.5)


def test_film_is_identity_at_initialisation():
    film = oat.FiLM(5, code_dim=16, width=8)
    h = torch.randn(4, 5, 3, 3)
    assert torch.equal(film(h, torch.randn(4, 16)), h)


def test_fresh_conditioned_network_computes_what_its_plain_twin_computes():
    torch.manual_seed(0)
    plain = models.create("resnet18", conditioned=False)
    conditioned = oat.init_from_plain(models.create("resnet18"), plain)
    x = torch.rand(6, 3, 32, 32)
    mixed = torch.tensor([0.0, 0.5, 0.0, 1.0, 0.2, 0.0])
    plain.eval(), conditioned.eval()
    expected = plain(x)
    assert torch.allclose(conditioned(x, mixed), expected, atol=1e-5)
    assert torch.allclose(conditioned(x, 0.0), expected, atol=1e-5)
    # In train mode, batch statistics agree when the whole batch goes to one BN.
    plain.train(), conditioned.train()
    assert torch.allclose(conditioned(x, 0.7), plain(x), atol=1e-5)


def test_film_makes_lambda_matter():
    torch.manual_seed(0)
    net = models.create("small_cnn", input_size=8)
    _randomise_film(net)
    net.eval()
    x = torch.rand(4, 1, 8, 8)
    assert not torch.allclose(net(x, 0.2), net(x, 0.9))


def test_init_from_plain_refuses_mismatched_architectures():
    with pytest.raises(ValueError, match="shape mismatch for classifier.1.weight"):
        oat.init_from_plain(models.create("small_cnn", input_size=8),
                            models.create("small_cnn", input_size=8, conditioned=False, hidden=100))
    plain = models.create("small_cnn", input_size=8, conditioned=False)
    plain.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no place.*extra.bias"):
        oat.init_from_plain(models.create("small_cnn", input_size=8), plain)


# ---------------------------------------------------------------- dual BN routing
def _cond(lam, code_dim=4):
    lam = torch.as_tensor(lam, dtype=torch.float32)
    return Conditioning.build(lam, torch.zeros(lam.shape[0], code_dim))


@pytest.mark.parametrize("lam", [[0, 0, 0, 0], [0.3, 1, 0.1, 0.5], [0, 0.4, 0, 1], [1, 0, 0.2, 0]])
@pytest.mark.parametrize("training", [True, False])
def test_dual_bn_routes_each_example_by_its_lambda(lam, training):
    torch.manual_seed(0)
    bn = DualBatchNorm(3)
    with torch.no_grad():  # make the two BNs distinguishable in eval mode too
        bn.bn_clean.running_mean.fill_(1.0)
        bn.bn_adv.running_mean.fill_(-1.0)
        bn.bn_adv.weight.fill_(2.0)
    reference = DualBatchNorm(3)
    reference.load_state_dict(bn.state_dict())
    bn.train(training), reference.train(training)
    h = torch.randn(4, 3, 5, 5)
    out = bn(h, _cond(lam))
    clean = torch.tensor(lam) == 0
    if clean.any():
        assert torch.allclose(out[clean], reference.bn_clean(h[clean]), atol=1e-6)
    if (~clean).any():
        assert torch.allclose(out[~clean], reference.bn_adv(h[~clean]), atol=1e-6)


def test_dual_bn_updates_only_the_statistics_of_the_bn_each_example_used():
    bn = DualBatchNorm(2)
    bn.train()
    h = torch.randn(6, 2, 4, 4)
    bn(h, _cond([0.5, 1, 0.2, 0.4, 0.3, 1]))  # no clean example
    assert torch.equal(bn.bn_clean.running_mean, torch.zeros(2))
    assert int(bn.bn_clean.num_batches_tracked) == 0
    assert not torch.equal(bn.bn_adv.running_mean, torch.zeros(2))

    bn = DualBatchNorm(2)
    bn.train()
    lam = [0, 0.5, 0, 1, 0, 0.2]
    bn(h, _cond(lam))
    clean = torch.tensor(lam) == 0
    momentum = bn.bn_clean.momentum
    expected_clean = momentum * h[clean].mean(dim=(0, 2, 3))
    expected_adv = momentum * h[~clean].mean(dim=(0, 2, 3))
    assert torch.allclose(bn.bn_clean.running_mean, expected_clean, atol=1e-6)
    assert torch.allclose(bn.bn_adv.running_mean, expected_adv, atol=1e-6)


def test_network_output_does_not_depend_on_batch_order():
    torch.manual_seed(0)
    net = models.create("small_cnn", input_size=8)
    _randomise_film(net)
    net.train()
    x = torch.rand(8, 1, 8, 8)
    lam = torch.tensor([0, 0.1, 0, 1, 0.4, 0, 0.3, 1.0])
    perm = torch.randperm(8)
    assert torch.allclose(net(x, lam)[perm], net(x[perm], lam[perm]), atol=1e-5)


def test_single_bn_ablation_has_one_bn_per_layer():
    net = models.create("small_cnn", input_size=8, dual_bn=False)
    norms = [m for m in net.modules() if isinstance(m, LambdaNorm)]
    assert norms and all(isinstance(m.bn, nn.BatchNorm2d) for m in norms)
    dual = models.create("small_cnn", input_size=8)
    assert all(isinstance(m.bn, DualBatchNorm) for m in dual.modules() if isinstance(m, LambdaNorm))
    net(torch.rand(2, 1, 8, 8), torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------- fix_lambda
def test_fix_lambda_is_a_plain_module_equal_to_the_conditioned_call():
    torch.manual_seed(0)
    net = models.create("small_cnn", input_size=8)
    _randomise_film(net)
    net.eval()
    x = torch.rand(5, 1, 8, 8)
    fixed = oat.fix_lambda(net, 0.3)
    assert isinstance(fixed, nn.Module)
    assert torch.equal(fixed(x), net(x, 0.3))
    fixed.train()
    assert net.training  # modes propagate, as outside tools expect
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        oat.fix_lambda(net, 1.1)
    with pytest.raises(ValueError, match="NaN"):
        oat.fix_lambda(net, math.nan)


# ---------------------------------------------------------------- eval mode: one affine map per layer
def _distinct_norms(net):
    """Random FiLM and distinct running statistics in every BN, so no shortcut hides a mistake."""
    _randomise_film(net)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=generator))
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(channels, generator=generator))
                module.bias.copy_(torch.randn(channels, generator=generator))


@pytest.mark.parametrize("dual_bn,triple_bn", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("film", [True, False])
@pytest.mark.parametrize("lam", [[0, 0, 0, 0], [0.3, 1, 0.1, 0.5], [0, 0.4, 0, 1]])
def test_eval_mode_norm_is_the_routed_bn_then_film(dual_bn, triple_bn, film, lam):
    torch.manual_seed(0)
    layer = LambdaNorm(3, ConditioningConfig(dual_bn=dual_bn, triple_bn=triple_bn, film=film, code_dim=4))
    _distinct_norms(layer)
    layer.eval()
    h, code = torch.randn(4, 3, 5, 5), torch.randn(4, 4)
    cond = Conditioning.build(torch.tensor(lam, dtype=torch.float32), code)
    expected = layer.bn(h, cond) if dual_bn else layer.bn(h)
    if film:
        expected = layer.film(expected, code)
    assert torch.allclose(layer(h, cond), expected, atol=1e-5)


def test_frozen_conditioning_computes_each_layer_once_and_gives_the_same_logits():
    torch.manual_seed(0)
    net = models.create("small_cnn", input_size=8)
    _distinct_norms(net)
    net.eval()
    x, lam = torch.rand(6, 1, 8, 8), torch.tensor([0.0, 0.1, 0.2, 0.0, 0.4, 1.0])
    mlp_calls = []
    for module in net.modules():
        if isinstance(module, oat.FiLM):
            module.mlp.register_forward_hook(lambda *args: mlp_calls.append(1))
    films = sum(isinstance(m, oat.FiLM) for m in net.modules())
    frozen = net.condition(lam, frozen=True)
    first = net(x, frozen)
    second = net(x.flip(0), frozen)
    assert len(mlp_calls) == films  # once per FiLM layer for both forwards
    assert len(frozen.eval_affine) == sum(isinstance(m, LambdaNorm) for m in net.modules())
    assert all(not scale.requires_grad for scale, _ in frozen.eval_affine.values())
    assert torch.equal(first, net(x, lam)) and torch.equal(second, net(x.flip(0), lam))
    assert len(mlp_calls) == 3 * films  # an ordinary forward evaluates every FiLM again
    with pytest.raises(ValueError, match="6 examples, the batch has 2"):
        net(x[:2], frozen)
    with pytest.raises(ValueError, match="plain network"):
        models.create("small_cnn", input_size=8, conditioned=False)(x, frozen)


# ---------------------------------------------------------------- FiLM forms, triple BN, conditioned heads
def test_film_forms_start_where_they_say():
    torch.manual_seed(0)
    h, code = torch.randn(4, 6, 3, 3), torch.randn(4, 16)
    assert torch.equal(oat.FiLM(6, 16, 8, form="identity")(h, code), h)
    near = oat.FiLM(6, 16, 8, form="near_identity")
    gamma, beta = near.modulation(code)
    assert 0 < (gamma - 1).abs().max() < 0.1 and 0 < beta.abs().max() < 0.1  # near, not at, the identity
    reference = oat.FiLM(6, 16, None, form="reference")
    assert reference.mlp[0].out_features == 12  # width 2C
    raw = reference.mlp(code)
    gamma, beta = reference.modulation(code)
    assert torch.allclose(gamma, torch.nn.functional.leaky_relu(raw[:, :6], 0.01))
    assert torch.allclose(beta, torch.nn.functional.leaky_relu(raw[:, 6:], 0.01))
    assert reference.mlp[1].negative_slope == 0.01
    with pytest.raises(ValueError, match="film_form"):
        oat.FiLM(6, 16, 8, form="yoto")
    with pytest.raises(ValueError, match="film_form"):
        ConditioningConfig(film_form="yoto")


@pytest.mark.parametrize("lam", [[0, 0, 0, 0], [0.3, 1, 0.1, 0.5], [0, 0.4, 0, 1], [1, 1, 0, 1]])
@pytest.mark.parametrize("training", [True, False])
def test_triple_bn_routes_each_example_by_its_lambda(lam, training):
    torch.manual_seed(0)
    bn = TripleBatchNorm(3)
    with torch.no_grad():
        for value, norm in zip((1.0, 0.0, -1.0), (bn.bn_clean, bn.bn_mixed, bn.bn_adv)):
            norm.running_mean.fill_(value)
            norm.weight.fill_(2.0 + value)
    reference = TripleBatchNorm(3)
    reference.load_state_dict(bn.state_dict())
    bn.train(training), reference.train(training)
    h = torch.randn(4, 3, 5, 5)
    out = bn(h, _cond(lam))
    lam = torch.tensor(lam, dtype=torch.float32)
    for mask, norm in ((lam == 0, reference.bn_clean), ((lam > 0) & (lam < 1), reference.bn_mixed),
                       (lam == 1, reference.bn_adv)):
        if mask.any():
            assert torch.allclose(out[mask], norm(h[mask]), atol=1e-6)


def test_triple_bn_updates_only_the_statistics_of_the_bn_each_example_used():
    bn = TripleBatchNorm(2).train()
    h = torch.randn(5, 2, 4, 4)
    bn(h, _cond([0, 0.5, 0, 0.2, 0]))  # no λ = 1 example
    assert torch.equal(bn.bn_adv.running_mean, torch.zeros(2)) and int(bn.bn_adv.num_batches_tracked) == 0
    mixed = torch.tensor([False, True, False, True, False])
    assert torch.allclose(bn.bn_mixed.running_mean, bn.bn_mixed.momentum * h[mixed].mean(dim=(0, 2, 3)), atol=1e-6)


def _head_net(**options):
    torch.manual_seed(0)
    net = models.create("small_cnn", input_size=8, **options)
    _distinct_norms(net)
    return net


@pytest.mark.parametrize("options", [dict(film_head=True), dict(dual_head=True), dict(film_head=True, dual_head=True),
                                     dict(triple_bn=True)])
@pytest.mark.parametrize("training", [True, False])
def test_a_batch_of_mixed_lambdas_equals_one_example_at_a_time(options, training):
    net = _head_net(**options).train(training)
    x, lam = torch.rand(5, 1, 8, 8), torch.tensor([0.0, 0.3, 1.0, 0.0, 0.7])
    if training:  # batch statistics: compare with each λ group's own batch
        groups = [lam == 0, lam > 0] if "triple_bn" not in options else [lam == 0, (lam > 0) & (lam < 1), lam == 1]
        out = net(x, lam)
        for mask in groups:
            assert torch.allclose(out[mask], net(x[mask], lam[mask]), atol=1e-5)
        return
    batch = net(x, lam)
    singles = torch.cat([net(x[i:i + 1], lam[i:i + 1]) for i in range(5)])
    assert torch.allclose(batch, singles, atol=1e-5)


def test_the_dual_head_serves_lambda_zero_and_only_it_learns_from_lambda_zero():
    net = _head_net(dual_head=True).eval()
    x = torch.rand(3, 1, 8, 8)
    assert net.separate_lambdas == [0.0]
    net(x, torch.tensor([0.0, 0.0, 0.0])).sum().backward()
    assert net.classifier_clean[1].weight.grad.abs().sum() > 0 and net.classifier[1].weight.grad.abs().sum() == 0
    net.zero_grad(set_to_none=True)
    net(x, torch.tensor([0.2, 1.0, 0.5])).sum().backward()
    assert net.classifier_clean[1].weight.grad.abs().sum() == 0 and net.classifier[1].weight.grad.abs().sum() > 0


def test_the_film_head_makes_lambda_reach_the_classifier():
    net = _head_net(film_head=True, dual_bn=False)
    with torch.no_grad():  # only the head's FiLM depends on λ: every norm's FiLM at the identity
        for norm in net.norms:
            norm.film.mlp[2].weight.zero_(), norm.film.mlp[2].bias.zero_()
    net.eval()
    x = torch.rand(2, 1, 8, 8)
    assert not torch.allclose(net(x, 0.2), net(x, 0.9))


def test_separate_lambdas_name_where_the_figures_jump():
    assert models.create("small_cnn", input_size=8).separate_lambdas == [0.0]
    assert models.create("small_cnn", input_size=8, triple_bn=True).separate_lambdas == [0.0, 1.0]
    assert models.create("small_cnn", input_size=8, dual_bn=False).separate_lambdas == []
    assert models.create("small_cnn", input_size=8, dual_bn=False, dual_head=True).separate_lambdas == [0.0]
    assert models.create("small_cnn", input_size=8, conditioned=False).separate_lambdas == []


@pytest.mark.parametrize("options,message", [(dict(conditioned=False, film_head=True), "conditioned network"),
                                             (dict(conditioned=False, dual_head=True), "conditioned network"),
                                             (dict(film=False, film_head=True), "film_head needs FiLM")])
def test_head_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        models.create("small_cnn", input_size=8, **options)
