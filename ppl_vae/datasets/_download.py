"""The one download path of every dataset: each file from its first URL that answers, into a
temporary folder inside the target directory, checked against its checksum, and only then
renamed into place; a failed or tampered download leaves nothing behind.

A dataset whose files are converted on download (static MNIST: three text files into one
``static_mnist.npz``) declares a :class:`PackedFile`: the same path fetches and checks the files,
reads them into arrays, checks the checksum of the arrays' content and writes the npz.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings

import numpy as np

from ._files import as_dir, default_cache_dir, spec_directory
from ._registry import DATASETS, STATIC_MNIST_URL, dataset_spec


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the arrays' bytes (C order), concatenated in the dict's order."""
    digest = hashlib.sha256()
    for array in arrays.values():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _file_digest(path: pathlib.Path, digest) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: pathlib.Path) -> str:
    """sha256 of a file's bytes."""
    return _file_digest(path, hashlib.sha256())


def git_blob_sha1(path: pathlib.Path) -> str:
    """The git blob id of a file: SHA-1 of ``b"blob <size>\\0"`` and its bytes."""
    return _file_digest(path, hashlib.sha1(b"blob %d\0" % path.stat().st_size))


def fetch(url: str, dest: pathlib.Path, hint: str) -> None:
    """Download ``url`` to ``dest``, or raise an ``OSError`` naming it, ending with ``hint``."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise OSError(f"could not download {url} ({reason}). {hint}") from err


def _fetch_checked(source, tmp_dir: pathlib.Path, directory: pathlib.Path, *,
                   content_checked: bool) -> tuple[pathlib.Path, str]:
    """``source`` into ``tmp_dir``, from its first URL that answers, checked against its
    checksum (or with a warning where it has none and ``content_checked`` is false).

    :return: the file and the URL it came from.
    """
    path = tmp_dir / source.name
    hint = f"Without network access, download {source.name} yourself into {str(directory)!r}."
    errors = []
    for url in source.urls:
        try:
            fetch(url, path, hint="")
            break
        except OSError as err:
            errors.append(str(err).strip())
    else:
        raise OSError(f"could not download {source.name}: {' '.join(errors)} {hint}")
    if source.sha256 is not None:
        expected, actual, kind = source.sha256, sha256_file(path), "sha256"
    elif source.git_blob is not None:
        expected, actual, kind = source.git_blob, git_blob_sha1(path), "git blob id"
    else:
        if not content_checked:
            warnings.warn(
                f"no sha256 is recorded for {source.name}, so its integrity was not checked; "
                f"the file downloaded from {url} has sha256 {sha256_file(path)}.",
                UserWarning,
                stacklevel=4,  # the caller of download_dataset or load_dataset
            )
        return path, url
    if actual != expected:
        raise ValueError(
            f"checksum mismatch for {source.name} downloaded from {url}: expected {kind} "
            f"{expected}, got {actual}. Nothing was written to {str(directory)!r}."
        )
    return path, url


def download_files(spec, directory: pathlib.Path, *, force: bool = False) -> pathlib.Path:
    """Download ``spec.files`` into ``directory`` (created if needed), checking every checksum.

    Files already present, in ``directory`` or its sub-folder ``spec.subdir``, are kept unless
    ``force``. With ``spec.packed``, the dataset is present when the packed npz is; otherwise
    every file is fetched, read, checked by content and saved as that npz.

    :return: ``directory``.
    :raises ValueError: for a checksum mismatch or a malformed file (nothing is written).
    :raises OSError: if a file cannot be downloaded from any of its URLs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    packed = spec.packed
    if packed is None:
        for source in spec.files:
            present = source.find(directory) or source.find(directory / spec.subdir)
            if present is not None and not force:
                continue
            # Inside directory, so that the final rename stays on one filesystem (atomic).
            with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
                path, _ = _fetch_checked(source, pathlib.Path(tmp), directory, content_checked=False)
                os.replace(path, directory / source.name)
        return directory

    if (directory / packed.name).is_file() and not force:
        return directory
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        tmp_dir = pathlib.Path(tmp)
        fetched = [_fetch_checked(s, tmp_dir, directory, content_checked=True) for s in spec.files]
        arrays = packed.read([path for path, _ in fetched])
        actual = content_sha256(arrays)
        if actual != packed.content_sha256:
            origins = sorted({url.rsplit("/", 1)[0] for _, url in fetched})
            raise ValueError(
                f"checksum mismatch for {spec.name} downloaded from {', '.join(origins)}: "
                f"expected content sha256 {packed.content_sha256}, got {actual}. Nothing was "
                f"written to {str(directory)!r}."
            )
        tmp_npz = tmp_dir / packed.name
        with open(tmp_npz, "wb") as out:  # a file object stops numpy appending ".npz"
            np.savez_compressed(out, **arrays)
        os.replace(tmp_npz, directory / packed.name)
    return directory


# ----- the public downloads -----


def download_dataset(name: str, data_dir=None, *, force: bool = False) -> pathlib.Path:
    """Download a dataset's canonical files into ``data_dir``, checking their checksums.

    Each file goes to a temporary file in ``data_dir`` first and is renamed into place only
    when its checksum matches, so a failed or tampered download leaves nothing behind. Files
    already present (in ``data_dir`` or its sub-folder :attr:`DatasetSpec.subdir`) are kept
    unless ``force``; label files are fetched too. Static MNIST's three ``.amat`` files are
    checked, converted to one ``static_mnist.npz`` and its content hash checked
    (:data:`STATIC_MNIST_SHA256`). OMNIGLOT and histopathology publish no sha256: their files
    are checked against their git blob ids in the repositories they are downloaded from.

    :param str name: a dataset name (see :data:`DATASET_NAMES`).
    :param data_dir: target directory; default :func:`default_cache_dir` (its sub-folder
        ``subdir``). Created if needed.
    :param bool force: download again even where the files exist.
    :return: the directory, ready for :func:`load_dataset`.
    :rtype: pathlib.Path
    :raises ValueError: for a dataset without files (``embedded-mnist``, ``npz``) or a checksum
        mismatch.
    :raises OSError: if a file cannot be downloaded from any of its URLs.
    """
    spec = dataset_spec(name)
    if not spec.files:
        raise ValueError(f"{spec.name} has no files to download (it is {spec.elsewhere}).")
    return download_files(spec, spec_directory(spec, data_dir), force=force)


def download_static_mnist(
    cache_dir=None, *, base_url: str = STATIC_MNIST_URL, force: bool = False, sha256: str | None = None
) -> pathlib.Path:
    """Download static binarized MNIST and cache it as ``static_mnist.npz``.

    :func:`download_dataset` for ``"static-mnist"``, from a mirror if you like: fetches
    ``{base_url}/binarized_mnist_{train,valid,test}.amat`` into a temporary directory inside
    ``cache_dir``, checks each file's sha256, converts them to uint8 arrays, checks the content
    hash and only then renames the npz into place, so an interrupted or corrupted download
    never leaves a file that :func:`load_static_mnist` would read. Does nothing when the npz is
    already there (unless ``force``).

    :param cache_dir: where to put ``static_mnist.npz``; default :func:`default_cache_dir`.
        Created if needed.
    :param str base_url: URL of the directory holding the amat files (``file://`` works).
    :param bool force: download again even if the npz exists.
    :param sha256: expected content hash (see :data:`STATIC_MNIST_SHA256`); ``None`` means the
        canonical one, and the canonical files' sha256 are checked too. Only useful for mirrors
        of other data, and for tests: giving it replaces both checks by this one.
    :return: ``cache_dir``, ready for :func:`load_static_mnist`.
    :rtype: pathlib.Path
    :raises ValueError: if a downloaded file's or the content's hash differs (both hashes are
        named).
    :raises OSError: if a file cannot be downloaded.
    """
    spec = DATASETS["static-mnist"]
    files = tuple(dataclasses.replace(source, urls=(f"{base_url.rstrip('/')}/{source.name}",),
                                      sha256=source.sha256 if sha256 is None else None)
                  for source in spec.files)
    packed = spec.packed if sha256 is None else dataclasses.replace(spec.packed, content_sha256=sha256)
    directory = default_cache_dir() if cache_dir is None else as_dir(cache_dir, "cache_dir")
    return download_files(dataclasses.replace(spec, files=files, packed=packed), directory, force=force)
