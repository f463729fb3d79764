"""Deployment: fold one λ away, or serve λ as an input; write the result as .pt, TorchScript or ONNX.

**Fold** (:func:`fold`). With BatchNorm in eval mode, every conditioned norm of a λ-conditioned
network is, at one fixed λ, a single per-channel affine map: the routed BatchNorm's
running-statistics affine, then FiLM's (γ(λ), β(λ)) (:meth:`oat.LambdaNorm.eval_affine`). Folding
writes that map into a plain BatchNorm (weight = scale·√(1 + eps), bias = shift, running mean 0,
running variance 1) and drops the λ encoder, which leaves the project's *plain* network of the same
family, with the plain architecture's parameter names (a vector network's FiLM, having no
BatchNorm beside it, folds into its linear layer instead: :meth:`oat.FiLMLinear.fold`): it loads into
``models.create(name, conditioned=False, ...)`` and runs at the plain network's speed. A BatchNorm
rather than the preceding convolution's bias, because the plain networks' convolutions have no bias
and in the pre-activation families a norm follows a residual sum, not a convolution; TorchScript's
freezing (done here) and ONNX runtimes fold BatchNorm into the convolutions themselves.

**Serve** (:class:`LambdaServer`). ``forward(x, lam)`` with one λ per image, BatchNorm always in
eval mode, where the dual BatchNorm needs no routing: each example takes its own BN's affine map
(:meth:`oat.Conditioning.unrouted`). The forward is then tensor operations only, so it traces and
exports, and a service picks the trade-off per request.

**Write** (:func:`write`).
- ``pt``: the folded network's weights and its model_spec; :func:`oat.load` reads it, as does
  ``oat.runs.build_model(spec)`` + ``load_state_dict``.
- ``pt2``: a ``torch.export`` program (``torch.export.load(path).module()``), the format PyTorch
  now recommends; a served network's invalid λ yields NaN logits, as in ONNX.
- ``torchscript``: traced and frozen (deprecated by PyTorch in favour of ``pt2``, still loadable
  from C++ with libtorch). A served network is wrapped in a scripted check of λ (shape
  ``[B]``, values in [0, 1], and for a categorical encoding one of its training values) that raises
  as the eager model does.
- ``onnx`` (the ``onnx`` extra): PyTorch's torch.export-based exporter, with a dynamic batch. An
  ONNX graph cannot raise, so a served network's invalid λ yields NaN logits instead.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import EXPORT_FORMAT, save_checkpoint, write_bytes_atomic
from .conditioning import BatchNorm2d, CategoricalEncoder, Conditioning, FiLMLinear, LambdaNorm, NormFactory
from .lam import as_lambda
from .network import LambdaNetwork

FORMATS = ("pt", "pt2", "torchscript", "onnx")
TOLERANCE = 1e-5  # the largest logit difference an export may make, in float32
INPUT = "input"  # export(model, "input"): λ stays an input


def export(model: LambdaNetwork, lam) -> nn.Module:
    """``model`` ready to deploy: folded at ``lam`` (a float in [0, 1]: :func:`fold`), or with λ
    as an input (``lam="input"``: :class:`LambdaServer`). The model itself is not changed."""
    if isinstance(lam, str):
        if lam != INPUT:
            raise ValueError(f"lam must be a float in [0, 1] or {INPUT!r}, got {lam!r}")
        return LambdaServer(model)
    return fold(model, lam)


def fold(model: LambdaNetwork, lam: float) -> LambdaNetwork:
    """The plain network computing what ``model`` computes in eval mode at ``lam`` (see the module
    docstring). A plain ``model`` comes back as an eval-mode copy: it never depended on λ."""
    if isinstance(lam, torch.Tensor) and lam.numel() != 1:
        raise ValueError("fold takes one λ value, not one per example")
    lam = float(as_lambda(lam if isinstance(lam, torch.Tensor) else float(lam), 1)[0])
    folded = copy.deepcopy(model).eval()
    if not model.conditioned:
        return folded
    with torch.no_grad():
        cond = folded.condition(torch.tensor([lam]))  # a categorical encoding refuses an unknown λ here
        for name, module in list(folded.named_modules()):
            if isinstance(module, LambdaNorm):
                scale, shift = module.eval_affine(cond)
                folded.set_submodule(name, _affine_batch_norm(scale[0], shift[0]))
            elif isinstance(module, FiLMLinear) and module.film is not None:  # vector networks: no BatchNorm
                module.fold(cond.code)
        folded.fold_head(cond)
    folded.encoder = None
    folded.conditioning = None
    folded.norm = NormFactory(None)
    return folded


def _affine_batch_norm(scale: torch.Tensor, shift: torch.Tensor) -> BatchNorm2d:
    """A plain BatchNorm that in eval mode maps ``h`` to ``scale ⊙ h + shift``."""
    norm = BatchNorm2d(scale.numel()).to(device=scale.device, dtype=scale.dtype).eval()
    # Running variance 1: BN multiplies by weight / √(1 + eps); computed in float64, so the folded
    # weight is the nearest value of the network's dtype to what the conditioned norm multiplied by.
    norm.weight.copy_((scale.double() * math.sqrt(1.0 + norm.eps)).to(scale.dtype))
    norm.bias.copy_(shift)
    return norm


class LambdaServer(nn.Module):
    """A λ-conditioned network with λ as an input: ``server(x, lam)``, ``lam`` of shape ``[B]``
    (one trade-off per image) or a float; always in eval mode. Equal to ``model.eval()(x, lam)``."""

    def __init__(self, model: LambdaNetwork):
        if not model.conditioned:
            raise ValueError("a plain network does not depend on λ: fold it at any λ instead")
        super().__init__()
        self.model = copy.deepcopy(model).eval()

    def train(self, mode: bool = True) -> "LambdaServer":
        if mode:  # BatchNorm in train mode would route and update statistics: not a server's job
            raise ValueError("a LambdaServer runs in eval mode only")
        return super().train(False)

    def forward(self, x: torch.Tensor, lam) -> torch.Tensor:
        lam = as_lambda(lam, x.shape[0], x.device)
        encoder = self.model.encoder
        if isinstance(encoder, CategoricalEncoder):
            encoder(lam)  # raises, naming the values, when a λ has no categorical code
        return self.logits(x, lam)

    def logits(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """The forward without checks (``lam``: a valid float tensor ``[B]`` on ``x``'s device):
        tensor operations only, for tracing and export."""
        return self.model(x, Conditioning.unrouted(lam, self.model.encoder.encode(lam)))

    def valid(self, lam: torch.Tensor) -> torch.Tensor:
        """Per example, whether λ is one the network can serve (in [0, 1]; known, if categorical)."""
        ok = (lam >= 0) & (lam <= 1)
        if isinstance(self.model.encoder, CategoricalEncoder):
            ok = ok & self.model.encoder.known(lam)
        return ok


class _Logits(nn.Module):
    """``server.logits`` as a module's forward, for tracing."""

    def __init__(self, server: LambdaServer):
        super().__init__()
        self.server = server

    def forward(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return self.server.logits(x, lam)


class _NanForInvalid(_Logits):
    """The ONNX graph's stand-in for an exception: NaN logits where λ cannot be served."""

    def forward(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        logits = self.server.logits(x, lam)
        return torch.where(self.server.valid(lam)[:, None], logits, torch.full_like(logits, float("nan")))


class _CheckedLambda(nn.Module):
    """TorchScript front of a traced server: checks λ as the eager model does, then runs it."""

    def __init__(self, logits: torch.jit.ScriptModule, known: torch.Tensor | None):
        super().__init__()
        self.logits = logits
        self.categorical = known is not None
        self.register_buffer("known", known if known is not None else torch.zeros(0))

    def forward(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        if lam.dim() != 1 or lam.size(0) != x.size(0):
            raise ValueError("lam must be a tensor of shape [B]: one λ per image")
        lam = lam.to(torch.float32)
        if bool(((lam < 0) | (lam > 1) | torch.isnan(lam)).any()):
            raise ValueError("lam must lie in [0, 1]")
        if self.categorical:
            if bool(((lam[:, None] - self.known[None, :]).abs().amin(1) > 1e-6).any()):
                raise ValueError("lam holds a value the categorical λ encoding does not know")
        return self.logits(x, lam)


class _Images(nn.Module):
    """A folded network's forward with images only (its λ argument is gone)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def example_inputs(module: nn.Module, input_shape, batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded random images in [0, 1] (and, for a server, λ values mixing 0, known values and 1):
    what tracing records and what :func:`max_difference` probes with."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *input_shape), generator=generator)
    if not isinstance(module, LambdaServer):
        return (x,)
    encoder = module.model.encoder
    pool = encoder.lambdas.cpu() if isinstance(encoder, CategoricalEncoder) else torch.linspace(0, 1, 11)
    lam = pool[torch.randint(len(pool), (batch,), generator=generator)]
    lam[0], lam[-1] = 0.0, pool.max()  # both BatchNorms in every probe
    return x, lam


def write(module: nn.Module, path: str | Path, fmt: str = "pt", input_shape=None, spec: dict | None = None,
          lam: float | None = None) -> Path:
    """Write an exported ``module`` (from :func:`export`) atomically to ``path`` in ``fmt``.

    ``input_shape`` (C, H, W) is needed by ``pt2``, ``torchscript`` and ``onnx`` (tracing runs an example);
    ``spec`` (the plain network's model_spec, see :func:`plain_spec`) and ``lam`` by ``pt``.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    served = isinstance(module, LambdaServer)
    if fmt == "pt":
        if served or spec is None:
            raise ValueError("format pt holds a folded network and needs its spec; a served network "
                             "is written as torchscript or onnx")
        save_checkpoint({"format": EXPORT_FORMAT, "model_spec": spec, "lambda": lam,
                         "model": module.state_dict()}, path)
        return path
    if input_shape is None:
        raise ValueError(f"format {fmt} needs input_shape to trace the network")
    device = next(module.parameters()).device  # traced where the network is; the file runs there
    example = tuple(t.to(device) for t in example_inputs(module, input_shape))
    serialise = {"pt2": _pt2_bytes, "torchscript": _torchscript_bytes, "onnx": _onnx_bytes}[fmt]
    write_bytes_atomic(path, serialise(module, example))
    return path


def _torchscript_bytes(module: nn.Module, example) -> bytes:
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export (format pt2), and the tracer warns
        # about the forward's batch-size check, a constant for any one batch.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if isinstance(module, LambdaServer):
            traced = torch.jit.trace(_Logits(module), example)
            encoder = module.model.encoder
            known = encoder.lambdas.clone() if isinstance(encoder, CategoricalEncoder) else None
            scripted = torch.jit.freeze(torch.jit.script(_CheckedLambda(traced, known).eval()))
        else:
            scripted = torch.jit.freeze(torch.jit.trace(_Images(module).eval(), example))
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def missing_onnx() -> list[str]:
    """The packages of the ``onnx`` extra that cannot be imported: the exporter needs onnx and
    onnxscript, reading the file back onnxruntime."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _program(module: nn.Module, example) -> torch.export.ExportedProgram:
    """The torch.export graph of an export, batch dimension dynamic; a server's invalid λ gives NaN."""
    served = isinstance(module, LambdaServer)
    wrapper = (_NanForInvalid(module) if served else _Images(module)).eval()
    batch = torch.export.Dim("batch")
    shapes = {"x": {0: batch}, "lam": {0: batch}} if served else {"x": {0: batch}}
    with torch.no_grad():
        return torch.export.export(wrapper, example, dynamic_shapes=shapes)


def _pt2_bytes(module: nn.Module, example) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(_program(module, example), buffer)
    return buffer.getvalue()


def _onnx_bytes(module: nn.Module, example) -> bytes:
    missing = missing_onnx()
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'oat[onnx]'")
    names = ["x", "lam"] if isinstance(module, LambdaServer) else ["x"]
    program = _program(module, example)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # The exporter narrates its steps on stdout, and warns that x and λ share the batch axis.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=names, output_names=["logits"],
                                         external_data=False)
    return onnx_program.model_proto.SerializeToString()


def plain_spec(spec: dict) -> dict:
    """The model_spec of a conditioned network's plain twin: same family and options, no λ."""
    from oat.models.registry import CONDITIONING_OPTIONS

    options = {k: v for k, v in spec["options"].items() if k not in CONDITIONING_OPTIONS}
    return {**spec, "conditioned": False, "options": options}


def load_exported(path: str | Path, fmt: str):
    """A written export as a callable (``pt``: :func:`oat.load`; ``pt2``: torch.export.load's
    module; ``torchscript``: torch.jit.load; ``onnx``: an onnxruntime session wrapped to take and
    return tensors)."""
    if fmt == "pt":
        from .runs import load

        return load(path)
    if fmt == "pt2":
        return torch.export.load(str(path)).module()
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feed = {name: value.detach().cpu().numpy() for name, value in zip(names, inputs)}
        return torch.from_numpy(session.run(None, feed)[0])
    return run


def max_difference(reference: nn.Module, exported, inputs: tuple[torch.Tensor, ...], lam=None) -> float:
    """Largest absolute logit difference between ``reference`` (the conditioned network, in eval
    mode, at ``lam`` or at the inputs' own λ) and an exported callable on ``inputs``."""
    was_training = reference.training
    reference.eval()
    device = next(reference.parameters()).device
    try:
        with torch.no_grad():
            on_device = [t.to(device) for t in inputs]
            expected = reference(*on_device) if lam is None else reference(on_device[0], lam)
            got = exported(*inputs)
    finally:
        reference.train(was_training)
    return (expected.cpu() - got.cpu()).abs().max().item()
