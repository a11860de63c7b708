"""Pareto k-hat of importance weights: how far to trust each importance-sampled
``log p(x_n)``."""

import numpy as np

KHAT_GOOD = 0.5  # below: fast convergence of the importance-sampling estimate
KHAT_BAD = 0.7  # above: unreliable estimate
# Fewer importance samples than this leave under 5 draws in the Pareto tail (S / 5 of them
# for S <= 225), too few to fit: k-hat is reported as inf, in every ArviZ version.
MIN_KHAT_SAMPLES = 25


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
    from ppl_vae.diagnostics._arviz import _arviz

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

    ArviZ's own ``az.plot_khat`` takes the ELPD object of :func:`elpd` too; this one draws
    the same points with matplotlib alone, the same way under every ArviZ version.

    :param khat: array-like (N,), or an ELPD object (its ``pareto_k``), or a held-out
        evaluation's InferenceData (the k-hat of its importance-sampled log p(x)).
    :param path: where to save the figure (png); None to skip saving.
    :param ax: a matplotlib Axes to draw into; a new figure when None.
    :param str title: axes title (default: the shares from :func:`khat_summary`).
    :returns: the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    khat = np.asarray(_khat_values(khat), dtype=float).ravel()
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


def _khat_values(khat):
    """k-hats from an array, an ELPD object or a held-out evaluation's InferenceData."""
    import xarray as xr

    if isinstance(khat, (np.ndarray, list, tuple, xr.DataArray)) or np.isscalar(khat):
        return khat
    from ppl_vae.diagnostics._arviz import _arviz
    from ppl_vae.diagnostics._elpd import elpd

    adapter = _arviz()
    if not adapter.is_elpd(khat):
        khat = elpd(khat)  # InferenceData / DataTree
    pareto_k = adapter.elpd_fields(khat)["pareto_k"]
    if pareto_k is None:
        raise ValueError("khat is an ELPD object without pointwise Pareto k-hats "
                         "(computed with pointwise=False?).")
    return np.asarray(pareto_k)
