"""Checkpoints: atomic writes, safe loads, clear refusals."""

import os
import pickle

import pytest
import torch

from oat.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state():
    return {"model": {"w": torch.arange(4.0)}, "config": {"train": {"epochs": 1}}, "epoch": 1}


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
