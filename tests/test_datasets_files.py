"""The loaders on the canonical files in ../shared/data (skipped where absent, as in a fresh
clone): split sizes, dtypes, value ranges, and that the images come out upright (statistics of
class means that a transposed or flipped read would reverse)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ppl_vae.data import DATASETS, check_binary, load_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _folder(name):
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (only the development checkout has ../shared)")
    return path


def _spread(img):
    """Standard deviations of the ink's row and column coordinates in a (28, 28) mean image:
    (vertical extent, horizontal extent)."""
    i = np.arange(img.shape[0])
    j = np.arange(img.shape[1])
    rows, cols = img.sum(1), img.sum(0)
    sr = np.sqrt((rows * (i - (rows * i).sum() / rows.sum()) ** 2).sum() / rows.sum())
    sc = np.sqrt((cols * (j - (cols * j).sum() / cols.sum()) ** 2).sum() / cols.sum())
    return sr, sc


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("dynamic-mnist", _folder("mnist"))


@pytest.fixture(scope="module")
def fashion_grey():
    # The parent directory works too: the loader looks in its "fashion_mnist" sub-folder.
    _folder("fashion_mnist")
    return load_dataset("fashion-mnist", SHARED, binarization="none")


def test_dynamic_mnist_canonical_files(mnist):
    assert (len(mnist.train), len(mnist.valid), len(mnist.test)) == (50000, 10000, 10000)
    assert mnist.binarization == "dynamic" and mnist.input_type == "binary"
    assert mnist.likelihood == "bernoulli" and mnist.pseudo_init == (0.05, 0.01)
    assert mnist.train.dtype == np.float32 and mnist.train.min() == 0 and mnist.train.max() == 1
    # Training images are grey, on the 256-level grid; validation and test binary.
    assert np.unique(mnist.train[:500]).size > 200
    np.testing.assert_allclose(mnist.train[:500] * 255, np.round(mnist.train[:500] * 255), atol=1e-4)
    check_binary(mnist.valid), check_binary(mnist.test)
    # The binarised mean pixel is the grey one (Bernoulli draws), about 0.13.
    assert abs(mnist.test.mean() - 0.1325) < 0.002 and abs(mnist.train.mean() - 0.1310) < 0.002
    # Canonical order: the first training labels of MNIST are 5 0 4 1 9; validation is the end.
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert np.bincount(mnist.test_labels).tolist()[:2] == [980, 1135]


def test_dynamic_mnist_is_upright(mnist):
    x, y = mnist.train.reshape(-1, 28, 28), mnist.train_labels
    ones, sevens, sixes = (x[y == k].mean(0) for k in (1, 7, 6))
    rows, cols = _spread(ones)
    assert rows > 2 * cols  # a 1 is tall and thin (transposed it would be wide)
    assert sevens[4:10].mean() > 1.2 * sevens[18:24].mean()  # a 7's bar is on top
    assert sixes[18:24].mean() > 1.4 * sixes[4:10].mean()  # a 6's loop is at the bottom


def test_fashion_mnist_canonical_files(fashion_grey):
    f = fashion_grey
    assert (len(f.train), len(f.valid), len(f.test)) == (50000, 10000, 10000)
    # The 60,000 training images' statistics, shared/data/README.md.
    full = np.concatenate([f.train, f.valid]).astype(np.float64)
    assert round(full.mean(), 5) == 0.28604 and round(full.std(), 5) == 0.35302
    assert f.likelihood == "discretized_logistic" and f.input_type == "grey"
    x, y = f.train.reshape(-1, 28, 28), f.train_labels
    trousers, sneakers, boots = (x[y == k].mean(0) for k in (1, 7, 9))
    assert _spread(trousers)[0] > 2 * _spread(trousers)[1]  # trousers are tall
    assert _spread(sneakers)[1] > 1.8 * _spread(sneakers)[0]  # sneakers are wide
    assert boots[20:26].mean() > 2 * boots[2:8].mean()  # an ankle boot's sole is at the bottom
    assert boots[:, 20:26].mean() > 2 * boots[:, 2:8].mean()  # ...and its shaft on the right


def test_fashion_mnist_binary_default():
    f = load_dataset("fashion-mnist", _folder("fashion_mnist"))
    assert f.binarization == "static" and f.binary and f.likelihood == "bernoulli"
    assert abs(f.train.mean() - 0.2855) < 0.002


def test_caltech101_canonical_file():
    c = load_dataset("caltech101", _folder("caltech101"))
    assert (len(c.train), len(c.valid), len(c.test)) == (4100, 2264, 2307)
    for x in (c.train, c.valid, c.test):
        check_binary(x)
        assert x.dtype == np.float32 and x.shape[1] == 784
    assert c.pseudo_init == (0.5, 0.02) and c.binarization == "static"
    # Silhouettes are 1 (inverted like the reference) on a 0 background: the border is mostly 0.
    border = np.concatenate([c.train.reshape(-1, 28, 28)[:, [0, -1], :].ravel(), c.train.reshape(-1, 28, 28)[:, :, [0, -1]].ravel()])
    assert border.mean() < 0.25 and 0.4 < c.train.mean() < 0.5
    from scipy.io import loadmat

    names = [n[0] for n in loadmat(_folder("caltech101") / "caltech101_silhouettes_28_split1.mat")["classnames"][0]]
    x = np.concatenate([c.train, c.valid, c.test]).reshape(-1, 28, 28)
    y = np.concatenate([c.train_labels, c.valid_labels, c.test_labels])
    assert y.min() == 1 and y.max() == 101
    umbrella = x[y == names.index("umbrella") + 1].mean(0)
    motorbike = x[y == names.index("Motorbikes 16") + 1].mean(0)
    assert umbrella[2:9].mean() > 4 * umbrella[19:26].mean()  # the canopy is on top
    # ...and the image is not transposed: the asymmetry is top-bottom, not left-right.
    top_bottom = umbrella[2:9].mean() - umbrella[19:26].mean()
    assert top_bottom > 3 * abs(umbrella[:, 2:9].mean() - umbrella[:, 19:26].mean())
    assert motorbike[19:26].mean() > 2 * motorbike[2:9].mean()  # the wheels are at the bottom


def test_freyfaces_canonical_file():
    f = load_dataset("freyfaces", _folder("freyfaces"))
    assert (len(f.train), len(f.valid), len(f.test)) == (1565, 200, 200)
    assert f.image_shape == (28, 20) and f.train.shape[1] == 560
    assert f.input_type == "grey" and f.likelihood == "discretized_logistic" and f.pseudo_init == (0.5, 0.02)
    faces = np.concatenate([f.train, f.valid, f.test])
    # ff is uint8 8..238 (shared/data/README.md): pixel / 255 on the 256-level grid.
    assert round(faces.min() * 255) == 8 and round(faces.max() * 255) == 238
    np.testing.assert_allclose(faces * 255, np.round(faces * 255), atol=1e-4)
    img = faces.reshape(-1, 28, 20)
    # Row-major 28 x 20: neighbouring pixels are alike both ways (a column-major read would
    # put unrelated pixels side by side, 0.18 apart on average instead of 0.075).
    assert np.abs(np.diff(img, axis=1)).mean() < 0.1 and np.abs(np.diff(img, axis=2)).mean() < 0.1
    # Upright: the darkest rows of the mean face (the eyes) are in its top half, below a bright
    # forehead.
    row_means = img.mean((0, 2))
    assert np.argmin(row_means) < 14 and row_means[:4].mean() > row_means[5:9].mean() + 0.2


@pytest.mark.parametrize("name, folder", [("caltech101", "caltech101"), ("freyfaces", "freyfaces")])
def test_registry_checksums_match_the_canonical_files(name, folder):
    (source,) = DATASETS[name].files
    path = _folder(folder) / source.name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == source.sha256


def _static_mnist_npz():
    path = SHARED / "static_mnist.npz"
    if not path.is_file():
        pytest.skip(f"{path} not present (only the development checkout has ../shared)")
    return path


def test_static_mnist_file_checksums_are_those_of_its_content():
    """The registry's sha256 of the three .amat files (tensorflow_datasets' record) are those of
    the files that hold the content of STATIC_MNIST_SHA256, written as the canonical files are:
    one image per line, the 784 digits joined by single spaces."""
    spec = DATASETS["static-mnist"]
    with np.load(_static_mnist_npz()) as npz:
        for source, split in zip(spec.files, ("train", "valid", "test")):
            pixels = npz[split]
            text = np.full((len(pixels), 2 * 784), ord(" "), dtype=np.uint8)
            text[:, 0::2] = pixels + ord("0")
            text[:, -1] = ord("\n")
            assert source.name == f"binarized_mnist_{split}.amat"
            assert hashlib.sha256(text.tobytes()).hexdigest() == source.sha256, split


def test_truncated_static_mnist_gets_our_message(tmp_path):
    (tmp_path / "static_mnist.npz").write_bytes(_static_mnist_npz().read_bytes()[:1_000_000])
    with pytest.raises(ValueError) as info:
        load_dataset("static-mnist", tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'static_mnist.npz'} is not a NumPy .npz archive (a truncated or damaged zip archive")
    assert "download_static_mnist(" in message and "force=True" in message
    assert "allow_pickle" not in message and "If you trust" not in message
