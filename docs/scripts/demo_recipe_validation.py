"""Does the digits demo take the Fashion-MNIST recipe? Decided on the digits' validation split
(docs/recipe.md).

    python docs/scripts/demo_recipe_validation.py OUT [WORKERS]

Runs the demo's comparison with 360 of the 1,437 training digits held out
(``data.options.validation_size``), every model trained on the other 1,077 and evaluated on the 360
held-out ones with the demo's attacks, for two OAT settings and two training seeds; the dedicated
models of a seed are trained once and shared by both OAT settings. The test digits are never read.

* ``demo``: the demo's own OAT setting, λ ~ Beta(8, 1) with ⌈B/6⌉ zeros, 25 epochs (chosen on this
  split in issue 11);
* ``recipe``: the Fashion-MNIST recipe, the sandwich sampler (¼ of every batch at λ = 0, ¼ at λ = 1,
  the rest U(0, 1)) trained as long as a third of the frontier's cost allows: a sandwich epoch of
  the demo's PGD-5 costs 11 passes an example against Beta(8, 1)'s 12, whose 25 epochs cost 0.208,
  so 42 epochs (about 0.32).

The rule, fixed before the runs: the demo takes the recipe if its validation hypervolume ratio is
at least the demo setting's for both seeds and its counted cost is at most 1/3 of the frontier's;
otherwise it keeps its own setting. One line of figures per run is printed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

from oat.frontier.comparison import run_comparison
from oat.frontier.demo import DEMO

SETTINGS = {
    "demo": DEMO.oat,
    "recipe": {"lambdas.sampler": "sandwich", "lambdas.params": {"zero_share": 0.25, "one_share": 0.25},
               "train.epochs": 42},
}
SEEDS = (0, 1)


def variant(oat: dict, seed: int):
    base = copy.deepcopy(DEMO.base)
    base["data"] = {"name": "digits", "options": {"validation_size": 360}}
    base["train"]["seed"] = seed
    base["eval"] = {**base["eval"], "n": 360}
    return dataclasses.replace(DEMO, base=base, oat=copy.deepcopy(oat))


def main(out: Path, workers: int) -> None:
    for seed in SEEDS:
        shared = out / f"seed{seed}" / "frontier"
        for name, oat in SETTINGS.items():
            run = out / f"seed{seed}" / name
            run.mkdir(parents=True, exist_ok=True)
            if not (run / "frontier").exists():
                shared.mkdir(parents=True, exist_ok=True)
                (run / "frontier").symlink_to(shared.resolve())
            summary = run_comparison(variant(oat, seed), run, workers, log=None)
            row = {k: summary[k] for k in ("hypervolume_ratio", "hypervolume_ratio_interval", "cost_ratio")}
            print(json.dumps({"setting": name, "seed": seed, **row}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2)
