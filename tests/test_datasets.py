"""Tests for oat.datasets: every loader on tiny files written in the real on-disk format."""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from oat import datasets
from oat.datasets import DatasetInfo, TensorImageDataset, TensorVectorDataset, tsipras_accuracy


def _rng(seed=0):
    return np.random.default_rng(seed)


def _images(n, c, h, w, seed):
    """Random uint8 NCHW images (a layout transpose scrambles them, so full equality catches it)."""
    return _rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _assert_split(split, images_nchw, labels):
    """The loaded split holds exactly these uint8 NCHW images and labels."""
    assert isinstance(split, TensorImageDataset)
    assert split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64
    assert torch.equal(split.images, torch.from_numpy(images_nchw))
    assert split.labels.tolist() == list(labels)
    x, y = split[1]
    assert x.dtype == torch.float32 and tuple(x.shape) == images_nchw.shape[1:]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y == labels[1] and isinstance(y, int)
    # one pixel off the diagonal (row 2, column 5 of the last channel): a swapped H/W axis moves it
    assert x[-1, 2, 5].item() == pytest.approx(images_nchw[1, -1, 2, 5] / 255)


def _assert_stats(info, train_nchw):
    pixels = train_nchw.astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(info.std, pixels.std(axis=(0, 2, 3)), rtol=1e-9)


# --- writers for each torchvision on-disk format ------------------------------------------------


def _write_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    train = _images(10, 3, 32, 32, seed=1)
    train_y = [i % 10 for i in range(10)]
    for b in range(5):  # 5 batches of 2 images each, loaded in order
        sl = slice(2 * b, 2 * b + 2)
        entry = {"data": train[sl].reshape(2, -1), "labels": train_y[sl], "batch_label": f"batch {b + 1}"}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(entry))
    test = _images(3, 3, 32, 32, seed=2)
    test_y = [7, 0, 3]
    (folder / "test_batch").write_bytes(pickle.dumps({"data": test.reshape(3, -1), "labels": test_y}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return train, train_y, test, test_y


def _write_cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir()
    train, train_y = _images(4, 3, 32, 32, seed=3), [99, 0, 42, 7]
    test, test_y = _images(2, 3, 32, 32, seed=4), [5, 63]
    for name, x, y in (("train", train, train_y), ("test", test, test_y)):
        entry = {"data": x.reshape(len(x), -1), "fine_labels": y, "coarse_labels": [v // 5 for v in y]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return train, train_y, test, test_y


def _write_svhn(root):
    from scipy.io import savemat

    train, train_y = _images(4, 3, 32, 32, seed=5), [0, 1, 9, 0]
    test, test_y = _images(3, 3, 32, 32, seed=6), [3, 0, 8]
    for name, x, y in (("train", train, train_y), ("test", test, test_y)):
        raw_y = np.array([[10 if v == 0 else v] for v in y], dtype=np.uint8)  # SVHN writes 10 for digit 0
        savemat(root / f"{name}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": raw_y})  # NCHW → HWCN
    return train, train_y, test, test_y


def _write_stl10(root):
    folder = root / "stl10_binary"
    folder.mkdir()
    train, train_y = _images(3, 3, 96, 96, seed=7), [0, 9, 4]
    test, test_y = _images(2, 3, 96, 96, seed=8), [2, 5]
    for name, x, y in (("train", train, train_y), ("test", test, test_y)):
        # each channel stored column-major (Fortran order): N, C, W, H in C order
        (folder / f"{name}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{name}_y.bin").write_bytes(bytes(v + 1 for v in y))  # labels stored 1..10
    return train, train_y, test, test_y


def _idx(array: np.ndarray) -> bytes:
    """An idx file (LeCun's MNIST format): magic 0x0000 08 ndim, big-endian sizes, uint8 data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(root, folder_name):
    folder = root / folder_name / "raw"
    folder.mkdir(parents=True)
    train, train_y = _images(5, 1, 28, 28, seed=9), [5, 0, 4, 1, 9]
    test, test_y = _images(2, 1, 28, 28, seed=10), [7, 2]
    for prefix, x, y in (("train", train, train_y), ("t10k", test, test_y)):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(x[:, 0]))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(np.array(y)))
    return train, train_y, test, test_y


WRITERS = {
    "cifar10": _write_cifar10,
    "cifar100": _write_cifar100,
    "svhn": _write_svhn,
    "stl10": _write_stl10,
    "mnist": lambda root: _write_mnist(root, "MNIST"),
    "fashion-mnist": lambda root: _write_mnist(root, "FashionMNIST"),
}
EXPECTED_INFO = {  # name: (num_classes, input_shape, eps, augment)
    "cifar10": (10, (3, 32, 32), 8 / 255, "crop_flip"),
    "cifar100": (100, (3, 32, 32), 8 / 255, "crop_flip"),
    "svhn": (10, (3, 32, 32), 8 / 255, "none"),
    "stl10": (10, (3, 96, 96), 8 / 255, "crop_flip"),
    "mnist": (10, (1, 28, 28), 0.3, "none"),
    "fashion-mnist": (10, (1, 28, 28), 0.1, "none"),
}


@pytest.fixture(autouse=True)
def no_system_copy(tmp_path, monkeypatch):
    """These tests see only the files they write: Debian's Fashion-MNIST, where installed, is
    moved out of sight (a folder that does not exist)."""
    import dataclasses

    from oat.datasets import vision

    hidden = dataclasses.replace(vision._SOURCES["fashion-mnist"], system_dir=tmp_path / "no-system-copy")
    monkeypatch.setitem(vision._SOURCES, "fashion-mnist", hidden)
    return hidden.system_dir


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_torchvision_loader_reads_the_exact_files(name, tmp_path):
    train, train_y, test, test_y = WRITERS[name](tmp_path)
    splits = datasets.load(name, root=tmp_path)
    _assert_split(splits.train, train, train_y)
    _assert_split(splits.test, test, test_y)
    info = splits.info
    assert info.name == name
    assert (info.num_classes, info.input_shape, info.eps, info.augment) == EXPECTED_INFO[name]
    assert info.bounds == (0.0, 1.0)
    _assert_stats(info, train)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_torchvision_loader_missing_files_say_how_to_fetch(name, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^{name}: expected file .*download=True"):
        datasets.load(name, root=tmp_path / "nowhere")


@pytest.mark.parametrize(
    "name, missing",
    [
        ("cifar10", "cifar-10-batches-py/batches.meta"),
        ("cifar100", "cifar-100-python/test"),
        ("svhn", "test_32x32.mat"),
        ("stl10", "stl10_binary/train_y.bin"),
        ("mnist", "MNIST/raw/t10k-labels-idx1-ubyte"),
        ("fashion-mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
    ],
)
def test_one_missing_file_is_named(name, missing, tmp_path):
    WRITERS[name](tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError) as caught:
        datasets.load(name, root=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / missing) in message and name in message and "download=True" in message


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


def test_idx_files_load_gzipped_or_not_flat_or_in_torchvisions_layout(tmp_path):
    import gzip

    train, train_y, test, test_y = _write_mnist(tmp_path / "tv", "FashionMNIST")
    flat = tmp_path / "flat"
    flat.mkdir()
    for index, path in enumerate(sorted((tmp_path / "tv" / "FashionMNIST" / "raw").iterdir())):
        if index % 2:  # half of them gzipped, half plain: each file is found either way
            (flat / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        else:
            (flat / path.name).write_bytes(path.read_bytes())
    before = _snapshot(flat)
    splits = datasets.load("fashion-mnist", root=flat)
    _assert_split(splits.train, train, train_y)
    _assert_split(splits.test, test, test_y)
    assert _snapshot(flat) == before  # nothing extracted, nothing written


def test_fashion_mnist_falls_back_to_the_system_copy_and_writes_nothing(tmp_path, no_system_copy):
    import gzip

    train, train_y, test, test_y = _write_mnist(tmp_path / "tv", "FashionMNIST")
    no_system_copy.mkdir()
    for path in (tmp_path / "tv" / "FashionMNIST" / "raw").iterdir():
        (no_system_copy / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    root = tmp_path / "data"
    root.mkdir()
    before = _snapshot(no_system_copy)
    splits = datasets.load("fashion-mnist", root=root)
    _assert_split(splits.train, train, train_y)
    _assert_split(splits.test, test, test_y)
    assert _snapshot(no_system_copy) == before and list(root.iterdir()) == []
    datasets.load("fashion-mnist", root=tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_no_copy_anywhere_names_every_place_and_the_package(tmp_path, no_system_copy):
    with pytest.raises(FileNotFoundError) as caught:
        datasets.load("fashion-mnist", root=tmp_path / "data")
    message = str(caught.value)
    for part in (str(tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"), "(or .gz",
                 f"flat in {tmp_path / 'data'}", str(no_system_copy), "apt-get install dataset-fashion-mnist",
                 "download=True"):
        assert part in message, part
    assert "\n" not in message


@pytest.mark.parametrize("content, match", [
    (b"\x08\x03\x00\x00", "not an IDX file"),
    (struct.pack(">I", 0x0803) + struct.pack(">3I", 2, 28, 28) + bytes(100), "holds 100 bytes of data, its header says 1568"),
    (struct.pack(">I", 0x0803) + b"\x00\x00", "is truncated"),
])
def test_damaged_idx_files_are_named(tmp_path, content, match):
    from oat.datasets.idx import read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)
    gz = tmp_path / "broken.gz"
    gz.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match=f"{gz} is not a readable gzip file"):
        read_idx(gz)


def test_train_size_keeps_a_seeded_class_stratified_subset():
    from oat.datasets.subsets import apply_subsets

    labels = torch.arange(100) % 4  # 25 per class
    images = torch.from_numpy(_images(100, 1, 28, 28, seed=3))
    full = datasets.Splits(TensorImageDataset(images, labels), TensorImageDataset(images[:5], labels[:5]),
                           DatasetInfo("t", 4, (1, 28, 28), (0.5,), (0.5,), 0.1, "none"))
    a, b, c = (apply_subsets(full, train_size=20, subset_seed=seed) for seed in (0, 0, 1))
    assert torch.bincount(a.train.labels).tolist() == [5, 5, 5, 5]
    assert torch.equal(a.train.images, b.train.images) and not torch.equal(a.train.images, c.train.images)
    assert a.test is full.test and a.validation is None and a.evaluated == "test"
    assert a.info.mean[0] == pytest.approx(a.train.images.double().mean().item() / 255)
    with pytest.raises(ValueError, match="train_size must be an integer in 1..100, got 101"):
        apply_subsets(full, train_size=101)


def test_a_validation_split_is_carved_from_the_training_set_never_the_test_set():
    splits = datasets.load("digits")
    carved = datasets.load("digits", validation_size=300, train_size=600, subset_seed=2)
    train_ids = {tuple(x.flatten().tolist()) for x in splits.train.images}
    test_ids = {tuple(x.flatten().tolist()) for x in splits.test.images}
    validation = [tuple(x.flatten().tolist()) for x in carved.validation.images]
    assert carved.evaluated == "validation" and len(carved.validation) == 300 and len(carved.train) == 600
    assert carved.split("test") is carved.test and torch.equal(carved.test.images, splits.test.images)
    assert all(v in train_ids for v in validation) and not any(v in test_ids for v in validation)
    kept = {tuple(x.flatten().tolist()) for x in carved.train.images}
    assert not kept & set(validation)  # disjoint from what trains
    counts = torch.bincount(carved.validation.labels)
    assert max(counts) - min(counts) <= 2  # stratified
    # The validation split does not depend on the training budget.
    same = datasets.load("digits", validation_size=300, train_size=200, subset_seed=2)
    assert torch.equal(same.validation.images, carved.validation.images)
    result = __import__("oat").evaluate(_tiny_plain_model(), carved, [0.0], ["fgsm"], eps=0.1)
    assert result["split"] == "validation" and result["n"] == 300
    result = __import__("oat").evaluate(_tiny_plain_model(), carved, [0.0], ["fgsm"], eps=0.1, split="test")
    assert result["split"] == "test" and result["n"] == len(splits.test)
    with pytest.raises(ValueError, match="digits has no validation split"):
        splits.split("validation")


def _tiny_plain_model():
    from oat import models

    return models.create("small_cnn", num_classes=10, conditioned=False, input_shape=(1, 8, 8), channels=[4, 8])


def test_download_uses_torchvision_checksums(tmp_path, monkeypatch):
    # The tiny files are not the official ones: with download=True torchvision's MD5 check rejects
    # them and tries to fetch the archive (stopped here; there is no network).
    import torchvision.datasets.cifar as tv_cifar

    _write_cifar10(tmp_path)
    fetched = []

    def fake_fetch(url, root, filename=None, md5=None):
        fetched.append((url, md5))
        raise RuntimeError("fetch attempted")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_fetch)
    with pytest.raises(RuntimeError, match="fetch attempted"):
        datasets.load("cifar10", root=tmp_path, download=True)
    assert fetched == [(tv_cifar.CIFAR10.url, tv_cifar.CIFAR10.tgz_md5)]


# --- TensorImageDataset ---------------------------------------------------------------------------


def test_tensor_image_dataset_uint8_and_float():
    images = torch.from_numpy(_images(4, 3, 5, 6, seed=11))
    data = TensorImageDataset(images, np.array([3, 1, 0, 2]))
    assert len(data) == 4 and data.labels.dtype == torch.int64
    x, y = data.tensors()
    assert x.dtype == torch.float32 and torch.equal(x, images.float() / 255)
    assert y.tolist() == [3, 1, 0, 2]
    floats = TensorImageDataset(x, [3, 1, 0, 2])
    x2, _ = floats.tensors()
    x2.zero_()  # the stored tensor must not be handed out for in-place edits
    assert torch.equal(floats.images, x)
    assert torch.equal(floats[2][0], x[2]) and floats[2][1] == 0


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (torch.zeros(2, 3, 4), [0, 1], "4-D"),
        (torch.zeros(2, 1, 2, 2, dtype=torch.int32), [0, 1], "uint8 or float"),
        (torch.full((2, 1, 2, 2), 1.5), [0, 1], r"\[0, 1\]"),
        (torch.full((2, 1, 2, 2), float("nan")), [0, 1], "NaN"),
        (torch.zeros(2, 1, 2, 2), [0, 1, 2], "2 images but 3 labels"),
        (torch.zeros(2, 1, 2, 2), [0.0, 1.0], "integers"),
        (torch.zeros(2, 1, 2, 2), [0, -1], "non-negative"),
    ],
)
def test_tensor_image_dataset_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        TensorImageDataset(images, labels)


def test_dataset_info_validates():
    with pytest.raises(ValueError, match="one per channel"):
        DatasetInfo("x", 10, (3, 8, 8), (0.5,), (0.5,), 0.1, "none")
    with pytest.raises(ValueError, match="augment"):
        DatasetInfo("x", 10, (1, 8, 8), (0.5,), (0.5,), 0.1, "flip")


# --- registry -------------------------------------------------------------------------------------


def test_registry_names_and_errors():
    assert set(datasets.names()) == {
        "cifar10", "cifar100", "svhn", "stl10", "mnist", "fashion-mnist",
        "digits", "tsipras", "npz", "imagefolder",
    }
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar-10' \(did you mean 'cifar10'\?\)"):
        datasets.load("cifar-10")
    with pytest.raises(ValueError, match=r"unknown dataset 'fashion_mnist' \(did you mean 'fashion-mnist'\?\)"):
        datasets.load("fashion_mnist")
    with pytest.raises(ValueError, match=r"dataset 'digits' has no option 'tset_size'; it takes seed, subset_seed, "
                                         r"test_size, train_size, validation_size$"):
        datasets.load("digits", tset_size=100)
    with pytest.raises(ValueError, match="has no option 'train_sise'; it takes subset_seed, train_size, validation_size$"):
        datasets.load("cifar10", train_sise=1)
    with pytest.raises(ValueError, match=r"dataset 'npz' needs option 'path'"):
        datasets.load("npz")
    with pytest.raises(ValueError, match="download must be True or False"):
        datasets.load("digits", download="False")
    with pytest.raises(ValueError, match="registered twice"):
        datasets.register("digits")(lambda root, download: None)


# --- digits ---------------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_scaled():
    from sklearn.datasets import load_digits

    splits = datasets.load("digits")
    train, test, info = splits.train, splits.test, splits.info
    assert (len(train), len(test)) == (1797 - 360, 360)
    assert train.images.dtype == torch.float32 and tuple(train.images.shape[1:]) == (1, 8, 8)
    assert info == DatasetInfo("digits", 10, (1, 8, 8), info.mean, info.std, 0.3, "none", (0.0, 1.0))
    _assert_float_stats(info, train.images)
    both = torch.cat([train.images, test.images])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0
    ink = both * 16  # the 0–16 counts come back exactly: the scale is 1/16
    assert torch.equal(ink, ink.round())
    # every one of sklearn's images is in exactly one split
    raw = load_digits()
    assert sorted(map(tuple, (ink.reshape(-1, 64).numpy()).tolist())) == sorted(map(tuple, raw.data.tolist()))
    # stratified: each class's share of the test set matches its share of the data within one image
    counts = np.bincount(raw.target, minlength=10)
    test_counts = np.bincount(test.labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - counts * 360 / 1797) <= 1)
    again = datasets.load("digits")
    assert torch.equal(again.test.images, test.images) and torch.equal(again.train.labels, train.labels)
    other = datasets.load("digits", seed=1, test_size=200)
    assert len(other.test) == 200 and not torch.equal(other.test.labels[:200], test.labels[:200])
    with pytest.raises(ValueError, match="test_size"):
        datasets.load("digits", test_size=5)


def _assert_float_stats(info, images):
    np.testing.assert_allclose(info.mean, images.double().mean(dim=(0, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(info.std, images.double().std(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-6)


# --- npz ------------------------------------------------------------------------------------------


def test_npz_uint8_nhwc_with_test_file(tmp_path):
    x = _rng(12).integers(0, 256, size=(6, 7, 5, 3), dtype=np.uint8)  # NHWC, H != W
    y = np.array([0, 1, 2, 3, 4, 1])
    xt = _rng(13).integers(0, 256, size=(2, 7, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=xt, y=np.array([2, 0]))
    splits = datasets.load("npz", path=tmp_path / "train.npz", test_path=tmp_path / "test.npz")
    assert torch.equal(splits.train.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert splits.train[4][0][2, 6, 1].item() == pytest.approx(x[4, 6, 1, 2] / 255)
    assert splits.train.labels.tolist() == y.tolist() and splits.test.labels.tolist() == [2, 0]
    info = splits.info
    assert (info.num_classes, info.input_shape, info.eps, info.augment) == (5, (3, 7, 5), 8 / 255, "none")
    _assert_stats(info, x.transpose(0, 3, 1, 2))
    assert datasets.load("npz", path=tmp_path / "train.npz", num_classes=12).info.num_classes == 12


def test_npz_float_nchw_seeded_split(tmp_path):
    x = _rng(14).random((10, 1, 4, 4)).astype(np.float32)
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    splits = datasets.load("npz", path=str(tmp_path / "d.npz"), augment="crop_flip", eps=0.1)
    assert (len(splits.train), len(splits.test)) == (8, 2)
    assert splits.train.images.dtype == torch.float32
    # the two splits partition the file, and the same seed gives the same split
    rows = torch.cat([splits.train.images, splits.test.images]).reshape(10, -1)
    order = rows[:, 0].argsort()
    assert torch.equal(rows[order], torch.from_numpy(x).reshape(10, -1)[torch.from_numpy(x[:, 0, 0, 0]).argsort()])
    again = datasets.load("npz", path=tmp_path / "d.npz")
    assert torch.equal(again.test.images, splits.test.images)
    assert not torch.equal(datasets.load("npz", path=tmp_path / "d.npz", seed=3).test.images, splits.test.images)
    assert (splits.info.augment, splits.info.eps, splits.info.num_classes) == ("crop_flip", 0.1, 3)


GOOD_X = np.zeros((3, 4, 4, 3), dtype=np.uint8)
GOOD_Y = np.array([0, 1, 2])


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": GOOD_X}, r"lacks array\(s\) \['y'\]"),
        ({"images": GOOD_X, "y": GOOD_Y}, r"lacks array\(s\) \['x'\]"),
        ({"x": GOOD_X[..., 0], "y": GOOD_Y}, "x must be 4-D"),
        ({"x": GOOD_X.astype(np.int64), "y": GOOD_Y}, "x has dtype int64"),
        ({"x": np.zeros((3, 4, 4, 8), np.uint8), "y": GOOD_Y}, "NHWC with 1–4 channels last"),
        ({"x": np.zeros((3, 8, 8, 3), np.float32), "y": GOOD_Y}, "NCHW with 1–4 channels on axis 1"),
        ({"x": np.full((3, 3, 4, 4), 255.0), "y": GOOD_Y}, r"must lie in \[0, 1\], got values from 255"),
        ({"x": np.full((3, 3, 4, 4), np.nan), "y": GOOD_Y}, "NaN"),
        ({"x": GOOD_X, "y": GOOD_Y.astype(np.float32)}, "integer labels"),
        ({"x": GOOD_X, "y": GOOD_Y[:, None]}, "y must be 1-D"),
        ({"x": GOOD_X, "y": np.array([0, 1])}, "x has 3 images but y has 2 labels"),
        ({"x": GOOD_X, "y": np.array([0, -1, 2])}, "non-negative, got -1"),
        ({"x": GOOD_X[:0], "y": GOOD_Y[:0]}, "no images"),
    ],
)
def test_npz_rejects_bad_files(arrays, match, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match) as caught:
        datasets.load("npz", path=path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


def test_npz_other_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        datasets.load("npz", path=tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="text.npz is not a readable .npz"):
        datasets.load("npz", path=tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", GOOD_X)
    with pytest.raises(ValueError, match="single array"):
        datasets.load("npz", path=tmp_path / "single.npy")
    np.savez(tmp_path / "obj.npz", x=np.array([GOOD_X, "a"], dtype=object), y=GOOD_Y)
    with pytest.raises(ValueError, match="obj.npz"):
        datasets.load("npz", path=tmp_path / "obj.npz")
    np.savez(tmp_path / "a.npz", x=GOOD_X, y=GOOD_Y)
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 5, 5, 3), np.uint8), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="b.npz holds torch.uint8 images of shape"):
        datasets.load("npz", path=tmp_path / "a.npz", test_path=tmp_path / "b.npz")
    with pytest.raises(ValueError, match="num_classes=2 must be an integer above the largest label 2"):
        datasets.load("npz", path=tmp_path / "a.npz", num_classes=2)
    with pytest.raises(ValueError, match="empty split"):
        datasets.load("npz", path=tmp_path / "a.npz", test_fraction=0.05)


# --- imagefolder ----------------------------------------------------------------------------------


def _write_tree(root, classes, per_class, size=(12, 10)):
    from PIL import Image

    colours = {}
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (40 * ci + 10, 20 * i + 5, 200 - 30 * ci)
            colours[(name, i)] = colour
            Image.new("RGB", size, colour).save(root / name / f"{i}.png")
    return colours


def test_imagefolder_lazy_resized_split(tmp_path):
    colours = _write_tree(tmp_path / "tree", ["cat", "dog"], per_class=5)
    splits = datasets.load("imagefolder", path=tmp_path / "tree", image_size=8, test_fraction=0.2)
    assert (len(splits.train), len(splits.test)) == (8, 2)
    info = splits.info
    assert (info.num_classes, info.input_shape, info.mean, info.std) == (2, (3, 8, 8), (0.5,) * 3, (0.5,) * 3)
    seen = []
    for split in (splits.train, splits.test):
        for i in range(len(split)):
            x, y = split[i]
            assert x.dtype == torch.float32 and tuple(x.shape) == (3, 8, 8) and y == split.labels[i]
            path, label = split.folder.samples[int(split.indices[i])]
            assert label == y
            colour = colours[(split.classes[y], int(path.rsplit("/", 1)[1][:-4]))]
            # a solid image stays solid through the resize: every pixel is the written colour
            assert torch.allclose(x, torch.tensor(colour).float().div(255).view(3, 1, 1).expand(3, 8, 8))
            seen.append(path)
    assert len(set(seen)) == 10  # the splits partition the tree
    again = datasets.load("imagefolder", path=tmp_path / "tree", image_size=8, test_fraction=0.2)
    assert torch.equal(again.test.indices, splits.test.indices)


def test_imagefolder_test_path_and_errors(tmp_path):
    from PIL import Image

    _write_tree(tmp_path / "train", ["a", "b", "c"], per_class=2)
    _write_tree(tmp_path / "test", ["a", "b", "c"], per_class=1)
    Image.new("L", (6, 6), 77).save(tmp_path / "test" / "a" / "gray.png")  # grayscale becomes RGB
    splits = datasets.load("imagefolder", path=tmp_path / "train", test_path=tmp_path / "test")
    assert (len(splits.train), len(splits.test)) == (6, 4)
    assert splits.test.labels.tolist() == [0, 0, 1, 2] and splits.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    gray, label = splits.test[1]
    assert label == 0 and tuple(gray.shape) == (3, 32, 32)
    assert torch.allclose(gray, torch.full((3, 32, 32), 77 / 255))
    _write_tree(tmp_path / "other", ["a", "b"], per_class=1)
    with pytest.raises(ValueError, match="same class folders"):
        datasets.load("imagefolder", path=tmp_path / "train", test_path=tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="imagefolder: directory .*nope not found"):
        datasets.load("imagefolder", path=tmp_path / "nope")
    with pytest.raises(ValueError, match="image_size"):
        datasets.load("imagefolder", path=tmp_path / "train", image_size=0)


# --- tsipras --------------------------------------------------------------------------------------


def _phi(z):
    return 0.5 * math.erfc(-z / math.sqrt(2))


def test_tsipras_samples_follow_the_model():
    splits = datasets.load("tsipras", n_train=4000, n_test=500, d=20, eta=0.5, p=0.9, seed=3)
    train = splits.train
    assert isinstance(train, TensorVectorDataset)
    assert tuple(train.images.shape) == (4000, 21) and train.images.dtype == torch.float32
    assert len(splits.test) == 500
    y = 2 * train.labels.double() - 1
    assert set(train.labels.tolist()) == {0, 1}
    assert abs(float(y.mean())) < 4 / math.sqrt(4000)  # balanced classes
    x1 = train.images[:, 0].double()
    assert set(x1.tolist()) == {-1.0, 1.0}
    assert abs(float((x1 == y).double().mean()) - 0.9) < 4 * math.sqrt(0.9 * 0.1 / 4000)
    rest = train.images[:, 1:].double() * y[:, None]  # y·x_j ~ N(η, 1)
    assert abs(float(rest.mean()) - 0.5) < 0.01 and abs(float(rest.std()) - 1.0) < 0.01
    info = splits.info
    assert info == DatasetInfo("tsipras", 2, (21,), (0.0,) * 21, (1.0,) * 21, 1.0, "none", None,
                               (("p", 0.9), ("d", 20), ("eta", 0.5)))
    x, label = train[0]
    assert x.dtype == torch.float32 and x.shape == (21,) and label in (0, 1)
    # deterministic, and the test stream does not depend on the train size
    assert torch.equal(datasets.load("tsipras", n_train=4000, n_test=500, d=20, eta=0.5, p=0.9, seed=3).train.images,
                       train.images)
    other = datasets.load("tsipras", n_train=10, n_test=500, d=20, eta=0.5, p=0.9, seed=3)
    assert torch.equal(other.test.images, splits.test.images)
    assert datasets.load("tsipras", n_train=5, n_test=5).info.eps == pytest.approx(0.6)
    with pytest.raises(ValueError, match="p must be a probability"):
        datasets.load("tsipras", p=1.5)


def test_tsipras_closed_form_known_classifiers():
    d, eta, p = 100, 0.3, 0.95
    robust_feature = [0.0] + [1.0] * d  # sign(Σ_{j≥2} x_j)
    sa, ra = tsipras_accuracy(robust_feature, eps=2 * eta, p=p, eta=eta)
    assert sa == pytest.approx(_phi(eta * math.sqrt(d)), rel=1e-12)
    assert sa == pytest.approx(0.99865, abs=1e-5)
    assert ra == pytest.approx(_phi(-eta * math.sqrt(d)), rel=1e-9)
    x1_only = [1.0] + [0.0] * d  # sign(x₁): σ = 0, and ε < 1 cannot flip it
    assert tsipras_accuracy(x1_only, eps=2 * eta) == (pytest.approx(p), pytest.approx(p))
    assert tsipras_accuracy(x1_only, eps=1.0) == (pytest.approx(p), 0.0)  # margin exactly 0 counts as wrong
    # σ = 0 with a bias: margins are 2 (y=+1, x₁=y), 0, 0 and −2, so only the first case is right
    assert tsipras_accuracy([1.0, 0.0, 0.0], b=1.0) == (pytest.approx(0.5 * p), pytest.approx(0.5 * p))
    assert tsipras_accuracy(torch.tensor([1.0, 0.0])) == (pytest.approx(p), pytest.approx(p))
    with pytest.raises(ValueError, match="eps must be non-negative"):
        tsipras_accuracy(x1_only, eps=-0.1)
    with pytest.raises(ValueError, match="finite"):
        tsipras_accuracy([float("nan"), 1.0])


def test_tsipras_closed_form_matches_sampled_accuracy():
    n, d, eta, p = 40_000, 100, 0.3, 0.95
    test = datasets.load("tsipras", n_train=1, n_test=n, seed=7).test
    x, y = test.images.double(), 2 * test.labels.double() - 1
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.tensor([0.4]), 0.03 * torch.randn(d, generator=g, dtype=torch.float64) + 0.01])
    b, eps = -0.05, 0.02
    sa, ra = tsipras_accuracy(w, b=b, eps=eps, p=p, eta=eta)
    assert 0.6 < ra < sa < 0.97  # a classifier neither trivial nor perfect, so the check has teeth
    clean = (y * (x @ w + b) > 0).double().mean().item()
    worst = x - eps * y[:, None] * torch.sign(w)  # the exact worst case of a linear model
    robust = (y * (worst @ w + b) > 0).double().mean().item()
    for closed, empirical in ((sa, clean), (ra, robust)):
        assert abs(closed - empirical) < 4 * math.sqrt(closed * (1 - closed) / n)


def test_an_image_that_fails_to_decode_is_named(tmp_path, capsys):
    from oat.cli import main

    _write_tree(tmp_path / "tree", ["a", "b"], per_class=3)
    broken = tmp_path / "tree" / "b" / "1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated PNG: its header survives, its data do not
    splits = datasets.load("imagefolder", path=tmp_path / "tree", image_size=8, test_fraction=0.5)
    split = next(s for s in (splits.train, splits.test) if str(broken) in [p for p, _ in
                                                                            (s.folder.samples[int(i)] for i in s.indices)])
    position = [s for s, _ in (split.folder.samples[int(i)] for i in split.indices)].index(str(broken))
    with pytest.raises(OSError, match=f"cannot decode image {broken}"):
        split[position]
    config = Path(__file__).resolve().parent.parent / "configs" / "digits_oat.yaml"
    code = main(["train", "--config", str(config), "--set", "data.name=imagefolder",
                 "--set", f"data.options={{path: {tmp_path / 'tree'}, image_size: 8, test_fraction: 0.5}}",
                 "--set", "train.epochs=1", "--set", "train.batch_size=2", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(broken) in err and len(err.splitlines()) == 1
