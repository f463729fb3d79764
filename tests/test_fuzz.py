"""Fuzz test: bad input to every ``oat`` subcommand fails cleanly.

For each of the cases below (configs, ``--set`` overrides, λ lists, attack names, paths,
checkpoints, npz and ImageFolder data, sweep configs, ``--shard``/``--workers`` …) the command must

* exit with code 2,
* print exactly one line on stderr, starting with ``oat: `` (``oat <command>: `` for argparse),
* print no traceback,
* name the offending key, flag, value or file in that line.

Every case runs in-process through :func:`oat.cli.main` (a real process costs seconds of torch
import); a handful also run as real ``python -m oat`` processes. Nothing here trains for more
than a few steps: every training case starts from a tiny config (97 training digits, one epoch,
one attack step), so a bad value that is accepted by mistake costs a fraction of a second.

Templates in a case's argv and expectations: ``{root}`` the repository, ``{bad}`` the shared
folder of bad files, ``{tiny}`` the tiny training config, ``{tmp}`` the case's own empty folder,
``{run}``/``{ckpt}`` a shared one-epoch digits run and its checkpoint, ``{derived}`` files made
from that run (tampered checkpoints, a copy of the run), ``{readonly}`` a folder nobody may write.

What each case must name: a config key as its dotted path (``optim.momentum``); inside the free-form
mappings (``objective.params``, ``model.options``, ``data.options``) the parameter's own name; a
flag as written (``--shard``); a file or folder by its path. ``OAT_FUZZ_SHOW=1 python -m pytest -s
tests/test_fuzz.py`` prints every case's exit code and stderr line.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from oat.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DIGITS = str(ROOT / "configs" / "digits_oat.yaml")
HAS_CUDA = torch.cuda.is_available()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
PREFIX = re.compile(r"^oat(?: [a-z]+)?: ")  # "oat: error: …", or argparse's "oat train: error: …"


# =============================================================================== cases
@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: tuple  # each item: a string that must appear, or a tuple of alternatives (one must appear)
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards (nothing trained)
    setup: str = ""  # "copy_run": copy the shared run to {tmp}/run first
    option: tuple[str, str] | None = None  # (command, flag): skip while the parser lacks the flag

    def templates(self) -> str:
        return " ".join([*self.argv, *(e if isinstance(e, str) else " ".join(e) for e in self.expect),
                         *self.absent, self.setup])

    @property
    def needs_run(self) -> bool:
        text = self.templates()
        return any(k in text for k in ("{run}", "{ckpt}", "{derived}", "copy_run"))


def _expect(expect) -> tuple:
    if isinstance(expect, (str, AnyOf)):
        expect = [expect]
    return tuple(tuple(e.options) if isinstance(e, AnyOf) else e for e in expect)


class AnyOf:
    """An expectation met by any one of several substrings."""

    def __init__(self, *options: str):
        self.options = options


def _sets(sets) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


# ---------------------------------------------------------------- oat train
def train_set(*sets, expect=None, id=None, config="{tiny}") -> Case:
    """``oat train --config tiny --set …``; by default the message must name the last key set."""
    key = sets[-1].split("=", 1)[0]
    return Case(id or f"train-set[{' '.join(sets)}]",
                ("train", "--config", config, *_sets(sets), "--out", "{tmp}/run", "--quiet"),
                _expect(expect if expect is not None else key))


def train_cmd(id, *args, expect, setup="") -> Case:
    return Case(f"train[{id}]", ("train", *args), _expect(expect), setup=setup)


UNKNOWN_KEYS = ["train.epoch=3", "train.batchsize=32", "train.seeds=1", "train.awp.gama=0.1",
                "optim.learning_rate=0.1", "optim.momentun=0.9", "data.nmae=digits", "data.opts={}",
                "model.nam=small_cnn", "model.conditional=true", "objective.parms={}", "attack.epsilon=0.1",
                "attack.step=3", "lambdas.sample=uniform", "lambdas.param={}", "schedule.milestone=[1]",
                "schedule.warmup=1", "eval.attack=[fgsm]", "eval.num=5", "foo=1"]

WRONG_TYPES = ["train.epochs=abc", "train.epochs=1.5", "train.batch_size=[32]", "train.seed=abc",
               "train.deterministic=2", "train.awp=3", "optim.lr=abc", "optim.lr=[0.1]", "optim.nesterov=2",
               "attack.steps=true", "attack.eps=abc", "model.name={a: 1}", "model.conditioned=maybe",
               "model.options=[1]", "data.name=[digits]", "data.options=x", "schedule.milestones=5",
               "schedule.gamma=[1]", "eval.attacks=pgd-20", "eval.n=abc", "lambdas.params=3",
               "objective.params=[1]", "train=3", "optim=sgd"]

NONSENSE = [
    "train.epochs=0", "train.epochs=-1", "train.batch_size=0", "train.batch_size=1",
    "optim.lr=0", "optim.lr=-1", "optim.lr=.nan", "optim.lr=.inf", "optim.momentum=-1", "optim.momentum=1.5",
    "optim.weight_decay=-1", "optim.name=rmsprop",
    "train.awp.gamma=-1", "train.awp.warmup_epochs=-1", "train.grad_clip=-1", "train.grad_clip=0",
    "train.device=tpu", "train.precision=fp8", "train.threads=0", "train.threads=-2", "train.workers=-1",
    "data.augment=rotate", "data.name=nope",
    "attack.eps=-0.1", "attack.eps=1.5", "attack.eps=.nan", "attack.eps=.inf", "attack.steps=0", "attack.steps=-3",
    "attack.alpha=-1", "attack.alpha=0",
    "lambdas.sampler=nope", "objective.name=nope", "schedule.name=nope",
    "schedule.gamma=-1", "schedule.warmup_epochs=-1", "schedule.milestones=[-1]",
    "eval.n=0", "eval.batch_size=0", "eval.eps=-1", "eval.lambdas=[2]", "eval.attacks=[pgd-x]", "eval.attacks=[]",
    "model.name=resnet43",
] + ([] if HAS_CUDA else ["train.device=cuda"])

TRAIN_CASES = [
    *(train_set(s) for s in UNKNOWN_KEYS),
    train_set("trian.epochs=1", expect="trian"),  # the unknown part is the section
    train_set("awp.gamma=0.1", expect="awp"),
    *(train_set(s) for s in WRONG_TYPES),
    *(train_set(s) for s in NONSENSE),
    train_set("eval.attacks=[fgsm, pgd-0]", expect="pgd-0"),
    train_set("lambdas.params={values: [0, 2]}", expect="lambdas.params"),
    train_set("lambdas.params={values: [0.5, 0.5]}", expect="lambdas.params"),
    train_set("lambdas.params={bogus: 1}", expect="bogus"),
    train_set("lambdas.sampler=beta", "lambdas.params={a: -1, b: 1}", expect="lambdas.params"),
    train_set("lambdas.sampler=beta", "lambdas.params={}", expect="lambdas.params"),
    train_set("lambdas.sampler=uniform", "lambdas.params={low: 0.8, high: 0.2}", expect="lambdas.params"),
    train_set("lambdas.sampler=uniform", "lambdas.params={zero_share: 2}", expect="lambdas.params"),
    train_set("lambdas.sampler=fixed", "lambdas.params={}", expect="lambdas.params"),
    train_set("lambdas.sampler=fixed", "lambdas.params={value: 1.5}", expect="lambdas.params"),
    train_set("objective.params={bogus: 1}", expect="bogus"),
    train_set("objective.name=mart", "objective.params={beta: -1}", expect="beta"),
    train_set("objective.name=trades", "objective.params={beta_max: 0}", expect="beta_max"),
    train_set("objective.name=mixed", "objective.params={mu: 2}", expect="mu"),
    train_set("objective.name=mixed", "objective.params={attack_kind: cw}", expect="attack_kind"),
    train_set("train.epochs=3", "schedule.name=multistep", "schedule.milestones=[500]", expect="schedule.milestones"),
    train_set("model.options={film_width: -1}", expect="film_width"),
    train_set("model.options={film_widht: 8}", expect="film_widht"),
    train_set("model.options={channels: [0, 8]}", expect="channels"),
    train_set("model.options={encoding: onehot}", expect="encoding"),
    # A continuous λ, which a categorical code cannot encode.
    train_set("lambdas.sampler=uniform", "lambdas.params={}", "model.options={encoding: categorical}",
              expect="model.options.encoding"),
    train_set("model.conditioned=false", "lambdas.sampler=reference", expect="model.conditioned"),
    train_set("data.options={bogus: 1}", expect="bogus"),
    train_set("data.options={test_size: 0}", expect="test_size"),
    train_set("data.name=cifar10", "data.options={}", "data.root={tmp}/data", "data.download=true",
              expect=AnyOf("data.download", "cifar10"), id="train-set[cifar10 download offline]"),
    # malformed overrides
    train_set("train.epochs", expect="train.epochs", id="train-set[no '=']"),
    train_set("train.epochs=[1", expect="train.epochs", id="train-set[invalid YAML value]"),
    train_set("=3", expect=AnyOf("=3", "''"), id="train-set[empty key]"),
    train_set("train..epochs=3", expect=AnyOf("train..epochs", "'train.'"), id="train-set[empty key part]"),
    train_set("train.epochs.x=3", expect="train.epochs", id="train-set[key below a value]"),
    # config files
    train_cmd("config missing", "--config", "{bad}/nowhere.yaml", "--out", "{tmp}/run", expect="{bad}/nowhere.yaml"),
    train_cmd("config is a directory", "--config", "{bad}/a_dir", "--out", "{tmp}/run", expect="{bad}/a_dir"),
    *(train_cmd(f"config {name}", "--config", f"{{bad}}/{name}", "--out", "{tmp}/run", "--quiet",
                expect=f"{{bad}}/{name}")
      for name in ("malformed.yaml", "list.yaml", "scalar.yaml", "binary.yaml", "tabs.yaml")),
    train_cmd("config section is a list", "--config", "{bad}/section_list.yaml", "--out", "{tmp}/run", "--quiet",
              expect="train"),
    train_cmd("config typo", "--config", "{bad}/typo.yaml", "--out", "{tmp}/run", "--quiet", expect="train.epoch"),
    train_cmd("config integer key", "--config", "{bad}/int_key.yaml", "--out", "{tmp}/run", "--quiet", expect="'1'"),
    # flags and run directories
    train_cmd("no --config", "--out", "{tmp}/run", "--quiet", expect="--config"),
    train_cmd("--resume without --out", "--resume", "--quiet", expect="--out"),
    train_cmd("--resume empty dir", "--resume", "--out", "{bad}/a_dir", "--quiet", expect="{bad}/a_dir"),
    train_cmd("--resume missing dir", "--resume", "--out", "{tmp}/nowhere", "--quiet", expect="{tmp}/nowhere"),
    train_cmd("--resume truncated checkpoint", "--resume", "--out", "{bad}/truncated_run", "--quiet",
              expect="{bad}/truncated_run"),
    train_cmd("--resume with --set", "--resume", "--out", "{tmp}/run", "--set", "optim.lr=0.5", "--quiet",
              expect="optim.lr", setup="copy_run"),
    train_cmd("--out holds a run", "--config", "{tiny}", "--out", "{derived}/run_copy", "--quiet",
              expect="{derived}/run_copy"),
    train_cmd("--out is a file", "--config", "{tiny}", "--out", "{bad}/existing.txt", "--quiet",
              expect="{bad}/existing.txt"),
    train_cmd("--out below a file", "--config", "{tiny}", "--out", "{bad}/existing.txt/run", "--quiet",
              expect="{bad}/existing.txt"),
    train_cmd("--out under /proc", "--config", "{tiny}", "--out", "/proc/oatfuzz/run", "--quiet",
              expect="/proc/oatfuzz"),
    train_cmd("--out read-only", "--config", "{tiny}", "--out", "{readonly}/run", "--quiet", expect="{readonly}"),
]


# ---------------------------------------------------------------- datasets: npz and ImageFolder
def npz_case(name, expect=None, options="", sets=()) -> Case:
    path = f"{{bad}}/npz/{name}.npz"
    argv = ("train", "--config", "{tiny}", "--set", "data.name=npz",
            "--set", "data.options={path: '" + path + "'" + options + "}", *_sets(sets),
            "--out", "{tmp}/run", "--quiet")
    return Case(f"npz[{name}{options}]", argv, _expect(expect if expect is not None else path))


def folder_case(name, expect=None, options="", id=None) -> Case:
    path = f"{{bad}}/folders/{name}"
    argv = ("train", "--config", "{tiny}", "--set", "data.name=imagefolder",
            "--set", "data.options={path: '" + path + "', image_size: 8" + options + "}",
            "--out", "{tmp}/run", "--quiet")
    return Case(id or f"imagefolder[{name}{options}]", argv, _expect(expect if expect is not None else path))


DATA_CASES = [
    *(npz_case(name) for name in ("missing_y", "x_range", "x_nan", "x_inf", "x_3d", "x_int32", "x_object",
                                  "y_length", "y_negative", "y_float", "y_bool", "y_2d", "one_class",
                                  "huge_label", "empty", "uint8_5ch", "not_zip", "single_array", "nowhere",
                                  "a_dir")),
    npz_case("few", expect="batch_size"),
    npz_case("ok", options=", test_path: '{bad}/npz/nowhere_test.npz'", expect="{bad}/npz/nowhere_test.npz"),
    npz_case("ok", options=", test_path: '{bad}/npz/x16.npz'", expect="{bad}/npz/x16.npz"),
    npz_case("ok", options=", num_classes: 1", expect="num_classes"),
    npz_case("ok", options=", test_fraction: 1.5", expect="test_fraction"),
    npz_case("ok", options=", augment: rotate", expect="augment"),
    npz_case("ok", options=", eps: 0.1", sets=("attack.eps=0.2",), expect=AnyOf("attack.eps", "data.options.eps")),
    Case("npz[no path option]", ("train", "--config", "{tiny}", "--set", "data.name=npz", "--set", "data.options={}",
                                 "--out", "{tmp}/run", "--quiet"), _expect("path")),
    *(folder_case(name) for name in ("empty", "one_class", "non_image", "nowhere", "a_file")),
    folder_case("corrupt", options=", test_path: '{bad}/folders/ok'", expect="broken.png"),
    folder_case("ok", options=", test_path: '{bad}/folders/other'", expect="{bad}/folders/other"),
    folder_case("ok", options=", image_size: 0", expect="image_size", id="imagefolder[image_size 0]"),
    folder_case("ok", options=", image_size: x", expect="image_size", id="imagefolder[image_size x]"),
]


# ---------------------------------------------------------------- oat eval
EVAL_DEFAULTS = {"--lambdas": "0.5", "--attacks": "fgsm", "--n": "16", "--out": "{tmp}/eval.json"}


def eval_case(id, *args, expect, checkpoint="{ckpt}", option=None) -> Case:
    """``oat eval`` of the shared run with cheap defaults, ``args`` replacing any of them."""
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    defaults = [x for flag, value in EVAL_DEFAULTS.items() if flag not in given for x in (flag, value)]
    argv = ("eval", "--checkpoint", checkpoint, *args, *defaults, "--quiet")
    return Case(f"eval[{id}]", argv, _expect(expect), option=option)


EVAL_CASES = [
    # checkpoints
    eval_case("checkpoint missing", checkpoint="{bad}/nowhere.pt", expect="{bad}/nowhere.pt"),
    eval_case("checkpoint dir without one", checkpoint="{bad}/a_dir", expect="{bad}/a_dir"),
    eval_case("checkpoint is a config", checkpoint="{tiny}", expect="{tiny}"),
    *(eval_case(f"checkpoint {name}", checkpoint=f"{{bad}}/{name}", expect=f"{{bad}}/{name}")
      for name in ("empty.pt", "text.pt", "plain_dict.pt", "list.pt", "truncated.pt", "no_spec.pt",
                   "smuggled.pt", "zip.pt", "tensor.pt")),
    *(eval_case(f"checkpoint {name}", checkpoint=f"{{derived}}/{name}", expect=f"{{derived}}/{name}")
      for name in ("truncated_real.pt", "wrong_weights.pt", "wrong_classes.pt", "unknown_model.pt", "no_eps.pt",
                   "config_not_mapping.pt", "no_epoch.pt")),
    eval_case("checkpoint unknown dataset", checkpoint="{derived}/unknown_dataset.pt",
              expect=["nope", AnyOf("{derived}/unknown_dataset.pt", "data.name")]),
    # λ lists
    *(eval_case(f"lambdas {text!r}", f"--lambdas={text}", expect="--lambdas")
      for text in ("", ",", " ", "a,b", "0,1.5", "-0.1", "nan", "inf", "1e400", "0.5;0.7", "0x1", "0.5,abc", "1,2,3")),
    # attack names
    *(eval_case(f"attacks {text!r}", f"--attacks={text}", expect=bad)
      for text, bad in [("", "--attacks"), (",", "--attacks"), ("pgd-0", "pgd-0"), ("pgd-x", "pgd-x"),
                        ("cw-", "cw-"), ("apgd-zz", "apgd-zz"), ("autoattack,foo", "foo"), ("pgd-20x0", "pgd-20x0"),
                        ("pgd--5", "pgd--5"), ("fgsm;pgd-20", "fgsm;pgd-20"), ("squares", "squares")]),
    # numbers
    *(eval_case(f"eps {text}", f"--eps={text}", expect="--eps") for text in ("-1", "nan", "inf", "-inf", "2")),
    *(eval_case(f"n {text}", f"--n={text}", expect="--n") for text in ("0", "-5")),
    *(eval_case(f"batch-size {text}", f"--batch-size={text}", expect="--batch-size") for text in ("0", "-1")),
    eval_case("threads 0", "--threads=0", expect="--threads", option=("eval", "--threads")),
    eval_case("threads -2", "--threads=-2", expect="--threads", option=("eval", "--threads")),
    # devices and outputs
    eval_case("device tpu", "--device=tpu", expect="tpu"),
    eval_case("device cpu:x", "--device=cpu:x", expect="cpu:x"),
    *([] if HAS_CUDA else [eval_case("device cuda", "--device=cuda", expect="cuda")]),
    eval_case("out is a directory", "--out={bad}/a_dir", expect="{bad}/a_dir"),
    eval_case("out below a file", "--out={bad}/existing.txt/eval.json", expect="{bad}/existing.txt"),
    eval_case("out under /proc", "--out=/proc/oatfuzz/eval.json", expect="/proc/oatfuzz"),
]


# ---------------------------------------------------------------- oat frontier
def frontier_case(id, sweep, *args, expect, untrained=False) -> Case:
    """``oat frontier`` with sweep ``{bad}/sweeps/<sweep>.yaml``; ``untrained``: nothing may train."""
    argv = ("frontier", "--config", f"{{bad}}/sweeps/{sweep}.yaml", "--out", "{tmp}/fr", *args, "--quiet")
    return Case(f"frontier[{id}]", argv, _expect(expect), absent=("{tmp}/fr/points",) if untrained else ())


def sweep_case(name, expect) -> Case:
    return frontier_case(f"sweep {name}", name, expect=expect, untrained=True)


FRONTIER_CASES = [
    frontier_case("config missing", "nowhere", expect="{bad}/sweeps/nowhere.yaml"),
    Case("frontier[config is a directory]", ("frontier", "--config", "{bad}/a_dir", "--out", "{tmp}/fr", "--quiet"),
         _expect("{bad}/a_dir")),
    *(sweep_case(name, f"{{bad}}/sweeps/{name}.yaml") for name in ("malformed", "list", "scalar", "binary", "empty")),
    sweep_case("no_base", "base"),
    sweep_case("base_int", "base"),
    sweep_case("base_nowhere", "nowhere.yaml"),
    sweep_case("base_dir", "a_dir"),
    sweep_case("base_list", "list.yaml"),
    sweep_case("base_typo", "train.epoch"),
    sweep_case("unknown_key", "fixed_lamda"),
    sweep_case("unknown_nested", "trades.beta"),
    sweep_case("fixed_lambda_list", "fixed_lambda"),
    *(sweep_case(name, "fixed_lambda.values")
      for name in ("lambda_1.5", "lambda_neg", "lambda_x", "lambda_nan", "lambda_null", "lambda_scalar")),
    sweep_case("lambda_dup", "0.1"),
    *(sweep_case(name, "trades.betas") for name in ("betas_neg", "betas_string", "betas_scalar")),
    sweep_case("beta_over_max", AnyOf("trades.betas", "trades.beta_max")),
    sweep_case("beta_max_zero", "trades.beta_max"),
    sweep_case("beta_max_neg", "trades.beta_max"),
    sweep_case("set_unknown", "train.epoch"),
    sweep_case("set_list", "set"),
    sweep_case("set_epochs_0", "train.epochs"),
    sweep_case("eval_attack", "pgd-x"),
    sweep_case("eval_no_attacks", "eval.attacks"),
    sweep_case("eval_attacks_str", "eval.attacks"),
    sweep_case("eval_n0", "eval.n"),
    sweep_case("eval_eps", "eval.eps"),
    sweep_case("eval_unknown_key", "eval.attack"),
    sweep_case("base_eval_attack", "pgd-x"),
    *(frontier_case(f"shard {text!r}", "ok", f"--shard={text}", expect="--shard", untrained=True)
      for text in ("0/3", "4/3", "x", "1/0", "1", "1/2/3", "-1/3", "a/b", "", "1.5/3")),
    *(frontier_case(f"workers {text}", "ok", f"--workers={text}", expect="--workers", untrained=True)
      for text in ("0", "-1")),
    frontier_case("--set unknown key", "ok", "--set", "train.epoch=3", expect="train.epoch", untrained=True),
    frontier_case("--set no '='", "ok", "--set", "train.epochs", expect="train.epochs", untrained=True),
    frontier_case("--set invalid YAML", "ok", "--set", "train.epochs=[1", expect="train.epochs", untrained=True),
    frontier_case("--set nonsense", "ok", "--set", "optim.momentum=-1", expect="optim.momentum", untrained=True),
    frontier_case("--set resnet43", "ok", "--set", "model.name=resnet43", expect="model.name", untrained=True),
    Case("frontier[--out is a file]", ("frontier", "--config", "{bad}/sweeps/ok.yaml", "--out", "{bad}/existing.txt",
                                       "--quiet"), _expect("{bad}/existing.txt")),
    Case("frontier[--out under /proc]", ("frontier", "--config", "{bad}/sweeps/ok.yaml", "--out", "/proc/oatfuzz/fr",
                                         "--quiet"), _expect("/proc/oatfuzz")),
]


# ---------------------------------------------------------------- oat plot and oat demo
def plot_case(id, *args, expect) -> Case:
    return Case(f"plot[{id}]", ("plot", *args), _expect(expect))


PLOT_CASES = [
    plot_case("dir missing", "{bad}/nowhere", "--out", "{tmp}/p.png", expect="{bad}/nowhere"),
    plot_case("a file", "{bad}/existing.txt", "--out", "{tmp}/p.png", expect="{bad}/existing.txt"),
    plot_case("empty dir", "{bad}/a_dir", "--out", "{tmp}/p.png", expect="{bad}/a_dir"),
    *(plot_case(name, f"{{bad}}/plots/{name}", "--out", "{tmp}/p.png", expect=f"{{bad}}/plots/{name}/{file}")
      for name, file in [("frontier_invalid", "frontier.json"), ("frontier_list", "frontier.json"),
                         ("frontier_empty", "frontier.json"), ("frontier_no_keys", "frontier.json"),
                         ("frontier_row_keys", "frontier.json"), ("frontier_is_dir", "frontier.json"),
                         ("eval_invalid", "eval.json"), ("eval_list", "eval.json"), ("eval_no_points", "eval.json"),
                         ("eval_row_keys", "eval.json"), ("config_invalid", "config.yaml")]),
    plot_case("two OAT runs", "{run}", "{derived}/run_copy", "--out", "{tmp}/p.png", expect="{derived}/run_copy"),
    plot_case("--out under /proc", "{run}", "--out", "/proc/oatfuzz/plot.png", expect="/proc/oatfuzz"),
    plot_case("--out below a file", "{run}", "--out", "{bad}/existing.txt/plot.png", expect="{bad}/existing.txt"),
]

DEMO_CASES = [
    Case("demo[workers 0]", ("demo", "--out", "{tmp}/demo", "--workers", "0"), _expect("--workers")),
    Case("demo[workers -1]", ("demo", "--out", "{tmp}/demo", "--workers=-1"), _expect("--workers")),
    Case("demo[--out is a file]", ("demo", "--out", "{bad}/existing.txt", "--workers", "1"),
         _expect("{bad}/existing.txt")),
    Case("demo[--out below a file]", ("demo", "--out", "{bad}/existing.txt/demo", "--workers", "1"),
         _expect("{bad}/existing.txt")),
    Case("demo[--out under /proc]", ("demo", "--out", "/proc/oatfuzz/demo", "--workers", "1"),
         _expect("/proc/oatfuzz")),
]


# ---------------------------------------------------------------- oat bench
# Comparison configs: a tiny valid base with one thing wrong each (nothing may train).
_BENCH_OK = {"base": {"data": {"name": "digits"}, "train": {"epochs": 1}, "attack": {"steps": 1},
                      "eval": {"attacks": ["fgsm"], "n": 16}},
             "fixed_lambda": {"values": [0.0]}, "trades": {"betas": []}}
BENCHES = {
    "unknown_key": {**_BENCH_OK, "lambda": [0.5]},
    "lambdas_out_of_range": {**_BENCH_OK, "lambdas": [0.0, 1.5]},
    "lambdas_not_numbers": {**_BENCH_OK, "lambdas": ["a"]},
    "aa_unknown_model": {**_BENCH_OK, "autoattack": {"n": 8, "models": ["lambda-7"]}},
    "aa_zero_n": {**_BENCH_OK, "autoattack": {"n": 0, "models": []}},
    "base_momentum": {**_BENCH_OK, "base": {**_BENCH_OK["base"], "optim": {"momentum": -1}}},
    "base_typo": {**_BENCH_OK, "base": {**_BENCH_OK["base"], "trian": {"epochs": 1}}},
    "oat_bad_key": {**_BENCH_OK, "oat": {"lambdas.sampler": "nope"}},
    "base_bad_attack": {**_BENCH_OK, "base": {**_BENCH_OK["base"], "eval": {"attacks": ["pgd-x"]}}},
}
_BENCH_EXPECT = {"unknown_key": "'lambda'", "lambdas_out_of_range": "lambdas", "lambdas_not_numbers": "lambdas",
                 "aa_unknown_model": "autoattack.models", "aa_zero_n": "autoattack.n", "base_momentum": "optim.momentum",
                 "base_typo": "trian", "oat_bad_key": "lambdas.sampler", "base_bad_attack": "eval.attacks"}


def bench_case(name: str) -> Case:
    return Case(f"bench[{name}]", ("bench", f"{{bad}}/bench/{name}.yaml", "--out", "{tmp}/b", "--workers", "1",
                                   "--quiet"), _expect(_BENCH_EXPECT[name]), absent=("{tmp}/b/oat",))


BENCH_CASES = [
    *(bench_case(name) for name in BENCHES),
    Case("bench[unknown dataset]", ("bench", "cifar10"), _expect("cifar10")),
    Case("bench[unknown preset]", ("bench", "fashion-mnist", "--preset", "tpu"), _expect("tpu")),
    Case("bench[workers 0]", ("bench", "fashion-mnist", "--workers", "0"), _expect("--workers")),
    Case("bench[malformed]", ("bench", "{bad}/malformed.yaml"), _expect("{bad}/malformed.yaml")),
    Case("bench[binary]", ("bench", "{bad}/binary.yaml"), _expect("{bad}/binary.yaml")),
    Case("bench[--out is a file]", ("bench", "{bad}/bench/ok.yaml", "--out", "{bad}/existing.txt", "--workers", "1"),
         _expect("{bad}/existing.txt")),
]


# ---------------------------------------------------------------- argparse (top level and flags)
def cli_case(id, *argv, expect) -> Case:
    return Case(f"argparse[{id}]", argv, _expect(expect))


ARGPARSE_CASES = [
    cli_case("unknown command", "trian", expect="trian"),
    cli_case("unknown top-level flag", "--bogus", expect="--bogus"),
    cli_case("train --bogus-flag", "train", "--config", "{tiny}", "--bogus-flag", expect="--bogus-flag"),
    cli_case("train positional", "train", "extra_positional", expect="extra_positional"),
    cli_case("train --config without value", "train", "--config", expect="--config"),
    cli_case("eval without --checkpoint", "eval", expect="--checkpoint"),
    cli_case("eval --n without value", "eval", "--checkpoint", "{bad}/nowhere.pt", "--n", expect="--n"),
    cli_case("eval --n x", "eval", "--checkpoint", "{bad}/nowhere.pt", "--n", "x", expect="--n"),
    cli_case("eval --eps abc", "eval", "--checkpoint", "{bad}/nowhere.pt", "--eps", "abc", expect="--eps"),
    cli_case("eval --seed x", "eval", "--checkpoint", "{bad}/nowhere.pt", "--seed", "x", expect="--seed"),
    cli_case("eval --batch-size 1.5", "eval", "--checkpoint", "{bad}/nowhere.pt", "--batch-size", "1.5",
             expect="--batch-size"),
    cli_case("frontier without --config", "frontier", expect="--config"),
    cli_case("frontier --workers two", "frontier", "--config", "{bad}/sweeps/ok.yaml", "--workers", "two",
             expect="--workers"),
    cli_case("plot without DIR", "plot", expect="DIR"),
    cli_case("demo --workers x", "demo", "--workers", "x", expect="--workers"),
]

CASES = (TRAIN_CASES + DATA_CASES + EVAL_CASES + FRONTIER_CASES + PLOT_CASES + DEMO_CASES + BENCH_CASES
         + ARGPARSE_CASES)
BY_ID = {case.id: case for case in CASES}
assert len(BY_ID) == len(CASES), sorted({c.id for c in CASES if sum(d.id == c.id for d in CASES) > 1})

# A few of them again as real processes: the real exit code and stderr, nothing swallowed by pytest.
SUBPROCESS_IDS = [
    "train[config missing]", "train-set[optim.momentum=-1]", "train-set[train.epoch=3]", "npz[x_nan]",
    "eval[checkpoint truncated.pt]", "eval[lambdas '0,1.5']", "eval[attacks 'pgd-x']",
    "frontier[shard '4/3']", "plot[dir missing]", "demo[workers 0]", "argparse[eval without --checkpoint]",
]
assert set(SUBPROCESS_IDS) <= set(BY_ID), set(SUBPROCESS_IDS) - set(BY_ID)


# =============================================================================== bad files
TINY = {
    # 1797 − 1700 = 97 training digits: three batches of 32, one epoch, one attack step.
    "data": {"name": "digits", "options": {"test_size": 1700}},
    "model": {"name": "small_cnn", "conditioned": True, "options": {"channels": [8, 8]}},
    "objective": {"name": "pgd"},
    "attack": {"eps": 0.3, "steps": 1},
    "lambdas": {"sampler": "reference", "params": {"values": [0.0, 0.5, 1.0]}},
    "optim": {"name": "sgd", "lr": 0.05},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 1, "batch_size": 32, "seed": 0, "device": "cpu"},
    "eval": {"attacks": ["fgsm"], "n": 16},
}
SWEEP_OK = {"base": "../tiny.yaml", "fixed_lambda": {"values": [0.0]}, "trades": {"betas": []},
            "eval": {"attacks": ["fgsm"], "n": 16}}


def _with(original: dict, /, **changes) -> dict:
    data = copy.deepcopy(original)
    for key, value in changes.items():
        if value is _DROP:
            data.pop(key)
        else:
            data[key] = value
    return data


_DROP = object()

SWEEPS = {
    "ok": SWEEP_OK,
    "no_base": _with(SWEEP_OK, base=_DROP),
    "base_int": _with(SWEEP_OK, base=3),
    "base_nowhere": _with(SWEEP_OK, base="nowhere.yaml"),
    "base_dir": _with(SWEEP_OK, base="../a_dir"),
    "base_list": _with(SWEEP_OK, base="../list.yaml"),
    "base_typo": _with(SWEEP_OK, base="../typo.yaml"),
    "unknown_key": {**_with(SWEEP_OK, fixed_lambda=_DROP), "fixed_lamda": {"values": [0.0]}},
    "unknown_nested": _with(SWEEP_OK, trades={"beta": [1.0]}),
    "fixed_lambda_list": _with(SWEEP_OK, fixed_lambda=[0.1]),
    "lambda_1.5": _with(SWEEP_OK, fixed_lambda={"values": [1.5]}),
    "lambda_neg": _with(SWEEP_OK, fixed_lambda={"values": [-0.1]}),
    "lambda_x": _with(SWEEP_OK, fixed_lambda={"values": ["x"]}),
    "lambda_nan": _with(SWEEP_OK, fixed_lambda={"values": [float("nan")]}),
    "lambda_null": _with(SWEEP_OK, fixed_lambda={"values": [None]}),
    "lambda_scalar": _with(SWEEP_OK, fixed_lambda={"values": 0.3}),
    "lambda_dup": _with(SWEEP_OK, fixed_lambda={"values": [0.1, 0.1]}),
    "betas_neg": _with(SWEEP_OK, trades={"betas": [-1.0], "beta_max": 6.0}),
    "betas_string": _with(SWEEP_OK, trades={"betas": ["a"], "beta_max": 6.0}),
    "betas_scalar": _with(SWEEP_OK, trades={"betas": 3.0}),
    "beta_over_max": _with(SWEEP_OK, trades={"betas": [20.0], "beta_max": 10.0}),
    "beta_max_zero": _with(SWEEP_OK, trades={"betas": [0.0], "beta_max": 0.0}),
    "beta_max_neg": _with(SWEEP_OK, trades={"betas": [1.0], "beta_max": -5.0}),
    "set_unknown": _with(SWEEP_OK, set={"train.epoch": 3}),
    "set_list": _with(SWEEP_OK, set=[1, 2]),
    "set_epochs_0": _with(SWEEP_OK, set={"train.epochs": 0}),
    "eval_attack": _with(SWEEP_OK, eval={"attacks": ["pgd-x"], "n": 16}),
    "eval_no_attacks": _with(SWEEP_OK, eval={"attacks": [], "n": 16}),
    "eval_attacks_str": _with(SWEEP_OK, eval={"attacks": "fgsm", "n": 16}),
    "eval_n0": _with(SWEEP_OK, eval={"attacks": ["fgsm"], "n": 0}),
    "eval_eps": _with(SWEEP_OK, eval={"attacks": ["fgsm"], "n": 16, "eps": -1.0}),
    "eval_unknown_key": _with(SWEEP_OK, eval={"attack": ["fgsm"], "n": 16}),
    # no eval section of its own: the base config's eval.attacks names an unknown attack
    "base_eval_attack": _with(SWEEP_OK, eval=_DROP, set={"eval.attacks": ["pgd-x"], "eval.n": 16}),
}
RAW_SWEEPS = {"malformed": "base: [tiny.yaml\n", "list": "- base\n- fixed_lambda\n", "scalar": "hello\n",
              "empty": ""}


def _write_npz(directory: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8), dtype=np.float32)
    y = np.arange(40) % 2

    def save(name, **arrays):
        np.savez(directory / f"{name}.npz", **arrays)

    save("ok", x=x, y=y)
    save("x16", x=rng.random((10, 1, 16, 16), dtype=np.float32), y=np.arange(10) % 2)
    save("missing_y", x=x)
    save("x_range", x=x * 3, y=y)
    x_nan, x_inf = x.copy(), x.copy()
    x_nan[0, 0, 0, 0], x_inf[1, 0, 2, 2] = np.nan, np.inf
    save("x_nan", x=x_nan, y=y)
    save("x_inf", x=x_inf, y=y)
    save("x_3d", x=x[:, 0], y=y)
    save("x_int32", x=(x * 255).astype(np.int32), y=y)
    objects = np.empty(40, dtype=object)
    objects[:] = [{"pixel": i} for i in range(40)]
    save("x_object", x=objects, y=y)
    save("y_length", x=x, y=y[:-1])
    save("y_negative", x=x, y=np.where(np.arange(40) == 0, -1, y))
    save("y_float", x=x, y=y.astype(np.float32))
    save("y_bool", x=x, y=y.astype(bool))
    save("y_2d", x=x, y=y[:, None])
    save("one_class", x=x, y=np.zeros(40, dtype=np.int64))
    save("huge_label", x=x, y=np.where(np.arange(40) == 0, 10**9, y))
    save("empty", x=x[:0], y=y[:0])
    save("uint8_5ch", x=(rng.random((40, 8, 8, 5)) * 255).astype(np.uint8), y=y)
    save("few", x=x[:3], y=np.array([0, 1, 0]))
    (directory / "not_zip.npz").write_text("these are not the arrays you are looking for\n")
    with open(directory / "single_array.npz", "wb") as handle:
        np.save(handle, x)
    (directory / "a_dir.npz").mkdir()


def _write_folders(directory: Path) -> None:
    from PIL import Image

    def images(folder: Path, count: int, shade: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (shade, 255 - shade, (i * 40) % 256)).save(folder / f"{i}.png")

    (directory / "empty").mkdir(parents=True)
    images(directory / "one_class" / "a", 10, 30)
    images(directory / "non_image" / "a", 10, 30)
    (directory / "non_image" / "b").mkdir()
    (directory / "non_image" / "b" / "notes.txt").write_text("not an image\n")
    images(directory / "corrupt" / "a", 10, 30)
    images(directory / "corrupt" / "b", 10, 200)
    (directory / "corrupt" / "b" / "broken.png").write_text("not a PNG\n")
    for tree, classes in (("ok", "ab"), ("other", "ac")):
        for k, name in enumerate(classes):
            images(directory / tree / name, 10, 30 + 150 * k)
    (directory / "a_file").write_text("a file, not a tree\n")


def _write_plots(directory: Path) -> None:
    oat_config = "model: {name: small_cnn, conditioned: true}\n"
    row = {"name": "lambda-0", "kind": "fixed_lambda", "value": 0.0, "lambda": 0.0}
    layouts = {
        "frontier_invalid": {"frontier.json": "{not json"},
        "frontier_list": {"frontier.json": "[1, 2]"},
        "frontier_empty": {"frontier.json": ""},
        "frontier_no_keys": {"frontier.json": "{}"},
        "frontier_row_keys": {"frontier.json": json.dumps({"protocol": {}, "points": [row], "missing": []})},
        "eval_invalid": {"config.yaml": oat_config, "eval.json": "{bad"},
        "eval_list": {"config.yaml": oat_config, "eval.json": "[]"},
        "eval_no_points": {"config.yaml": oat_config, "eval.json": "{}"},
        "eval_row_keys": {"config.yaml": oat_config, "eval.json": json.dumps({"points": [{"lambda": 0.0}]})},
        "config_invalid": {"config.yaml": "model: [1\n", "eval.json": json.dumps({"points": []})},
    }
    for name, files in layouts.items():
        (directory / name).mkdir(parents=True)
        for file, text in files.items():
            (directory / name / file).write_text(text)
    (directory / "frontier_is_dir" / "frontier.json").mkdir(parents=True)


def _write_checkpoints(directory: Path) -> None:
    (directory / "empty.pt").write_bytes(b"")
    (directory / "text.pt").write_text("not a checkpoint\n")
    torch.save({"a": 1}, directory / "plain_dict.pt")
    torch.save([1, 2, 3], directory / "list.pt")
    torch.save(torch.zeros(3), directory / "tensor.pt")
    torch.save({"model": {}, "config": {}}, directory / "no_spec.pt")
    full = directory / "full.pt"
    torch.save({"model": {"w": torch.randn(20_000)}, "config": {}}, full)
    (directory / "truncated.pt").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (directory / "truncated_run").mkdir()
    (directory / "truncated_run" / "checkpoint.pt").write_bytes(full.read_bytes()[:1000])
    with zipfile.ZipFile(directory / "zip.pt", "w") as archive:
        archive.writestr("hello.txt", "a zip, but not torch's")

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": {}, "config": {}, "x": Payload()}, directory / "smuggled.pt")


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """Every bad file and folder the cases point at."""
    directory = tmp_path_factory.mktemp("bad")
    (directory / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    (directory / "malformed.yaml").write_text("train: [1, 2\n")
    (directory / "list.yaml").write_text("- data\n- model\n")
    (directory / "scalar.yaml").write_text("hello\n")
    (directory / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81garbage\x00\xc3")
    (directory / "tabs.yaml").write_text("train:\n\tepochs: 1\n")
    (directory / "section_list.yaml").write_text("train: [1, 2]\n")
    (directory / "typo.yaml").write_text("train:\n  epoch: 3\n")
    (directory / "int_key.yaml").write_text("1: 2\n")
    (directory / "existing.txt").write_text("a regular file\n")
    (directory / "a_dir").mkdir()
    for sub in ("npz", "folders", "plots", "sweeps", "bench"):
        (directory / sub).mkdir()
    for name, data in {**BENCHES, "ok": _BENCH_OK}.items():
        (directory / "bench" / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    _write_npz(directory / "npz")
    _write_folders(directory / "folders")
    _write_plots(directory / "plots")
    _write_checkpoints(directory)
    for name, data in SWEEPS.items():
        (directory / "sweeps" / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for name, text in RAW_SWEEPS.items():
        (directory / "sweeps" / f"{name}.yaml").write_text(text)
    (directory / "sweeps" / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81")
    readonly = directory / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    yield directory
    readonly.chmod(0o755)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-epoch digits run (with eval.json), a copy of it, and checkpoints tampered from it."""
    directory = tmp_path_factory.mktemp("trained")
    run = directory / "run"
    assert main(["train", "--config", DIGITS, "--set", "train.epochs=1", "--set", "attack.steps=1",
                 "--set", "eval.attacks=[fgsm]", "--set", "eval.n=16", "--out", str(run), "--quiet"]) == 0
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--lambdas", "0,0.5,1",
                 "--out", str(run / "eval.json"), "--quiet"]) == 0
    derived = directory / "derived"
    derived.mkdir()
    shutil.copytree(run, derived / "run_copy")
    checkpoint = run / "checkpoint.pt"
    (derived / "truncated_real.pt").write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")

    def tampered(name, change):
        copied = copy.deepcopy(state)
        change(copied)
        torch.save(copied, derived / name)

    tampered("wrong_weights.pt", lambda s: s["model"].pop(next(iter(s["model"]))))
    tampered("wrong_classes.pt", lambda s: s["model_spec"].update(num_classes=3))
    tampered("unknown_model.pt", lambda s: s["model_spec"].update(name="resnet43"))
    tampered("unknown_dataset.pt", lambda s: s["config"]["data"].update(name="nope"))
    tampered("no_eps.pt", lambda s: s.pop("eps"))
    tampered("no_epoch.pt", lambda s: s.pop("epoch"))
    tampered("config_not_mapping.pt", lambda s: s.update(config="x"))
    return run


def _context(case: Case, request, bad: Path, tmp: Path) -> dict[str, str]:
    context = {"root": str(ROOT), "bad": str(bad), "tiny": str(bad / "tiny.yaml"), "tmp": str(tmp),
               # root ignores file modes: /sys refuses every new entry, even to root
               "readonly": "/sys/oatfuzz" if IS_ROOT else str(bad / "readonly")}
    if case.needs_run:
        run = request.getfixturevalue("trained")
        context.update(run=str(run), ckpt=str(run / "checkpoint.pt"), derived=str(run.parent / "derived"))
    return context


def _fill(text: str, context: dict[str, str]) -> str:
    for key, value in context.items():
        text = text.replace("{" + key + "}", value)
    return text


def _prepare(case: Case, request, bad: Path, tmp: Path) -> tuple[list[str], list, list[str]]:
    if case.option and not _has_option(*case.option):
        pytest.skip(f"oat {case.option[0]} has no {case.option[1]} option (yet)")
    context = _context(case, request, bad, tmp)
    if case.setup == "copy_run":
        shutil.copytree(context["run"], tmp / "run")
    argv = [_fill(a, context) for a in case.argv]
    expect = [_fill(e, context) if isinstance(e, str) else tuple(_fill(o, context) for o in e) for e in case.expect]
    absent = [_fill(a, context) for a in case.absent]
    return argv, expect, absent


def _has_option(command: str, flag: str) -> bool:
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return flag in sub.choices[command]._option_string_actions


# =============================================================================== the checks
def _check(case: Case, code, err: str, expect: list, absent: list[str]) -> None:
    lines = err.strip().splitlines()
    where = f"{case.id}: exit code {code}, stderr {err[:600]!r}"
    assert "Traceback" not in err, where
    assert code == 2, where
    assert len(lines) == 1, f"{where} ({len(lines)} lines)"
    assert PREFIX.match(lines[0]), where
    for item in expect:
        options = (item,) if isinstance(item, str) else item
        assert any(o in lines[0] for o in options), f"{where}: names none of {options}"
    for path in absent:
        assert not Path(path).exists(), f"{case.id}: {path} was created: it trained before refusing"


def _exit_code(error: SystemExit):
    if error.code is None:
        return 0
    return error.code if isinstance(error.code, int) else 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly(case, request, bad, tmp_path, capsys, monkeypatch):
    argv, expect, absent = _prepare(case, request, bad, tmp_path)
    monkeypatch.chdir(tmp_path)  # default output paths land in the case's own folder
    threads = torch.get_num_threads()
    try:
        code = main(argv)
    except SystemExit as error:  # argparse
        code = _exit_code(error)
        if isinstance(error.code, str):
            print(error.code, file=sys.stderr)
    except BaseException as error:  # noqa: BLE001 - anything else escaping main() is the bug
        err = capsys.readouterr().err
        first = (str(error).strip().splitlines() or [""])[0]
        pytest.fail(f"{case.id}: {type(error).__name__} escaped main(): {first[:300]} (stderr {err[:200]!r})",
                    pytrace=False)
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    if os.environ.get("OAT_FUZZ_SHOW"):
        with capsys.disabled():
            print(f"\nSHOW {case.id} :: {code} :: {err.strip()[:300]}")
    _check(case, code, err, expect, absent)


@pytest.fixture(scope="module")
def real_processes(request, bad, tmp_path_factory) -> dict[str, tuple]:
    """Run :data:`SUBPROCESS_IDS` as real ``python -m oat`` processes, two at a time."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pending, running, results = list(SUBPROCESS_IDS), [], {}
    while pending or running:
        while pending and len(running) < 2:
            case = BY_ID[pending.pop(0)]
            try:
                argv, expect, absent = _prepare(case, request, bad, tmp_path_factory.mktemp("proc"))
            except Exception as error:  # e.g. the shared run failed to train: that case's test reports it
                results[case.id] = error
                continue
            process = subprocess.Popen([sys.executable, "-m", "oat", *argv], cwd=ROOT, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            running.append((case, process, expect, absent))
        case, process, expect, absent = running.pop(0)
        try:
            _, err = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            err = f"(killed after 180 s) {err}"
        results[case.id] = (process.returncode, err, expect, absent)
    return results


@pytest.mark.parametrize("case_id", SUBPROCESS_IDS)
def test_real_process_fails_cleanly(case_id, real_processes):
    if isinstance(real_processes[case_id], Exception):
        raise real_processes[case_id]
    code, err, expect, absent = real_processes[case_id]
    _check(BY_ID[case_id], code, err, expect, absent)


def test_enough_cases_across_every_command():
    assert len(CASES) >= 150
    commands = {case.argv[0] for case in CASES}
    assert {"train", "eval", "frontier", "plot", "demo", "bench"} <= commands
