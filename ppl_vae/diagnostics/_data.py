"""InferenceData builders: one model per InferenceData, in ArviZ's schema.

A VAE evaluated on a test set has no posterior draws: its groups are custom ones that no
ArviZ call reads as draws (``importance``, ``ais``, ``training``). A Gaussian mixture has
draws from its variational posterior: ``posterior``, ``log_likelihood``, ``sample_stats``
and ``observed_data``, as ArviZ expects them.
"""

import json
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from ppl_vae.diagnostics._arviz import _arviz
from ppl_vae.diagnostics._khat import khat_summary, psis_khat

# root attribute that marks a held-out evaluation (read by elpd, loo, compare, load)
EVALUATION_ATTR = "ppl_vae_evaluation"
HELD_OUT = "held_out"
HELD_OUT_NOTE = (
    "One model's held-out (test-set) evaluation: per-example log p(x) in group "
    "'importance' (and 'ais'). There are no posterior draws, so az.loo, az.waic, "
    "az.summary and az.plot_forest do not apply. Use ppl_vae.diagnostics.elpd(idata): an "
    "ArviZ ELPD object (held-out elpd, se, Pareto k-hats) for az.compare, az.plot_compare "
    "and az.plot_khat; ppl_vae.diagnostics.compare({name: idata, ...}) ranks models.")
# the root attributes of a held-out evaluation; "elpd" is short enough to show whole where
# ArviZ 1.x prints the DataTree in its errors
HELD_OUT_ATTRS = {EVALUATION_ATTR: HELD_OUT,
                  "elpd": "ppl_vae.diagnostics.elpd(idata), not az.loo", "note": HELD_OUT_NOTE}
# group name -> the estimator's name in an ELPD printout
ESTIMATORS = {"importance": "importance samples", "ais": "AIS chains"}


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
                       attrs=None, num_samples=None):
    """One VAE's test-set evaluation as InferenceData (a DataTree under ArviZ 1.x).

    A VAE's decoder is a point estimate and its test images were never fitted, so the
    evaluation has no posterior draws: the per-image ``log p(x_n)`` is the held-out
    log predictive density itself, not a draw to average. It goes in groups no ArviZ call
    reads as draws, so ``az.loo`` / ``az.waic`` / ``az.summary`` cannot mistake it for one
    (they raise); :func:`elpd` turns it into ArviZ's ELPD object for ``az.compare``,
    ``az.plot_compare`` and ``az.plot_khat``.

    Groups:

    - ``importance``: ``log_likelihood`` (example), the importance-sampled
      ``log p(x_n)``; ``khat`` (example), the Pareto k-hat of its weights (a property of
      each estimate, not of a posterior draw, hence not ``sample_stats``); and, if given,
      ``log_weights`` (example, particle). Attributes ``num_particles`` (S, when known)
      and ``share_good`` / ``share_ok`` / ``share_bad`` from :func:`khat_summary`.
    - ``training`` (when ``history`` is given): dim ``step`` (one per epoch), one variable
      per history key (``epoch``, ``beta``, ``train_loss``, ``valid_elbo`` with NaN where
      absent, ``seconds``).
    - :func:`add_ais` adds ``ais``, the same images by annealed importance sampling.

    Root attributes: ``attrs``, ``ppl_vae_evaluation = "held_out"``, and ``elpd`` and
    ``note`` on which calls apply.

    Example::

        >>> import numpy as np
        >>> from ppl_vae.diagnostics import vae_inference_data
        >>> history = [{"epoch": 0, "beta": 0.5, "train_loss": 120.0, "valid_elbo": None},
        ...            {"epoch": 1, "beta": 1.0, "train_loss": 101.5, "valid_elbo": -99.0}]
        >>> idata = vae_inference_data(-np.arange(1.0, 4.0), [0.1, 0.6, 0.9], history,
        ...                            num_samples=1000)
        >>> idata["importance"]["log_likelihood"].shape, idata["training"]["valid_elbo"].values
        ((3,), array([ nan, -99.]))

    :param log_likelihood: array-like (N,), e.g. from ``importance_log_likelihood``.
    :param khat: array-like (N,), from :func:`psis_khat`.
    :param history: ``FitResult.history`` (list of per-epoch dicts) or a dict of sequences.
    :param log_weights: optional (N, S) log importance weights, stored as given.
    :param dict coords: optional ``{"example": labels}`` (N test-set indices, say).
    :param dict attrs: attributes for the root and every group (dataset, prior, ...).
    :param int num_samples: S, importance samples per example (sets the k-hat threshold
        of :func:`elpd`); taken from ``log_weights`` when those are given.
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
    example = np.asarray((coords or {}).get("example", np.arange(num)))
    if example.shape != (num,):
        raise ValueError(f"coords['example'] must hold {num} labels; got shape "
                         f"{example.shape}.")
    attrs = _clean_attrs(attrs)
    importance = {"log_likelihood": ("example", log_likelihood), "khat": ("example", khat)}
    imp_attrs = {k: v for k, v in khat_summary(khat).items()
                 if k in ("share_good", "share_ok", "share_bad")} if num else {}
    if log_weights is not None:
        log_weights = np.asarray(log_weights)
        if log_weights.ndim != 2 or log_weights.shape[0] != num:
            raise ValueError(f"log_weights must have shape ({num}, S); got shape "
                             f"{log_weights.shape}.")
        if num_samples is not None and num_samples != log_weights.shape[1]:
            raise ValueError(f"num_samples ({num_samples}) must equal the number of "
                             f"log_weights columns ({log_weights.shape[1]}).")
        importance["log_weights"] = (("example", "particle"), log_weights)
        num_samples = log_weights.shape[1]
    if num_samples is not None:
        if not isinstance(num_samples, numbers.Integral) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int; got {num_samples!r}.")
        imp_attrs["num_particles"] = int(num_samples)
    groups = {"importance": xr.Dataset(importance, coords={"example": example},
                                       attrs={**attrs, **imp_attrs})}
    if history is not None:
        groups["training"] = _history_dataset(history)
        groups["training"].attrs.update(attrs)
    return adapter.from_groups(groups, {**attrs, **HELD_OUT_ATTRS})


def add_ais(idata, ais, attrs=None):
    """Add group ``ais``: the same test examples by annealed importance sampling.

    Variables (dim ``example``, aligned with group ``importance``): ``log_likelihood``
    (the AIS estimate of log p(x_n)), ``stderr`` (its spread over the chains),
    ``acceptance``, ``step_size``; and ``log_weights`` (example, ais_chain), one weight
    per independent annealing chain (``ais_chain``, not ``chain``: ArviZ's ``chain`` means
    an MCMC chain of posterior draws). :func:`elpd` with ``group="ais"`` gives their ELPD.

    :param idata: a held-out evaluation from :func:`vae_inference_data`; modified in
        place and returned.
    :param ais: an ``AISResult`` (``ais_log_likelihood(..., return_details=True)``), or
        anything with its fields ``log_likelihood``, ``stderr``, ``acceptance``,
        ``step_size`` (N,) and ``log_weights`` (N, C).
    :param dict attrs: the run's settings (``num_steps``, ``num_leapfrog``, ``start``,
        ``schedule``, ...); ``num_chains`` is set from ``log_weights``.
    :returns: ``idata``.
    """
    import xarray as xr

    adapter = _arviz()
    if "importance" not in adapter.group_names(idata):
        raise ValueError("idata must be a held-out evaluation from vae_inference_data "
                         f"(group 'importance'); got groups {adapter.group_names(idata)}.")
    example = adapter.group(idata, "importance")["example"].values
    num = example.shape[0]
    fields = {}
    for name in ("log_likelihood", "stderr", "acceptance", "step_size", "log_weights"):
        if not hasattr(ais, name):
            raise TypeError(f"ais must have the fields of an AISResult; it has no {name!r}.")
        fields[name] = np.asarray(getattr(ais, name), dtype=float)
    for name, value in fields.items():
        two_d = name == "log_weights"
        if value.ndim != 1 + two_d or value.shape[0] != num:
            raise ValueError(f"ais.{name} must have shape {'(N, C)' if two_d else '(N,)'} "
                             f"with N = {num} test examples; got shape {value.shape}.")
    data_vars = {name: ("example", value) for name, value in fields.items()
                 if name != "log_weights"}
    data_vars["log_weights"] = (("example", "ais_chain"), fields["log_weights"])
    run_attrs = {k: v for k, v in adapter.attrs(idata).items()
                 if k not in HELD_OUT_ATTRS}  # the run's: prior, dataset, ...
    dataset = xr.Dataset(data_vars, coords={"example": example}, attrs={
        **run_attrs, **_clean_attrs(attrs), "num_chains": int(fields["log_weights"].shape[1])})
    return adapter.add_group(idata, "ais", dataset)


_COVARIANCE_DIMS = {"full": ["component", "feature", "feature2"],
                    "tied": ["feature", "feature2"], "diag": ["component", "feature"],
                    "spherical": ["component"]}


def gmm_inference_data(model, X, num_samples=1000, random_state=None, feature_names=None):
    """A fitted :class:`~ppl_vae.mixture.BayesianGaussianMixture` as InferenceData.

    Draws ``theta_s ~ q(theta)`` (the variational posterior) with one chain:

    - ``posterior``: ``weights`` (chain, draw, component), ``means`` (..., component,
      feature), ``covariances`` with the dims of the model's ``covariance_type``:
      (component, feature, feature2) for 'full', (feature, feature2) for 'tied',
      (component, feature) for 'diag', (component,) for 'spherical';
    - ``log_likelihood``: ``x`` (chain, draw, obs) =
      ``log sum_k pi_k N(x_n | mu_k, Sigma_k)``, assignments marginalised, so that
      ``az.loo`` / :func:`compare` work (PSIS-LOO with draws from q in place of the
      posterior: trustworthy when :func:`variational_khat` is small);
    - ``sample_stats``: ``lp`` = ``log p(theta, X)`` and ``log_q`` = ``log q(theta)`` per
      draw (their difference gives :func:`variational_khat`);
    - ``observed_data``: ``x`` (obs, feature).

    Attributes (root and every group): ``n_components``, ``elbo`` (the full ELBO
    ``lower_bound_``), ``inference``.

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
    import xarray as xr

    adapter = _arviz()
    covariance_type = getattr(model, "covariance_type", "full")
    if covariance_type not in _COVARIANCE_DIMS:
        raise ValueError(f"The model's covariance_type must be one of "
                         f"{sorted(_COVARIANCE_DIMS)}; got {covariance_type!r}.")
    X = np.asarray(X, dtype=float)
    draws = model.sample_posterior(num_samples, random_state=random_state)
    log_lik = model.log_likelihood_draws(X, draws)  # (S, N)
    lp = model.log_prior_draws(draws) + log_lik.sum(axis=1)  # log p(theta, X), (S,)
    log_q = model.log_q_draws(draws)  # (S,)
    num_components, dim = model.means_.shape
    features = list(feature_names) if feature_names is not None else list(range(dim))
    if len(features) != dim:
        raise ValueError(f"feature_names must have {dim} entries; got {len(features)}.")
    sizes = {"component": num_components, "feature": dim, "feature2": dim}
    cov_dims = _COVARIANCE_DIMS[covariance_type]
    expected = (num_samples, *(sizes[d] for d in cov_dims))
    if np.shape(draws["covariances"]) != expected:
        raise ValueError(f"covariances draws of a {covariance_type!r} mixture must have shape "
                         f"{expected}; got {np.shape(draws['covariances'])}.")
    coords = {"component": np.arange(num_components), "feature": features,
              "feature2": features, "obs": np.arange(X.shape[0])}
    dims = {"weights": ["component"], "means": ["component", "feature"],
            "covariances": cov_dims, "x": ["obs"]}
    groups = {
        "posterior": {k: np.asarray(v)[None] for k, v in draws.items()},
        "log_likelihood": {"x": log_lik[None]},
        "sample_stats": {"lp": lp[None], "log_q": log_q[None]},
    }
    attrs = _clean_attrs({"n_components": num_components, "covariance_type": covariance_type,
                          "elbo": float(model.lower_bound_),
                          "inference": "variational EM (mean field)"})
    idata = adapter.from_dict(groups, coords=coords, dims=dims, attrs=attrs)
    observed = xr.Dataset({"x": (("obs", "feature"), X)},
                          coords={"obs": coords["obs"], "feature": features}, attrs=attrs)
    adapter.add_group(idata, "observed_data", observed)
    adapter.set_attrs(idata, attrs)
    return idata


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


def group_names(data):
    """Names of the groups of an InferenceData / DataTree; a list of str."""
    return _arviz().group_names(data)


def group(data, name):
    """Group ``name`` of an InferenceData / DataTree as an ``xarray.Dataset``."""
    return _arviz().group(data, name)


def upgrade_legacy(data):
    """A VAE evaluation in an older layout, or several stacked by :func:`concat`, in
    today's layout: one InferenceData, or a dict ``{label: InferenceData}`` split along the
    stacked dimension (``prior`` in files of ``examples/vamp_mnist.py``). The older layout
    kept the per-example log p(x) as ``log_likelihood/x`` with one chain and one draw.
    None when ``data`` needs no change or is no VAE evaluation."""
    adapter = _arviz()
    names = adapter.group_names(data)
    if "importance" not in names or "posterior" in names:
        return None
    importance = adapter.group(data, "importance")
    if "khat" not in importance.data_vars:
        return None
    groups = {n: adapter.group(data, n) for n in names if n != "log_likelihood"}
    if "log_likelihood" not in importance.data_vars:
        log_lik = (adapter.group(data, "log_likelihood").get("x")
                   if "log_likelihood" in names else None)
        if (log_lik is None or log_lik.sizes.get("chain") != 1
                or log_lik.sizes.get("draw") != 1):
            return None
        groups["importance"] = importance.assign(
            log_likelihood=log_lik.isel(chain=0, draw=0, drop=True))
    stacked = [d for d in importance["khat"].dims if d != "example"]
    if len(stacked) > 1 or (not stacked and "log_likelihood" in importance.data_vars
                            and adapter.attrs(data).get(EVALUATION_ATTR) == HELD_OUT):
        return None
    if "ais" in groups and "chain" in groups["ais"].dims:
        groups["ais"] = groups["ais"].rename({"chain": "ais_chain"})
    skip = ("share_good", "share_ok", "share_bad", "num_particles")
    root = {k: v for k, v in importance.attrs.items() if k not in skip}
    root.update(HELD_OUT_ATTRS)
    if not stacked:
        return adapter.from_groups(groups, root)
    (dim,) = stacked
    out = {}
    for label in importance[dim].values:
        parts = {n: ds.sel({dim: label}, drop=True) if dim in ds.dims else ds
                 for n, ds in groups.items()}
        if "training" in parts:  # concat padded shorter histories with NaN: trim them
            training = parts["training"]
            valid = np.zeros(training.sizes.get("step", 0), dtype=bool)
            for value in training.data_vars.values():
                valid |= ~np.isnan(value.values)
            parts["training"] = training.isel(step=slice(0, int(np.flatnonzero(valid)[-1]) + 1
                                                          if valid.any() else 0))
        out[str(label)] = adapter.from_groups(parts, {**root, dim: str(label)})
    return out
