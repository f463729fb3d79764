"""The shapes every loader returns: :class:`Splits`, :class:`DatasetInfo` and the in-memory datasets.

Images are kept in memory as uint8 NCHW where the source is 8-bit (as airbench does: a quarter of the
memory of float32, and converting on the GPU after the copy is faster than copying floats), or as
float32 NCHW already in [0, 1]. Every sample leaves as a float32 tensor in [0, 1]; normalisation by
``DatasetInfo.mean``/``std`` happens inside the model, so attacks all see the same [0, 1] box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

AUGMENTATIONS = ("none", "crop_flip")
# More classes than any labelled image set has (ImageNet-21k: 21 841): a larger count comes from a
# label that is not a class index (a single label 10⁹ would otherwise size a 10⁹-way classifier).
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class DatasetInfo:
    """What a training run needs to know about a dataset besides its samples.

    ``input_shape`` is (C, H, W) for images or (D,) for vector data; ``mean``/``std`` are per-channel
    (per-feature for vector data) and are handed to the model, which normalises inside its forward;
    ``eps`` is the field's default L∞ radius for this data; ``augment`` names the training
    augmentation (``"crop_flip"`` or ``"none"``); ``bounds`` is the input box, or ``None`` for
    unbounded real inputs, where every attack searches the whole L∞ ball; ``params``: a synthetic
    task's generating parameters.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float
    augment: str
    bounds: tuple[float, float] | None = (0.0, 1.0)
    # A synthetic task's generating parameters, as (name, value) pairs (tsipras: p, d, eta): what a
    # closed form of the task needs (oat.datasets.closed_form); empty for data from files.
    params: tuple[tuple[str, float], ...] = ()

    @property
    def widest_eps(self) -> float | None:
        """The largest L∞ radius that means something here (the input box's width; beyond it every
        input reaches every other), or None for unbounded inputs."""
        return None if self.bounds is None else self.bounds[1] - self.bounds[0]

    def __post_init__(self):
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"{self.name}: num_classes must lie in 1..{MAX_CLASSES}, got {self.num_classes}")
        if len(self.input_shape) not in (1, 3):
            raise ValueError(f"{self.name}: input_shape must be (C, H, W) or (D,), got {self.input_shape}")
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"{self.name}: mean and std need {channels} values (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(s > 0 for s in self.std):
            raise ValueError(f"{self.name}: std must be positive, got {self.std}")
        if not self.eps >= 0:
            raise ValueError(f"{self.name}: eps must be non-negative, got {self.eps}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"{self.name}: augment must be one of {AUGMENTATIONS}, got {self.augment!r}")


@dataclass
class Splits:
    """A dataset's train and test splits (torch ``Dataset``\\ s) and its :class:`DatasetInfo`, and a
    validation split when one was carved from the training set (``validation_size``)."""

    train: Dataset
    test: Dataset
    info: DatasetInfo
    validation: Dataset | None = None

    @property
    def evaluated(self) -> str:
        """The split evaluation reads unless told otherwise: the validation split when there is one
        (settings are chosen there), else the test split."""
        return "test" if self.validation is None else "validation"

    def split(self, name: str | None = None) -> Dataset:
        """The split called ``name`` ("test" or "validation"; None: :attr:`evaluated`)."""
        name = name or self.evaluated
        if name == "test":
            return self.test
        if name == "validation" and self.validation is not None:
            return self.validation
        if name == "validation":
            raise ValueError(f"{self.info.name} has no validation split: set data.options.validation_size")
        raise ValueError(f"unknown split {name!r}; choose test or validation")


def check_eps(eps: float, info: DatasetInfo, what: str = "eps") -> None:
    """Refuse (ValueError naming ``what``) a radius wider than the dataset's input box: every input
    would reach every other, so the figure would mean nothing. The one place this is decided, for
    training (``attack.eps``) and evaluation (``--eps``, ``--eps-sweep``, a run's own ε) alike."""
    if info.widest_eps is not None and eps > info.widest_eps:
        low, high = info.bounds
        raise ValueError(f"{what} {eps:g} is wider than {info.name}'s input range [{low:g}, {high:g}] "
                         f"(at most {high - low:g})")


def _as_labels(labels) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {list(labels.shape)}")
    labels = labels.to(torch.int64)
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be non-negative, got {int(labels.min())}")
    return labels


class TensorImageDataset(Dataset):
    """An in-memory image dataset: ``images`` uint8 NCHW (0–255) or float NCHW in [0, 1], ``labels`` int.

    ``dataset[i]`` is ``(float32 CHW tensor in [0, 1], int label)``; :meth:`tensors` gives the whole
    split at once for whole-tensor batching (the fast path: index a GPU tensor instead of a DataLoader).
    """

    def __init__(self, images, labels):
        images = torch.as_tensor(images)
        if images.dim() != 4:
            raise ValueError(f"images must be NCHW (4-D), got shape {list(images.shape)}")
        if images.dtype != torch.uint8:
            if not images.dtype.is_floating_point:
                raise ValueError(f"images must be uint8 or float, got dtype {images.dtype}")
            images = images.to(torch.float32)
            _check_unit_range(images)
        self.images = images
        self.labels = _as_labels(labels)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "TensorImageDataset":
        """The samples at ``indices``, as a dataset of the same kind."""
        return type(self)(self.images[indices], self.labels[indices])

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).div_(255) if x.dtype == torch.uint8 else x.to(torch.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._to_float(self.images[index]), int(self.labels[index])

    def tensors(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples as ``(float32 images in [0, 1], int64 labels)``, on ``device`` if given.

        uint8 images are moved first and converted there: a quarter of the bytes cross the bus.
        """
        images, labels = self.images, self.labels
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        images = self._to_float(images)
        if images is self.images:  # never hand out the stored tensor for in-place edits
            images = images.clone()
        return images, labels


class TensorVectorDataset(TensorImageDataset):
    """The in-memory interface of :class:`TensorImageDataset` for real vectors ``[N, D]``.

    Values are unbounded (no [0, 1] check, no clamping) and stored as float32; ``.images`` holds them
    so whole-tensor code written for image datasets works unchanged.
    """

    def __init__(self, features, labels):
        features = torch.as_tensor(features)
        if features.dim() != 2:
            raise ValueError(f"features must be [N, D] (2-D), got shape {list(features.shape)}")
        if not features.dtype.is_floating_point:
            raise ValueError(f"features must be float, got dtype {features.dtype}")
        features = features.to(torch.float32)
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features contain NaN or infinite values")
        self.images = features
        self.labels = _as_labels(labels)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} vectors but {len(self.labels)} labels")


def _check_unit_range(images: torch.Tensor) -> None:
    if images.numel() == 0:
        return
    if not bool(torch.isfinite(images).all()):
        raise ValueError("float images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"float images must lie in [0, 1], got values from {low:g} to {high:g}")


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of NCHW images, in [0, 1] units.

    Accumulates in float64 over chunks of ``chunk`` images so a 50 000-image uint8 set never becomes
    one float copy in memory. A channel with zero spread gets std 1 (dividing by 0 would turn the
    model's normalisation into NaN).
    """
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"channel_stats needs non-empty NCHW images, got shape {list(images.shape)}")
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].to(torch.float64) / scale
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = images.numel() / channels
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random (train, test) partition of ``range(n)``, the same on every call.

    The test part has ``round(n * test_fraction)`` indices; both parts must be non-empty.
    """
    if not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool) or math.isnan(test_fraction):
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    n_test = round(n * test_fraction)
    if n_test < 1 or n_test > n - 1:
        raise ValueError(
            f"test_fraction={test_fraction} of {n} examples leaves an empty split "
            f"({n - n_test} train, {n_test} test); pass test_path or change test_fraction"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return order[n_test:].sort().values, order[:n_test].sort().values


def dataset_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-dataset tensors (uint8 or float images, int64 labels): the in-memory datasets' own
    storage, or every sample of any other dataset stacked once."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        return dataset.images, dataset.labels
    loader = torch.utils.data.DataLoader(dataset, batch_size=512, num_workers=0)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys).long()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1]; uint8 is scaled after indexing and the device copy (4× less traffic)."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()
