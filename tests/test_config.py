"""YAML configs: typed sections, unknown keys named with the closest valid key, overrides."""

from pathlib import Path

import pytest
import yaml

from oat.config import Config, ConfigError, apply_override, dump_config, from_dict, load_config

ALL = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
SWEEPS = [p for p in ALL if "base" in (yaml.safe_load(p.read_text()) or {})]  # `oat frontier` configs
CONFIGS = [p for p in ALL if p not in SWEEPS]  # `oat train` configs


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
    import models
    from oat.objectives import make_objective
    from oat.sampling import make_sampler
    from oat.trainer import validate

    config = load_config(path)
    validate(config)
    net = models.create(config.model.name, conditioned=config.model.conditioned, **config.model.options)
    assert net.conditioned == config.model.conditioned
    make_objective(config.objective.name, eps=config.attack.eps or 0.1, steps=config.attack.steps,
                   alpha=config.attack.alpha, **config.objective.params)
    make_sampler(config.lambdas.sampler, **config.lambdas.params)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_config_loads_with_its_base(path):
    from frontier.sweep import load_sweep, make_points

    sweep, base = load_sweep(path)
    points = make_points(sweep, base)
    assert points and all(not p.config.model.conditioned for p in points)
