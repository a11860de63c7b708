"""Gaussian mixtures by EM and by variational EM, in NumPy, with scikit-learn's interface.

Two estimators that a user can swap for :class:`sklearn.mixture.GaussianMixture` and
:class:`sklearn.mixture.BayesianGaussianMixture` (full covariances only):

- :class:`GaussianMixture` -- maximum likelihood by expectation-maximisation, with
  :meth:`~GaussianMixture.aic` and :meth:`~GaussianMixture.bic`;
- :class:`BayesianGaussianMixture` -- mean-field variational EM (coordinate ascent) for the
  model of Bishop [1], section 10.2:

  .. math::

      \\pi \\sim \\mathrm{Dir}(\\alpha_0), \\quad
      \\Lambda_k \\sim \\mathcal{W}(W_0, \\nu_0), \\quad
      \\mu_k \\mid \\Lambda_k \\sim \\mathcal{N}(m_0, (\\beta_0 \\Lambda_k)^{-1}), \\quad
      z_n \\sim \\mathrm{Cat}(\\pi), \\quad
      x_n \\mid z_n = k \\sim \\mathcal{N}(\\mu_k, \\Lambda_k^{-1}),

  with :math:`q(Z, \\pi, \\mu, \\Lambda) = q(Z)\\, q(\\pi) \\prod_k q(\\mu_k \\mid \\Lambda_k)
  q(\\Lambda_k)`. Unlike scikit-learn, ``lower_bound_`` is the *full* evidence lower bound
  with every constant, so it can be compared across numbers of components. The truncated
  stick-breaking (Dirichlet process) prior on the weights [2] is available too.

The Bayesian estimator also exposes its variational posterior: :meth:`sample_posterior`,
:meth:`log_q_draws`, :meth:`log_joint_draws`, :meth:`log_likelihood_draws` (for Pareto
k-hat diagnostics) and :meth:`membership_intervals` (credible intervals of
:math:`p(z_n = k \\mid x_n, \\theta)`).

Everything is vectorised over data points; loops run over components at most.

References:

1. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, sections 9.2
   and 10.2, appendix B.
2. D. M. Blei and M. I. Jordan, "Variational inference for Dirichlet process mixtures",
   *Bayesian Analysis* 1(1), 2006.
"""

import numbers
import warnings

import numpy as np
from scipy.special import betaln, digamma, gammaln, logsumexp, multigammaln
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array, check_random_state
from sklearn.utils.validation import check_is_fitted

__all__ = ["GaussianMixture", "BayesianGaussianMixture"]

_LOG_2PI = np.log(2.0 * np.pi)

_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease "
    "the number of components, increase reg_covar, or scale the input data."
)


# --------------------------------------------------------------------------------------
# parameter checks, worded as scikit-learn's
# --------------------------------------------------------------------------------------


def _check_int(owner, name, value, low):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(
            f"The '{name}' parameter of {owner} must be an int in the range "
            f"[{low}, inf). Got {value!r} instead."
        )


def _check_real(owner, name, value, low, closed_left=True, allow_none=False):
    ok = value is None and allow_none
    if not ok and isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = np.isfinite(value) and (value >= low if closed_left else value > low)
    if not ok:
        bracket = "[" if closed_left else "("
        extra = " or None" if allow_none else ""
        raise ValueError(
            f"The '{name}' parameter of {owner} must be a float in the range "
            f"{bracket}{float(low)}, inf){extra}. Got {value!r} instead."
        )


def _check_str(owner, name, value, options):
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(o) for o in sorted(options))
        raise ValueError(
            f"The '{name}' parameter of {owner} must be a str among {{{listed}}}. "
            f"Got {value!r} instead."
        )


# --------------------------------------------------------------------------------------
# vectorised kernels
# --------------------------------------------------------------------------------------


def _precision_cholesky(covariances):
    """Upper factors ``P_k`` with ``P_k P_k^T = inv(covariances[k])``; shape (K, D, D)."""
    try:
        cov_chol = np.linalg.cholesky(covariances)
    except np.linalg.LinAlgError:
        raise ValueError(_ILL_DEFINED) from None
    if not np.all(np.isfinite(cov_chol)):
        raise ValueError(_ILL_DEFINED)
    eye = np.broadcast_to(np.eye(covariances.shape[-1]), covariances.shape)
    return np.swapaxes(np.linalg.solve(cov_chol, eye), -1, -2)


def _log_det_cholesky(prec_chol):
    """``log det(P P^T) / 2`` for factors of shape (..., D, D); shape (...,)."""
    return np.sum(np.log(np.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)


def _mahalanobis(X, means, prec_chol):
    """Squared Mahalanobis distances ``(x_n - m_k)^T P_k P_k^T (x_n - m_k)``; shape (N, K).

    One GEMM for all components: ``X`` (N, D) times the factors side by side (D, K*D).
    """
    num_components, dim = means.shape
    factors = np.ascontiguousarray(np.swapaxes(prec_chol, 0, 1)).reshape(dim, -1)
    y = X @ factors  # (N, K*D)
    y -= np.einsum("kd,kde->ke", means, prec_chol).reshape(-1)
    y *= y
    return y.reshape(X.shape[0], num_components, dim).sum(axis=2)


def _normalize_log(weighted_log_prob):
    """In-place log-sum-exp over components.

    Returns ``(log_norm, resp, sum_n sum_k resp * log resp)``: shapes (N,), (N, K), scalar.
    ``weighted_log_prob`` is overwritten.
    """
    wlp = weighted_log_prob
    shift = wlp.max(axis=1)
    wlp -= shift[:, None]
    resp = np.exp(wlp)
    total = resp.sum(axis=1)
    log_total = np.log(total)
    resp /= total[:, None]
    # sum r log r = sum_n [sum_k r_nk (wlp_nk - shift_n)] - log total_n, without a second log
    neg_entropy = float(np.einsum("nk,nk->", resp, wlp) - log_total.sum())
    return log_total + shift, resp, neg_entropy


def _sufficient_statistics(Xc, resp):
    """Soft counts (K,), sums (K, D) and centred scatter ``N_k S_k`` (K, D, D).

    ``Xc`` is the data after removing its overall mean, which keeps the one-pass second
    moment ``sum r x x^T - N_k xbar xbar^T`` accurate.
    """
    nk = resp.sum(axis=0) + 10.0 * np.finfo(resp.dtype).eps
    sums = resp.T @ Xc  # (K, D)
    scatter = np.empty((resp.shape[1], Xc.shape[1], Xc.shape[1]))
    buf = np.empty_like(Xc)
    for k in range(resp.shape[1]):
        np.multiply(Xc, resp[:, k : k + 1], out=buf)
        scatter[k] = buf.T @ Xc
    scatter -= sums[:, :, None] * sums[:, None, :] / nk[:, None, None]
    # symmetrise: rounding in the GEMM breaks exact symmetry, Cholesky does not care but
    # log-densities of draws are easier to compare against SciPy when it holds
    scatter = 0.5 * (scatter + np.swapaxes(scatter, 1, 2))
    return nk, sums, scatter


class _BaseMixture(BaseEstimator):
    """Shared fit loop, data checks and prediction methods."""

    _init_options = {"kmeans", "random"}

    def _check_parameters(self):
        owner = type(self).__name__
        _check_int(owner, "n_components", self.n_components, 1)
        _check_str(owner, "covariance_type", self.covariance_type, {"full"})
        _check_real(owner, "tol", self.tol, 0.0)
        _check_real(owner, "reg_covar", self.reg_covar, 0.0)
        _check_int(owner, "max_iter", self.max_iter, 1)
        _check_int(owner, "n_init", self.n_init, 1)
        _check_str(owner, "init_params", self.init_params, self._init_options)

    def _validate_X(self, X, reset):
        X = check_array(X, dtype=np.float64, ensure_min_samples=2 if reset else 1,
                        estimator=self, input_name="X")
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return X

    def _initial_resp(self, X, random_state):
        n_samples = X.shape[0]
        if self.init_params == "kmeans":
            labels = (
                KMeans(n_clusters=self.n_components, n_init=1, random_state=random_state)
                .fit(X)
                .labels_
            )
            resp = np.zeros((n_samples, self.n_components))
            resp[np.arange(n_samples), labels] = 1.0
        else:
            resp = random_state.uniform(size=(n_samples, self.n_components))
            resp /= resp.sum(axis=1)[:, None]
        return resp

    def fit(self, X, y=None):
        """Estimate the parameters; the best of ``n_init`` runs is kept.

        :param X: data of shape (N, D).
        :param y: ignored.
        :returns: self.
        """
        self.fit_predict(X, y)
        return self

    def fit_predict(self, X, y=None):
        """Fit, then return the most probable component of each row of ``X``; shape (N,)."""
        self._check_parameters()
        X = self._validate_X(X, reset=True)
        if X.shape[0] < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components but got "
                f"n_components = {self.n_components}, n_samples = {X.shape[0]}"
            )
        self._check_priors(X)
        shift = X.mean(axis=0)
        Xc = X - shift
        random_state = check_random_state(self.random_state)

        best_bound, best = -np.inf, None
        for _ in range(self.n_init):
            resp = self._initial_resp(X, random_state)
            state = self._m_step(Xc, resp, shift)
            bound, history, converged = -np.inf, [], False
            for n_iter in range(1, self.max_iter + 1):  # noqa: B007 (read after the loop)
                previous = bound
                log_norm, resp, neg_entropy = self._e_step(Xc, state, shift)
                state, bound = self._m_step_and_bound(Xc, resp, neg_entropy, log_norm, state,
                                                      shift)
                history.append(bound)
                if abs(bound - previous) < self.tol:
                    converged = True
                    break
            if best is None or bound > best_bound:
                best_bound = bound
                best = (state, n_iter, converged, history)

        state, self.n_iter_, self.converged_, history = best
        if not self.converged_:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning, stacklevel=2,
            )
        self._set_state(state, shift)
        self.lower_bound_ = best_bound
        self.lower_bounds_ = list(history)
        self._after_fit(X, Xc, shift, history)
        # a last E-step so that fit_predict(X) == fit(X).predict(X) whatever tol is
        return self._estimate_weighted_log_prob(X).argmax(axis=1)

    def _after_fit(self, X, Xc, shift, history):
        pass

    def predict(self, X):
        """Most probable component of each row of ``X``; shape (N,)."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        return self._estimate_weighted_log_prob(X).argmax(axis=1)

    def predict_proba(self, X):
        """Responsibilities ``p(z_n = k | x_n)``; shape (N, K)."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        _, resp, _ = _normalize_log(self._estimate_weighted_log_prob(X))
        return resp

    def score(self, X, y=None):
        """Mean of :meth:`score_samples` over the rows of ``X``; a float."""
        return float(np.mean(self.score_samples(X)))


class GaussianMixture(_BaseMixture):
    """Gaussian mixture with full covariances, fitted by maximum likelihood (EM).

    The arguments and fitted attributes are those of
    :class:`sklearn.mixture.GaussianMixture` with ``covariance_type="full"``; runs from the
    same ``random_state`` start from the same k-means partition and follow the same path.

    Example::

        >>> import numpy as np
        >>> from ppl_vae.mixture import GaussianMixture
        >>> X = np.random.default_rng(0).normal(size=(200, 2))
        >>> X[:100, 0] += 4.0  # two clusters
        >>> gm = GaussianMixture(n_components=2, random_state=0).fit(X)
        >>> gm.weights_.shape, gm.means_.shape, gm.covariances_.shape
        ((2,), (2, 2), (2, 2, 2))

    :param int n_components: number of components K.
    :param str covariance_type: only ``"full"``.
    :param float tol: stop when the mean log-likelihood per sample changes by less.
    :param float reg_covar: added to the diagonal of every covariance.
    :param int max_iter: EM iterations per initialisation.
    :param int n_init: initialisations; the one with the highest likelihood is kept.
    :param str init_params: ``"kmeans"`` or ``"random"`` (random responsibilities).
    :param weights_init: optional initial weights, shape (K,).
    :param means_init: optional initial means, shape (K, D).
    :param precisions_init: optional initial precision matrices, shape (K, D, D).
    :param random_state: int, :class:`numpy.random.RandomState` or None.

    Fitted attributes: ``weights_`` (K,), ``means_`` (K, D), ``covariances_`` (K, D, D),
    ``precisions_`` and ``precisions_cholesky_`` (K, D, D), ``converged_``, ``n_iter_``,
    ``lower_bound_`` (mean log-likelihood per sample at the last iteration, as in
    scikit-learn) and ``lower_bounds_`` (one per iteration).
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state

    def _check_priors(self, X):
        k, d = self.n_components, X.shape[1]
        for name, shape in (("weights_init", (k,)), ("means_init", (k, d)),
                            ("precisions_init", (k, d, d))):
            value = getattr(self, name)
            if value is not None:
                value = check_array(value, dtype=np.float64, ensure_2d=False,
                                    allow_nd=True)
                if value.shape != shape:
                    raise ValueError(
                        f"The parameter '{name}' should have the shape of {shape}, "
                        f"but got {value.shape}"
                    )
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=float)
            if np.any(w < 0) or not np.isclose(w.sum(), 1.0):
                raise ValueError(
                    "The parameter 'weights_init' should be non-negative and sum to 1, "
                    f"but got sum = {w.sum():.5f}"
                )

    def _m_step(self, Xc, resp, shift, first=True):
        nk, sums, scatter = _sufficient_statistics(Xc, resp)
        means_c = sums / nk[:, None]
        covariances = scatter / nk[:, None, None]
        covariances[:, np.arange(Xc.shape[1]), np.arange(Xc.shape[1])] += self.reg_covar
        weights = nk / nk.sum()
        if first:
            # user-given initial values override those of the initial partition
            if self.weights_init is not None:
                weights = np.asarray(self.weights_init, dtype=float)
            if self.means_init is not None:
                means_c = np.asarray(self.means_init, dtype=float) - shift
            if self.precisions_init is not None:
                covariances = np.linalg.inv(np.asarray(self.precisions_init, dtype=float))
        return {"weights": weights, "means_c": means_c, "covariances": covariances,
                "prec_chol": _precision_cholesky(covariances)}

    def _e_step(self, Xc, state, shift):
        wlp = self._log_prob(Xc, state["means_c"], state["prec_chol"], state["weights"])
        return _normalize_log(wlp)

    def _m_step_and_bound(self, Xc, resp, neg_entropy, log_norm, state, shift):
        # scikit-learn's convention: the bound is the mean log-likelihood of the parameters
        # the E-step used
        return self._m_step(Xc, resp, shift, first=False), float(log_norm.mean())

    @staticmethod
    def _log_prob(X, means, prec_chol, weights):
        dim = X.shape[1]
        maha = _mahalanobis(X, means, prec_chol)
        return -0.5 * (dim * _LOG_2PI + maha) + _log_det_cholesky(prec_chol) + np.log(weights)

    def _set_state(self, state, shift):
        self.weights_ = state["weights"]
        self.means_ = state["means_c"] + shift
        self.covariances_ = state["covariances"]
        self.precisions_cholesky_ = state["prec_chol"]
        self.precisions_ = self.precisions_cholesky_ @ np.swapaxes(self.precisions_cholesky_,
                                                                   1, 2)

    def _estimate_weighted_log_prob(self, X):
        return self._log_prob(X, self.means_, self.precisions_cholesky_, self.weights_)

    def score_samples(self, X):
        """Log-likelihood ``log p(x_n)`` of each row of ``X``; shape (N,)."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        log_norm, _, _ = _normalize_log(self._estimate_weighted_log_prob(X))
        return log_norm

    def _n_parameters(self):
        k, d = self.means_.shape
        return int(k * d * (d + 1) / 2 + k * d + k - 1)

    def aic(self, X):
        """Akaike information criterion ``-2 log L + 2 p`` on ``X``; a float."""
        return -2.0 * self.score(X) * X.shape[0] + 2.0 * self._n_parameters()

    def bic(self, X):
        """Bayesian information criterion ``-2 log L + p log N`` on ``X``; a float."""
        return -2.0 * self.score(X) * X.shape[0] + self._n_parameters() * np.log(X.shape[0])


class BayesianGaussianMixture(_BaseMixture):
    """Variational Bayesian Gaussian mixture with full covariances (Bishop, PRML 10.2).

    Arguments, defaults and fitted attributes follow
    :class:`sklearn.mixture.BayesianGaussianMixture` (``covariance_type="full"``):
    ``weight_concentration_prior`` defaults to ``1 / n_components``, ``mean_precision_prior``
    to 1, ``mean_prior`` to the data mean, ``degrees_of_freedom_prior`` to D and
    ``covariance_prior`` (the inverse of the Wishart scale :math:`W_0^{-1}`) to the empirical
    covariance. The variational posterior is

    .. math::

        q(\\pi) = \\mathrm{Dir}(\\alpha), \\quad
        q(\\Lambda_k) = \\mathcal{W}(W_k, \\nu_k), \\quad
        q(\\mu_k \\mid \\Lambda_k) = \\mathcal{N}(m_k, (\\beta_k \\Lambda_k)^{-1}),

    stored as ``weight_concentration_`` (alpha), ``mean_precision_`` (beta, (K,)),
    ``means_`` (m, (K, D)), ``degrees_of_freedom_`` (nu, (K,)) and ``covariances_``
    :math:`= (\\nu_k W_k)^{-1}` (K, D, D), the inverse of :math:`E_q[\\Lambda_k]`, as in
    scikit-learn. ``weights_`` is :math:`E_q[\\pi]`.

    Differences from scikit-learn, all deliberate:

    - ``lower_bound_`` is the full ELBO :math:`E_q[\\log p(X, Z, \\theta) - \\log q(Z,
      \\theta)]` with every constant (nats, summed over the data), evaluated at the returned
      posterior after the final E-step; ``elbo_history_`` has one value per iteration and
      never decreases. Convergence uses the change of the ELBO against ``tol``, which is
      the change of scikit-learn's bound (they differ by a constant).
    - ``dirichlet_process`` is a proper truncation: the last stick is 1, so there are
      K - 1 Beta factors, ``weight_concentration_ = (a, b)`` with shapes (K - 1,).
    - :meth:`score_samples` is the log posterior predictive density (a mixture of
      Student-t, Bishop eq. 10.81), not the E-step's weighted log-probability.

    Example::

        >>> import numpy as np
        >>> from ppl_vae.mixture import BayesianGaussianMixture
        >>> X = np.random.default_rng(0).normal(size=(200, 2))
        >>> X[:100, 0] += 4.0  # two clusters
        >>> bgm = BayesianGaussianMixture(
        ...     n_components=2, weight_concentration_prior_type="dirichlet_distribution",
        ...     random_state=0).fit(X)
        >>> draws = bgm.sample_posterior(5, random_state=0)
        >>> draws["weights"].shape, draws["means"].shape, draws["covariances"].shape
        ((5, 2), (5, 2, 2), (5, 2, 2, 2))

    :param int n_components: number of components K (an upper bound for the process prior).
    :param str weight_concentration_prior_type: ``"dirichlet_process"`` (stick-breaking,
        the default as in scikit-learn) or ``"dirichlet_distribution"``.
    :param float weight_concentration_prior: alpha_0 (symmetric Dirichlet) or gamma (stick
        concentration); None for ``1 / n_components``.
    :param float mean_precision_prior: beta_0 > 0; None for 1.
    :param mean_prior: m_0, shape (D,); None for the data mean.
    :param float degrees_of_freedom_prior: nu_0 > D - 1; None for D.
    :param covariance_prior: W_0^{-1}, shape (D, D), symmetric positive definite; None for
        the empirical covariance.

    The other arguments are those of :class:`GaussianMixture`.
    """

    def __init__(
        self,
        *,
        n_components=1,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        random_state=None,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state

    # ---------------------------------------------------------------- checks and priors

    def _check_parameters(self):
        super()._check_parameters()
        owner = type(self).__name__
        _check_str(owner, "weight_concentration_prior_type",
                   self.weight_concentration_prior_type,
                   {"dirichlet_process", "dirichlet_distribution"})
        _check_real(owner, "weight_concentration_prior", self.weight_concentration_prior,
                    0.0, closed_left=False, allow_none=True)
        _check_real(owner, "mean_precision_prior", self.mean_precision_prior, 0.0,
                    closed_left=False, allow_none=True)
        if self.degrees_of_freedom_prior is not None:
            _check_real(owner, "degrees_of_freedom_prior", self.degrees_of_freedom_prior,
                        0.0, closed_left=False, allow_none=True)

    def _check_priors(self, X):
        dim = X.shape[1]
        self.weight_concentration_prior_ = (
            1.0 / self.n_components if self.weight_concentration_prior is None
            else float(self.weight_concentration_prior))
        self.mean_precision_prior_ = (
            1.0 if self.mean_precision_prior is None else float(self.mean_precision_prior))
        if self.mean_prior is None:
            self.mean_prior_ = X.mean(axis=0)
        else:
            mean_prior = check_array(self.mean_prior, dtype=np.float64, ensure_2d=False)
            if mean_prior.shape != (dim,):
                raise ValueError(
                    f"The parameter 'means' should have the shape of {(dim,)}, but got "
                    f"{mean_prior.shape}"
                )
            self.mean_prior_ = mean_prior
        if self.degrees_of_freedom_prior is None:
            self.degrees_of_freedom_prior_ = float(dim)
        elif self.degrees_of_freedom_prior > dim - 1.0:
            self.degrees_of_freedom_prior_ = float(self.degrees_of_freedom_prior)
        else:
            raise ValueError(
                "The parameter 'degrees_of_freedom_prior' should be greater than "
                f"{dim - 1}, but got {self.degrees_of_freedom_prior:.3f}."
            )
        if self.covariance_prior is None:
            self.covariance_prior_ = np.atleast_2d(np.cov(X.T))
        else:
            cov = check_array(self.covariance_prior, dtype=np.float64, ensure_2d=False)
            if cov.shape != (dim, dim):
                raise ValueError(
                    f"The parameter 'full covariance_prior' should have the shape of "
                    f"{(dim, dim)}, but got {cov.shape}"
                )
            if not (np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0.0)):
                raise ValueError("'full covariance_prior' should be symmetric, "
                                 "positive-definite")
            self.covariance_prior_ = cov
        try:
            chol = np.linalg.cholesky(self.covariance_prior_)
        except np.linalg.LinAlgError:
            raise ValueError(
                "The empirical covariance of X is singular; pass covariance_prior "
                "explicitly (symmetric, positive-definite)."
            ) from None
        # log|W_0^{-1}| and the prior's Wishart log-normaliser, reused at every iteration
        self._log_det_w0_inv = 2.0 * np.sum(np.log(np.diag(chol)))

    @property
    def _is_process(self):
        return self.weight_concentration_prior_type == "dirichlet_process"

    # ---------------------------------------------------------------- variational updates

    def _update_weights(self, nk):
        if self._is_process:
            gamma = self.weight_concentration_prior_
            tail = np.cumsum(nk[::-1])[::-1]  # tail[k] = sum_{j >= k} nk[j]
            return (1.0 + nk[:-1], gamma + tail[1:])
        return self.weight_concentration_prior_ + nk

    def _expected_log_weights(self, concentration):
        """E_q[log pi_k]; shape (K,)."""
        if self._is_process:
            a, b = concentration
            d_ab = digamma(a + b)
            e_log_v, e_log_1mv = digamma(a) - d_ab, digamma(b) - d_ab
            return np.append(e_log_v, 0.0) + np.concatenate(([0.0], np.cumsum(e_log_1mv)))
        return digamma(concentration) - digamma(concentration.sum())

    def _m_step(self, Xc, resp, shift):
        stats = _sufficient_statistics(Xc, resp)
        return self._update(stats, shift)

    def _update(self, stats, shift):
        """q(theta) given the statistics of q(Z): Bishop eqs. 10.58, 10.60-10.63."""
        nk, sums, scatter = stats
        dim = sums.shape[1]
        beta0, nu0 = self.mean_precision_prior_, self.degrees_of_freedom_prior_
        m0c = self.mean_prior_ - shift
        xbar = sums / nk[:, None]
        beta = beta0 + nk
        means_c = (beta0 * m0c + sums) / beta[:, None]
        nu = nu0 + nk
        diff = xbar - m0c
        # W_k^{-1} = W_0^{-1} + N_k S_k + beta0 N_k / (beta0 + N_k) (xbar - m0)(xbar - m0)^T,
        # with reg_covar on the diagonal of S_k as scikit-learn does
        w_inv = self.covariance_prior_ + scatter
        w_inv += (beta0 * nk / beta)[:, None, None] * diff[:, :, None] * diff[:, None, :]
        w_inv[:, np.arange(dim), np.arange(dim)] += (nk * self.reg_covar)[:, None]
        covariances = w_inv / nu[:, None, None]
        prec_chol = _precision_cholesky(covariances)
        concentration = self._update_weights(nk)
        return {
            "concentration": concentration,
            "beta": beta,
            "means_c": means_c,
            "nu": nu,
            "w_inv": w_inv,
            "covariances": covariances,
            "prec_chol": prec_chol,
            "e_log_pi": self._expected_log_weights(concentration),
            # E_q[log|Lambda_k|] - log|nu_k W_k|, Bishop eq. 10.65
            "e_log_det_gap": (np.sum(digamma(0.5 * (nu[:, None] - np.arange(dim))), axis=1)
                              + dim * np.log(2.0) - dim * np.log(nu)),
        }

    def _e_step(self, Xc, state, shift):
        return _normalize_log(self._log_rho(Xc, state["means_c"], state))

    def _log_rho(self, X, means, state):
        """log rho_nk of Bishop eq. 10.46 (with 10.64-10.66); shape (N, K)."""
        dim = X.shape[1]
        maha = _mahalanobis(X, means, state["prec_chol"])  # nu_k (x - m_k)^T W_k (x - m_k)
        log_gauss = -0.5 * (dim * _LOG_2PI + maha) + _log_det_cholesky(state["prec_chol"])
        return (log_gauss + state["e_log_pi"]
                + 0.5 * (state["e_log_det_gap"] - dim / state["beta"]))

    def _m_step_and_bound(self, Xc, resp, neg_entropy, log_norm, state, shift):
        stats = _sufficient_statistics(Xc, resp)
        new_state = self._update(stats, shift)
        return new_state, self._elbo(stats, new_state, neg_entropy, shift)

    # ---------------------------------------------------------------- the full ELBO

    def _log_wishart_norm(self, nu, log_det_w_inv, dim):
        """log B(W, nu) of Bishop eq. B.79, from log|W^{-1}|."""
        return (0.5 * nu * log_det_w_inv - 0.5 * nu * dim * np.log(2.0)
                - multigammaln(0.5 * nu, dim))

    def _elbo(self, stats, state, neg_entropy, shift):
        """E_q[log p(X, Z, theta) - log q(Z, theta)], every term of Bishop eqs. 10.70-10.77.

        ``stats`` come from the responsibilities of q(Z), ``neg_entropy`` is
        ``sum r log r`` for the same responsibilities, ``state`` holds q(theta).
        """
        nk, sums, scatter = stats
        num_components, dim = sums.shape
        beta0, nu0 = self.mean_precision_prior_, self.degrees_of_freedom_prior_
        beta, nu, means = state["beta"], state["nu"], state["means_c"]
        m0 = self.mean_prior_ - shift
        prec_chol = state["prec_chol"]
        nu_w = prec_chol @ np.swapaxes(prec_chol, 1, 2)  # nu_k W_k = E_q[Lambda_k]
        w = nu_w / nu[:, None, None]
        log_det_nu_w = 2.0 * _log_det_cholesky(prec_chol)
        e_log_lam = state["e_log_det_gap"] + log_det_nu_w
        log_det_w_inv = dim * np.log(nu) - log_det_nu_w
        e_log_pi = state["e_log_pi"]

        xbar = sums / nk[:, None]
        dx, dm = xbar - means, means - m0
        tr_s_w = np.einsum("kij,kij->k", scatter, w)  # Tr(N_k S_k W_k)
        quad_x = nk * np.einsum("ki,kij,kj->k", dx, w, dx)
        quad_m = np.einsum("ki,kij,kj->k", dm, w, dm)
        tr_w0_w = np.einsum("ij,kij->k", self.covariance_prior_, w)

        e_log_px = 0.5 * np.sum(nk * (e_log_lam - dim / beta - dim * _LOG_2PI)
                                - nu * (tr_s_w + quad_x))
        e_log_pz = np.sum(nk * e_log_pi)
        e_log_p_mu_lam = (
            0.5 * np.sum(dim * np.log(beta0 / (2.0 * np.pi)) + e_log_lam
                         - dim * beta0 / beta - beta0 * nu * quad_m)
            + num_components * self._log_wishart_norm(nu0, self._log_det_w0_inv, dim)
            + 0.5 * (nu0 - dim - 1.0) * np.sum(e_log_lam)
            - 0.5 * np.sum(nu * tr_w0_w)
        )
        entropy_lam = (-self._log_wishart_norm(nu, log_det_w_inv, dim)
                       - 0.5 * (nu - dim - 1.0) * e_log_lam + 0.5 * nu * dim)
        e_log_q_mu_lam = np.sum(0.5 * e_log_lam + 0.5 * dim * np.log(beta / (2.0 * np.pi))
                                - 0.5 * dim - entropy_lam)

        prior_c = self.weight_concentration_prior_
        if self._is_process:
            a, b = state["concentration"]
            d_ab = digamma(a + b)
            e_log_v, e_log_1mv = digamma(a) - d_ab, digamma(b) - d_ab
            e_log_p_pi = np.sum(np.log(prior_c) + (prior_c - 1.0) * e_log_1mv)
            e_log_q_pi = np.sum(-betaln(a, b) + (a - 1.0) * e_log_v + (b - 1.0) * e_log_1mv)
        else:
            alpha = state["concentration"]
            e_log_p_pi = (gammaln(num_components * prior_c) - num_components * gammaln(prior_c)
                          + (prior_c - 1.0) * np.sum(e_log_pi))
            e_log_q_pi = (gammaln(alpha.sum()) - np.sum(gammaln(alpha))
                          + np.sum((alpha - 1.0) * e_log_pi))
        return float(e_log_px + e_log_pz + e_log_p_pi + e_log_p_mu_lam
                     - neg_entropy - e_log_q_pi - e_log_q_mu_lam)

    # ---------------------------------------------------------------- fitted state

    def _set_state(self, state, shift):
        self._state = dict(state)
        self.weight_concentration_ = state["concentration"]
        self.mean_precision_ = state["beta"]
        self.means_ = state["means_c"] + shift
        self.degrees_of_freedom_ = state["nu"]
        self.covariances_ = state["covariances"]
        self.precisions_cholesky_ = state["prec_chol"]
        self.precisions_ = self.precisions_cholesky_ @ np.swapaxes(self.precisions_cholesky_,
                                                                   1, 2)
        if self._is_process:
            a, b = state["concentration"]
            e_v = a / (a + b)
            stick = np.concatenate(([1.0], np.cumprod(1.0 - e_v)))
            self.weights_ = np.append(e_v, 1.0) * stick
        else:
            self.weights_ = state["concentration"] / state["concentration"].sum()

    def _after_fit(self, X, Xc, shift, history):
        _, resp, neg_entropy = self._e_step(Xc, self._state, shift)
        stats = _sufficient_statistics(Xc, resp)
        # the ELBO of the returned pair (q(Z) from the last E-step, q(theta)): the last
        # E-step can only raise it above elbo_history_[-1]
        self.lower_bound_ = self._elbo(stats, self._state, neg_entropy, shift)
        self.elbo_history_ = np.asarray(history, dtype=float)

    def _estimate_weighted_log_prob(self, X):
        return self._log_rho(X, self.means_, self._state)

    def score_samples(self, X):
        """Log posterior predictive density ``log p(x | X_train)`` of each row; shape (N,).

        The predictive density of the variational posterior is a mixture of multivariate
        Student-t (Bishop eq. 10.81) with weights ``weights_``.
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        dim = X.shape[1]
        beta, nu = self.mean_precision_, self.degrees_of_freedom_
        dof = nu + 1.0 - dim
        # precision of the t: dof * beta / (1 + beta) * W_k = scale * (nu_k W_k)
        scale = dof * beta / ((1.0 + beta) * nu)
        prec_chol = self.precisions_cholesky_ * np.sqrt(scale)[:, None, None]
        maha = _mahalanobis(X, self.means_, prec_chol)
        log_t = (gammaln(0.5 * (dof + dim)) - gammaln(0.5 * dof)
                 + _log_det_cholesky(prec_chol) - 0.5 * dim * np.log(dof * np.pi)
                 - 0.5 * (dof + dim) * np.log1p(maha / dof))
        log_norm, _, _ = _normalize_log(log_t + np.log(self.weights_))
        return log_norm

    # ---------------------------------------------------------------- posterior draws

    def sample_posterior(self, num_samples, random_state=None):
        """Draw ``theta_s ~ q(theta)``.

        :param int num_samples: S.
        :param random_state: int, :class:`numpy.random.RandomState` or None.
        :returns: dict with ``weights`` (S, K), ``means`` (S, K, D) and ``covariances``
            (S, K, D, D) (the inverse of the Wishart-distributed precision).
        """
        check_is_fitted(self)
        _check_int("sample_posterior", "num_samples", num_samples, 1)
        rng = check_random_state(random_state)
        num_components, dim = self.means_.shape
        shape = (num_samples, num_components)
        if self._is_process:
            a, b = self.weight_concentration_
            v = rng.beta(a, b, size=(num_samples, num_components - 1))
            weights = _sticks_to_weights(v)
        else:
            weights = rng.dirichlet(self.weight_concentration_, size=num_samples)
        # Bartlett: Lambda = (L A)(L A)^T with W = L L^T; A lower triangular with
        # sqrt(chi2(nu - i)) on the diagonal and N(0, 1) below
        w = self.precisions_ / self.degrees_of_freedom_[:, None, None]
        chol_w = np.linalg.cholesky(w)
        a_mat = np.tril(rng.standard_normal(size=shape + (dim, dim)), k=-1)
        chi2 = rng.chisquare(self.degrees_of_freedom_[:, None] - np.arange(dim),
                             size=shape + (dim,))
        a_mat[..., np.arange(dim), np.arange(dim)] = np.sqrt(chi2)
        lam_chol = chol_w @ a_mat  # (S, K, D, D), lower, Lambda = C C^T
        eye = np.broadcast_to(np.eye(dim), lam_chol.shape)
        lam_chol_inv = np.linalg.solve(lam_chol, eye)  # C^{-1}
        covariances = np.swapaxes(lam_chol_inv, -1, -2) @ lam_chol_inv
        covariances = 0.5 * (covariances + np.swapaxes(covariances, -1, -2))
        # mu = m + C^{-T} eps / sqrt(beta) has covariance (beta Lambda)^{-1}
        eps = rng.standard_normal(size=shape + (dim,))
        means = self.means_ + np.einsum("skji,skj->ski", lam_chol_inv, eps) / np.sqrt(
            self.mean_precision_)[:, None]
        return {"weights": weights, "means": means, "covariances": covariances}

    def _check_draws(self, draws):
        num_components, dim = self.means_.shape
        try:
            weights = np.asarray(draws["weights"], dtype=float)
            means = np.asarray(draws["means"], dtype=float)
            covariances = np.asarray(draws["covariances"], dtype=float)
        except (KeyError, TypeError):
            raise ValueError(
                "draws must be a dict with keys 'weights', 'means' and 'covariances', as "
                "returned by sample_posterior."
            ) from None
        num = weights.shape[0] if weights.ndim == 2 else -1
        expected = ((num, num_components), (num, num_components, dim),
                    (num, num_components, dim, dim))
        got = (weights.shape, means.shape, covariances.shape)
        if num < 1 or got != expected:
            raise ValueError(
                "draws must hold weights (S, K), means (S, K, D) and covariances "
                f"(S, K, D, D) with K = {num_components}, D = {dim}; got shapes {got}."
            )
        return weights, means, covariances

    def _log_weight_density(self, weights, concentration):
        """Log density of the weights under a Dirichlet (or of the sticks under Betas)."""
        if self._is_process:
            v = _weights_to_sticks(weights)
            if isinstance(concentration, tuple):
                a, b = concentration
            else:  # the prior: Beta(1, gamma) for every stick
                a = np.ones(weights.shape[1] - 1)
                b = np.full(weights.shape[1] - 1, concentration)
            return np.sum((a - 1.0) * np.log(v) + (b - 1.0) * np.log1p(-v) - betaln(a, b),
                          axis=1)
        alpha = np.broadcast_to(concentration, (weights.shape[1],))
        return (gammaln(alpha.sum()) - np.sum(gammaln(alpha))
                + np.sum((alpha - 1.0) * np.log(weights), axis=1))

    def _log_gauss_wishart(self, means, covariances, loc, beta, nu, w_inv):
        """log N(mu | loc, (beta Lambda)^{-1}) + log W(Lambda | W, nu); shape (S,).

        Lambda is the inverse of ``covariances`` (S, K, D, D); the Gaussian-Wishart
        parameters broadcast over K.
        """
        dim = means.shape[-1]
        cov_chol = np.linalg.cholesky(covariances)
        log_det_lam = -2.0 * np.sum(np.log(np.diagonal(cov_chol, axis1=-2, axis2=-1)),
                                    axis=-1)
        eye = np.broadcast_to(np.eye(dim), covariances.shape)
        lam = np.linalg.solve(covariances, eye)
        diff = means - loc
        quad = np.einsum("ski,skij,skj->sk", diff, lam, diff)
        log_normal = 0.5 * (dim * np.log(beta / (2.0 * np.pi)) + log_det_lam - beta * quad)
        _, log_det_w_inv = np.linalg.slogdet(w_inv)
        log_wishart = (self._log_wishart_norm(nu, log_det_w_inv, dim)
                       + 0.5 * (nu - dim - 1.0) * log_det_lam
                       - 0.5 * np.einsum("kij,skij->sk", w_inv, lam))
        return np.sum(log_normal + log_wishart, axis=1)

    def log_q_draws(self, draws):
        """log q(theta_s) under the variational posterior; shape (S,).

        Densities are over (weights, means, precision matrices); for the process prior the
        weights enter through their sticks. :meth:`log_joint_draws` uses the same
        parametrisation, so their difference is a valid log importance ratio.
        """
        check_is_fitted(self)
        weights, means, covariances = self._check_draws(draws)
        nu = self.degrees_of_freedom_
        return (self._log_weight_density(weights, self.weight_concentration_)
                + self._log_gauss_wishart(means, covariances, self.means_,
                                          self.mean_precision_, nu,
                                          self.covariances_ * nu[:, None, None]))

    def log_likelihood_draws(self, X, draws):
        """Pointwise ``log p(x_n | theta_s)`` with the assignment summed out; shape (S, N)."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        weights, means, covariances = self._check_draws(draws)
        return logsumexp(self._log_joint_components(X, weights, means, covariances), axis=2)

    def _log_joint_components(self, X, weights, means, covariances):
        """log pi_sk + log N(x_n | mu_sk, Sigma_sk); shape (S, N, K)."""
        num, num_components, dim = means.shape
        prec_chol = _precision_cholesky(covariances)  # (S, K, D, D)
        out = np.empty((num, X.shape[0], num_components))
        for k in range(num_components):
            y = np.einsum("nd,sde->sne", X, prec_chol[:, k])
            y -= np.einsum("sd,sde->se", means[:, k], prec_chol[:, k])[:, None, :]
            out[:, :, k] = (-0.5 * (dim * _LOG_2PI + np.einsum("sne,sne->sn", y, y))
                            + _log_det_cholesky(prec_chol[:, k])[:, None]
                            + _log(weights[:, k])[:, None])
        return out

    def log_prior_draws(self, draws):
        """``log p(theta_s)`` under the model's prior (weights, means, precisions); (S,)."""
        check_is_fitted(self)
        weights, means, covariances = self._check_draws(draws)
        return (self._log_weight_density(weights, self.weight_concentration_prior_)
                + self._log_gauss_wishart(means, covariances, self.mean_prior_,
                                          self.mean_precision_prior_,
                                          self.degrees_of_freedom_prior_,
                                          np.broadcast_to(self.covariance_prior_,
                                                          covariances.shape[1:])))

    def log_joint_draws(self, X, draws):
        """``log p(theta_s) + sum_n log p(x_n | theta_s)`` under the model's prior; (S,)."""
        return self.log_prior_draws(draws) + self.log_likelihood_draws(X, draws).sum(axis=1)

    def membership_intervals(self, X, num_samples=1000, credible_mass=0.9,
                             random_state=None):
        """Credible intervals of the membership probabilities ``p(z_n = k | x_n, theta)``.

        For each draw ``theta_s ~ q(theta)`` the memberships are Bayes' rule
        ``pi_k N(x_n | mu_k, Sigma_k) / sum_j pi_j N(x_n | mu_j, Sigma_j)``; the interval
        is equal-tailed. Components are identified within one variational posterior, so no
        relabelling is needed.

        :param X: points, shape (N, D).
        :param int num_samples: S posterior draws.
        :param float credible_mass: in (0, 1).
        :param random_state: int, :class:`numpy.random.RandomState` or None.
        :returns: dict of arrays ``mean``, ``lower``, ``upper`` (N, K).
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        if not (isinstance(credible_mass, numbers.Real) and 0.0 < credible_mass < 1.0):
            raise ValueError(
                "The 'credible_mass' parameter of membership_intervals must be a float in "
                f"the range (0.0, 1.0). Got {credible_mass!r} instead."
            )
        draws = self.sample_posterior(num_samples, random_state=random_state)
        log_joint = self._log_joint_components(X, draws["weights"], draws["means"],
                                               draws["covariances"])
        log_joint -= logsumexp(log_joint, axis=2)[:, :, None]
        member = np.exp(log_joint)  # (S, N, K)
        tail = 0.5 * (1.0 - credible_mass)
        lower, upper = np.quantile(member, [tail, 1.0 - tail], axis=0)
        return {"mean": member.mean(axis=0), "lower": lower, "upper": upper}


def _log(x):
    """log with log(0) = -inf and no warning: a draw may give a component weight exactly 0
    (truncated stick-breaking), which is a valid point of the posterior's support."""
    with np.errstate(divide="ignore"):
        return np.log(x)


def _sticks_to_weights(v):
    """Stick-breaking: (S, K - 1) stick fractions to (S, K) weights, last stick = 1."""
    num = v.shape[0]
    remaining = np.concatenate((np.ones((num, 1)), np.cumprod(1.0 - v, axis=1)), axis=1)
    return np.concatenate((v, np.ones((num, 1))), axis=1) * remaining


def _weights_to_sticks(weights):
    """Inverse of :func:`_sticks_to_weights`; (S, K) to (S, K - 1)."""
    used = np.cumsum(weights, axis=1)[:, :-2]
    remaining = 1.0 - np.concatenate((np.zeros((weights.shape[0], 1)), used), axis=1)
    # Once the stick is used up (remaining == 0) the later fractions are arbitrary; take 1.
    fraction = np.divide(weights[:, :-1], remaining, out=np.ones_like(remaining),
                         where=remaining > 0)
    return np.clip(fraction, 1e-300, 1.0 - 1e-16)
