"""``oat pick``: a bound on one accuracy, the best of the other, with intervals and interpolation."""

import json
import math

import pytest

from oat.cli import main
from oat.intervals import wilson_interval
from oat.pick import PickError, format_pick, pick

CHECKPOINT = "runs/r/checkpoint.pt"
# λ, clean, robust_worst; deliberately not sorted by λ
TRADE_OFF = [(0.4, 0.85, 0.5), (0.0, 0.97, 0.3), (1.0, 0.7, 0.6), (0.2, 0.95, 0.4)]


def points(rows, attacks=("pgd-20", "apgd-ce")):
    """Points with exactly the keys of oat.evaluation._point's."""
    return [{"lambda": lam, "clean": clean, "robust": {a: worst for a in attacks}, "robust_worst": worst,
             "per_example": {"clean": "00", "robust_worst": "00", "robust": {a: "00" for a in attacks}},
             "checks": {"zero_gradient": 0.0, "fosc": {}}} for lam, clean, worst in rows]


def evaluation(rows=TRADE_OFF, continuous=False, split="validation", n=300, attacks=("pgd-20", "apgd-ce"),
               dual_bn=True):
    """An eval.json as oat eval writes it (keys of oat.evaluation.evaluate plus the run's)."""
    return {"dataset": "digits", "split": split, "n": n, "eps": 0.3, "norm": "Linf", "subset": "abc",
            "checkpoint": CHECKPOINT, "attacks": list(attacks), "seed": 0, "cascade": False,
            "points": points(rows, attacks), "flags": [], "seconds": 1.0, "continuous_lambda": continuous,
            "dual_bn": dual_bn}


def chosen(picked):
    return picked["lambda"], picked["clean"], picked["robust_worst"]


# ---------------------------------------------------------------- the rule


def test_min_clean_picks_the_most_robust_lambda_that_reaches_it():
    picked = pick(evaluation(), min_clean=0.9)
    assert chosen(picked) == (0.2, 0.95, 0.4)
    assert (picked["objective"], picked["constraints"]) == ("robust", {"min_clean": 0.9, "min_robust": None})
    assert chosen(pick(evaluation(), min_clean=0.85)) == (0.4, 0.85, 0.5)  # the bound itself is reached


def test_min_robust_picks_the_cleanest_lambda_that_reaches_it():
    picked = pick(evaluation(), min_robust=0.45)
    assert chosen(picked) == (0.4, 0.85, 0.5)
    assert picked["objective"] == "clean"


def test_maximize_alone_is_unconstrained_and_overrides_a_bounds_default():
    assert chosen(pick(evaluation(), maximize="robust")) == (1.0, 0.7, 0.6)
    assert chosen(pick(evaluation(), maximize="clean")) == (0.0, 0.97, 0.3)
    assert pick(evaluation(), maximize="clean")["confident"] is True
    assert chosen(pick(evaluation(), min_clean=0.8, maximize="clean")) == (0.0, 0.97, 0.3)
    assert chosen(pick(evaluation(), min_clean=0.8, min_robust=0.35, maximize="clean")) == (0.2, 0.95, 0.4)
    assert chosen(pick(evaluation(), min_clean=0.8, min_robust=0.35, maximize="robust")) == (0.4, 0.85, 0.5)


def test_ties_go_to_the_better_other_figure_then_the_smaller_lambda():
    rows = [(0.6, 0.92, 0.5), (0.2, 0.9, 0.5), (0.4, 0.92, 0.5), (0.0, 0.99, 0.1)]
    assert pick(evaluation(rows), min_clean=0.9)["lambda"] == 0.4
    rows = [(0.8, 0.9, 0.4), (0.3, 0.9, 0.3), (0.5, 0.9, 0.4)]
    assert pick(evaluation(rows), min_robust=0.3)["lambda"] == 0.5


def test_a_float32_accuracy_reaches_the_bound_it_equals():
    # oat eval writes float32 means: 27/30 reads 0.8999999761581421, which is 27/30 and reaches 0.9.
    rows = [(0.0, 0.8999999761581421, 0.2), (1.0, 0.8, 0.5)]
    assert pick(evaluation(rows, n=30), min_clean=0.9)["lambda"] == 0.0


def test_when_no_lambda_reaches_the_bound_none_is_picked_and_the_best_is_named():
    picked = pick(evaluation(), min_clean=0.99)
    assert chosen(picked) == (None, None, None)
    assert picked["reason"] == "no evaluated λ reaches clean accuracy 0.99; the highest is 0.970 at λ = 0"
    assert pick(evaluation(), min_robust=0.7)["reason"] == \
        "no evaluated λ reaches robust accuracy 0.7; the highest is 0.600 at λ = 1"
    both = pick(evaluation(), min_clean=0.9, min_robust=0.5, maximize="robust")
    assert both["lambda"] is None
    assert both["reason"] == ("no evaluated λ reaches both clean accuracy 0.9 and robust accuracy 0.5; where "
                              "clean accuracy reaches 0.9, the highest robust accuracy is 0.400 at λ = 0.2")
    assert format_pick(picked).splitlines()[0] == f"no λ picked: {picked['reason']}"


# ---------------------------------------------------------------- intervals


def test_intervals_are_wilson_intervals_of_the_picked_figures():
    picked = pick(evaluation(), min_clean=0.9)
    assert picked["clean_interval"] == list(wilson_interval(0.95, 300))
    assert picked["robust_worst_interval"] == list(wilson_interval(0.4, 300))
    assert picked["level"] == 0.95
    json.dumps(picked)  # JSON-ready


def test_confident_only_when_the_bound_holds_at_the_lower_end_of_the_interval():
    rows = [(0.0, 0.9, 0.3), (1.0, 0.5, 0.6)]
    assert wilson_interval(0.9, 300)[0] < 0.9 and wilson_interval(0.9, 300)[0] > 0.85
    assert pick(evaluation(rows), min_clean=0.9)["confident"] is False
    assert pick(evaluation(rows), min_clean=0.85)["confident"] is True
    assert pick(evaluation(rows), min_robust=0.6)["confident"] is False
    text = format_pick(pick(evaluation(rows), min_clean=0.9))
    low = wilson_interval(0.9, 300)[0]
    assert f"not confident: the 95% interval of clean accuracy reaches down to {low:.3f}, below 0.9" in text


# ---------------------------------------------------------------- interpolation


def test_interpolation_finds_the_exact_crossing_of_the_bound():
    picked = pick(evaluation(continuous=True), min_clean=0.9)
    assert chosen(picked) == (0.2, 0.95, 0.4)  # the measured answer stays the main one
    estimate = picked["interpolated"]
    assert estimate["lambda"] == 0.3 and estimate["between"] == [0.2, 0.4]
    assert estimate["clean"] == pytest.approx(0.9) and estimate["robust_worst"] == pytest.approx(0.45)
    assert estimate["measured"] is False
    assert estimate["confirm"] == (f"oat eval --checkpoint {CHECKPOINT} --lambdas 0.3 --attacks pgd-20,apgd-ce "
                                   "--eps 0.3 --n 300 --seed 0 --split validation --out eval_confirm.json")
    lines = format_pick(picked).splitlines()
    assert "λ = 0.3 (between 0.2 and 0.4) would give clean ≈ 0.900, robust ≈ 0.450" in lines[2]
    assert "not measured" in lines[2] and lines[3] == f"confirm it: {estimate['confirm']}"


def test_interpolation_of_a_min_robust_bound():
    estimate = pick(evaluation(continuous=True), min_robust=0.45)["interpolated"]
    assert (estimate["lambda"], estimate["between"]) == (0.3, [0.2, 0.4])
    assert estimate["clean"] == pytest.approx(0.9) and estimate["robust_worst"] == pytest.approx(0.45)


@pytest.mark.parametrize("rows, bound, expected", [
    # clean falls with λ: the feasible side is below the crossing 0.123456, so 0.1235 would miss it
    ([(0.0, 1.0, 0.0), (1.0, 0.0, 1.0)], 1 - 0.123456, 0.1234),
    # clean rises with λ: the feasible side is above the crossing 0.654321, so 0.6543 would miss it
    ([(0.0, 0.0, 1.0), (1.0, 1.0, 0.0)], 0.654321, 0.6544),
])
def test_an_interpolated_lambda_is_rounded_toward_the_feasible_side(rows, bound, expected):
    estimate = pick(evaluation(rows, continuous=True, dual_bn=False), min_clean=bound)["interpolated"]
    assert estimate["lambda"] == expected
    assert estimate["clean"] >= bound


def test_no_interpolation_across_the_dual_batch_norms_switch_above_zero():
    rows = [(0.0, 1.0, 0.0), (1.0, 0.0, 1.0)]
    assert pick(evaluation(rows, continuous=True, dual_bn=False), min_clean=0.5)["interpolated"]["lambda"] == 0.5
    assert pick(evaluation(rows, continuous=True), min_clean=0.5)["interpolated"] is None
    older = evaluation(rows, continuous=True)
    del older["dual_bn"]  # unrecorded: the default dual BatchNorm
    assert pick(older, min_clean=0.5)["interpolated"] is None


def test_no_interpolation_into_lambda_one_when_it_has_parameters_of_its_own():
    rows = [(0.0, 1.0, 0.0), (0.5, 0.9, 0.4), (1.0, 0.8, 0.8)]
    triple = evaluation(rows, continuous=True)
    triple["separate_lambdas"] = [0.0, 1.0]  # a triple BatchNorm: λ = 1 is served by a BN of its own
    assert pick(triple, min_robust=0.6)["interpolated"] is None
    triple["separate_lambdas"] = [0.0]
    assert pick(triple, min_robust=0.6)["interpolated"]["lambda"] == pytest.approx(0.75, abs=1e-3)


def test_interpolation_never_leaves_the_evaluated_range():
    # Extended beyond λ = 0.6, clean would cross 0.9 at λ = 0.7, with robust 0.525.
    rows = [(0.2, 0.95, 0.4), (0.6, 0.91, 0.5)]
    picked = pick(evaluation(rows, continuous=True), min_clean=0.9)
    assert chosen(picked) == (0.6, 0.91, 0.5) and picked["interpolated"] is None
    # Below the range: robust would reach 0.45 at λ = 0.1; nothing evaluated or between reaches it.
    rows = [(0.2, 0.95, 0.4), (0.6, 0.91, 0.35)]
    picked = pick(evaluation(rows, continuous=True), min_robust=0.45)
    assert picked["lambda"] is None and picked["interpolated"] is None


def test_interpolation_only_for_a_model_that_serves_every_lambda():
    assert pick(evaluation(continuous=False), min_clean=0.9)["interpolated"] is None
    older = evaluation(continuous=True)
    del older["continuous_lambda"]
    assert pick(older, min_clean=0.9)["interpolated"] is None
    assert pick(evaluation(continuous=True), maximize="robust")["interpolated"] is None  # a vertex is optimal
    assert pick(evaluation(continuous=True), min_clean=0.95)["interpolated"] is None  # met exactly at λ = 0.2


def test_interpolation_can_meet_two_bounds_no_evaluated_lambda_meets():
    picked = pick(evaluation(continuous=True), min_clean=0.9, min_robust=0.42, maximize="clean")
    assert picked["lambda"] is None and picked["reason"].startswith("no evaluated λ reaches both")
    estimate = picked["interpolated"]
    # robust reaches 0.42 at λ = 0.24 (clean 0.93 there); clean falls to 0.9 at λ = 0.3
    assert (estimate["lambda"], estimate["between"]) == (0.24, [0.2, 0.4])
    assert estimate["clean"] == pytest.approx(0.93) and estimate["robust_worst"] == pytest.approx(0.42)


# ---------------------------------------------------------------- context and refusals


def test_a_pick_on_the_test_split_carries_a_warning():
    assert pick(evaluation(), min_clean=0.9)["warning"] is None
    warning = pick(evaluation(split="test"), min_clean=0.9)["warning"]
    assert "optimistic" in warning and "oat eval --split validation" in warning
    older = evaluation()
    del older["split"]
    assert "does not record its split" in pick(older, min_clean=0.9)["warning"]


def test_the_pick_names_the_evaluation_it_came_from():
    picked = pick(evaluation(), min_clean=0.9)
    assert {k: picked[k] for k in ("dataset", "split", "n", "eps", "attacks", "checkpoint")} == {
        "dataset": "digits", "split": "validation", "n": 300, "eps": 0.3, "attacks": ["pgd-20", "apgd-ce"],
        "checkpoint": CHECKPOINT}
    assert format_pick(picked).splitlines() == [
        "λ = 0.2: clean 0.950 (0.919–0.969), robust 0.400 (0.346–0.456), worst case of pgd-20, apgd-ce over "
        "300 examples at ε = 0.3",
        "rule: the most robust evaluated λ with clean accuracy ≥ 0.9 on the validation split of digits; the bound "
        "holds at the lower end of its 95% interval",
        f"export it: oat export --checkpoint {CHECKPOINT} --lambda 0.2 --out model.pt"]


def test_an_evaluation_without_attacks_picks_by_clean_accuracy_only():
    plain = evaluation(attacks=())
    picked = pick(plain, min_clean=0.9, maximize="clean")
    assert chosen(picked) == (0.0, 0.97, None) and picked["robust_worst_interval"] is None
    assert "robust" not in format_pick(picked).splitlines()[0]
    for options in ({"min_robust": 0.3}, {"maximize": "robust"}, {"min_clean": 0.9}):
        with pytest.raises(PickError, match="ran no attacks"):
            pick(plain, **options)


@pytest.mark.parametrize("options, message", [
    ({}, "nothing to pick by"),
    ({"min_clean": 1.5}, "--min-clean must lie in [0, 1], got 1.5"),
    ({"min_robust": -0.1}, "--min-robust must lie in [0, 1]"),
    ({"min_clean": math.nan}, "--min-clean must lie in [0, 1], got nan"),
    ({"min_clean": 0.9, "min_robust": 0.4}, "say what to maximise: --maximize"),
    ({"maximize": "speed"}, "--maximize must be robust or clean"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(PickError) as error:
        pick(evaluation(), **options)
    assert message in str(error.value)


def test_an_evaluation_missing_what_the_pick_needs_is_refused_by_name():
    broken = evaluation()
    del broken["points"][1]["clean"]
    with pytest.raises(PickError, match="point 1 of the evaluation has no 'clean'"):
        pick(broken, min_clean=0.9)
    broken = evaluation()
    del broken["points"][2]["robust_worst"]
    with pytest.raises(PickError, match="point 2 of the evaluation has no 'robust_worst'"):
        pick(broken, min_robust=0.4)
    with pytest.raises(PickError, match="no 'points'"):
        pick({"dataset": "digits", "n": 3}, min_clean=0.9)
    with pytest.raises(PickError, match="no 'n'"):
        pick({**evaluation(), "n": None}, min_clean=0.9)
    for not_a_dict in ([1, 2], "eval", None):  # JSON that is no object at all
        for options in ({"min_clean": 0.9}, {"maximize": "clean"}):
            with pytest.raises(PickError, match="not an evaluation"):
                pick(not_a_dict, **options)


# ---------------------------------------------------------------- a real evaluation


def test_a_real_evaluation_is_read_as_written(tmp_path):
    import torch

    from oat import datasets, models
    from oat.evaluation import evaluate

    torch.manual_seed(0)
    net = models.create("small_cnn", num_classes=10, conditioned=True, input_shape=(1, 8, 8)).eval()
    result = evaluate(net, datasets.load("digits", validation_size=200), [1.0, 0.0, 0.5], ["fgsm"], eps=0.1, n=30)
    result = json.loads(json.dumps({**result, "checkpoint": CHECKPOINT, "continuous_lambda": True}))
    best = max(result["points"], key=lambda p: (p["robust_worst"], p["clean"], -p["lambda"]))
    picked = pick(result, min_clean=0.0)
    assert chosen(picked) == (best["lambda"], best["clean"], best["robust_worst"])
    assert picked["robust_worst_interval"] == list(wilson_interval(best["robust_worst"], 30))
    assert (picked["split"], picked["n"], picked["attacks"]) == ("validation", 30, ["fgsm"])
    # the bound equal to a measured figure, read back from float32: that λ still reaches it
    exact = round(best["clean"] * 30) / 30
    assert pick(result, min_clean=exact, maximize="clean")["clean"] == max(p["clean"] for p in result["points"])


# ---------------------------------------------------------------- the command


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(evaluation(continuous=True)))
    return tmp_path


def test_the_command_prints_the_pick_and_exits_0(run_dir, capsys):
    code, out, err = run(["pick", "--eval", str(run_dir), "--min-clean", "0.9"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("λ = 0.2: clean 0.950 (0.919–0.969), robust 0.400")
    assert "λ = 0.3 (between 0.2 and 0.4)" in lines[2]
    assert lines[-1] == f"export it: oat export --checkpoint {CHECKPOINT} --lambda 0.2 --out model.pt"


def test_the_command_prints_json(run_dir, capsys):
    code, out, _ = run(["pick", "--eval", str(run_dir / "eval.json"), "--min-robust", "0.45", "--json"], capsys)
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(pick(evaluation(continuous=True), min_robust=0.45)))


def test_the_command_warns_on_stderr_about_a_test_split_pick(tmp_path, capsys):
    (tmp_path / "eval.json").write_text(json.dumps(evaluation(split="test")))
    code, out, err = run(["pick", "--eval", str(tmp_path), "--maximize", "robust"], capsys)
    assert code == 0 and err.startswith("oat: warning: λ was chosen on the test split") and err.count("\n") == 1
    code, out, err = run(["pick", "--eval", str(tmp_path), "--maximize", "robust", "--json"], capsys)
    assert code == 0 and err == "" and "optimistic" in json.loads(out)["warning"]


def test_the_command_exits_1_when_no_lambda_reaches_the_bound(run_dir, capsys):
    code, out, _ = run(["pick", "--eval", str(run_dir), "--min-clean", "0.99"], capsys)
    assert code == 1
    assert out.splitlines()[0] == ("no λ picked: no evaluated λ reaches clean accuracy 0.99; "
                                   "the highest is 0.970 at λ = 0")
    assert "export" not in out


def test_the_commands_user_errors_are_one_line_with_exit_code_2(run_dir, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--eval", str(tmp_path / "nope.json"), "--min-clean", "0.9"], "no such file"),
        (["--eval", str(tmp_path / "empty"), "--min-clean", "0.9"], "no eval.json in this directory"),
        (["--eval", str(tmp_path / "bad.json"), "--min-clean", "0.9"], "is not an evaluation's JSON"),
        (["--eval", str(run_dir), "--min-clean", "1.5"], "--min-clean must lie in [0, 1]"),
        (["--eval", str(run_dir)], "nothing to pick by"),
        (["--eval", str(run_dir), "--min-clean", "0.9", "--min-robust", "0.4"], "--maximize"),
    ]
    for args, message in cases:
        code, out, err = run(["pick", *args], capsys)
        assert code == 2 and out == "", (args, out)
        assert err.count("\n") == 1 and err.startswith("oat: error: ") and message in err, (args, err)
        assert "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own refusal: one line, exit 2 as well
        main(["pick", "--eval", str(run_dir), "--min-clean", "x"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "invalid float value" in err


def test_the_command_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pick", "--help"])
    assert exit_info.value.code == 0 and "--min-robust" in capsys.readouterr().out
