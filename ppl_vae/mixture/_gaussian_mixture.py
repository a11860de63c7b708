"""Gaussian mixture by maximum likelihood: expectation-maximisation."""

import math

import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted

from . import _covariance as cov
from ._base import BaseMixture, normalize_log


class GaussianMixture(BaseMixture):
    """Gaussian mixture fitted by maximum likelihood (EM), scikit-learn's interface.

    Arguments, defaults, fitted attributes and results are those of
    :class:`sklearn.mixture.GaussianMixture`: runs from the same ``random_state`` start
    from the same initial responsibilities and follow the same path, for every
    ``covariance_type``. Differences, deliberate: the tied covariance of a one-point start
    (``"k-means++"``, ``"random_from_data"``) is ``reg_covar`` times the identity, as the
    full ones are (scikit-learn weights every row by one there); computations are in float64
    whatever the input's dtype; the fit centres the data once (results agree to rounding).

    Example::

        >>> import numpy as np
        >>> from ppl_vae.mixture import GaussianMixture
        >>> X = np.random.default_rng(0).normal(size=(200, 2))
        >>> X[:100, 0] += 4.0  # two clusters
        >>> gm = GaussianMixture(n_components=2, covariance_type="diag", random_state=0).fit(X)
        >>> gm.weights_.shape, gm.means_.shape, gm.covariances_.shape
        ((2,), (2, 2), (2, 2))
        >>> X_new, y_new = gm.sample(5)
        >>> X_new.shape, y_new.shape
        ((5, 2), (5,))

    :param int n_components: number of components K.
    :param str covariance_type: ``"full"`` (a matrix per component), ``"tied"`` (one matrix
        shared by all), ``"diag"`` (D variances per component) or ``"spherical"`` (one
        variance per component).
    :param float tol: stop when the mean log-likelihood per sample changes by less.
    :param float reg_covar: added to the diagonal of every covariance.
    :param int max_iter: EM iterations per initialisation; 0 returns the initialisation.
    :param int n_init: initialisations; the one with the highest likelihood is kept.
    :param str init_params: initial responsibilities: ``"kmeans"`` (k-means labels),
        ``"k-means++"`` (its seeds, one point per component), ``"random"`` (random
        responsibilities) or ``"random_from_data"`` (random distinct points).
    :param weights_init: optional initial weights, shape (K,).
    :param means_init: optional initial means, shape (K, D).
    :param precisions_init: optional initial precisions in the type's shape: (K, D, D),
        (D, D), (K, D) or (K,).
    :param random_state: int, :class:`numpy.random.RandomState` or None; also seeds
        :meth:`sample`.
    :param bool warm_start: continue from the last fit (``n_init`` is then ignored).
    :param int verbose: 1 prints each initialisation and iteration, 2 also times and
        changes of the bound.
    :param int verbose_interval: iterations between prints.

    Fitted attributes: ``weights_`` (K,), ``means_`` (K, D), ``covariances_``,
    ``precisions_`` and ``precisions_cholesky_`` (the type's shape), ``converged_``,
    ``n_iter_``, ``lower_bound_`` (mean log-likelihood per sample before the last M-step,
    as in scikit-learn), ``lower_bounds_`` (one per iteration) and ``n_features_in_``.
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
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        super().__init__(n_components=n_components, tol=tol, reg_covar=reg_covar,
                         max_iter=max_iter, n_init=n_init, init_params=init_params,
                         random_state=random_state, warm_start=warm_start, verbose=verbose,
                         verbose_interval=verbose_interval)
        self.covariance_type = covariance_type
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init

    # ------------------------------------------------------------------ checks, init

    def _check_parameters(self, X):
        """Validate the user-given initial values (kept privately, never overwritten)."""
        num_components, dim = self.n_components, X.shape[1]
        self._weights_init = self._means_init = self._precisions_init = None
        if self.weights_init is not None:
            weights = check_array(self.weights_init, dtype=np.float64, ensure_2d=False)
            cov.check_shape(weights, (num_components,), "weights")
            if np.any(weights < 0.0) or np.any(weights > 1.0):
                raise ValueError(
                    "The parameter 'weights' should be in the range [0, 1], but got max "
                    f"value {weights.min():.5f}, min value {weights.max():.5f}"
                )
            if not np.allclose(abs(1.0 - weights.sum()), 0.0, atol=1e-8):
                raise ValueError(
                    "The parameter 'weights' should be normalized, but got sum(weights) = "
                    f"{weights.sum():.5f}"
                )
            self._weights_init = weights
        if self.means_init is not None:
            means = check_array(self.means_init, dtype=np.float64, ensure_2d=False)
            cov.check_shape(means, (num_components, dim), "means")
            self._means_init = means
        if self.precisions_init is not None:
            precisions = check_array(self.precisions_init, dtype=np.float64, ensure_2d=False,
                                     allow_nd=self.covariance_type == "full")
            self._precisions_init = cov.check_precisions(precisions, self.covariance_type,
                                                         num_components, dim)

    def _initialize_parameters(self, X, random_state, X_fit=None):
        # all three given: nothing to estimate, and the random state is left untouched
        if (self.weights_init is None or self.means_init is None
                or self.precisions_init is None):
            super()._initialize_parameters(X, random_state, X_fit)
        else:
            self._initialize(X if X_fit is None else X_fit, None)

    def _initialize(self, X, resp):
        """Parameters from initial responsibilities, overridden by the user's values."""
        if not hasattr(self, "_weights_init"):  # called on its own, as sklearn's tests do
            self._weights_init, self._means_init, self._precisions_init = (
                None if value is None else np.asarray(value, dtype=np.float64)
                for value in (self.weights_init, self.means_init, self.precisions_init))
        weights = means = covariances = None
        if resp is not None:
            nk, means, scatter = cov.gaussian_statistics(X, resp, self.covariance_type)
            means += self._shift
            covariances = cov.covariances_from_scatter(nk, scatter, self.covariance_type,
                                                       self.reg_covar, X.shape[1])
            weights = nk / X.shape[0]
        self.weights_ = weights if self._weights_init is None else self._weights_init.copy()
        self.means_ = means if self._means_init is None else self._means_init.copy()
        if self._precisions_init is None:
            self.covariances_ = covariances
            self.precisions_cholesky_ = cov.precision_cholesky(covariances,
                                                               self.covariance_type)
        else:
            self.precisions_cholesky_ = cov.precision_cholesky_from_precisions(
                self._precisions_init, self.covariance_type)
            self.covariances_ = cov.covariances_from_precisions(self._precisions_init,
                                                                self.covariance_type)

    # ------------------------------------------------------------------ EM steps

    def _m_step(self, X, resp):
        nk, means, scatter = cov.gaussian_statistics(X, resp, self.covariance_type)
        self.means_ = means + self._shift
        self.weights_ = nk / nk.sum()
        self.covariances_ = cov.covariances_from_scatter(nk, scatter, self.covariance_type,
                                                         self.reg_covar, X.shape[1])
        self.precisions_cholesky_ = cov.precision_cholesky(self.covariances_,
                                                           self.covariance_type)

    def _estimate_log_prob(self, X):
        return cov.log_gaussian_prob(X, self.means_ - self._shift, self.precisions_cholesky_,
                                     self.covariance_type)

    def _estimate_log_weights(self):
        return np.log(self.weights_)

    def _compute_lower_bound(self, log_prob_norm, neg_entropy):
        # scikit-learn's convention: the mean log-likelihood of the parameters the E-step
        # used
        return float(np.mean(log_prob_norm))

    def _get_parameters(self):
        return (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)

    def _set_parameters(self, params):
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = params
        self.precisions_ = cov.precisions_from_cholesky(self.precisions_cholesky_,
                                                        self.covariance_type)

    # ------------------------------------------------------------------ scores

    def score_samples(self, X):
        """Log-likelihood ``log p(x_n)`` of each row of ``X``; shape (N,)."""
        log_prob_norm, _, _ = normalize_log(self._estimate_weighted_log_prob(self._centred(X)))
        return log_prob_norm

    def _n_parameters(self):
        """Free parameters: K - 1 weights, K D means and the covariances of the type."""
        num_components, dim = self.means_.shape
        return cov.n_parameters(self.covariance_type, num_components, dim)

    def aic(self, X):
        """Akaike information criterion ``-2 log L + 2 p`` on ``X``; a float."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        return -2.0 * self.score(X) * X.shape[0] + 2.0 * self._n_parameters()

    def bic(self, X):
        """Bayesian information criterion ``-2 log L + p log N`` on ``X``; a float."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        return (-2.0 * self.score(X) * X.shape[0]
                + self._n_parameters() * math.log(X.shape[0]))
