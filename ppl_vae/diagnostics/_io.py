"""Files: one model per InferenceData; a run of several models as one netCDF file with
one group per model, which no ArviZ call can read as one model."""

import json
import os
from pathlib import Path

import numpy as np

from ppl_vae.diagnostics._arviz import _arviz
from ppl_vae.diagnostics._data import _clean_attrs, upgrade_legacy
from ppl_vae.diagnostics._elpd import RUNS_ATTR

RUNS_FILE = "inference_data.nc"  # the file save_runs writes into a run's output folder
RUNS_NOTE = (
    "A run of several models: one ArviZ InferenceData per netCDF group, named after the "
    "model. Read them with ppl_vae.diagnostics.load(path) (a dict name -> InferenceData); "
    "one model with ArviZ 0.x's az.InferenceData.from_netcdf(path, base_group=NAME), or "
    "ArviZ 1.x's az.from_netcdf(path)[NAME]. Calls on the whole file (az.loo, az.waic, "
    "az.summary, az.compare) find no group to read, so they raise instead of pooling the "
    "models; ppl_vae.diagnostics.compare(load(path)) ranks them.")


def concat(datas, dim="model"):
    """Stack several fits' InferenceData along a new dimension ``dim``, for analysis with
    xarray (e.g. ``khat.sel(prior="vamp")``).

    ``datas`` maps a label (e.g. the prior's name) to an InferenceData with the same groups;
    each group becomes one dataset with a leading ``dim`` coordinate holding the labels.
    Dimensions of different lengths (e.g. ``step`` after early stopping) are padded with NaN.
    Groups of posterior draws (``posterior``, ``log_likelihood``, anything with ``chain``
    and ``draw``) are refused: ArviZ reads every dimension but those two as observations,
    so ``az.waic`` or ``az.summary`` of the result would pool the models. To keep and
    compare several models, keep the dict: :func:`save_runs` writes it, :func:`compare`
    ranks it.

    :param dict datas: ``{label: InferenceData}``.
    :returns: InferenceData (a DataTree under ArviZ 1.x).
    :raises ValueError: for an empty dict or groups of posterior draws.
    """
    import pandas as pd
    import xarray as xr

    adapter = _arviz()
    labels = list(datas)
    if not labels:
        raise ValueError("concat needs at least one InferenceData; got an empty dict.")
    names = adapter.group_names(datas[labels[0]])
    for label in labels:
        for name in adapter.group_names(datas[label]):
            dims = set(adapter.group(datas[label], name).dims)
            if name == "log_likelihood" or {"chain", "draw"} <= dims:
                raise ValueError(
                    f"concat cannot stack group {name!r} of {label!r}: ArviZ "
                    f"would read the models stacked along {dim!r} as one model's draws and "
                    "observations (az.loo, az.waic, az.summary would pool them). Keep the "
                    "dict {name: InferenceData}: save_runs writes it, compare ranks it.")
    index = pd.Index(labels, name=dim)
    return adapter.from_groups({
        name: xr.concat([adapter.group(datas[label], name) for label in labels], dim=index,
                        join="outer", combine_attrs="drop_conflicts")
        for name in names
    })


def save(data, path):
    """Write one model's InferenceData / DataTree to a netCDF file (h5netcdf); a dict of
    them goes to :func:`save_runs`. Returns the path."""
    if _arviz().is_runs(data):
        return save_runs(data, path)
    _arviz().to_netcdf(data, path)
    return path


def _runs_path(path):
    path = Path(path)
    return path / RUNS_FILE if path.is_dir() else path


def save_runs(runs, path):
    """Write a run of several models into one netCDF file, one group per model.

    The file's root holds no data, only the attributes ``ppl_vae_runs`` (the models'
    names, JSON), ``load`` and ``note``; group ``/<name>`` holds model ``name``'s InferenceData
    (its groups as subgroups, its root attributes on the group), the layout of ArviZ 0.x's
    ``to_netcdf(path, base_group=name)``. So ``az.from_netcdf`` of the file gives ArviZ
    nothing to read as draws or observations (0.x: no groups; 1.x: a DataTree with one
    child per model), and no ArviZ call can pool the models. The file is written beside
    its final name and moved there, so an interrupted run leaves the previous file whole.

    Example::

        >>> import tempfile
        >>> from ppl_vae.diagnostics import load, save_runs, vae_inference_data
        >>> runs = {"standard": vae_inference_data([-90.0, -95.0], [0.2, 0.3]),
        ...         "vamp": vae_inference_data([-89.0, -93.0], [0.2, 0.4])}
        >>> path = save_runs(runs, tempfile.mkdtemp())  # a folder: <folder>/inference_data.nc
        >>> sorted(load(path))
        ['standard', 'vamp']

    :param dict runs: ``{name: InferenceData}``, one model each (names without ``/``).
    :param path: the file, or an existing folder to write ``inference_data.nc`` into.
    :returns: the file's path (a :class:`pathlib.Path`).
    """
    adapter = _arviz()
    if not adapter.is_runs(runs) or not runs:
        raise TypeError("runs must be a non-empty dict {name: InferenceData}; got "
                        f"{type(runs).__name__}.")
    for name in runs:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError("runs' names must be non-empty strings without '/' or a leading "
                             f"'.'; got {name!r}.")
    path = _runs_path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        _write_runs(adapter, runs, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return path


def _write_runs(adapter, runs, path):
    import xarray as xr

    root = {RUNS_ATTR: json.dumps(list(runs)),
            "load": "ppl_vae.diagnostics.load(path): {name: idata}", "note": RUNS_NOTE}
    xr.Dataset(attrs=root).to_netcdf(path, mode="w", engine="h5netcdf")
    for name, data in runs.items():
        if RUNS_ATTR in adapter.attrs(data):
            raise TypeError(f"runs[{name!r}] is itself a run of several models.")
        xr.Dataset(attrs=_clean_attrs(adapter.attrs(data))).to_netcdf(
            path, mode="a", group=name, engine="h5netcdf")
        for group in adapter.group_names(data):
            dataset = adapter.group(data, group)
            encoding = {var: {"zlib": True} for var, value in dataset.data_vars.items()
                        if np.issubdtype(value.dtype, np.number)}
            dataset.to_netcdf(path, mode="a", group=f"{name}/{group}", engine="h5netcdf",
                              encoding=encoding)


def load(path):
    """Read what :func:`save` or :func:`save_runs` wrote, fully into memory.

    :param path: a netCDF file, or a run's output folder (its ``inference_data.nc``).
    :returns: one InferenceData (a DataTree under 1.x) for a single model's file; a dict
        ``{name: InferenceData}`` for a run's file. A file in the layout written before
        (per-example log p(x) in ``log_likelihood``, several models stacked along a
        ``prior`` dimension) is read into today's layout.
    """
    import h5netcdf
    import xarray as xr

    adapter = _arviz()
    path = _runs_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no diagnostics file at {str(path)!r}.")
    with h5netcdf.File(path, "r") as handle:
        runs = handle.attrs.get(RUNS_ATTR)
        subgroups = {name: list(handle[name].groups) for name in handle.groups}
    if runs is None:
        data = adapter.from_netcdf(path)
        upgraded = upgrade_legacy(data)
        return data if upgraded is None else upgraded
    out = {}
    for name in json.loads(runs):
        datasets = {}
        for group in subgroups[name]:
            with xr.open_dataset(path, group=f"{name}/{group}", engine="h5netcdf") as ds:
                datasets[group] = ds.load()
        with xr.open_dataset(path, group=name, engine="h5netcdf") as root:
            attrs = dict(root.attrs)
        out[name] = adapter.from_groups(datasets, attrs)
    return out
