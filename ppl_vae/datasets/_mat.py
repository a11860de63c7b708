"""Reader of MATLAB ``.mat`` files (OMNIGLOT, Caltech 101 Silhouettes, Frey Faces) and of their
column-major image layout."""

from __future__ import annotations

import pathlib

import numpy as np


def read_mat(path: pathlib.Path, keys, expected: str) -> dict:
    """``scipy.io.loadmat(path)``, with errors that name the file and the keys it lacks.

    SciPy reads MATLAB's own format only (cells and structs become NumPy object arrays built by
    SciPy); nothing is unpickled.

    :param keys: the variables the file must hold.
    :param str expected: what the file should be, for the messages.
    :raises ValueError: if the file is not a readable .mat file or lacks a key.
    """
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


def fortran_images(columns, name: str, side: int = 28) -> np.ndarray:
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
