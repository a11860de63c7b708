"""Checkpoints: one safe, self-describing file format for both backends.

A checkpoint is a NumPy ``.npz`` archive (``last.npz``, ``best.npz``) holding

- arrays only: parameters, optimizer moments, RNG state, each under a ``group/name`` key;
- one JSON document (key ``__meta__``, UTF-8 bytes): the format and its version, the
  backend, the epoch, the run's configuration (model, prior, sizes, likelihood, dataset,
  optimizer settings, seed, ...), a signature of every parameter's shape and dtype, the
  training history, and whatever else the training loop needs to resume.

It is read with ``numpy.load(allow_pickle=False)``: no pickle, so a crafted file cannot run
code, and object arrays are refused. Writes go to a temporary file that is renamed over
the target, so an interrupt never leaves a truncated checkpoint. A file that is missing,
truncated, corrupt, of another format (e.g. the pickle ``.pt`` / ``.pkl`` checkpoints of
ppl_vae 0.1) or of a different run raises :class:`CheckpointError` naming the file and
saying what to do.

On ``resume``, :func:`config_mismatches` compares the checkpoint's configuration with the
new run's. Only the settings in :data:`RESUMABLE` may differ: the number of epochs, early
stopping, and the learning rate (both backends then train on at the new rate). Anything
else (a different ``num_pseudo``, hidden widths, batch size, warm-up, seed, dataset,
parameter shapes, ...) is refused with the list of differences.

This module imports only NumPy, the standard library and :mod:`ppl_vae.errors` (where
:class:`CheckpointError` and :class:`CheckpointMismatchError` are defined).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import zipfile

import numpy as np

from ppl_vae.errors import CheckpointError, CheckpointMismatchError

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "FORMAT",
    "VERSION",
    "RESUMABLE",
    "ADDED_SETTINGS",
    "save_checkpoint",
    "load_checkpoint",
    "config_mismatches",
    "check_resumable",
    "check_signature",
    "param_signature",
    "legacy_checkpoints",
]

FORMAT = "ppl_vae-checkpoint"
VERSION = 1
RESUMABLE = frozenset({"num_epochs", "early_stopping", "learning_rate"})
# Settings that joined the configuration after checkpoints of this format were written,
# with the value those runs had: a configuration without one compares as if it held it, so
# the older checkpoints still resume.
ADDED_SETTINGS = {"normalize_gradients": False, "optimizer": "adam"}
_META = "__meta__"
_LEGACY = (".pt", ".pkl")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    raise TypeError(f"checkpoint metadata must be JSON data; got {type(value).__name__}")


def save_checkpoint(path, arrays, meta):
    """Write ``arrays`` (name -> array) and ``meta`` (JSON-able dict) to ``path``, atomically.

    :param path: target file (``.npz``).
    :param dict arrays: ``{name: array}``; names may contain ``/``. Object arrays are refused.
    :param dict meta: plain data (str, numbers, bools, None, lists, dicts); ``format``,
        ``version`` are added.
    :returns: the path.
    """
    path = pathlib.Path(path)
    payload = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype == object:
            raise TypeError(f"checkpoint array {name!r} has dtype object; only numeric arrays "
                            "are stored")
        payload[name] = value
    document = {"format": FORMAT, "version": VERSION, **meta}
    payload[_META] = np.frombuffer(
        json.dumps(document, default=_json_default).encode("utf-8"), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path, *, backend=None):
    """Read a checkpoint written by :func:`save_checkpoint`.

    :param path: the ``.npz`` file.
    :param str backend: when given, the checkpoint must have been written by this backend
        (``"pyro"`` or ``"numpyro"``).
    :returns: ``(arrays, meta)``: a dict of NumPy arrays and the metadata dict.
    :raises CheckpointError: missing, truncated, corrupt, of another format or backend.
    """
    path = pathlib.Path(path)
    advice = ("Delete it (or point --out / checkpoint_dir elsewhere) and train again; a "
              "run's other checkpoint (best.npz or last.npz) may still load.")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        # our own file handle: numpy leaves its own open when the archive fails to parse
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path} is a single array, not a ppl_vae checkpoint "
                                      f"archive. {advice}")
            if _META not in archive.files:
                raise CheckpointError(f"{path} has no {_META!r} entry: it is an .npz file but "
                                      f"not a ppl_vae checkpoint. {advice}")
            arrays = {name: archive[name] for name in archive.files}
    except CheckpointError:
        raise
    except ValueError as e:
        if "pickle" in str(e):
            raise CheckpointError(
                f"{path} is not a ppl_vae checkpoint: it holds pickled data, which is never "
                "loaded (unpickling a file can run arbitrary code; ppl_vae 0.1's .pt/.pkl "
                f"checkpoints were pickles). {advice}") from None
        raise CheckpointError(f"{path} is not a readable ppl_vae checkpoint ({e}). "
                              f"{advice}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(
            f"{path} is not a readable ppl_vae checkpoint: it is truncated or corrupt "
            f"({type(e).__name__}: {e}). {advice}") from None
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has corrupt metadata ({e}). {advice}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is an .npz file but not a ppl_vae checkpoint. {advice}")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {meta.get('version')} ppl_vae checkpoint; this ppl_vae reads "
            f"version {VERSION}. {advice}")
    if backend is not None and meta.get("backend") != backend:
        raise CheckpointError(
            f"{path} was written by the {meta.get('backend')} backend; it cannot be resumed "
            f"by the {backend} backend. Resume with the backend that wrote it, or use "
            "another --out directory.")
    return arrays, meta


def legacy_checkpoints(directory):
    """Pickle checkpoints of ppl_vae 0.1 (``last.pt``, ``best.pkl``, ...) in ``directory``."""
    directory = pathlib.Path(directory)
    return sorted(p for p in directory.glob("*") if p.suffix in _LEGACY
                  and p.stem in ("last", "best"))


def param_signature(named_arrays):
    """``{name: [shape, dtype]}`` of every parameter: what a checkpoint must match to load."""
    return {name: [list(np.shape(value)), str(np.asarray(value).dtype)]
            for name, value in named_arrays.items()}


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_mismatches(saved, current, resumable=RESUMABLE):
    """The settings (other than ``resumable`` ones) that differ between two configurations.

    A key present on one side only counts as a difference (shown as ``None`` on the other),
    except one of :data:`ADDED_SETTINGS`, which takes its default where it is absent. Values
    are compared after a JSON round trip, so tuples and lists compare equal.

    :returns: list of ``(key, saved value, current value)``, sorted by key.
    """
    saved = {**ADDED_SETTINGS, **json.loads(json.dumps(saved, default=_json_default))}
    current = {**ADDED_SETTINGS, **json.loads(json.dumps(current, default=_json_default))}
    return [(key, saved.get(key), current.get(key))
            for key in sorted(set(saved) | set(current))
            if key not in resumable and not _same(saved.get(key), current.get(key))]


def _short(value, limit=80):
    text = json.dumps(value, default=_json_default)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _signature_differences(saved, signature):
    """``(parameter name, in the checkpoint, now)`` for every parameter whose shape or dtype
    differs, or that exists on one side only."""
    differences = []
    for name in sorted(set(saved) | set(signature)):
        if name not in signature:
            differences.append((f"parameter {name}", saved[name], "absent"))
        elif name not in saved:
            differences.append((f"parameter {name}", "absent", signature[name]))
        elif not _same(saved[name], json.loads(json.dumps(signature[name]))):
            differences.append((f"parameter {name}", saved[name], signature[name]))
    return differences


def _lines(differences):
    return "\n".join(f"  {key}: checkpoint {_short(old)}, now {_short(new)}"
                     for key, old, new in differences)


def check_resumable(path, meta, config, signature):
    """Refuse to resume from ``path`` when its configuration or parameter shapes differ.

    :param meta: the checkpoint's metadata (with ``config`` and ``signature``).
    :param dict config: the new run's configuration.
    :param dict signature: :func:`param_signature` of the new run's parameters.
    :raises CheckpointMismatchError: listing every differing setting.
    """
    differences = (config_mismatches(meta.get("config", {}), config)
                   + _signature_differences(meta.get("signature", {}), signature))
    if differences:
        raise CheckpointMismatchError(
            f"cannot resume from {path}: it was written by a run with other settings.\n"
            f"{_lines(differences)}\nResume with the checkpoint's settings, or start a new run "
            "in another --out directory (checkpoint_dir). Only these may change on resume: "
            f"{', '.join(sorted(RESUMABLE))}.", differences)


def check_signature(path, meta, signature):
    """Refuse to load the parameters of ``path`` into a model whose parameters differ.

    :param meta: the checkpoint's metadata (with ``signature``).
    :param dict signature: :func:`param_signature` of the model's parameters.
    :raises CheckpointMismatchError: listing every differing parameter.
    """
    differences = _signature_differences(meta.get("signature", {}), signature)
    if differences:
        raise CheckpointMismatchError(
            f"cannot load the parameters of {path} into this model: they were trained for "
            f"another one.\n{_lines(differences)}\nBuild the model and guide with the "
            f"checkpoint's settings (its config: {_short(meta.get('config', {}), 200)}).",
            differences)
