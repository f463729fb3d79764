"""The overestimation monitor (train.validate), its flag, the gradient signals and the FOSC-noise
remedy (train.fosc_noise): when the noise fires and on which batches, exact resumes, and a
synthetic masked model the flag must catch."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from oat import datasets, experiment, trainer
from oat.config import ConfigError, load_config
from oat.experiment import check as check_config
from oat.masking import overestimation
from oat.monitor import FoscNoise, GradientSignals, epoch_report, last_fosc, monitor_lambdas, overestimation_summary

from conftest import Saturated

ROOT = Path(__file__).parent.parent
DIGITS = ROOT / "configs" / "digits_oat.yaml"


def monitored(epochs=3, **extra):
    """The digits OAT config, shrunk, with a validation split and the monitor on."""
    overrides = [f"train.epochs={epochs}", "attack.steps=2", "data.options.validation_size=200",
                 "train.validate.n=60", "train.validate.attacks=[pgd-3, apgd-ce]", "train.validate.every=1"]
    return load_config(DIGITS, overrides + [f"{k}={v}" for k, v in extra.items()])


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the flag's rule
def test_overestimation_is_the_share_pgd_leaves_standing_that_apgd_breaks():
    weak = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1] * 10, dtype=bool)
    strong = np.array([1, 0, 0, 1, 0, 1, 1, 1, 1, 1] * 10, dtype=bool)  # APGD breaks 2 PGD kept, keeps 1 PGD broke
    result = overestimation(weak, strong, margin=0.05)
    assert result["gap"] == pytest.approx(0.2)  # not weak − strong = 0.1: the worst case is what PGD overstates
    assert result["threshold"] == pytest.approx(0.05 + 2 * np.sqrt(0.2 * 0.8 / 100) + 0.01)
    assert result["flagged"]
    assert not overestimation(weak, weak)["flagged"] and overestimation(weak, weak)["gap"] == 0


def test_the_summary_says_where_a_flag_began_and_whether_it_self_healed():
    def record(epoch, flags):
        return {"epoch": epoch, "validation": {"points": [
            {"lambda": lam, "overestimation": {"flagged": flag}} for lam, flag in flags.items()]}}

    history = [record(1, {0.0: False, 1.0: False}), {"epoch": 2}, record(3, {0.0: False, 1.0: True}),
               record(4, {0.0: True, 1.0: True}), record(5, {0.0: True, 1.0: False})]
    summary = overestimation_summary(history)
    by_lambda = {p["lambda"]: p for p in summary["lambdas"]}
    assert by_lambda[1.0]["spans"] == [[3, 5]] and by_lambda[1.0]["self_healed"]
    assert by_lambda[0.0]["spans"] == [[4, None]] and by_lambda[0.0]["flagged_at_end"]
    assert summary["flagged"] and summary["flagged_at_end"] and summary["last_validation"] == 5
    assert not overestimation_summary(history[:2])["flagged"]


def test_validation_lambdas_default_to_both_ends_and_the_training_median():
    assert monitor_lambdas(None, True, [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]) == [0.0, 0.25, 1.0]
    assert monitor_lambdas(None, True, []) == [0.0, 0.5, 1.0]
    assert monitor_lambdas(None, False, [0.3]) == [0.3]
    assert monitor_lambdas([0.7], True, [0.0]) == [0.7]
    config = load_config(DIGITS, ["train.validate.lambdas=[0.7]", "data.options={validation_size: 100}"])
    assert experiment.build(config).monitor.lambdas == (0.7,)  # the builder reads the config's choice


# ---------------------------------------------------------------- a synthetic masked model
def test_the_flag_catches_a_model_whose_logits_saturate(plain_digits_net):
    net, splits = plain_digits_net
    config = load_config(DIGITS, ["train.validate.n=100", "train.validate.attacks=[pgd-10, apgd-ce, apgd-dlr]"])
    monitor = experiment.monitor(config, False, [0.0], splits)
    assert monitor.lambdas == (0.0,) and monitor.n == 100
    honest = monitor.validate(net, splits, eps=0.1)
    masked = monitor.validate(Saturated(net, 1000.0), splits, eps=0.1)
    assert honest["split"] == "validation" and masked["n"] == 100
    gap = honest["points"][0]["overestimation"]  # a few points of PGD's usual shortfall, within the threshold
    assert honest["flagged"] == [] and gap["gap"] <= 0.08 and gap["gap"] < gap["threshold"]
    point = masked["points"][0]
    assert masked["flagged"] == [0.0], point
    # PGD and APGD-CE are fooled alike (both ascend cross-entropy); APGD-DLR is not.
    assert point["robust"]["pgd-10"] - point["robust"]["apgd-dlr"] > 0.3
    assert abs(point["robust"]["pgd-10"] - point["robust"]["apgd-ce"]) < 0.05
    assert point["zero_gradient"] > 0.5 and honest["points"][0]["zero_gradient"] == 0.0
    assert point["fosc"]["mean"] >= 0 and honest["points"][0]["fosc"]["mean"] > 0


# ---------------------------------------------------------------- gradient signals
def test_gradient_signals_are_the_norms_and_consecutive_cosines_with_spikes_counted():
    weight = nn.Parameter(torch.zeros(2))
    signals = GradientSignals()
    grads = [[3.0, 4.0]] * 8 + [[0.0, 50.0], [-3.0, -4.0]]
    for grad in grads:
        weight.grad = torch.tensor(grad)
        signals.add([weight])
    summary = signals.summary()
    assert summary["grad_norm"]["max"] == 50.0 and summary["grad_norm"]["median"] == 5.0
    assert summary["grad_norm"]["spikes"] == 1 and summary["grad_norm"]["steps"] == 10
    cosines = [1.0] * 7 + [0.8, -0.8]
    assert summary["grad_cosine"]["min"] == pytest.approx(-0.8)
    assert summary["grad_cosine"]["mean"] == pytest.approx(np.mean(cosines))
    assert summary["grad_cosine"]["negative"] == 1


# ---------------------------------------------------------------- the monitor in training
def test_a_monitored_run_logs_validations_and_the_summary(tmp_path, capsys):
    out = tmp_path / "run"
    experiment.train(monitored(epochs=3, **{"train.validate.every": 2}), out, show_progress=True)
    records = _records(out)
    assert [("validation" in r) for r in records] == [False, True, True]  # every 2 epochs, and the last
    validation = records[1]["validation"]
    assert validation["split"] == "validation" and validation["n"] == 60
    assert [p["lambda"] for p in validation["points"]] == [0.0, 0.5, 1.0]  # the config's sampler is continuous
    for point in validation["points"]:
        assert set(point["robust"]) == {"pgd-3", "apgd-ce"} and point["fosc"]["mean"] >= 0
    steps = len(datasets.load("digits", validation_size=200).train) // 64
    for record in records:
        assert record["grad_norm"]["steps"] == steps and record["grad_norm"]["max"] >= record["grad_norm"]["median"] > 0
        assert -1 <= record["grad_cosine"]["min"] <= record["grad_cosine"]["mean"] <= 1
    summary = json.loads((out / "monitor.json").read_text())
    assert summary["last_validation"] == 3
    # The monitor's attacks are not training's cost: the same run unwatched counts the same passes.
    experiment.train(monitored(epochs=3, **{"train.validate": "null"}), tmp_path / "unwatched", show_progress=False)
    assert [r["passes"] for r in _records(tmp_path / "unwatched")] == [r["passes"] for r in records]
    captured = capsys.readouterr()
    log = captured.err + captured.out
    assert "validate epoch 2 λ=0:" in log and "overestimation monitor:" in log


def test_the_monitor_never_reads_the_test_set_and_its_keys_are_checked():
    with pytest.raises(ConfigError, match="set data.options.validation_size"):
        experiment.train(load_config(DIGITS, ["train.epochs=1", "train.validate.n=10"]), "/tmp/never", show_progress=False)
    for override, message in [
        ("train.validate.attacks=[pgd-10]", "must hold a PGD-family attack .* and an APGD-family one"),
        ("train.validate.attacks=[apgd-ce, apgd-dlr]", "must hold a PGD-family attack"),
        ("train.validate.attacks=[pgd-10, bogus]", "unknown attack 'bogus'"),
        ("train.validate.every=0", "'train.validate.every' must be at least 1"),
        ("train.validate.lambdas=[2]", "λ values in \\[0, 1\\]"),
        ("train.fosc_noise.sigma=0.1", "'train.fosc_noise.threshold' must be set"),
        ("train.fosc_noise={threshold: 1, source: validation}", "train.validate is not set"),
        ("train.fosc_noise={threshold: 1, source: both}", "must be one of train, validation"),
        ("train.fosc_noise={threshold: 1, batches: 0}", "'train.fosc_noise.batches' must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_config(load_config(DIGITS, [override]))


# ---------------------------------------------------------------- the remedy
def test_noise_batches_follow_the_last_epochs_fosc():
    noise = experiment.fosc_noise(load_config(DIGITS, ["train.fosc_noise.threshold=0.5", "train.fosc_noise.batches=4"]))
    assert noise == FoscNoise(0.5, 0.1, 4, "train")
    assert noise.batches_after([]) == (0, None)
    assert noise.batches_after([{"fosc": 0.9}, {"fosc": 0.4}]) == (0, 0.4)
    assert noise.batches_after([{"fosc": 0.4}, {"fosc": 0.6}]) == (4, 0.6)
    assert experiment.fosc_noise(load_config(DIGITS, [])) is None  # off by default
    history = [{"validation": {"points": [{"fosc": {"mean": 0.2}}, {"fosc": {"mean": 0.7}}]}}, {"fosc": 0.1}]
    assert last_fosc(history, "validation") == 0.7 and last_fosc(history, "train") == 0.1


class _Recorder:
    """Wraps the trainer's augment and noise: which step of which epoch got noise, and how much."""

    def __init__(self, monkeypatch):
        self.steps, self.noised, self.deltas = [], [], []
        original_augment, original_noise = trainer.augment, trainer._gaussian_noise

        def augment(x, kind, generator):
            self.steps.append(None)
            return original_augment(x, kind, generator)

        def noise(x, sigma, generator, bounds):
            out = original_noise(x, sigma, generator, bounds)
            self.noised.append(len(self.steps) - 1)
            self.deltas.append((x, out))
            return out

        monkeypatch.setattr(trainer, "augment", augment)
        monkeypatch.setattr(trainer, "_gaussian_noise", noise)


def test_the_noise_fires_after_a_high_fosc_epoch_on_exactly_the_first_batches(tmp_path, monkeypatch):
    recorder = _Recorder(monkeypatch)
    config = monitored(epochs=3, **{"train.validate": "null", "data.options": "{}",
                                    "train.fosc_noise": "{threshold: 0.0, batches: 3, sigma: 0.1}"})
    experiment.train(config, tmp_path / "fires", show_progress=False)
    steps = len(recorder.steps) // 3
    assert recorder.noised == [steps + 0, steps + 1, steps + 2, 2 * steps + 0, 2 * steps + 1, 2 * steps + 2]
    assert [r.get("fosc_noise_batches") for r in _records(tmp_path / "fires")] == [None, 3, 3]
    for x, noisy in recorder.deltas:
        assert noisy.min() >= 0 and noisy.max() <= 1 and not torch.equal(x, noisy)
        inside = (noisy > 0) & (noisy < 1)
        assert (noisy - x)[inside].std().item() == pytest.approx(0.1, rel=0.1)

    quiet = _Recorder(monkeypatch)
    config = load_config(DIGITS, ["train.epochs=2", "attack.steps=2", "train.fosc_noise.threshold=1e9"])
    experiment.train(config, tmp_path / "quiet", show_progress=False)
    assert quiet.noised == [] and all("fosc_noise_batches" not in r for r in _records(tmp_path / "quiet"))


def test_a_resumed_monitored_run_with_noise_matches_the_uninterrupted_one(tmp_path, monkeypatch):
    config = monitored(epochs=3, **{"train.fosc_noise": "{threshold: 0.0, batches: 2, source: validation}",
                                    "train.deterministic": "true"})
    experiment.train(config, tmp_path / "straight", show_progress=False)

    original = trainer.train_one_epoch

    def killed_at_epoch_three(run, epoch, progress):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(run, epoch, progress)

    monkeypatch.setattr(trainer, "train_one_epoch", killed_at_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        experiment.train(config, tmp_path / "killed", show_progress=False)
    monkeypatch.setattr(trainer, "train_one_epoch", original)
    experiment.train(None, tmp_path / "killed", resume=True, show_progress=False)

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    def comparable(record):
        record = {k: v for k, v in record.items() if k != "seconds"}
        if "validation" in record:
            record["validation"] = {k: v for k, v in record["validation"].items() if k != "seconds"}
        return record

    straight, resumed = _records(tmp_path / "straight"), _records(tmp_path / "killed")
    assert [comparable(r) for r in straight] == [comparable(r) for r in resumed]
    assert [r.get("fosc_noise_batches") for r in resumed] == [None, 2, 2]
    assert json.loads((tmp_path / "killed" / "monitor.json").read_text()) == \
        json.loads((tmp_path / "straight" / "monitor.json").read_text())


def test_the_epoch_report_says_when_a_flag_is_raised_or_cleared_and_when_noise_fires():
    def record(epoch, flagged, fosc=0.1):
        point = {"lambda": 1.0, "clean": 0.9, "robust": {"pgd-10": 0.5, "apgd-ce": 0.3}, "fosc": {"mean": 1.0},
                 "overestimation": {"gap": 0.2 if flagged else 0.0, "flagged": flagged}}
        return {"epoch": epoch, "fosc": fosc,
                "validation": {"attacks": ["pgd-10", "apgd-ce"], "points": [point]}}

    noise = FoscNoise(threshold=0.5, batches=7)
    raised = epoch_report([record(1, False), record(2, True)], noise, 5)
    assert raised[0].startswith("validate epoch 2 λ=1: clean 0.900  pgd-10 0.500  apgd-ce 0.300  gap 0.200")
    assert raised[0].endswith("OVERESTIMATED")
    assert raised[1:] == ["overestimation: λ=1 flagged from epoch 2 (PGD above APGD)"]
    cleared = epoch_report([record(1, False), record(2, True), record(3, False, fosc=0.9)], noise, 5)
    assert cleared[1:] == ["overestimation: λ=1 cleared at epoch 3 (self-healed)",
                           "fosc_noise: FOSC 0.9 > 0.5 (train) after epoch 3: noise σ=0.1 on the first 7 batches "
                           "of epoch 4"]
    assert epoch_report([record(4, False), record(5, False, fosc=0.9)], noise, 5) == [
        "validate epoch 5 λ=1: clean 0.900  pgd-10 0.500  apgd-ce 0.300  gap 0.000  fosc 1"]  # no epoch 6 to noise
