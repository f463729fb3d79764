"""The training loop end to end on the bundled digits: train → eval, resume after SIGKILL,
a diverging loss, a 2-process gloo run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import oat
from oat import experiment, trainer
from oat.cli import main
from oat.config import load_config
from oat.passes import forward_macs
from oat.runs import load_run

ROOT = Path(__file__).parent.parent
DIGITS = ROOT / "configs" / "digits_oat.yaml"


def tiny(epochs=2, steps=2, **extra):
    """The digits OAT config, shrunk: few epochs, a 2-step training attack."""
    overrides = [f"train.epochs={epochs}", f"attack.steps={steps}", "eval.attacks=[pgd-5]", "eval.n=100"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(DIGITS, overrides)


def run_cli(*args, env=None, timeout=300):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "oat", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


def test_train_then_eval_shows_a_trade_off_from_one_checkpoint(tmp_path):
    out = tmp_path / "run"
    config = tiny(epochs=10, steps=3)
    experiment.train(config, out, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == list(range(1, 11))
    for line in lines:
        assert set(line) >= {"epoch", "loss", "clean_acc", "adv_acc", "lr", "seconds", "fosc"}
        assert line["fosc"] >= 0 and 0 <= line["clean_acc"] <= 1
    assert load_config(out / "config.yaml") == config  # the resolved config is saved as used

    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--lambdas", "0,1",
                 "--attacks", "fgsm,pgd-10", "--n", "150", "--quiet"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert set(result) >= {"dataset", "split", "n", "eps", "norm", "checkpoint", "points", "flags"}
    assert result["dataset"] == "digits" and result["n"] == 150 and result["eps"] == pytest.approx(0.3)
    at = {p["lambda"]: p for p in result["points"]}
    assert at[0.0]["clean"] > 0.9
    # one checkpoint, two trade-offs: λ = 1 is far more robust than λ = 0
    assert at[1.0]["robust"]["pgd-10"] > at[0.0]["robust"]["pgd-10"] + 0.05
    for point in result["points"]:
        assert point["robust_worst"] <= min(point["robust"].values()) <= point["clean"]

    # the Python API gives the same numbers as the command
    model = oat.load(out / "checkpoint.pt")
    assert not model.training
    _, state = load_run(out)
    api = oat.evaluate(model, oat.datasets.load("digits"), [0.0, 1.0], ["fgsm", "pgd-10"], eps=state["eps"], n=150)
    assert [p["robust"] for p in api["points"]] == [p["robust"] for p in result["points"]]


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_weights(tmp_path):
    common = ["--config", str(DIGITS), "--set", "train.epochs=4", "--set", "attack.steps=2",
              "--set", "train.deterministic=true", "--quiet"]
    straight = run_cli("train", *common, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "oat", "train", *common, "--out", str(out)],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        if process.poll() is not None:
            pytest.fail("the run finished before it could be killed")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= killed_at < 4  # killed mid-run, with a loadable checkpoint

    resumed = run_cli("train", "--out", str(out), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    assert b["epoch"] == 4
    assert b["passes"] == a["passes"]  # counted passes survive the kill too
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1, 2, 3, 4]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = trainer._LossStep.forward
    calls = {"n": 0}
    steps_per_epoch = 1437 // 64

    def poisoned(self, batch):
        calls["n"] += 1
        result = original(self, batch)
        if calls["n"] == steps_per_epoch + 3:  # the third batch of epoch 2
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(trainer._LossStep, "forward", poisoned)
    with pytest.raises(trainer.TrainingDiverged, match="epoch 2, batch 3"):
        experiment.train(tiny(epochs=3, steps=1), out, show_progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    out = tmp_path / "run"
    experiment.train(tiny(epochs=1, steps=1), out, show_progress=False)
    with pytest.raises(oat.config.ConfigError, match="already holds a run"):
        experiment.train(tiny(epochs=1, steps=1), out, show_progress=False)


def test_two_process_gloo_run_evaluates_like_a_one_process_run(tmp_path):
    common = ["--config", str(DIGITS), "--set", "train.epochs=3", "--set", "attack.steps=2", "--quiet"]
    single = run_cli("train", *common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
         "-m", "oat", "train", *common, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=400)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    results = {}
    for name in ("one", "two"):
        model, state = load_run(tmp_path / name)
        assert state["epoch"] == 3
        results[name] = oat.evaluate(model, oat.datasets.load("digits"), [0.0, 1.0], ["fgsm"], eps=0.3, n=200)
    for a, b in zip(results["one"]["points"], results["two"]["points"]):
        assert a["clean"] > 0.85 and b["clean"] > 0.85
        assert abs(a["clean"] - b["clean"]) < 0.06
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]  # only rank 0 wrote


def test_a_blow_up_in_the_last_batch_never_replaces_the_good_checkpoint(tmp_path, monkeypatch):
    """The loss of the last batch is finite; its optimiser step makes the weights NaN. The epoch
    must not be saved, and the message must name the checkpoint that survives."""
    out = tmp_path / "run"
    steps_per_epoch = 1437 // 64
    original = torch.optim.SGD.step
    calls = {"n": 0}

    def poisoned_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2 * steps_per_epoch:  # the last step of epoch 2
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned_step)
    with pytest.raises(trainer.TrainingDiverged, match=r"non-finite tensors .* after epoch 2; stopped, keeping "
                                                       r"the last good checkpoint .*checkpoint.pt \(epoch 1\)"):
        experiment.train(tiny(epochs=3, steps=1), out, show_progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_divergence_in_the_first_epoch_names_no_checkpoint_that_does_not_exist(tmp_path):
    result = run_cli("train", "--config", str(DIGITS), "--set", "train.epochs=2", "--set", "attack.steps=1",
                     "--set", "optim.lr=1e30", "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "no checkpoint was written" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_survives_a_truncated_metrics_line_and_removes_orphaned_temporaries(tmp_path):
    out = tmp_path / "run"
    experiment.train(tiny(epochs=1, steps=1), out, show_progress=False)
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "loss": 0.5')  # killed mid-append
    orphans = [out / ".checkpoint.pt.a1b2c3d4.tmp", out / ".metrics.jsonl.x9y8z7w_.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"\0" * 1000)
    resumed = run_cli("train", "--out", str(out), "--resume", "--set", "train.epochs=1", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert not any(orphan.exists() for orphan in orphans)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_resume_refuses_a_changed_config_and_names_the_keys(tmp_path):
    out = tmp_path / "run"
    first = run_cli("train", "--config", str(DIGITS), "--set", "train.epochs=1", "--set", "attack.steps=1",
                    "--out", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    changed = run_cli("train", "--out", str(out), "--resume", "--set", "train.epochs=3", "--set", "attack.eps=0.1")
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "attack.eps: 0.3 → 0.1; train.epochs: 1 → 3" in changed.stderr
    neutral = run_cli("train", "--out", str(out), "--resume", "--set", "train.device=cpu", "--set",
                      "train.threads=1", "--quiet")
    assert neutral.returncode == 0, neutral.stderr
    assert load_config(out / "config.yaml").train.threads == 1  # a neutral change is taken


def test_resume_refuses_weights_that_do_not_fit_and_a_missing_optimiser_state(tmp_path):
    out = tmp_path / "run"
    experiment.train(tiny(epochs=1, steps=1), out, show_progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    first_key = next(iter(state["model"]))
    wider = dict(state["model"])
    wider["classifier.1.bias"] = torch.zeros(7)
    for broken, message in [({**state, "model": {k: v for k, v in list(state["model"].items())[1:]}},
                             f"cannot be resumed: its weights do not fit the network the config builds (missing {first_key})"),
                            ({**state, "model": {**state["model"], "extra.weight": torch.zeros(2)}},
                             "(unexpected extra.weight)"),
                            ({**state, "model": wider}, "(classifier.1.bias is [7] in the checkpoint, [200] in the network)"),
                            ({k: v for k, v in state.items() if k != "optimizer"},
                             "cannot be resumed: no 'optimizer'")]:
        torch.save(broken, out / "checkpoint.pt")
        result = run_cli("train", "--out", str(out), "--resume", "--quiet")
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr


@pytest.mark.parametrize("lam, attacked", [(1.0, True), (0.0, False)])
def test_training_passes_are_counted_as_the_arithmetic_says(tmp_path, lam, attacked):
    """A dedicated run on the 1,437 training digits, batch 64: 22 steps (1,408 examples) an
    epoch. At λ = 1 every example is attacked: k attack steps (a forward and an input-only
    backward each), a clean and an adversarial forward, both backpropagated in full, and the
    FOSC probe (one forward and input backward of 32 attacked examples on every 4th step, the
    default ``train.fosc_every``: steps 0, 4, …, 20). At λ = 0 nothing is attacked: one forward
    and one full backward per example."""
    steps, epochs, examples, probed = 3, 2, 22 * 64, 6
    config = tiny(epochs=epochs, steps=steps, **{"model.conditioned": "false", "lambdas.sampler": "fixed",
                                               "lambdas.params": f"{{value: {lam}}}"})
    experiment.train(config, tmp_path, show_progress=False)
    per_epoch = ({"forward": examples * (steps + 2) + probed * trainer.FOSC_EXAMPLES,
                  "backward_input": examples * steps + probed * trainer.FOSC_EXAMPLES,
                  "backward_full": examples * 2} if attacked else
                 {"forward": examples, "backward_input": 0, "backward_full": examples})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["passes"] for line in lines] == [{k: v * e for k, v in per_epoch.items()} for e in (1, 2)]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["passes"] == lines[-1]["passes"]


def test_a_failing_forward_is_a_config_error_only_when_the_user_changed_the_model(monkeypatch):
    """Model options that build a network unable to process the data are the user's; the shipped
    architecture failing is oat's bug and keeps its traceback."""
    with pytest.raises(oat.config.ConfigError, match=r"model: .* with model.options \{'channels': \[0, 8\]\}"):
        experiment.build(tiny(**{"model.options": "{channels: [0, 8]}"}))

    def broken(self, x, lam):
        raise RuntimeError("a bug inside oat")

    monkeypatch.setattr(type(experiment.build(tiny()).model), "forward", broken)
    with pytest.raises(RuntimeError, match="a bug inside oat"):
        experiment.build(tiny())


def test_a_checkpoint_holds_exactly_what_oat_reads(tmp_path):
    """Every entry is read: weights, optimiser and scaler state, epoch, seconds and passes on
    resume; config, model_spec and eps by load_run and evaluation; train_lambdas for the default
    λ list. An entry nothing reads is not written (the sampler, RNG and scheduler states once were)."""
    from oat.checkpoint import load_checkpoint
    from oat.runs import default_lambdas

    out = tmp_path / "run"
    assert main(["train", "--config", str(DIGITS), "--set", "train.epochs=1", "--set", "attack.steps=1",
                 "--out", str(out), "--quiet"]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert set(state) == {"format_version", "model", "optimizer", "scaler", "epoch", "train_seconds", "passes",
                          "macs_per_example", "config", "model_spec", "train_lambdas", "eps"}
    model, _ = load_run(out)
    assert state["macs_per_example"] == forward_macs(model, state["model_spec"]["input_shape"]) > 0
    assert set(default_lambdas(state)) >= set(state["train_lambdas"])


def test_conditioning_weight_decay_puts_every_film_parameter_in_a_group_of_its_own():
    from oat import models
    from oat.conditioning import FiLM
    from oat.config import from_dict
    from oat.experiment import optimizer as _optimizer

    net = models.create("small_cnn", input_size=8, film_head=True)
    film = {id(p) for m in net.modules() if isinstance(m, FiLM) for p in m.parameters()}
    config = from_dict({"optim": {"weight_decay": 5e-4, "conditioning_weight_decay": 0.0}})
    rest, own = _optimizer(config, net).param_groups
    assert {id(p) for p in own["params"]} == film and own["weight_decay"] == 0.0
    assert not film & {id(p) for p in rest["params"]} and rest["weight_decay"] == 5e-4
    assert len(rest["params"]) + len(own["params"]) == len(list(net.parameters()))
    (single,) = _optimizer(from_dict({"optim": {"weight_decay": 5e-4}}), net).param_groups
    assert single["weight_decay"] == 5e-4 and len(single["params"]) == len(list(net.parameters()))


def test_one_metrics_policy_for_resume_and_the_training_curves(tmp_path, capsys):
    """A torn last line (a run killed while appending) is dropped by --resume and by oat plot
    --curves alike; a bad line anywhere else is damage, named by both."""
    from oat.runs import METRICS, read_metrics

    out = tmp_path / "run"
    experiment.train(tiny(epochs=2, steps=1), out, show_progress=False)
    whole = (out / METRICS).read_text()
    (out / METRICS).write_text(whole + '{"epoch": 3, "loss": 0.')
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert main(["plot", "--curves", str(out), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").exists()
    lines = whole.splitlines()
    (out / METRICS).write_text(lines[0][:-5] + "\n" + lines[1] + "\n")
    capsys.readouterr()
    assert main(["plot", "--curves", str(out), "--out", str(tmp_path / "c2.png")]) == 2
    assert f"{out / METRICS}: line 1 is not JSON" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "line 1 is not JSON" in capsys.readouterr().err
