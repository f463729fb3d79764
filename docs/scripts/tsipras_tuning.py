"""The Tsipras comparison's settings, tried on the validation split (docs/tsipras.md).

    python docs/scripts/tsipras_tuning.py OUT NAME [KEY=VALUE ...]

Trains the OAT linear model of configs/bench_tsipras_cpu.yaml's base (with the --set overrides
given) into OUT/NAME, evaluates it on the validation split (5,000 of the 20,000 training draws;
the test draws are never read) with PGD-20 at λ = 0, 0.01, …, 1, and prints the validation SA at
λ = 0 (does the curve reach the accurate end?), the largest distance of the validation points
behind the true frontier (oat.frontier.analytic) and where, the same for the exact figures from the
weights (for reference: they are population figures), and the points' hypervolume over the true
frontier's.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from oat.frontier.analytic import distance, tsipras_linear_frontier
from oat.frontier.pareto import hypervolume

ROOT = Path(__file__).resolve().parents[2]
# λ = 0, 0.01, …, 1: OAT serves every λ, so the criterion is its whole curve; the comparison's
# eleven λ (an earlier pass) left the steepest stretch of one candidate unsampled.
LAMBDAS = ",".join(f"{k / 100:g}" for k in range(101))


def main() -> None:
    out, name, sets = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    run = out / name
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    base = yaml.safe_load((ROOT / "configs" / "bench_tsipras_cpu.yaml").read_text())["base"]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(base, handle)
    if not (run / "checkpoint.pt").exists():
        subprocess.run(["oat", "train", "--config", handle.name, "--out", str(run), "--quiet"]
                       + [a for s in sets for a in ("--set", s)], check=True, env=env)
    subprocess.run(["oat", "eval", "--checkpoint", str(run), "--split", "validation", "--lambdas", LAMBDAS,
                    "--attacks", "pgd-20", "--n", "5000", "--quiet", "--out", str(run / "validation.json")],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    result = json.loads((run / "validation.json").read_text())
    params = result["data_params"]
    frontier = tsipras_linear_frontier(params["p"], int(params["d"]), params["eta"], result["eps"])
    print(name, " ".join(sets))
    rows = [(p["lambda"], p["clean"], p["robust_worst"], p["analytic"]) for p in result["points"]]
    worst = max(rows, key=lambda r: distance(frontier, r[1], r[2]))
    exact = max(rows, key=lambda r: distance(frontier, r[3]["clean"], r[3]["robust"]))
    ratio = hypervolume([(r[1], r[2]) for r in rows]) / hypervolume([tuple(f) for f in frontier])
    print(f"  validation SA at λ = 0: {100 * rows[0][1]:.2f}; "
          f"largest distance {100 * distance(frontier, *worst[1:3]):.2f} (λ = {worst[0]:g}); exact {100 * distance(frontier, exact[3]['clean'], exact[3]['robust']):.2f} "
          f"(λ = {exact[0]:g}); hypervolume over the true frontier's {ratio:.4f}")


if __name__ == "__main__":
    main()
