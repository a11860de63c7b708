"""What the two AIS backends (:mod:`ppl_vae.pyro.ais`, :mod:`ppl_vae.numpyro.ais`) share:
the result types, the annealing schedule, the argument checks and the NumPy bookkeeping of
the log-weights. Nothing here touches torch or JAX; each backend re-exports the public names.
"""

import math
from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from ppl_vae._checks import check_int, check_positive_float

_ADAPT = 1.0  # log step size += _ADAPT * (acceptance - target) after each transition
_SIGMOID_DELTA = 4.0  # steepness of the sigmoidal schedule (Grosse et al. 2015)


class AISResult(NamedTuple):
    """What :func:`ais_log_likelihood` returns with ``return_details=True`` (NumPy arrays).

    :ivar log_likelihood: ``(N,)`` the estimate of log p(x) per example,
        :math:`\\log \\frac1C \\sum_c w_c`.
    :ivar log_weights: ``(N, C)`` the log-weight of every chain.
    :ivar stderr: ``(N,)`` the chain spread of the estimate: the delta-method standard error
        ``sd(w) / (sqrt(C) mean(w))`` over the C chains (crude for small C).
    :ivar acceptance: ``(N,)`` the mean Metropolis acceptance probability over the run.
    :ivar step_size: ``(N,)`` the leapfrog step size at the end of the run.
    """

    log_likelihood: np.ndarray
    log_weights: np.ndarray
    stderr: np.ndarray
    acceptance: np.ndarray
    step_size: np.ndarray


class BDMCBounds(NamedTuple):
    """``(lower, upper)``, each ``(N,)``: stochastic bounds of log p(x) for simulated data,
    from forward and reverse AIS. ``gap`` is ``upper - lower`` per example, ``mean_gap``
    its average."""

    lower: np.ndarray
    upper: np.ndarray

    @property
    def gap(self):
        return self.upper - self.lower

    @property
    def mean_gap(self):
        return float(np.mean(self.upper - self.lower))


class BDMCResult(NamedTuple):
    """What :func:`bdmc_bounds` returns with ``return_details=True``.

    :ivar lower: ``(N,)`` forward AIS, a stochastic lower bound of log p(x).
    :ivar upper: ``(N,)`` reverse AIS from the exact latents, a stochastic upper bound.
    :ivar data: ``(N, ...)`` the simulated examples x.
    :ivar forward: the forward run's :class:`AISResult`.
    :ivar reverse: the reverse run's :class:`AISResult` (its ``log_likelihood`` is
        ``upper``, its ``log_weights`` the reverse log-weights, estimates of -log p(x)).
    """

    lower: np.ndarray
    upper: np.ndarray
    data: np.ndarray
    forward: AISResult
    reverse: AISResult

    @property
    def gap(self):
        return self.upper - self.lower

    @property
    def mean_gap(self):
        return float(np.mean(self.upper - self.lower))


def ais_schedule(num_steps, schedule="sigmoid"):
    """The annealing schedule :math:`0 = b_0 < \\dots < b_T = 1` as a ``(T + 1,)`` float64
    array.

    :param int num_steps: T.
    :param schedule: ``"sigmoid"`` (default; the sigmoidal schedule of Grosse et al. 2015,
        :math:`b_t \\propto \\sigma(4 (2t/T - 1))` rescaled to [0, 1]: small steps at both
        ends), ``"linear"``, or an increasing 1-d array of betas from 0 to 1 (then its
        length must be ``num_steps + 1``).
    """
    num_steps = check_int("num_steps", num_steps)
    if isinstance(schedule, str):
        t = np.arange(num_steps + 1) / num_steps
        if schedule == "linear":
            return t
        if schedule == "sigmoid":
            s = 1.0 / (1.0 + np.exp(-_SIGMOID_DELTA * (2.0 * t - 1.0)))
            return (s - s[0]) / (s[-1] - s[0])
        raise ValueError(f"schedule must be 'sigmoid', 'linear' or an array of betas; got "
                         f"{schedule!r}.")
    betas = np.asarray(schedule, dtype=np.float64)
    if (betas.ndim != 1 or len(betas) != num_steps + 1 or betas[0] != 0.0 or betas[-1] != 1.0
            or not np.all(np.diff(betas) > 0)):
        raise ValueError(
            f"schedule must be an increasing 1-d array of num_steps + 1 = {num_steps + 1} "
            f"betas from 0 to 1; got shape {betas.shape}"
            + (f", from {betas[0]:g} to {betas[-1]:g}" if betas.ndim == 1 and betas.size else "")
            + ".")
    return betas


def _check_settings(num_chains, num_leapfrog, step_size, target_accept, start):
    check_int("num_chains", num_chains)
    check_int("num_leapfrog", num_leapfrog)
    check_positive_float("step_size", step_size)
    if not (isinstance(target_accept, (int, float)) and 0 < target_accept < 1):
        raise ValueError(f"target_accept must be a number in (0, 1); got {target_accept!r}.")
    if start not in ("guide", "prior"):
        raise ValueError(f"start must be 'guide' or 'prior'; got {start!r}.")


def _logmeanexp(log_w):
    return logsumexp(log_w, axis=1) - math.log(log_w.shape[1])


def _stderr(log_w):
    """Delta method over the chains: sd(w) / (sqrt(C) mean(w)), per row of (N, C)."""
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    return w.std(1) / (math.sqrt(log_w.shape[1]) * w.mean(1))


def _collect(chunks, num_examples, num_chains, sign=1.0):
    log_w = np.empty((num_examples, num_chains))
    acceptance, step = np.empty(num_examples), np.empty(num_examples)
    for rows, lw, acc, eps in chunks:
        log_w[rows], acceptance[rows], step[rows] = lw, acc, eps
    return AISResult(sign * _logmeanexp(log_w), log_w, _stderr(log_w), acceptance, step)


def _check_data_shape(data_shape):
    if data_shape is None:
        raise TypeError("bdmc_bounds needs data_shape=, the shape of one example (e.g. (784,)), "
                        "to simulate data from the model.")
    if isinstance(data_shape, int):
        data_shape = (data_shape,)
    data_shape = tuple(data_shape)
    for d in data_shape:
        check_int("data_shape", d)
    return data_shape
