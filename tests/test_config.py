"""YAML configs: typed sections, unknown keys named with the closest valid key, overrides."""

from pathlib import Path

import pytest
import yaml

from oat.config import Config, ConfigError, apply_override, dump_config, from_dict, load_config

ALL = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
BENCHES = [p for p in ALL if p.name.startswith("bench_")]  # `oat bench` comparison configs
SWEEPS = [p for p in ALL if p not in BENCHES and "base" in (yaml.safe_load(p.read_text()) or {})]  # `oat frontier`
CONFIGS = [p for p in ALL if p not in SWEEPS + BENCHES]  # `oat train` configs


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, Config)


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\)"):
        from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'optimiser' \(did you mean 'optim'\?\)"):
        from_dict({"optimiser": {}})


def test_wrong_types_are_refused_with_the_expected_type():
    with pytest.raises(ConfigError, match="'train.epochs' must be an integer, got 'ten'"):
        from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="'train.deterministic' must be true or false"):
        from_dict({"train": {"deterministic": "yes please"}})
    with pytest.raises(ConfigError, match="'attack.eps' must be a number or null"):
        from_dict({"attack": {"eps": [1]}})
    with pytest.raises(ConfigError, match="'train.batch_size' must be an integer, got True"):
        from_dict({"train": {"batch_size": True}})


def test_numbers_are_coerced_where_yaml_is_ambiguous():
    config = from_dict({"optim": {"lr": 1, "weight_decay": "5e-4"}})
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.weight_decay == pytest.approx(5e-4)


def test_overrides_set_nested_keys_parsed_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    config = load_config(path, ["train.epochs=5", "lambdas.params={value: 0.3}", "eval.attacks=[fgsm, pgd-10]"])
    assert config.train.epochs == 5
    assert config.lambdas.params == {"value": 0.3}
    assert config.eval.attacks == ["fgsm", "pgd-10"]
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "train.epochs")


def test_malformed_and_missing_yaml_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML in .*bad.yaml at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)


def test_dumped_config_round_trips():
    config = from_dict({"train": {"epochs": 7}, "model": {"options": {"film_width": 8}}})
    assert from_dict(yaml.safe_load(dump_config(config))) == config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_builds_its_model_objective_and_sampler(path):
    from oat import models
    from oat.objectives import make_objective
    from oat.sampling import make_sampler
    from oat.experiment import check as check_config

    config = load_config(path)
    check_config(config)
    net = models.create(config.model.name, conditioned=config.model.conditioned, **config.model.options)
    assert net.conditioned == config.model.conditioned
    make_objective(config.objective.name, eps=config.attack.eps or 0.1, steps=config.attack.steps,
                   alpha=config.attack.alpha, **config.objective.params)
    make_sampler(config.lambdas.sampler, **config.lambdas.params)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_config_loads_with_its_base(path):
    from oat.frontier.sweep import load_sweep, make_points

    sweep, base = load_sweep(path)
    points = make_points(sweep, base)
    assert points and all(not p.config.model.conditioned for p in points)


@pytest.mark.parametrize("key, value, allowed", [
    ("optim.momentum", -1, "a number in [0, 1)"),
    ("optim.momentum", 1.0, "a number in [0, 1)"),
    ("optim.weight_decay", -1, "a finite number ≥ 0"),
    ("optim.conditioning_weight_decay", -1e-4, "null or a finite number ≥ 0"),
    ("optim.lr", float("nan"), "a finite positive number"),
    ("optim.lr", float("inf"), "a finite positive number"),
    ("train.grad_clip", -1.0, "null or a positive number"),
    ("train.awp.gamma", -1.0, "a finite number ≥ 0"),
    ("train.threads", 0, "null or at least 1"),
    ("attack.alpha", 0.0, "null or a finite positive number"),
    ("eval.n", 0, "null or at least 1"),
    ("data.augment", "rotate", "one of null, none, crop_flip"),
    ("optim.name", "rmsprop", "one of sgd, adam"),
    ("schedule.name", "cosin", "did you mean 'cosine'"),
    ("eval.attacks", ["pgd-x"], "unknown attack 'pgd-x'"),
    ("schedule.milestones", [10], "between 0 and train.epochs = 10"),
])
def test_values_that_type_check_but_mean_nothing_are_refused(key, value, allowed):
    from oat.config import set_key
    from oat.experiment import check as check_config

    data = {}
    set_key(data, key, value)
    with pytest.raises(ConfigError) as error:
        check_config(from_dict(data))
    message = str(error.value)
    assert f"'{key}'" in message and allowed in message and "\n" not in message


def test_every_shipped_config_passes_the_checks():
    from oat.experiment import check as check_config

    for path in CONFIGS:
        check_config(load_config(path))


def test_config_differences_ignore_keys_that_cannot_change_the_result():
    from oat.config import config_differences

    saved = from_dict({"attack": {"eps": 0.2}, "train": {"epochs": 2}})
    same = from_dict({"attack": {"eps": 0.2}, "train": {"epochs": 2, "device": "cuda", "threads": 3},
                      "data": {"root": "/elsewhere"}, "eval": {"n": 5}})
    assert config_differences(saved, same) == []
    changed = from_dict({"attack": {"eps": 0.1}, "train": {"epochs": 3}, "model": {"options": {"film_width": 8}}})
    assert config_differences(saved.to_dict(), changed) == [
        "attack.eps: 0.2 → 0.1", "model.options.film_width: (unset) → 8", "train.epochs: 2 → 3"]


def test_thread_count_follows_the_config_then_the_environment_then_the_idle_cores(monkeypatch):
    import torch

    from oat.distributed import free_cores, set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(None) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        snapshots = iter([{0: (100, 1000), 1: (100, 1000)}, {0: (100, 1100), 1: (100, 1100)}] * 2)
        monkeypatch.setattr("oat.distributed.cpu_times", lambda: next(snapshots))  # both cores busy now
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
        assert set_threads(None) == 1 == free_cores(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("idle_ticks,expected", [((100, 100), 2), ((100, 60), 2), ((10, 100), 1), ((60, 50), 1),
                                                 ((0, 0), 1)])
def test_free_cores_counts_the_cores_idle_now_not_the_load_average(monkeypatch, idle_ticks, expected):
    from oat.distributed import free_cores

    # Over the sample each core ran 100 ticks, of which idle_ticks[i] idle: ~busy cores are taken away.
    before = {0: (0, 0), 1: (0, 0), 2: (0, 0)}
    after = {0: (idle_ticks[0], 100), 1: (idle_ticks[1], 100), 2: (0, 100)}  # core 2: not ours
    snapshots = iter([before, after])
    monkeypatch.setattr("oat.distributed.cpu_times", lambda: next(snapshots))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr("os.getloadavg", lambda: (2.0, 2.0, 2.0))  # a lagging average would say: none free
    assert free_cores(0) == expected


def test_free_cores_falls_back_to_the_load_average_without_proc_stat(monkeypatch):
    from oat.distributed import free_cores

    monkeypatch.setattr("oat.distributed.cpu_times", lambda: None)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("os.getloadavg", lambda: (1.2, 0.0, 0.0))
    assert free_cores(0) == 3


def test_cpu_times_reads_this_machines_cores():
    from oat.distributed import cpu_times

    times = cpu_times()
    if times is None:
        pytest.skip("no /proc/stat here")
    assert set(__import__("os").sched_getaffinity(0)) <= set(times)
    assert all(0 <= idle <= total for idle, total in times.values())


@pytest.mark.parametrize("path", BENCHES, ids=lambda p: p.name)
def test_every_shipped_bench_config_builds_checked_models(path):
    from oat.frontier.comparison import load_comparison, model_configs
    from oat.frontier.sweep import make_points
    from oat.protocol import Protocol
    from oat.experiment import check as check_config

    oat, base, sweep = model_configs(load_comparison(path))
    for config in (oat, base, *(p.config for p in make_points(sweep, base))):
        check_config(config)
    assert oat.model.conditioned and Protocol.from_eval(base.eval).attacks[0] == "pgd-20"
