"""ELPD objects and model comparison: the held-out elpd of a VAE evaluation, PSIS-LOO of
posterior draws, ``az.compare`` over several models, and their figures."""

import warnings
from os import PathLike

import numpy as np

from ppl_vae.diagnostics._arviz import _arviz
from ppl_vae.diagnostics._data import (
    ESTIMATORS,
    EVALUATION_ATTR,
    HELD_OUT,
    upgrade_legacy,
)
from ppl_vae.diagnostics._khat import psis_khat

RUNS_ATTR = "ppl_vae_runs"  # root attribute of a run's file: the models' names (JSON)


def _not_one_model(data, what):
    """The error for a run's file of several models handed where one model is expected."""
    return TypeError(
        f"{what} takes one model's InferenceData; this is a run's file of several models "
        "(groups " + ", ".join(map(repr, _arviz().group_names(data))) + "). "
        "ppl_vae.diagnostics.load(path) reads it as {name: InferenceData}, which elpd, loo "
        "and compare take.")


def _held_out(data, estimator):
    """(log p(x_n) DataArray (example), k-hat DataArray, S, estimator's name) of a held-out
    evaluation; None when ``data`` has no held-out evaluation."""
    adapter = _arviz()
    if adapter.attrs(data).get(EVALUATION_ATTR) != HELD_OUT:
        legacy = upgrade_legacy(data)
        if legacy is None:
            return None
        if isinstance(legacy, dict):
            raise TypeError(
                f"data stacks {len(legacy)} models ({', '.join(legacy)}) along one dimension "
                "(concat, or a file of the layout written before): elpd takes one model. Pass "
                "the dict {name: InferenceData}; ppl_vae.diagnostics.load(path) splits such a "
                "file into one.")
        data = legacy
    names = adapter.group_names(data)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}; got {estimator!r}.")
    if estimator not in names:
        raise ValueError(f"estimator={estimator!r} needs group {estimator!r}; this held-out "
                         f"evaluation has groups {names}"
                         + (" (add_ais adds 'ais')." if estimator == "ais" else "."))
    dataset = adapter.group(data, estimator)
    log_lik = dataset["log_likelihood"]
    if estimator == "ais":
        log_weights = dataset["log_weights"]
        num_samples = int(log_weights.shape[1])
        khat = log_lik.copy(data=psis_khat(log_weights.values))  # inf below 25 chains
    else:
        khat = dataset["khat"]
        num_samples = dataset.attrs.get("num_particles")
        if num_samples is None and "log_weights" in dataset:
            num_samples = dataset["log_weights"].shape[1]
        if num_samples is None:  # files of the example before num_particles was stored
            num_samples = adapter.attrs(data).get("eval_samples")
    return log_lik, khat, num_samples, ESTIMATORS[estimator]


def elpd(data, estimator="importance"):
    """The expected log predictive density of a model, as ArviZ's ELPD object.

    For a VAE's held-out evaluation (:func:`vae_inference_data`) this is the test-set
    log-likelihood itself: the test images were never fitted, so their summed
    ``log p(x_n)`` *is* an out-of-sample elpd, with nothing for LOO or WAIC to
    approximate:

    .. math::

        \\widehat{\\text{elpd}} = \\sum_{n=1}^N \\log \\hat p(x_n), \\qquad
        \\text{se} = \\sqrt{N}\\, \\text{sd}_n\\big(\\log \\hat p(x_n)\\big), \\qquad
        p = 0,

    sd with N - 1 in the denominator, so ``se / N`` is the usual standard error of the
    mean test log-likelihood. ``p`` (ArviZ's effective number of parameters, the in-sample
    optimism) is 0: no parameter was fitted to these images. The pointwise Pareto k-hats
    are those of each image's importance weights (:func:`psis_khat`); ``good_k`` is
    ``min(1 - 1/log10(S), 0.7)`` as in ``az.loo``, and ``warning`` is True when some k-hat
    exceeds it (an underestimate of unknown size for that image). Under ArviZ 0.x the
    object is an ``ELPDData`` whose entries are named ``elpd_loo`` / ``p_loo`` / ``loo_i``
    (0.x's ``compare`` knows only loo and waic); under 1.x its kind is ``held_out``, which
    ``az.compare`` refuses to mix with PSIS-LOO results. Either way ``az.compare``,
    ``az.plot_compare`` (on the table) and ``az.plot_khat`` take it.

    For posterior draws with a ``log_likelihood`` group (:func:`gmm_inference_data`) it
    is PSIS-LOO (``az.loo(data, pointwise=True)``, its Pareto warning left in the
    object's ``warning`` field).

    Example::

        >>> import numpy as np
        >>> from ppl_vae.diagnostics import elpd, vae_inference_data
        >>> idata = vae_inference_data([-90.0, -95.0, -88.0], [0.2, 0.3, 0.9],
        ...                            num_samples=5000)
        >>> result = elpd(idata)
        >>> float(result["se"]) == float(np.sqrt(3) * np.std([-90.0, -95.0, -88.0], ddof=1))
        True

    :param data: one model's InferenceData / DataTree; a dict of them (the dict
        :func:`load` returns for a run's file) gives a dict of ELPD objects; an ELPD
        object is returned as it is.
    :param str estimator: for a held-out evaluation, which estimate of log p(x_n):
        ``"importance"`` (group ``importance``) or ``"ais"`` (group ``ais``; its k-hats
        are over the AIS chains, inf with fewer than 25).
    :returns: ArviZ's ELPD object (``arviz.ELPDData`` under 0.x, an
        ``arviz_stats.ELPDData`` under 1.x), or a dict of them.
    :raises ValueError: for data with neither a held-out evaluation nor posterior draws.
    """
    adapter = _arviz()
    if adapter.is_runs(data):
        return {name: elpd(value, estimator) for name, value in data.items()}
    if adapter.is_elpd(data):
        return data
    if isinstance(data, (str, PathLike)):
        raise TypeError(f"data must be InferenceData, not a path ({data!r}): pass "
                        "ppl_vae.diagnostics.load(path).")
    if RUNS_ATTR in adapter.attrs(data):
        raise _not_one_model(data, "elpd")
    held_out = _held_out(data, estimator)
    if held_out is not None:
        log_lik, khat, num_samples, name = held_out
        num = log_lik.size
        with np.errstate(invalid="ignore"):  # -inf log p(x): an elpd of -inf, se NaN
            se = float(np.sqrt(num) * np.std(log_lik.values, ddof=1)) if num > 1 else np.nan
        return adapter.held_out_elpd(log_lik.rename("elpd_i"), khat.rename("pareto_k"), se,
                                     num_samples, name)
    names = adapter.group_names(data)
    if not {"posterior", "log_likelihood"} <= set(names):
        raise ValueError(
            "data must be a held-out evaluation (vae_inference_data: group 'importance') or "
            "hold posterior draws with their pointwise log-likelihood (groups 'posterior' "
            f"and 'log_likelihood', as gmm_inference_data writes); got groups {names}.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Estimated shape parameter of Pareto",
                                category=UserWarning)
        return adapter.loo(data)


def loo(data):
    """PSIS-LOO cross-validation of one fit (``az.loo``) with pointwise k-hats.

    ArviZ warns when some pointwise k-hat exceeds 0.7; here the k-hats are returned
    instead, for :func:`khat_summary`.

    A held-out evaluation (:func:`vae_inference_data`) has no posterior draws and needs
    no cross-validation: its test images were left out of the fit. For it the same keys
    hold the exact held-out values of :func:`elpd`: ``elpd_loo`` the summed test
    log p(x_n), ``p_loo`` 0, ``pareto_k`` the importance-sampling k-hats.

    :param data: InferenceData / DataTree with a ``log_likelihood`` group and posterior
        draws, or a held-out evaluation; a dict of them gives a dict of results.
    :returns: dict with ``elpd_loo``, ``se``, ``p_loo`` (floats) and ``pareto_k`` (N,).
    """
    if _arviz().is_runs(data):
        return {name: loo(value) for name, value in data.items()}
    fields = _arviz().elpd_fields(elpd(data))
    return {"elpd_loo": float(fields["elpd"]), "se": float(fields["se"]),
            "p_loo": float(fields["p"]), "pareto_k": np.asarray(fields["pareto_k"]).ravel()}


def compare(models, estimator="importance"):
    """Rank models by their elpd (``az.compare``), best first.

    Held-out evaluations (VAEs on one test set) are ranked by their test
    log-likelihood: ``elpd_loo`` is the summed test ``log p(x_n)`` of :func:`elpd`,
    ``elpd_diff`` the best model's minus this one's, ``dse`` the standard error of that
    difference from the paired per-image differences
    (``sqrt(N var_n(l_best,n - l_n))``, ArviZ's formula), ``weight`` the stacking weights
    on the test images. Posterior draws (Gaussian mixtures) are ranked by PSIS-LOO. The
    two cannot be mixed, and held-out models must share their test examples.

    ArviZ warns when a model has pointwise k-hats above its threshold; here that goes in
    the table's ``warning`` column instead (a warning per model would hide the table).
    Stacking weights are computed from the pointwise values shifted by their per-example
    maximum over the models, which leaves weights, ``elpd_diff`` and ``dse`` unchanged and
    keeps ``exp`` of log-densities of thousands of nats (Frey Faces) from underflowing.

    Example::

        >>> from ppl_vae.diagnostics import compare, vae_inference_data
        >>> runs = {"standard": vae_inference_data([-90.0, -95.0, -88.0], [0.2] * 3),
        ...         "vamp": vae_inference_data([-89.0, -93.0, -88.5], [0.2] * 3)}
        >>> table = compare(runs)
        >>> list(table.index), float(table.loc["standard", "elpd_diff"])
        (['vamp', 'standard'], 2.5)

    :param dict models: name -> one model's InferenceData (held-out evaluation or
        posterior draws) or ELPD object, e.g. ``load(path)`` of a run's file.
    :param str estimator: ``"importance"`` or ``"ais"``, for held-out evaluations
        (see :func:`elpd`).
    :returns: pandas DataFrame indexed by name, best first, with columns ``rank``,
        ``elpd_loo``, ``p_loo``, ``elpd_diff``, ``weight``, ``se``, ``dse``, ``warning``
        (ArviZ 0.x's names, whatever the version).
    """
    adapter = _arviz()
    if not adapter.is_runs(models) or not models:
        raise TypeError(
            "models must be a non-empty dict {name: InferenceData or ELPD object} (a run's "
            "file: ppl_vae.diagnostics.load(path)); got "
            + (repr(models) if isinstance(models, (str, PathLike))
               else f"{type(models).__name__} of length {len(models)}") + ".")
    elpds = {name: elpd(value, estimator) for name, value in models.items()}
    fields = {name: adapter.elpd_fields(value) for name, value in elpds.items()}
    kinds = {name: f["kind"] for name, f in fields.items()}
    if "held_out" in kinds.values() and len(set(kinds.values())) > 1:
        raise ValueError(
            "models mixes held-out evaluations with other elpd estimates ("
            + ", ".join(f"{n}: {k}" for n, k in kinds.items())
            + "): a test-set elpd and a LOO elpd of the training data are not on the same "
              "data. Compare held-out evaluations with each other.")
    pointwise = {}
    for name, f in fields.items():
        if f["elpd_i"] is None:
            raise ValueError(f"models[{name!r}] has no pointwise elpd (pointwise=False?).")
        pointwise[name] = np.asarray(f["elpd_i"], dtype=float).ravel()
    if "held_out" in kinds.values():
        first, *rest = fields
        reference = fields[first]["elpd_i"]
        for name in rest:
            other = fields[name]["elpd_i"]
            if other.shape != reference.shape or not np.array_equal(
                    other["example"].values, reference["example"].values):
                raise ValueError(
                    f"models {first!r} and {name!r} were evaluated on different test "
                    f"examples ({reference.size} and {other.size}, or other labels): their "
                    "paired differences need one test set.")
    sizes = {len(v) for v in pointwise.values()}
    if len(sizes) == 1 and len(elpds) > 1:
        stacked = np.stack(list(pointwise.values()))  # (models, N)
        if np.isfinite(stacked).all():
            shift = stacked.max(axis=0)
            elpds = {name: adapter.with_pointwise(value, fields[name]["elpd_i"].copy(
                data=np.reshape(pointwise[name] - shift, fields[name]["elpd_i"].shape)))
                for name, value in elpds.items()}
    with warnings.catch_warnings():
        # ArviZ 0.23 calls sort_values(inplace=True), which pandas >= 3.1 deprecates
        warnings.filterwarnings("ignore", message=r"The inplace keyword in DataFrame")
        return adapter.compare(elpds)


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
    :raises ValueError: for a held-out evaluation, which has no posterior draws (its
        models' elpd intervals are :func:`plot_compare`'s figure).
    """
    adapter = _arviz()
    if "posterior" not in adapter.group_names(data):
        raise ValueError(
            "data has no posterior group to draw"
            + (" (a held-out VAE evaluation has no posterior draws: the intervals of several "
               "models' held-out elpd are plot_compare(compare(runs), path))"
               if adapter.attrs(data).get(EVALUATION_ATTR) == HELD_OUT else "")
            + f"; got groups {adapter.group_names(data)}.")
    return adapter.plot_forest(data, var_names, ci_prob, path, title=title)
