"""`oat frontier`: sweeps of dedicated baselines that survive being killed, shards, workers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from oat.frontier.sweep import load_sweep, make_points, parse_shard, select_shard
from oat.config import ConfigError

ROOT = Path(__file__).parent.parent


def write_sweep(tmp_path, values=(0.0, 1.0), betas=(), epochs=1):
    sweep = {
        "base": str(ROOT / "configs" / "digits_oat.yaml"),
        "set": {"train.epochs": epochs, "attack.steps": 1},
        "fixed_lambda": {"values": list(values)},
        "trades": {"betas": list(betas)},
        "eval": {"attacks": ["fgsm"], "n": 60},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def oat(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "oat", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, **kwargs)


def test_points_derive_from_the_base_config(tmp_path):
    sweep, base = load_sweep(write_sweep(tmp_path, values=(0.0, 0.3), betas=(0.0, 3.0, 6.0)))
    points = {p.name: p for p in make_points(sweep, base)}
    assert sorted(points) == ["lambda-0", "lambda-0.3", "trades-beta-0", "trades-beta-3", "trades-beta-6"]
    lam = points["lambda-0.3"].config
    assert not lam.model.conditioned and lam.lambdas.sampler == "fixed" and lam.lambdas.params == {"value": 0.3}
    assert lam.objective.name == "pgd" and lam.train.epochs == 1 and lam.data.name == base.data.name
    trades = points["trades-beta-3"]
    assert trades.config.objective.name == "trades" and trades.config.objective.params == {"beta_max": 6.0}
    assert trades.lam == pytest.approx(0.5)  # β = 3 is λ = β / β_max


def test_shards_partition_the_points():
    points = list(range(7))
    shards = [select_shard(points, (i, 3)) for i in (1, 2, 3)]
    assert sorted(sum(shards, [])) == points and all(shards)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x/3", "1"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)


def test_a_killed_sweep_reruns_without_retraining_finished_points(tmp_path):
    path = write_sweep(tmp_path, values=(0.0, 0.4, 1.0), epochs=4)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "oat", "frontier", "--config", str(path), "--out", str(out),
                                "--quiet"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "points" / "lambda-0" / "eval.json"
    second = out / "points" / "lambda-0.4" / "metrics.jsonl"
    # Kill once the second point has its first checkpoint: it is then certainly unfinished.
    second_checkpoint = second.with_name("checkpoint.pt")
    deadline = time.time() + 300
    while time.time() < deadline and not (first.exists() and second_checkpoint.exists()):
        assert process.poll() is None, "the sweep finished before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_checkpoint = out / "points" / "lambda-0" / "checkpoint.pt"
    stamp = finished_checkpoint.stat().st_mtime_ns
    partial_epochs = len(second.read_text().splitlines())
    assert 1 <= partial_epochs < 4  # killed in the middle of the second point

    rerun = oat("frontier", "--config", str(path), "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert "lambda-0: already finished" in rerun.stdout
    assert "lambda-0.4: resumed and evaluated" in rerun.stdout
    assert finished_checkpoint.stat().st_mtime_ns == stamp  # not retrained
    summary = json.loads((out / "frontier.json").read_text())
    assert [p["name"] for p in summary["points"]] == ["lambda-0", "lambda-0.4", "lambda-1"]
    assert summary["missing"] == []
    for point in summary["points"]:
        assert point["epochs"] == 4 and 0 <= point["robust"]["fgsm"] <= point["clean"] <= 1
    metrics = (out / "points" / "lambda-0.4" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2, 3, 4]


def test_shards_and_workers_share_one_output_directory(tmp_path):
    path = write_sweep(tmp_path, values=(0.0, 1.0), betas=(1.0,), epochs=1)
    out = tmp_path / "out"
    first = oat("frontier", "--config", str(path), "--out", str(out), "--shard", "1/2", "--workers", "2")
    assert first.returncode == 0, first.stderr
    partial = json.loads((out / "frontier.json").read_text())
    assert [p["name"] for p in partial["points"]] == ["lambda-0", "trades-beta-1"]
    assert partial["missing"] == ["lambda-1"]
    second = oat("frontier", "--config", str(path), "--out", str(out), "--shard", "2/2")
    assert second.returncode == 0, second.stderr
    full = json.loads((out / "frontier.json").read_text())
    assert sorted(p["name"] for p in full["points"]) == ["lambda-0", "lambda-1", "trades-beta-1"]
    protocols = {json.dumps(json.loads((out / "points" / n / "eval.json").read_text())["protocol"])
                 for n in ("lambda-0", "lambda-1", "trades-beta-1")}
    assert len(protocols) == 1  # every point evaluated with the same protocol


def test_a_rerun_never_reuses_a_point_trained_under_another_config(tmp_path):
    path = write_sweep(tmp_path, values=(0.0, 1.0), epochs=1)
    out = tmp_path / "out"
    assert oat("frontier", "--config", str(path), "--out", str(out), "--quiet").returncode == 0
    results = {n: out / "points" / n / "eval.json" for n in ("lambda-0", "lambda-1")}
    stamps = {n: p.stat().st_mtime_ns for n, p in results.items()}

    rerun = oat("frontier", "--config", str(path), "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("already finished") == 2
    assert {n: p.stat().st_mtime_ns for n, p in results.items()} == stamps  # nothing re-evaluated

    for change, named in [("attack.eps=0.1", "attack.eps: 0.3 → 0.1"), ("train.epochs=2", "train.epochs: 1 → 2")]:
        refused = oat("frontier", "--config", str(path), "--out", str(out), "--set", change)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"lambda-0 in {out / 'points' / 'lambda-0'} was trained with another config ({named})" in refused.stderr
        assert "(and 1 more point)" in refused.stderr and "--retrain-stale" in refused.stderr
        assert {n: p.stat().st_mtime_ns for n, p in results.items()} == stamps  # refused before touching anything

    retrained = oat("frontier", "--config", str(path), "--out", str(out), "--set", "train.epochs=2", "--retrain-stale")
    assert retrained.returncode == 0, retrained.stderr
    assert retrained.stdout.count("retrained (stale config) and evaluated") == 2
    for name in results:
        metrics = (out / "points" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]
    assert [p["epochs"] for p in json.loads((out / "frontier.json").read_text())["points"]] == [2, 2]


def test_a_bad_evaluation_protocol_is_refused_before_anything_trains(tmp_path):
    path = write_sweep(tmp_path)
    sweep = yaml.safe_load(path.read_text())
    sweep["eval"]["attacks"] = ["fgsm", "pgd-x"]
    path.write_text(yaml.safe_dump(sweep))
    result = oat("frontier", "--config", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "config key 'eval.attacks': unknown attack 'pgd-x'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_two_sweeps_on_one_directory_train_each_point_once(tmp_path):
    path = write_sweep(tmp_path, values=(0.0, 0.5, 1.0), epochs=2)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "oat", "frontier", "--config", str(path), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first, second = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(2))
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    stdout = outputs[0][0] + outputs[1][0]
    assert stdout.count("trained and evaluated") == 3  # each point once, by one process or the other
    for name in ("lambda-0", "lambda-0.5", "lambda-1"):
        metrics = (out / "points" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]
    for process_output in outputs:  # both processes end with the whole frontier
        assert "3 finished points" in process_output[0]


def test_a_run_lock_dies_with_its_holder(tmp_path):
    from oat.lock import RunLock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from oat.lock import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    lock = RunLock(tmp_path)
    assert not lock.try_acquire()
    assert lock.holder().startswith(f"pid {holder.pid} on ")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock.try_acquire()  # the holder is dead: its lock went with it, the file stays
    assert RunLock(tmp_path).try_acquire() is False  # and this process now holds it
    lock.release()


def test_an_oat_models_lambdas_are_evaluated_in_parallel_jobs_and_merged_exactly(tmp_path):
    """With two workers, an OAT model is trained by one job and evaluated by one job per λ; the
    merged eval.json holds exactly what one process evaluating every λ computes."""
    from oat.frontier.tasks import Task, _evaluate, run_tasks
    from oat.protocol import Protocol
    from oat.config import load_config

    config = load_config(ROOT / "configs" / "digits_oat.yaml", ["train.epochs=1", "attack.steps=1"])
    protocol = Protocol(("fgsm", "pgd-2"), None, 80, 0, cascade=True)
    task = Task("oat", str(tmp_path / "oat"), config, protocol, (0.0, 0.4, 1.0))
    log = []
    run_tasks([task], workers=2, log=log.append)
    assert log == [next(line for line in log if line.startswith("  oat: trained and evaluated ("))]
    assert "its 3 λ evaluated in parallel jobs" in log[0]
    merged = json.loads((tmp_path / "oat" / "eval.json").read_text())
    whole = _evaluate(task, [0.0, 0.4, 1.0])
    assert merged["points"] == whole["points"] and merged["flags"] == whole["flags"]
    assert {k: v for k, v in merged.items() if k not in ("points", "seconds")} == \
        {k: v for k, v in whole.items() if k not in ("points", "seconds")}
    again = []
    run_tasks([task], workers=2, log=again.append)
    assert len(again) == 1 and again[0].startswith("  oat: already finished")


def test_a_worker_job_takes_its_share_of_the_threads_whatever_it_runs(monkeypatch):
    """A pool worker whose first job is an evaluation (the mixed ends, a model trained earlier)
    never passes through the trainer: with torch's default threads, two such workers on two cores
    fought over them (the demo's mixed-ends evaluation took 964 s of work instead of ~20)."""
    from types import SimpleNamespace

    import torch

    from oat.frontier import tasks

    monkeypatch.setattr(tasks, "_evaluate", lambda task, lambdas: torch.get_num_threads())
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert tasks._job(("eval", 0, SimpleNamespace(name="t"), 0.0, 1, False, True))[-1] == 1
    finally:
        torch.set_num_threads(before)


def test_a_follow_up_joins_the_pool_as_soon_as_the_tasks_it_waits_for_are_done(tmp_path):
    """A mixture or a second protocol waits only for its own models: with two workers it runs
    beside a longer model still training (the Fashion-MNIST bench left one core idle for a quarter
    of an hour while its last model trained and the mixed ends waited). Every task runs once."""
    from oat.config import load_config
    from oat.frontier.tasks import FollowUp, Task, run_tasks
    from oat.protocol import Protocol

    def config(epochs, steps):
        return load_config(ROOT / "configs" / "digits_oat.yaml", [f"train.epochs={epochs}", f"attack.steps={steps}"])

    protocol = Protocol(("fgsm",), None, 40, 0, cascade=True)
    long = Task("long", str(tmp_path / "long"), config(10, 3), protocol, (0.0,))
    short = Task("short", str(tmp_path / "short"), config(1, 1), protocol, (0.0,))
    second = Task("short-again", short.run_dir, short.config, Protocol(("pgd-2",), None, 40, 0, cascade=True),
                  (0.0, 1.0), "second.json")
    made = []
    log = []
    run_tasks([long, short], workers=2, log=log.append,
              follow_ups=[FollowUp(frozenset({"short"}), lambda: made.append(1) or [second])])
    assert made == [1]
    assert [line.split(":")[0].strip() for line in log] == ["short", "short-again", "long"]
    assert [p["lambda"] for p in json.loads((tmp_path / "short" / "second.json").read_text())["points"]] == [0.0, 1.0]
    with pytest.raises(ValueError, match="not run: \\['missing'\\]"):
        run_tasks([short], follow_ups=[FollowUp(frozenset({"missing"}), lambda: [])])
