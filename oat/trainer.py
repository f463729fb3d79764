"""One training loop for OAT models and their dedicated baselines.

The same loop trains (a) an OAT model — a conditioned network, λ drawn per example — and (b) a
dedicated baseline — a plain network with one fixed λ (PGD-AT family) or one fixed β (TRADES,
λ = β/β_max). What differs is only the parts it is given: the network, the λ sampler, the
objective. The loop receives them built (:class:`oat.experiment.Experiment`, from a config by
:func:`oat.experiment.build`) and never reads a config. Read it top to bottom in :func:`run`.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoint.pt`` (written
atomically after every epoch) and ``metrics.jsonl`` (one JSON line per epoch). All randomness
of an epoch (data order, augmentation, λ, attack starts) is seeded from (seed, epoch, rank), so
a run resumed from an epoch boundary continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import datasets
from .attacks import TradesKL, fosc
from .awp import AWP
from .checkpoint import CheckpointError, first_line, remove_orphans, save_checkpoint, write_text_atomic
from .config import ConfigError
from .distributed import DistEnv, all_reduce_sum, barrier, convert_sync_batchnorm
from .monitor import FoscNoise, GradientSignals, Monitor, epoch_report, format_summary, overestimation_summary
from .passes import KINDS, PassCounter, forward_macs
from .progress import Progress, format_seconds
from .runs import CHECKPOINT, CONFIG, METRICS, MONITOR, append_metrics, metrics_lines
from .schedules import LearningRate

FOSC_EXAMPLES = 32  # FOSC is measured on this many attacked examples of a probed batch (one extra gradient)
LOSS_CHECK_EVERY = 50  # steps between checks of the loss for NaN/∞ (each check waits for the device)


@dataclass(frozen=True)
class Loop:
    """The loop's own settings (``train``): epochs, batch, seed, precision, memory layout, gradient
    clipping, how often the training attack's FOSC is probed, the augmentation."""

    epochs: int
    batch_size: int
    seed: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    sync_bn: bool = False
    grad_clip: float | None = None
    fosc_every: int = 4
    augment: str = "none"


@dataclass
class Experiment:
    """The parts of one training run, as :func:`oat.experiment.build` makes them from a config:
    data, network (and its spec, to rebuild it), ε and the attack step, the training λ values, the
    objective, a λ sampler factory (``new_sampler(seed)``), the optimiser, the learning rate, AWP,
    the loop's settings, the monitor and the FOSC noise. ``record`` (the resolved config as a dict)
    and ``config_text`` (as YAML) are written beside the run, opaque to the loop."""

    splits: datasets.Splits
    model: nn.Module
    model_spec: dict
    eps: float
    alpha: float
    train_lambdas: list[float]
    objective: object
    new_sampler: Callable  # new_sampler(seed) -> a λ sampler with its own generator
    optimizer: torch.optim.Optimizer
    learning_rate: LearningRate
    awp: AWP
    loop: Loop
    name: str
    record: dict = field(default_factory=dict)
    config_text: str = ""
    monitor: Monitor | None = None
    noise: FoscNoise | None = None


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(x.device, non_blocking=True)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(x.device, non_blocking=True)
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
    index = torch.arange(batch, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    cropped = padded[index, channels, rows, cols]
    flip = (torch.rand(batch, generator=generator) < 0.5).to(x.device, non_blocking=True)
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


@dataclass
class TrainingRun:
    """What one training process holds from setup to its last epoch."""

    exp: Experiment  # the parts the builder made (oat.experiment)
    model: nn.Module  # the network itself (checkpoints, attacks, FOSC)
    step_module: nn.Module  # its loss step, wrapped for DistributedDataParallel when distributed
    scaler: torch.amp.GradScaler
    counter: PassCounter
    images: torch.Tensor
    labels: torch.Tensor
    steps_per_epoch: int
    device: torch.device
    env: DistEnv
    out_dir: Path
    start_epoch: int = 0
    train_seconds: float = 0.0
    passes_before: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # the run's, when resumed
    macs_per_example: int | None = None  # one forward of one example (oat.passes.forward_macs)
    history: list = field(default_factory=list)  # the metrics records of the epochs done (a resume's included)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.exp.optimizer

    @property
    def objective(self):
        return self.exp.objective


class EpochMetrics:
    """An epoch's running sums. The tensor sums stay on the device, so a step never waits for it;
    :meth:`read` gathers them (over every process) once, at the epoch's end."""

    def __init__(self, device: torch.device):
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sums = torch.zeros(4, dtype=dtype, device=device)  # loss·n, clean correct, adv correct, FOSC
        self.bad_batch = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite loss
        self.bad_loss = torch.zeros((), dtype=torch.float32, device=device)
        self.examples = self.attacked = self.fosc_examples = 0

    def add_step(self, batch_index: int, loss: torch.Tensor, out, examples: int) -> None:
        loss = loss.detach()
        first = (self.bad_batch < 0) & ~torch.isfinite(loss)
        self.bad_batch = torch.where(first, batch_index, self.bad_batch)
        self.bad_loss = torch.where(first, loss.float(), self.bad_loss)
        self.sums[:3] += torch.stack([loss.to(self.sums.dtype) * examples, out.clean_correct.to(self.sums.dtype),
                                      out.adv_correct.to(self.sums.dtype)])
        self.examples += examples
        self.attacked += out.n_adv

    def add_fosc(self, values: torch.Tensor) -> None:
        self.sums[3] += values.detach().sum().to(self.sums.dtype)
        self.fosc_examples += values.numel()

    def first_non_finite(self) -> tuple[int, float] | None:
        """(batch index, loss) of this process's first non-finite loss so far, or None (one sync)."""
        batch = int(self.bad_batch)
        return None if batch < 0 else (batch, float(self.bad_loss))

    def read(self, env: DistEnv) -> dict:
        counts = torch.tensor([self.examples, self.attacked, self.fosc_examples], dtype=self.sums.dtype,
                              device=self.sums.device)
        loss, clean, adv, fosc_sum, examples, attacked, fosc_examples = all_reduce_sum(
            torch.cat([self.sums, counts]), env).tolist()
        return {"loss": loss / max(examples, 1), "clean_acc": clean / max(examples, 1),
                "adv_acc": adv / attacked if attacked > 0 else None,
                "fosc": fosc_sum / fosc_examples if fosc_examples > 0 else None}


def run(exp: Experiment, out_dir: Path, state: dict | None, device: torch.device, env: DistEnv,
        show_progress: bool = True) -> Path:
    """Train the parts ``exp`` into ``out_dir`` (continuing from a resumed ``state``); returns the
    checkpoint path. Everything it needs is in ``exp``: it never reads a config."""
    run = setup_training(exp, out_dir, state, device, env)
    loop = exp.loop
    progress = Progress(loop.epochs * run.steps_per_epoch, "train", enabled=show_progress and env.is_main,
                        start_done=run.start_epoch * run.steps_per_epoch)
    if env.is_main and show_progress:
        info = exp.splits.info
        progress.log(f"training {exp.name} ({'OAT' if run.model.conditioned else 'dedicated'}) on "
                     f"{info.name}: {len(run.labels)} examples, {loop.epochs} epochs, ε={exp.eps:.4g}, "
                     f"device {device}{f', {env.world_size} processes' if env.enabled else ''}")
    for epoch in range(run.start_epoch, loop.epochs):
        started = time.perf_counter()
        metrics = train_one_epoch(run, epoch, progress)
        seconds = time.perf_counter() - started
        run.train_seconds += seconds
        record = {"epoch": epoch + 1, **metrics, "lr": run.optimizer.param_groups[0]["lr"], "seconds": seconds,
                  "passes": _run_passes(run.passes_before, run.counter, env)}
        if exp.monitor is not None and exp.monitor.due(epoch, loop.epochs):
            record["validation"] = _validate(run)
        _save_epoch(run, record, progress)
        barrier(env)
    run.counter.detach()
    if exp.monitor is not None and env.is_main:
        progress.log(format_summary(overestimation_summary(run.history)))
    return run.checkpoint_path


def _validate(run: TrainingRun) -> dict:
    """The monitor's validation of the model as it stands (its passes are not training's)."""
    run.counter.detach()
    try:
        return run.exp.monitor.validate(run.model, run.exp.splits, run.exp.eps)
    finally:
        run.counter.attach(run.model)


def setup_training(exp: Experiment, out_dir: Path, state: dict | None, device: torch.device,
                   env: DistEnv) -> TrainingRun:
    """Place the parts on the device, restore a resumed run's state, wrap for DDP and prepare the
    run directory."""
    loop = exp.loop
    model = exp.model.to(device)
    if loop.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    exp.objective.attack.check_inputs = False  # the loop feeds it [0, 1] images; the check would wait for the device
    scaler = torch.amp.GradScaler(device.type, enabled=(loop.precision == "fp16" and device.type == "cuda"))
    images, labels = datasets.dataset_tensors(exp.splits.train)
    if device.type == "cuda":  # the airbench way: the whole training set on the GPU (uint8: 47 MB for 60k×28×28)
        images, labels = images.to(device), labels.to(device)
    if loop.batch_size // env.world_size < 2:
        raise ConfigError(f"train.batch_size {loop.batch_size} is too small for {env.world_size} processes")
    steps_per_epoch = len(labels) // loop.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"train.batch_size {loop.batch_size} exceeds the {len(labels)} training examples")
    run = TrainingRun(exp, model, _LossStep(model, exp.objective), scaler, PassCounter(), images, labels,
                      steps_per_epoch, device, env, out_dir)
    if state is not None:
        _restore(run, state)
    # Measured before the counter attaches (its forward is no training pass); a categorical
    # encoding knows only the training λ, the largest of which costs what any λ does.
    run.macs_per_example = forward_macs(model, exp.splits.info.input_shape, lam=max(exp.train_lambdas, default=0.5))
    if loop.sync_bn and env.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA devices (SyncBatchNorm has no CPU implementation)")
        run.model = convert_sync_batchnorm(run.model)
        run.step_module = _LossStep(run.model, exp.objective)
    run.counter.attach(run.model)  # this process's passes from here on
    if env.enabled:
        # find_unused_parameters: a rank whose batch has no λ = 0 example leaves its clean BNs unused.
        run.step_module = nn.parallel.DistributedDataParallel(
            run.step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=run.model.conditioned)
    # Every rank reads what the epochs done logged: the FOSC noise decides from the last of them.
    kept = metrics_lines(out_dir, run.start_epoch)
    run.history = [json.loads(line) for line in kept]
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_orphans(out_dir)  # temporaries of a write that was killed
        write_text_atomic(out_dir / CONFIG, exp.config_text)
        write_text_atomic(out_dir / METRICS, "".join(line + "\n" for line in kept))
    return run


def _restore(run: TrainingRun, state: dict) -> None:
    try:
        problem = state_dict_mismatch(run.model, state["model"])
        if problem:
            raise ValueError(f"its weights do not fit the network the config builds ({problem})")
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        run.start_epoch, run.train_seconds = int(state["epoch"]), float(state["train_seconds"])
        run.passes_before = {kind: int(state.get("passes", {}).get(kind, 0)) for kind in KINDS}
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as error:  # the file, not oat
        what = f"no {error}" if isinstance(error, KeyError) else first_line(error)
        raise CheckpointError(f"{run.checkpoint_path} cannot be resumed: {what}") from None


def state_dict_mismatch(model: nn.Module, weights) -> str | None:
    """What keeps ``weights`` from loading into ``model``, naming the keys (torch's own message
    puts them on lines after a first one that names none), or None when they fit."""
    if not isinstance(weights, dict):
        return f"the weights are a {type(weights).__name__}, not a state dict"
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} is {list(weights[k].shape)} in the checkpoint, {list(v.shape)} in the network"
              for k, v in expected.items() if k in weights and getattr(weights[k], "shape", None) != v.shape]
    parts = ([f"missing {_some(missing)}"] if missing else []) + ([f"unexpected {_some(unexpected)}"] if unexpected
                                                                   else []) + shapes[:1]
    return "; ".join(parts) or None


def _some(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def train_one_epoch(run: TrainingRun, epoch: int, progress: Progress) -> dict:
    """One pass over the training data; returns the epoch's loss, accuracies and FOSC.

    Every step: slice the batch, augment, draw λ, attack, loss, backward, clip, update. Nothing
    in a step waits for the device; the loss is checked for NaN/∞ every ``LOSS_CHECK_EVERY`` steps
    and at the epoch's end (the weights are checked too before anything is saved)."""
    exp, loop, env, device = run.exp, run.exp.loop, run.env, run.device
    torch.manual_seed(_seed_for(loop.seed, epoch, env.rank, 0))  # attack starts, dropout
    data_gen = torch.Generator().manual_seed(_seed_for(loop.seed, epoch, 0, 1))  # same order on every rank
    aug_gen = torch.Generator().manual_seed(_seed_for(loop.seed, epoch, env.rank, 2))
    sampler = exp.new_sampler(seed=_seed_for(loop.seed, epoch, env.rank, 3))
    order = torch.randperm(len(run.labels), generator=data_gen)
    fosc_loss = "kl" if isinstance(run.objective.attack, TradesKL) else "ce"
    metrics = EpochMetrics(device)
    signals = GradientSignals()
    noised = exp.noise.batches_after(run.history)[0] if exp.noise is not None else 0
    noise_gen = torch.Generator().manual_seed(_seed_for(loop.seed, epoch, env.rank, 4))
    run.model.train()
    for step in range(run.steps_per_epoch):
        _set_lr(run, (epoch * run.steps_per_epoch + step) / run.steps_per_epoch)
        index = order[step * loop.batch_size:(step + 1) * loop.batch_size][env.rank::env.world_size]
        index = index.to(run.images.device, non_blocking=True)
        x = augment(datasets.to_unit(run.images[index].to(device, non_blocking=True)), loop.augment, aug_gen)
        y = run.labels[index].to(device, non_blocking=True)
        if step < noised:  # the FOSC noise (arXiv 2410.07675): before the attack, inside the input box
            x = _gaussian_noise(x, exp.noise.sigma, noise_gen, exp.splits.info.bounds)
        if loop.channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        lam = sampler.sample(x.shape[0])  # stays on the CPU: routing and attack selection need no sync

        batch = run.objective.generate(run.model, x, y, lam)
        with exp.awp.perturbed(run.model, lambda: run.objective.loss(run.model, batch).loss.mean(), epoch):
            with _autocast(device, loop.precision):
                out = run.step_module(batch)
            loss = out.loss.float().mean()
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
        if run.scaler.is_enabled():
            run.scaler.unscale_(run.optimizer)  # the gradient signals and the clip read true gradients
        signals.add(run.model.parameters())
        if loop.grad_clip:
            nn.utils.clip_grad_norm_(run.model.parameters(), loop.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()

        metrics.add_step(step, loss, out, x.shape[0])
        if out.n_adv and step % loop.fosc_every == 0:
            pick = batch.index[:FOSC_EXAMPLES]
            metrics.add_fosc(fosc(run.model, x[pick], batch.x_adv[:FOSC_EXAMPLES], y[pick],
                                  batch.routing_lam_adv()[:FOSC_EXAMPLES], run.exp.eps, loss=fosc_loss))
        if (step + 1) % LOSS_CHECK_EVERY == 0:
            _check_loss(run, metrics, epoch)
        progress.update(epoch * run.steps_per_epoch + step + 1, f"epoch {epoch + 1}/{loop.epochs}")
    _check_loss(run, metrics, epoch)
    return {**metrics.read(env), **signals.summary(), **({"fosc_noise_batches": noised} if noised else {})}


def _gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator, bounds) -> torch.Tensor:
    """``x + N(0, σ²)``, clipped to the input box (drawn on the CPU from the epoch's noise stream)."""
    noisy = x + sigma * torch.randn(x.shape, generator=generator).to(x.device, non_blocking=True)
    return noisy if bounds is None else noisy.clamp(*bounds)


def _set_lr(run: TrainingRun, epochs_done: float) -> None:
    lr = run.exp.learning_rate(epochs_done)
    for group in run.optimizer.param_groups:
        group["lr"] = lr


def _check_loss(run: TrainingRun, metrics: EpochMetrics, epoch: int) -> None:
    bad = metrics.first_non_finite()
    if bad is not None:
        raise TrainingDiverged(f"non-finite loss ({bad[1]}) at epoch {epoch + 1}, batch {bad[0] + 1}; "
                               f"stopped, {_what_is_kept(run.checkpoint_path, epoch)}")


def _save_epoch(run: TrainingRun, record: dict, progress: Progress) -> None:
    """Refuse non-finite weights, then append the epoch's metrics line and replace the checkpoint."""
    epoch = record["epoch"]
    broken = non_finite(run.model.state_dict(), run.optimizer.state_dict())
    if broken:
        raise TrainingDiverged(f"{len(broken)} non-finite tensors ({broken[0]} first) after epoch {epoch}; "
                               f"stopped, {_what_is_kept(run.checkpoint_path, epoch - 1)}")
    run.history.append(record)
    if not run.env.is_main:
        return
    append_metrics(run.out_dir, record)
    save_checkpoint({
        # SyncBatchNorm keeps BatchNorm's names, so this loads into the unsynced network.
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,
        "train_seconds": run.train_seconds,
        "passes": record["passes"],
        "macs_per_example": run.macs_per_example,
        "config": run.exp.record,
        "model_spec": run.exp.model_spec,
        "train_lambdas": run.exp.train_lambdas,
        "eps": run.exp.eps,
    }, run.checkpoint_path)
    adv = "-" if record["adv_acc"] is None else f"{record['adv_acc']:.3f}"
    fosc_text = "-" if record["fosc"] is None else f"{record['fosc']:.4g}"
    progress.log(f"epoch {epoch}/{run.exp.loop.epochs}  loss {record['loss']:.4f}  clean {record['clean_acc']:.3f}"
                 f"  adv {adv}  lr {record['lr']:.4g}  fosc {fosc_text}  {record['seconds']:.1f}s"
                 f"  (eta {format_seconds(progress.eta())})")
    if "validation" in record:
        write_text_atomic(run.out_dir / MONITOR, json.dumps(overestimation_summary(run.history), indent=2) + "\n")
    for line in epoch_report(run.history, run.exp.noise, run.exp.loop.epochs):
        progress.log(line)


def _run_passes(before: dict, counter: PassCounter, env: DistEnv) -> dict[str, int]:
    """The run's forward/backward passes so far: those before a resume plus every rank's since."""
    local = counter.counts()
    summed = all_reduce_sum(torch.tensor([local[kind] for kind in KINDS], dtype=torch.float64), env)
    return {kind: before[kind] + int(value) for kind, value in zip(KINDS, summed.tolist())}


