"""The model registry, parametrised over every registered architecture (a new one is tested
automatically), and the published parameter counts."""

import pytest
import torch

from oat import models
import oat
from oat.conditioning import LambdaNorm, conditioning_overhead

# Input shapes each architecture is meant for (any registered model must appear here).
INPUTS = {
    "small_cnn": dict(shape=(1, 8, 8), options=dict(input_size=8)),
    "resnet18": dict(shape=(3, 32, 32), options={}),
    "resnet34": dict(shape=(3, 32, 32), options={}),
    "preact_resnet18": dict(shape=(3, 32, 32), options={}),
    "wrn16_8": dict(shape=(3, 32, 32), options={}),
    "wrn40_2": dict(shape=(3, 96, 96), options={}),
    "wrn34_10": dict(shape=(3, 32, 32), options={}),
    "linear": dict(shape=(101,), options=dict(in_channels=101)),
    "mlp": dict(shape=(101,), options=dict(in_channels=101, width=32)),
}

# Plain versions, 10 classes: the figures published with the architectures (ResNet-34 as in the
# OAT reference, PreAct ResNet-18 as in fast-AT codebases, WRNs as in TRADES / RobustBench).
PUBLISHED_PARAMETERS = {
    "resnet34": 21.28e6,
    "preact_resnet18": 11.17e6,
    "wrn16_8": 10.96e6,
    "wrn40_2": 2.24e6,
    "wrn34_10": 46.16e6,
}


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_architecture():
    assert set(models.names()) == set(INPUTS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_plain_parameter_counts_match_published_figures(name):
    assert count(models.create(name, conditioned=False)) == pytest.approx(PUBLISHED_PARAMETERS[name], rel=0.01)


def test_default_conditioning_costs_at_most_ten_percent_on_resnet34():
    overhead = conditioning_overhead(models.create("resnet34"), models.create("resnet34", conditioned=False))
    assert 0 < overhead <= 0.10


def test_resnet34_has_film_after_its_33_main_path_batchnorms():
    net = models.create("resnet34")
    norms = [m for m in net.modules() if isinstance(m, LambdaNorm)]
    assert sum(m.film is not None for m in norms) == 33
    assert sum(m.film is None for m in norms) == 3  # the projection shortcuts


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_both_versions_map_unit_images_and_lambda_to_logits(name):
    spec = INPUTS[name]
    torch.manual_seed(0)
    x = torch.rand(2, *spec["shape"])
    lam = torch.tensor([0.0, 0.7])
    for conditioned in (False, True):
        net = models.create(name, num_classes=7, conditioned=conditioned, **spec["options"])
        assert isinstance(net, oat.LambdaNetwork) and net.conditioned == conditioned
        net.eval()
        out = net(x, lam)
        assert out.shape == (2, 7) and torch.isfinite(out).all()
    # the same code builds both: the plain network is the conditioned one minus FiLM/dual BN
    plain = models.create(name, conditioned=False, **spec["options"])
    conditioned = oat.init_from_plain(models.create(name, **spec["options"]), plain)
    plain.eval(), conditioned.eval()
    assert torch.allclose(plain(x), conditioned(x, lam), atol=1e-4)


def test_normalisation_lives_inside_the_model():
    net = models.create("small_cnn", input_size=8, conditioned=False, mean=0.2, std=0.4)
    assert net.mean.flatten().tolist() == pytest.approx([0.2]) and net.std.flatten().tolist() == pytest.approx([0.4])
    first_conv = net.convs[0]
    seen = {}
    first_conv.register_forward_pre_hook(lambda module, inputs: seen.update(x=inputs[0]))
    x = torch.full((1, 1, 8, 8), 0.6)
    net.eval()
    net(x)
    assert torch.allclose(seen["x"], torch.ones(1, 1, 8, 8))  # (0.6 − 0.2) / 0.4


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="did you mean 'resnet34'"):
        models.create("resnet43")
    with pytest.raises(ValueError, match="conditioned=False"):
        models.create("resnet18", conditioned=False, film_width=8)
    with pytest.raises(ValueError, match="small_cnn.*widht"):
        models.create("small_cnn", widht=3)
    with pytest.raises(ValueError, match="divisible by 4"):
        models.create("small_cnn", input_size=10)


def test_film_width_is_configurable():
    narrow = models.create("resnet18", film_width=8)
    wide = models.create("resnet18", film_width=128)
    assert count(narrow) < count(wide)
