"""Bayesian Gaussian mixture by mean-field variational EM, with the full ELBO.

The model, for each ``covariance_type`` (Bishop [1] 10.2 for full; the others restrict the
precision the same way), with ``C_0 = covariance_prior``:

- weights: ``pi ~ Dirichlet(alpha_0)`` or truncated stick-breaking [2],
  ``v_k ~ Beta(1, gamma)`` for k < K and ``v_K = 1``;
- full: ``Lambda_k ~ Wishart(nu_0, inv(C_0))``; tied: one ``Lambda ~ Wishart(nu_0,
  inv(C_0))`` shared by all components; diag: ``lambda_kd ~ Gamma(nu_0 / 2, rate
  C_0d / 2)``; spherical: ``lambda_k ~ Gamma(nu_0 / 2, rate C_0 / 2)`` (a 1-D Wishart is a
  Gamma: the parameters keep their meaning);
- ``mu_k | Lambda_k ~ N(m_0, inv(beta_0 Lambda_k))``; ``x_n | z_n = k ~ N(mu_k,
  inv(Lambda_k))``.

The mean-field family ``q(Z) q(pi) prod q(mu_k | Lambda_k) q(Lambda)`` is closed under these
updates; ``_m_step`` is the exact coordinate-ascent update of ``q(theta)`` given ``q(Z)``
and the E-step that of ``q(Z)`` given ``q(theta)``, so the full ELBO
(:meth:`BayesianGaussianMixture._elbo`) never decreases. The derivation is in
``docs/mixture.md``.

References:

1. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, sections 10.2
   and B (Wishart, Gamma).
2. D. M. Blei and M. I. Jordan, "Variational inference for Dirichlet process mixtures",
   *Bayesian Analysis* 1(1), 2006.
"""

import numpy as np
from scipy.special import betaln, digamma, gammaln
from sklearn.utils import check_array

from . import _covariance as cov
from ._base import BaseMixture, check_real, check_str, normalize_log
from ._covariance import gamma_kl_terms, log_det_gap, wishart_log_norm
from ._posterior import PosteriorDraws

PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")

class BayesianGaussianMixture(PosteriorDraws, BaseMixture):
    """Variational Bayesian Gaussian mixture, scikit-learn's interface, the full ELBO.

    Arguments, defaults and fitted attributes follow
    :class:`sklearn.mixture.BayesianGaussianMixture` for every ``covariance_type``:
    ``weight_concentration_prior`` defaults to ``1 / n_components``, ``mean_precision_prior``
    to 1, ``mean_prior`` to the data mean, ``degrees_of_freedom_prior`` to D and
    ``covariance_prior`` to the empirical covariance (its diagonal for diag, the mean of
    that for spherical). The variational posterior is stored as ``weight_concentration_``,
    ``mean_precision_`` (beta_k, (K,)), ``means_`` (m_k, (K, D)), ``degrees_of_freedom_``
    and ``covariances_`` = the inverse of :math:`E_q[\\Lambda]` in the type's shape;
    ``precisions_`` is :math:`E_q[\\Lambda]` and ``weights_`` is :math:`E_q[\\pi]`.

    With ``covariance_type="full"`` and ``"dirichlet_distribution"`` the fit is
    scikit-learn's, number for number. Differences, all deliberate:

    - ``lower_bound_`` is the **full ELBO** :math:`E_q[\\log p(X, Z, \\theta) - \\log
      q(Z, \\theta)]` with every constant (nats, summed over the data) of the returned
      posterior after the final E-step, comparable across K and covariance types;
      ``lower_bounds_`` (and ``elbo_history_``, an array) hold it per iteration and never
      decrease. scikit-learn's own bound (the entropy of q(Z) plus the log-normalisers of
      q(theta), the full ELBO less terms fixed by N, K, D and the priors) is
      ``partial_lower_bound_``. Convergence uses the change of the full ELBO against
      ``tol``, the same change as scikit-learn's at every M-step.
    - tied, diag and spherical are the exact variational updates of the model above:
      tied has ``degrees_of_freedom_ = nu_0 + N`` and sums the scatter of all components
      (scikit-learn: ``nu_0 + N / K`` and their average); diag's E-step uses the Gamma's
      :math:`E[\\log \\lambda]` (scikit-learn: the Wishart's); spherical counts D
      observations per point, ``degrees_of_freedom_ = nu_0 + D N_k`` (scikit-learn: N_k).
    - ``dirichlet_process`` is the truncation of [2]: the last stick is 1.
      ``weight_concentration_ = (a, b)`` has scikit-learn's shapes (K,), (K,) with
      ``b[-1] = 0`` (a Beta(a, 0) is a point mass at 1).
    - :meth:`score_samples` is the log posterior predictive density (a mixture of Student
      t, Bishop eq. 10.81), not the E-step's weighted log-probability.

    On top: :meth:`sample_posterior`, :meth:`log_q_draws`, :meth:`log_prior_draws`,
    :meth:`log_joint_draws`, :meth:`log_likelihood_draws` and
    :meth:`membership_intervals`.

    Example::

        >>> import numpy as np
        >>> from ppl_vae.mixture import BayesianGaussianMixture
        >>> X = np.random.default_rng(0).normal(size=(200, 2))
        >>> X[:100, 0] += 4.0  # two clusters
        >>> bgm = BayesianGaussianMixture(
        ...     n_components=2, covariance_type="diag",
        ...     weight_concentration_prior_type="dirichlet_distribution",
        ...     random_state=0).fit(X)
        >>> draws = bgm.sample_posterior(5, random_state=0)
        >>> draws["weights"].shape, draws["means"].shape, draws["covariances"].shape
        ((5, 2), (5, 2, 2), (5, 2, 2))

    :param int n_components: number of components K (an upper bound for the process prior).
    :param str covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
    :param str weight_concentration_prior_type: ``"dirichlet_process"`` (stick-breaking,
        the default as in scikit-learn) or ``"dirichlet_distribution"``.
    :param float weight_concentration_prior: alpha_0 (symmetric Dirichlet) or gamma (stick
        concentration); None for ``1 / n_components``.
    :param float mean_precision_prior: beta_0 > 0; None for 1.
    :param mean_prior: m_0, shape (D,); None for the data mean.
    :param float degrees_of_freedom_prior: nu_0 > D - 1; None for D.
    :param covariance_prior: C_0: (D, D) symmetric positive definite (full, tied), (D,)
        positive (diag) or a positive float (spherical); None for the data's.

    The other arguments are those of :class:`GaussianMixture`.
    """

    _needs_entropy = True

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
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        super().__init__(n_components=n_components, tol=tol, reg_covar=reg_covar,
                         max_iter=max_iter, n_init=n_init, init_params=init_params,
                         random_state=random_state, warm_start=warm_start, verbose=verbose,
                         verbose_interval=verbose_interval)
        self.covariance_type = covariance_type
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior

    # ------------------------------------------------------------------ checks and priors

    def _validate_params(self):
        super()._validate_params()
        owner = type(self).__name__
        check_str(owner, "weight_concentration_prior_type",
                  self.weight_concentration_prior_type, set(PRIOR_TYPES))
        for name in ("weight_concentration_prior", "mean_precision_prior",
                     "degrees_of_freedom_prior"):
            check_real(owner, name, getattr(self, name), 0.0, closed_left=False,
                       allow_none=True)

    @property
    def _is_process(self):
        return self.weight_concentration_prior_type == "dirichlet_process"

    def _check_parameters(self, X):
        """The priors' values (fitted attributes ending in ``_``), checked against ``X``."""
        dim = X.shape[1]
        self.weight_concentration_prior_ = (
            1.0 / self.n_components if self.weight_concentration_prior is None
            else float(self.weight_concentration_prior))
        self.mean_precision_prior_ = (
            1.0 if self.mean_precision_prior is None else float(self.mean_precision_prior))
        if self.mean_prior is None:
            self.mean_prior_ = X.mean(axis=0)
        else:
            self.mean_prior_ = check_array(self.mean_prior, dtype=np.float64, ensure_2d=False)
            cov.check_shape(self.mean_prior_, (dim,), "means")
        if self.degrees_of_freedom_prior is None:
            self.degrees_of_freedom_prior_ = float(dim)
        elif self.degrees_of_freedom_prior > dim - 1.0:
            self.degrees_of_freedom_prior_ = float(self.degrees_of_freedom_prior)
        else:
            raise ValueError(
                "The parameter 'degrees_of_freedom_prior' should be greater than "
                f"{dim - 1}, but got {self.degrees_of_freedom_prior:.3f}."
            )
        self.covariance_prior_ = self._covariance_prior(X)

    def _covariance_prior(self, X):
        dim, cov_type = X.shape[1], self.covariance_type
        name = f"{cov_type} covariance_prior"
        if self.covariance_prior is None:
            variances = np.var(X, axis=0, ddof=1)
            value = {"full": None, "tied": None, "diag": variances,
                     "spherical": float(np.mean(variances))}[cov_type]
            if value is None:
                value = np.atleast_2d(np.cov(X.T))
        elif cov_type in ("full", "tied"):
            value = check_array(self.covariance_prior, dtype=np.float64, ensure_2d=False)
            cov.check_shape(value, (dim, dim), name)
            cov.check_positive_definite(value, name)
        elif cov_type == "diag":
            value = check_array(self.covariance_prior, dtype=np.float64, ensure_2d=False)
            cov.check_shape(value, (dim,), name)
            cov.check_positive(value, name)
        else:
            check_real(type(self).__name__, "covariance_prior", self.covariance_prior, 0.0,
                       closed_left=False)
            value = float(self.covariance_prior)
        # the prior must be proper for the full ELBO to exist
        if cov_type in ("full", "tied"):
            sign, log_det = np.linalg.slogdet(value)
            if sign <= 0 or not np.isfinite(log_det):
                raise ValueError(
                    "The empirical covariance of X is singular; pass covariance_prior "
                    "explicitly (symmetric, positive-definite)."
                )
            self._log_det_prior = float(log_det)
        elif np.any(np.asarray(value) <= 0.0):
            raise ValueError(
                "The empirical variance of X is 0 in some dimension; pass "
                "covariance_prior explicitly (positive)."
            )
        return value

    # ------------------------------------------------------------------ variational updates

    def _initialize(self, X, resp):
        self._m_step(X, resp)

    def _m_step(self, X, resp):
        """q(theta) given q(Z) (Bishop eqs. 10.58, 10.60-10.63, and their restrictions)."""
        self._stats = nk, xbar, scatter = cov.gaussian_statistics(X, resp,
                                                                  self.covariance_type)
        dim, cov_type = X.shape[1], self.covariance_type
        beta0, nu0 = self.mean_precision_prior_, self.degrees_of_freedom_prior_
        mean_prior = self.mean_prior_ - self._shift
        self.weight_concentration_ = self._update_weights(nk)
        self.mean_precision_ = beta = beta0 + nk
        means = (beta0 * mean_prior + nk[:, None] * xbar) / beta[:, None]
        self.means_ = means + self._shift
        diff = xbar - mean_prior
        shrink = beta0 * nk / beta  # weight of (xbar - m_0)(xbar - m_0)^T
        # inverse scale R (W^{-1} for a Wishart, twice the rate for a Gamma) and dof nu;
        # reg_covar enters as N_k reg_covar on the diagonal of the scatter, as in sklearn
        if cov_type == "full":
            nu = nu0 + nk
            inv_scale = self.covariance_prior_ + scatter + shrink[:, None, None] * (
                diff[:, :, None] * diff[:, None, :])
            inv_scale[:, np.arange(dim), np.arange(dim)] += (nk * self.reg_covar)[:, None]
            covariances = inv_scale / nu[:, None, None]
        elif cov_type == "tied":
            nu = nu0 + nk.sum()
            inv_scale = self.covariance_prior_ + scatter + (diff.T * shrink) @ diff
            inv_scale[np.arange(dim), np.arange(dim)] += nk.sum() * self.reg_covar
            covariances = inv_scale / nu
        elif cov_type == "diag":
            nu = nu0 + nk
            inv_scale = (self.covariance_prior_ + scatter + shrink[:, None] * diff**2
                         + (nk * self.reg_covar)[:, None])
            covariances = inv_scale / nu[:, None]
        else:
            nu = nu0 + dim * nk
            inv_scale = (self.covariance_prior_ + scatter + shrink * np.sum(diff**2, axis=1)
                         + dim * nk * self.reg_covar)
            covariances = inv_scale / nu
        self.degrees_of_freedom_ = nu
        self.covariances_ = covariances
        self.precisions_cholesky_ = cov.precision_cholesky(covariances, cov_type)

    def _update_weights(self, nk):
        if self._is_process:
            tail = np.cumsum(nk[::-1])[::-1]  # tail[k] = sum_{j >= k} nk[j]
            b = np.append(self.weight_concentration_prior_ + tail[1:], 0.0)
            return (1.0 + nk, b)
        return self.weight_concentration_prior_ + nk

    def _sticks(self):
        """Beta parameters of the K - 1 free sticks."""
        a, b = self.weight_concentration_
        return a[:-1], b[:-1]

    def _estimate_log_weights(self):
        """E_q[log pi_k]; shape (K,)."""
        if self._is_process:
            a, b = self._sticks()
            d_ab = digamma(a + b)
            e_log_v, e_log_1mv = digamma(a) - d_ab, digamma(b) - d_ab
            return np.append(e_log_v, 0.0) + np.concatenate(([0.0], np.cumsum(e_log_1mv)))
        alpha = self.weight_concentration_
        return digamma(alpha) - digamma(alpha.sum())

    def _estimate_log_prob(self, X):
        """``E_q[log N(x_n | mu_k, inv(Lambda_k))]``: log rho_nk of Bishop eq. 10.46
        without the weights; (N, K)."""
        dim = X.shape[1]
        log_gauss = cov.log_gaussian_prob(X, self.means_ - self._shift,
                                          self.precisions_cholesky_, self.covariance_type)
        gap = log_det_gap(self.degrees_of_freedom_, dim, self.covariance_type)
        return log_gauss + 0.5 * (gap - dim / self.mean_precision_)

    def _get_parameters(self):
        return (self.weight_concentration_, self.mean_precision_, self.means_,
                self.degrees_of_freedom_, self.covariances_, self.precisions_cholesky_)

    def _set_parameters(self, params):
        (self.weight_concentration_, self.mean_precision_, self.means_,
         self.degrees_of_freedom_, self.covariances_, self.precisions_cholesky_) = params
        if self._is_process:
            a, b = self.weight_concentration_
            e_v = a / (a + b)  # the last is 1
            self.weights_ = e_v * np.concatenate(([1.0], np.cumprod(1.0 - e_v[:-1])))
        else:
            self.weights_ = self.weight_concentration_ / self.weight_concentration_.sum()
        self.precisions_ = cov.precisions_from_cholesky(self.precisions_cholesky_,
                                                        self.covariance_type)

    # ------------------------------------------------------------------ the full ELBO

    def _compute_lower_bound(self, log_prob_norm, neg_entropy):
        self._last_partial = self._partial_bound(neg_entropy)
        return self._elbo(self._stats, neg_entropy)

    def _iteration_extras(self):
        return self._last_partial

    def _after_fit(self, X, resp, neg_entropy, extras):
        # the ELBO of the returned pair (q(Z) of the last E-step, q(theta)); the last
        # E-step can only raise it above lower_bounds_[-1]
        stats = cov.gaussian_statistics(X, resp, self.covariance_type)
        self.lower_bound_ = self._elbo(stats, neg_entropy)
        self.elbo_history_ = np.asarray(self.lower_bounds_, dtype=float)
        self.partial_lower_bound_ = -np.inf if extras is None else extras

    def _elbo(self, stats, neg_entropy):
        """``E_q[log p(X, Z, theta) - log q(Z, theta)]``, every term (docs/mixture.md).

        ``stats`` are the statistics of q(Z) (counts, means, scatter), ``neg_entropy`` is
        ``sum r log r`` of the same responsibilities, q(theta) is the fitted state.
        """
        nk, xbar, scatter = stats
        dim = xbar.shape[1]
        cov_type = self.covariance_type
        beta0 = self.mean_precision_prior_
        beta, nu = self.mean_precision_, self.degrees_of_freedom_
        means, mean_prior = self.means_ - self._shift, self.mean_prior_ - self._shift
        prec = cov.precisions_from_cholesky(self.precisions_cholesky_, cov_type)  # E[Lambda]
        log_det_mean = 2.0 * cov.log_det_cholesky(self.precisions_cholesky_, cov_type, dim)
        e_log_det = log_det_mean + log_det_gap(nu, dim, cov_type)  # E[log |Lambda_k|]
        e_log_pi = self._estimate_log_weights()

        # E[log p(X | Z, mu, Lambda)], Bishop eq. 10.71
        e_log_px = 0.5 * np.sum(nk * (e_log_det - dim / beta - dim * cov.LOG_2PI)) - 0.5 * (
            cov.trace_scatter(scatter, prec, cov_type)
            + np.sum(nk * cov.quadratic_form(xbar - means, prec, cov_type)))
        e_log_pz = np.sum(nk * e_log_pi)
        # E[log p(mu | Lambda) - log q(mu | Lambda)]: the log-determinants cancel
        e_mean = (0.5 * dim * np.sum(np.log(beta0 / beta) - beta0 / beta + 1.0)
                  - 0.5 * beta0 * np.sum(cov.quadratic_form(means - mean_prior, prec,
                                                            cov_type)))
        return float(e_log_px + e_log_pz + self._weights_kl_terms(e_log_pi) + e_mean
                     + self._precision_kl_terms(prec, log_det_mean, e_log_det)
                     - neg_entropy)

    def _weights_kl_terms(self, e_log_pi):
        """``E_q[log p(pi) - log q(pi)]`` (over the sticks for the process prior)."""
        prior_c = self.weight_concentration_prior_
        if self._is_process:
            a, b = self._sticks()
            d_ab = digamma(a + b)
            e_log_v, e_log_1mv = digamma(a) - d_ab, digamma(b) - d_ab
            return float(np.sum(np.log(prior_c) + betaln(a, b) + (1.0 - a) * e_log_v
                                + (prior_c - b) * e_log_1mv))
        alpha = self.weight_concentration_
        num_components = alpha.shape[0]
        return float(gammaln(num_components * prior_c) - num_components * gammaln(prior_c)
                     - gammaln(alpha.sum()) + np.sum(gammaln(alpha))
                     + np.sum((prior_c - alpha) * e_log_pi))

    def _precision_kl_terms(self, prec, log_det_mean, e_log_det):
        """``E_q[log p(Lambda) - log q(Lambda)]``: Wisharts (full, tied), Gammas (diag,
        spherical)."""
        cov_type, dim = self.covariance_type, self.means_.shape[1]
        nu0, nu = self.degrees_of_freedom_prior_, self.degrees_of_freedom_
        prior = self.covariance_prior_
        if cov_type in ("full", "tied"):
            log_det_inv_scale = dim * np.log(nu) - log_det_mean  # log |W^{-1}|
            trace_prior = (np.einsum("ij,kij->k", prior, prec) if cov_type == "full"
                           else np.sum(prior * prec))
            num_units = np.size(nu)
            terms = (num_units * wishart_log_norm(nu0, self._log_det_prior, dim)
                     - np.sum(wishart_log_norm(nu, log_det_inv_scale, dim))
                     + 0.5 * np.sum((nu0 - nu) * e_log_det)
                     - 0.5 * np.sum(trace_prior) + 0.5 * dim * np.sum(nu))
            return float(terms)
        # Gamma(shape nu / 2, rate nu / (2 E[lambda])) against Gamma(nu0 / 2, C_0 / 2)
        shape = 0.5 * nu if cov_type == "spherical" else 0.5 * nu[:, None]
        rate = shape / prec
        return float(np.sum(gamma_kl_terms(0.5 * nu0, 0.5 * np.asarray(prior), shape, rate)))

    def _partial_bound(self, neg_entropy):
        """scikit-learn's bound: the entropy of q(Z) plus the log-normalisers of q(theta)."""
        cov_type, nu = self.covariance_type, self.degrees_of_freedom_
        dim = self.means_.shape[1]
        log_det_mean = 2.0 * cov.log_det_cholesky(self.precisions_cholesky_, cov_type, dim)
        if cov_type in ("full", "tied"):
            log_norm = -np.sum(wishart_log_norm(nu, dim * np.log(nu) - log_det_mean, dim,
                                                with_pi=False))
        else:
            shape = 0.5 * nu if cov_type == "spherical" else 0.5 * nu[:, None]
            rate = shape * self.covariances_
            log_norm = np.sum(gammaln(shape) - shape * np.log(rate))
        if self._is_process:
            log_norm += np.sum(betaln(*self._sticks()))
        else:
            alpha = self.weight_concentration_
            log_norm -= gammaln(alpha.sum()) - np.sum(gammaln(alpha))
        return float(-neg_entropy + log_norm
                     - 0.5 * dim * np.sum(np.log(self.mean_precision_)))

    # ------------------------------------------------------------------ densities

    def score_samples(self, X):
        """Log posterior predictive density ``log p(x | X_train)`` of each row; shape (N,).

        The predictive density of the variational posterior is a mixture of Student t
        (Bishop eq. 10.81) with weights ``weights_``: multivariate for full, tied and
        spherical, a product of D univariate ones for diag.
        """
        X = self._centred(X)
        means = self.means_ - self._shift
        dim, cov_type = X.shape[1], self.covariance_type
        beta, nu = self.mean_precision_, self.degrees_of_freedom_
        if cov_type == "diag":
            # per dimension: dof nu_k, scale^2 = (1 + beta_k) / beta_k * covariances_kd
            scale2 = (1.0 + beta[:, None]) / beta[:, None] * self.covariances_  # (K, D)
            dof = nu[:, None]
            sq = (X[:, None, :] - means) ** 2 / scale2  # (N, K, D)
            log_t = np.sum(gammaln(0.5 * (dof + 1.0)) - gammaln(0.5 * dof)
                           - 0.5 * np.log(dof * np.pi * scale2)
                           - 0.5 * (dof + 1.0) * np.log1p(sq / dof), axis=2)
        else:
            # precision of the t: ratio * E[Lambda_k], ratio = dof beta / ((1 + beta) nu)
            dof = nu + 1.0 - dim if cov_type in ("full", "tied") else nu
            ratio = dof * beta / ((1.0 + beta) * nu)
            maha = cov.mahalanobis(X, means, self.precisions_cholesky_, cov_type)
            maha = maha * ratio
            log_det = (cov.log_det_cholesky(self.precisions_cholesky_, cov_type, dim)
                       + 0.5 * dim * np.log(ratio))
            log_t = (gammaln(0.5 * (dof + dim)) - gammaln(0.5 * dof) + log_det
                     - 0.5 * dim * np.log(dof * np.pi)
                     - 0.5 * (dof + dim) * np.log1p(maha / dof))
        log_norm, _, _ = normalize_log(log_t + np.log(self.weights_))
        return log_norm
