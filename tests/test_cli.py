"""The ``oat`` command: help, version, and one-line errors with exit code 2 for user mistakes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import oat
from oat.cli import main

ROOT = Path(__file__).parent.parent
DIGITS = str(ROOT / "configs" / "digits_oat.yaml")


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", [[], ["train"], ["eval"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: oat" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"oat {oat.__version__}"


@pytest.fixture
def smuggled_checkpoint(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": Payload()}, path)
    return path


def _cases(tmp_path, smuggled):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [1, 2\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    (tmp_path / "a-directory").mkdir()
    return [
        (["train", "--config", str(tmp_path / "a-directory")], f"config file {tmp_path / 'a-directory'} is a directory"),
        (["train", "--config", str(empty)], f"config file {empty} is empty"),
        (["train", "--config", str(tmp_path / "missing.yaml")], "config file not found"),
        (["train", "--config", str(bad_yaml)], "malformed YAML"),
        (["train", "--config", str(typo)], "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
        (["train", "--config", DIGITS, "--set", "train.batchsize=3"], "did you mean 'train.batch_size'?"),
        (["train", "--config", DIGITS, "--set", "lambdas.params={values: [0, 1.5]}"], "[0, 1]"),
        (["train", "--config", DIGITS, "--set", "data.name=cifar10", "--set", f"data.root={tmp_path}",
          "--out", str(tmp_path / "r")], "download=True"),
        (["train", "--config", DIGITS, "--set", "model.name=resnet43", "--out", str(tmp_path / "r2")],
         "did you mean 'resnet34'"),
        (["train"], "--config FILE is required"),
        (["eval", "--checkpoint", str(tmp_path / "nope.pt")], "checkpoint not found"),
        (["eval", "--checkpoint", str(smuggled)], "pickled Python objects"),
    ]


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, smuggled_checkpoint, capsys):
    for args, message in _cases(tmp_path, smuggled_checkpoint):
        code, out, err = run(args, capsys)
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and err.startswith("oat: error: "), (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err and "pwned" not in out


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc")
def test_unreadable_and_unwritable_paths_are_named(tmp_path, capsys):
    code, _, err = run(["train", "--config", "/proc/self/mem"], capsys)
    assert code == 2 and err.strip() == "oat: error: cannot read config file /proc/self/mem: Input/output error"
    # /proc takes no new files, even from root: the message names the run directory asked for, not a temporary
    code, _, err = run(["train", "--config", DIGITS, "--out", "/proc/oat-run", "--quiet"], capsys)
    assert code == 2 and "/proc/oat-run" in err and ".tmp" not in err and err.count("\n") == 1
    from oat.checkpoint import write_text_atomic

    with pytest.raises(OSError, match="/proc/eval.json'") as caught:
        write_text_atomic("/proc/eval.json", "{}")
    assert ".tmp" not in str(caught.value)


def test_eval_refuses_bad_lambdas_and_attacks(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", DIGITS, "--set", "train.epochs=1", "--set", "attack.steps=1",
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    for extra, message in [
        (["--lambdas", "0,1.5"], "λ must lie in [0, 1], got 1.5"),
        (["--lambdas", "0,nan"], "λ must lie in [0, 1], got nan"),
        (["--lambdas", "zero"], "comma-separated numbers"),
        (["--attacks", "pgd-x"], "unknown attack 'pgd-x'"),
        (["--n", "0"], "--n must be at least 1"),
    ]:
        code, _, err = run(["eval", "--checkpoint", str(out / "checkpoint.pt"), *extra, "--quiet"], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)


def test_eval_takes_what_no_flag_sets_from_the_runs_eval_section(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    assert main(["train", "--config", DIGITS, "--set", "train.epochs=1", "--set", "attack.steps=1",
                 "--set", "eval={attacks: [fgsm], lambdas: [0, 1], n: 30, seed: 5, batch_size: 7, eps: 0.2}",
                 "--out", str(out), "--quiet"]) == 0
    assert main(["eval", "--checkpoint", str(out), "--quiet"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert ([p["lambda"] for p in result["points"]], result["attacks"]) == ([0.0, 1.0], ["fgsm"])
    assert (result["n"], result["seed"], result["eps"]) == (30, 5, 0.2)
    assert main(["eval", "--checkpoint", str(out), "--quiet", "--seed", "0", "--eps", "0.1", "--lambdas", "0.5"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert ([p["lambda"] for p in result["points"]], result["seed"], result["eps"]) == ([0.5], 0, 0.1)
    capsys.readouterr()


def test_a_retired_key_is_refused_in_a_new_config_and_dropped_from_a_saved_one():
    from oat.config import ConfigError, from_dict, saved_config

    with pytest.raises(ConfigError, match="config key 'train.workers' was removed: it never did anything"):
        from_dict({"train": {"workers": 2}})
    assert saved_config({"train": {"workers": 2, "epochs": 3}}).train.epochs == 3


def test_a_real_process_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "oat", "train", "--config", str(tmp_path / "x.yaml")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == f"oat: error: config file not found: {tmp_path / 'x.yaml'}"


def _full_disk(tmp_path):
    """A 64 KiB tmpfs: config and metrics fit, a checkpoint does not (a real ENOSPC). Needs root."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    return mount, None


def _file_size_limit(tmp_path):
    """A 64 KiB file-size limit (EFBIG instead of ENOSPC), for machines where mounting is refused."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error, not the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    return tmp_path, limit


@pytest.mark.parametrize("make_disk, errno_text", [(_full_disk, "No space left on device"),
                                                     (_file_size_limit, "File too large")])
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, make_disk, errno_text):
    disk, preexec = make_disk(tmp_path)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "oat", "train", "--config", DIGITS, "--set", "train.epochs=1",
             "--set", "attack.steps=1", "--out", str(disk / "run"), "--quiet"],
            capture_output=True, text=True, cwd=ROOT, preexec_fn=preexec, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        if preexec is None:
            subprocess.run(["umount", str(disk)], check=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert errno_text in result.stderr and str(disk / "run" / "checkpoint.pt") in result.stderr
