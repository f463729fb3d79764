"""Report, summary and plots of OAT vs the dedicated frontier; `oat plot`; `oat demo`."""

import json

import pytest
import torch
import yaml

from oat.frontier.demo import demo_configs, run_demo
from oat.frontier.plot import Labels, place_labels, plot
from oat.frontier.report import Comparison, find_results, format_report, summarize, write_report
from oat.frontier.sweep import make_points
from oat.cli import main
from oat.config import ConfigError
from oat.bits import pack_bits
from oat.frontier.comparison import _log_summary
from oat.passes import total, work
from oat.protocol import protocol_of

ATTACKS = ["pgd-20", "apgd"]
# How every hand-made model below was evaluated (what oat.evaluation.evaluate records).
PROTOCOL = {"dataset": "digits", "split": "test", "eps": 0.3, "norm": "Linf", "n": 300, "subset": "0123456789abcdef",
            "attacks": ATTACKS, "seed": 0}


def _point(lam, clean, pgd, apgd, flags=()):
    return {"lambda": lam, "clean": clean, "robust": {"pgd-20": pgd, "apgd": apgd}, "robust_worst": min(pgd, apgd)}


def _passes(total):
    return {"forward": total // 2, "backward_input": total // 4, "backward_full": total - total // 2 - total // 4}


def _dedicated(name, kind, value, lam, clean, worst, seconds):
    """A dedicated point; its counted passes are 1,000 per second of training, plus one."""
    return {"name": name, "kind": kind, "value": value, "lambda": lam, "clean": clean,
            "robust": {"pgd-20": worst + 0.02, "apgd": worst}, "robust_worst": worst, "train_seconds": seconds,
            "train_passes": _passes(int(seconds * 1000) + 1),
            "epochs": 5, "flags": [], "protocol": dict(PROTOCOL, attacks=sorted(ATTACKS))}


@pytest.fixture
def comparison():
    oat = {**PROTOCOL, "train_seconds": 30.0, "train_passes": _passes(25_000),
           "points": [_point(0.0, 0.99, 0.02, 0.0), _point(0.4, 0.97, 0.30, 0.28), _point(1.0, 0.90, 0.52, 0.50)],
           "flags": [{"lambda": 1.0, "kind": "pgd_above_autoattack", "message": "λ=1: test flag"}]}
    dedicated = [
        _dedicated("lambda-0", "fixed_lambda", 0.0, 0.0, 0.99, 0.0, 10.0),
        _dedicated("lambda-0.4", "fixed_lambda", 0.4, 0.4, 0.98, 0.25, 40.0),
        _dedicated("lambda-1", "fixed_lambda", 1.0, 1.0, 0.92, 0.50, 40.0),
        _dedicated("trades-beta-6", "trades", 6.0, 1.0, 0.93, 0.45, 45.0),
    ]
    return Comparison(oat, dedicated)


def test_summary_figures_are_computed_from_the_worst_case(comparison):
    s = summarize(comparison)
    # OAT front: (0.90, 0.50), (0.97, 0.28), (0.99, 0.0) → 0.90·0.50 + 0.07·0.28
    assert s["hypervolume_oat"] == pytest.approx(0.90 * 0.50 + 0.07 * 0.28)
    # frontier: (0.92, 0.50), (0.98, 0.25) → 0.92·0.50 + 0.06·0.25
    assert s["hypervolume_frontier"] == pytest.approx(0.92 * 0.50 + 0.06 * 0.25)
    assert s["hypervolume_ratio"] == pytest.approx(s["hypervolume_oat"] / s["hypervolume_frontier"])
    assert s["train_seconds_oat"] == 30.0 and s["train_seconds_frontier"] == 90.0
    assert s["train_passes_oat"] == 25_000 and s["train_passes_frontier"] == 90_003
    assert s["cost_ratio"] == pytest.approx(25_000 / 90_003)  # counted passes, not seconds
    assert s["cost_ratio_seconds"] == pytest.approx(30 / 90)
    assert s["train_passes_trades"] == 45_001
    assert s["runs_frontier"] == 3 and s["runs_trades"] == 1
    # OAT's λ = 1 point (0.90, 0.50) is behind lambda-1 (0.92, 0.50)? equal RA: not strictly in both → 0
    assert s["gap"]["worst_deficit"] == pytest.approx(0.0)
    assert [f["model"] for f in s["flags"]] == ["oat"]
    assert s["attacks"] == ATTACKS and s["eps"] == 0.3 and s["n"] == 300 and s["protocol_mismatches"] == []


def test_a_comparison_built_by_hand_still_reports_its_protocol_mismatch(comparison):
    comparison.dedicated[1]["protocol"]["eps"] = 0.25
    s = summarize(comparison)
    assert s["protocol_mismatches"] == ["eps is 0.3 in the OAT run but 0.25 in lambda-0.4"]
    assert s["eps"] is None and s["n"] == 300  # no common ε to claim


def test_cost_in_work_weighs_each_run_by_its_networks_size(comparison, tmp_path):
    """OAT on a network twice the size costs twice the work per pass: its work ratio is larger than
    its pass ratio (not exactly twice: a full backward weighs two forwards in work, one in passes)."""
    s = summarize(comparison)  # runs from before MACs were kept
    assert s["train_work_oat"] is s["train_work_frontier"] is s["train_work_trades"] is s["cost_ratio_work"] is None
    assert "| cost ratio OAT / frontier (work: multiply-accumulates) | – |" in format_report(comparison, s)
    comparison.oat["train_macs_per_example"] = 2_000_000
    for point in comparison.dedicated:
        point["train_macs_per_example"] = 1_000_000
    s = summarize(comparison)
    frontier = sum(work(_passes(total), 1_000_000) for total in (10_001, 40_001, 40_001))
    assert s["train_work_oat"] == work(_passes(25_000), 2_000_000) and s["train_work_frontier"] == frontier
    assert s["train_work_trades"] == work(_passes(45_001), 1_000_000)
    assert s["cost_ratio_work"] == pytest.approx(s["train_work_oat"] / frontier)
    assert 1.9 * s["cost_ratio"] < s["cost_ratio_work"] < 2.1 * s["cost_ratio"]
    report = format_report(comparison, s)
    assert f"| cost ratio OAT / frontier (work: multiply-accumulates) | {s['cost_ratio_work']:.4f} |" in report
    assert f"| training passes (work), OAT | 0.03 M; work {s['train_work_oat'] / 1e9:.3g} G MACs (1 run) |" in report
    lines = []
    _log_summary(lines.append, tmp_path, [tmp_path / "p.png"], s, 1.0, "test")
    assert f"{s['cost_ratio_work']:.3f} in work" in lines[2] and f"{s['cost_ratio']:.3f} in passes" in lines[2]
    del comparison.dedicated[0]["train_macs_per_example"]  # one run of unknown size: no frontier work
    s = summarize(comparison)
    assert s["train_work_frontier"] is s["cost_ratio_work"] is None and s["train_work_trades"] is not None


def test_the_report_says_whether_lambda_does_what_it_says(comparison):
    s = summarize(comparison)
    assert s["monotonicity"] == {"sa_non_increasing": True, "ra_non_decreasing": True, "violations": []}
    assert "## Does λ do what it says?" in format_report(comparison, s)
    assert "SA never rises and RA never falls as λ grows: λ does what it says." in format_report(comparison, s)
    oat = comparison.oat["points"]  # no per-example bits here: the Wilson intervals on n = 300 decide
    oat[0]["clean"] = 0.80  # 80% → 97% from λ = 0 to 0.4: beyond noise
    oat[2]["robust_worst"] = 0.27  # 28% → 27% from λ = 0.4 to 1: noise
    s = summarize(comparison)
    assert s["monotonicity"]["sa_non_increasing"] is False and s["monotonicity"]["ra_non_decreasing"] is True
    report = format_report(comparison, s)
    assert "**Beyond sampling noise, λ does not do what its name says here:**" in report
    assert "- SA rises from λ = 0 to 0.4: 80.0% → 97.0%" in report
    assert "Within sampling noise: RA falls from λ = 0.4 to 1 (28.0% → 27.0%)." in report
    # With per-example bits the paired test decides: 2 examples lost, 53 gained.
    before, after = torch.arange(300) < 240, torch.arange(300) < 293
    after[:2] = False
    for point, clean in ((oat[0], before), (oat[1], after)):
        point["per_example"] = {"clean": pack_bits(clean), "robust_worst": pack_bits(torch.ones(300, dtype=torch.bool))}
    s = summarize(comparison)
    (violation, _) = s["monotonicity"]["violations"]
    assert (violation["b"], violation["c"], violation["test"]) == (2, 53, "exact McNemar")
    assert f"80.0% → 97.0%; examples lost 2, gained 53, p = {violation['p']:.2g}" in format_report(comparison, s)


def test_report_and_summary_files(comparison, tmp_path):
    summary = write_report(comparison, tmp_path)
    stored = json.loads((tmp_path / "summary.json").read_text())
    for key in ("hypervolume_oat", "hypervolume_frontier", "hypervolume_ratio", "train_seconds_oat",
                "train_seconds_frontier", "train_passes_oat", "train_passes_frontier", "cost_ratio",
                "cost_ratio_seconds", "train_work_oat", "train_work_frontier", "train_work_trades",
                "cost_ratio_work", "monotonicity", "flags"):
        assert key in stored
    assert stored == json.loads(json.dumps(summary))
    report = (tmp_path / "report.md").read_text()
    assert "hypervolume ratio OAT / frontier" in report and "pgd-20, apgd" in report
    assert "| lambda-0.4 | 0.4 |" in report and "trades-beta-6" in report and "λ=1: test flag" in report


def test_plot_writes_png_and_svg(comparison, tmp_path):
    png, svg = plot(comparison, tmp_path / "figure.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    text = svg.read_text()
    assert "<svg" in text and "clean accuracy SA (%)" in text and "β=6" in text and "λ=0.4" in text


def test_point_labels_merge_coincident_points_and_never_overlap():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_xlim(96, 100), ax.set_ylim(0, 70)
    # The demo's crowded corner: OAT points a fraction of a percent apart, two at the same place,
    # and a fixed-λ label on the same side as two TRADES labels.
    oat = [(lam, {"clean": 0.995, "robust_worst": ra}) for lam, ra in
           [(0.1, 0.565), (0.2, 0.59), (0.3, 0.61), (0.4, 0.59), (0.7, 0.585), (1.0, 0.60)]]
    fixed = [(1.0, {"clean": 0.99, "robust_worst": 0.57})]
    trades = [(1.0, {"clean": 0.99, "robust_worst": 0.535}), (3.0, {"clean": 0.99, "robust_worst": 0.55})]
    texts = place_labels(ax, [Labels("C0", (-4, 7), "right", "", oat), Labels("C3", (6, -11), "left", "λ=", fixed),
                              Labels("C2", (6, 4), "left", "β=", trades)])
    assert sorted(t.get_text() for t in texts) == ["0.1", "0.2, 0.4", "0.3", "0.7", "1", "β=1", "β=3", "λ=1"]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two point labels overlap"
    plt.close(fig)


def _fake_runs(root, comparison):
    run = root / "oat"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"conditioned": True}}))
    (run / "eval.json").write_text(json.dumps(comparison.oat))
    sweep = root / "frontier"
    sweep.mkdir()
    sweep_protocol = {"attacks": ATTACKS, "eps": None, "n": 300, "seed": 0}  # what the sweep asked for
    (sweep / "frontier.json").write_text(json.dumps({"protocol": sweep_protocol, "points": comparison.dedicated}))


def test_find_results_and_the_plot_command(comparison, tmp_path, capsys):
    _fake_runs(tmp_path, comparison)
    found = find_results([tmp_path])
    assert found.oat["train_seconds"] == 30.0 and len(found.dedicated) == 4
    assert main(["plot", str(tmp_path / "oat"), str(tmp_path / "frontier"), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").exists() and (tmp_path / "p.svg").exists() and (tmp_path / "summary.json").exists()
    assert "hypervolume ratio" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_demo_runs_end_to_end_and_reuses_finished_work(tmp_path):
    tiny = {"train.epochs": 1, "attack.steps": 1, "eval.n": 40, "eval.attacks": ["fgsm", "pgd-3"]}
    lines = []
    summary = run_demo(tmp_path, workers=1, overrides=tiny, log=lines.append)
    for name in ("frontier_plot.png", "frontier_plot.svg", "report.md", "summary.json"):
        assert (tmp_path / name).exists()
    assert summary["runs_frontier"] == 6 and summary["runs_trades"] == 3 and summary["runs_oat"] == 1
    assert 0 < summary["hypervolume_ratio"] and 0 < summary["cost_ratio"]
    # Every model is the same small CNN, OAT's with its small FiLM MLPs: work and passes nearly agree.
    assert 0.9 * summary["cost_ratio"] < summary["cost_ratio_work"] < 1.1 * summary["cost_ratio"]
    assert summary["monotonicity"] is not None and "## Does λ do what it says?" in (tmp_path / "report.md").read_text()
    low, high = summary["hypervolume_ratio_interval"]
    assert low <= summary["hypervolume_ratio"] <= high and "95% bootstrap interval" in (tmp_path / "report.md").read_text()
    assert any("hypervolume ratio" in line for line in lines)
    # Every real model was measured with one protocol, and frontier.json carries each point's.
    assert summary["protocol_mismatches"] == []
    oat_protocol = protocol_of(json.loads((tmp_path / "oat" / "eval.json").read_text()))
    assert oat_protocol == {"dataset": "digits", "split": "test", "eps": 0.2, "norm": "Linf", "n": 40,
                            "subset": oat_protocol["subset"], "attacks": ["fgsm", "pgd-3"], "seed": 0,
                            "cascade": True}
    rows = json.loads((tmp_path / "frontier" / "frontier.json").read_text())["points"]
    assert len(rows) == 9 and all(row["protocol"] == oat_protocol for row in rows)
    assert all(row["train_macs_per_example"] > 0 for row in rows)  # trainer → checkpoint → eval.json → frontier.json
    assert summary["protocol"] == oat_protocol
    # The third curve: the frontier's own end models, mixed, on the same protocol at OAT's λ.
    mixed = summary["mixed_ends"]
    mixed_eval = json.loads((tmp_path / "mixed-ends" / "eval.json").read_text())
    assert protocol_of(mixed_eval) == oat_protocol
    assert [p["lambda"] for p in mixed_eval["points"]] == [p["lambda"] for p in
                                                          json.loads((tmp_path / "oat" / "eval.json").read_text())["points"]]
    ends = {row["name"]: row for row in rows}
    for alpha, name in ((0.0, "lambda-0"), (1.0, "lambda-1")):  # α = 0 and 1: the members themselves
        point = next(p for p in mixed_eval["points"] if p["lambda"] == alpha)
        assert point["per_example"]["robust_worst"] == ends[name]["per_example"]["robust_worst"]
    assert mixed["cost_ratio"] == pytest.approx(
        (total(ends["lambda-0"]["train_passes"]) + total(ends["lambda-1"]["train_passes"])) / summary["train_passes_frontier"])
    assert mixed["inference_forwards"] == 2 and 0 < mixed["hypervolume_ratio"]
    assert mixed["hypervolume_ratio_interval"] is not None and 0 <= mixed["interpolation"]["barrier"] <= 1
    report = (tmp_path / "report.md").read_text()
    assert "## Two end models, mixed" in report and "two end models, mixed (α)" in report
    again = []
    run_demo(tmp_path, workers=1, overrides=tiny, log=again.append)
    interpolated = summary.get("interpolated_ends") is not None  # offered only where the barrier ≤ 2 points
    assert interpolated == (mixed["interpolation"]["barrier"] <= 0.02 + 1e-12)
    assert sum("already finished" in line for line in again) == 11 + interpolated
    # A rerun under other settings never reuses the models trained under the old ones.
    with pytest.raises(ConfigError, match=r"oat in .* was trained with another config \(attack.eps: 0.2 → 0.1\) "
                                          r"\(and 9 more points\); pass --retrain-stale"):
        run_demo(tmp_path, workers=1, overrides={**tiny, "attack.eps": 0.1}, log=None)


def test_demo_oat_model_and_dedicated_baselines_share_everything_but_sampler_and_epochs():
    oat, base, sweep = demo_configs()
    points = make_points(sweep, base)
    assert len([p for p in points if p.kind == "fixed_lambda"]) >= 4
    assert len([p for p in points if p.kind == "trades"]) >= 3
    for point in points:
        cfg = point.config
        assert (cfg.data, cfg.attack, cfg.optim, cfg.schedule, cfg.eval) == (
            oat.data, oat.attack, oat.optim, oat.schedule, oat.eval)
        assert cfg.model.name == oat.model.name and cfg.model.options == {"channels": [16, 32]}
        assert cfg.train.epochs < oat.train.epochs and not cfg.model.conditioned
    assert oat.lambdas.sampler == "beta" and oat.model.conditioned
    # Overrides reach both sides, after the OAT model's own settings.
    oat, base, _ = demo_configs({"train.epochs": 2, "attack.eps": 0.1})
    assert oat.train.epochs == base.train.epochs == 2 and oat.attack.eps == base.attack.eps == 0.1
