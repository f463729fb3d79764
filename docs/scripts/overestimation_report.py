"""The tables of docs/overestimation.md from finished runs: per run, the last validation (PGD-10,
APGD-CE, APGD-DLR, the flagged gap, the monitor's spans) and the test-set evaluation written by

    oat eval --checkpoint RUN --split test --lambdas L --attacks pgd-10,autoattack --out RUN/test_eval.json

then per arm (runs named ARM_sSEED) the mean and standard deviation over seeds.
Run: python docs/scripts/overestimation_report.py RUN_DIR...
"""

import json
import statistics
import sys
from pathlib import Path


def row(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = next(r for r in reversed(records) if r.get("validation"))
    point = last["validation"]["points"][0]
    monitor = json.loads((run / "monitor.json").read_text())
    spans = [span for p in monitor["lambdas"] for span in p["spans"]]
    test = json.loads((run / "test_eval.json").read_text())["points"][0]
    noised = sum(1 for r in records if r.get("fosc_noise_batches"))
    return {"run": run.name, "val_clean": point["clean"], "val_pgd": point["robust"]["pgd-10"],
            "val_apgd_ce": point["robust"]["apgd-ce"], "val_gap": point["robust"]["pgd-10"] - point["robust"]["apgd-ce"],
            "val_worst_gap": point["overestimation"]["gap"], "flagged_at_end": point["overestimation"]["flagged"],
            "spans": spans, "test_clean": test["clean"], "test_pgd": test["robust"]["pgd-10"],
            "test_aa": test["robust"]["autoattack"], "test_gap": test["robust"]["pgd-10"] - test["robust"]["autoattack"],
            "noised_epochs": noised, "fosc_last": records[-1]["fosc"]}


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def main(runs: list[str]) -> None:
    rows = [row(Path(r)) for r in runs]
    print("| run | val clean | val PGD-10 | val APGD-CE | PGD−APGD-CE | flagged gap (vs CE+DLR) | flagged at end | "
          "spans | test clean | test PGD-10 | test AutoAttack | test PGD−AA | epochs noised |")
    print("|---" * 13 + "|")
    for r in rows:
        print(f"| {r['run']} | {pct(r['val_clean'])} | {pct(r['val_pgd'])} | {pct(r['val_apgd_ce'])} | "
              f"{pct(r['val_gap'])} | {pct(r['val_worst_gap'])} | {'yes' if r['flagged_at_end'] else 'no'} | "
              f"{r['spans']} | {pct(r['test_clean'])} | {pct(r['test_pgd'])} | {pct(r['test_aa'])} | "
              f"{pct(r['test_gap'])} | {r['noised_epochs']} |")
    arms: dict[str, list] = {}
    for r in rows:
        arms.setdefault(r["run"].rsplit("_s", 1)[0], []).append(r)
    print()
    print("| arm | seeds | val PGD−APGD-CE | test clean | test AutoAttack | test PGD−AA | flagged at end |")
    print("|---" * 7 + "|")
    for arm, members in arms.items():
        def stat(key):
            values = [m[key] for m in members]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"
        flagged = sum(m["flagged_at_end"] for m in members)
        print(f"| {arm} | {len(members)} | {stat('val_gap')} | {stat('test_clean')} | {stat('test_aa')} | "
              f"{stat('test_gap')} | {flagged}/{len(members)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
