"""The evaluation protocol: what must be equal for two robustness numbers to be comparable.

An accuracy means little without how it was measured: on which data, at which radius, on which
test examples, against which attacks. Two sides of one idea live here:

* :class:`Protocol`, the protocol *asked for*: a run's ``eval`` section, a comparison's (every
  model of it is evaluated with one), ``oat eval``'s flags as overrides of the run's own
  (:meth:`Protocol.overridden`) — one type for all three;
* the protocol *measured*: a comparison of models (``oat plot``, ``frontier.report``) is only fair
  when every model was measured the same way, so it checks the measured protocol of each
  evaluation result (what :func:`oat.evaluation.evaluate` actually did, not what a config asked
  for, :func:`protocol_of`) and refuses a mismatch unless the caller explicitly allows it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import torch

COMPARED = ("dataset", "split", "eps", "norm", "n", "subset", "attacks", "seed", "cascade")
EPS_TOLERANCE = 1e-9  # relative: ε read back from JSON or given as 8/255 vs 0.0313725490196 is still one ε


@dataclass(frozen=True)
class Protocol:
    """How a model is evaluated: attacks, ε (None: the training ε), a fixed seeded subset of ``n``
    examples (None: all), the attacks' seed, batch size (None: the device's default; the figures do
    not depend on it), the cascade, and the split (None: the validation split when the run carved
    one, else the test split)."""

    attacks: tuple[str, ...]
    eps: float | None = None
    n: int | None = None
    seed: int = 0
    batch_size: int | None = None
    cascade: bool = False
    split: str | None = None

    def as_dict(self) -> dict:
        # "cascade" and "split" only when set: results evaluated before they existed stay current.
        return {"attacks": list(self.attacks), "eps": self.eps, "n": self.n, "seed": self.seed,
                **({"cascade": True} if self.cascade else {}), **({"split": self.split} if self.split else {})}

    @classmethod
    def from_eval(cls, config, section: str = "eval") -> "Protocol":
        """The protocol an eval section (:class:`oat.config.EvalConfig`) asks for, checked first
        (its schema, and its attack names: a one-line ``ConfigError`` naming ``section``)."""
        from .config import check_eval

        check_eval(config, section)
        check_attack_names(config.attacks, f"{section}.attacks")
        return cls(tuple(config.attacks), config.eps, config.n, config.seed, config.batch_size, config.cascade,
                   config.split)

    def overridden(self, **values) -> "Protocol":
        """This protocol with every field given a value other than None replaced (``oat eval``'s
        flags over the run's own eval section)."""
        chosen = {key: value for key, value in values.items() if value is not None}
        if "attacks" in chosen:
            chosen["attacks"] = tuple(chosen["attacks"])
        return dataclasses.replace(self, **chosen)


def check_attack_names(names, key: str) -> None:
    """Every name in ``names`` is an attack oat knows (:mod:`oat.attacks.names`), or a one-line
    ``ConfigError`` naming config key ``key``."""
    from .attacks.names import parse_attack
    from .config import ConfigError

    if not names:
        raise ConfigError(f"config key '{key}' must name at least one attack")
    for name in names:
        try:
            parse_attack(str(name))
        except ValueError as error:
            raise ConfigError(f"config key '{key}': {error}") from None


class ProtocolMismatch(ValueError):
    """Models of one comparison were evaluated differently; the message is one line."""


def subset_digest(indices, labels) -> str:
    """A short fingerprint of the test examples used: their int64 indices and their labels.

    The labels are included so that two test sets of the same size drawn from different data (or
    a reshuffled dataset) fingerprint differently even when the indices agree."""
    digest = hashlib.sha256()
    for values in (indices, labels):
        array = torch.as_tensor(values).detach().cpu().to(torch.int64).reshape(-1).numpy().astype("<i8")
        digest.update(len(array).to_bytes(8, "little"))
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def protocol_of(result: dict) -> dict:
    """The measured protocol of an evaluation result (eval.json's dict, or a protocol dict).

    Only the :data:`COMPARED` fields; a field that is absent or None is left out (unknown).
    Attacks are a sorted list: the order they were run in does not change what was measured. A
    result from before the cascade existed ran every attack on every example: ``cascade`` False."""
    protocol = {}
    for name in COMPARED:
        value = result.get(name)
        if name == "cascade":
            value = bool(value)
        if value is None:
            continue
        if name == "eps":
            value = float(value)
        elif name in ("n", "seed"):
            value = int(value)
        elif name == "attacks":
            value = sorted(str(a) for a in value)
        protocol[name] = value
    return protocol


def _same(name: str, a, b) -> bool:
    if a is None or b is None:
        return a is b
    if name == "eps":
        return math.isclose(a, b, rel_tol=EPS_TOLERANCE, abs_tol=1e-12)
    return a == b


def _show(value) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def common_protocol(sources: list[tuple[str, dict]]) -> dict:
    """The fields on which every source's protocol agrees (and is known): what one can truthfully
    say about how the whole comparison was evaluated."""
    protocols = [protocol_of(protocol) for _, protocol in sources]
    if not protocols:
        return {}
    first = protocols[0]
    return {name: value for name, value in first.items()
            if all(_same(name, value, p.get(name)) for p in protocols[1:])}


def find_mismatches(sources: list[tuple[str, dict]]) -> list[str]:
    """One message per compared field on which some source differs from the first source."""
    protocols = [(source, protocol_of(protocol)) for source, protocol in sources]
    if len(protocols) < 2:
        return []
    (first_source, first), rest = protocols[0], protocols[1:]
    messages = []
    for name in COMPARED:
        differing = [(source, p.get(name)) for source, p in rest if not _same(name, first.get(name), p.get(name))]
        if differing:
            source, value = differing[0]
            more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
            messages.append(f"{name} is {_show(first.get(name))} in {first_source} "
                            f"but {_show(value)} in {source}{more}")
    return messages


def check_same_protocol(sources: list[tuple[str, dict]], allow_mismatch: bool = False) -> list[str]:
    """Check that every (source, result or protocol) was evaluated the same way.

    Raises :class:`ProtocolMismatch` naming the first difference, unless ``allow_mismatch``:
    then returns every difference (an empty list when there is none), for the caller to show."""
    messages = find_mismatches(sources)
    if messages and not allow_mismatch:
        first = " ".join(messages[0].splitlines())  # one line, even for a path with a newline in it
        raise ProtocolMismatch(f"evaluation protocols differ: {first}; pass --allow-mismatch to compare anyway")
    return messages
