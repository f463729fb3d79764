"""Benchmark: wall time of `oat demo` from nothing, against the 5-minute target on 2 CPU cores,
with the demo's own headline ratios (hypervolume OAT / frontier, training cost OAT / frontier).

    python bench/demo_time.py [--workers 2]

Prints one line per figure, each measured in this one run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TARGET_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "oat", "demo", "--out", out, "--workers", str(args.workers)],
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        summary = json.loads(open(os.path.join(out, "summary.json")).read())
    print(f"cpus {os.cpu_count()}, workers {args.workers}")
    print(f"demo wall time        {wall:8.1f} s   ratio to the 300 s target {wall / TARGET_SECONDS:.3f}")
    print(f"hypervolume OAT       {summary['hypervolume_oat']:8.4f}")
    print(f"hypervolume frontier  {summary['hypervolume_frontier']:8.4f}   ratio {summary['hypervolume_ratio']:.3f}")
    print(f"training OAT          {summary['train_seconds_oat']:8.1f} s")
    print(f"training frontier     {summary['train_seconds_frontier']:8.1f} s   ratio {summary['cost_ratio']:.3f}")


if __name__ == "__main__":
    main()
