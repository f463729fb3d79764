"""The run directory: its file names, building a network from a saved spec, loading a trained
run, and what a run directory says about itself (its config, epochs, whether it is conditioned).

This module is a run directory's one reader and writer: ``trainer``, ``cli`` and ``oat.frontier``
name a run's files only through it, read its evaluations with :func:`read_result` and write them
with :func:`write_result`, and read ``metrics.jsonl`` with :func:`metrics_lines` /
:func:`read_metrics` under one policy: a torn last line (a run killed while appending) is dropped,
a bad line anywhere else is damage.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
from pathlib import Path

import yaml

import torch
import torch.nn as nn

from oat import models

from .checkpoint import EXPORT_FORMAT, CheckpointError, first_line, load_checkpoint, write_text_atomic
from .config import ConfigError, read_yaml_mapping, saved_config
from . import datasets
from .evaluation import UNSEEN_LAMBDAS, evaluate, robustness_curve
from .mixture import MIXTURE, InterpolatedEnds, MixedEnds, interpolate, interpolation_barrier
from .protocol import Protocol

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVAL_RESULT = "eval.json"
AUTOATTACK_RESULT = "eval_autoattack.json"  # a comparison's second protocol (oat.frontier.comparison)
RESULT_FILES = (EVAL_RESULT, AUTOATTACK_RESULT)
MONITOR = "monitor.json"  # the overestimation monitor's summary (oat.monitor), rewritten at each validation
RUN_FILES = (CHECKPOINT, CONFIG, METRICS, MONITOR, *RESULT_FILES)


def read_result(path: str | Path, name: str = EVAL_RESULT) -> dict:
    """An evaluation a run directory holds (``path`` a run directory, or the file itself), or a
    one-line ``ValueError`` naming the file and what is wrong (``FileNotFoundError`` when missing)."""
    path = Path(path)
    path = path / name if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} at {path.parent} (write one with oat eval)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an evaluation")
    return data


def write_result(run_dir: str | Path, result: dict, name: str = EVAL_RESULT, path: str | Path | None = None) -> Path:
    """Write an evaluation into ``run_dir`` (or to ``path``), atomically; returns where it went."""
    target = Path(path) if path is not None else Path(run_dir) / name
    write_text_atomic(target, json.dumps(result, indent=2) + "\n")
    return target


def metrics_lines(run_dir: str | Path, upto_epoch: int | None = None) -> list[str]:
    """The ``metrics.jsonl`` lines of epochs up to ``upto_epoch`` (all when None). A run killed while
    appending leaves a torn last line: it is dropped (its epoch is retrained). A bad line elsewhere
    is damage: a ``CheckpointError`` naming the line."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise CheckpointError(f"{path}: line {number} is not JSON; the metrics log is damaged") from None
        if upto_epoch is None or record.get("epoch", 0) <= upto_epoch:
            kept.append(line)
    return kept


def read_metrics(run_dir: str | Path) -> list[dict]:
    """A run's epoch records (:func:`metrics_lines`' policy)."""
    return [json.loads(line) for line in metrics_lines(run_dir)]


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Append one epoch's record to ``metrics.jsonl``."""
    with open(Path(run_dir) / METRICS, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def checkpoint_file(path: str | Path) -> Path:
    """A run directory's checkpoint (a mixture directory's ``mixture.yaml``), or ``path`` itself
    when it names a file."""
    path = Path(path)
    if not path.is_dir():
        return path
    return path / MIXTURE if is_mixture(path) else path / CHECKPOINT


def build_model(spec: dict) -> nn.Module:
    """The network a checkpoint's ``model_spec`` (:func:`oat.experiment.model_spec`) describes."""
    return models.create(spec["name"], num_classes=spec["num_classes"], conditioned=spec["conditioned"],
                         input_shape=tuple(spec["input_shape"]), **spec["options"])


def trained_config(run_dir: Path) -> dict | None:
    """The config a run directory was trained with, as saved (its config.yaml, else the
    checkpoint's copy); None when nothing was trained there yet."""
    if not (run_dir / CHECKPOINT).exists():
        return None
    try:
        saved = read_yaml_mapping(run_dir / CONFIG, "run config")
    except ConfigError:  # missing or unreadable: the checkpoint keeps its own copy
        saved = None
    return saved or load_checkpoint(run_dir / CHECKPOINT)["config"]


def trained_epochs(run_dir: Path) -> int:
    """How many epochs the run directory's checkpoint holds."""
    return int(load_checkpoint(run_dir / CHECKPOINT)["epoch"])


def is_conditioned(run_dir: Path) -> bool:
    """Whether the run directory holds a λ-conditioned (OAT) network, by its config.yaml."""
    config = read_yaml_mapping(run_dir / CONFIG, "run config")
    model = config.get("model")
    return isinstance(model, dict) and model.get("conditioned") is True


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model stored in checkpoint ``path`` (or a run directory), in eval mode on ``device``;
    also a folded network written by ``oat export`` (a plain network: λ is accepted and ignored).

    >>> model = oat.load("runs/digits/checkpoint.pt")
    >>> logits = model(images, 0.3)
    """
    model, _ = load_run(path, device, exported=True)
    return model


def load_run(path: str | Path, device: str | torch.device = "cpu",
             exported: bool = False) -> tuple[nn.Module, dict]:
    """The model and the whole checkpoint dict (config, training λ values, ε, epoch …);
    ``exported=True`` also accepts a file ``oat export`` wrote (its dict holds no config).

    The checkpoint's model_spec is checked against its own weights before any memory is spent on
    the network: a spec asking for 10⁹ classes is an error here, not an 800 GB allocation.

    A mixture directory (:mod:`oat.mixture`: two runs mixed at inference) loads like a run.
    """
    if is_mixture(path):
        try:
            return load_mixture(path, device)
        except ValueError as error:
            raise CheckpointError(first_line(error)) from None
    path = checkpoint_file(path)
    state = load_checkpoint(path, exported=exported)
    if "model_spec" not in state:
        raise CheckpointError(f"{path} has no model description (model_spec); it was not written by oat train")
    spec = state["model_spec"]
    _check_spec(spec, path)
    if state.get("format") != EXPORT_FORMAT:
        _check_entries(state, path)
    weights = state["model"]
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: its model weights are a {type(weights).__name__}, not a dict of named tensors")
    odd = next((key for key, value in weights.items()
                if not (isinstance(key, str) and isinstance(value, torch.Tensor))), None)
    if odd is not None:
        raise CheckpointError(f"{path}: its model weights are not all named tensors "
                              f"({reprlib.repr(odd)} is a {type(weights[odd]).__name__})")
    model = _checked_network(spec, weights, path, device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # names and shapes match by now; a dtype or layout may not
        raise CheckpointError(f"{path}: weights do not fit the network it describes ({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), state


def _check_entries(state: dict, path: Path) -> None:
    """The entries evaluation reads besides the network: a readable config, ε, epochs, seconds."""
    try:
        saved_config(state["config"])
    except ConfigError as error:
        raise CheckpointError(f"{path}: its saved config is not one this oat can read ({error})") from None
    for key, test in (("eps", lambda v: math.isfinite(v) and v >= 0), ("epoch", lambda v: v >= 0),
                      ("train_seconds", lambda v: math.isfinite(v) and v >= 0)):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(value):
            raise CheckpointError(f"{path}: entry '{key}' must be a number ≥ 0, got {reprlib.repr(value)}")


def _check_spec(spec, path: Path) -> None:
    """model_spec has the form :func:`oat.experiment.model_spec` writes, with sane values."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: model_spec {what}")

    if not isinstance(spec, dict):
        raise bad(f"is a {type(spec).__name__}, not a dict")
    missing = [key for key in ("name", "num_classes", "conditioned", "input_shape", "options") if key not in spec]
    if missing:
        raise bad(f"lacks {', '.join(missing)}")
    name, num_classes, shape = spec["name"], spec["num_classes"], spec["input_shape"]
    if not isinstance(name, str) or name not in models.names():
        raise bad(f"names an unknown model {reprlib.repr(name)} (known: {', '.join(models.names())})")
    if not _is_int(num_classes) or num_classes < 1:
        raise bad(f"num_classes must be an integer ≥ 1, got {reprlib.repr(num_classes)}")
    if not isinstance(spec["conditioned"], bool):
        raise bad(f"conditioned must be true or false, got {reprlib.repr(spec['conditioned'])}")
    if not (isinstance(shape, list) and len(shape) in (1, 3) and all(_is_int(v) and v >= 1 for v in shape)):
        raise bad(f"input_shape must be a list of 1 or 3 positive integers, got {reprlib.repr(shape)}")
    if not isinstance(spec["options"], dict):
        raise bad(f"options must be a dict, got {type(spec['options']).__name__}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_network(spec: dict, weights: dict[str, torch.Tensor], path: Path,
                     device: str | torch.device) -> nn.Module:
    """The network ``spec`` describes, its every parameter and buffer shaped as in ``weights``
    (uninitialised: the caller loads them). Built on the meta device first, which records shapes
    and allocates nothing, so a spec that disagrees with its weights costs no memory."""
    try:
        with torch.device("meta"):
            network = build_model(spec)
    # models.create's word for options it cannot use (ValueError, TypeError), and torch's for sizes
    # no tensor can have (RuntimeError: a negative width); the same constructors run uncaught in training.
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: model_spec does not describe a network oat can build "
                              f"({str(error).splitlines()[0]})") from None
    expected = network.state_dict()
    for key, tensor in expected.items():
        if key not in weights:
            raise CheckpointError(f"{path}: the network model_spec describes has {key} "
                                  f"{list(tensor.shape)}, which the checkpoint's weights lack")
        if weights[key].shape != tensor.shape:
            raise CheckpointError(f"{path}: model_spec does not match the weights: {key} is "
                                  f"{list(tensor.shape)} in the network it describes, "
                                  f"{list(weights[key].shape)} in the checkpoint")
    for key, tensor in weights.items():
        if key not in expected:
            raise CheckpointError(f"{path}: the checkpoint's weights have {key} {list(tensor.shape)}, "
                                  "which the network model_spec describes lacks")
    if _state_dict_covers(network):
        # Every tensor the network holds is about to be overwritten by the checkpoint's: allocate
        # it uninitialised rather than run the initialisers (a categorical λ encoder's random
        # orthogonal table costs code_dim² memory and a QR decomposition, whatever the table kept).
        return network.to_empty(device=device)
    return build_model(spec)  # a tensor the state dict does not hold needs its real initial value


def _state_dict_covers(network: nn.Module) -> bool:
    """Whether loading a state dict sets every tensor of ``network``: no non-persistent buffer,
    no tensor kept as a plain attribute."""
    saved = set(network.state_dict())
    held = ({name for name, _ in network.named_parameters(remove_duplicate=False)}
            | {name for name, _ in network.named_buffers(remove_duplicate=False)})
    plain = any(isinstance(value, torch.Tensor) for module in network.modules() for value in vars(module).values())
    return held <= saved and not plain


def run_data(state: dict, data_root: str | None = None) -> datasets.Splits:
    """The dataset a run was trained on (from ``data_root`` if given, else where its config says),
    or a one-line ``ValueError``/``FileNotFoundError`` saying it is this run's data."""
    data = state["config"]["data"]
    try:
        return datasets.load(data["name"], root=data_root or data["root"], **data["options"])
    except (ValueError, TypeError) as error:
        raise ValueError(f"the run's data (config key 'data' {data['name']!r}): {error}") from None


def evaluate_run(model: nn.Module, state: dict, lambdas, protocol: Protocol, data_root: str | None = None,
                 show_progress: bool = False, splits: datasets.Splits | None = None,
                 eps_sweep: list[float] | None = None) -> dict:
    """Evaluate a loaded run on its own dataset with ``protocol`` (its ε None: the training ε; its
    split: see :func:`oat.evaluate`); the result is :func:`oat.evaluate`'s dict plus the run's
    training seconds and epochs, and, given ``eps_sweep``, the robustness curve at those radii
    (:func:`oat.evaluation.robustness_curve`, its flags added to the result's)."""
    splits = splits or run_data(state, data_root)
    eps = state["eps"] if protocol.eps is None else protocol.eps
    for value in [eps, *(eps_sweep or [])]:
        datasets.check_eps(value, splits.info)
    options = dict(n=protocol.n, seed=protocol.seed, batch_size=protocol.batch_size, show_progress=show_progress,
                   cascade=protocol.cascade, split=protocol.split)
    attacks = list(protocol.attacks)
    result = evaluate(model, splits, lambdas, attacks, eps=eps, **options)
    if eps_sweep:
        result["eps_sweep"] = robustness_curve(model, splits, lambdas, attacks, eps_sweep, **options)
        result["flags"] += result["eps_sweep"]["flags"]
    result["train_seconds"] = float(state["train_seconds"])
    result["train_passes"] = state.get("passes")  # oat.passes counts; None for a run from before they were kept
    result["train_macs_per_example"] = _macs_per_example(state)
    result["epochs"] = int(state["epoch"])
    # oat pick interpolates between evaluated λ only for a network that serves every λ in [0, 1]
    result["continuous_lambda"] = model.serves_every_lambda
    # ... and never across λ = 0 (or 1) where that λ has parameters of its own
    result["separate_lambdas"] = model.separate_lambdas
    result["dual_bn"] = 0.0 in result["separate_lambdas"]
    return result


def _macs_per_example(state: dict) -> int | None:
    """The network's forward multiply-accumulates per example (oat.passes.forward_macs) as the
    checkpoint holds them; None for a run from before they were kept, or a value that is no count."""
    macs = state.get("macs_per_example")
    return macs if isinstance(macs, int) and not isinstance(macs, bool) and macs >= 0 else None


def default_lambdas(state: dict, chosen: list | None = None) -> list[float]:
    """``chosen`` (the run's ``eval.lambdas``) when set; else the training λ values plus unseen ones
    (a plain network: its one training λ; a categorical encoding knows only its training values)."""
    if chosen:
        return [float(v) for v in chosen]
    trained = [float(v) for v in state.get("train_lambdas", [])]
    spec = state["model_spec"]
    if "mixture" in spec:  # α: both members, and mixtures between them
        return sorted({0.0, 1.0, *UNSEEN_LAMBDAS})
    if not spec["conditioned"]:
        return trained[:1] or [0.0]
    if spec["options"].get("encoding") == "categorical":
        return sorted(set(trained))
    return sorted(set(trained) | set(UNSEEN_LAMBDAS) | ({0.0, 1.0} if not trained else set()))


# ---------------------------------------------------------------- mixtures of two runs (oat.mixture)
def is_mixture(path: str | Path) -> bool:
    """Whether ``path`` is a mixture directory (it holds ``mixture.yaml``) or that file itself."""
    path = Path(path)
    return (path / MIXTURE).is_file() if path.is_dir() else path.name == MIXTURE and path.is_file()


MIXINGS = {"probabilities": MixedEnds, "weights": InterpolatedEnds}  # mixture.yaml's `mixing`


def write_mixture(directory: str | Path, accurate_run: str | Path, robust_run: str | Path,
                  mixing: str = "probabilities") -> Path:
    """Write ``directory/mixture.yaml`` naming the two runs, relative to it, and how they mix."""
    if mixing not in MIXINGS:
        raise ValueError(f"mixing must be one of {', '.join(MIXINGS)}, got {mixing!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    members = {"accurate": os.path.relpath(Path(accurate_run).resolve(), directory.resolve()),
               "robust": os.path.relpath(Path(robust_run).resolve(), directory.resolve()), "mixing": mixing}
    path = directory / MIXTURE
    write_text_atomic(path, yaml.safe_dump(members, sort_keys=False))
    return path


def member_runs(directory: str | Path) -> tuple[Path, Path]:
    """The (accurate, robust) run directories a mixture directory names, or a one-line ValueError."""
    directory = Path(directory)
    spec = _mixture_spec(directory)
    return directory / spec["accurate"], directory / spec["robust"]


def mixing_of(directory: str | Path) -> str:
    """How a mixture directory's two runs mix: ``probabilities`` (the default) or ``weights``."""
    return _mixture_spec(Path(directory)).get("mixing", "probabilities")


def _mixture_spec(directory: Path) -> dict:
    spec = read_yaml_mapping(directory / MIXTURE, "mixture")
    unknown = sorted(set(spec) - {"accurate", "robust", "mixing"})
    missing = [key for key in ("accurate", "robust") if not isinstance(spec.get(key), str)]
    if unknown or missing:
        raise ValueError(f"{directory / MIXTURE} must name two run directories, 'accurate' and 'robust'"
                         + (f"; it lacks {', '.join(missing)}" if missing else "")
                         + (f"; unknown key {', '.join(unknown)}" if unknown else ""))
    if spec.get("mixing", "probabilities") not in MIXINGS:
        raise ValueError(f"{directory / MIXTURE}: mixing must be one of {', '.join(MIXINGS)}, got {spec['mixing']!r}")
    return spec


def load_mixture(directory: str | Path, device: str | torch.device = "cpu") -> tuple[MixedEnds, dict]:
    """A mixture directory's model and a run state for evaluation: the accurate member's config
    (data) and ε, both members' training cost summed (seconds, passes by kind; work per example
    when the two networks cost the same), their epochs (the larger)."""
    directory = Path(directory)
    directory = directory if directory.is_dir() else directory.parent
    accurate_dir, robust_dir = member_runs(directory)
    accurate, first = load_run(accurate_dir, device)
    robust, second = load_run(robust_dir, device)
    if not math.isclose(float(first["eps"]), float(second["eps"])):
        raise ValueError(f"the mixture's members were trained at different radii ({first['eps']:g} and "
                         f"{second['eps']:g}); mix two models of one threat model")
    if first["config"]["data"] != second["config"]["data"]:
        raise ValueError("the mixture's members were trained on different data; mix two models of one task")
    same_cost = first.get("macs_per_example") == second.get("macs_per_example")
    state = {
        "config": first["config"], "eps": first["eps"], "epoch": max(int(first["epoch"]), int(second["epoch"])),
        "train_seconds": float(first["train_seconds"]) + float(second["train_seconds"]),
        "passes": _summed(first.get("passes"), second.get("passes")),
        "macs_per_example": first.get("macs_per_example") if same_cost else None,
        "model_spec": {"mixture": {"accurate": str(accurate_dir), "robust": str(robust_dir),
                                   "mixing": mixing_of(directory)}},
        "members": [str(accurate_dir), str(robust_dir)],
    }
    return MIXINGS[mixing_of(directory)](accurate, robust).to(device).eval(), state


def _summed(first: dict | None, second: dict | None) -> dict | None:
    if not first or not second:
        return None
    return {kind: int(first.get(kind, 0)) + int(second.get(kind, 0)) for kind in set(first) | set(second)}


def mix_ends(accurate_run: str | Path, robust_run: str | Path, device: str | torch.device = "cpu") -> MixedEnds:
    """The mixture of two trained runs (their run directories or checkpoints), in eval mode."""
    accurate, _ = load_run(accurate_run, device)
    robust, _ = load_run(robust_run, device)
    return MixedEnds(accurate, robust).eval()


def _network(run: str | Path | nn.Module) -> nn.Module:
    return run if isinstance(run, nn.Module) else load_run(run)[0]


def interpolate_runs(run_a: str | Path | nn.Module, run_b: str | Path | nn.Module, alpha: float) -> nn.Module:
    """:func:`oat.mixture.interpolate` of two runs (run directories, checkpoints or networks)."""
    return interpolate(_network(run_a), _network(run_b), alpha)


def interpolation_barrier_of_runs(run_a, run_b, x: torch.Tensor, y: torch.Tensor, steps: int = 10) -> dict:
    """:func:`oat.mixture.interpolation_barrier` of two runs (run directories, checkpoints or networks)."""
    return interpolation_barrier(_network(run_a), _network(run_b), x, y, steps)
