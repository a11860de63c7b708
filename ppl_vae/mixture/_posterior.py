"""Draws from the variational posterior q(theta) of the Bayesian mixture, and densities.

A draw ``theta_s`` holds ``weights`` (K,), ``means`` (K, D) and ``covariances`` in the shape
of ``covariances_`` for the ``covariance_type``: (K, D, D), (D, D), (K, D) or (K,). The
densities (:meth:`PosteriorDraws.log_q_draws`, :meth:`PosteriorDraws.log_prior_draws`) are
over the weights (through their sticks for the process prior), the means and the
*precisions* (the inverse covariances), the parametrisation of the model; their difference is
a valid log importance ratio.
"""

import numbers

import numpy as np
from scipy.special import betaln, gammaln, logsumexp
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _covariance as cov
from ._base import check_int
from ._covariance import wishart_log_norm

# --------------------------------------------------------------------------------------
# densities and draws of the precision families
# --------------------------------------------------------------------------------------


def _wishart_log_density(lam_chol_log_det, lam, nu, inv_scale, dim):
    """``log W(Lambda | W, nu)`` with ``inv_scale = W^{-1}``; batch over leading axes.

    :param lam_chol_log_det: ``log |Lambda|``.
    :param lam: Lambda (..., D, D).
    """
    _, log_det_inv_scale = np.linalg.slogdet(inv_scale)
    return (wishart_log_norm(nu, log_det_inv_scale, dim)
            + 0.5 * (nu - dim - 1.0) * lam_chol_log_det
            - 0.5 * np.einsum("...ij,...ij->...", inv_scale, lam))


def _gamma_log_density(lam, shape, rate):
    return shape * np.log(rate) - gammaln(shape) + (shape - 1.0) * np.log(lam) - rate * lam


def _bartlett(rng, nu, scale_chol, size):
    """Wishart(nu, W) draws by Bartlett's construction: lower factors ``C`` of
    ``Lambda = C C^T``, shape ``size + (D, D)``; ``scale_chol`` is the lower factor of W
    (broadcast against ``size``)."""
    dim = scale_chol.shape[-1]
    a_mat = np.tril(rng.standard_normal(size=size + (dim, dim)), k=-1)
    chi2 = rng.chisquare(np.asarray(nu)[..., None] - np.arange(dim), size=size + (dim,))
    a_mat[..., np.arange(dim), np.arange(dim)] = np.sqrt(chi2)
    return scale_chol @ a_mat


def _sticks_to_weights(v):
    """Stick-breaking: (S, K - 1) stick fractions to (S, K) weights, last stick = 1."""
    num = v.shape[0]
    remaining = np.concatenate((np.ones((num, 1)), np.cumprod(1.0 - v, axis=1)), axis=1)
    return np.concatenate((v, np.ones((num, 1))), axis=1) * remaining


def _weights_to_sticks(weights):
    """Inverse of :func:`_sticks_to_weights`; (S, K) to (S, K - 1)."""
    # what is left of the stick before each of the K - 1 breaks (none for K = 1)
    used = np.cumsum(weights, axis=1)[:, :-2]
    remaining = 1.0 - np.concatenate((np.zeros((weights.shape[0], 1)), used),
                                     axis=1)[:, :weights.shape[1] - 1]
    # Once the stick is used up (remaining == 0) the later fractions are arbitrary; take 1.
    fraction = np.divide(weights[:, :-1], remaining, out=np.ones_like(remaining),
                         where=remaining > 0)
    return np.clip(fraction, 1e-300, 1.0 - 1e-16)


def _log(x):
    """log with log(0) = -inf and no warning: a draw may give a component weight exactly 0
    (truncated stick-breaking), which is a valid point of the posterior's support."""
    with np.errstate(divide="ignore"):
        return np.log(x)


class PosteriorDraws:
    """Posterior draws and their densities, for every ``covariance_type``.

    Mixed into :class:`~ppl_vae.mixture.BayesianGaussianMixture`; reads its fitted state.
    """

    def sample_posterior(self, num_samples, random_state=None):
        """Draw ``theta_s ~ q(theta)``.

        Weights from the Dirichlet (or the sticks from their Betas), the precisions from
        their Wisharts (full, tied: Bartlett's construction) or Gammas (diag, spherical),
        then each mean given its precision.

        :param int num_samples: S.
        :param random_state: int, :class:`numpy.random.RandomState` or None.
        :returns: dict with ``weights`` (S, K), ``means`` (S, K, D) and ``covariances``
            (S, ...) in the shape of ``covariances_``: the inverses of the drawn precisions.
        """
        check_is_fitted(self)
        check_int("sample_posterior", "num_samples", num_samples, 1)
        rng = check_random_state(random_state)
        num_components, dim = self.means_.shape
        cov_type, nu, beta = (self.covariance_type, self.degrees_of_freedom_,
                              self.mean_precision_)
        if self._is_process:
            a, b = self._sticks()
            weights = _sticks_to_weights(rng.beta(a, b, size=(num_samples, num_components - 1)))
        else:
            weights = rng.dirichlet(self.weight_concentration_, size=num_samples)
        eps = rng.standard_normal(size=(num_samples, num_components, dim))
        if cov_type in ("full", "tied"):
            # W = E[Lambda] / nu; Lambda = C C^T; mu = m + C^{-T} eps / sqrt(beta)
            size = (num_samples, num_components) if cov_type == "full" else (num_samples,)
            scale_chol = np.linalg.cholesky(self.precisions_ / np.reshape(nu, (-1, 1, 1))
                                            if cov_type == "full" else self.precisions_ / nu)
            lam_chol = _bartlett(rng, nu, scale_chol, size)
            eye = np.broadcast_to(np.eye(dim), lam_chol.shape)
            lam_chol_inv = np.linalg.solve(lam_chol, eye)  # C^{-1}
            covariances = np.swapaxes(lam_chol_inv, -1, -2) @ lam_chol_inv
            covariances = 0.5 * (covariances + np.swapaxes(covariances, -1, -2))
            spec = "skji,skj->ski" if cov_type == "full" else "sji,skj->ski"
            means = self.means_ + np.einsum(spec, lam_chol_inv, eps) / np.sqrt(beta)[:, None]
        else:
            # lambda ~ Gamma(nu / 2, rate nu / (2 E[lambda])): numpy's gamma takes a scale
            shape = 0.5 * nu if cov_type == "spherical" else 0.5 * nu[:, None]
            lam = rng.gamma(shape, 1.0 / (shape * self.covariances_),
                            size=(num_samples,) + self.covariances_.shape)
            covariances = 1.0 / lam
            variances = covariances if cov_type == "diag" else covariances[..., None]
            means = self.means_ + eps * np.sqrt(variances / beta[:, None])
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
        cov_shape = cov.covariance_shape(self.covariance_type, num_components, dim)
        expected = ((num, num_components), (num, num_components, dim), (num,) + cov_shape)
        got = (weights.shape, means.shape, covariances.shape)
        if num < 1 or got != expected:
            named = {"full": "(S, K, D, D)", "tied": "(S, D, D)", "diag": "(S, K, D)",
                     "spherical": "(S, K)"}[self.covariance_type]
            raise ValueError(
                f"draws must hold weights (S, K), means (S, K, D) and covariances {named} "
                f"for covariance_type '{self.covariance_type}' with K = {num_components}, "
                f"D = {dim}; got shapes {got}."
            )
        return weights, means, covariances

    def _log_weight_density(self, weights, concentration):
        """Log density of the weights under a Dirichlet (or of the sticks under Betas)."""
        if self._is_process:
            v = _weights_to_sticks(weights)
            if isinstance(concentration, tuple):
                a, b = concentration[0][:-1], concentration[1][:-1]
            else:  # the prior: Beta(1, gamma) for every stick
                a = np.ones(weights.shape[1] - 1)
                b = np.full(weights.shape[1] - 1, concentration)
            return np.sum((a - 1.0) * np.log(v) + (b - 1.0) * np.log1p(-v) - betaln(a, b),
                          axis=1)
        alpha = np.broadcast_to(concentration, (weights.shape[1],))
        return (gammaln(alpha.sum()) - np.sum(gammaln(alpha))
                + np.sum((alpha - 1.0) * np.log(weights), axis=1))

    def _log_mean_precision_density(self, means, covariances, loc, beta, nu, inv_scale):
        """``sum_k log N(mu_k | loc_k, inv(beta_k Lambda_k)) + log p(Lambda)``; (S,).

        ``inv_scale`` is the Wishart's ``W^{-1}`` (full, tied) or twice the Gammas' rate
        (diag, spherical); the parameters broadcast over the components.
        """
        cov_type, dim = self.covariance_type, means.shape[-1]
        diff = means - loc  # (S, K, D)
        beta = np.broadcast_to(beta, (means.shape[1],))
        if cov_type in ("full", "tied"):
            cov_chol = np.linalg.cholesky(covariances)
            log_det_lam = -2.0 * np.sum(np.log(np.diagonal(cov_chol, axis1=-2, axis2=-1)),
                                        axis=-1)
            eye = np.broadcast_to(np.eye(dim), covariances.shape)
            lam = np.linalg.solve(covariances, eye)
            if cov_type == "full":
                quad = np.einsum("ski,skij,skj->sk", diff, lam, diff)
                log_lam = np.sum(_wishart_log_density(log_det_lam, lam, nu, inv_scale, dim),
                                 axis=1)
            else:
                quad = np.einsum("ski,sij,skj->sk", diff, lam, diff)
                log_lam = _wishart_log_density(log_det_lam, lam, nu, inv_scale, dim)
                log_det_lam = log_det_lam[:, None]
        else:
            lam = 1.0 / covariances  # (S, K, D) or (S, K)
            shape = 0.5 * np.asarray(nu, dtype=float)
            if cov_type == "diag":
                shape = np.broadcast_to(shape, (means.shape[1],))[:, None]
                quad = np.einsum("skd,skd->sk", diff * diff, lam)
                log_det_lam = np.sum(np.log(lam), axis=-1)
            else:
                quad = np.einsum("skd,skd->sk", diff, diff) * lam
                log_det_lam = dim * np.log(lam)
            log_lam = np.sum(_gamma_log_density(lam, shape, 0.5 * inv_scale),
                             axis=tuple(range(1, lam.ndim)))
        log_normal = 0.5 * (dim * np.log(beta / (2.0 * np.pi)) + log_det_lam - beta * quad)
        return np.sum(log_normal, axis=1) + log_lam

    def log_q_draws(self, draws):
        """``log q(theta_s)`` under the variational posterior; shape (S,).

        Densities are over (weights, means, precisions); for the process prior the weights
        enter through their sticks. :meth:`log_joint_draws` uses the same
        parametrisation, so their difference is a valid log importance ratio.
        """
        check_is_fitted(self)
        weights, means, covariances = self._check_draws(draws)
        nu = self.degrees_of_freedom_
        # W^{-1} = nu E[Lambda]^{-1} (full, tied); twice the rate, nu / E[lambda] (diag,
        # spherical)
        expand = {"full": (-1, 1, 1), "tied": (), "diag": (-1, 1), "spherical": (-1,)}
        inv_scale = self.covariances_ * np.reshape(nu, expand[self.covariance_type])
        return (self._log_weight_density(weights, self.weight_concentration_)
                + self._log_mean_precision_density(means, covariances, self.means_,
                                                   self.mean_precision_, nu, inv_scale))

    def log_prior_draws(self, draws):
        """``log p(theta_s)`` under the model's prior (weights, means, precisions); (S,)."""
        check_is_fitted(self)
        weights, means, covariances = self._check_draws(draws)
        return (self._log_weight_density(weights, self.weight_concentration_prior_)
                + self._log_mean_precision_density(
                    means, covariances, self.mean_prior_, self.mean_precision_prior_,
                    self.degrees_of_freedom_prior_, np.asarray(self.covariance_prior_)))

    def _log_joint_components(self, X, weights, means, covariances):
        """``log pi_sk + log N(x_n | mu_sk, Sigma_sk)``; (S, N, K).

        ``X`` and ``means`` are centred by the fit's shift.
        """
        prec_chol = cov.precision_cholesky(covariances, self.covariance_type)
        out = np.empty((means.shape[0], X.shape[0], means.shape[1]))
        for s in range(means.shape[0]):
            out[s] = cov.log_gaussian_prob(X, means[s], prec_chol[s], self.covariance_type)
        out += _log(weights)[:, None, :]
        return out

    def log_likelihood_draws(self, X, draws):
        """Pointwise ``log p(x_n | theta_s)`` with the assignment summed out; (S, N)."""
        X = self._centred(X)
        weights, means, covariances = self._check_draws(draws)
        return logsumexp(self._log_joint_components(X, weights, means - self._shift,
                                                    covariances), axis=2)

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
        X = self._centred(X)
        if not (isinstance(credible_mass, numbers.Real) and 0.0 < credible_mass < 1.0):
            raise ValueError(
                "The 'credible_mass' parameter of membership_intervals must be a float in "
                f"the range (0.0, 1.0). Got {credible_mass!r} instead."
            )
        draws = self.sample_posterior(num_samples, random_state=random_state)
        log_joint = self._log_joint_components(X, draws["weights"],
                                               draws["means"] - self._shift,
                                               draws["covariances"])
        log_joint -= logsumexp(log_joint, axis=2)[:, :, None]
        member = np.exp(log_joint)  # (S, N, K)
        tail = 0.5 * (1.0 - credible_mass)
        lower, upper = np.quantile(member, [tail, 1.0 - tail], axis=0)
        return {"mean": member.mean(axis=0), "lower": lower, "upper": upper}
