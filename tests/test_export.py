"""oat export: folding λ into the plain network (every registered architecture), serving λ as an
input, and the written files (pt, pt2, TorchScript, ONNX) read back by their own loaders."""

from pathlib import Path

import pytest
import torch

import oat
from oat import deploy, models
from oat.cli import main
from oat.conditioning import FiLM, LambdaNorm

# Every registered architecture at a small input (global pooling takes any size; small_cnn is 8×8).
SHAPES = {"small_cnn": (1, 8, 8), "resnet18": (3, 32, 32), "resnet34": (3, 32, 32),
          "preact_resnet18": (3, 32, 32), "wrn16_8": (3, 32, 32), "wrn40_2": (3, 32, 32), "wrn34_10": (3, 32, 32),
          "linear": (101,), "mlp": (101,)}
FORMATS = ["pt", "pt2", "torchscript", "onnx"]
MIXED = torch.tensor([0.0, 0.1, 0.5, 1.0, 0.0, 0.33, 0.9])  # seven: not the traced batch of four


def trained_like(name, **options):
    """A conditioned network whose every norm does something: random running statistics, BN
    affines and FiLM outputs (a fresh FiLM is the identity and would hide a folding error)."""
    torch.manual_seed(0)
    extra = {"input_size": 8} if name == "small_cnn" else {}
    net = models.create(name, conditioned=True, input_shape=SHAPES[name], **extra, **options)
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


def plain_twin(name):
    extra = {"input_size": 8} if name == "small_cnn" else {}
    return models.create(name, conditioned=False, input_shape=SHAPES[name], **extra)


def test_every_architecture_is_covered():
    assert set(SHAPES) == set(models.names())


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_fold_is_the_plain_network_with_the_conditioned_logits(name):
    net = trained_like(name)
    x = torch.rand(2, *SHAPES[name])
    for lam in (0.0, 0.37, 1.0):
        folded = oat.export(net, lam)
        plain = plain_twin(name)
        plain.load_state_dict(folded.state_dict())  # strict: the plain architecture's names, every one
        plain.eval()
        assert not any(isinstance(m, (LambdaNorm, FiLM)) for m in folded.modules())  # FiLMLinear's folded too
        with torch.no_grad():
            expected = net(x, lam)
            assert (plain(x) - expected).abs().max().item() <= deploy.TOLERANCE
            assert (folded(x) - expected).abs().max().item() <= deploy.TOLERANCE
        assert (expected[:, None] - expected[None]).abs().max() > 0  # the two images differ: not trivial


@pytest.mark.parametrize("options", [dict(dual_bn=False), dict(film=False), dict(encoding="categorical"),
                                     dict(triple_bn=True), dict(film_head=True, dual_head=True),
                                     dict(film_form="near_identity"), dict(film_form="reference", film_width=None)])
def test_fold_covers_the_ablations_and_encodings(options):
    net = trained_like("small_cnn", **options)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        for lam in (0.0, 0.2, 1.0):
            folded = oat.export(net, lam)
            plain = plain_twin("small_cnn")
            plain.load_state_dict(folded.state_dict())  # strict: whatever the options, the plain network
            assert (plain.eval()(x) - net(x, lam)).abs().max().item() <= deploy.TOLERANCE
        served = oat.export(net, "input")
        mixed = torch.tensor([0.0, 0.2, 1.0, 0.0, 0.4])  # known to a categorical code too
        assert (served(x, mixed) - net(x, mixed)).abs().max().item() <= deploy.TOLERANCE


def test_fold_at_lambdas_the_folded_values_differ_and_an_unknown_categorical_lambda_is_refused():
    net = trained_like("small_cnn", encoding="categorical")
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert (oat.export(net, 0.0)(x) - oat.export(net, 1.0)(x)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="0.25"):
        oat.export(net, 0.25)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        oat.export(net, 1.5)
    with pytest.raises(ValueError, match="'input'"):
        oat.export(net, "inputs")


def test_fold_leaves_the_model_as_it_was():
    net = trained_like("small_cnn").train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = oat.export(net, 0.3)
    assert net.training and not folded.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(isinstance(m, LambdaNorm) for m in net.modules())


def test_fold_keeps_the_networks_dtype():
    net = trained_like("small_cnn").double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        folded = oat.export(net, 0.3)
        assert folded(x).dtype == torch.float64
        assert (folded(x) - net(x, 0.3)).abs().max().item() <= 1e-12


def test_fold_of_a_plain_network_is_an_eval_copy():
    plain = plain_twin("small_cnn").train()
    folded = oat.export(plain, 0.7)
    x = torch.rand(3, 1, 8, 8)
    assert folded is not plain and not folded.training and plain.training
    with torch.no_grad():
        assert torch.equal(folded(x), plain.eval()(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_written_fold_reads_back_with_the_same_logits(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")  # the test extras install it; oat[onnx] for users
    net = trained_like("resnet18")
    folded = oat.export(net, 0.3)
    spec = {"name": "resnet18", "num_classes": 10, "conditioned": False, "input_shape": [3, 32, 32], "options": {}}
    path = deploy.write(folded, tmp_path / f"model.{fmt}", fmt, (3, 32, 32), spec, 0.3)
    loaded = deploy.load_exported(path, fmt)
    x = torch.rand(7, 3, 32, 32)  # another batch size than the traced one
    assert deploy.max_difference(net, loaded, (x,), 0.3) <= deploy.TOLERANCE


def test_the_server_is_the_eager_model_at_every_lambda_per_example():
    net = trained_like("small_cnn")
    server = oat.export(net, "input")
    x = torch.rand(len(MIXED), 1, 8, 8)
    with torch.no_grad():
        together = server(x, MIXED)
        assert (together - net(x, MIXED)).abs().max().item() <= deploy.TOLERANCE
        for i, lam in enumerate(MIXED.tolist()):  # each example as if it were alone at its λ
            assert (together[i] - net(x[i:i + 1], lam)[0]).abs().max().item() <= deploy.TOLERANCE
        assert torch.equal(server(x, 0.5), server(x, torch.full((len(x),), 0.5)))
    with pytest.raises(ValueError, match="eval mode only"):
        server.train()
    with pytest.raises(ValueError, match="plain network"):
        oat.export(plain_twin("small_cnn"), "input")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        server(x, MIXED + 0.5)


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "onnx"])
@pytest.mark.parametrize("encoding", ["sinusoidal", "categorical"])
def test_a_written_server_takes_lambda_per_example(tmp_path, fmt, encoding):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    net = trained_like("small_cnn", encoding=encoding)
    path = deploy.write(oat.export(net, "input"), tmp_path / f"server.{fmt}", fmt, (1, 8, 8))
    loaded = deploy.load_exported(path, fmt)
    lam = MIXED if encoding == "sinusoidal" else torch.tensor([0.0, 0.1, 0.2, 1.0, 0.0, 0.4, 0.3])
    x = torch.rand(len(lam), 1, 8, 8)
    assert deploy.max_difference(net, loaded, (x, lam)) <= deploy.TOLERANCE
    single = torch.full((3,), 0.3)
    assert deploy.max_difference(net, loaded, (x[:3], single)) <= deploy.TOLERANCE
    bad = torch.tensor([0.3, 1.5, 0.25 if encoding == "categorical" else -0.1, 0.0])
    if fmt == "torchscript":  # raises, as the eager model does
        with pytest.raises(torch.jit.Error, match=r"\[0, 1\]"):
            loaded(x[:4], bad)
        if encoding == "categorical":
            with pytest.raises(torch.jit.Error, match="does not know"):
                loaded(x[:2], torch.tensor([0.0, 0.25]))
        with pytest.raises(torch.jit.Error, match=r"shape \[B\]"):
            loaded(x[:4], single)
    else:  # a graph cannot raise: NaN logits exactly where λ cannot be served
        nan_rows = loaded(x[:4], bad).isnan().all(1).tolist()
        assert nan_rows == [False, True, True, False]


def test_oat_load_reads_an_exported_pt_and_evaluation_refuses_it(tmp_path, capsys):
    net = trained_like("small_cnn")
    spec = {"name": "small_cnn", "num_classes": 10, "conditioned": False, "input_shape": [1, 8, 8],
            "options": {"input_size": 8}}
    path = deploy.write(oat.export(net, 0.4), tmp_path / "m.pt", "pt", spec=spec, lam=0.4)
    loaded = oat.load(path)
    assert not loaded.conditioned and not loaded.training
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert (loaded(x, 0.9) - net(x, 0.4)).abs().max().item() <= deploy.TOLERANCE  # λ accepted, ignored
    assert main(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "written by oat export" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A one-epoch OAT run and a one-epoch dedicated (plain) run on the digits."""
    root = tmp_path_factory.mktemp("export_runs")
    config = Path(__file__).resolve().parent.parent / "configs" / "digits_oat.yaml"  # whatever the working directory
    common = ["--config", str(config), "--set", "train.epochs=1", "--quiet"]
    assert main(["train", *common, "--out", str(root / "oat")]) == 0
    assert main(["train", *common, "--out", str(root / "plain"), "--set", "model.conditioned=false",
                 "--set", "lambdas.sampler=fixed", "--set", "lambdas.params={value: 0.3}"]) == 0
    return root


@pytest.mark.parametrize("lam,name", [("0.3", "m.pt"), ("0.3", "m.pt2"), ("0.2", "m.ts"), ("0.3", "m.onnx"),
                                      ("input", "s.ts"), ("input", "s.onnx"), ("input", "s.pt2")])
def test_cli_export_writes_reads_back_and_reports_the_difference(runs, tmp_path, capsys, lam, name):
    if name.endswith(".onnx"):
        pytest.importorskip("onnxruntime")
    out = tmp_path / name
    assert main(["export", "--checkpoint", str(runs / "oat"), "--lambda", lam, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    difference = float(printed.out.rsplit(":", 1)[1])
    assert difference <= deploy.TOLERANCE and printed.err == ""
    fmt = {"pt": "pt", "pt2": "pt2", "ts": "torchscript", "onnx": "onnx"}[name.rsplit(".", 1)[1]]
    assert f"({fmt}, " in printed.out
    model = oat.load(runs / "oat")
    inputs = deploy.example_inputs(oat.export(model, "input"), (1, 8, 8), batch=5, seed=7)
    if lam != "input":
        inputs = inputs[:1]
    loaded = deploy.load_exported(out, fmt)
    assert deploy.max_difference(model, loaded, inputs, None if lam == "input" else float(lam)) <= deploy.TOLERANCE


def test_cli_export_of_a_plain_run_folds_and_refuses_to_serve(runs, tmp_path, capsys):
    out = tmp_path / "plain.pt"
    assert main(["export", "--checkpoint", str(runs / "plain"), "--lambda", "0.9", "--out", str(out)]) == 0
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(oat.load(out)(x), oat.load(runs / "plain")(x))
    assert main(["export", "--checkpoint", str(runs / "plain"), "--lambda", "input", "--out",
                 str(tmp_path / "s.ts")]) == 2
    assert "plain network" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--lambda", "1.5", "--out", "m.pt"], "--lambda takes one value"),
    (["--lambda", "0.1,0.2", "--out", "m.pt"], "--lambda takes one value"),
    (["--lambda", "input", "--out", "m.pt"], "choose --format pt2, torchscript or onnx"),
    (["--lambda", "0.3", "--out", "."], "is a directory"),
])
def test_cli_export_refuses_bad_input_in_one_line(runs, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--checkpoint", str(runs / "oat"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_cli_export_never_overwrites_a_runs_checkpoint_and_training_refuses_an_export(runs, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(runs / "oat", copy)
    before = (copy / "checkpoint.pt").read_bytes()
    for out in (copy / "checkpoint.pt", copy / "./checkpoint.pt"):
        assert main(["export", "--checkpoint", str(copy), "--lambda", "0.3", "--out", str(out)]) == 2
        assert "training checkpoint" in capsys.readouterr().err
    assert (copy / "checkpoint.pt").read_bytes() == before
    # An export put where a checkpoint belongs by hand: resuming says so in one line.
    assert main(["export", "--checkpoint", str(copy), "--lambda", "0.3", "--out", str(tmp_path / "m.pt")]) == 0
    shutil.copy(tmp_path / "m.pt", copy / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "written by oat export" in err and len(err.strip().splitlines()) == 1


def test_cli_export_refuses_an_unknown_format(runs, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--checkpoint", str(runs / "oat"), "--lambda", "0.3", "--out", "m.x", "--format", "tflite"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_cli_export_onnx_without_the_extra_says_how_to_install_it(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails as if absent
    assert main(["export", "--checkpoint", str(runs / "oat"), "--lambda", "0.3", "--out",
                 str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'oat[onnx]'" in capsys.readouterr().err


def test_an_evaluation_says_whether_pick_may_interpolate(runs, tmp_path):
    for run, expected in (("oat", True), ("plain", False)):
        out = tmp_path / f"{run}.json"
        assert main(["eval", "--checkpoint", str(runs / run), "--attacks", "fgsm", "--n", "10", "--lambdas", "0.3",
                     "--out", str(out), "--quiet"]) == 0
        result = __import__("json").loads(out.read_text())
        assert (result["continuous_lambda"], result["dual_bn"]) == (expected, expected)
