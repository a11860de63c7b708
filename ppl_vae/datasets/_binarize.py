"""Binarisation and the value checks of image arrays: binary (0/1) or grey levels in [0, 1]."""

from __future__ import annotations

import numpy as np

#: Rows per block when binarising, so that a 60,000-image split needs no 60,000 x 784 block of
#: uniforms at once.
_BINARIZE_BLOCK = 8192


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


def check_unit_interval(x: np.ndarray, name: str) -> None:
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


def as_unit_interval(x, name: str) -> np.ndarray:
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
    check_unit_interval(x, name)
    return x.astype(np.float32)


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
    check_unit_interval(x, "x")
    rng = np.random.default_rng(rng)
    if x.ndim < 2:
        return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], _BINARIZE_BLOCK):
        block = x[start : start + _BINARIZE_BLOCK]
        out[start : start + _BINARIZE_BLOCK] = rng.random(block.shape, dtype=np.float32) < block
    return out
