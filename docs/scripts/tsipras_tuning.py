"""The Tsipras comparison's settings, tried on the validation split (docs/tsipras.md).

    python docs/scripts/tsipras_tuning.py OUT NAME [KEY=VALUE ...]

Trains the OAT linear model of configs/bench_tsipras_cpu.yaml's base (with the --set overrides
given) into OUT/NAME, evaluates it on the validation split (5,000 of the 20,000 training draws;
the test draws are never read) with PGD-20 at twelve λ, and prints per λ the validation SA and RA,
their distance behind the true frontier (oat.frontier.analytic), the exact figures' distance, and
the validation points' hypervolume over the true frontier's.
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
LAMBDAS = "0,0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


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
    rows = []
    for point in result["points"]:
        exact = point["analytic"]
        rows.append((point["clean"], point["robust_worst"]))
        print(f"  λ={point['lambda']:<5g} validation SA {100 * point['clean']:6.2f} RA {100 * point['robust_worst']:6.2f}"
              f"  behind the true frontier {100 * distance(frontier, *rows[-1]):5.2f}"
              f"  (exact {100 * distance(frontier, exact['clean'], exact['robust']):5.2f})")
    worst = max(distance(frontier, *row) for row in rows)
    ratio = hypervolume(rows) / hypervolume([tuple(f) for f in frontier])
    print(f"  largest distance {100 * worst:.2f}; hypervolume over the true frontier's {ratio:.4f}")


if __name__ == "__main__":
    main()
