"""CIFAR-10, CIFAR-100, SVHN, STL-10, MNIST and Fashion-MNIST through torchvision's dataset classes.

Files live where torchvision puts them under ``root``:

=============  ==================================================================================
cifar10        ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
cifar100       ``cifar-100-python/{train, test, meta}``
svhn           ``{train_32x32.mat, test_32x32.mat}`` (directly in ``root``, as torchvision does)
stl10          ``stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin}`` (labelled splits)
mnist          ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
fashion-mnist  ``FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
=============  ==================================================================================

``download=True`` uses torchvision's own classes, which fetch what is missing and verify the MD5
checksums. Without it, loading only checks that the files exist: torchvision's integrity check would
hash 170 MB on every load and reject anything but the exact official files. A missing file raises
``FileNotFoundError`` naming the dataset, the path and ``download=True``.

Per-channel mean/std are computed from the loaded training split (in [0, 1] units), so they are
exact for the data at hand. Default L∞ radii follow the field (SCIENCE.md): 8/255 for the colour
sets, 0.3 for MNIST and Fashion-MNIST (Madry et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchvision import datasets as tvd

from .base import DatasetInfo, Splits, TensorImageDataset, channel_stats
from .registry import register


# Lenient twins of torchvision's classes: an MD5 of ``None`` makes torchvision's ``check_integrity``
# test only that the file exists, so construction skips the hashing (see the module docstring).
class _CIFAR10(tvd.CIFAR10):
    train_list = [[f, None] for f, _ in tvd.CIFAR10.train_list]
    test_list = [[f, None] for f, _ in tvd.CIFAR10.test_list]
    meta = {**tvd.CIFAR10.meta, "md5": None}


class _CIFAR100(tvd.CIFAR100):
    train_list = [[f, None] for f, _ in tvd.CIFAR100.train_list]
    test_list = [[f, None] for f, _ in tvd.CIFAR100.test_list]
    meta = {**tvd.CIFAR100.meta, "md5": None}


class _SVHN(tvd.SVHN):
    split_list = {split: [url, f, None] for split, (url, f, _) in tvd.SVHN.split_list.items()}


class _STL10(tvd.STL10):
    # Only the labelled splits: torchvision's list also demands the 2.5 GB unlabeled_X.bin.
    train_list = [["train_X.bin", None], ["train_y.bin", None]]
    test_list = [[f, None] for f, _ in tvd.STL10.test_list]


def _cifar_arrays(ds) -> tuple[torch.Tensor, list]:
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), ds.targets  # NHWC → NCHW


def _chw_arrays(ds) -> tuple[torch.Tensor, np.ndarray]:
    return torch.from_numpy(np.ascontiguousarray(ds.data)), ds.labels  # torchvision gives NCHW


def _mnist_arrays(ds) -> tuple[torch.Tensor, torch.Tensor]:
    return ds.data.unsqueeze(1).contiguous(), ds.targets  # [N, 28, 28] → [N, 1, 28, 28]


@dataclass(frozen=True)
class _Source:
    name: str
    official: type  # torchvision's class, used to download and verify
    lenient: type  # the same reader with existence-only checks
    split_kwargs: tuple[dict, dict]  # constructor arguments selecting (train, test)
    folder: str  # relative to root
    files: tuple[str, ...]  # the files loading needs, inside folder
    arrays: Callable  # torchvision dataset → (uint8 NCHW tensor, labels)
    num_classes: int
    input_shape: tuple[int, int, int]
    eps: float
    augment: str


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_TRAIN_TEST = ({"train": True}, {"train": False})

_SOURCES = {
    s.name: s
    for s in (
        _Source("cifar10", tvd.CIFAR10, _CIFAR10, _TRAIN_TEST, "cifar-10-batches-py",
                tuple(f for f, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list) + ("batches.meta",),
                _cifar_arrays, 10, (3, 32, 32), 8 / 255, "crop_flip"),
        _Source("cifar100", tvd.CIFAR100, _CIFAR100, _TRAIN_TEST, "cifar-100-python",
                ("train", "test", "meta"), _cifar_arrays, 100, (3, 32, 32), 8 / 255, "crop_flip"),
        _Source("svhn", tvd.SVHN, _SVHN, ({"split": "train"}, {"split": "test"}), ".",
                ("train_32x32.mat", "test_32x32.mat"), _chw_arrays, 10, (3, 32, 32), 8 / 255, "none"),
        _Source("stl10", tvd.STL10, _STL10, ({"split": "train"}, {"split": "test"}), "stl10_binary",
                ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"), _chw_arrays, 10,
                (3, 96, 96), 8 / 255, "crop_flip"),
        _Source("mnist", tvd.MNIST, tvd.MNIST, _TRAIN_TEST, "MNIST/raw", _MNIST_FILES,
                _mnist_arrays, 10, (1, 28, 28), 0.3, "none"),
        # torchvision's MNIST readers already check existence only; they are their own lenient twin
        # (a subclass would change the class name, which torchvision uses as the folder name).
        _Source("fashion-mnist", tvd.FashionMNIST, tvd.FashionMNIST, _TRAIN_TEST, "FashionMNIST/raw",
                _MNIST_FILES, _mnist_arrays, 10, (1, 28, 28), 0.3, "none"),
    )
}


def _require_files(source: _Source, root: Path) -> None:
    folder = root / source.folder
    missing = [folder / f for f in source.files if not (folder / f).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more file(s) in {folder})" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"{source.name}: expected file {missing[0]} not found{more}; "
            f"pass download=True to fetch {source.name} into {root}"
        )


def _to_dataset(source: _Source, ds, split: str) -> TensorImageDataset:
    images, labels = source.arrays(ds)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != source.input_shape:
        raise ValueError(
            f"{source.name} {split}: expected uint8 images of shape {source.input_shape}, "
            f"got {images.dtype} {tuple(images.shape[1:])} from {ds.root}"
        )
    data = TensorImageDataset(images, labels)
    if len(data) and int(data.labels.max()) >= source.num_classes:
        raise ValueError(
            f"{source.name} {split}: label {int(data.labels.max())} is outside 0..{source.num_classes - 1}"
        )
    return data


def _load(source: _Source, root: Path, download: bool) -> Splits:
    if download:
        cls = source.official
    else:
        _require_files(source, root)
        cls = source.lenient
    train_kwargs, test_kwargs = source.split_kwargs
    train = _to_dataset(source, cls(str(root), download=download, **train_kwargs), "train")
    test = _to_dataset(source, cls(str(root), download=download, **test_kwargs), "test")
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name=source.name,
        num_classes=source.num_classes,
        input_shape=source.input_shape,
        mean=mean,
        std=std,
        eps=source.eps,
        augment=source.augment,
    )
    return Splits(train=train, test=test, info=info)


def _register(name: str) -> None:
    source = _SOURCES[name]

    def loader(root: Path, download: bool) -> Splits:
        return _load(source, root, download)

    loader.__name__ = f"load_{name.replace('-', '_')}"
    loader.__doc__ = f"{name} (torchvision): uint8 NCHW {source.input_shape}, {source.num_classes} classes."
    register(name)(loader)


for _name in _SOURCES:
    _register(_name)
