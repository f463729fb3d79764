"""The Tsipras et al. (2019) task end to end: unbounded attacks, the vector models, closed forms
against sampling at the notes' setting (p = 0.95, d = 100, η = 0.3, ε = 0.6), the true frontier,
and the comparison that draws one against the other."""

import json
import math

import numpy as np
import pytest
import torch

import oat
from oat import datasets, models
from oat.attacks import FGSM, PGD
from oat.cli import main
from oat.datasets import sample_tsipras, tsipras_accuracy
from oat.frontier.analytic import TOLERANCE, distance, robust_at, true_frontier, tsipras_linear_frontier

P, D, ETA, EPS = 0.95, 100, 0.3, 0.6


@pytest.fixture(scope="module")
def frontier():
    return tsipras_linear_frontier(P, D, ETA, EPS)


@pytest.fixture(scope="module")
def draws():
    """100,000 draws of the task: accuracy to about ±0.0014 (one standard error at 95%)."""
    x, y = sample_tsipras(100_000, P, D, ETA, np.random.default_rng(11))
    return x.astype(np.float64), y.astype(np.float64)


def classifiers():
    """Averaging, sign(x₁), the Bayes-optimal linear rule, a biased one from the frontier's plateau
    (robust on one class only), and a random mix."""
    rest = np.ones(D)
    weights = {"averaging": (np.r_[0.0, rest], 0.0), "sign(x1)": (np.r_[1.0, 0 * rest], 0.0),
               "bayes": (np.r_[math.log(P / (1 - P)), 2 * ETA * rest], 0.0)}
    plateau = np.zeros(D + 1)
    plateau[0], plateau[1:76] = 0.45725, (1 - 0.45725) / 75
    weights["plateau"] = (plateau, 0.41186)
    generator = np.random.default_rng(3)
    weights["random"] = (np.r_[0.3, 0.02 * generator.standard_normal(D) + 0.01], -0.05)
    return weights


@pytest.mark.parametrize("name", list(classifiers()))
def test_closed_forms_match_sampling_at_the_notes_setting(draws, name):
    x, y = draws
    w, b = classifiers()[name]
    sa, ra = tsipras_accuracy(w, b=b, eps=EPS, p=P, eta=ETA)
    clean = float((y * (x @ w + b) > 0).mean())
    worst = x - EPS * y[:, None] * np.sign(w)  # a linear model's exact worst case in the L∞ ball
    robust = float((y * (worst @ w + b) > 0).mean())
    n = len(y)
    for exact, sampled in ((sa, clean), (ra, robust)):
        assert abs(exact - sampled) <= 4 * math.sqrt(max(exact * (1 - exact), 1 / n) / n)


def test_the_frontier_ends_where_the_notes_say(frontier):
    assert np.all(np.diff(frontier[:, 0]) > 0) and np.all(np.diff(frontier[:, 1]) < 0)  # a Pareto front
    # The robust end: sign(x₁), SA = RA = p (ε < 1 cannot flip x₁), and nothing beats RA = p.
    assert frontier[:, 1].max() == pytest.approx(P, abs=1e-9)
    assert robust_at(frontier, P - 1e-9) == pytest.approx(P, abs=1e-9)
    # The accurate end: the Bayes-optimal linear rule (SA 99.95%, RA 0.24%); the notes' averaging
    # classifier (SA ≈ 99.9%, RA ≈ 0.1%) lies just behind it.
    bayes, _ = classifiers()["bayes"]
    sa_bayes, ra_bayes = tsipras_accuracy(bayes, eps=EPS, p=P, eta=ETA)
    assert frontier[:, 0].max() == pytest.approx(sa_bayes, abs=1e-6) and sa_bayes == pytest.approx(0.99947, abs=1e-5)
    assert robust_at(frontier, sa_bayes - 1e-6) == pytest.approx(ra_bayes, abs=1e-4)
    sa_avg, ra_avg = tsipras_accuracy(classifiers()["averaging"][0], eps=EPS, p=P, eta=ETA)
    assert round(100 * sa_avg, 1) == 99.9 and round(100 * ra_avg, 1) == 0.1
    assert 0 < distance(frontier, sa_avg, ra_avg) < 0.002
    # The plateau at RA = p/2: classifiers robust on one class only.
    sa_plateau, ra_plateau = tsipras_accuracy(*classifiers()["plateau"], eps=EPS, p=P, eta=ETA)
    assert ra_plateau == pytest.approx(P / 2, abs=1e-6) and sa_plateau > 0.974
    assert distance(frontier, sa_plateau, ra_plateau) <= TOLERANCE


def test_no_linear_classifier_lies_beyond_the_frontier(frontier):
    generator = np.random.default_rng(0)
    for _ in range(300):
        w = np.abs(generator.standard_normal(D + 1)) * generator.choice([0.0, 1.0], D + 1, p=[0.3, 0.7])
        w[0] = generator.uniform(0, 3) * w[1:].sum() / D + 1e-9
        b = generator.choice([0.0, 1.0]) * generator.exponential(0.3) * (np.abs(w).sum() / D)
        sa, ra = tsipras_accuracy(w * generator.choice([-1.0, 1.0], D + 1, p=[0.1, 0.9]), b=b, eps=EPS, p=P, eta=ETA)
        assert robust_at(frontier, sa - TOLERANCE) >= ra - TOLERANCE


def test_the_frontier_without_bias_is_behind_the_one_with_it(frontier):
    unbiased = tsipras_linear_frontier(P, D, ETA, EPS, bias=False)
    assert all(distance(frontier, sa, ra) >= 0 for sa, ra in unbiased[::50])
    assert robust_at(unbiased, 0.974) < 0.3 < P / 2 - 0.1 < robust_at(frontier, 0.974)


def test_attacks_search_the_whole_ball_when_the_dataset_is_unbounded():
    splits = datasets.load("tsipras", n_train=10, n_test=256, seed=1)
    assert splits.info.bounds is None
    x, y = splits.test.images, splits.test.labels
    torch.manual_seed(0)
    net = models.create("linear", num_classes=2, conditioned=False, input_shape=splits.info.input_shape).eval()
    w = net.decision_function(0.0)[0]
    exact = x - EPS * (2 * y[:, None] - 1).float() * torch.sign(w)  # the ball's worst corner
    for attack in (PGD(EPS, steps=10, bounds=splits.info.bounds, seed=0), FGSM(EPS, bounds=splits.info.bounds)):
        adv = attack(net, x, y, lam=0.0)
        assert (adv - x).abs().max() <= EPS + 1e-5  # in the ball
        assert adv.min() < 0 and adv.max() > 1  # not clipped to any box
        with torch.no_grad():
            assert torch.equal(net(adv).argmax(1) == y, net(exact).argmax(1) == y)  # it found the worst case


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """oat demo --task tsipras at a small size: fewer draws, epochs and λ values."""
    from oat.frontier.comparison import load_comparison, run_comparison, shipped_configs

    config = load_comparison(shipped_configs() / "bench_tsipras_cpu.yaml")
    config.lambdas = [0.0, 0.2, 1.0]
    config.fixed_lambda.values = [0.0, 1.0]
    config.trades.betas = [6.0]
    out = tmp_path_factory.mktemp("tsipras")
    overrides = {"data.options": {"n_train": 3000, "n_test": 2000, "validation_size": 500}, "train.epochs": 3,
                 "eval.n": 2000}
    summary = run_comparison(config, out, workers=1, overrides=overrides, log=None)
    return out, summary


def test_the_comparison_evaluates_every_model_exactly_and_against_the_true_frontier(comparison):
    out, summary = comparison
    result = json.loads((out / "oat" / "eval.json").read_text())
    assert result["data_params"] == {"p": P, "d": D, "eta": ETA} and result["eps"] == EPS
    assert result["split"] == "test" and result["protocol"]["split"] == "test"  # eval.split, not the carved one
    assert result["continuous_lambda"] is True and result["dual_bn"] is False  # FiLM alone: no BatchNorm
    n = result["n"]
    for point in result["points"]:
        exact = point["analytic"]
        for sampled, figure in ((point["clean"], exact["clean"]), (point["robust_worst"], exact["robust"])):
            assert abs(sampled - figure) <= 4 * math.sqrt(max(figure * (1 - figure), 1 / n) / n) + 1e-6
    true = summary["true_frontier"]
    assert [row["lambda"] for row in true["oat"]] == [0.0, 0.2, 1.0]
    assert {row["name"] for row in true["dedicated"]} == {"lambda-0", "lambda-1", "trades-beta-6"}
    frontier = true_frontier(result)
    for row in true["oat"] + true["dedicated"]:
        assert row["distance"] == pytest.approx(distance(frontier, row["clean"], row["robust"]))
        assert 0 <= row["distance"] < 0.2
    assert true["max_distance_oat"] == max(row["distance"] for row in true["oat"])
    # The exact curve between the evaluated λ: 101 points, the evaluated ones among them.
    curve = result["analytic_curve"]
    assert [row["lambda"] for row in curve] == [k / 100 for k in range(101)]
    assert curve[20]["clean"] == pytest.approx(result["points"][1]["analytic"]["clean"])
    assert true["max_distance_oat_curve"] == pytest.approx(max(distance(frontier, r["clean"], r["robust"]) for r in curve))
    assert true["max_distance_oat_curve"] >= true["max_distance_oat"]
    plain = json.loads((out / "frontier" / "points" / "lambda-0" / "eval.json").read_text())
    assert "analytic_curve" not in plain and "analytic" in plain["points"][0]
    assert true["frontier"]["max_robust"] == pytest.approx(P)
    report = (out / "report.md").read_text()
    assert "## Against the true frontier" in report and "OAT's largest distance behind the true frontier" in report
    assert (out / "frontier_plot.png").stat().st_size > 10_000


def test_the_package_attacks_refuse_unbounded_inputs_in_one_line(comparison, capsys):
    out, _ = comparison
    assert main(["eval", "--checkpoint", str(out / "oat"), "--attacks", "apgd-ce", "--n", "10"]) == 2
    err = capsys.readouterr().err
    assert "unbounded" in err and "use fgsm, pgd-N or cw-N" in err and len(err.strip().splitlines()) == 1


def test_vector_models_condition_through_film_alone():
    with pytest.raises(ValueError, match="FiLM alone"):
        models.create("linear", input_shape=(5,), film=False)
    net = models.create("mlp", num_classes=3, input_shape=(7,), width=16, depth=3)
    assert sum(isinstance(m, oat.FiLMLinear) and m.film is not None for m in net.modules()) == 3
    with pytest.raises(ValueError, match="two classes"):
        models.create("linear", num_classes=3, input_shape=(5,)).decision_function(0.5)
    linear = models.create("linear", num_classes=2, input_shape=(5,), mean=0.5, std=2.0).eval()
    with torch.no_grad():
        linear.layer.film.mlp[2].weight.normal_(0, 0.5)
    x = torch.randn(6, 5)
    for lam in (0.0, 0.3, 1.0):
        w, b = linear.decision_function(lam)
        with torch.no_grad():
            logits = linear(x, lam)
        assert torch.allclose(logits[:, 1] - logits[:, 0], x @ w + b, atol=1e-5)


def test_the_comparison_evaluates_the_split_its_eval_section_names():
    from oat.config import ConfigError, EvalConfig
    from oat.protocol import Protocol

    assert Protocol.from_eval(EvalConfig(split="test")).as_dict()["split"] == "test"
    assert "split" not in Protocol.from_eval(EvalConfig()).as_dict()  # results from before it stay current
    with pytest.raises(ConfigError, match="eval.split"):
        Protocol.from_eval(EvalConfig(split="train"))


def test_oat_demo_task_tsipras_runs_the_tsipras_preset(monkeypatch):
    import oat.frontier.comparison as comparison

    seen = {}
    monkeypatch.setattr(comparison, "run_comparison", lambda config, out, **kw: seen.update(config=config, out=out))
    assert main(["demo", "--task", "tsipras", "--workers", "1"]) == 0
    assert seen["out"] == "runs/demo-tsipras" and seen["config"].base["data"]["name"] == "tsipras"
    assert seen["config"].base["model"]["name"] == "linear"


def test_oat_plot_draws_the_true_frontier_and_the_exact_points(comparison):
    import matplotlib.pyplot as plt
    from oat.frontier.plot import _draw_true_frontier
    from oat.frontier.report import find_results

    out, _ = comparison
    found = find_results([out])
    figure, axis = plt.subplots()
    try:
        _draw_true_frontier(axis, found, found.oat["points"], found.fixed_lambda)
        (line,) = [l for l in axis.get_lines() if l.get_label().startswith("true frontier")]
        true = true_frontier(found.oat)
        assert np.allclose(line.get_xdata(), 100 * true[:, 0]) and np.allclose(line.get_ydata(), 100 * true[:, 1])
        (dotted,) = [l for l in axis.get_lines() if l.get_label().startswith("OAT, exact curve")]
        assert len(dotted.get_xdata()) == 101
        exact = {c.get_label(): c.get_offsets() for c in axis.collections}
        assert len(exact["OAT, exact from its weights"]) == 3 and len(exact["dedicated, exact from its weights"]) == 2
    finally:
        plt.close(figure)


def test_a_categorical_linear_model_is_evaluated_exactly_at_its_own_lambdas_only():
    splits = datasets.load("tsipras", n_train=10, n_test=200, seed=2)
    torch.manual_seed(0)
    net = models.create("linear", num_classes=2, input_shape=splits.info.input_shape, encoding="categorical",
                        lambdas=(0.0, 0.5, 1.0)).eval()
    result = oat.evaluate(net, splits, [0.0, 1.0], ["fgsm"], eps=EPS, n=200)
    assert all("analytic" in point for point in result["points"]) and "analytic_curve" not in result


def test_the_frontier_does_not_depend_on_the_signs_of_eta_and_of_p_minus_a_half(frontier):
    mirrored = tsipras_linear_frontier(1 - P, D, -ETA, EPS)
    assert np.array_equal(mirrored, frontier)
    w, b = classifiers()["bayes"]
    flipped = np.r_[-w[0], -w[1:]]  # sign(x₁) flipped by p → 1 − p, the Gaussian features by η → −η
    assert tsipras_accuracy(flipped, b=b, eps=EPS, p=1 - P, eta=-ETA) == pytest.approx(
        tsipras_accuracy(w, b=b, eps=EPS, p=P, eta=ETA))
