"""Datasets for oat: ``load(name, root="data", download=False, **options) -> Splits`` and ``names()``.

Every loader returns :class:`Splits` (train and test torch ``Dataset``\\ s whose samples are float32
tensors in [0, 1] and int labels) with a :class:`DatasetInfo` (classes, input shape, mean/std for the
model, default L∞ radius, augmentation, input bounds). Registered datasets: cifar10, cifar100, svhn,
stl10, mnist, fashion-mnist (torchvision files), digits (bundled with scikit-learn), tsipras
(synthetic, Tsipras et al. 2019), npz and imagefolder (a user's own data).
"""

from . import digits, imagefolder, npz, tsipras, vision  # noqa: F401  (each registers its loaders)
from .base import (DatasetInfo, Splits, TensorImageDataset, TensorVectorDataset, channel_stats, check_eps,
                   dataset_tensors, to_unit)
from .imagefolder import ImageFolderDataset
from .registry import load, names, options, register
from .tsipras import sample_tsipras, tsipras_accuracy

# Tasks whose accuracies have a closed form: name → (model, λ, ε, info) → (SA, RA), or None for a
# model the form does not cover.
CLOSED_FORMS = {"tsipras": tsipras.closed_form}


def closed_form(info: DatasetInfo):
    """The closed form of the task ``info`` describes (see ``CLOSED_FORMS``), or None."""
    return CLOSED_FORMS.get(info.name) if info.params else None


__all__ = [
    "DatasetInfo",
    "ImageFolderDataset",
    "Splits",
    "TensorImageDataset",
    "TensorVectorDataset",
    "channel_stats",
    "check_eps",
    "closed_form",
    "dataset_tensors",
    "to_unit",
    "load",
    "names",
    "options",
    "register",
    "sample_tsipras",
    "tsipras_accuracy",
]
