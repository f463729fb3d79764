"""Evaluation-side masking checks (oat.masking) reported per λ in eval.json["flags"]: PGD above the
APGD worst case, Square beating the white-box attacks, zero input gradients, FOSC of the final PGD
iterate, and robustness curves (oat eval --eps-sweep) that do not fall as ε grows."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import oat
from oat import datasets, experiment
from oat.attacks import Square
from oat.evaluation import robustness_curve
from oat.masking import curve_flags, point_flags

from conftest import Saturated

ROOT = Path(__file__).parent.parent


class Quantized(nn.Module):
    """Inputs rounded to 5 grey levels before the network: no gradient reaches the input at all."""

    conditioned = False

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, lam=0.0):
        return self.net(torch.round(x * 4) / 4, lam)


@pytest.fixture
def net_and_digits(plain_digits_net):
    return plain_digits_net


def _kinds(result):
    return sorted({flag["kind"] for flag in result["flags"]})


def test_an_honest_model_raises_no_flag_and_reports_its_checks(net_and_digits):
    net, digits = net_and_digits
    result = oat.evaluate(net, digits, [0.0], ["pgd-10", "apgd-ce", "apgd-dlr"], eps=0.1, n=100)
    point = result["points"][0]
    assert result["flags"] == []
    assert point["checks"]["zero_gradient"] == 0.0
    assert set(point["checks"]["fosc"]) == {"pgd-10"} and point["checks"]["fosc"]["pgd-10"]["mean"] >= 0
    assert set(point["per_example"]["robust"]) == {"pgd-10", "apgd-ce", "apgd-dlr"}
    # APGD-DLR may lose to PGD on cross-entropy (another loss): that alone is no warning.
    assert point["robust"]["apgd-dlr"] > point["robust"]["pgd-10"]


def test_saturated_logits_are_flagged_by_zero_gradients_and_by_apgd_dlr(net_and_digits):
    net, digits = net_and_digits
    result = oat.evaluate(Saturated(net), digits, [0.0], ["pgd-10", "apgd-dlr"], eps=0.1, n=100)
    point = result["points"][0]
    assert point["checks"]["zero_gradient"] > 0.5
    assert point["robust"]["pgd-10"] - point["robust"]["apgd-dlr"] > 0.3
    assert _kinds(result) == ["pgd_above_autoattack", "zero_gradients"]
    # The same with a cascade (APGD-DLR only on what PGD left): the gap is then APGD's cumulative drop.
    cascaded = oat.evaluate(Saturated(net), digits, [0.0], ["pgd-10", "apgd-dlr"], eps=0.1, n=100, cascade=True)
    assert _kinds(cascaded) == ["pgd_above_autoattack", "zero_gradients"]
    assert cascaded["points"][0]["robust_worst"] == point["robust_worst"]


def test_square_breaks_a_model_that_hides_its_gradient_and_the_flag_says_so(net_and_digits):
    net, digits = net_and_digits
    result = oat.evaluate(Quantized(net), digits, [0.0], ["pgd-10", "square"], eps=0.2, n=40)
    point = result["points"][0]
    assert point["checks"]["zero_gradient"] == 1.0
    assert point["robust"]["pgd-10"] - point["robust"]["square"] > 0.3
    assert "square_beats_white_box" in _kinds(result) and "zero_gradients" in _kinds(result)


def test_square_stays_in_the_ball_and_the_box_and_leaves_the_model_alone(net_and_digits):
    net, digits = net_and_digits
    x, y = datasets.dataset_tensors(digits.test)
    x, y = datasets.to_unit(x[:30]), y[:30]
    net.train()
    before = [b.clone() for b in net.buffers()]
    x_adv = Square(0.1, queries=200, seed=1)(net, x, y, 0.0)
    assert net.training and all(torch.equal(a, b) for a, b in zip(before, net.buffers()))
    net.eval()
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (net(x_adv, 0.0).argmax(1) != y).sum() > (net(x, 0.0).argmax(1) != y).sum()


def test_curve_flags_catch_ra_that_rises_or_stays_flat_as_eps_grows():
    assert curve_flags(0.0, [0.1, 0.2, 0.4], [0.6, 0.3, 0.0], 1000) == []
    rising = curve_flags(0.5, [0.1, 0.2], [0.3, 0.5], 1000)
    assert [f["kind"] for f in rising] == ["ra_rises_with_eps"] and "λ=0.5" in rising[0]["message"]
    flat = curve_flags(1.0, [0.1, 0.2, 0.4], [0.6, 0.59, 0.58], 1000)
    assert [f["kind"] for f in flat] == ["ra_flat_with_eps"]  # once, however many pairs show it
    assert curve_flags(1.0, [0.1, 0.15], [0.6, 0.6], 1000) == []  # 1.5ε: too close to say
    assert curve_flags(0.0, [0.1, 0.2], [1 / 30, 1 / 30], 30) == []  # one robust example: no room to fall


def test_the_robustness_curve_of_a_saturated_model_is_flagged_flat(net_and_digits):
    net, digits = net_and_digits
    # Radii a factor of two apart, where the honest model's RA falls by far more than sampling
    # noise on 100 digits (0.90, 0.42, 0.00 here; from 0.02 to 0.05 it fell by 0.05 only, within noise
    # on this machine's floating point, and was flagged).
    honest = robustness_curve(net, digits, [0.0], ["pgd-10"], [0.05, 0.1, 0.2], n=100)
    masked = robustness_curve(Saturated(net), digits, [0.0], ["pgd-10"], [0.05, 0.1, 0.2], n=100)
    assert honest["eps"] == [0.05, 0.1, 0.2] and honest["flags"] == []
    ra = honest["points"][0]["robust_worst"]
    assert ra[0] >= ra[1] >= ra[2]
    assert [f["kind"] for f in masked["flags"]] == ["ra_flat_with_eps"]


def test_point_flags_read_an_older_eval_json_without_per_attack_bits():
    point = {"lambda": 1.0, "clean": 0.9, "robust": {"pgd-20": 0.6, "apgd-ce": 0.4}, "robust_worst": 0.4}
    assert [f["kind"] for f in point_flags(point, 1000)] == ["pgd_above_autoattack"]
    point["robust"]["apgd-ce"] = 0.58
    assert point_flags(point, 1000) == []


def test_oat_eval_sweeps_eps_reads_the_test_split_on_request_and_plots_the_curve(tmp_path):
    from oat import trainer
    from oat.config import load_config

    out = tmp_path / "run"
    config = load_config(ROOT / "configs" / "digits_oat.yaml",
                         ["train.epochs=1", "attack.steps=1", "data.options.validation_size=100"])
    experiment.train(config, out, show_progress=False)

    def oat_cli(*args):
        return subprocess.run([sys.executable, "-m", "oat", *args], capture_output=True, text=True, cwd=ROOT,
                              env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)

    done = oat_cli("eval", "--checkpoint", str(out), "--lambdas", "0,1", "--attacks", "pgd-5", "--n", "50",
                   "--eps-sweep", "0.1,0.3", "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "eval.json").read_text())
    assert result["split"] == "validation" and result["eps_sweep"]["eps"] == [0.1, 0.3]
    assert [len(p["robust_worst"]) for p in result["eps_sweep"]["points"]] == [2, 2]
    assert "robustness curve" in done.stdout
    test = oat_cli("eval", "--checkpoint", str(out), "--lambdas", "0", "--attacks", "fgsm", "--split", "test",
                   "--out", str(tmp_path / "test.json"), "--quiet")
    assert test.returncode == 0, test.stderr
    assert json.loads((tmp_path / "test.json").read_text())["split"] == "test"

    drawn = oat_cli("plot", "--eps-curve", str(out))
    assert drawn.returncode == 0, drawn.stderr
    assert (out / "robustness_curve.png").stat().st_size > 10_000
    for args, message in [(("eval", "--checkpoint", str(out), "--eps-sweep", "0.1,x"), "--eps-sweep must be"),
                          (("eval", "--checkpoint", str(out), "--eps-sweep", "0.1,2"), "--eps-sweep 2 is wider"),
                          (("plot", "--eps-curve", str(tmp_path / "test.json")), "no robustness curve"),
                          (("plot", "--curves", str(tmp_path)), "no metrics.jsonl")]:
        bad = oat_cli(*args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
