"""The speed benchmarks under bench/ run, at tiny size, and print the ratios they promise."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def bench(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def ratios(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in re.findall(r"ratio (\S+) (\d+\.\d+)", text)}


def test_step_bench_times_oat_and_dedicated_steps_against_their_floor():
    found = ratios(bench("bench/step.py", "--steps", "1", "--repeats", "1", "--threads", "1", "--device", "cpu"))
    assert set(found) == {"oat_step/floor", "dedicated_step/floor"} and all(v > 0 for v in found.values())


def test_attack_bench_times_pgd_and_trades_against_minimal_loops():
    found = ratios(bench("bench/attacks.py", "--repeats", "1", "--batch", "8", "--threads", "1", "--device", "cpu"))
    assert set(found) == {"pgd-20/floor", "trades-kl/floor"} and all(v > 0 for v in found.values())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "oat"
    bench("-m", "oat", "train", "--config", "configs/digits_oat.yaml", "--out", str(out), "--quiet",
          "--set", "train.epochs=1", "--set", "attack.steps=1")
    return out


def test_eval_bench_times_evaluate_against_its_parts_and_the_cascade(tiny_run):
    text = bench("bench/eval.py", "--checkpoint", str(tiny_run), "--n", "30", "--attacks", "fgsm,pgd-2,apgd-ce",
                 "--threads", "1", "--device", "cpu")
    found = ratios(text)
    assert set(found) == {"evaluate/parts", "cascade/evaluate", "default/evaluate", "mixed/evaluate"}
    assert all(v > 0 for v in found.values())
    # per-example starts: neither the cascade, nor the batch size, nor mixing λ changes an outcome
    assert "outcomes (of 240) that differ from evaluate: cascade 0, default 0, mixed 0" in text


def test_export_bench_times_the_fold_against_the_plain_network():
    text = bench("bench/export.py", "--models", "small_cnn", "--batch", "4", "--repeats", "1", "--threads", "1")
    found = ratios(text)
    assert set(found) == {"folded/plain", "conditioned/plain", "torchscript/plain"} and all(v > 0 for v in found.values())
    difference = float(re.search(r"max \|logit difference\| .*: (\S+)", text).group(1))
    assert difference <= 1e-5
