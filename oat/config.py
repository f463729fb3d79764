"""Run configuration: typed sections loaded from YAML, with ``--set key=value`` overrides.

Unknown keys are refused with the closest valid key named, values of the wrong type are refused
with the expected type named, and the fully resolved config is saved beside every run
(``config.yaml``) so a result can always be traced to what produced it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that cannot be used: the message names the key and the problem."""


@dataclass
class DataConfig:
    name: str = "digits"
    root: str = "data"
    download: bool = False
    options: dict = field(default_factory=dict)
    augment: str | None = None  # None: the dataset's default ("crop_flip" or "none")


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    conditioned: bool = True
    options: dict = field(default_factory=dict)


@dataclass
class ObjectiveConfig:
    name: str = "pgd"  # pgd | trades | mixed | mart
    params: dict = field(default_factory=dict)


@dataclass
class AttackConfig:
    """The training attack (the objective family decides CE-PGD or TRADES-KL)."""

    eps: float | None = None  # None: the dataset's standard radius
    steps: int = 7
    alpha: float | None = None  # None: the OAT reference rule min(1.25ε, ε + 4/255) / steps


@dataclass
class LambdaConfig:
    sampler: str = "reference"  # reference | uniform | beta | fixed
    params: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | multistep | onecycle | constant
    milestones: list = field(default_factory=list)  # epochs, for multistep
    gamma: float = 0.1
    warmup_epochs: float = 0.0


@dataclass
class AWPConfig:
    gamma: float = 0.0  # 0 disables AWP; 5e-3 in Wu et al. 2020
    warmup_epochs: int = 0


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; ignored on CPU)
    channels_last: bool = False
    sync_bn: bool = False
    grad_clip: float | None = None
    workers: int = 0
    awp: AWPConfig = field(default_factory=AWPConfig)


@dataclass
class EvalConfig:
    lambdas: list | None = None  # None: the training λ values plus unseen ones
    attacks: list = field(default_factory=lambda: ["pgd-20"])
    eps: float | None = None  # None: the training ε
    n: int | None = None  # a fixed, seeded subset of the test set; None: all of it
    batch_size: int = 500
    seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    lambdas: LambdaConfig = field(default_factory=LambdaConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building from plain data
def from_dict(data: Any, cls: type = Config, where: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, refusing unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{(where + '.' if where else '') + close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}")
        values[key] = _coerce(value, hints[key], path)
    return cls(**values)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(value, hint, path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError:
                continue
        names = " or ".join("null" if o is type(None) else _type_name(o) for o in options)
        raise ConfigError(f"config key '{path}' must be {names}, got {value!r}")
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-4" as a string
            return float(value)
        except ValueError:
            pass
    if expected in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{path}' must be {_type_name(expected)}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"config key '{path}' must be {_type_name(expected)}, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: "a list", dict: "a mapping"}.get(hint, getattr(hint, "__name__", str(hint)))


# ---------------------------------------------------------------- YAML and overrides
def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """The mapping a YAML file holds, or a one-line ``ConfigError`` naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults) and apply ``key=value`` overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    for item in overrides:
        apply_override(data, item)
    return from_dict(data)


def apply_override(data: dict, item: str) -> None:
    """Apply ``section.key=value`` (the value parsed as YAML) to nested dict ``data``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=5)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
    set_key(data, key.strip(), value)


def set_key(data: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` (``section.name``, nested as deep as needed) of dict ``data`` to ``value``."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
