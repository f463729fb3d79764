"""The evaluation protocol: a comparison refuses models evaluated differently (oat.protocol,
frontier.report.find_results, `oat plot`), and `oat eval --checkpoint RUN_DIR` writes where
`oat plot RUN_DIR` looks."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from oat.cli import main
from oat.protocol import ProtocolMismatch, check_same_protocol, common_protocol, protocol_of, subset_digest

FGSM_01 = {"dataset": "digits", "split": "test", "eps": 0.1, "norm": "Linf", "n": 50, "subset": "aaaaaaaaaaaaaaaa",
           "attacks": ["fgsm"], "seed": 0}
SUFFIX = "; pass --allow-mismatch to compare anyway"


def _point(lam, clean, robust):
    return {"lambda": lam, "clean": clean, "robust": robust, "robust_worst": min(robust.values())}


def _write_oat_run(directory, protocol):
    """An OAT run directory as `oat train` + `oat eval` leave it (only what find_results reads)."""
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump({"model": {"conditioned": True}}))
    attacks = protocol["attacks"]
    points = [_point(0.0, 0.99, {a: 0.10 for a in attacks}), _point(1.0, 0.95, {a: 0.60 for a in attacks})]
    (directory / "eval.json").write_text(json.dumps({**protocol, "points": points, "flags": [],
                                                     "train_seconds": 20.0}))
    return directory


def _write_sweep(directory, protocol):
    """A sweep directory with two fixed-λ points, each row carrying its measured protocol."""
    directory.mkdir(parents=True)
    rows = []
    for lam, clean, ra in ((0.0, 0.98, 0.05), (1.0, 0.93, 0.55)):
        name = f"lambda-{lam:g}"
        rows.append({"name": name, "kind": "fixed_lambda", "value": lam, "lambda": lam,
                     **_point(lam, clean, {a: ra for a in protocol["attacks"]}), "train_seconds": 15.0,
                     "epochs": 1, "flags": [], "run_dir": str(directory / "points" / name),
                     "protocol": protocol_of(protocol)})
    sweep_asked = {"attacks": protocol["attacks"], "eps": None, "n": protocol["n"], "seed": protocol["seed"]}
    (directory / "frontier.json").write_text(json.dumps({"protocol": sweep_asked, "points": rows}))
    return directory


def test_subset_digest_fingerprints_indices_and_their_labels():
    indices, labels = torch.tensor([3, 7, 11]), torch.tensor([1, 0, 9])
    digest = subset_digest(indices, labels)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert subset_digest(torch.tensor([3, 7, 11]), [1, 0, 9]) == digest  # equal inputs, any int type
    assert subset_digest(torch.tensor([3, 7, 12]), labels) != digest  # other examples
    assert subset_digest(indices, torch.tensor([1, 0, 8])) != digest  # same indices, other data


def test_check_same_protocol_compares_measured_fields_strictly():
    same = dict(FGSM_01, eps=0.1 + 1e-13, attacks=["fgsm"], checkpoint="elsewhere.pt")  # ε read back: equal
    assert check_same_protocol([("a", FGSM_01), ("b", same)]) == []
    reordered = [("a", dict(FGSM_01, attacks=["pgd-20", "apgd"])), ("b", dict(FGSM_01, attacks=["apgd", "pgd-20"]))]
    assert check_same_protocol(reordered) == []  # the order attacks ran in is not part of the protocol
    old = {k: v for k, v in FGSM_01.items() if k != "subset"}  # evaluated before subsets were recorded
    with pytest.raises(ProtocolMismatch) as caught:
        check_same_protocol([("runs/a", FGSM_01), ("runs/b", old)])
    assert str(caught.value) == ("evaluation protocols differ: subset is aaaaaaaaaaaaaaaa in runs/a "
                                 f"but unknown in runs/b{SUFFIX}")
    other = dict(FGSM_01, eps=0.2, seed=1)
    sources = [("runs/a", FGSM_01), ("runs/b", other), ("runs/c", other)]
    assert check_same_protocol(sources, allow_mismatch=True) == [
        "eps is 0.1 in runs/a but 0.2 in runs/b (and 1 more)", "seed is 0 in runs/a but 1 in runs/b (and 1 more)"]
    # a result without "cascade" ran every attack on every example
    assert common_protocol(sources) == {**{k: v for k, v in FGSM_01.items() if k not in ("eps", "seed")},
                                        "cascade": False}


def test_plot_refuses_a_different_eps_in_one_line(tmp_path, capsys):
    oat = _write_oat_run(tmp_path / "oat", FGSM_01)
    sweep = _write_sweep(tmp_path / "frontier", dict(FGSM_01, eps=0.2, n=200, attacks=["pgd-20"]))
    assert main(["plot", str(oat), str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err == (f"oat: error: evaluation protocols differ: eps is 0.1 in {oat} but 0.2 in "
                   f"{sweep / 'points' / 'lambda-0'} (and 1 more){SUFFIX}\n")
    assert not (oat / "report.md").exists() and not (oat / "frontier_plot.png").exists()


def test_plot_refuses_different_attacks_unless_allowed_and_then_says_so(tmp_path, capsys):
    oat = _write_oat_run(tmp_path / "oat", FGSM_01)
    sweep = _write_sweep(tmp_path / "frontier", dict(FGSM_01, attacks=["pgd-20"]))
    expected = f"attacks is [fgsm] in {oat} but [pgd-20] in {sweep / 'points' / 'lambda-0'} (and 1 more)"
    assert main(["plot", str(oat), str(sweep)]) == 2
    assert capsys.readouterr().err == f"oat: error: evaluation protocols differ: {expected}{SUFFIX}\n"

    out = tmp_path / "compare" / "plot.png"
    assert main(["plot", str(oat), str(sweep), "--out", str(out), "--allow-mismatch"]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"oat: warning: evaluation protocols differ: {expected}\n"
    assert "PROTOCOL MISMATCH" in captured.out
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["protocol_mismatches"] == [expected]
    assert summary["attacks"] == ["fgsm", "pgd-20"] and summary["eps"] == 0.1 and summary["n"] == 50
    report = (out.parent / "report.md").read_text()
    assert "## Protocol mismatches" in report and f"- {expected}" in report
    assert "on the same" not in report  # no claim of a common evaluation
    # pgd-20 never run on OAT, fgsm never on the frontier: a dash; the rest with Wilson intervals (n = 50)
    assert "| OAT | 0 | | 99.0 (91.1–99.9) | 10.0 (4.3–21.4) | – | 10.0 (4.3–21.4) | | |" in report
    assert "| lambda-1 | 1 |  | 93.0 (82.5–97.4) | – | 55.0 (41.3–67.9) | 55.0 (41.3–67.9) | – | 15 |" in report
    assert "PROTOCOL MISMATCH" in (out.parent / "plot.svg").read_text()


def test_plot_refusal_through_a_real_process_has_no_traceback(tmp_path):
    oat = _write_oat_run(tmp_path / "oat", FGSM_01)
    sweep = _write_sweep(tmp_path / "frontier", dict(FGSM_01, eps=0.2))
    done = subprocess.run([sys.executable, "-m", "oat", "plot", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("oat: error: evaluation protocols differ: eps is 0.1 in ")
    assert str(sweep / "points" / "lambda-0") in done.stderr


def test_plot_of_a_sweep_alone_uses_the_sweeps_protocol(tmp_path, capsys):
    sweep = _write_sweep(tmp_path / "frontier", dict(FGSM_01, eps=0.2, attacks=["pgd-20", "apgd"]))
    assert main(["plot", str(sweep)]) == 0
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["eps"], summary["n"], summary["attacks"]) == (0.2, 50, ["pgd-20", "apgd"])
    assert summary["runs_oat"] == 0 and summary["runs_frontier"] == 2 and summary["hypervolume_ratio"] is None
    assert summary["protocol_mismatches"] == []
    report = (sweep / "report.md").read_text()
    assert "pgd-20, apgd at ε = 0.2 (L∞) on the same 50 test examples for every model" in report
    assert (sweep / "frontier_plot.png").exists() and (sweep / "frontier_plot.svg").exists()


def test_eval_of_a_run_directory_writes_into_it_and_plot_finds_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/digits_oat.yaml", "--set", "train.epochs=1", "--set",
                 "attack.steps=1", "--out", str(run), "--quiet"]) == 0
    assert main(["eval", "--checkpoint", str(run), "--attacks", "fgsm", "--n", "50", "--lambdas", "0,1",
                 "--quiet"]) == 0
    assert not (tmp_path / "eval.json").exists()
    result = json.loads((run / "eval.json").read_text())
    assert result["checkpoint"] == str(run / "checkpoint.pt")
    assert (result["dataset"], result["split"], result["n"], result["attacks"], result["seed"]) == (
        "digits", "test", 50, ["fgsm"], 0)
    assert len(result["subset"]) == 16
    assert main(["plot", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["runs_oat"] == 1

    # The same size of subset drawn with another seed is another test set: refused, naming it.
    other = tmp_path / "other.json"
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--attacks", "fgsm", "--n", "50",
                 "--lambdas", "0,1", "--seed", "1", "--out", str(other), "--quiet"]) == 0
    reseeded = json.loads(other.read_text())
    assert reseeded["n"] == 50 and reseeded["subset"] != result["subset"]
    _write_sweep(tmp_path / "frontier", reseeded)
    capsys.readouterr()
    assert main(["plot", str(run), str(tmp_path / "frontier")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"subset is {result['subset']} in {run} but {reseeded['subset']} in " in err
