"""The builder: a training config in, the parts of a training run out.

A config is read at the edge — the CLI, a comparison, or a caller of :func:`train` — and nowhere
else. :mod:`oat.config` parses it and checks its schema; :func:`check` asks every check that needs
a part of that part's own registry (a sampler's options of the sampler registry, an objective's of
the objectives, attack names of :mod:`oat.attacks.names`, names of the model, dataset and schedule
registries); :func:`build` turns it into the parts of a run — data, model, λ sampler, objective,
optimiser, learning rate, AWP, monitor, FOSC noise and the loop's own settings (:class:`Experiment`)
— which :func:`oat.trainer.run` receives, never reading the config. Each fact is derived once: the
λ set a sampler can draw (the sampler says, :attr:`oat.sampling.Sampler.discrete_values`), the ε a
dataset admits (:func:`oat.datasets.check_eps`).
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path

import torch
import torch.nn as nn

from oat import models

from . import datasets
from .attacks import reference_step_size
from .attacks.base import eval_mode
from .attacks.names import check_bounds, check_monitor_attacks
from .awp import AWP
from .checkpoint import CheckpointError, first_line, load_checkpoint
from .conditioning import FiLM
from .config import (Config, ConfigError, check_schema, config_differences, dump_config, get_key, present,
                     saved_config)
from .datasets.base import AUGMENTATIONS
from .distributed import pick_device, set_threads, setup, teardown
from .monitor import FoscNoise, Monitor, monitor_lambdas
from .objectives import make_objective, objective_names
from .protocol import Protocol, check_attack_names
from .runs import CHECKPOINT, build_model
from .sampling import make_sampler, sampler_names
from .schedules import SCHEDULES, LearningRate
from .trainer import Experiment, Loop, run


# ---------------------------------------------------------------- checks that need the parts
def _choices() -> dict[str, tuple]:
    """key: the names it may take (from the registries, so a new entry is allowed at once)."""
    return {
        "data.name": tuple(datasets.names()),
        "data.augment": (None, *AUGMENTATIONS),
        "model.name": tuple(models.names()),
        "objective.name": tuple(objective_names()),
        "lambdas.sampler": tuple(sampler_names()),
        "optim.name": ("sgd", "adam"),
        "schedule.name": SCHEDULES,
        "train.precision": ("fp32", "bf16", "fp16"),
        "train.fosc_noise.source": ("train", "validation"),
    }


def check(config: Config) -> None:
    """Refuse a config that cannot train, with a one-line ``ConfigError`` naming the key, the value
    and what is allowed: its schema (:func:`oat.config.check_schema`), then what the parts say of
    their own options. Checks that need the dataset (ε against the input range, the class count)
    happen when :func:`build` loads it."""
    check_schema(config)
    for key, names in _choices().items():
        if not present(config, key):
            continue
        value = get_key(config, key)
        if value not in names:
            close = difflib.get_close_matches(str(value), [n for n in names if n], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join("null" if n is None else str(n) for n in names)
            raise ConfigError(f"config key '{key}' must be one of {shown}, got {value!r}{hint}")
    Protocol.from_eval(config.eval)  # its attack names
    _check_monitor(config)
    try:
        make_sampler(config.lambdas.sampler, seed=0, **config.lambdas.params)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config key 'lambdas.params': {error}") from None
    if not config.model.conditioned and config.lambdas.sampler != "fixed":
        raise ConfigError(
            "a plain network (model.conditioned: false) is a dedicated baseline: set lambdas.sampler: fixed "
            "and lambdas.params.value"
        )


def _check_monitor(config: Config) -> None:
    validate = config.train.validate
    if validate is None:
        return
    check_attack_names(validate.attacks, "train.validate.attacks")
    try:
        check_monitor_attacks([str(a) for a in validate.attacks])
    except ValueError as error:
        raise ConfigError(f"config key 'train.validate.attacks' {error}") from None


# ---------------------------------------------------------------- the parts
def model_spec(config: Config, info: datasets.DatasetInfo) -> dict:
    """The arguments that rebuild the network without the dataset (stored in checkpoints)."""
    options = dict(config.model.options)
    if config.model.conditioned and options.get("encoding") == "categorical":
        options.setdefault("lambdas", training_lambdas(config))
        if not options["lambdas"]:
            raise ConfigError(f"model.options.encoding: categorical knows only a discrete set of λ values, and "
                              f"lambdas.sampler {config.lambdas.sampler!r} draws a continuous λ; use "
                              f"encoding: sinusoidal (or give the sampler values)")
    options.setdefault("mean", list(info.mean))
    options.setdefault("std", list(info.std))
    return {
        "name": config.model.name,
        "num_classes": info.num_classes,
        "conditioned": config.model.conditioned,
        "input_shape": list(info.input_shape),
        "options": options,
    }


def training_lambdas(config: Config) -> list[float]:
    """The λ values the sampler draws from (a discrete set, its fixed value), or [] for a
    continuous law: the sampler itself says (:attr:`oat.sampling.Sampler.discrete_values`)."""
    try:
        values = make_sampler(config.lambdas.sampler, seed=0, **config.lambdas.params).discrete_values
    except (ValueError, TypeError) as error:
        raise ConfigError(f"lambdas: {first_line(error)}") from None
    return [] if values is None else list(values)


def load_data(config: Config) -> datasets.Splits:
    """The splits ``data`` names, or a one-line ``ConfigError``."""
    data = config.data
    try:
        return datasets.load(data.name, root=data.root, download=data.download, **data.options)
    except FileNotFoundError as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    except OSError as error:  # no network for data.download, an unreadable data.root …
        raise ConfigError(f"data: cannot {'fetch' if data.download else 'read'} {data.name} into {data.root} "
                          f"({first_line(error)})") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"data: {first_line(error)}") from None


def training_eps(config: Config, info: datasets.DatasetInfo) -> float:
    """The training radius: ``attack.eps``, else the dataset's; refused when it could not mean
    anything for this data (ε wider than the input box, or two keys saying different radii)."""
    option = config.data.options.get("eps")
    if option is not None and config.attack.eps is not None and float(option) != config.attack.eps:
        raise ConfigError(f"config keys 'data.options.eps' ({option}) and 'attack.eps' ({config.attack.eps}) "
                          "disagree; set the radius in one of them")
    key = "attack.eps" if config.attack.eps is not None else ("data.options.eps" if option is not None else None)
    eps = info.eps if config.attack.eps is None else config.attack.eps
    try:
        datasets.check_eps(eps, info, f"config key '{key or 'attack.eps'}'")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return eps


def _check_classes(config: Config, splits: datasets.Splits) -> None:
    info = splits.info
    labels = getattr(splits.train, "labels", None)
    present = sorted(set(labels.tolist())) if labels is not None else None
    if info.num_classes < 2 or (present is not None and len(present) < 2):
        found = f"only label {present[0]}" if present else f"{info.num_classes} class"
        source = config.data.options.get("path")
        raise ConfigError(f"data: the training split of {info.name}{f' ({source})' if source else ''} holds "
                          f"{found}; a classifier needs at least two classes")


def _check_forward(model: nn.Module, info: datasets.DatasetInfo, options: dict) -> None:
    """One forward of two blank inputs: model options that build a network unable to process this
    data (a zero width, an input size that does not match) are refused before training starts."""
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(2, *info.input_shape), 0.0)
    except RuntimeError as error:
        if not options:  # the architecture as oat ships it failed: a bug, which keeps its traceback
            raise
        raise ConfigError(f"model: {type(model).__name__} with model.options {options} cannot process "
                          f"{info.name}'s {tuple(info.input_shape)} inputs ({first_line(error)})") from None


def build_network(config: Config) -> tuple[datasets.Splits, nn.Module, dict, float]:
    """The data, the network (a fresh initialisation from the global RNG), its spec and ε."""
    splits = load_data(config)
    info = splits.info
    eps = training_eps(config, info)
    _check_classes(config, splits)
    spec = model_spec(config, info)
    try:  # unknown options are refused before building; a value the network refuses is a ValueError
        model = build_model(spec)
    except ValueError as error:  # a TypeError from inside a constructor is a bug: it keeps its traceback
        raise ConfigError(f"model: {error}") from None
    _check_forward(model, info, config.model.options)
    return splits, model, spec, eps


def optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser ``optim`` names, over ``model``'s parameters (FiLM's in a group of their own
    when ``optim.conditioning_weight_decay`` is set)."""
    opt = config.optim
    groups = _parameter_groups(model, opt.weight_decay, opt.conditioning_weight_decay)
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    if opt.name == "adam":
        return torch.optim.AdamW(groups, lr=opt.lr)
    raise ConfigError(f"config key 'optim.name' must be sgd or adam, got {opt.name!r}")


def _parameter_groups(model: nn.Module, weight_decay: float, conditioning_weight_decay: float | None) -> list[dict]:
    """The optimiser's parameter groups: one, or — given ``conditioning_weight_decay`` — the
    λ-conditioning's own parameters (every FiLM MLP) apart from the rest, each with its decay."""
    if conditioning_weight_decay is None:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    conditioning = {id(p) for m in model.modules() if isinstance(m, FiLM) for p in m.parameters()}
    rest = [p for p in model.parameters() if id(p) not in conditioning]
    own = [p for p in model.parameters() if id(p) in conditioning]
    return [{"params": rest, "weight_decay": weight_decay},
            {"params": own, "weight_decay": conditioning_weight_decay}]


def monitor(config: Config, conditioned: bool, train_lambdas: list[float], splits: datasets.Splits) -> Monitor | None:
    """The overestimation monitor ``train.validate`` asks for (None: none)."""
    validate = config.train.validate
    if validate is None:
        return None
    if splits.validation is None:
        raise ConfigError("train.validate watches a validation split carved from the training set (never the test "
                          "set): set data.options.validation_size, e.g. 1000")
    try:
        check_bounds(validate.attacks, splits.info.bounds)
    except ValueError as error:
        raise ConfigError(f"config key 'train.validate.attacks': {error}") from None
    lambdas = monitor_lambdas(validate.lambdas, conditioned, train_lambdas)
    return Monitor(tuple(str(a) for a in validate.attacks), tuple(lambdas), validate.n, validate.seed,
                   validate.every, validate.margin)


def fosc_noise(config: Config) -> FoscNoise | None:
    """The FOSC-noise remedy ``train.fosc_noise`` asks for (None: none)."""
    noise = config.train.fosc_noise
    if noise is None:
        return None
    return FoscNoise(noise.threshold, noise.sigma, noise.batches, noise.source)


def build(config: Config) -> Experiment:
    """Every part of a training run from a checked config: seeds the global RNG with
    ``train.seed`` and initialises the network from it (so a run and its rerun start alike)."""
    cfg = config.train
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(cfg.seed)
    splits, model, spec, eps = build_network(config)
    info = splits.info
    alpha = config.attack.alpha if config.attack.alpha is not None else reference_step_size(eps, config.attack.steps)
    try:
        objective = make_objective(config.objective.name, eps=eps, alpha=alpha, steps=config.attack.steps,
                                   bounds=info.bounds, **config.objective.params)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"objective: {error}") from None
    train_lambdas = training_lambdas(config)
    schedule = config.schedule
    return Experiment(
        splits=splits, model=model, model_spec=spec, eps=eps, alpha=alpha, train_lambdas=train_lambdas,
        objective=objective,
        new_sampler=functools.partial(make_sampler, config.lambdas.sampler, **config.lambdas.params),
        optimizer=optimizer(config, model),
        learning_rate=LearningRate(config.optim.lr, schedule.name, cfg.epochs, tuple(schedule.milestones),
                                   schedule.gamma, schedule.warmup_epochs),
        awp=AWP(cfg.awp.gamma, cfg.awp.warmup_epochs),
        loop=Loop(cfg.epochs, cfg.batch_size, cfg.seed, cfg.precision, cfg.channels_last, cfg.sync_bn, cfg.grad_clip,
                  cfg.fosc_every, config.data.augment or info.augment),
        name=config.model.name, record=config.to_dict(), config_text=dump_config(config),
        monitor=monitor(config, config.model.conditioned, train_lambdas, splits), noise=fosc_noise(config))


# ---------------------------------------------------------------- the edge: config in, run out
def resumed_config(state: dict, wanted: Config | None, out_dir: Path) -> Config:
    """The config a resumed run continues with: the saved one, or ``wanted`` when it differs from
    it only in keys that cannot change the result (:data:`oat.config.RESULT_NEUTRAL`)."""
    try:
        saved = saved_config(state["config"])
    except ConfigError as error:
        raise CheckpointError(f"{out_dir / CHECKPOINT} holds a config this oat cannot read ({error})") from None
    if wanted is None:
        return saved
    differences = config_differences(saved, wanted)
    if differences:
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise ConfigError(f"{out_dir} was trained with another config ({'; '.join(differences[:3])}{more}); "
                          "resume it unchanged, or train into another --out")
    return wanted


def train(config: Config | None, out_dir: str | Path, resume: bool = False, show_progress: bool = True) -> Path:
    """Train as ``config`` says into ``out_dir``; returns the checkpoint path.

    ``resume=True`` continues from ``out_dir/checkpoint.pt`` with its saved config; a ``config``
    given with it must agree with the saved one on every key that changes the result (see
    :func:`resumed_config`). Without ``resume``, an existing checkpoint in ``out_dir`` is an error
    rather than something silently overwritten.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"the run directory {out_dir} is a file; choose another --out")
    checkpoint_path = out_dir / CHECKPOINT
    state = None
    if resume:
        if not checkpoint_path.exists():
            raise ConfigError(f"--resume: no checkpoint to resume in {out_dir}")
        state = load_checkpoint(checkpoint_path)
        config = resumed_config(state, config, out_dir)
    elif checkpoint_path.exists():
        raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    check(config)
    try:
        device = pick_device(config.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as error:
        raise ConfigError(f"config key 'train.device': {error}") from None
    set_threads(config.train.threads)
    env = setup(device)
    try:
        return run(build(config), out_dir, state, device, env, show_progress)
    finally:
        teardown(env)
