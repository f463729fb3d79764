"""A torchvision ``ImageFolder`` tree (``path/<class name>/<image>``), read lazily from disk.

Images are decoded on access, converted to RGB, resized to ``image_size × image_size`` and returned
as float32 CHW tensors in [0, 1]; only the file list is held in memory, so the tree may be larger
than RAM. Class indices follow torchvision: the sorted class-folder names.
"""

from __future__ import annotations

from numbers import Integral
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms

from .base import AUGMENTATIONS, DatasetInfo, Splits, split_indices
from .registry import register


class ImageFolderDataset(Dataset):
    """The samples ``indices`` (default: all) of a torchvision ``ImageFolder``.

    ``dataset[i]`` is ``(float32 [3, image_size, image_size] tensor in [0, 1], int label)``;
    ``.classes`` are the class names and ``.labels`` the int64 labels of this split.
    """

    def __init__(self, folder: tvd.ImageFolder, indices: torch.Tensor | None = None):
        self.folder = folder
        self.indices = torch.arange(len(folder)) if indices is None else torch.as_tensor(indices)
        targets = torch.as_tensor(folder.targets, dtype=torch.int64)
        self.labels = targets[self.indices]
        self.classes = list(folder.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, indices: torch.Tensor) -> "ImageFolderDataset":
        """The samples at ``indices`` of this split (still read lazily)."""
        return ImageFolderDataset(self.folder, self.indices[torch.as_tensor(indices)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        position = int(self.indices[index])
        try:
            image, label = self.folder[position]
        except (OSError, ValueError, SyntaxError) as error:  # PIL's words for a file it cannot decode
            path = self.folder.samples[position][0]
            raise OSError(f"imagefolder: cannot decode image {path} ({str(error).splitlines()[0] or type(error).__name__})") from None
        return image, int(label)


def _folder(path: Path, image_size: int) -> tvd.ImageFolder:
    if not path.is_dir():
        raise FileNotFoundError(f"imagefolder: directory {path} not found")
    # Resize to an exact square (aspect ratio not kept) so every batch stacks; ToTensor gives [0, 1].
    transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    try:
        return tvd.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as error:  # torchvision's message names the class, not the tree
        raise FileNotFoundError(f"imagefolder: {path}: {str(error).splitlines()[0]}") from None


@register("imagefolder")
def load_imagefolder(
    root: Path,
    download: bool,
    *,
    path: str | Path,
    test_path: str | Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 32,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
    eps: float = 8 / 255,
    augment: str = "none",
) -> Splits:
    """The tree at ``path`` (and ``test_path``, else a seeded ``test_fraction`` split of ``path``).

    mean/std default to 0.5 per channel (maps [0, 1] to [−1, 1]) since computing them would read
    every image; ``eps`` defaults to the CIFAR radius 8/255. Paths are taken as given, not under
    ``root``; ``download`` is unused.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, Integral) or image_size < 1:
        raise ValueError(f"imagefolder: image_size must be a positive integer, got {image_size!r}")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"imagefolder: augment must be one of {AUGMENTATIONS}, got {augment!r}")
    train_folder = _folder(Path(path), int(image_size))
    if test_path is None:
        train_idx, test_idx = split_indices(len(train_folder), test_fraction, seed)
        train = ImageFolderDataset(train_folder, train_idx)
        test = ImageFolderDataset(train_folder, test_idx)
    else:
        test_folder = _folder(Path(test_path), int(image_size))
        if test_folder.classes != train_folder.classes:
            # Labels are positions in the sorted class list: different lists mean different labels.
            raise ValueError(
                f"imagefolder: {test_path} has classes {test_folder.classes} but {path} has "
                f"{train_folder.classes}; both trees need the same class folders"
            )
        train, test = ImageFolderDataset(train_folder), ImageFolderDataset(test_folder)
    info = DatasetInfo(
        name="imagefolder",
        num_classes=len(train_folder.classes),
        input_shape=(3, int(image_size), int(image_size)),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        eps=float(eps),
        augment=augment,
    )
    return Splits(train=train, test=test, info=info)
