"""The safe pickle reader: a restricted unpickler that rebuilds NumPy arrays and nothing else,
for datasets distributed as pickles (histopathology), plain, gzip-compressed or in a .tar.gz.

``pickle`` runs whatever callable a file names; this reader refuses every global outside
:data:`_PICKLE_GLOBALS`, so a tampered file cannot execute code.
"""

from __future__ import annotations

import gzip
import importlib
import io
import pathlib
import pickle
import tarfile
import zlib

import numpy as np

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
    """An unpickler that can rebuild NumPy arrays, dicts, lists and strings and nothing else."""

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


def _unpickle_arrays(data: bytes, path: pathlib.Path, keys, hint: str):
    """Unpickle ``data`` (read from ``path``) with :class:`_NumpyArrayUnpickler`."""
    try:
        # latin1: the reference's pickle was written by Python 2, whose str held the array bytes.
        return _NumpyArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _ForbiddenGlobal as err:
        raise ValueError(f"refused to unpickle {path}: {err}. {hint}.") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as err:
        raise ValueError(
            f"could not read {path} as a pickle of NumPy arrays ({type(err).__name__}: {err}); "
            f"expected a dict of arrays {', '.join(map(repr, keys))}. {hint}."
        ) from err


def read_array_pickle(path: pathlib.Path, keys, *, member: str, hint: str) -> dict[str, np.ndarray]:
    """A pickled dict of NumPy arrays, plain, gzip-compressed or inside a ``.tar.gz`` (read in
    memory: nothing is extracted), through the restricted unpickler.

    :param pathlib.Path path: the file; ``*.tar.gz`` is read as a tar archive holding a ``.pkl``.
    :param keys: the arrays the dict must hold.
    :param str member: the pickle's own name (e.g. ``histopathology.pkl``), for the messages.
    :param str hint: what to do instead, for the messages (no final full stop).
    :return: ``{key: array}`` for each of ``keys``.
    :raises ValueError: naming the file if it cannot be read, names anything but NumPy arrays,
        or lacks a key.
    """
    try:
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".pkl")]
                if not members:
                    raise ValueError(f"{path} holds no .pkl file; expected {member} inside.")
                data = tar.extractfile(members[0]).read()
        else:
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
        raise ValueError(
            f"could not read {path} ({type(err).__name__}: {err}); expected the reference's "
            f"{member} (plain, gzip or .tar.gz)."
        ) from err
    obj = _unpickle_arrays(data, path, keys, hint)
    if isinstance(obj, dict):
        obj = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} must hold a dict with arrays {list(keys)}; missing {missing} (found {found}).")
    return {key: obj[key] for key in keys}
