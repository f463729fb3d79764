"""`oat bench`: a whole comparison from a config file, with the standard AutoAttack as a second
protocol on a smaller fixed subset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from oat.cli import main

ROOT = Path(__file__).parent.parent


def _tiny_comparison(tmp_path) -> Path:
    """Digits, one epoch, a one-step training attack: the bench machinery, not a benchmark."""
    config = {
        "title": "tiny",
        "base": {"data": {"name": "digits"}, "model": {"name": "small_cnn", "options": {"channels": [8, 16]}},
                 "attack": {"eps": 0.2, "steps": 1}, "train": {"epochs": 1, "batch_size": 64},
                 "eval": {"attacks": ["fgsm"], "n": 40}},
        "oat": {"train.epochs": 2},
        "lambdas": [0.0, 1.0],
        "fixed_lambda": {"values": [0.0, 1.0]},
        "trades": {"betas": []},
        "autoattack": {"n": 12, "oat_lambdas": [1.0], "models": ["lambda-1"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_bench_runs_every_model_under_both_protocols_and_reuses_them(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "oat", "bench", str(_tiny_comparison(tmp_path)), "--out", str(out),
               "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_oat"] == 1 and summary["runs_frontier"] == 2 and summary["protocol"]["n"] == 40
    assert [(row["model"], row["lambda"], row["n"]) for row in summary["autoattack"]] == [
        ("oat", 1.0, 12), ("lambda-1", 1.0, 12)]
    for row in summary["autoattack"]:
        assert 0 <= row["robust"] <= row["clean"] <= 1
    report = (out / "report.md").read_text()
    assert "## Standard AutoAttack" in report and "fixed subset of 12 test examples" in report
    assert json.loads((out / "oat" / "eval_autoattack.json").read_text())["attacks"] == ["autoattack"]
    assert summary["bench_seconds"] > 0 and (out / "frontier_plot.png").exists()

    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    # 3 models, the mixed end models, 2 AutoAttack evaluations, and the interpolated end models where
    # the barrier (at most 2 points) offered them.
    interpolated = summary.get("interpolated_ends") is not None
    barrier = json.loads((out / "mixed-ends" / "interpolation.json").read_text())["barrier"]
    assert interpolated == (barrier <= 0.02 + 1e-12) and (out / "interpolated-ends").exists() == interpolated
    assert again.stdout.count("already finished") == 6 + interpolated


def test_a_comparison_refuses_a_mixture_of_points_it_does_not_train(tmp_path, capsys):
    config = yaml.safe_load(_tiny_comparison(tmp_path).read_text())
    config["mixed_ends"] = {"accurate": "lambda-0", "robust": "lambda-0.5"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert main(["bench", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'mixed_ends' names ['lambda-0.5']" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "oat").exists()  # refused before anything trained


def test_an_unknown_bench_names_the_presets(capsys):
    assert main(["bench", "cifar10", "--preset", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no bench 'cifar10' with preset 'cpu'" in err
    assert "known: fashion-mnist_cpu, fashion-mnist_gpu" in err
