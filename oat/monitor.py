"""Watching a training run for robustness overestimation (arXiv 2410.07675, "Adversarial Robustness
Overestimation and Instability in TRADES"): the validation monitor, its overestimation flag, the
batch-level gradient signals, and the FOSC-noise remedy's trigger.

* :meth:`Monitor.validate` evaluates the model on a fixed subset of the validation split carved from the
  training set (never the test set) — clean, PGD-10 and APGD by default — at a few λ, and
  measures the FOSC of the PGD iterate. A λ is **flagged** when PGD's robust accuracy exceeds the
  worst case with the APGD attacks by more than ``margin`` plus sampling noise
  (:func:`oat.masking.overestimation`).
* :func:`overestimation_summary` reads every validation of a run (its ``metrics.jsonl`` lines):
  per λ, at which epochs a flagged span began and whether it cleared (the paper's "self-healed").
* :class:`GradientSignals` keeps each step's weight-gradient norm and the cosine similarity of
  consecutive steps' gradients, summarised per epoch with spikes counted.
* :meth:`FoscNoise.batches_after` decides whether the next epoch's first batches get Gaussian noise:
  when the last epoch's FOSC (of the training attack, or of the last validation) exceeds a threshold.

The builder (:mod:`oat.experiment`) makes the :class:`Monitor` and the :class:`FoscNoise` from a
config's ``train.validate`` and ``train.fosc_noise``; nothing here reads a config.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from .evaluation import evaluate
from .masking import pgd_overestimations

SPIKE_FACTOR = 3.0  # a step whose gradient norm exceeds this multiple of its epoch's median is a spike


def monitor_lambdas(chosen: list | None, conditioned: bool, train_lambdas: list[float]) -> list[float]:
    """The λ values the monitor watches: ``chosen`` (``train.validate.lambdas``), else for an OAT
    model 0, the training values' median (0.5 for a continuous sampler) and 1; for a dedicated model
    its λ."""
    if chosen is not None:
        return [float(v) for v in chosen]
    if not conditioned:
        return [train_lambdas[0] if train_lambdas else 0.0]
    middle = statistics.median(train_lambdas) if train_lambdas else 0.5
    return sorted({0.0, float(middle), 1.0})


@dataclass(frozen=True)
class Monitor:
    """A run's overestimation monitor, as the builder made it from ``train.validate``: which
    attacks on how many validation examples (seed), at which λ, every how many epochs, and the
    margin of its flag."""

    attacks: tuple[str, ...]
    lambdas: tuple[float, ...]
    n: int = 500
    seed: int = 0
    every: int = 1
    margin: float = 0.05

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether it validates after ``epoch`` (0-based): every ``every`` epochs and the last."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == epochs

    def validate(self, model, splits, eps: float) -> dict:
        """One validation: per λ, clean and robust accuracy under each attack, the FOSC of the PGD
        iterate and the overestimation of the PGD attack's figure (a ``metrics.jsonl`` entry)."""
        result = evaluate(model, splits, list(self.lambdas), list(self.attacks), eps=eps, n=self.n, seed=self.seed,
                          split="validation")
        n, attacks = result["n"], result["attacks"]
        points = []
        for point in result["points"]:
            gap = pgd_overestimations(point, n, self.margin)[0]  # the first PGD-family attack (one is required)
            points.append({"lambda": point["lambda"], "clean": point["clean"], "robust": point["robust"],
                           "robust_worst": point["robust_worst"], "fosc": point["checks"]["fosc"].get(gap["weak"]),
                           "zero_gradient": point["checks"]["zero_gradient"], "overestimation": gap})
        return {"split": result["split"], "n": n, "attacks": attacks, "points": points,
                "flagged": [p["lambda"] for p in points if p["overestimation"]["flagged"]],
                "seconds": result["seconds"]}


@dataclass(frozen=True)
class FoscNoise:
    """The remedy of arXiv 2410.07675, as the builder made it from ``train.fosc_noise``: when the
    watched FOSC (``source``: the training attack's, or the last validation's) exceeds
    ``threshold``, the next epoch's first ``batches`` batches get N(0, σ²) on their inputs."""

    threshold: float
    sigma: float = 0.1
    batches: int = 10
    source: str = "train"

    def batches_after(self, records: list[dict]) -> tuple[int, float | None]:
        """How many of the next epoch's first batches get the noise (0 or ``batches``), and the
        FOSC that decided it."""
        value = last_fosc(records, self.source)
        return (self.batches if value is not None and value > self.threshold else 0), value


def format_validation(epoch: int, record: dict) -> list[str]:
    """The log lines of one validation: one per λ."""
    lines = []
    for point in record["points"]:
        gap = point["overestimation"]
        robust = "  ".join(f"{a} {point['robust'][a]:.3f}" for a in record["attacks"])
        fosc = point["fosc"]
        lines.append(f"validate epoch {epoch} λ={point['lambda']:g}: clean {point['clean']:.3f}  {robust}  "
                     f"gap {gap['gap']:.3f}" + (f"  fosc {fosc['mean']:.4g}" if fosc else "")
                     + ("  OVERESTIMATED" if gap["flagged"] else ""))
    return lines


def epoch_report(records: list[dict], noise: FoscNoise | None, epochs: int) -> list[str]:
    """The monitor's log lines after the last epoch of ``records``: its validation, each flag
    raised or cleared there, and the FOSC noise decided for the next epoch (of ``epochs``)."""
    lines, record = [], records[-1]
    epoch = record["epoch"]
    if record.get("validation"):
        lines += format_validation(epoch, record["validation"])
        was = {p["lambda"]: p["flagged_at_end"] for p in overestimation_summary(records[:-1])["lambdas"]}
        for point in overestimation_summary(records)["lambdas"]:
            before = was.get(point["lambda"], False)
            if point["flagged_at_end"] and not before:
                lines.append(f"overestimation: λ={point['lambda']:g} flagged from epoch {epoch} (PGD above APGD)")
            elif before and not point["flagged_at_end"]:
                lines.append(f"overestimation: λ={point['lambda']:g} cleared at epoch {epoch} (self-healed)")
    batches, value = noise.batches_after(records) if noise is not None else (0, None)
    if batches and epoch < epochs:
        lines.append(f"fosc_noise: FOSC {value:.4g} > {noise.threshold:g} ({noise.source}) after epoch {epoch}: "
                     f"noise σ={noise.sigma:g} on the first {batches} batches of epoch {epoch + 1}")
    return lines


def overestimation_summary(records: list[dict]) -> dict:
    """Per λ, the flagged spans of a run's validations: ``[began, cleared]`` epochs (``cleared``
    None while still flagged at the last validation), ``self_healed`` (flagged once, clear at the
    end) and ``flagged_at_end``."""
    spans: dict[float, list] = {}
    last = None
    for record in records:
        validation = record.get("validation")
        if not validation:
            continue
        last = record["epoch"]
        for point in validation["points"]:
            lam, flagged = point["lambda"], point["overestimation"]["flagged"]
            runs = spans.setdefault(lam, [])
            open_span = bool(runs) and runs[-1][1] is None
            if flagged and not open_span:
                runs.append([record["epoch"], None])
            elif not flagged and open_span:
                runs[-1][1] = record["epoch"]
    per_lambda = [{"lambda": lam, "spans": runs, "flagged_at_end": bool(runs) and runs[-1][1] is None,
                   "self_healed": bool(runs) and runs[-1][1] is not None} for lam, runs in sorted(spans.items())]
    return {"last_validation": last, "lambdas": per_lambda,
            "flagged": any(p["spans"] for p in per_lambda),
            "flagged_at_end": any(p["flagged_at_end"] for p in per_lambda)}


def format_summary(summary: dict) -> str:
    """One line: where overestimation began and whether it cleared, per λ."""
    if summary["last_validation"] is None:
        return "overestimation monitor: no validation yet"
    if not summary["flagged"]:
        return f"overestimation monitor: never flagged (last validation: epoch {summary['last_validation']})"
    parts = []
    for point in summary["lambdas"]:
        for began, cleared in point["spans"]:
            parts.append(f"λ={point['lambda']:g} from epoch {began} " +
                         (f"to {cleared} (self-healed)" if cleared else "to the end"))
    return "overestimation monitor: flagged " + "; ".join(parts)


class GradientSignals:
    """Each step's weight-gradient norm and the cosine similarity of consecutive steps' gradients
    (kept on the device: a step never waits), summarised once per epoch by :meth:`summary`."""

    def __init__(self):
        self.norms: list[torch.Tensor] = []
        self.cosines: list[torch.Tensor] = []
        self.previous: torch.Tensor | None = None

    def add(self, parameters) -> None:
        grads = [p.grad.detach().flatten().float() for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat(grads)
        norm = flat.norm()
        if self.previous is not None:
            self.cosines.append(flat.dot(self.previous[0]) / (norm * self.previous[1]).clamp_min(1e-30))
        self.norms.append(norm)
        self.previous = (flat, norm)

    def summary(self) -> dict:
        """``grad_norm``: max, median, 90/99% quantiles, spikes (steps above SPIKE_FACTOR × the
        median), non-finite steps; ``grad_cosine``: mean, min, 10% quantile, negative steps."""
        if not self.norms:
            return {}
        norms = torch.stack(self.norms).cpu().double()
        finite = norms[torch.isfinite(norms)]
        out = {"grad_norm": {"steps": len(norms), "non_finite": int(len(norms) - len(finite))}}
        if len(finite):
            median = finite.median().item()
            out["grad_norm"].update(max=finite.max().item(), median=median, q90=finite.quantile(0.9).item(),
                                    q99=finite.quantile(0.99).item(),
                                    spikes=int((finite > SPIKE_FACTOR * median).sum()))
        if self.cosines:
            cos = torch.stack(self.cosines).cpu().double()
            cos = cos[torch.isfinite(cos)]
            if len(cos):
                out["grad_cosine"] = {"mean": cos.mean().item(), "min": cos.min().item(),
                                      "q10": cos.quantile(0.1).item(), "negative": int((cos < 0).sum())}
        return out


def last_fosc(records: list[dict], source: str) -> float | None:
    """The FOSC the remedy watches after the last epoch in ``records``: the training attack's
    (``source="train"``), or the last validation's largest PGD-iterate mean over its λ values."""
    if not records:
        return None
    if source == "train":
        return records[-1].get("fosc")
    for record in reversed(records):
        validation = record.get("validation")
        if validation:
            values = [p["fosc"]["mean"] for p in validation["points"] if p.get("fosc")]
            return max(values) if values else None
    return None
