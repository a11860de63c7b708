"""What a loader returns, :class:`DataSplits`, with the vocabulary of its fields, and the helpers
every loader shares: argument checks, seeded shuffles and splits, binarisation of the splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._binarize import binarize

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

SPLITS = ("train", "valid", "test")

# Pseudo-input initialisations N(mean, std) of the reference implementation (Tomczak & Welling).
PSEUDO_INIT_BINARY = (0.05, 0.01)
PSEUDO_INIT_GREY = (0.5, 0.02)


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
    pseudo_init: tuple[float, float] = PSEUDO_INIT_BINARY

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


def make_splits(
    name: str,
    arrays: dict[str, np.ndarray],
    labels: dict[str, np.ndarray | None],
    *,
    image_shape: tuple[int, int],
    binarization: str,
    pseudo_init: tuple[float, float],
    binary: bool | None = None,
) -> DataSplits:
    """Wrap float32 (N, D) arrays, already binarised as ``binarization`` says, with metadata.

    :param binary: whether every value is 0 or 1, where the caller knows it; ``None``: checked.
    """
    grey = binarization == "none"
    if binary is None:
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


# ----- argument checks, in the words of the library's own arguments -----


def check_seed(seed) -> int:
    if seed is None:
        return DATA_SEED
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None; got {seed!r}.")
    return int(seed)


def check_count(value, arg: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a non-negative int" if minimum == 0 else f"an int >= {minimum}"
        raise ValueError(f"{arg} must be {kind}; got {value!r}.")
    return int(value)


def check_binarization(binarization, default: str) -> str:
    if binarization is None:
        return default
    if binarization not in BINARIZATIONS:
        raise ValueError(f"binarization must be one of {list(BINARIZATIONS)} or None; got {binarization!r}.")
    return binarization


def resolve_binarization(spec, binarization) -> str:
    """``binarization``, or ``spec``'s default where ``None``; a dataset whose files hold binary
    images (``spec.stored == "binary"``) only takes ``"static"``."""
    if spec.stored == "binary" and binarization not in (None, "static"):
        raise ValueError(
            f"binarization must be 'static' for {spec.name}, whose files hold binary images; "
            f"got {binarization!r}."
        )
    return check_binarization(binarization, spec.binarization)


def check_image_shape(image_shape) -> tuple[int, int]:
    try:
        h, w = image_shape
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (height, width), two positive ints; got {image_shape!r}.") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"image_shape must be (height, width), two positive ints; got {image_shape!r}.")
    return int(h), int(w)


# ----- seeded shuffles, splits and binarisation -----


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


def split_rngs(seed) -> dict[str, np.random.Generator]:
    """Independent generators for a dataset's shuffle and for each split's binarisation.

    Separate streams make validation and test identical whether the training split is
    binarised statically or dynamically (or is subset), for the same ``seed``.
    """
    children = np.random.SeedSequence(seed).spawn(4)
    return dict(zip(("shuffle", *SPLITS), (np.random.default_rng(c) for c in children)))


def stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def apply_binarization(
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
    for split in SPLITS:
        x = arrays[split]
        if stored == "grey" and (binarization == "static" or (binarization == "dynamic" and split != "train")):
            x = binarize(x, rngs[split])
        out[split] = np.ascontiguousarray(x, dtype=np.float32)
    return out
