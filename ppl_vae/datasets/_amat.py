"""Reader of the ``.amat`` text format of static binarized MNIST (Larochelle & Murray): one image
per line, 784 space-separated 0/1 values."""

from __future__ import annotations

import pathlib

import numpy as np

from ._binarize import check_binary

NUM_VALUES = 784

# Byte classes of the fast path: 0 = anything else, 1 = whitespace, 2 = digit.
_DIGIT = 2
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[np.frombuffer(b" \t\r\n", dtype=np.uint8)] = 1
_BYTE_CLASS[ord("0") : ord("9") + 1] = _DIGIT


def _parse_amat_slow(text: str, filename: str) -> np.ndarray:
    """Line-by-line amat parser: lenient (accepts ``1.0``) and precise in its errors.

    :return: uint8 array of shape (N, 784).
    """
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != NUM_VALUES:
            raise ValueError(
                f"expected {NUM_VALUES} values per line in {filename}, "
                f"line {lineno} has {len(tokens)}."
            )
        try:
            values = np.array(tokens, dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{filename}, line {lineno}: could not read a number ({err}).") from None
        check_binary(values, name=f"{filename}, line {lineno},")
        rows.append(values.astype(np.uint8))
    if not rows:
        raise ValueError(f"{filename} holds no images; expected lines of {NUM_VALUES} 0/1 values.")
    return np.stack(rows)


def read_amat(path: pathlib.Path) -> np.ndarray:
    """Read a ``binarized_mnist_*.amat`` file: one image per line, 784 space-separated 0/1 values.

    Any bytes are read (a binary file is reported as malformed lines, not as a decoding error).

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
    bad_lines = np.flatnonzero((counts != 0) & (counts != NUM_VALUES))
    if bad_lines.size:
        first = bad_lines[0]
        raise ValueError(
            f"expected {NUM_VALUES} values per line in {path.name}, "
            f"line {first + 1} has {counts[first]}."
        )
    values = buf[is_digit] - np.uint8(ord("0"))
    if values.size == 0:
        raise ValueError(f"{path.name} holds no images; expected lines of {NUM_VALUES} 0/1 values.")
    bad = np.flatnonzero(values > 1)
    if bad.size:
        # Map the token index back to its (1-based) physical line.
        line = np.searchsorted(np.cumsum(counts), bad[0], side="right") + 1
        raise ValueError(
            f"{path.name}, line {line}, must be binary (every value 0 or 1); "
            f"found the value {values[bad[0]]}."
        )
    return values.reshape(-1, NUM_VALUES)
