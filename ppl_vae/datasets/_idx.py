"""Reader of the idx format of MNIST and Fashion-MNIST, gzip-compressed or not."""

from __future__ import annotations

import gzip
import pathlib
import zlib

import numpy as np

_EXPECTED = ("an idx file (magic 0x00000801 labels or 0x00000803 images, then dimensions and "
             "bytes), gzip-compressed or not")


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
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"could not read {path} ({type(err).__name__}: {err}); expected {_EXPECTED}.") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise ValueError(
            f"{path} is not an idx file of unsigned bytes: its magic number is "
            f"0x{raw[:4].hex() or 'empty'}, expected 0x000008NN (NN the number of dimensions); "
            f"expected {_EXPECTED}."
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


def read_idx_images(path: pathlib.Path, image_shape: tuple[int, int]) -> np.ndarray:
    """The images of an idx3 file as (N, H * W) rows.

    :raises ValueError: if the file's images are not ``image_shape``.
    """
    images = read_idx(path)
    if images.ndim != 3 or images.shape[1:] != tuple(image_shape):
        h, w = image_shape
        raise ValueError(
            f"{path} must hold images of {h} x {w} (an idx3 file, dimensions (N, {h}, {w})); "
            f"its dimensions are {images.shape}."
        )
    return images.reshape(len(images), image_shape[0] * image_shape[1])


def read_idx_labels(path: pathlib.Path | None, num_images: int, images_path: pathlib.Path):
    """The labels of an idx1 file as int64, one per image of ``images_path``; ``None`` for no
    file."""
    if path is None:
        return None
    labels = read_idx(path)
    if labels.ndim != 1 or len(labels) != num_images:
        raise ValueError(
            f"{path} must hold one label per image of {images_path.name} (an idx1 file of "
            f"{num_images} bytes); its dimensions are {labels.shape}."
        )
    return labels.astype(np.int64)
