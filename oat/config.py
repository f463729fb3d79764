"""Run configuration: typed sections loaded from YAML, with ``--set key=value`` overrides.

Unknown keys are refused with the closest valid key named, values of the wrong type are refused
with the expected type named, and the fully resolved config is saved beside every run
(``config.yaml``) so a result can always be traced to what produced it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
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
    sampler: str = "reference"  # reference | uniform | beta | sandwich | fixed
    params: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    conditioning_weight_decay: float | None = None  # FiLM's parameters; None: weight_decay like the rest


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
class ValidateConfig:
    """The overestimation monitor (oat.monitor): needs data.options.validation_size."""

    every: int = 1  # epochs between validations (the last epoch is always validated)
    n: int = 500  # validation examples, a fixed seeded subset of the validation split
    attacks: list = field(default_factory=lambda: ["pgd-10", "apgd-ce", "apgd-dlr"])
    lambdas: list | None = None  # None: 0, the training values' median and 1 (OAT); the model's λ (dedicated)
    margin: float = 0.05  # flag when PGD's RA exceeds the APGD worst case by more than this plus noise
    seed: int = 0


@dataclass
class FoscNoiseConfig:
    """The remedy of arXiv 2410.07675: Gaussian noise on the next epoch's first batches when FOSC is high."""

    threshold: float | None = None  # required: the FOSC above which the next epoch is noised
    sigma: float = 0.1
    batches: int = 10
    source: str = "train"  # train: the training attack's FOSC | validation: the last validation's


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
    fosc_every: int = 4  # probe the training attack's FOSC on every Nth batch (≤ 1% of training's passes)
    threads: int | None = None  # CPU threads; None: $OMP_NUM_THREADS, else the cores not already busy
    awp: AWPConfig = field(default_factory=AWPConfig)
    validate: ValidateConfig | None = None  # None: no validation monitor
    fosc_noise: FoscNoiseConfig | None = None  # None: no FOSC noise


@dataclass
class EvalConfig:
    lambdas: list | None = None  # None: the training λ values plus unseen ones
    attacks: list = field(default_factory=lambda: ["pgd-20"])
    eps: float | None = None  # None: the training ε
    n: int | None = None  # a fixed, seeded subset of the test set; None: all of it
    batch_size: int | None = None  # None: 128 on the CPU, 500 on an accelerator (same figures)
    seed: int = 0
    cascade: bool = False  # each attack only on the examples every earlier attack failed on
    split: str | None = None  # "test" or "validation"; None: the validation split when one was carved, else test


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
        if path in RETIRED:
            raise ConfigError(f"config key '{path}' was removed: {RETIRED[path]}")
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
        real = [o for o in options if o is not type(None)]
        if len(real) == 1 and dataclasses.is_dataclass(real[0]):  # say which key inside it is wrong
            return from_dict(value, real[0], path)
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


# ---------------------------------------------------------------- values that make sense
def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# key: (test, what is allowed). The loader already checked each type; these are the ranges.
_RANGES = {
    "train.epochs": (lambda v: v >= 1, "at least 1"),
    "train.batch_size": (lambda v: v >= 2, "at least 2"),
    "train.threads": (lambda v: v is None or v >= 1, "null or at least 1"),
    "train.grad_clip": (lambda v: v is None or (_finite(v) and v > 0), "null or a positive number"),
    "train.fosc_every": (lambda v: v >= 1, "at least 1"),
    "train.awp.gamma": (lambda v: _finite(v) and v >= 0, "a finite number ≥ 0 (0 disables AWP)"),
    "train.awp.warmup_epochs": (lambda v: v >= 0, "an integer ≥ 0"),
    "train.validate.every": (lambda v: v >= 1, "at least 1"),
    "train.validate.n": (lambda v: v >= 1, "at least 1"),
    "train.validate.margin": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "train.fosc_noise.threshold": (lambda v: v is None or (_finite(v) and v >= 0), "a finite number ≥ 0"),
    "train.fosc_noise.sigma": (lambda v: _finite(v) and v > 0, "a finite positive number"),
    "train.fosc_noise.batches": (lambda v: v >= 1, "at least 1"),
    "optim.lr": (lambda v: _finite(v) and v > 0, "a finite positive number"),
    "optim.momentum": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optim.weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number ≥ 0"),
    "optim.conditioning_weight_decay": (lambda v: v is None or (_finite(v) and v >= 0), "null or a finite number ≥ 0"),
    "schedule.gamma": (lambda v: _finite(v) and v > 0, "a finite positive number"),
    "schedule.warmup_epochs": (lambda v: _finite(v) and v >= 0, "a finite number ≥ 0"),
    "attack.eps": (lambda v: v is None or (_finite(v) and v >= 0), "null or a finite number ≥ 0"),
    "attack.steps": (lambda v: v >= 1, "at least 1"),
    "attack.alpha": (lambda v: v is None or (_finite(v) and v > 0), "null or a finite positive number"),
    "eval.n": (lambda v: v is None or v >= 1, "null or at least 1"),
    "eval.batch_size": (lambda v: v is None or v >= 1, "null or at least 1"),
    "eval.eps": (lambda v: v is None or (_finite(v) and v >= 0), "null or a finite number ≥ 0"),
    "eval.split": (lambda v: v in (None, "test", "validation"), "null, test or validation"),
}


def _present(data: dict, key: str) -> bool:
    """Whether dotted ``key`` exists (an optional section set to null holds none of its keys)."""
    node = data
    for part in key.split(".")[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, dict)


def _check_monitor(config: Config) -> None:
    """The monitor's and the FOSC noise's schema (its attack names: :func:`oat.experiment.check`)."""
    validate = config.train.validate
    if validate is not None:
        for value in validate.lambdas or []:
            if not _finite(value) or not 0 <= value <= 1:
                raise ConfigError(f"config key 'train.validate.lambdas' must hold λ values in [0, 1], got {value!r}")
    noise = config.train.fosc_noise
    if noise is not None:
        if noise.threshold is None:
            raise ConfigError("config key 'train.fosc_noise.threshold' must be set: the FOSC above which the next "
                              "epoch's first batches get noise")
        if noise.source == "validation" and validate is None:
            raise ConfigError("config key 'train.fosc_noise.source' is validation but train.validate is not set")


def present(config: Config | dict, key: str) -> bool:
    """Whether dotted ``key`` exists in a config (an optional section set to null holds none of its keys)."""
    return _present(config.to_dict() if isinstance(config, Config) else config, key)


def get_key(config: Config | dict, key: str) -> Any:
    """The value of dotted ``key`` (``section.name``) in a config or its dict."""
    node = config.to_dict() if isinstance(config, Config) else config
    for part in key.split("."):
        node = node[part]
    return node


def check_schema(config: Config) -> None:
    """Refuse values that type-check but mean nothing (a negative momentum, a milestone past the
    last epoch…) with a one-line ``ConfigError`` naming the key, the value and what is allowed.
    The checks that need other parts — names from the registries, a sampler's options, attack
    names — are :func:`oat.experiment.check`'s, which calls this first."""
    data = config.to_dict()
    for key in _RANGES:
        if not key.startswith("eval.") and _present(data, key):
            _check_range(key, get_key(data, key))
    for milestone in config.schedule.milestones:
        if not _finite(milestone) or not 0 < milestone < config.train.epochs:
            raise ConfigError(f"config key 'schedule.milestones' must hold epochs between 0 and train.epochs = "
                              f"{config.train.epochs}, got {milestone!r}")
    check_eval(config.eval)
    _check_monitor(config)


# Keys that cannot change what training produces: where the data lives, the device, the thread
# count, and the evaluation settings (an evaluation is matched by its own protocol instead).
RESULT_NEUTRAL = ("data.root", "data.download", "train.device", "train.threads", "eval")

# Keys an older oat wrote that mean nothing now: dropped from a saved run's config, refused with
# the reason in a config a user writes.
RETIRED = {"train.workers": "it never did anything (training slices the data in memory, no DataLoader)"}


def saved_config(data: dict) -> Config:
    """The :class:`Config` of a saved run's config dict, an older oat's included."""
    data = copy.deepcopy(data) if isinstance(data, dict) else data
    for key in RETIRED:
        *parents, name = key.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(name, None)
    return from_dict(data)


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):  # an empty mapping sets nothing
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def config_differences(saved: Config | dict, wanted: Config | dict) -> list[str]:
    """``key: saved → wanted`` for every key, outside :data:`RESULT_NEUTRAL`, where the two
    configs differ (a saved dict from an older oat gets today's defaults first)."""
    def flat(config):
        config = config if isinstance(config, Config) else saved_config(config)
        return _flatten(config.to_dict())

    old, new = flat(saved), flat(wanted)
    neutral = lambda key: any(key == n or key.startswith(n + ".") for n in RESULT_NEUTRAL)  # noqa: E731
    shown = lambda flat, key: repr(flat[key]) if key in flat else "(unset)"  # noqa: E731
    return [f"{key}: {shown(old, key)} → {shown(new, key)}"
            for key in sorted(set(old) | set(new))
            if not neutral(key) and old.get(key, _UNSET) != new.get(key, _UNSET)]


_UNSET = object()


def check_eval(config: EvalConfig, section: str = "eval") -> None:
    """The schema checks of an evaluation section alone (a sweep's protocol); its attack names are
    :meth:`oat.protocol.Protocol.from_eval`'s."""
    values = dataclasses.asdict(config)
    for key in _RANGES:
        if key.startswith("eval."):
            _check_range(key, values[key[len("eval."):]], f"{section}.{key[len('eval.'):]}")
    for value in config.lambdas or []:
        if not _finite(value) or not 0 <= value <= 1:
            raise ConfigError(f"config key '{section}.lambdas' must hold λ values in [0, 1], got {value!r}")
    if not config.attacks:
        raise ConfigError(f"config key '{section}.attacks' must name at least one attack")


def _check_range(key: str, value: Any, shown: str | None = None) -> None:
    test, allowed = _RANGES[key]
    if not test(value):
        raise ConfigError(f"config key '{shown or key}' must be {allowed}, got {value!r}")


# ---------------------------------------------------------------- YAML and overrides
def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """The mapping a YAML file holds, or a one-line ``ConfigError`` naming the problem."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text file") from None
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(error, 'problem', error)}") from None
    if data is None:
        raise ConfigError(f"{what} {path} is empty (no sections); an empty file would silently mean every default")
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
