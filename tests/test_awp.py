import copy

import pytest
import torch
import torch.nn.functional as F

from oat import models
from oat.awp import AWP, perturbable_weights
from oat.objectives import make_objective


def tiny_cnn(conditioned=True):
    torch.manual_seed(0)
    return models.create("small_cnn", conditioned=conditioned, input_size=8, channels=(4, 8), hidden=16)


def data(batch_size=8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(batch_size, 1, 8, 8, generator=g), torch.randint(0, 10, (batch_size,), generator=g)


def ce_loss_fn(model, x, y, lam=0.5):
    return lambda: F.cross_entropy(model(x, lam), y)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_perturbation_size_is_gamma_times_weight_norm_per_layer():
    model = tiny_cnn().train()
    x, y = data()
    gamma = 5e-3
    weights = perturbable_weights(model)
    original = {name: p.detach().clone() for name, p in weights}
    state = snapshot(model)
    grads = torch.autograd.grad(ce_loss_fn(model, x, y)(), [p for _, p in weights])
    model.load_state_dict(state)  # undo the BN statistics this reference forward moved
    grad = {name: g for (name, _), g in zip(weights, grads)}
    with AWP(gamma).perturbed(model, ce_loss_fn(model, x, y), epoch=0) as v:
        assert set(v) == set(original)
        for name, p in perturbable_weights(model):
            assert torch.allclose(p.detach() - original[name], v[name], atol=1e-7)
            if grad[name].norm() == 0 or original[name].norm() == 0:
                # FiLM: the zero-initialised last layers have ‖w‖ = 0 and block the gradient
                # of the first layers; either way there is no perturbation.
                assert "film" in name and v[name].norm() == 0
                continue
            assert v[name].norm().item() == pytest.approx(gamma * original[name].norm().item(), rel=1e-4)
            # ... in the direction of the gradient of the loss.
            cosine = F.cosine_similarity(v[name].flatten(), grad[name].flatten(), dim=0)
            assert cosine.item() == pytest.approx(1.0, abs=1e-5)
    assert v["convs.0.weight"].norm() > 0 and v["classifier.1.weight"].norm() > 0
    assert v["norms.0.film.mlp.2.weight"].norm() == 0


def test_only_rank_two_or_more_weights_are_perturbed():
    model = tiny_cnn().train()
    x, y = data()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with AWP(1e-2).perturbed(model, ce_loss_fn(model, x, y), epoch=0) as v:
        for name, p in model.named_parameters():
            if p.dim() > 1:
                assert name in v
            else:  # biases, BatchNorm affine parameters, FiLM biases
                assert name not in v and torch.equal(p, before[name]), name
    names = set(v)
    assert not any(name.endswith("bias") for name in names)
    assert not any(".bn." in name for name in names)


def test_loss_at_perturbed_weights_is_higher():
    model = tiny_cnn().eval()  # eval: the same function before and inside the block
    x, y = data()
    loss_fn = ce_loss_fn(model, x, y)
    with torch.no_grad():
        at_w = loss_fn().item()
    with AWP(1e-3).perturbed(model, loss_fn, epoch=0):
        with torch.no_grad():
            at_w_plus_v = loss_fn().item()
    assert at_w_plus_v > at_w


def test_weights_bit_identical_after_block_and_after_exception():
    model = tiny_cnn().train()
    x, y = data()
    before = snapshot(model)
    awp = AWP(5e-2)
    with awp.perturbed(model, ce_loss_fn(model, x, y), epoch=0):
        loss = F.cross_entropy(model(x, 0.5), y)
        loss.backward()
    after = snapshot(model)
    for key in before:
        if "running" in key or "num_batches" in key:
            continue  # the caller's own training forward legitimately moves BN statistics
        assert torch.equal(before[key], after[key]), key

    weights_before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"):
        with awp.perturbed(model, ce_loss_fn(model, x, y), epoch=0):
            raise RuntimeError("failure inside the block")
    for name, p in model.named_parameters():
        assert torch.equal(p, weights_before[name]), name


def test_weights_and_buffers_restored_when_loss_fn_fails():
    model = tiny_cnn().train()
    x, _ = data()
    before = snapshot(model)

    def failing():
        model(x, 0.5)  # moves BN statistics, then fails
        raise RuntimeError("loss failed")

    with pytest.raises(RuntimeError, match="loss failed"):
        with AWP(5e-3).perturbed(model, failing, epoch=0):
            pass
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_perturbation_step_leaves_batchnorm_buffers_and_grads_alone():
    model = tiny_cnn().train()
    x, y = data()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    assert any("running_mean" in name for name in buffers)
    with AWP(5e-3).perturbed(model, ce_loss_fn(model, x, y), epoch=0):
        for name, b in model.named_buffers():
            assert torch.equal(b, buffers[name]), name
        assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


def test_no_op_during_warmup_and_with_gamma_zero():
    model = tiny_cnn().train()
    x, y = data()
    calls = []

    def loss_fn():
        calls.append(1)
        return F.cross_entropy(model(x, 0.5), y)

    before = snapshot(model)
    awp = AWP(5e-3, warmup_epochs=2)
    for epoch in (0, 1):
        assert not awp.active(epoch)
        with awp.perturbed(model, loss_fn, epoch) as v:
            assert v == {}
            assert all(torch.equal(before[k], t) for k, t in snapshot(model).items())
    with AWP(0.0).perturbed(model, loss_fn, epoch=10) as v:
        assert v == {}
    assert calls == []
    assert awp.active(2)
    with awp.perturbed(model, loss_fn, epoch=2) as v:
        assert v and calls == [1]


@pytest.mark.parametrize(
    "kwargs,message",
    [({"gamma": -1.0}, "gamma"), ({"gamma": float("inf")}, "gamma"), ({"warmup_epochs": -1}, "warmup"),
     ({"warmup_epochs": 1.5}, "warmup")],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AWP(**kwargs)


def test_loss_fn_must_return_a_differentiable_scalar():
    model = tiny_cnn()
    x, y = data()
    with pytest.raises(ValueError, match="scalar"):
        with AWP().perturbed(model, lambda: F.cross_entropy(model(x, 0.5), y, reduction="none"), 0):
            pass
    with pytest.raises(ValueError, match="no gradient"):
        with AWP().perturbed(model, lambda: torch.tensor(1.0), 0):
            pass


@pytest.mark.parametrize("name", ["pgd", "trades", "mart"])
def test_training_step_with_each_objective(name):
    model = tiny_cnn().train()
    x, y = data()
    lam = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 0.0, 1.0])
    objective = make_objective(name, eps=0.1, steps=2)
    batch = objective.generate(model, x, y, lam)
    assert batch.index.numel() == 6

    def loss_fn():
        return objective.loss(model, batch).loss.mean()

    # The gradient AWP leads to must equal the gradient of an explicitly perturbed copy.
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers_before = {n: b.clone() for n, b in model.named_buffers()}
    optimizer.zero_grad()
    with AWP(1e-2).perturbed(model, loss_fn, epoch=0) as v:
        loss = loss_fn()
        loss.backward()
    assert torch.isfinite(loss)

    # The copy starts from the same BN statistics the perturbation step restored.
    reference.load_state_dict({**reference.state_dict(), **buffers_before})
    with torch.no_grad():
        for n, p in reference.named_parameters():
            if n in v:
                p.add_(v[n])
    ref_loss = objective.loss(reference, batch).loss.mean()
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    ref_grads = dict(reference.named_parameters())
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n].grad, atol=1e-6, rtol=1e-4), n

    # The gradient at w + v is applied to w itself.
    optimizer.step()
    for n, p in model.named_parameters():
        assert torch.allclose(p.detach(), weights_before[n] - 0.1 * ref_grads[n].grad, atol=1e-6), n
