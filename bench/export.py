"""Benchmark: inference speed of a network folded at one λ (oat export) against the plain network.

    python bench/export.py [--models small_cnn,preact_resnet18] [--batch 64] [--repeats 30]
                           [--threads N] [--checkpoint RUN]

For each architecture (small_cnn at 28×28×1, the others at 32×32×3, 10 classes; random images,
since speed does not depend on them) it builds the conditioned network with every norm made
non-trivial (random running statistics, BN affines and FiLM outputs, as a trained one has), folds
it at λ = 0.3, and times one forward of a batch, in eval mode without gradients, for:
- ``conditioned``: the conditioned network at λ = 0.3 (dual BN + FiLM folded per call);
- ``folded``: what ``oat.export(model, 0.3)`` returns;
- ``plain``: the plain network built by ``models.create(..., conditioned=False)`` holding the
  fold's weights, the floor;
- ``torchscript``: the folded network traced and frozen (``oat export --format torchscript``),
  where freezing folds each BatchNorm into its convolution.
Rounds alternate the order of the four, so drift in the machine's speed hits all; it prints each
median and ``ratio folded/plain X`` (target ≤ 1.02), ``ratio conditioned/plain X`` and
``ratio torchscript/plain X``, and the fold's largest logit difference from the conditioned network
on the same batch. ``--checkpoint RUN`` adds a trained run's network (its own input shape).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

import oat
from oat import deploy
from oat.conditioning import FiLM
from _timing import timed  # noqa: E402  (bench/ is the script's folder)

LAMBDA = 0.3


def non_trivial(net: torch.nn.Module) -> torch.nn.Module:
    """Random running statistics, BN affines and FiLM outputs: every norm changes its input."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
            if isinstance(module, FiLM):
                module.mlp[2].weight.normal_(0, 0.2)
                module.mlp[2].bias.normal_(0, 0.2)
    return net.eval()


def contenders(net, spec: dict) -> dict:
    """The four forwards to time, each a function of the images."""
    folded = oat.export(net, LAMBDA)
    plain = oat.runs.build_model(deploy.plain_spec(spec)).eval()
    # The same numbers as the fold: on the CPU the weights' values move a forward's time by a few
    # percent (a freshly initialised small_cnn ran 3-9% slower than the fold), which is not the
    # architecture's doing.
    plain.load_state_dict(folded.state_dict())
    with tempfile.TemporaryDirectory() as folder:
        path = deploy.write(folded, Path(folder) / "folded.ts", "torchscript", spec["input_shape"])
        scripted = deploy.load_exported(path, "torchscript")
    return {"conditioned": lambda x: net(x, LAMBDA), "folded": folded, "plain": plain, "torchscript": scripted}


def bench(name: str, net, spec: dict, batch: int, repeats: int) -> None:
    torch.manual_seed(1)
    x = torch.rand(batch, *spec["input_shape"])
    forwards = contenders(net, spec)
    with torch.inference_mode():
        difference = (forwards["folded"](x) - net(x, LAMBDA)).abs().max().item()
        for forward in forwards.values():  # warm-up (the TorchScript profiler runs twice)
            forward(x), forward(x)
        times = {key: [] for key in forwards}
        for round_ in range(repeats):
            order = list(forwards) if round_ % 2 == 0 else list(reversed(forwards))
            for key in order:
                times[key].append(timed(lambda: forwards[key](x), torch.device("cpu")))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"{name}: batch {batch} of {tuple(spec['input_shape'])}, {repeats} alternating rounds, median ms")
    for key, value in median.items():
        print(f"  {key:12s} {value * 1e3:9.2f}")
    for key in ("folded", "conditioned", "torchscript"):
        print(f"  ratio {key}/plain {median[key] / median['plain']:.3f}")
    print(f"  max |logit difference| folded vs conditioned at λ = {LAMBDA}: {difference:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small_cnn,preact_resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", help="also a trained run (its directory or checkpoint.pt)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, torch {torch.__version__}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        shape = [1, 28, 28] if name == "small_cnn" else [3, 32, 32]
        spec = {"name": name, "num_classes": 10, "conditioned": True, "input_shape": shape, "options": {}}
        bench(name, non_trivial(oat.runs.build_model(spec)), spec, args.batch, args.repeats)
    if args.checkpoint:
        net, state = oat.runs.load_run(args.checkpoint)
        bench(f"{args.checkpoint} (trained)", net, state["model_spec"], args.batch, args.repeats)


if __name__ == "__main__":
    main()
