"""One training loop for OAT models and their dedicated baselines.

The same loop trains (a) an OAT model — a conditioned network, λ drawn per example — and (b) a
dedicated baseline — a plain network with one fixed λ (PGD-AT family) or one fixed β (TRADES,
λ = β/β_max). What differs is only configuration: the network's ``conditioned`` flag, the λ
sampler, the objective family. Read it top to bottom in :func:`train`.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoint.pt`` (written
atomically after every epoch) and ``metrics.jsonl`` (one JSON line per epoch). All randomness
of an epoch (data order, augmentation, λ, attack starts) is seeded from (seed, epoch, rank), so
a run resumed from an epoch boundary continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import models

from . import datasets
from .attacks import TradesKL, fosc, reference_step_size
from .attacks.base import eval_mode
from .awp import AWP
from .checkpoint import (CheckpointError, first_line, load_checkpoint, remove_orphans, save_checkpoint,
                         write_text_atomic)
from .config import Config, ConfigError, check_config, config_differences, dump_config, from_dict
from .distributed import (DistEnv, all_reduce_sum, barrier, convert_sync_batchnorm, pick_device, set_threads,
                          setup, teardown)
from .objectives import make_objective
from .passes import KINDS, PassCounter
from .progress import Progress, format_seconds
from .sampling import make_sampler
from .schedules import lr_factor

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
FOSC_EXAMPLES = 32  # FOSC is measured on this many attacked examples per batch (one extra gradient)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Experiment:
    """Everything built from a config: data, model, objective, λ sampler, attack settings."""

    config: Config
    splits: datasets.Splits
    model: nn.Module
    eps: float
    alpha: float
    train_lambdas: list[float]

    @property
    def model_spec(self) -> dict:
        return model_spec(self.config, self.splits.info)


def model_spec(config: Config, info: datasets.DatasetInfo) -> dict:
    """The arguments that rebuild the network without the dataset (stored in checkpoints)."""
    options = dict(config.model.options)
    if config.model.conditioned and options.get("encoding") == "categorical":
        options.setdefault("lambdas", training_lambdas(config))
    options.setdefault("mean", list(info.mean))
    options.setdefault("std", list(info.std))
    return {
        "name": config.model.name,
        "num_classes": info.num_classes,
        "conditioned": config.model.conditioned,
        "input_shape": list(info.input_shape),
        "options": options,
    }


def build_model(spec: dict) -> nn.Module:
    return models.create(spec["name"], num_classes=spec["num_classes"], conditioned=spec["conditioned"],
                         input_shape=tuple(spec["input_shape"]), **spec["options"])


def training_lambdas(config: Config) -> list[float]:
    """The λ values the sampler draws from (a discrete set), or its fixed value."""
    params = config.lambdas.params
    if config.lambdas.sampler == "reference":
        from .conditioning import REFERENCE_LAMBDAS

        return [float(v) for v in params.get("values", REFERENCE_LAMBDAS)]
    if config.lambdas.sampler == "fixed":
        return [float(params.get("value", 0.0))]
    return []  # continuous samplers: no discrete training set


def build(config: Config) -> Experiment:
    """Load the data and build the network a config describes (no side effects on disk)."""
    data = config.data
    try:
        splits = datasets.load(data.name, root=data.root, download=data.download, **data.options)
    except FileNotFoundError as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    except OSError as error:  # no network for data.download, an unreadable data.root …
        raise ConfigError(f"data: cannot {'fetch' if data.download else 'read'} {data.name} into {data.root} "
                          f"({first_line(error)})") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"data: {first_line(error)}") from None
    info = splits.info
    eps = training_eps(config, info)
    _check_classes(config, splits)
    alpha = config.attack.alpha if config.attack.alpha is not None else reference_step_size(eps, config.attack.steps)
    try:
        model = build_model(model_spec(config, info))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model: {error}") from None
    _check_forward(model, info, config.model.options)
    return Experiment(config, splits, model, eps, alpha, training_lambdas(config))


def training_eps(config: Config, info: datasets.DatasetInfo) -> float:
    """The training radius: ``attack.eps``, else the dataset's; refused when it could not mean
    anything for this data (ε wider than the input box, or two keys saying different radii)."""
    option = config.data.options.get("eps")
    if option is not None and config.attack.eps is not None and float(option) != config.attack.eps:
        raise ConfigError(f"config keys 'data.options.eps' ({option}) and 'attack.eps' ({config.attack.eps}) "
                          "disagree; set the radius in one of them")
    key = "attack.eps" if config.attack.eps is not None else ("data.options.eps" if option is not None else None)
    eps = info.eps if config.attack.eps is None else config.attack.eps
    if info.widest_eps is not None and eps > info.widest_eps:
        low, high = info.bounds
        raise ConfigError(f"config key '{key or 'attack.eps'}' must be at most {high - low:g}, the width of "
                          f"{info.name}'s input range [{low:g}, {high:g}], got {eps:g}")
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


def non_finite(*states: dict) -> list[str]:
    """Names of the floating-point tensors holding NaN or ±inf in (nested) state dicts."""
    found = []

    def visit(value, name):
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                found.append(name)
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(item, f"{name}.{index}")

    for state in states:
        visit(state, "")
    return found


def _what_is_kept(checkpoint_path: Path, epoch: int) -> str:
    """The end of a divergence message: which checkpoint survives, if any."""
    if epoch == 0 or not checkpoint_path.exists():
        return "no checkpoint was written (it diverged in the first epoch)"
    return f"keeping the last good checkpoint {checkpoint_path} (epoch {epoch})"


def _seed_for(seed: int, epoch: int, rank: int, stream: int) -> int:
    # Distinct, reproducible streams per (run seed, epoch, rank, purpose).
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + stream) % (2**63 - 1)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Batched augmentation: ``crop_flip`` = random crop with zero padding (H/8 pixels, 4 for
    32×32) and horizontal flip; ``none`` returns ``x``."""
    if kind == "none" or x.dim() != 4:
        return x
    batch, _, height, width = x.shape
    pad = max(1, height // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
    index = torch.arange(batch, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    cropped = padded[index, channels, rows, cols]
    flip = (torch.rand(batch, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


class _LossStep(nn.Module):
    """One module whose forward runs the objective's clean and adversarial passes, so
    DistributedDataParallel sees a single forward per backward."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch):
        return self.objective.loss(self.model, batch)


def _autocast(device: torch.device, precision: str):
    if device.type == "cpu" or precision == "fp32":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


def _optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    opt = config.optim
    if opt.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum,
                               weight_decay=opt.weight_decay, nesterov=opt.nesterov)
    if opt.name == "adam":
        return torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    raise ConfigError(f"config key 'optim.name' must be sgd or adam, got {opt.name!r}")


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _read_metrics(path: Path, upto_epoch: int) -> list[str]:
    """The metrics lines of epochs up to ``upto_epoch``. A run killed while appending leaves a
    truncated last line: it is dropped (its epoch is retrained). A bad line elsewhere is damage."""
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
        if record.get("epoch", 0) <= upto_epoch:
            kept.append(line)
    return kept


def resumed_config(state: dict, wanted: Config | None, out_dir: Path) -> Config:
    """The config a resumed run continues with: the saved one, or ``wanted`` when it differs from
    it only in keys that cannot change the result (:data:`oat.config.RESULT_NEUTRAL`)."""
    try:
        saved = from_dict(state["config"])
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
    check_config(config)
    cfg = config.train

    try:
        device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as error:
        raise ConfigError(f"config key 'train.device': {error}") from None
    set_threads(cfg.threads)
    env = setup(device)
    try:
        return _train(config, out_dir, state, device, env, show_progress)
    finally:
        teardown(env)


def _train(config: Config, out_dir: Path, state: dict | None, device: torch.device, env: DistEnv,
           show_progress: bool) -> Path:
    cfg = config.train
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(cfg.seed)

    exp = build(config)
    info = exp.splits.info
    raw_model = exp.model.to(device)
    if cfg.channels_last and device.type == "cuda":
        raw_model = raw_model.to(memory_format=torch.channels_last)
    try:
        objective = make_objective(config.objective.name, eps=exp.eps, alpha=exp.alpha,
                                   steps=config.attack.steps, **config.objective.params)
        make_sampler(config.lambdas.sampler, seed=cfg.seed, **config.lambdas.params)  # validate early
    except (ValueError, TypeError) as error:
        raise ConfigError(f"objective: {error}") from None
    awp = AWP(cfg.awp.gamma, cfg.awp.warmup_epochs)
    optimizer = _optimizer(config, raw_model)
    scaler = torch.amp.GradScaler(device.type, enabled=(cfg.precision == "fp16" and device.type == "cuda"))

    start_epoch, train_seconds = 0, 0.0
    passes_before = dict.fromkeys(KINDS, 0)  # the whole run's passes (all ranks) when it was resumed
    checkpoint_path = out_dir / CHECKPOINT
    if state is not None:
        try:
            raw_model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, train_seconds = int(state["epoch"]), float(state["train_seconds"])
            passes_before = {kind: int(state.get("passes", {}).get(kind, 0)) for kind in KINDS}
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as error:  # the file, not oat
            what = f"no {error}" if isinstance(error, KeyError) else first_line(error)
            raise CheckpointError(f"{checkpoint_path} cannot be resumed: {what}") from None

    if cfg.sync_bn and env.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA devices (SyncBatchNorm has no CPU implementation)")
        raw_model = convert_sync_batchnorm(raw_model)
    step_module = _LossStep(raw_model, objective)
    counter = PassCounter().attach(raw_model)  # this process's passes from here on
    if env.enabled:
        # find_unused_parameters: a rank whose batch has no λ = 0 example leaves its clean BNs unused.
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=raw_model.conditioned)

    images, labels = datasets.dataset_tensors(exp.splits.train)
    augment_kind = config.data.augment or info.augment
    per_rank = cfg.batch_size // env.world_size
    if per_rank < 2:
        raise ConfigError(f"train.batch_size {cfg.batch_size} is too small for {env.world_size} processes")
    steps_per_epoch = len(labels) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"train.batch_size {cfg.batch_size} exceeds the {len(labels)} training examples")
    fosc_loss = "kl" if isinstance(objective.attack, TradesKL) else "ce"

    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_orphans(out_dir)  # temporaries of a write that was killed
        write_text_atomic(out_dir / CONFIG, dump_config(config))
        metrics_path = out_dir / METRICS
        kept = _read_metrics(metrics_path, start_epoch)
        write_text_atomic(metrics_path, "".join(line + "\n" for line in kept))
    progress = Progress(cfg.epochs * steps_per_epoch, "train", enabled=show_progress and env.is_main,
                        start_done=start_epoch * steps_per_epoch)
    if env.is_main and show_progress:
        progress.log(f"training {config.model.name} ({'OAT' if raw_model.conditioned else 'dedicated'}) on "
                     f"{info.name}: {len(labels)} examples, {cfg.epochs} epochs, ε={exp.eps:.4g}, "
                     f"device {device}{f', {env.world_size} processes' if env.enabled else ''}")

    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        torch.manual_seed(_seed_for(cfg.seed, epoch, env.rank, 0))  # attack starts, dropout
        data_gen = torch.Generator().manual_seed(_seed_for(cfg.seed, epoch, 0, 1))  # same order on every rank
        aug_gen = torch.Generator().manual_seed(_seed_for(cfg.seed, epoch, env.rank, 2))
        sampler = make_sampler(config.lambdas.sampler, seed=_seed_for(cfg.seed, epoch, env.rank, 3),
                               **config.lambdas.params)
        order = torch.randperm(len(labels), generator=data_gen)
        raw_model.train()
        sums = torch.zeros(6, dtype=torch.float64)  # loss·n, clean correct, adv correct, n, n_adv, fosc·k
        fosc_count = 0
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = config.optim.lr * lr_factor(
                    config.schedule.name, global_step / steps_per_epoch, cfg.epochs, config.schedule.milestones,
                    config.schedule.gamma, config.schedule.warmup_epochs)
            index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size][env.rank::env.world_size]
            x = datasets.to_unit(images[index].to(device, non_blocking=True))
            y = labels[index].to(device, non_blocking=True)
            x = augment(x, augment_kind, aug_gen)
            if cfg.channels_last and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            lam = sampler.sample(x.shape[0]).to(device)

            batch = objective.generate(raw_model, x, y, lam)
            awp_loss = lambda: objective.loss(raw_model, batch).loss.mean()  # noqa: E731
            with awp.perturbed(raw_model, awp_loss, epoch):
                with _autocast(device, cfg.precision):
                    out = step_module(batch)
                loss = out.loss.float().mean()
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch {step + 1}; "
                                           f"stopped, {_what_is_kept(checkpoint_path, epoch)}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()

            n, n_adv = x.shape[0], out.n_adv
            sums += torch.tensor([loss.item() * n, float(out.clean_correct), float(out.adv_correct), n, n_adv, 0.0],
                                 dtype=torch.float64)
            if n_adv:
                k = min(FOSC_EXAMPLES, n_adv)
                pick = batch.index[:k]
                values = fosc(raw_model, x[pick], batch.x_adv[:k], y[pick], lam[pick], exp.eps, loss=fosc_loss)
                sums[5] += float(values.sum())
                fosc_count += k
            progress.update(global_step + 1, f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.3f}")

        seconds = time.perf_counter() - epoch_start
        totals = all_reduce_sum(torch.cat([sums, torch.tensor([fosc_count], dtype=torch.float64)]), env)
        train_seconds += seconds
        record = {
            "epoch": epoch + 1,
            "loss": totals[0].item() / max(totals[3].item(), 1),
            "clean_acc": totals[1].item() / max(totals[3].item(), 1),
            "adv_acc": (totals[2].item() / totals[4].item()) if totals[4] > 0 else None,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "fosc": (totals[5].item() / totals[6].item()) if totals[6] > 0 else None,
            "passes": _run_passes(passes_before, counter, env),
        }
        broken = non_finite(raw_model.state_dict(), optimizer.state_dict())
        if broken:
            raise TrainingDiverged(f"{len(broken)} non-finite tensors ({broken[0]} first) after epoch {epoch + 1}; "
                                   f"stopped, {_what_is_kept(checkpoint_path, epoch)}")
        if env.is_main:
            with open(out_dir / METRICS, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            save_checkpoint({
                # SyncBatchNorm keeps BatchNorm's names, so this loads into the unsynced network.
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "scheduler": {"name": config.schedule.name, "step": (epoch + 1) * steps_per_epoch},
                "sampler": sampler.state_dict(),
                "rng": _rng_state(device),
                "epoch": epoch + 1,
                "train_seconds": train_seconds,
                "passes": record["passes"],
                "config": config.to_dict(),
                "model_spec": exp.model_spec,
                "train_lambdas": exp.train_lambdas,
                "eps": exp.eps,
            }, checkpoint_path)
            adv = "-" if record["adv_acc"] is None else f"{record['adv_acc']:.3f}"
            fosc_text = "-" if record["fosc"] is None else f"{record['fosc']:.4g}"
            progress.log(f"epoch {epoch + 1}/{cfg.epochs}  loss {record['loss']:.4f}  clean {record['clean_acc']:.3f}"
                         f"  adv {adv}  lr {record['lr']:.4g}  fosc {fosc_text}  {seconds:.1f}s"
                         f"  (eta {format_seconds(progress.eta())})")
        barrier(env)
    counter.detach()
    return checkpoint_path


def _run_passes(before: dict, counter: PassCounter, env: DistEnv) -> dict[str, int]:
    """The run's forward/backward passes so far: those before a resume plus every rank's since."""
    local = counter.counts()
    summed = all_reduce_sum(torch.tensor([local[kind] for kind in KINDS], dtype=torch.float64), env)
    return {kind: before[kind] + int(value) for kind, value in zip(KINDS, summed.tolist())}


