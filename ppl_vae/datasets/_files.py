"""What a dataset's files are and where: the download cache, the canonical files of a dataset
(:class:`SourceFile`), the npz a download packs them into (:class:`PackedFile`), and the
directory of ``data_dir`` that holds them."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def default_cache_dir() -> pathlib.Path:
    """Directory where downloaded datasets are cached.

    :return: ``$PPL_VAE_DATA`` when that environment variable is set and non-empty, else
        ``~/.cache/ppl_vae``. The directory is not created. Static MNIST is cached there
        directly, every other dataset in a sub-folder named as :attr:`DatasetSpec.subdir`.
    :rtype: pathlib.Path
    """
    env = os.environ.get("PPL_VAE_DATA", "")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "ppl_vae"


def as_dir(data_dir, arg: str = "data_dir") -> pathlib.Path:
    """``data_dir`` as a path, or a ``TypeError`` naming ``arg``."""
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a str or os.PathLike; got {type(data_dir).__name__}.")
    return pathlib.Path(data_dir).expanduser()


@dataclass(frozen=True)
class SourceFile:
    """One canonical file of a dataset and where to download it.

    :param str name: the file's name, as a user downloads it (e.g. ``frey_rawface.mat``).
    :param tuple urls: download locations, tried in order (mirrors).
    :param sha256: sha256 of the file as downloaded, or ``None`` where none is published.
    :param tuple alternatives: other names the loader accepts in its place (e.g. the
        uncompressed ``train-images-idx3-ubyte``), in order of preference after ``name``.
    :param bool required: ``False`` for files the loader uses when present (labels).
    :param git_blob: where no sha256 is published and the URLs serve the file from a git
        repository, the file's git blob id there (the SHA-1 of ``b"blob <size>\\0" + content``,
        as ``git hash-object`` prints it), checked instead. A file with neither checksum is
        downloaded with a warning that prints the sha256 it got.
    """

    name: str
    urls: tuple[str, ...]
    sha256: str | None
    alternatives: tuple[str, ...] = ()
    required: bool = True
    git_blob: str | None = None

    def find(self, directory: pathlib.Path) -> pathlib.Path | None:
        """The first of ``name`` and ``alternatives`` present in ``directory``, or ``None``.

        :param pathlib.Path directory: where to look.
        """
        for name in (self.name, *self.alternatives):
            if (directory / name).is_file():
                return directory / name
        return None

    def describe(self) -> str:
        """``name`` with its alternatives, for messages."""
        return self.name + (f" (or {' or '.join(self.alternatives)})" if self.alternatives else "")


@dataclass(frozen=True)
class PackedFile:
    """The one ``.npz`` a download converts a dataset's files into (then deletes them).

    :param str name: the npz's name (e.g. ``static_mnist.npz``); its presence means the
        dataset is downloaded.
    :param read: ``read(paths) -> {array name: array}``: the downloaded files, in the order of
        :attr:`DatasetSpec.files`, read into the arrays to save.
    :param str content_sha256: sha256 of the arrays' bytes, concatenated in the order ``read``
        returns them: a checksum of the content, whatever the files' formatting or the npz's
        compression.
    """

    name: str
    read: Callable[[list[pathlib.Path]], dict[str, np.ndarray]] = field(repr=False)
    content_sha256: str


def missing_files(files, directory: pathlib.Path) -> list[str]:
    """The required files of ``files`` that ``directory`` lacks, described for a message."""
    return [f.describe() for f in files if f.required and f.find(directory) is None]


def spec_directory(spec, data_dir, arg: str = "data_dir") -> pathlib.Path:
    """``data_dir`` as a path, or where ``None`` the download cache's folder of ``spec``."""
    return as_dir(data_dir, arg) if data_dir is not None else default_cache_dir() / spec.subdir


def locate(spec, data_dir) -> pathlib.Path:
    """The directory holding ``spec``'s required files: ``data_dir`` itself or its sub-folder
    ``spec.subdir`` (so both ``data/freyfaces`` and ``data`` work); default the download cache.

    :raises FileNotFoundError: naming the directory and the files it lacks, and how to
        download them.
    """
    directory = spec_directory(spec, data_dir)
    download_hint = (
        f"Download with load_dataset({spec.name!r}, {str(directory)!r}, download=True), or fetch "
        + ", ".join(f.urls[0] for f in spec.files if f.required)
        + " yourself."
    )
    if not directory.exists():
        raise FileNotFoundError(f"data_dir {str(directory)!r} does not exist. {download_hint}")
    if not directory.is_dir():
        raise ValueError(f"data_dir must be a directory; {str(directory)!r} is a file.")
    for candidate in (directory, directory / spec.subdir):
        if candidate.is_dir() and not missing_files(spec.files, candidate):
            return candidate
    missing = missing_files(spec.files, directory)
    raise FileNotFoundError(
        f"data_dir {str(directory)!r} (nor its sub-folder {spec.subdir!r}) does not hold the "
        f"{spec.name} files; missing: {', '.join(missing)}. {download_hint}"
    )
