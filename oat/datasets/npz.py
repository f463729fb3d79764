"""A user's own images in ``.npz`` files with arrays ``x`` and ``y``.

``x`` is either uint8 NHWC (0–255, the layout of most image dumps) or float NCHW in [0, 1] (the layout
models take); ``y`` holds integer class labels ≥ 0. Without ``test_path`` a seeded random
``test_fraction`` of the file becomes the test split. Every malformed input raises a one-line
``ValueError`` naming the problem and the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .base import AUGMENTATIONS, MAX_CLASSES, DatasetInfo, Splits, TensorImageDataset, channel_stats, split_indices
from .registry import register

_MAX_CHANNELS = 4  # gray, gray+alpha, RGB, RGBA; a larger "channel" axis almost surely is H or W


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images NCHW, uint8 or float32; labels int64) from one file, validated."""
    if not path.is_file():
        raise FileNotFoundError(f"npz: file {path} not found")
    try:
        archive = np.load(path, allow_pickle=False)  # never unpickle objects from a user's file
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"npz: {path} is not a readable .npz file ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"npz: {path} holds a single array, expected an .npz archive with arrays x and y")
    with archive:
        missing = [k for k in ("x", "y") if k not in archive.files]
        if missing:
            raise ValueError(f"npz: {path} lacks array(s) {missing} (it has {sorted(archive.files)})")
        try:
            x, y = archive["x"], archive["y"]
        except ValueError as error:  # object arrays need pickle, which stays off
            raise ValueError(f"npz: {path}: {error}") from None
    return _images(x, path), _labels(y, len(x), path)


def _images(x: np.ndarray, path: Path) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"npz: {path}: x must be 4-D (uint8 NHWC or float NCHW), got shape {x.shape}")
    if len(x) == 0:
        raise ValueError(f"npz: {path}: x holds no images")
    if x.dtype == np.uint8:
        if not 1 <= x.shape[3] <= _MAX_CHANNELS:
            raise ValueError(
                f"npz: {path}: uint8 x must be NHWC with 1–{_MAX_CHANNELS} channels last, got shape {x.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if np.issubdtype(x.dtype, np.floating):
        if not 1 <= x.shape[1] <= _MAX_CHANNELS:
            raise ValueError(
                f"npz: {path}: float x must be NCHW with 1–{_MAX_CHANNELS} channels on axis 1, got shape {x.shape}"
            )
        if not np.isfinite(x).all():
            raise ValueError(f"npz: {path}: x contains NaN or infinite values")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"npz: {path}: float x must lie in [0, 1], got values from {low:g} to {high:g}")
        return torch.from_numpy(x.astype(np.float32))
    raise ValueError(
        f"npz: {path}: x has dtype {x.dtype}; expected uint8 (NHWC, 0–255) or float (NCHW in [0, 1])"
    )


def _labels(y: np.ndarray, n: int, path: Path) -> torch.Tensor:
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"npz: {path}: y must hold integer labels, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"npz: {path}: y must be 1-D, got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"npz: {path}: x has {n} images but y has {len(y)} labels")
    if y.min() < 0:
        raise ValueError(f"npz: {path}: labels must be non-negative, got {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


@register("npz")
def load_npz(
    root: Path,
    download: bool,
    *,
    path: str | Path,
    test_path: str | Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    eps: float = 8 / 255,
    augment: str = "none",
) -> Splits:
    """Images from ``path`` (and ``test_path``, else a seeded ``test_fraction`` split of ``path``).

    ``num_classes`` defaults to the largest label + 1; ``eps`` (default 8/255, the CIFAR radius) and
    ``augment`` (``"none"`` or ``"crop_flip"``) describe the data for training. Relative paths are
    taken as they are (from the working directory), not under ``root``; ``download`` is unused.
    """
    train_path = Path(path)
    x, y = _read(train_path)
    if test_path is None:
        train_idx, test_idx = split_indices(len(y), test_fraction, seed)
        train_x, train_y, test_x, test_y = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    else:
        test_file = Path(test_path)
        train_x, train_y = x, y
        test_x, test_y = _read(test_file)
        if test_x.shape[1:] != train_x.shape[1:] or test_x.dtype != train_x.dtype:
            raise ValueError(
                f"npz: {test_file} holds {test_x.dtype} images of shape {tuple(test_x.shape[1:])} (NCHW) "
                f"but {train_path} holds {train_x.dtype} {tuple(train_x.shape[1:])}"
            )
    largest = int(max(y.max(), test_y.max()))
    if largest >= MAX_CLASSES:
        raise ValueError(f"npz: {train_path}: label {largest} is not a class index (at most {MAX_CLASSES - 1}); "
                         "labels must be 0..C-1")
    if num_classes is None:
        num_classes = largest + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= largest:
        raise ValueError(
            f"npz: num_classes={num_classes!r} must be an integer above the largest label {largest} ({train_path})"
        )
    if augment not in AUGMENTATIONS:
        raise ValueError(f"npz: augment must be one of {AUGMENTATIONS}, got {augment!r}")
    train, test = TensorImageDataset(train_x, train_y), TensorImageDataset(test_x, test_y)
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name="npz",
        num_classes=num_classes,
        input_shape=tuple(train.images.shape[1:]),
        mean=mean,
        std=std,
        eps=float(eps),
        augment=augment,
    )
    return Splits(train=train, test=test, info=info)
