"""Checkpoints: atomic writes, safe loads, clear refusals."""

import builtins
import errno
import io
import json
import os
import pickle
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import oat.runs
from oat.checkpoint import CheckpointError, load_checkpoint, remove_orphans, save_checkpoint, write_text_atomic
from oat.runs import _state_dict_covers, load_run
from oat.runs import build_model

ROOT = Path(__file__).resolve().parents[1]


def _state():
    return {"model": {"w": torch.arange(4.0)}, "config": {"train": {"epochs": 1}}, "epoch": 1}


def _realistic_state():
    """A checkpoint shaped like the trainer's: weights, optimiser state, config, spec."""
    generator = torch.Generator().manual_seed(0)
    weights = {"convs.0.weight": torch.randn(32, 1, 3, 3, generator=generator),
               "classifier.5.weight": torch.randn(10, 64, generator=generator),
               "norms.0.num_batches_tracked": torch.tensor(5)}
    return {"model": weights,
            "optimizer": {"state": {0: {"momentum_buffer": torch.randn(32, 1, 3, 3, generator=generator)}},
                          "param_groups": [{"lr": 0.1, "params": [0]}]},
            "config": {"train": {"epochs": 1}, "data": {"name": "digits"}}, "epoch": 1, "eps": 0.3,
            "train_lambdas": [0.0, 0.1],
            "model_spec": {"name": "small_cnn", "num_classes": 10, "conditioned": True, "input_shape": [1, 8, 8],
                           "options": {"mean": [0.5], "std": [0.5]}}}


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(_state(), path)
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.arange(4.0)) and state["epoch"] == 1
    assert torch.load(path, weights_only=True)["format_version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    before = path.read_bytes()

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"model": {}, "config": {}, "bad": Unsaveable()}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


class Smuggled:
    def __reduce__(self):
        return (print, ("this would have run on load",))


def test_a_checkpoint_that_smuggles_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Smuggled()}, path)
    with pytest.raises(CheckpointError, match="refusing .*pickled Python objects"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Smuggled()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)


def test_truncated_and_foreign_files_get_clear_errors(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(empty)
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not an oat checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


# --- writes: real file-system errors, unique temporaries, orphans -------------------------------

_SAVE_A_BIG_CHECKPOINT = textwrap.dedent("""
    import json, sys, torch
    from oat.checkpoint import save_checkpoint
    try:
        save_checkpoint({"model": {"w": torch.zeros(1_000_000)}, "config": {}}, sys.argv[1])  # 4 MB
    except OSError as error:
        print(json.dumps({"type": type(error).__name__, "errno": error.errno, "filename": error.filename}))
""")


def test_a_file_size_limit_is_a_real_efbig_and_the_previous_checkpoint_survives(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    before = path.read_bytes()
    limit = 256 * 1024  # above the small checkpoint, far below the 4 MB one

    def limit_file_size():  # in the child: write(2) past the limit fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    child = subprocess.run([sys.executable, "-c", _SAVE_A_BIG_CHECKPOINT, str(path)], cwd=ROOT,
                           preexec_fn=limit_file_size, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == {"type": "OSError", "errno": errno.EFBIG, "filename": str(path)}
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # the temporary is gone


def test_text_writers_never_share_a_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    texts = [letter * 100_000 for letter in "abcd"]  # big enough for the writes to overlap
    errors = []

    def write(text):
        try:
            for _ in range(30):
                write_text_atomic(path, text)
        except OSError as error:  # with one fixed temporary name: FileNotFoundError on the rename
            errors.append(error)

    threads = [threading.Thread(target=write, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert path.read_text() in texts
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_a_failed_text_write_removes_its_temporary(tmp_path):
    target = tmp_path / "config.yaml"
    target.mkdir()  # the rename over a directory fails after the temporary was written
    with pytest.raises(IsADirectoryError):
        write_text_atomic(target, "train: {}\n")
    assert os.listdir(tmp_path) == ["config.yaml"] and target.is_dir()


def test_atomic_writes_get_the_permissions_of_an_ordinary_new_file(tmp_path):
    ordinary = tmp_path / "ordinary"
    ordinary.write_text("")
    write_text_atomic(tmp_path / "config.yaml", "x: 1\n")
    save_checkpoint(_state(), tmp_path / "checkpoint.pt")
    expected = ordinary.stat().st_mode & 0o777
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == expected
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == expected
    assert (tmp_path / "config.yaml").read_text() == "x: 1\n"


def test_remove_orphans_removes_only_the_temporaries_of_atomic_writes(tmp_path):
    orphans = [tmp_path / ".checkpoint.pt.a1b2c3d4.tmp", tmp_path / ".metrics.jsonl.x9_y8z7w.tmp",
               tmp_path / ".config.yaml.00000000.tmp"]
    kept = [tmp_path / name for name in ("checkpoint.pt", "notes.tmp", ".hidden", ".checkpoint.pt.tmp",
                                         ".checkpoint.pt.short.tmp", ".checkpoint.pt.UPPERCAS.tmp",
                                         "checkpoint.pt.a1b2c3d4.tmp", ".checkpoint.pt.a1b2c3d4.tmp.bak")]
    for file in orphans + kept:
        file.write_bytes(b"\0" * 10)
    (tmp_path / ".run.abcdefgh.tmp").mkdir()  # a directory is no temporary of ours
    assert remove_orphans(tmp_path) == sorted(orphans)
    assert sorted(os.listdir(tmp_path)) == sorted([".run.abcdefgh.tmp"] + [file.name for file in kept])
    assert remove_orphans(tmp_path) == []


_SAVE_FOREVER = textwrap.dedent("""
    import sys, torch
    from oat.checkpoint import save_checkpoint
    weights = torch.arange(1_250_000, dtype=torch.float32)  # 5 MB
    epoch = 0
    while True:
        epoch += 1
        save_checkpoint({"model": {"w": weights}, "config": {}, "epoch": epoch}, sys.argv[1])
        if epoch == 1:
            print("saved", flush=True)
""")


def test_sigkill_mid_write_leaves_the_last_checkpoint_and_orphans_that_remove_orphans_clears(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rng = random.Random(0)
    for _ in range(5):
        writer = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(path)], cwd=ROOT, stdout=subprocess.PIPE)
        try:
            assert writer.stdout.readline() == b"saved\n"
            time.sleep(rng.uniform(0.3, 1.0))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer.stdout.close()
    leftovers = sorted(tmp_path.glob(".checkpoint.pt.*.tmp"))  # kills that landed mid-write (maybe none)
    assert remove_orphans(tmp_path) == leftovers
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.arange(1_250_000, dtype=torch.float32)) and state["epoch"] >= 1


# --- loads: smuggled objects versus damaged files ---------------------------------------------

class Payload:
    """Pickles as a call of ``function(*args)``: it runs on unpickling."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


class JustAnObject:
    pass


def _payloads(marker: Path, source: Path) -> dict:
    """Objects whose unpickling creates ``marker`` (code execution), and references to classes."""
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "subprocess.call": Payload(subprocess.call, ["touch", str(marker)]),
        "exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "open": Payload(builtins.open, str(marker), "w"),
        "shutil.copyfile": Payload(shutil.copyfile, str(source), str(marker)),
    }


def _formats(obj) -> dict[str, bytes]:
    def saved(**options):
        buffer = io.BytesIO()
        torch.save({"model": {"w": torch.zeros(2)}, "config": {}, "extra": obj}, buffer, **options)
        return buffer.getvalue()

    return {"torch.save": saved(), "torch.save protocol 4": saved(pickle_protocol=4),
            "raw pickle protocol 0": pickle.dumps(obj, protocol=0),
            "raw pickle protocol 2": pickle.dumps(obj, protocol=2),
            "raw pickle protocol 4": pickle.dumps(obj, protocol=4)}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # torch's, on the protocol-4 variants
def test_smuggled_objects_are_refused_and_never_run(tmp_path):
    marker, source = tmp_path / "pwned", tmp_path / "source"
    source.write_text("x")
    payloads = _payloads(marker, source)
    for name, payload in payloads.items():  # each payload is real: plain unpickling runs it
        pickle.loads(pickle.dumps(payload))
        assert marker.exists(), name
        marker.unlink()
    payloads |= {"argparse.Namespace": __import__("argparse").Namespace(a=1), "a class of the test": JustAnObject()}
    variants = {(name, kind): data for name, payload in payloads.items() for kind, data in _formats(payload).items()}
    nested = io.BytesIO()  # the payload where the weights should be
    torch.save({"model": {"w": payloads["os.system"]}, "config": {}}, nested)
    variants["os.system", "inside model"] = nested.getvalue()
    assert len(variants) >= 24
    for (name, kind), data in variants.items():
        path = tmp_path / "evil.pt"
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        assert str(caught.value).startswith(f"refusing {path}: it contains pickled Python objects ("), (name, kind)
        assert not marker.exists(), (name, kind)


def test_the_refusal_names_what_was_smuggled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": Payload(os.system, "true")}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == (f"refusing {path}: it contains pickled Python objects (posix.system), which "
                                 "could run code when loaded; oat checkpoints hold only tensors and plain values")
    path.write_bytes(pickle.dumps(Payload(builtins.exec, "1"), protocol=4))  # STACK_GLOBAL, named from the stack
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(builtins\.exec\)"):
        load_checkpoint(path)


def _record_offsets(data: bytes) -> dict[str, tuple[int, int]]:
    """Each zip record's (start of its bytes, start of its central-directory entry)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos, position = archive.infolist(), archive.start_dir
    central = {}
    while data[position:position + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack("<HHH", data[position + 28:position + 34])
        central[data[position + 46:position + 46 + name_length].decode()] = position
        position += 46 + name_length + extra_length + comment_length
    offsets = {}
    for info in infos:
        name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        offsets[info.filename] = (info.header_offset + 30 + name_length + extra_length, central[info.filename])
    return offsets


def _corruptions(data: bytes) -> dict[str, bytes]:
    offsets = _record_offsets(data)
    pkl_start = offsets["archive/data.pkl"][0]
    pkl_end = pkl_start + 200  # inside the pickle (it is longer)
    n = len(data)
    variants = {f"truncated to {cut}": data[:cut] for cut in
                (0, 1, 4, 30, 64, 100, n // 4, n // 2, 3 * n // 4, n - 100, n - 22, n - 1)}
    rng = random.Random(1234)
    for i in range(12):  # anywhere: headers, pickle, tensors, central directory
        flipped = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(n)] ^= 1 << rng.randrange(8)
        variants[f"bits flipped anywhere #{i}"] = bytes(flipped)
    for i in range(8):
        flipped = bytearray(data)
        flipped[rng.randrange(pkl_start, pkl_end)] ^= rng.randrange(1, 256)  # always a change
        variants[f"byte replaced in data.pkl #{i}"] = bytes(flipped)
    for name, (start, length) in {"pickle": (pkl_start, 64), "tensors": (offsets["archive/data/0"][0], 512),
                                  "central directory": (offsets["archive/data.pkl"][1], 100)}.items():
        zeroed = bytearray(data)
        zeroed[start:start + length] = bytes(length)
        variants[f"{name} zeroed"] = bytes(zeroed)
    variants["random bytes"] = random.Random(7).randbytes(4096)
    variants["text"] = b"this is not a checkpoint\n"
    without_pickle = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(without_pickle, "w") as target:
        for info in source.infolist():
            if not info.filename.endswith("data.pkl"):
                target.writestr(info, source.read(info))
    variants["zip without data.pkl"] = without_pickle.getvalue()
    return variants


def test_damaged_files_are_reported_as_truncated_or_corrupt_never_as_smuggling(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(_realistic_state(), good)
    variants = _corruptions(good.read_bytes())
    assert len(variants) >= 20
    outcomes = {}
    for name, data in variants.items():
        path = tmp_path / "damaged.pt"
        path.write_bytes(data)
        try:  # anything but CheckpointError escapes and fails the test with its traceback
            load_checkpoint(path)
            outcomes[name] = "loaded"
        except CheckpointError as error:
            message = str(error)
            assert "pickled Python objects" not in message, (name, message)
            assert message.startswith(f"{path} is truncated or corrupt ("), (name, message)
            outcomes[name] = "corrupt"
    # Whatever cuts the archive, touches its pickle or its tensors fails a CRC or the structure;
    # only bits in fields no reader uses (times, padding) may leave a loadable file.
    must_fail = [name for name in outcomes if not name.startswith("bits flipped anywhere")]
    assert [name for name in must_fail if outcomes[name] != "corrupt"] == []


def test_bit_rot_in_the_weights_is_caught_where_torch_would_load_it(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_realistic_state(), path)
    data = bytearray(path.read_bytes())
    start, _ = _record_offsets(bytes(data))["archive/data/0"]
    data[start + 4] ^= 0x40
    path.write_bytes(bytes(data))
    silently = torch.load(path, weights_only=True)["model"]["convs.0.weight"]
    assert not torch.equal(silently, _realistic_state()["model"]["convs.0.weight"])  # torch checks no CRC
    with pytest.raises(CheckpointError, match=r"truncated or corrupt \(Bad CRC-32 for file 'archive/data/0'\)"):
        load_checkpoint(path)


def test_a_record_marked_as_a_folder_is_corrupt(tmp_path):
    # torch's zip reader (miniz) reads no bytes for such a record and rebuilds the tensor from
    # whatever memory held; zipfile alone would have passed it.
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_realistic_state(), path)
    data = bytearray(path.read_bytes())
    _, central = _record_offsets(bytes(data))["archive/data/0"]
    data[central + 38] |= 0x10  # external attributes: MS-DOS directory
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt \(record 'archive/data/0' is marked as a folder\)"):
        load_checkpoint(path)


def test_torchs_legacy_format_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "old.pt"
    marker = tmp_path / "pwned"
    for payload in ({}, {"x": Payload(os.system, f"touch {marker}")}):
        torch.save({"model": {"w": torch.zeros(2)}, "config": {}, **payload}, path,
                   _use_new_zipfile_serialization=False)
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        assert str(caught.value) == (f"{path} is in PyTorch's legacy (pre-1.6) format, which oat does not read; "
                                     "save it again with torch.save")
        assert not marker.exists()


# --- load_run: the model_spec is checked against the weights before the network exists --------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from oat.cli import main

    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--config", str(ROOT / "configs/digits_oat.yaml"), "--set", "train.epochs=1",
                 "--set", "attack.steps=1", "--out", str(out), "--quiet"]) == 0
    return out / "checkpoint.pt"


def _rewritten(trained: Path, tmp_path: Path, change) -> Path:
    state = torch.load(trained, weights_only=True)
    change(state)
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    return path


def _spec(**changes):
    def change(state):
        state["model_spec"].update(changes)
    return change


def test_load_run_refuses_a_spec_that_disagrees_with_its_weights_before_building_it(trained, tmp_path):
    path = _rewritten(trained, tmp_path, _spec(num_classes=10**9))
    with pytest.raises(CheckpointError) as caught:
        load_run(path)
    assert str(caught.value) == (f"{path}: model_spec does not match the weights: classifier.5.weight is "
                                 "[1000000000, 200] in the network it describes, [10, 200] in the checkpoint")
    path = _rewritten(trained, tmp_path, _spec(input_shape=[1, 10**6, 10**6]))
    with pytest.raises(CheckpointError) as caught:
        load_run(path)
    assert str(caught.value) == (f"{path}: model_spec does not match the weights: classifier.1.weight is "
                                 "[200, 4000000000000] in the network it describes, [200, 256] in the checkpoint")


def test_load_run_refuses_malformed_specs(trained, tmp_path):
    cases = [
        (_spec(name="resnet9000"), "model_spec names an unknown model 'resnet9000' (known: linear, mlp, "
                                   "preact_resnet18, resnet18, resnet34, small_cnn, wrn16_8, wrn34_10, wrn40_2)"),
        (_spec(num_classes=-3), "model_spec num_classes must be an integer ≥ 1, got -3"),
        (_spec(num_classes=True), "model_spec num_classes must be an integer ≥ 1, got True"),
        (_spec(conditioned="yes"), "model_spec conditioned must be true or false, got 'yes'"),
        (_spec(input_shape=[1, 8]), "model_spec input_shape must be a list of 1 or 3 positive integers, got [1, 8]"),
        (_spec(input_shape=[1, 0, 8]),
         "model_spec input_shape must be a list of 1 or 3 positive integers, got [1, 0, 8]"),
        (_spec(options=[]), "model_spec options must be a dict, got list"),
        (_spec(options={"film_width": "wide"}), "model_spec does not describe a network oat can build"),
        (_spec(options={"hidden": -5}), "model_spec does not describe a network oat can build (Trying to create "
                                        "tensor with negative dimension -5: [-5, 256])"),
        (lambda state: state["model_spec"].pop("options"), "model_spec lacks options"),
        (lambda state: state.update(model_spec="small_cnn"), "model_spec is a str, not a dict"),
    ]
    for change, message in cases:
        path = _rewritten(trained, tmp_path, change)
        with pytest.raises(CheckpointError) as caught:
            load_run(path)
        assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)


def test_load_run_refuses_weights_that_are_not_named_tensors_or_do_not_match(trained, tmp_path):
    cases = [
        (lambda state: state.update(model=[1, 2]), "its model weights are a list, not a dict of named tensors"),
        (lambda state: state["model"].update({"classifier.5.bias": [0.0] * 10}),
         "its model weights are not all named tensors ('classifier.5.bias' is a list)"),
        (lambda state: state["model"].pop("classifier.5.bias"),
         "the network model_spec describes has classifier.5.bias [10], which the checkpoint's weights lack"),
        (lambda state: state["model"].update({"extra.weight": torch.zeros(3)}),
         "the checkpoint's weights have extra.weight [3], which the network model_spec describes lacks"),
    ]
    for change, message in cases:
        path = _rewritten(trained, tmp_path, change)
        with pytest.raises(CheckpointError) as caught:
            load_run(path)
        assert str(caught.value) == f"{path}: {message}"


def test_load_run_builds_the_network_only_on_the_meta_device_and_restores_it_exactly(trained, monkeypatch):
    devices = []

    def recording(spec):
        devices.append(torch.empty(0).device.type)  # where a tensor made now would live
        return build_model(spec)

    monkeypatch.setattr(oat.runs, "build_model", recording)
    model, state = load_run(trained.parent)
    assert devices == ["meta"]
    reference = build_model(state["model_spec"])
    reference.load_state_dict(state["model"])
    reference.eval()
    assert not model.training
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], reference.state_dict()[k]) for k in reference.state_dict())
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(images, 0.3), reference(images, 0.3))


def test_a_categorical_encoder_is_restored_without_running_its_random_initialiser(tmp_path, monkeypatch):
    spec = {"name": "small_cnn", "num_classes": 10, "conditioned": True, "input_shape": [1, 8, 8],
            "options": {"encoding": "categorical", "lambdas": [0.0, 0.5, 1.0], "seed": 3}}
    saved = build_model(spec)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": saved.state_dict(), "config": {}, "model_spec": spec, "eps": 0.1, "epoch": 1,
                     "train_seconds": 1.0}, path)
    qr_inputs = []
    real_qr = torch.linalg.qr

    def recording_qr(matrix, *args, **kwargs):
        qr_inputs.append(matrix.device.type)
        return real_qr(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "qr", recording_qr)
    model, _ = load_run(path)
    assert qr_inputs == ["meta"]  # the code_dim × code_dim QR ran on shapes only
    assert torch.equal(model.encoder.table, saved.encoder.table)
    assert torch.equal(model.encoder.lambdas, torch.tensor([0.0, 0.5, 1.0]))


def test_state_dict_covers_tells_when_loading_sets_every_tensor():
    class NonPersistent(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

    class PlainAttribute(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.table = torch.zeros(2)

    assert _state_dict_covers(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert not _state_dict_covers(NonPersistent())
    assert not _state_dict_covers(PlainAttribute())
    for name in ("small_cnn", "resnet18", "wrn16_8"):
        with torch.device("meta"):
            network = build_model({"name": name, "num_classes": 10, "conditioned": True, "input_shape": [3, 32, 32],
                                   "options": {"encoding": "categorical"}})
        assert _state_dict_covers(network), name
