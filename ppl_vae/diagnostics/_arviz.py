"""The ArviZ adapter: every call whose API differs between ArviZ 0.x (InferenceData,
``ELPDData`` as a pandas Series) and 1.x (``xarray.DataTree``, arviz-base / arviz-stats /
arviz-plots, ``ELPDData`` dataclasses) lives in :class:`_ArviZ`, and only there."""

import warnings
from collections.abc import Mapping

import numpy as np

from ppl_vae.diagnostics._khat import MIN_KHAT_SAMPLES

# a held-out ELPD object's class, named so that pickle finds it (ppl_vae.diagnostics has a
# module __getattr__ that builds it on first use)
HELD_OUT_CLASS_NAME = "HeldOutELPD"


def held_out_header(num_points, num_samples, estimator):
    """The first line of a held-out ELPD object's printout (ArviZ's says "posterior
    samples", which a held-out evaluation has none of)."""
    each = f"{num_samples} {estimator} each" if num_samples else f"{estimator}, number unknown"
    return (f"Held-out elpd of {num_points} test examples ({each}): the exact out-of-sample "
            "elpd, no posterior draws, no LOO approximation.")


def good_k(num_samples):
    """Vehtari et al.'s sample-size-dependent k-hat threshold, as ``az.loo`` sets it:
    ``min(1 - 1 / log10(S), 0.7)``; 0.7 when S is unknown (0)."""
    if num_samples is None or num_samples <= 1:
        return 0.7
    return float(min(1 - 1 / np.log10(num_samples), 0.7))


class _ArviZ:
    """The handful of ArviZ calls that differ between 0.x (InferenceData) and 1.x
    (``xarray.DataTree``, arviz-base / arviz-stats / arviz-plots).

    ``az`` is the imported ``arviz`` module; ``modern`` is True from version 1.0.
    """

    def __init__(self, az):
        self.az = az
        self.modern = int(az.__version__.split(".")[0]) >= 1
        self._held_out_class = None

    # -- Pareto k-hat ---------------------------------------------------------------------

    def psis_khat(self, log_weights):
        """k-hat along the last axis of ``log_weights`` (..., S); shape (...)."""
        if log_weights.shape[-1] < MIN_KHAT_SAMPLES:
            # fewer than 5 tail draws: no tail to fit. ArviZ 0.x returns inf, arviz-stats
            # raises; one answer for both
            return np.full(log_weights.shape[:-1], np.inf)
        if self.modern:
            from arviz_stats.base import array_stats

            # arviz-stats smooths log-likelihood-like input and negates it internally
            _, khat = array_stats.psislw(-log_weights, r_eff=1.0, axis=-1)
            # arviz-stats gives NaN where the tail is too degenerate to fit (its first
            # quartile equals its minimum); 0.x gives a number. Either way the estimate
            # cannot be trusted: inf, like a tail too short to fit
            khat = np.where(np.isnan(khat), np.inf, khat)
        else:
            # ArviZ 0.x smooths along the last axis of a NumPy array (its docstring:
            # "the last dimension will be interpreted as __sample__") and loops over the
            # leading ones itself
            _, khat = self.az.psislw(log_weights, reff=1.0)
        return np.asarray(khat, dtype=float)

    # -- building and reading InferenceData / DataTree ------------------------------------

    def from_dict(self, groups, coords, dims, attrs):
        """InferenceData (0.x) or DataTree (1.x) from ``{group: {var: array}}``; the
        posterior-like groups lead with (chain, draw)."""
        if self.modern:
            data = self.az.from_dict(groups, coords=coords, dims=dims)
        else:
            data = self.az.from_dict(**groups, coords=coords, dims=dims)
        # per-group attributes, set the same way in both versions (0.x's ``attrs`` argument
        # is for the root, 1.x's differs)
        for name in groups:
            data[name].attrs.update(attrs)
        return data

    def add_group(self, data, name, dataset):
        """Attach an ``xarray.Dataset`` without (chain, draw) as group ``name``."""
        if self.modern:
            import xarray as xr

            data[name] = xr.DataTree(dataset=dataset)
        else:
            data.add_groups({name: dataset})
        return data

    def from_groups(self, datasets, attrs=None):
        """InferenceData (0.x) or DataTree (1.x) from ``{group: xarray.Dataset}``, with
        root attributes ``attrs``."""
        if self.modern:
            import xarray as xr

            data = xr.DataTree.from_dict(datasets)
        else:
            data = self.az.InferenceData(**datasets)
        if attrs:
            self.set_attrs(data, attrs)
        return data

    def is_data(self, obj):
        """Whether ``obj`` is one InferenceData (0.x) / DataTree (1.x). Both are Mappings,
        so a dict of models is told apart from them by this."""
        if self.modern:
            import xarray as xr

            return isinstance(obj, xr.DataTree)
        return isinstance(obj, self.az.InferenceData)

    def is_runs(self, obj):
        """Whether ``obj`` is a dict of models (name -> InferenceData or ELPD object)."""
        return isinstance(obj, Mapping) and not self.is_data(obj) and not self.is_elpd(obj)

    def attrs(self, data):
        """The root attributes (a dict)."""
        return dict(data.attrs)

    def set_attrs(self, data, attrs):
        if self.modern:
            data.attrs.update(attrs)
        else:
            data.attrs = {**data.attrs, **attrs}  # 0.x: a property that copies

    def group_names(self, data):
        if self.modern:
            return list(data.children)
        return list(data.groups())

    def group(self, data, name):
        """Group ``name`` as an ``xarray.Dataset``."""
        if self.modern:
            return data[name].to_dataset()
        return data[name]

    def to_netcdf(self, data, path):
        # h5netcdf is what ppl_vae's diagnostics extra installs; netCDF4 may be absent
        data.to_netcdf(str(path), engine="h5netcdf")

    def from_netcdf(self, path):
        """Read everything into memory, so no file handle outlives the call."""
        if self.modern:
            data = self.az.from_netcdf(str(path))
            return data.load()
        with self.az.rc_context({"data.load": "eager"}):
            return self.az.from_netcdf(str(path))

    # -- ELPD objects ---------------------------------------------------------------------

    @property
    def held_out_class(self):
        """ArviZ's ELPD class, subclassed for a held-out evaluation: kind ``held_out``
        under 1.x (so ``az.compare`` refuses to mix it with PSIS-LOO), ``loo`` under 0.x
        (the only kinds 0.x's ``compare`` knows are loo and waic), and a printout that
        says what it is."""
        if self._held_out_class is None:
            self._held_out_class = (self._modern_held_out_class() if self.modern
                                    else self._legacy_held_out_class())
            self._held_out_class.__module__ = "ppl_vae.diagnostics"
            self._held_out_class.__name__ = HELD_OUT_CLASS_NAME
            self._held_out_class.__qualname__ = HELD_OUT_CLASS_NAME
        return self._held_out_class

    def _modern_held_out_class(self):
        from dataclasses import dataclass
        from typing import ClassVar

        from arviz_stats.utils import ELPDDataLOO

        @dataclass(kw_only=True, repr=False)
        class HeldOutELPD(ELPDDataLOO):
            """A held-out (test-set) elpd: the sum of per-example log p(x), with the
            Pareto k-hat of each example's importance weights."""

            _kind: ClassVar[str] = "held_out"
            _display_kind: ClassVar[str] = "held_out"
            estimator: str = "importance samples"

            def _header(self):
                return held_out_header(self.n_data_points, self.n_samples, self.estimator)

        return HeldOutELPD

    def _legacy_held_out_class(self):
        class HeldOutELPD(self.az.ELPDData):
            """A held-out (test-set) elpd: the sum of per-example log p(x), with the
            Pareto k-hat of each example's importance weights."""

            _metadata = ["estimator"]

            def __str__(self):
                # ArviZ's printout, its first line ("Computed from S posterior samples")
                # replaced
                _, rest = super().__str__().split("\n", 1)
                estimator = getattr(self, "estimator", "importance samples")
                return held_out_header(self["n_data_points"], self["n_samples"],
                                       estimator) + "\n" + rest

        return HeldOutELPD

    def held_out_elpd(self, elpd_i, pareto_k, se, num_samples, estimator):
        """A held-out ELPD object from ``elpd_i`` and ``pareto_k`` (DataArrays, dim
        ``example``)."""
        total = float(elpd_i.values.sum())
        num = int(elpd_i.size)
        threshold = good_k(num_samples)
        warning = bool(np.any(~(pareto_k.values <= threshold)))  # inf and NaN are bad
        cls = self.held_out_class
        if self.modern:
            return cls(elpd=total, se=se, p=0.0, n_samples=int(num_samples or 0),
                       n_data_points=num, scale="log", warning=warning, good_k=threshold,
                       elpd_i=elpd_i, pareto_k=pareto_k, estimator=estimator)
        out = cls(data=[total, se, 0.0, int(num_samples or 0), num, warning,
                        elpd_i.rename("loo_i"), pareto_k, "log", threshold],
                  index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning",
                         "loo_i", "pareto_k", "scale", "good_k"])
        out.estimator = estimator
        return out

    def is_elpd(self, obj):
        return isinstance(obj, self.az.ELPDData)

    def is_held_out(self, obj):
        return isinstance(obj, self.held_out_class)

    def elpd_fields(self, obj):
        """An ELPD object of either version as a dict: ``kind`` ('held_out' or ArviZ's),
        ``elpd``, ``se``, ``p``, ``elpd_i`` and ``pareto_k`` (DataArrays or None),
        ``n_samples``, ``n_data_points``, ``good_k``, ``warning``."""
        if self.modern:
            fields = {k: getattr(obj, k) for k in ("elpd", "se", "p", "elpd_i", "pareto_k",
                                                   "n_samples", "n_data_points", "good_k",
                                                   "warning")}
            kind = obj.kind
        else:
            kind = obj.index[0].split("_", 1)[1]  # elpd_loo / elpd_waic
            fields = {"elpd": obj.iloc[0], "se": obj["se"], "p": obj[f"p_{kind}"],
                      "elpd_i": obj.get(f"{kind}_i"), "pareto_k": obj.get("pareto_k"),
                      "n_samples": obj["n_samples"], "n_data_points": obj["n_data_points"],
                      "good_k": obj.get("good_k"), "warning": obj["warning"]}
        fields["kind"] = "held_out" if self.is_held_out(obj) else kind
        return fields

    def with_pointwise(self, obj, elpd_i):
        """A copy of ELPD object ``obj`` whose pointwise values are ``elpd_i`` (a
        DataArray), its totals unchanged."""
        if self.modern:
            import copy

            out = copy.copy(obj)
            out.elpd_i = elpd_i
            return out
        key = f"{obj.index[0].split('_', 1)[1]}_i"  # loo_i / waic_i
        values = [elpd_i if name == key else value for name, value in obj.items()]
        return self.az.ELPDData(data=values, index=obj.index)

    # -- LOO and comparison ---------------------------------------------------------------

    def loo(self, data):
        """PSIS-LOO of posterior draws (``az.loo``, pointwise): an ELPD object."""
        return self.az.loo(data, pointwise=True)

    def compare(self, models):
        """``az.compare`` of ELPD objects, with 0.x column names and conventions: rank,
        elpd_loo, p_loo, elpd_diff (>= 0, the best model's elpd minus this one's), weight,
        se, dse, warning."""
        if self.modern:
            # arviz-stats rounds the table for display by default and reports elpd_diff
            # as this model minus the best (<= 0); unrounded and 0.x's sign here
            table = self.az.compare(models, round_to="none")
            table = table.rename(columns={"elpd": "elpd_loo", "p": "p_loo"})
            table["elpd_diff"] = 0.0 - table["elpd_diff"]  # 0.0 - 0.0 is +0.0
            # 0.x's warning: some pointwise k-hat above the good-k threshold, which 1.x
            # spells out in diag_elpd ("3 k-hat > 0.70")
            table["warning"] = table["diag_elpd"].fillna("").astype(str) != ""
            first = [c for c in COMPARE_COLUMNS if c in table.columns]
            return table[first + [c for c in table.columns if c not in first]]
        return self.az.compare(models)

    # -- figures --------------------------------------------------------------------------

    def plot_compare(self, table, path):
        """The ``az.compare`` table (in :meth:`compare`'s 0.x convention) as a figure."""
        if self.modern:
            import arviz_plots as azp

            # back to arviz-stats' own convention, which arviz-plots reads
            native = table.rename(columns={"elpd_loo": "elpd", "p_loo": "p"})
            native["elpd_diff"] = 0.0 - native["elpd_diff"]
            collection = azp.plot_compare(native, backend="matplotlib",
                                          figure_kwargs={"figsize": (6, 3)})
            figure = collection.get_viz("figure")
            figure.savefig(path, dpi=80, bbox_inches="tight")
            return figure
        ax = self.az.plot_compare(table, insample_dev=False, figsize=(6, 3))
        ax.figure.savefig(path, dpi=80, bbox_inches="tight")
        return ax.figure

    def plot_forest(self, data, var_names, ci_prob, path, title=None):
        """Credible intervals of ``var_names`` (one chain combined) as a forest plot."""
        if self.modern:
            import arviz_plots as azp

            collection = azp.plot_forest(data, var_names=list(var_names), combined=True,
                                         ci_probs=[0.5, ci_prob], backend="matplotlib",
                                         figure_kwargs={"figsize": (6, 3.5)})
            figure = collection.get_viz("figure")
            if title:
                figure.suptitle(title)
            figure.savefig(path, dpi=80, bbox_inches="tight")
            return figure
        axes = self.az.plot_forest(data, var_names=list(var_names), combined=True,
                                   hdi_prob=ci_prob, figsize=(6, 3.5))
        if title:
            axes[0].set_title(title)
        axes[0].figure.savefig(path, dpi=80, bbox_inches="tight")
        return axes[0].figure


COMPARE_COLUMNS = ("rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse",
                   "warning", "scale")
_ADAPTER = None


def _arviz():
    """The adapter, importing ArviZ on first use."""
    global _ADAPTER
    if _ADAPTER is None:
        try:
            with warnings.catch_warnings():
                # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning once a day on
                # import; that is news for the reader of this module, not for its users
                warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing",
                                        category=FutureWarning)
                import arviz
        except ImportError:
            raise ImportError(
                "ppl_vae.diagnostics needs ArviZ: pip install 'ppl_vae[diagnostics]'."
            ) from None
        _ADAPTER = _ArviZ(arviz)
    return _ADAPTER
