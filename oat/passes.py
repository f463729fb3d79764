"""Training cost counted, not timed: forward and backward passes over examples.

Wall-clock seconds depend on the machine and on what else runs on it (the digits demo's cost ratio
moved from 0.28 to 0.11 on the same code when the machine was busy). Counting does not: one
forward of one example through the network is one *forward unit*, and its backward one
*backward unit*, counted apart by kind:

- ``backward_input``: gradients reach the input but no weight (an attack step, a FOSC probe);
- ``backward_full``: weight gradients are computed too (the training step, AWP's probe).

:class:`PassCounter` measures what really runs, with hooks: a forward hook on the network counts
the examples of every call; a hook on each call's output counts them again when a gradient flows
back through it; a hook on every parameter marks that backward as a full one (a weight received
a gradient). Nothing here reads a tensor's values, so it adds no device synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn as nn

KINDS = ("forward", "backward_input", "backward_full")


class PassCounter:
    """Counts passes through ``model`` while attached (:meth:`attach` … :meth:`detach`).

    >>> counter = PassCounter().attach(net)
    >>> loss = F.cross_entropy(net(x, lam), y); loss.backward()
    >>> counter.counts()  # {'forward': B, 'backward_input': 0, 'backward_full': B}
    """

    def __init__(self, counts: dict | None = None):
        self.forward = self.backward_input = self.backward_full = 0
        self._pending = 0  # examples whose backward began and may still turn out to be full
        self._handles: list = []
        if counts:
            self.load(counts)

    def attach(self, model: nn.Module) -> "PassCounter":
        self.detach()
        self._handles.append(model.register_forward_hook(self._on_forward))
        for parameter in model.parameters():
            if parameter.requires_grad:
                self._handles.append(parameter.register_hook(self._on_weight_gradient))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_forward(self, module, args, output) -> None:
        self._settle()  # a backward before this forward has ended: it was input-only
        examples = args[0].shape[0]
        self.forward += examples
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad, n=examples: self._on_output_gradient(n))

    def _on_output_gradient(self, examples: int) -> None:
        self._pending += examples

    def _on_weight_gradient(self, grad):
        # Weight gradients come after every output gradient of the same backward: all the
        # examples that backward went through were full backward passes.
        self.backward_full += self._pending
        self._pending = 0

    def _settle(self) -> None:
        self.backward_input += self._pending
        self._pending = 0

    def counts(self) -> dict[str, int]:
        """The passes so far, by kind (see the module docstring)."""
        self._settle()
        return {"forward": self.forward, "backward_input": self.backward_input, "backward_full": self.backward_full}

    def load(self, counts: dict) -> None:
        """Continue from ``counts`` (a resumed run's saved counts)."""
        for kind in KINDS:
            setattr(self, kind, int(counts.get(kind, 0)))
        self._pending = 0


def total(counts: dict | None) -> int | None:
    """All passes of a run (forward and backward units together), or None when uncounted."""
    if not counts:
        return None
    return sum(int(counts.get(kind, 0)) for kind in KINDS)
