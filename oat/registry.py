"""One registry mechanism for every named, pluggable piece: models, datasets, training objectives,
λ samplers and λ encodings.

A :class:`Registry` maps names to builders (classes or functions). It refuses a name registered
twice, answers an unknown name with the closest known one, and checks keyword options against the
builder's own signature *before* calling it, so a user's misspelt option is a one-line error
naming it, while an error raised inside a builder (a bug, or a value the builder itself refuses)
keeps its own type and message.

>>> SAMPLERS = Registry("λ sampler")
>>> @SAMPLERS.register("fixed")
... class FixedSampler: ...
>>> SAMPLERS.get("fixd")  # ValueError: unknown λ sampler 'fixd' (did you mean 'fixed'?); known: fixed
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable


class Registry:
    """Named builders of one ``kind`` (the word error messages use: "model", "dataset" …)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, builder: Callable[..., Any] | None = None):
        """Add ``builder`` under ``name``; without ``builder``, a decorator that does."""

        def add(item):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add if builder is None else add(builder)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str) -> Callable[..., Any]:
        """The builder registered as ``name``, or ``ValueError`` naming the closest known name."""
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}")
        return self._items[name]

    def options(self, name: str, skip: Iterable[str] = ()) -> dict[str, Any]:
        """The keyword options builder ``name`` takes, with their defaults (``inspect.Parameter.empty``
        where it has none), leaving out ``skip`` (what the caller itself supplies)."""
        skipped = set(skip)
        return {p.name: p.default for p in inspect.signature(self.get(name)).parameters.values()
                if p.name not in skipped and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def check_options(self, name: str, given: Iterable[str], skip: Iterable[str] = (),
                      extra: Iterable[str] = ()) -> None:
        """Refuse, naming them, options builder ``name`` does not take and required ones missing.

        ``skip``: parameters the caller passes itself; ``extra``: options the caller handles
        besides the builder's own (accepted here, not required)."""
        accepted = self.options(name, skip)
        given = set(given)
        unknown = sorted(given - set(accepted) - set(extra))
        if unknown:
            allowed = sorted(set(accepted) | set(extra))
            raise ValueError(f"{self.kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
                             f"it takes {', '.join(allowed) or 'none'}")
        missing = sorted(k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in given)
        if missing:
            raise ValueError(f"{self.kind} {name!r} needs option {', '.join(map(repr, missing))}")
