"""ArviZ diagnostics: every fit lands in InferenceData, every log-likelihood estimate says
how far to trust it.

This is the only module of ppl_vae that imports ArviZ, and it imports it lazily (the
``diagnostics`` extra), so ``import ppl_vae`` and ``import ppl_vae.diagnostics`` never pull
it in. It imports neither torch nor jax: callers pass NumPy arrays (``np.asarray`` is
applied, so torch CPU tensors and jax arrays work too).

- :func:`psis_khat` -- Pareto k-hat [1] of each row of an (N, S) matrix of log importance
  weights: how far to trust each importance-sampled ``log p(x_n)``;
- :func:`khat_summary`, :func:`plot_khat` -- shares of good / ok / bad k-hats, a figure;
- :func:`vae_inference_data` -- a VAE's per-example log-likelihood, k-hat and training
  history as InferenceData;
- :func:`gmm_inference_data` -- draws of a fitted
  :class:`~ppl_vae.mixture.BayesianGaussianMixture` posterior with the pointwise
  log-likelihood, ready for ``az.summary``, ``az.plot_forest``, ``az.loo`` and
  :func:`compare`;
- :func:`variational_khat` -- k-hat of the variational posterior itself [2];
- :func:`loo`, :func:`compare` -- ``az.loo`` with pointwise k-hats; ``az.compare`` with
  the column names of ArviZ 0.x whatever the version;
- :func:`save`, :func:`load` -- netCDF.

Both ArviZ 0.x (pip gives 0.23 on Python 3.11) and 1.x (1.3 on Python 3.12 and 3.13) are
supported and tested (``tests/test_diagnostics_versions.py`` checks both against closed
forms and against 0.23's values for the same inputs). ArviZ 1.x changes a few calls
(``from_dict`` takes one nested dict and returns an ``xarray.DataTree``; no top-level
``psislw``; ``arviz_stats`` wants negated log weights; group access; ``compare`` rounds
its table, flips the sign of ``elpd_diff`` and renames columns; plotting moved to
arviz-plots). Those calls, and only those, go through :class:`_ArviZ` below, which picks
its branch from ``arviz.__version__``. What still differs, within the math's tolerance:
the Pareto tail is one draw shorter under 1.x (k-hat moves by about 1e-3 at S = 5000), and
1.x's LOO standard errors divide by N rather than N - 1 (a factor sqrt(N / (N - 1))).

Thresholds (Vehtari et al. [1]): ``k < 0.5`` the importance-sampling estimate converges
quickly; ``0.5 <= k <= 0.7`` it converges, slowly (more samples help); ``k > 0.7`` the
estimate is unreliable (the weights' variance is effectively infinite; change the
proposal, e.g. a wider guide, rather than adding samples).

References:

1. A. Vehtari, D. Simpson, A. Gelman, Y. Yao and J. Gabry, "Pareto smoothed importance
   sampling", *JMLR* 25(72), 2024.
2. Y. Yao, A. Vehtari, D. Simpson and A. Gelman, "Yes, but did it work?: Evaluating
   variational inference", *ICML* 2018.
"""

import json
import numbers
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "psis_khat",
    "khat_summary",
    "plot_khat",
    "vae_inference_data",
    "gmm_inference_data",
    "variational_khat",
    "loo",
    "compare",
    "plot_compare",
    "plot_forest",
    "group_names",
    "group",
    "concat",
    "save",
    "load",
    "KHAT_GOOD",
    "KHAT_BAD",
    "MIN_KHAT_SAMPLES",
]

KHAT_GOOD = 0.5  # below: fast convergence of the importance-sampling estimate
KHAT_BAD = 0.7  # above: unreliable estimate
# Fewer importance samples than this leave under 5 draws in the Pareto tail (S / 5 of them
# for S <= 225), too few to fit: k-hat is reported as inf, in every ArviZ version.
MIN_KHAT_SAMPLES = 25

# --------------------------------------------------------------------------------------
# the ArviZ adapter: every call whose API differs between ArviZ 0.x and 1.x lives here
# --------------------------------------------------------------------------------------


class _ArviZ:
    """The handful of ArviZ calls that differ between 0.x (InferenceData) and 1.x
    (``xarray.DataTree``, arviz-base / arviz-stats / arviz-plots).

    ``az`` is the imported ``arviz`` module; ``modern`` is True from version 1.0.
    """

    def __init__(self, az):
        self.az = az
        self.modern = int(az.__version__.split(".")[0]) >= 1

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

    def from_groups(self, datasets):
        """InferenceData (0.x) or DataTree (1.x) from ``{group: xarray.Dataset}``."""
        if self.modern:
            import xarray as xr

            return xr.DataTree.from_dict(datasets)
        return self.az.InferenceData(**datasets)

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
        if self.modern:
            data.to_netcdf(str(path), engine="h5netcdf")
        else:
            data.to_netcdf(str(path), engine="h5netcdf")

    def from_netcdf(self, path):
        """Read everything into memory, so no file handle outlives the call."""
        if self.modern:
            data = self.az.from_netcdf(str(path))
            return data.load()
        with self.az.rc_context({"data.load": "eager"}):
            return self.az.from_netcdf(str(path))

    def loo(self, data):
        """PSIS-LOO: (elpd_loo, se, p_loo, pointwise k-hat (N,))."""
        result = self.az.loo(data, pointwise=True)
        if self.modern:
            return float(result.elpd), float(result.se), float(result.p), np.asarray(
                result.pareto_k).ravel()
        return (float(result["elpd_loo"]), float(result["se"]), float(result["p_loo"]),
                np.asarray(result["pareto_k"]).ravel())

    def compare(self, models, ic="loo"):
        """``az.compare`` with 0.x column names and conventions: rank, elpd_loo, p_loo,
        elpd_diff (>= 0, the best model's elpd minus this one's), weight, se, dse,
        warning."""
        if self.modern:
            # arviz-stats rounds the table for display by default and reports elpd_diff
            # as this model minus the best (<= 0); unrounded and 0.x's sign here
            table = self.az.compare(models, round_to="none")
            table = table.rename(columns={"elpd": "elpd_loo", "p": "p_loo"})
            table["elpd_diff"] = 0.0 - table["elpd_diff"]  # 0.0 - 0.0 is +0.0
            # 0.x's warning: some pointwise k-hat above the good-k threshold, which 1.x
            # spells out in diag_elpd ("3 k-hat > 0.70")
            table["warning"] = table["diag_elpd"].fillna("").astype(str) != ""
            first = [c for c in _COMPARE_COLUMNS if c in table.columns]
            return table[first + [c for c in table.columns if c not in first]]
        return self.az.compare(models, ic=ic)


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


_COMPARE_COLUMNS = ("rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse",
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


# --------------------------------------------------------------------------------------
# Pareto k-hat
# --------------------------------------------------------------------------------------


def psis_khat(log_weights):
    """Pareto k-hat of each row of a matrix of log importance weights.

    For row n, ``log_weights[n, s] = log p(x_n, z_s) - log q(z_s | x_n)`` with
    ``z_s ~ q(z | x_n)``; the importance-sampled ``log p(x_n)`` is their log-mean-exp.
    A generalised Pareto distribution is fitted to the largest ``min(S/5, 3 sqrt(S))``
    weights of each row (ArviZ's ``psislw``); its shape k says how heavy the tail is:
    the weights have finite variance only for k < 1/2 and a finite mean only for k < 1.

    .. math::

        \\hat k_n = \\text{shape of the GPD fitted to the tail of }
        \\{w_{ns}\\}_{s=1}^S, \\qquad w_{ns} = \\frac{p(x_n, z_s)}{q(z_s \\mid x_n)}.

    Example::

        >>> import numpy as np
        >>> from ppl_vae.diagnostics import psis_khat
        >>> z = np.random.default_rng(0).normal(scale=1.5, size=(3, 2000))  # q = N(0, 1.5^2)
        >>> log_w = -0.5 * z**2 + 0.5 * (z / 1.5) ** 2  # target N(0, 1), up to a constant
        >>> khat = psis_khat(log_w)
        >>> khat.shape, bool(np.all(khat < 0.5))
        ((3,), True)

    :param log_weights: array-like (N, S) (or (..., S); torch/jax arrays are converted
        with ``np.asarray``). Each row is smoothed along its last axis. ``-inf`` entries
        (zero weights) are allowed; NaN and ``+inf`` are not.
    :returns: NumPy array (N,) (the leading shape of ``log_weights``). ``inf`` where
        S is too small for a tail fit (S < ``MIN_KHAT_SAMPLES`` = 25: fewer than 5 tail
        draws). The tail is the largest ``min(S/5, 3 sqrt(S))`` weights, rounded up by
        ArviZ 0.x and down by arviz-stats (1.x): the two differ by one tail draw, which
        moves k-hat by well under its own standard error (about ``(1 + k) / sqrt(tail)``).
    :raises ValueError: for a scalar input or NaN / ``+inf`` entries.
    """
    log_weights = np.array(log_weights, dtype=float)  # a copy: ArviZ 0.19 smoothed in place
    if log_weights.ndim < 1 or log_weights.shape[-1] < 2:
        raise ValueError(
            "log_weights must be an array of shape (N, S) with S >= 2 importance samples "
            f"per row; got shape {log_weights.shape}."
        )
    if np.isnan(log_weights).any() or np.isposinf(log_weights).any():
        raise ValueError("log_weights must not contain NaN or +inf.")
    # a row of -inf has no tail to fit; keep ArviZ from warning about it
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return _arviz().psis_khat(log_weights)


def khat_summary(khat):
    """Shares of k-hats in the good (< 0.5), ok ([0.5, 0.7]) and bad (> 0.7, or not
    finite) ranges.

    Example::

        >>> from ppl_vae.diagnostics import khat_summary
        >>> s = khat_summary([0.1, 0.2, 0.6, 0.9])
        >>> s["share_good"], s["share_ok"], s["share_bad"], s["max"]
        (0.5, 0.25, 0.25, 0.9)

    :param khat: array-like (N,).
    :returns: dict with ``num`` (N), ``share_good``, ``share_ok``, ``share_bad`` (floats
        summing to 1), ``num_bad``, ``max`` and ``median`` (floats).
    """
    khat = np.asarray(khat, dtype=float).ravel()
    if khat.size == 0:
        raise ValueError("khat must hold at least one value; got an empty array.")
    finite = np.isfinite(khat)
    good = finite & (khat < KHAT_GOOD)
    ok = finite & (khat >= KHAT_GOOD) & (khat <= KHAT_BAD)
    bad = ~(good | ok)
    n = khat.size
    return {
        "num": int(n),
        "share_good": float(good.sum() / n),
        "share_ok": float(ok.sum() / n),
        "share_bad": float(bad.sum() / n),
        "num_bad": int(bad.sum()),
        "max": float(np.max(khat)),
        "median": float(np.median(khat)),
    }


def plot_khat(khat, path=None, ax=None, title=None):
    """k-hat of each example against its index, with the 0.5 and 0.7 thresholds.

    :param khat: array-like (N,).
    :param path: where to save the figure (png); None to skip saving.
    :param ax: a matplotlib Axes to draw into; a new figure when None.
    :param str title: axes title (default: the shares from :func:`khat_summary`).
    :returns: the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    khat = np.asarray(khat, dtype=float).ravel()
    s = khat_summary(khat)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    else:
        fig = ax.figure
    colour = np.where(khat < KHAT_GOOD, "C0", np.where(khat <= KHAT_BAD, "C1", "C3"))
    shown = np.where(np.isfinite(khat), khat, np.nanmax(np.where(np.isfinite(khat), khat,
                                                                   np.nan), initial=1.0))
    ax.scatter(np.arange(khat.size), shown, c=colour, s=8, marker="+")
    for level, style in ((KHAT_GOOD, ":"), (KHAT_BAD, "--")):
        ax.axhline(level, color="0.4", linestyle=style, linewidth=1)
    ax.set(xlabel="example", ylabel="Pareto k-hat",
           title=title or (f"k-hat: {100 * s['share_good']:.0f}% < 0.5, "
                           f"{100 * s['share_bad']:.0f}% > 0.7"))
    if own:
        fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
    if own and path is not None:
        plt.close(fig)
    return fig


# --------------------------------------------------------------------------------------
# InferenceData builders
# --------------------------------------------------------------------------------------


def _clean_attrs(attrs):
    """netCDF attributes are strings, numbers or arrays of them; others go through JSON."""
    out = {}
    for key, value in (attrs or {}).items():
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (str, numbers.Number)):
            value = json.dumps(value, default=str)
        out[str(key)] = value
    return out


def _history_dataset(history):
    """``FitResult.history`` (a list of per-epoch dicts) or a dict of sequences -> Dataset
    with dim ``step``; None entries (no validation data) become NaN."""
    import xarray as xr

    if isinstance(history, Mapping):
        columns = {k: list(v) for k, v in history.items()}
    elif isinstance(history, Sequence) and all(isinstance(r, Mapping) for r in history):
        keys = []
        for record in history:
            keys += [k for k in record if k not in keys]
        columns = {k: [r.get(k) for r in history] for k in keys}
    else:
        raise TypeError(
            "history must be a list of per-epoch dicts (FitResult.history) or a dict of "
            f"sequences; got {type(history).__name__}."
        )
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"history columns must have equal lengths; got {sorted(lengths)}.")
    num_steps = lengths.pop() if lengths else 0
    data_vars = {}
    for name, values in columns.items():
        arr = np.array([np.nan if v is None else v for v in values], dtype=float)
        data_vars[name] = ("step", arr)
    return xr.Dataset(data_vars, coords={"step": np.arange(num_steps)})


def vae_inference_data(log_likelihood, khat, history=None, *, log_weights=None, coords=None,
                       attrs=None):
    """A VAE's test-set evaluation as InferenceData (a DataTree under ArviZ 1.x).

    Groups:

    - ``log_likelihood``: var ``x`` (chain=1, draw=1, example=N), the importance-sampled
      ``log p(x_n)``. It is a point estimate per example, not a set of posterior draws,
      so ``az.loo`` does not apply to it; sum or average it.
    - ``importance``: var ``khat`` (example) and, if given, ``log_weights``
      (example, particle). k-hat is a property of the estimator of each ``log p(x_n)``,
      not of a posterior draw, so it is not put in ``sample_stats`` (whose variables are
      per (chain, draw)). Attribute ``num_particles``; ``share_good`` / ``share_ok`` /
      ``share_bad`` from :func:`khat_summary`.
    - ``training`` (when ``history`` is given): dim ``step`` (one per epoch), one variable
      per history key (``epoch``, ``beta``, ``train_loss``, ``valid_elbo`` with NaN where
      absent, ``seconds``). Never in ``sample_stats``: these are not sampler statistics.

    Example::

        >>> import numpy as np
        >>> from ppl_vae.diagnostics import vae_inference_data
        >>> history = [{"epoch": 0, "beta": 0.5, "train_loss": 120.0, "valid_elbo": None},
        ...            {"epoch": 1, "beta": 1.0, "train_loss": 101.5, "valid_elbo": -99.0}]
        >>> idata = vae_inference_data(-np.arange(1.0, 4.0), [0.1, 0.6, 0.9], history)
        >>> idata["log_likelihood"]["x"].shape, idata["training"]["valid_elbo"].values
        ((1, 1, 3), array([ nan, -99.]))

    :param log_likelihood: array-like (N,), e.g. from ``importance_log_likelihood``.
    :param khat: array-like (N,), from :func:`psis_khat`.
    :param history: ``FitResult.history`` (list of per-epoch dicts) or a dict of sequences.
    :param log_weights: optional (N, S) log importance weights, stored in ``importance``
        (4 bytes x N x S in float32 would be smaller: they are stored as given).
    :param dict coords: optional extra coordinates, e.g. ``{"example": test_indices}``.
    :param dict attrs: attributes for every group (dataset, prior, backend, ...).
    :returns: ``arviz.InferenceData`` (0.x) or ``xarray.DataTree`` (1.x).
    """
    import xarray as xr

    adapter = _arviz()
    log_likelihood = np.asarray(log_likelihood, dtype=float)
    khat = np.asarray(khat, dtype=float)
    if log_likelihood.ndim != 1:
        raise ValueError(
            f"log_likelihood must have shape (N,); got shape {log_likelihood.shape}."
        )
    num = log_likelihood.shape[0]
    if khat.shape != (num,):
        raise ValueError(f"khat must have shape ({num},) like log_likelihood; got "
                         f"shape {khat.shape}.")
    coords = {"example": np.arange(num), **(coords or {})}
    attrs = _clean_attrs(attrs)
    idata = adapter.from_dict(
        {"log_likelihood": {"x": log_likelihood[None, None, :]}},
        coords={"example": coords["example"]}, dims={"x": ["example"]}, attrs=attrs)

    importance = {"khat": ("example", khat)}
    summary = khat_summary(khat) if num else {}
    imp_attrs = {k: summary[k] for k in ("share_good", "share_ok", "share_bad")
                 if k in summary}
    if log_weights is not None:
        log_weights = np.asarray(log_weights)
        if log_weights.ndim != 2 or log_weights.shape[0] != num:
            raise ValueError(f"log_weights must have shape ({num}, S); got shape "
                             f"{log_weights.shape}.")
        importance["log_weights"] = (("example", "particle"), log_weights)
        imp_attrs["num_particles"] = int(log_weights.shape[1])
    imp = xr.Dataset(importance, coords={"example": coords["example"]},
                     attrs={**attrs, **imp_attrs})
    adapter.add_group(idata, "importance", imp)
    if history is not None:
        training = _history_dataset(history)
        training.attrs.update(attrs)
        adapter.add_group(idata, "training", training)
    return idata


def gmm_inference_data(model, X, num_samples=1000, random_state=None, feature_names=None):
    """A fitted :class:`~ppl_vae.mixture.BayesianGaussianMixture` as InferenceData.

    Draws ``theta_s ~ q(theta)`` (the variational posterior) with one chain:

    - ``posterior``: ``weights`` (chain, draw, component), ``means`` (..., component,
      feature), ``covariances`` (..., component, feature, feature2);
    - ``log_likelihood``: ``x`` (chain, draw, obs) =
      ``log sum_k pi_k N(x_n | mu_k, Sigma_k)``, assignments marginalised, so that
      ``az.loo`` / :func:`compare` work (PSIS-LOO with draws from q in place of the
      posterior: trustworthy when :func:`variational_khat` is small);
    - ``sample_stats``: ``lp`` = ``log p(theta, X)`` and ``log_q`` = ``log q(theta)`` per
      draw (their difference gives :func:`variational_khat`);
    - ``observed_data``: ``x`` (obs, feature).

    Attributes: ``n_components``, ``elbo`` (the full ELBO ``lower_bound_``).

    Example::

        >>> import numpy as np
        >>> from ppl_vae.mixture import BayesianGaussianMixture
        >>> from ppl_vae.diagnostics import gmm_inference_data
        >>> X = np.random.default_rng(0).normal(size=(100, 2))
        >>> vb = BayesianGaussianMixture(n_components=2, random_state=0).fit(X)
        >>> idata = gmm_inference_data(vb, X, num_samples=50, random_state=0)
        >>> idata["posterior"]["means"].shape, idata["log_likelihood"]["x"].shape
        ((1, 50, 2, 2), (1, 50, 100))

    :param model: a fitted ``BayesianGaussianMixture``.
    :param X: data (N, D), usually the training data.
    :param int num_samples: S draws.
    :param random_state: int, :class:`numpy.random.RandomState` or None.
    :param feature_names: optional D names for the ``feature`` coordinate.
    :returns: ``arviz.InferenceData`` (0.x) or ``xarray.DataTree`` (1.x).
    """
    adapter = _arviz()
    X = np.asarray(X, dtype=float)
    draws = model.sample_posterior(num_samples, random_state=random_state)
    log_lik = model.log_likelihood_draws(X, draws)  # (S, N)
    lp = model.log_prior_draws(draws) + log_lik.sum(axis=1)  # log p(theta, X), (S,)
    log_q = model.log_q_draws(draws)  # (S,)
    num_components, dim = model.means_.shape
    features = list(feature_names) if feature_names is not None else list(range(dim))
    if len(features) != dim:
        raise ValueError(f"feature_names must have {dim} entries; got {len(features)}.")
    coords = {"component": np.arange(num_components), "feature": features,
              "feature2": features, "obs": np.arange(X.shape[0])}
    dims = {"weights": ["component"], "means": ["component", "feature"],
            "covariances": ["component", "feature", "feature2"], "x": ["obs"]}
    groups = {
        "posterior": {k: v[None] for k, v in draws.items()},
        "log_likelihood": {"x": log_lik[None]},
        "sample_stats": {"lp": lp[None], "log_q": log_q[None]},
    }
    attrs = _clean_attrs({"n_components": num_components,
                          "elbo": float(model.lower_bound_),
                          "inference": "variational EM (mean field)"})
    idata = adapter.from_dict(groups, coords=coords, dims=dims, attrs=attrs)
    import xarray as xr

    observed = xr.Dataset({"x": (("obs", "feature"), X)},
                          coords={"obs": coords["obs"], "feature": features}, attrs=attrs)
    return adapter.add_group(idata, "observed_data", observed)


def variational_khat(model, X, num_samples=1000, random_state=None):
    """Pareto k-hat of the variational posterior itself (Yao et al. [2]).

    With ``theta_s ~ q(theta)``, ``log w_s = log p(theta_s, X) - log q(theta_s)``; k-hat of
    these weights says how well q covers the exact posterior: k < 0.5 q is close enough
    for importance-sampling corrections to be reliable, k > 0.7 q misses posterior mass
    (too narrow, wrong shape, or a mode not covered).

    :param model: a fitted ``BayesianGaussianMixture`` (anything with
        ``sample_posterior``, ``log_joint_draws`` and ``log_q_draws``).
    :param X: data (N, D) the model was fitted to.
    :param int num_samples: S draws (k-hat needs a few hundred at least).
    :param random_state: int, :class:`numpy.random.RandomState` or None.
    :returns: float.
    """
    draws = model.sample_posterior(num_samples, random_state=random_state)
    log_w = model.log_joint_draws(np.asarray(X, dtype=float), draws) - model.log_q_draws(draws)
    return float(psis_khat(log_w[None, :])[0])


# --------------------------------------------------------------------------------------
# comparison and files
# --------------------------------------------------------------------------------------


def loo(data):
    """PSIS-LOO cross-validation of one fit (``az.loo``) with pointwise k-hats.

    ArviZ warns when some pointwise k-hat exceeds 0.7; here the k-hats are returned
    instead, for :func:`khat_summary`.

    :param data: InferenceData / DataTree with a ``log_likelihood`` group.
    :returns: dict with ``elpd_loo``, ``se``, ``p_loo`` (floats) and ``pareto_k`` (N,).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Estimated shape parameter of Pareto",
                                category=UserWarning)
        elpd, se, p_loo, khat = _arviz().loo(data)
    return {"elpd_loo": elpd, "se": se, "p_loo": p_loo, "pareto_k": khat}


def compare(models):
    """PSIS-LOO comparison (``az.compare``) of several fits of the same data.

    ArviZ warns when a model has pointwise LOO k-hats above 0.7; here that goes in the
    table's ``warning`` column instead (a warning per model would hide the table).

    :param dict models: name -> InferenceData with a ``log_likelihood`` group.
    :returns: pandas DataFrame indexed by name, best first, with columns ``rank``,
        ``elpd_loo``, ``p_loo``, ``elpd_diff``, ``weight``, ``se``, ``dse``, ``warning``.
    """
    if not isinstance(models, Mapping) or len(models) < 2:
        raise ValueError("models must be a dict of at least two InferenceData; got "
                         f"{type(models).__name__} of length {len(models)}.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Estimated shape parameter of Pareto",
                                category=UserWarning)
        # ArviZ 0.23 calls sort_values(inplace=True), which pandas >= 3.1 deprecates
        warnings.filterwarnings("ignore", message=r"The inplace keyword in DataFrame")
        return _arviz().compare(dict(models))


def plot_compare(table, path):
    """The figure of a :func:`compare` table (``az.plot_compare`` under ArviZ 0.x,
    ``arviz_plots.plot_compare`` under 1.x), saved to ``path``.

    :param table: the DataFrame :func:`compare` returned.
    :param path: where to save the figure (png).
    :returns: the matplotlib Figure.
    """
    with warnings.catch_warnings():
        # ArviZ 0.23 calls sort_values(inplace=True), which pandas >= 3.1 deprecates
        warnings.filterwarnings("ignore", message=r"The inplace keyword in DataFrame")
        return _arviz().plot_compare(table, path)


def plot_forest(data, var_names, path, ci_prob=0.9, title=None):
    """Forest plot of the posterior variables ``var_names`` (chains combined) with
    ``ci_prob`` credible intervals, saved to ``path``.

    :param data: InferenceData / DataTree with a ``posterior`` group, e.g. from
        :func:`gmm_inference_data`.
    :param var_names: names of posterior variables.
    :param path: where to save the figure (png).
    :param float ci_prob: mass of the outer interval (HDI under 0.x, ArviZ 1.x's default
        interval kind under 1.x).
    :param str title: optional title.
    :returns: the matplotlib Figure.
    """
    return _arviz().plot_forest(data, var_names, ci_prob, path, title=title)


def group_names(data):
    """Names of the groups of an InferenceData / DataTree; a list of str."""
    return _arviz().group_names(data)


def group(data, name):
    """Group ``name`` of an InferenceData / DataTree as an ``xarray.Dataset``."""
    return _arviz().group(data, name)


def concat(datas, dim="model"):
    """Stack several fits' InferenceData along a new dimension ``dim``.

    ``datas`` maps a label (e.g. the prior's name) to an InferenceData with the same groups;
    each group becomes one dataset with a leading ``dim`` coordinate holding the labels.
    Dimensions of different lengths (e.g. ``step`` after early stopping) are padded with NaN.

    :param dict datas: ``{label: InferenceData}``.
    :returns: InferenceData (a DataTree under ArviZ 1.x).
    """
    import pandas as pd
    import xarray as xr

    adapter = _arviz()
    labels = list(datas)
    if not labels:
        raise ValueError("concat needs at least one InferenceData; got an empty dict.")
    names = adapter.group_names(datas[labels[0]])
    index = pd.Index(labels, name=dim)
    return adapter.from_groups({
        name: xr.concat([adapter.group(datas[label], name) for label in labels], dim=index,
                        join="outer", combine_attrs="drop_conflicts")
        for name in names
    })


def save(data, path):
    """Write InferenceData / DataTree to a netCDF file (h5netcdf); returns the path."""
    _arviz().to_netcdf(data, path)
    return path


def load(path):
    """Read a netCDF file written by :func:`save`, fully into memory."""
    return _arviz().from_netcdf(path)
