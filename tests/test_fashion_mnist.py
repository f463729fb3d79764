"""The real Fashion-MNIST files of Debian's package ``dataset-fashion-mnist``: read where they lie,
and a tiny model trained on a real slice of them. Skipped, naming the package, where it is absent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from oat import datasets
from oat.datasets.vision import DEBIAN_FASHION_MNIST

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"needs Debian's package dataset-fashion-mnist in {DEBIAN_FASHION_MNIST} "
           "(apt-get install dataset-fashion-mnist)")


def test_the_official_files_load_from_the_system_folder(tmp_path):
    splits = datasets.load("fashion-mnist", root=tmp_path / "empty")
    assert (len(splits.train), len(splits.test)) == (60_000, 10_000)
    # The first training labels of the official files (ankle boot, T-shirt, T-shirt, dress, …).
    assert splits.train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert torch.bincount(splits.train.labels).tolist() == [6_000] * 10
    assert splits.info.mean[0] == pytest.approx(0.2860, abs=1e-4)
    assert splits.info.std[0] == pytest.approx(0.3530, abs=1e-4)
    assert splits.info.eps == 0.1
    assert not (tmp_path / "empty").exists()


def test_dedicated_models_on_a_real_slice_trade_clean_accuracy_for_robustness(tmp_path):
    """A plain network at λ = 0 and one at λ = 1, trained on 3,000 real images: the robust one
    gives up clean accuracy, the standard one has almost no robustness at ε = 0.1."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": str(ROOT / "configs" / "digits_oat.yaml"),
        "set": {"data.name": "fashion-mnist", "data.options": {"train_size": 3000}, "attack.eps": None,
                "attack.steps": 3, "model.options": {"channels": [16, 32]}, "train.epochs": 3,
                "train.batch_size": 64},
        "fixed_lambda": {"values": [0.0, 1.0]}, "trades": {"betas": []},
        "eval": {"attacks": ["pgd-10"], "n": 500},
    }))
    result = subprocess.run([sys.executable, "-m", "oat", "frontier", "--config", str(sweep), "--out",
                             str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr
    points = {p["name"]: p for p in json.loads((tmp_path / "out" / "frontier.json").read_text())["points"]}
    standard, robust = points["lambda-0"], points["lambda-1"]
    assert standard["protocol"]["dataset"] == "fashion-mnist" and standard["protocol"]["eps"] == 0.1
    assert standard["clean"] > 0.7 and standard["robust_worst"] < 0.2
    assert robust["robust_worst"] > standard["robust_worst"] + 0.3
    assert standard["clean"] > robust["clean"] + 0.02  # robustness costs clean accuracy on these images
