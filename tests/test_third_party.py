"""oat.fix_lambda inside the attack libraries people already use (torchattacks, AutoAttack via
pyautoattack): the wrapped model comes out exactly as it went in — same mode, same BatchNorm
statistics, same logits — and the adversarial images lie in the ε-ball and in [0, 1]."""

import pytest
import torch

import oat
from oat import datasets, models

torchattacks = pytest.importorskip("torchattacks")  # in the test extras

EPS = 0.1


@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    net = models.create("small_cnn", num_classes=10, conditioned=True, input_shape=(1, 8, 8))
    splits = datasets.load("digits")
    x, y = datasets.dataset_tensors(splits.test)
    x, y = datasets.to_unit(x[:24]), y[:24]
    net.train()
    for _ in range(3):  # running statistics that differ from the defaults, so a change would show
        net(x, torch.rand(len(x)))
    return net, x, y


def _state(net, x):
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    modes = [m.training for m in net.modules()]
    with torch.no_grad():
        was = net.training
        net.eval()
        logits = net(x, 0.3)
        net.train(was)
    return buffers, modes, logits


def _attacks(wrapped, mode):
    """torchattacks sets eval mode itself and restores the wrapper's mode afterwards; AutoAttack
    runs the model in whatever mode it finds (its README: call .eval() first), so only there."""
    from pyautoattack import AutoAttack

    attacks = {
        "torchattacks.PGD": torchattacks.PGD(wrapped, eps=EPS, alpha=EPS / 4, steps=5),
        "torchattacks.APGD": torchattacks.APGD(wrapped, eps=EPS, steps=5),
        "torchattacks.Square": torchattacks.Square(wrapped, eps=EPS, n_queries=50),
    }
    if mode == "eval":
        auto = AutoAttack(wrapped, norm="Linf", eps=EPS, version="custom", attacks=["apgd-ce", "square"], seed=0)
        auto.apgd.n_iter = 5
        auto.square.n_queries = 50
        attacks["AutoAttack"] = lambda x, y: auto.run_standard_evaluation(x, y, batch_size=len(y))[0]
    return attacks


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attack_libraries_leave_a_fixed_lambda_model_exactly_as_they_found_it(model_and_batch, mode):
    net, x, y = model_and_batch
    getattr(net, mode)()
    wrapped = oat.fix_lambda(net, 0.3)
    assert wrapped.training == net.training == (mode == "train")
    for name, attack in _attacks(wrapped, mode).items():
        buffers, modes, logits = _state(net, x)
        x_adv = attack(x, y)
        after_buffers, after_modes, after_logits = _state(net, x)
        assert after_modes == modes, f"{name} changed the model's mode"
        assert wrapped.training == net.training == (mode == "train"), name
        for key in buffers:
            assert torch.equal(buffers[key], after_buffers[key]), f"{name} changed {key}"
        assert torch.equal(logits, after_logits), name
        assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1, name
        assert (x_adv - x).abs().max() <= EPS + 1e-6, name


def test_train_and_eval_on_either_side_reach_both(model_and_batch):
    net, _, _ = model_and_batch
    net.eval()
    wrapped = oat.fix_lambda(net, 1.0)
    assert not wrapped.training  # born in the model's mode, not in train mode
    wrapped.train()
    assert net.training and all(m.training for m in net.modules())
    net.eval()
    assert not wrapped.training
    wrapped.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert wrapped.training
