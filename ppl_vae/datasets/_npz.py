"""Reader of NumPy ``.npz`` archives: never unpickles, and says in its own words what is wrong.

``np.load`` answers a file that is not a zip archive by trying to unpickle it, and refuses with
advice to load it unsafely; an object array inside an archive gets the same refusal. This reader
looks at the file's first bytes itself, reads each member with ``numpy.lib.format`` (what
``np.load`` does for a zip) after checking its dtype, and names the file, what is wrong and what to do.
"""

from __future__ import annotations

import pathlib
import struct
import tokenize
import zipfile
import zlib

import numpy as np

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local file header; an empty zip
_NPY_MAGIC = b"\x93NUMPY"
# A pickle of protocol 2 or later starts with 0x80, then the protocol number.
_PICKLE_PROTOCOLS = range(2, 6)
# Where a zip archive breaks: zipfile's own errors, a damaged deflate stream, a truncated file,
# an unsupported or encrypted member.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, struct.error, NotImplementedError,
               RuntimeError)
# Where a .npy member's header or data break numpy.lib.format: it parses the header as a Python
# literal (SyntaxError, tokenize's TokenError) and checks it (ValueError, TypeError, KeyError).
_NPY_ERRORS = (ValueError, SyntaxError, tokenize.TokenError, TypeError, KeyError, OverflowError,
               MemoryError)


def _expected(required) -> str:
    return f"an npz file (numpy.savez) holding numeric arrays {list(required)}"


def _not_an_archive(head: bytes) -> str:
    """Why a file whose first bytes are ``head`` is not a zip archive, for a message."""
    if not head:
        return "the file is empty"
    if head[0] == 0x80 and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS:
        return "it is a Python pickle, which is never loaded: unpickling can run any code"
    return f"its first bytes {head!r} are not those of a zip archive"


def _read_member(archive: zipfile.ZipFile, member: str, key: str, path, expected, remedy) -> np.ndarray:
    """One array of the archive, refusing object arrays before NumPy sees them."""
    damaged = f"{path} is not a readable NumPy .npz archive: its array {key!r} is damaged"
    try:
        with archive.open(member) as f:
            is_npy = f.read(len(_NPY_MAGIC)) == _NPY_MAGIC
            if is_npy:
                f.seek(0)
                version = np.lib.format.read_magic(f)
                # Version 3.0 is 2.0 with a UTF-8 header; an ASCII one reads the same.
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                dtype = read_header(f)[2]
                if not dtype.hasobject:
                    f.seek(0)
                    return np.lib.format.read_array(f, allow_pickle=False)
    except _ZIP_ERRORS as err:
        raise ValueError(f"{damaged} ({type(err).__name__}: {err}); expected {expected}. {remedy}") from err
    except _NPY_ERRORS:
        # NumPy's own words here may advise loading with allow_pickle=True: not passed on.
        raise ValueError(f"{damaged} (not a valid .npy header or data); expected {expected}. {remedy}") from None
    if not is_npy:
        raise ValueError(f"{damaged} (it is not a .npy array); expected {expected}. {remedy}")
    raise ValueError(
        f"array {key!r} of {path} holds Python objects (dtype {dtype}), which are never "
        f"unpickled: unpickling can run any code; expected {expected}. {remedy}"
    )


def read_npz(path: pathlib.Path, required, optional=(), *, remedy: str) -> dict[str, np.ndarray]:
    """The arrays ``required`` (and those of ``optional`` present) of an ``.npz`` archive.

    :param pathlib.Path path: the file.
    :param required: names of the arrays it must hold.
    :param optional: names of arrays read where present.
    :param str remedy: what to do about a damaged file, one sentence for the messages (e.g.
        "Download it again ...").
    :return: ``{name: array}`` in the order ``required``, then ``optional``.
    :raises ValueError: naming the file if it is not an npz archive (empty, a pickle, a .npy
        file, text, a truncated or damaged zip), lacks an array, or holds an object array.
    """
    expected = _expected(required)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"{path} holds a single array (a .npy file); expected {expected}.")
    if not head.startswith(_ZIP_MAGICS):
        raise ValueError(
            f"{path} is not a NumPy .npz archive ({_not_an_archive(head)}); "
            f"expected {expected}. {remedy}"
        )
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        raise ValueError(
            f"{path} is not a NumPy .npz archive (a truncated or damaged zip archive, "
            f"{type(err).__name__}: {err}); expected {expected}. {remedy}"
        ) from err
    with archive:
        names = archive.namelist()
        # As np.load names them: "x.npy" is the array "x".
        files = [name[:-4] if name.endswith(".npy") else name for name in names]
        missing = [key for key in required if key not in files]
        if missing:
            raise ValueError(
                f"{path} must hold arrays {list(required)}; missing {missing} "
                f"(found {sorted(files)})."
            )
        arrays = {}
        for key in (*required, *optional):
            if key in files:
                member = key + ".npy" if key + ".npy" in names else key
                arrays[key] = _read_member(archive, member, key, path, expected, remedy)
    return arrays
