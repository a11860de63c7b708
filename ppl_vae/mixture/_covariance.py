"""Covariance math shared by EM and variational EM, for each ``covariance_type``.

Every function takes the type and works on scikit-learn's shapes:

==========  ==========================  ===================================================
type        covariances, precisions     meaning
==========  ==========================  ===================================================
full        (K, D, D)                   one general matrix per component
tied        (D, D)                      one general matrix shared by all components
diag        (K, D)                      one diagonal (its D variances) per component
spherical   (K,)                        one variance per component, the same in every dim
==========  ==========================  ===================================================

``precisions_cholesky`` has the same shape: upper-triangular factors ``U`` with
``U U^T = inv(covariance)`` for full and tied, ``1 / sqrt(variance)`` for diag and spherical.
The scatter of the data around the component means, ``sum_n r_nk (x_n - xbar_k)(x_n -
xbar_k)^T``, is kept in the same shapes: full (K, D, D), tied summed over k (D, D), diag its
diagonal (K, D), spherical its trace (K,).
"""

import math

import numpy as np
from scipy.special import digamma, gammaln

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

LOG_2PI = math.log(2.0 * math.pi)

ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease "
    "the number of components, increase reg_covar, or scale the input data."
)


def covariance_shape(covariance_type, num_components, dim):
    """The shape of ``covariances_`` (and of ``precisions_``) for a type."""
    return {"full": (num_components, dim, dim), "tied": (dim, dim),
            "diag": (num_components, dim), "spherical": (num_components,)}[covariance_type]


def n_parameters(covariance_type, num_components, dim):
    """Free parameters of a K-component mixture: weights, means and covariances."""
    cov = {"full": num_components * dim * (dim + 1) // 2, "tied": dim * (dim + 1) // 2,
           "diag": num_components * dim, "spherical": num_components}[covariance_type]
    return int(cov + num_components * dim + num_components - 1)


# --------------------------------------------------------------------------------------
# statistics of the responsibilities
# --------------------------------------------------------------------------------------


def gaussian_statistics(X, resp, covariance_type):
    """Soft counts (K,), means (K, D) and the scatter in the type's shape.

    One pass over the data: ``sum_n r_nk x_n x_n^T - N_k xbar_k xbar_k^T``. The fit runs on
    data centred once (``X`` minus its mean), which keeps these second moments from
    cancelling when the data sit far from the origin.
    """
    nk = resp.sum(axis=0) + 10.0 * np.finfo(resp.dtype).eps
    means = (resp.T @ X) / nk[:, None]  # (K, D)
    if covariance_type == "full":
        num_components, dim = means.shape
        scatter = np.empty((num_components, dim, dim))
        buf = np.empty_like(X)
        for k in range(num_components):
            np.multiply(X, resp[:, k:k + 1], out=buf)
            scatter[k] = buf.T @ X
        scatter -= (nk[:, None, None] * means[:, :, None]) * means[:, None, :]
        # rounding in the products leaves a 1e-16 asymmetry; Cholesky ignores it, exact
        # comparisons (draws against SciPy) do not
        scatter = 0.5 * (scatter + np.swapaxes(scatter, 1, 2))
    elif covariance_type == "tied":
        # rows weighted by their total responsibility: the one-point starts
        # (random_from_data, k-means++) leave the other rows at 0 (sklearn weights every
        # row by 1 there, which makes its start depend on where the origin is)
        scatter = (X.T * resp.sum(axis=1)) @ X - (means.T * nk) @ means
        scatter = 0.5 * (scatter + scatter.T)
    else:
        scatter = resp.T @ (X * X) - nk[:, None] * means**2  # (K, D)
        np.maximum(scatter, 0.0, out=scatter)  # rounding can leave -1e-17 for a lone point
        if covariance_type == "spherical":
            scatter = scatter.sum(axis=1)
    return nk, means, scatter


def covariances_from_scatter(nk, scatter, covariance_type, reg_covar, dim):
    """Maximum-likelihood covariances (EM's M-step), ``reg_covar`` on the diagonal."""
    if covariance_type == "full":
        cov = scatter / nk[:, None, None]
        cov[:, np.arange(dim), np.arange(dim)] += reg_covar
    elif covariance_type == "tied":
        cov = scatter / nk.sum()
        cov[np.arange(dim), np.arange(dim)] += reg_covar
    elif covariance_type == "diag":
        cov = scatter / nk[:, None] + reg_covar
    else:  # the mean over dims of the diagonal; the scatter holds its trace
        cov = scatter / (dim * nk) + reg_covar
    return cov


# --------------------------------------------------------------------------------------
# Cholesky factors, determinants, densities
# --------------------------------------------------------------------------------------


def precision_cholesky(covariances, covariance_type):
    """Factors of the precisions from covariances; raises the ill-defined error.

    Full and tied take any leading batch shape (..., D, D): the posterior draws use it.
    """
    if covariance_type in ("full", "tied"):
        try:
            cov_chol = np.linalg.cholesky(covariances)
        except np.linalg.LinAlgError:
            raise ValueError(ILL_DEFINED) from None
        if not np.all(np.isfinite(cov_chol)):
            raise ValueError(ILL_DEFINED)
        eye = np.broadcast_to(np.eye(covariances.shape[-1]), covariances.shape)
        # U = L^{-T}: U U^T = (L L^T)^{-1}
        return np.swapaxes(np.linalg.solve(cov_chol, eye), -1, -2)
    if np.any(covariances <= 0.0):
        raise ValueError(ILL_DEFINED)
    return 1.0 / np.sqrt(covariances)


def precision_cholesky_from_precisions(precisions, covariance_type):
    """Upper factors ``U`` with ``U U^T = precisions``, without inverting them.

    Reversing rows and columns turns an upper factorisation into a lower one:
    with ``J`` the exchange matrix, ``J P J = L L^T`` gives ``P = (J L J)(J L J)^T``.
    """
    if covariance_type in ("full", "tied"):
        flipped = precisions[..., ::-1, ::-1]
        return np.linalg.cholesky(flipped)[..., ::-1, ::-1].copy()
    return np.sqrt(precisions)


def precisions_from_cholesky(prec_chol, covariance_type):
    """``U U^T`` (full, tied) or ``u**2`` (diag, spherical)."""
    if covariance_type in ("full", "tied"):
        return prec_chol @ np.swapaxes(prec_chol, -1, -2)
    return prec_chol**2


def covariances_from_precisions(precisions, covariance_type):
    if covariance_type in ("full", "tied"):
        eye = np.broadcast_to(np.eye(precisions.shape[-1]), precisions.shape)
        return np.linalg.solve(precisions, eye)
    return 1.0 / precisions


def log_det_cholesky(prec_chol, covariance_type, dim):
    """``log det(precision) / 2`` per component: (K,) (a float for tied)."""
    if covariance_type in ("full", "tied"):
        return np.sum(np.log(np.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
    if covariance_type == "diag":
        return np.sum(np.log(prec_chol), axis=-1)
    return dim * np.log(prec_chol)


def mahalanobis(X, means, prec_chol, covariance_type):
    """Squared Mahalanobis distances of every row to every component; (N, K).

    Full: one matrix product against the K factors side by side; tied, diag and spherical:
    the expanded square, one or two matrix products (the estimators pass centred data, so
    the expansion does not cancel).
    """
    num_components, dim = means.shape
    if covariance_type == "full":
        factors = np.ascontiguousarray(np.swapaxes(prec_chol, 0, 1)).reshape(dim, -1)
        y = X @ factors  # (N, K * D)
        y -= np.einsum("kd,kde->ke", means, prec_chol).reshape(-1)
        y *= y
        return y.reshape(X.shape[0], num_components, dim).sum(axis=2)
    if covariance_type == "tied":
        y = X @ prec_chol  # (N, D)
        mu = means @ prec_chol  # (K, D)
        out = y @ (-2.0 * mu.T)
        out += np.einsum("nd,nd->n", y, y)[:, None]
        out += np.einsum("kd,kd->k", mu, mu)
        return out
    if covariance_type == "diag":
        prec = prec_chol**2  # (K, D)
        out = (X * X) @ prec.T
        out += X @ (-2.0 * means * prec).T
        out += np.einsum("kd,kd->k", means * means, prec)
        return out
    prec = prec_chol**2  # (K,)
    out = X @ (-2.0 * means.T)
    out += np.einsum("nd,nd->n", X, X)[:, None]
    out += np.einsum("kd,kd->k", means, means)
    out *= prec
    return out


def log_gaussian_prob(X, means, prec_chol, covariance_type):
    """``log N(x_n | mu_k, Sigma_k)`` for every row and component; (N, K)."""
    dim = X.shape[1]
    maha = mahalanobis(X, means, prec_chol, covariance_type)
    return -0.5 * (dim * LOG_2PI + maha) + log_det_cholesky(prec_chol, covariance_type, dim)


def quadratic_form(v, precisions, covariance_type):
    """``v_k^T P_k v_k`` for one vector per component, ``v`` of shape (K, D); (K,)."""
    if covariance_type == "full":
        return np.einsum("ki,kij,kj->k", v, precisions, v)
    if covariance_type == "tied":
        return np.einsum("ki,ij,kj->k", v, precisions, v)
    if covariance_type == "diag":
        return np.einsum("ki,ki->k", v * v, precisions)
    return np.einsum("ki,ki->k", v, v) * precisions


def trace_scatter(scatter, precisions, covariance_type):
    """``sum_k Tr(scatter_k P_k)`` with the scatter in the type's shape; a float."""
    return float(np.sum(scatter * precisions))


def as_full(covariances, covariance_type, num_components, dim):
    """Covariances of any type as (K, D, D) matrices (for plots and SciPy checks)."""
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return np.broadcast_to(covariances, (num_components, dim, dim)).copy()
    if covariance_type == "diag":
        return np.einsum("kd,de->kde", covariances, np.eye(dim))
    return covariances[:, None, None] * np.eye(dim)


# --------------------------------------------------------------------------------------
# checks of user-given precisions and covariance priors, worded as scikit-learn's
# --------------------------------------------------------------------------------------


def check_shape(value, shape, name):
    if value.shape != shape:
        raise ValueError(
            f"The parameter '{name}' should have the shape of {shape}, but got {value.shape}"
        )


def check_positive_definite(matrices, name):
    """Every (D, D) matrix in ``matrices`` (..., D, D) symmetric positive definite."""
    symmetric = np.allclose(matrices, np.swapaxes(matrices, -1, -2))
    if not (symmetric and np.all(np.linalg.eigvalsh(matrices) > 0.0)):
        raise ValueError(f"'{name}' should be symmetric, positive-definite")


def check_positive(values, name):
    if np.any(values <= 0.0):
        raise ValueError(f"'{name}' should be positive")


def check_precisions(precisions, covariance_type, num_components, dim):
    """Validate ``precisions_init``; messages as scikit-learn's."""
    name = f"{covariance_type} precision"
    check_shape(precisions, covariance_shape(covariance_type, num_components, dim), name)
    if covariance_type in ("full", "tied"):
        check_positive_definite(precisions, name)
    else:
        check_positive(precisions, name)
    return precisions


# --------------------------------------------------------------------------------------
# Wishart and Gamma pieces (Bishop B.78-B.82, B.26-B.31)
# --------------------------------------------------------------------------------------


def wishart_log_norm(nu, log_det_scale_inv, dim, with_pi=True):
    """``log B(W, nu)`` of Bishop B.79, from ``log |W^{-1}|``.

    ``with_pi=False`` drops the ``D (D - 1) / 4 log pi`` of the multivariate Gamma, as
    scikit-learn's bound does.
    """
    nu = np.asarray(nu, dtype=float)
    lgamma = np.sum(gammaln(0.5 * (nu[..., None] - np.arange(dim))), axis=-1)
    if with_pi:
        lgamma = lgamma + 0.25 * dim * (dim - 1) * np.log(np.pi)
    return 0.5 * nu * log_det_scale_inv - 0.5 * nu * dim * np.log(2.0) - lgamma


def log_det_gap(nu, dim, covariance_type):
    """``E_q[log |Lambda|] - log |E_q[Lambda]|`` per precision unit.

    Wishart (full, tied): ``sum_i psi((nu - i) / 2) + D log 2 - D log nu``; D independent
    Gammas of shape ``nu / 2`` (diag) or one Gamma for D dims (spherical):
    ``D (psi(nu / 2) - log(nu / 2))``.
    """
    if covariance_type in ("full", "tied"):
        nu = np.asarray(nu, dtype=float)
        return (np.sum(digamma(0.5 * (nu[..., None] - np.arange(dim))), axis=-1)
                + dim * np.log(2.0) - dim * np.log(nu))
    return dim * (digamma(0.5 * nu) - np.log(0.5 * nu))


def gamma_kl_terms(shape0, rate0, shape, rate):
    """``E_q[log Gamma(l | shape0, rate0)] - E_q[log Gamma(l | shape, rate)]`` with
    ``q = Gamma(shape, rate)``, element-wise."""
    e_log = digamma(shape) - np.log(rate)
    return (shape0 * np.log(rate0) - gammaln(shape0) - shape * np.log(rate) + gammaln(shape)
            + (shape0 - shape) * e_log - rate0 * shape / rate + shape)
