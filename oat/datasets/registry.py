"""The dataset registry: ``load(name, root="data", download=False, **options)`` and ``names()``.

A loader is a function ``loader(root: Path, download: bool, **options) -> Splits`` added with
``@register(name)``. Its keyword options are the dataset's options, beside the ones every dataset
takes (a validation split, a training subset: :mod:`oat.datasets.subsets`); :func:`load` rejects
any other keyword with a ``ValueError`` naming the accepted ones, before the loader runs.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Callable

from . import subsets
from .base import Splits

_DATASETS: dict[str, Callable[..., Splits]] = {}


def register(name: str):
    """Function decorator adding a loader to the registry under ``name``."""

    def add(loader):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = loader
        return loader

    return add


def names() -> list[str]:
    """Names of every registered dataset."""
    return sorted(_DATASETS)


def options(name: str) -> dict[str, object]:
    """The options dataset ``name`` accepts, with their defaults: its loader's own, then those
    every dataset takes (:mod:`oat.datasets.subsets`: ``train_size``, ``validation_size``,
    ``subset_seed``)."""
    loader = _get(name)
    own = {
        p.name: p.default
        for p in list(inspect.signature(loader).parameters.values())[2:]
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return {**own, **subsets.OPTIONS}


def _get(name: str) -> Callable[..., Splits]:
    if name not in _DATASETS:
        close = difflib.get_close_matches(str(name), names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint}; known: {', '.join(names())}")
    return _DATASETS[name]


def load(name: str, root: str | Path = "data", download: bool = False, **opts) -> Splits:
    """Load dataset ``name`` from ``root`` (fetching it first if ``download`` and it can be fetched).

    ``opts`` are the dataset's own options (see :func:`options`); unknown ones raise ``ValueError``.
    """
    loader = _get(name)
    if not isinstance(download, bool):  # "False" from a config string must not mean True
        raise ValueError(f"download must be True or False, got {download!r}")
    accepted = options(name)
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none"
        raise ValueError(f"dataset {name!r} got unknown options {unknown}; it accepts: {allowed}")
    missing = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in opts]
    if missing:
        raise ValueError(f"dataset {name!r} needs options {missing}")
    generic = {key: opts.pop(key) for key in subsets.OPTIONS if key in opts}
    return subsets.apply_subsets(loader(Path(root), download, **opts), **generic)
