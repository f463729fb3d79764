"""Trained runs: load a checkpoint's model ready for evaluation, and its default λ values."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_checkpoint
from . import datasets
from .evaluation import UNSEEN_LAMBDAS, evaluate
from .trainer import build_model


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model stored in checkpoint ``path`` (or a run directory), in eval mode on ``device``.

    >>> model = oat.load("runs/digits/checkpoint.pt")
    >>> logits = model(images, 0.3)
    """
    model, _ = load_run(path, device)
    return model


def load_run(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model and the whole checkpoint dict (config, training λ values, ε, epoch …)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = load_checkpoint(path)
    if "model_spec" not in state:
        raise CheckpointError(f"{path} has no model description (model_spec); it was not written by oat train")
    model = build_model(state["model_spec"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the network it describes ({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), state


def evaluate_run(model: nn.Module, state: dict, lambdas, attacks, eps: float | None = None, n: int | None = None,
                 seed: int = 0, batch_size: int = 500, data_root: str | None = None,
                 show_progress: bool = False) -> dict:
    """Evaluate a loaded run on its own dataset's test split (ε defaults to the training ε);
    the result is :func:`oat.evaluate`'s dict plus the run's training seconds and epochs."""
    data = state["config"]["data"]
    splits = datasets.load(data["name"], root=data_root or data["root"], **data["options"])
    result = evaluate(model, splits, lambdas, attacks, eps=state["eps"] if eps is None else eps, n=n, seed=seed,
                      batch_size=batch_size, show_progress=show_progress)
    result["train_seconds"] = float(state["train_seconds"])
    result["epochs"] = int(state["epoch"])
    return result


def default_lambdas(state: dict) -> list[float]:
    """The training λ values plus unseen ones (a plain network: its one training λ; a
    categorical encoding knows only its training values)."""
    trained = [float(v) for v in state.get("train_lambdas", [])]
    spec = state["model_spec"]
    if not spec["conditioned"]:
        return trained[:1] or [0.0]
    if spec["options"].get("encoding") == "categorical":
        return sorted(set(trained))
    return sorted(set(trained) | set(UNSEEN_LAMBDAS) | ({0.0, 1.0} if not trained else set()))
