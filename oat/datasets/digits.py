"""scikit-learn's bundled 8×8 handwritten digits (1 797 images, UCI optdigits test set).

Pixel counts 0–16 are divided by 16 into [0, 1] and stored as float32 [N, 1, 8, 8]. The train/test
split is stratified and seeded (scikit-learn's ``train_test_split``), so every call returns the same
split. Nothing is downloaded: the data ship with scikit-learn, so ``root`` and ``download`` are unused.
The default radius 0.3 is MNIST's (the same 0–1 ink scale); ``oat demo`` uses 0.2, chosen on a
validation split (docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import DatasetInfo, Splits, TensorImageDataset, channel_stats
from .registry import register

_INK_LEVELS = 16.0  # load_digits counts ink in 4×4 blocks of a 32×32 bitmap: values 0..16


@register("digits")
def load_digits(root: Path, download: bool, *, test_size: int = 360, seed: int = 0) -> Splits:
    """The 8×8 digits with a stratified, seeded split of ``test_size`` test images (default 360 = 20%)."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x = (bunch.data / _INK_LEVELS).astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    classes = len(np.unique(y))
    if isinstance(test_size, bool) or not isinstance(test_size, (int, np.integer)):
        raise ValueError(f"digits: test_size must be an integer count, got {test_size!r}")
    if not classes <= test_size <= len(y) - classes:
        raise ValueError(
            f"digits: test_size must lie in [{classes}, {len(y) - classes}] so both splits hold "
            f"every class, got {test_size}"
        )
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=int(test_size), stratify=y, random_state=int(seed)
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train = TensorImageDataset(torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx]))
    test = TensorImageDataset(torch.from_numpy(x[test_idx]), torch.from_numpy(y[test_idx]))
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name="digits",
        num_classes=classes,
        input_shape=(1, 8, 8),
        mean=mean,
        std=std,
        eps=0.3,
        augment="none",
    )
    return Splits(train=train, test=test, info=info)
