"""The dataset registry: ``load(name, root="data", download=False, **options)`` and ``names()``.

A loader is a function ``loader(root: Path, download: bool, **options) -> Splits`` added with
``@register(name)``. Its keyword options are the dataset's options, beside the ones every dataset
takes (a validation split, a training subset: :mod:`oat.datasets.subsets`); :func:`load` rejects
any other keyword with a ``ValueError`` naming the accepted ones, before the loader runs.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import Registry
from . import subsets
from .base import Splits

DATASETS = Registry("dataset")
_LOADER_ARGUMENTS = ("root", "download")  # what load() itself passes every loader


def register(name: str):
    """Function decorator adding a loader to the registry under ``name``."""
    return DATASETS.register(name)


def names() -> list[str]:
    """Names of every registered dataset."""
    return DATASETS.names()


def options(name: str) -> dict[str, object]:
    """The options dataset ``name`` accepts, with their defaults: its loader's own, then those
    every dataset takes (:mod:`oat.datasets.subsets`: ``train_size``, ``validation_size``,
    ``subset_seed``)."""
    return {**DATASETS.options(name, skip=_LOADER_ARGUMENTS), **subsets.OPTIONS}


def load(name: str, root: str | Path = "data", download: bool = False, **opts) -> Splits:
    """Load dataset ``name`` from ``root`` (fetching it first if ``download`` and it can be fetched).

    ``opts`` are the dataset's own options (see :func:`options`); unknown ones raise ``ValueError``.
    """
    loader = DATASETS.get(name)
    if not isinstance(download, bool):  # "False" from a config string must not mean True
        raise ValueError(f"download must be True or False, got {download!r}")
    DATASETS.check_options(name, opts, skip=_LOADER_ARGUMENTS, extra=subsets.OPTIONS)
    generic = {key: opts.pop(key) for key in subsets.OPTIONS if key in opts}
    return subsets.apply_subsets(loader(Path(root), download, **opts), **generic)
