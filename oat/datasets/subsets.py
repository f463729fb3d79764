"""Options every dataset takes: a validation split carved from the training set, a smaller
training set.

``validation_size: N`` holds N training examples out (seeded, class-stratified) as the
``validation`` split, which evaluation then reads unless told to read the test split: settings are
chosen there, never on the test set, and the training monitor (``train.validate``) watches it. ``train_size: M`` then keeps a seeded, class-stratified M of the remaining training examples
(the CPU preset of a benchmark trains on a subset). Both draw from ``subset_seed``. The held-out
examples are chosen from the whole training split before ``train_size`` applies, so a validation
split does not change with the training budget.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import Splits, channel_stats

OPTIONS = {"train_size": None, "validation_size": None, "subset_seed": 0}


def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """All indices, ordered so that every prefix keeps each class's share (to within one example):
    each example's rank within its class, in a seeded random order, as a fraction of its class."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(int(seed)))
    fraction = torch.empty(len(labels), dtype=torch.float64)
    for label in labels.unique():
        members = order[labels[order] == label]
        fraction[members] = torch.arange(len(members), dtype=torch.float64) / len(members)
    return order[torch.argsort(fraction[order], stable=True)]


def _count(name: str, value, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{name} must be an integer in 1..{limit}, got {value!r}")
    return value


def apply_subsets(splits: Splits, train_size: int | None = None, validation_size: int | None = None,
                  subset_seed: int = 0) -> Splits:
    """``splits`` with a validation split carved out and/or a smaller training split (see the
    module docstring); unchanged when both sizes are None."""
    if train_size is None and validation_size is None:
        return splits
    train, validation = splits.train, splits.validation
    order = stratified_order(train.labels, subset_seed)
    if validation_size is not None:
        _count("validation_size", validation_size, len(order) - 1)
        validation = train.subset(order[:validation_size].sort().values)
        order = order[validation_size:]  # still class-proportional in every prefix
    if train_size is not None:
        order = order[:_count("train_size", train_size, len(order))]
    train = train.subset(order.sort().values)
    info = splits.info
    if hasattr(train, "images") and train.images.dim() == 4:  # in-memory images: statistics of what trains
        mean, std = channel_stats(train.images)
        info = dataclasses.replace(info, mean=mean, std=std)
    return Splits(train, splits.test, info, validation)
