"""Two end models mixed at inference (oat.mixture): the baseline a user would try instead of OAT."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import oat
from oat import models
from oat.attacks import PGD
from oat.cli import main
from oat.mixture import MixedEnds, interpolate, interpolation_barrier
from oat.runs import member_runs, write_mixture

torchattacks = pytest.importorskip("torchattacks")  # in the test extras


def members(seed=0):
    torch.manual_seed(seed)
    accurate = models.create("small_cnn", conditioned=False, input_size=8).eval()
    robust = models.create("small_cnn", conditioned=False, input_size=8).eval()
    return accurate, robust


def test_alpha_zero_and_one_are_the_members():
    accurate, robust = members()
    mixture = MixedEnds(accurate, robust)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(mixture(x, 0.0), F.log_softmax(accurate(x), dim=1))
        assert torch.equal(mixture(x, 1.0), F.log_softmax(robust(x), dim=1))
        middle = mixture(x, 0.25).exp()
        expected = 0.75 * F.softmax(accurate(x), dim=1) + 0.25 * F.softmax(robust(x), dim=1)
        assert torch.allclose(middle, expected, atol=1e-6)


def test_per_example_alpha_in_a_batch_equals_one_at_a_time():
    mixture = MixedEnds(*members())
    x, alpha = torch.rand(6, 1, 8, 8), torch.tensor([0.0, 0.3, 1.0, 0.0, 0.9, 0.5])
    with torch.no_grad():
        batch = mixture(x, alpha)
        singles = torch.cat([mixture(x[i:i + 1], float(alpha[i])) for i in range(6)])
    assert torch.allclose(batch, singles, atol=1e-6)
    assert torch.equal(batch[0], singles[0]) and torch.equal(batch[2], singles[2])  # the ends exactly


def test_an_attacks_gradient_reaches_both_members():
    accurate, robust = members()
    mixture = MixedEnds(accurate, robust)
    x, y = torch.rand(4, 1, 8, 8, requires_grad=True), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(mixture(x, 0.5), y).backward()
    for member in (accurate, robust):
        assert member.classifier[1].weight.grad.abs().sum() > 0
    # What the attacks use: the input gradient is the mixture's, not one member's.
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(mixture(x, 0.5), y), x)
    (alone,) = torch.autograd.grad(F.cross_entropy(robust(x), y), x)
    assert not torch.allclose(grad, alone)
    adversarial = PGD(eps=0.3, alpha=0.1, steps=3)(mixture, x.detach(), y, 0.5)
    assert adversarial.shape == x.shape and (adversarial - x).abs().max() <= 0.3 + 1e-6


def test_the_mixture_works_inside_torchattacks_and_autoattack_through_fix_lambda():
    from pyautoattack import AutoAttack

    mixture = MixedEnds(*members()).eval()
    wrapped = oat.fix_lambda(mixture, 0.4)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    adversarial = torchattacks.PGD(wrapped, eps=0.2, alpha=0.05, steps=3)(x, y)
    assert (adversarial - x).abs().max() <= 0.2 + 1e-6
    auto = AutoAttack(wrapped, norm="Linf", eps=0.2, version="custom", attacks=["apgd-ce"], seed=0)
    auto.apgd.n_iter = 5
    adversarial = auto.run_standard_evaluation(x, y, batch_size=8)[0]
    assert (adversarial - x).abs().max() <= 0.2 + 1e-5
    assert not wrapped.training and not mixture.accurate.training  # the tools left it in eval mode


def test_a_mixture_needs_its_weight():
    with pytest.raises(ValueError, match="mixing weight"):
        MixedEnds(*members())(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError):
        MixedEnds(*members())(torch.rand(2, 1, 8, 8), 1.5)


def test_interpolation_is_linear_in_the_weights_and_the_barrier_measures_the_path():
    first, second = members(0)[0], members(1)[0]
    halfway = interpolate(first, second, 0.5)
    for key, value in halfway.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (first.state_dict()[key] + second.state_dict()[key]) / 2)
    assert torch.equal(interpolate(first, second, 0.0).classifier[1].weight, first.classifier[1].weight)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    same = interpolation_barrier(first, first, x, y, steps=4)
    assert same["barrier"] == pytest.approx(0.0) and same["usable"] and len(same["errors"]) == 5
    with pytest.raises(ValueError, match="same architecture"):
        interpolate(first, models.create("small_cnn", conditioned=False, input_size=8, hidden=50), 0.5)


@pytest.fixture(scope="module")
def end_runs(tmp_path_factory):
    """One-epoch dedicated λ = 0 and λ = 1 runs on the digits, and a mixture directory of them."""
    root = tmp_path_factory.mktemp("mixture_runs")
    config = Path(__file__).resolve().parent.parent / "configs" / "digits_oat.yaml"
    common = ["--config", str(config), "--set", "train.epochs=1", "--set", "attack.steps=2", "--quiet",
              "--set", "model.conditioned=false", "--set", "lambdas.sampler=fixed"]
    for lam in (0, 1):
        assert main(["train", *common, "--out", str(root / f"lambda-{lam}"),
                     "--set", f"lambdas.params={{value: {lam}}}"]) == 0
    write_mixture(root / "mixed", root / "lambda-0", root / "lambda-1")
    return root


def test_a_mixture_directory_evaluates_and_picks_like_a_run(end_runs, capsys):
    mixed = end_runs / "mixed"
    assert member_runs(mixed) == (mixed / "../lambda-0", mixed / "../lambda-1")
    assert main(["eval", "--checkpoint", str(mixed), "--lambdas", "0,0.5,1", "--attacks", "pgd-5", "--n", "60",
                 "--quiet"]) == 0
    result = json.loads((mixed / "eval.json").read_text())
    assert [p["lambda"] for p in result["points"]] == [0.0, 0.5, 1.0]
    model, state = oat.runs.load_run(mixed)
    ends = [oat.runs.load_run(end_runs / f"lambda-{lam}")[1] for lam in (0, 1)]
    assert state["train_seconds"] == pytest.approx(sum(s["train_seconds"] for s in ends))
    assert state["passes"] == {k: ends[0]["passes"][k] + ends[1]["passes"][k] for k in ends[0]["passes"]}
    assert result["train_passes"] == state["passes"] and result["continuous_lambda"] is True
    # α = 0 and 1 are the members: their own evaluations, example for example
    for lam, point in ((0, result["points"][0]), (1, result["points"][2])):
        assert main(["eval", "--checkpoint", str(end_runs / f"lambda-{lam}"), "--lambdas", f"{lam}",
                     "--attacks", "pgd-5", "--n", "60", "--quiet"]) == 0
        own = json.loads((end_runs / f"lambda-{lam}" / "eval.json").read_text())["points"][0]
        assert own["per_example"] == point["per_example"]
    assert main(["pick", "--eval", str(mixed), "--min-clean", "0.1"]) == 0
    capsys.readouterr()


def test_a_broken_mixture_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "mixture.yaml").write_text("accurate: a\n")
    assert main(["eval", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'accurate' and 'robust'" in err and "lacks robust" in err and len(err.splitlines()) == 1


def test_interpolated_ends_take_alpha_per_example_and_are_the_interpolated_network():
    from oat.mixture import InterpolatedEnds

    first, second = members(0)[0], members(1)[0]
    model = InterpolatedEnds(first, second).eval()
    x, alpha = torch.rand(5, 1, 8, 8), torch.tensor([0.0, 0.25, 1.0, 0.25, 0.6])
    with torch.no_grad():
        batch = model(x, alpha)
        assert torch.equal(model(x, 0.0), first(x)) and torch.allclose(model(x, 1.0), second(x), atol=1e-6)
        for i in range(5):
            assert torch.allclose(batch[i], interpolate(first, second, float(alpha[i]))(x[i:i + 1])[0], atol=1e-5)
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x, alpha), torch.arange(5)), x)
    assert grad.abs().sum() > 0  # attacks reach the input through every α's network


def test_both_mixtures_take_an_empty_batch():
    """An attack of a cascade may be handed no examples (an earlier one broke them all)."""
    from oat.mixture import InterpolatedEnds

    first, second = members(0)[0], members(1)[0]
    empty = torch.rand(0, 1, 8, 8)
    for model in (InterpolatedEnds(first, second).eval(), MixedEnds(first, second).eval()):
        for alpha in (0.5, torch.zeros(0)):
            assert model(empty, alpha).shape == (0, 10)
    assert PGD(eps=0.1, steps=2)(InterpolatedEnds(first, second).eval(), empty, torch.zeros(0, dtype=torch.long),
                                 0.5).shape == empty.shape


def test_a_weights_mixture_directory_loads_the_interpolation(end_runs, tmp_path):
    from oat.mixture import InterpolatedEnds

    write_mixture(tmp_path / "interp", end_runs / "lambda-0", end_runs / "lambda-1", mixing="weights")
    model, state = oat.runs.load_run(tmp_path / "interp")
    assert isinstance(model, InterpolatedEnds) and state["model_spec"]["mixture"]["mixing"] == "weights"
    with pytest.raises(ValueError, match="mixing must be one of"):
        write_mixture(tmp_path / "bad", end_runs / "lambda-0", end_runs / "lambda-1", mixing="logits")
