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

Passes compare runs of one architecture; across architectures (a wider OAT network, say) a pass
costs more on the bigger one. *Work* weighs each pass by the network's size, in multiply-
accumulates (MACs): :func:`forward_macs` measures M, the MACs of one forward of one example
(every ``nn.Conv2d`` and ``nn.Linear``, the FiLM MLPs' included), and :func:`work` counts a run as

    work = M × (forward + backward_input + 2 × backward_full),

the usual approximation: a backward that only reaches the input costs about one forward (the
gradient with respect to each layer's input is one product of the same size), and one that also
computes weight gradients about two (a second product of that size per layer). Normalisation,
activations and pooling are left out, as is the attacks' reuse of a frozen conditioning (their
later steps skip the FiLM MLPs, which are counted in every forward: a slight overstatement for a
conditioned network).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attacks.base import eval_mode
from .network import LambdaNetwork

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


def forward_macs(model: nn.Module, input_shape, lam: float = 0.5) -> int:
    """Multiply-accumulates of one forward pass of one example through ``model`` (inputs of shape
    ``input_shape``, without the batch dimension), measured with forward hooks on every
    ``nn.Conv2d`` and ``nn.Linear`` during one forward of a zero input, in eval mode and without
    gradients (every module's mode is restored). A λ-network is called at ``lam``: λ = 0 and λ > 0
    may route through different BatchNorms but cost the same; a categorical encoding needs one of
    its known λ. Attach no :class:`PassCounter` meanwhile: it would count this forward."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    macs = 0

    def count(module, args, output):
        nonlocal macs
        macs += _layer_macs(module, output)

    handles = [layer.register_forward_hook(count) for layer in layers]
    reference = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=reference.device if reference is not None else None)
    try:
        with torch.no_grad(), eval_mode(model):
            model(x, lam) if isinstance(model, LambdaNetwork) else model(x)
    finally:
        for handle in handles:
            handle.remove()
    return macs


def _layer_macs(layer: nn.Module, output: torch.Tensor) -> int:
    """A layer's multiply-accumulates for ``output`` (of a batch of one example): each output
    element is one dot product over the inputs it sees."""
    if isinstance(layer, nn.Conv2d):
        return output.numel() * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    return output.numel() * layer.in_features


def work(counts: dict | None, macs: int | None) -> int | None:
    """A run's training work in multiply-accumulates from its pass ``counts`` and its network's
    forward MACs per example (see the module docstring); None when either is unknown."""
    if not counts or macs is None:
        return None
    passes = {kind: int(counts.get(kind, 0)) for kind in KINDS}
    return int(macs) * (passes["forward"] + passes["backward_input"] + 2 * passes["backward_full"])
