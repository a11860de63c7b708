"""Tests for ppl_vae.mixture: against scikit-learn, SciPy densities and closed forms.

scikit-learn's own mixture tests run on these estimators in test_sklearn_conformance.py;
here: the numbers against sklearn's estimators, the full ELBO against SciPy Monte Carlo and
the closed-form evidence of the conjugate model, the posterior draws and their densities.
"""

import contextlib
import io
import re
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import linear_sum_assignment
from scipy.special import gammaln, logsumexp, multigammaln
from sklearn import mixture as sk_mixture
from sklearn.datasets import load_iris, make_blobs
from sklearn.exceptions import ConvergenceWarning, NotFittedError, SkipTestWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import check_estimator

from ppl_vae.mixture import BayesianGaussianMixture, GaussianMixture, _covariance

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
PRIOR_TYPES = ["dirichlet_distribution", "dirichlet_process"]


def blobs(num_samples=400, centers=3, seed=0, std=1.0):
    X, y = make_blobs(num_samples, n_features=2, centers=centers, cluster_std=std,
                      random_state=seed)
    return X, y


def two_clusters(num_samples, seed):
    rng = np.random.default_rng(seed)
    half = num_samples // 2
    return np.concatenate([rng.normal([0.0, 0.0], 1.0, size=(half, 2)),
                           rng.normal([6.0, 0.0], 1.0, size=(num_samples - half, 2))])


def full_covariances(model, covariances):
    """Covariances of any type as (..., K, D, D) matrices."""
    num_components, dim = model.means_.shape
    cov_type = model.covariance_type
    if cov_type == "full":
        return covariances
    if cov_type == "tied":
        return np.repeat(covariances[..., None, :, :], num_components, axis=-3)
    if cov_type == "diag":
        return covariances[..., None] * np.eye(dim)
    return covariances[..., None, None] * np.eye(dim)


def _match_components(means, ref_means):
    """Column order of ``means`` that best matches ``ref_means``."""
    cost = np.linalg.norm(means[None, :, :] - ref_means[:, None, :], axis=2)
    return linear_sum_assignment(cost)[1]


# ------------------------------------------------------------------------- EM against sklearn


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_em_matches_sklearn_on_iris(covariance_type, init_params):
    X = load_iris().data
    one_point = init_params in ("k-means++", "random_from_data")
    if one_point and covariance_type == "tied":
        pytest.skip("a deliberate difference: test_one_point_start_of_tied")
    # one-point starts have variances of reg_covar plus rounding: a larger reg_covar keeps
    # the rounding (1e-14) from being amplified into the path
    kwargs = dict(n_components=3, covariance_type=covariance_type, init_params=init_params,
                  max_iter=500, random_state=0, reg_covar=1e-3 if one_point else 1e-6)
    ours = GaussianMixture(**kwargs).fit(X)
    ref = sk_mixture.GaussianMixture(**kwargs).fit(X)
    # the same initial responsibilities and the same path: the same optimum, up to rounding
    assert ours.n_iter_ == ref.n_iter_ and ours.converged_ == ref.converged_
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(ours.score(X), ref.score(X), rtol=1e-9)
    np.testing.assert_allclose(ours.aic(X), ref.aic(X), rtol=1e-9)
    np.testing.assert_allclose(ours.bic(X), ref.bic(X), rtol=1e-9)
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), atol=1e-8)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-7,
                                   atol=1e-9, err_msg=name)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-8)


def test_one_point_start_of_tied():
    # random_from_data and k-means++ start from one data point per component: the tied
    # covariance of those responsibilities is reg_covar alone, as full's is
    X = load_iris().data
    for init_params in ("k-means++", "random_from_data"):
        kwargs = dict(n_components=3, init_params=init_params, max_iter=0, random_state=0)
        tied = GaussianMixture(covariance_type="tied", **kwargs).fit(X)
        full = GaussianMixture(covariance_type="full", **kwargs).fit(X)
        np.testing.assert_allclose(tied.covariances_, 1e-6 * np.eye(4), atol=1e-13)
        np.testing.assert_allclose(full.covariances_, np.tile(1e-6 * np.eye(4), (3, 1, 1)),
                                   atol=1e-13)
        np.testing.assert_allclose(tied.means_, full.means_)
        tied = GaussianMixture(covariance_type="tied", **{**kwargs, "max_iter": 100}).fit(X)
        assert tied.converged_ and np.isfinite(tied.score(X))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_user_initial_values_match_sklearn(covariance_type):
    X, _ = blobs(300, centers=3, seed=3)
    dim = X.shape[1]
    precisions = {"full": np.stack([np.eye(dim), 2 * np.eye(dim), [[1.0, 0.3], [0.3, 1.0]]]),
                  "tied": [[1.0, 0.2], [0.2, 0.5]], "diag": [[1.0, 2.0], [0.5, 1.0], [1, 1]],
                  "spherical": [1.0, 0.5, 2.0]}[covariance_type]
    kwargs = dict(n_components=3, covariance_type=covariance_type, random_state=1,
                  means_init=[[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]],
                  weights_init=[0.2, 0.3, 0.5], precisions_init=precisions)
    ours = GaussianMixture(**kwargs).fit(X)
    ref = sk_mixture.GaussianMixture(**kwargs).fit(X)
    assert ours.n_iter_ == ref.n_iter_
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-9,
                                   err_msg=name)
    # max_iter=0: the user's values themselves (sklearn leaves covariances_ unset then)
    start = GaussianMixture(max_iter=0, **kwargs).fit(X)
    np.testing.assert_array_equal(start.means_, kwargs["means_init"])
    np.testing.assert_allclose(start.precisions_, precisions, rtol=1e-12)
    np.testing.assert_allclose(_covariance.precisions_from_cholesky(
        _covariance.precision_cholesky(start.covariances_, covariance_type), covariance_type),
        precisions, rtol=1e-10)
    # the arguments are never overwritten
    assert isinstance(start.weights_init, list)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_draws_what_sklearn_draws(covariance_type):
    X, _ = blobs(300, centers=3, seed=5)
    kwargs = dict(n_components=3, covariance_type=covariance_type, random_state=4)
    ours = GaussianMixture(**kwargs).fit(X)
    ref = sk_mixture.GaussianMixture(**kwargs).fit(X)
    X_ours, y_ours = ours.sample(50)
    X_ref, y_ref = ref.sample(50)
    np.testing.assert_array_equal(y_ours, y_ref)
    assert y_ours.dtype == np.int64 and X_ours.shape == (50, 2)
    np.testing.assert_allclose(X_ours, X_ref, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="Invalid value for 'n_samples': 0"):
        ours.sample(0)


def test_max_iter_zero_returns_the_initialisation():
    X, _ = blobs(200, centers=2, seed=2)
    for cls in (GaussianMixture, BayesianGaussianMixture):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)  # no warning for max_iter=0
            model = cls(n_components=2, max_iter=0, random_state=0).fit(X)
        assert model.n_iter_ == 0 and not model.converged_ and model.lower_bounds_ == []
        # k-means' partition, then one M-step: the means are the cluster means (EM)
        if cls is GaussianMixture:
            from sklearn.cluster import KMeans

            labels = KMeans(2, n_init=1, random_state=np.random.RandomState(0)).fit(X).labels_
            expected = np.stack([X[labels == k].mean(axis=0) for k in range(2)])
            np.testing.assert_allclose(model.means_, expected, rtol=1e-12)
            assert model.lower_bound_ == -np.inf


def test_verbose_prints_what_sklearn_prints():
    X = np.random.RandomState(0).rand(200, 2)
    outputs = []
    for cls in (GaussianMixture, sk_mixture.GaussianMixture):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            cls(n_components=2, verbose=2, verbose_interval=2, n_init=2, random_state=0,
                covariance_type="diag").fit(X)
        outputs.append(re.sub(r"time lapse [0-9.]+s", "", buffer.getvalue()))
    assert outputs[0] == outputs[1] and outputs[0].count("Initialization converged.") == 2


@pytest.mark.parametrize("cls", [GaussianMixture, BayesianGaussianMixture])
def test_warm_start_continues_the_same_path(cls):
    X, _ = blobs(300, centers=3, seed=6, std=2.0)
    kwargs = dict(n_components=3, random_state=0, tol=0.0)
    one_go = cls(max_iter=6, **kwargs)
    stepwise = cls(max_iter=2, warm_start=True, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one_go.fit(X)
        for _ in range(3):
            stepwise.fit(X)
    np.testing.assert_allclose(stepwise.means_, one_go.means_, rtol=1e-10)
    np.testing.assert_allclose(stepwise.covariances_, one_go.covariances_, rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("cls", [GaussianMixture, BayesianGaussianMixture])
def test_check_estimator_passes_in_full(cls, covariance_type):
    # every generic check scikit-learn runs, as on its own mixtures (the array API check is
    # skipped for both: it needs array-api-strict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        results = check_estimator(cls(covariance_type=covariance_type), on_fail=None)
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert not failed and skipped <= {"check_array_api_input"}
    assert cls().__sklearn_tags__().estimator_type == "density_estimator"


# ------------------------------------------------------------------------- variational EM


@pytest.mark.parametrize("n_components", [2, 3, 5])
def test_bayesian_full_matches_sklearn(n_components):
    X, _ = blobs(500, centers=3, seed=1)
    kwargs = dict(n_components=n_components, random_state=0, max_iter=500,
                  weight_concentration_prior_type="dirichlet_distribution")
    ours = BayesianGaussianMixture(**kwargs).fit(X)
    ref = sk_mixture.BayesianGaussianMixture(**kwargs).fit(X)
    assert ours.n_iter_ == ref.n_iter_
    for name in ("weights_", "means_", "covariances_", "precisions_", "mean_precision_",
                 "degrees_of_freedom_", "weight_concentration_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-9,
                                   err_msg=name)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-9)
    # scikit-learn's own bound, kept under another name
    np.testing.assert_allclose(ours.partial_lower_bound_, ref.lower_bound_, rtol=1e-10)
    # the full ELBO differs from it by terms fixed by N, K, D and the priors, at the exact
    # M-step optimum (reg_covar = 0: otherwise sklearn's bound moves with N_k reg_covar)
    kwargs["reg_covar"] = 0.0
    ours = BayesianGaussianMixture(**kwargs).fit(X)
    ref = sk_mixture.BayesianGaussianMixture(**kwargs).fit(X)
    np.testing.assert_allclose(np.diff(ours.lower_bounds_), np.diff(ref.lower_bounds_),
                               rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bayesian_first_m_step_against_sklearn(covariance_type):
    # from the same responsibilities: full and diag are scikit-learn's update; tied sums the
    # components' scatter where sklearn averages it, spherical counts D observations a point
    X, _ = blobs(200, centers=3, seed=4)
    resp = np.random.RandomState(0).dirichlet(np.ones(3), size=len(X))
    ours = BayesianGaussianMixture(n_components=3, covariance_type=covariance_type)
    ref = sk_mixture.BayesianGaussianMixture(n_components=3, covariance_type=covariance_type)
    for model in (ours, ref):
        model._check_parameters(X)
        model._initialize(X, resp)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-12)
    nk, num, dim = resp.sum(axis=0), len(X), X.shape[1]

    def inv_scale(model):  # W^{-1} (full, tied), twice the Gamma rate (diag, spherical)
        nu = model.degrees_of_freedom_
        return model.covariances_ * np.reshape(nu, (-1,) + (1,) * (model.covariances_.ndim - 1))

    inv_scale_ours, inv_scale_ref = inv_scale(ours), inv_scale(ref)
    if covariance_type in ("full", "diag"):
        np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-12)
        np.testing.assert_allclose(ours.degrees_of_freedom_, ref.degrees_of_freedom_)
    elif covariance_type == "tied":
        assert ours.degrees_of_freedom_ == pytest.approx(dim + num)
        assert ref.degrees_of_freedom_ == pytest.approx(dim + num / 3)
        prior = ours.covariance_prior_
        np.testing.assert_allclose(inv_scale_ours - prior, 3 * (inv_scale_ref - prior),
                                   rtol=1e-10)
    else:
        np.testing.assert_allclose(ours.degrees_of_freedom_, dim + dim * nk, rtol=1e-12)
        prior = ours.covariance_prior_
        np.testing.assert_allclose(inv_scale_ours - prior, dim * (inv_scale_ref - prior),
                                   rtol=1e-10)


def _log_evidence(X, model):
    """log p(X) of the one-component conjugate model, in closed form.

    Normal-Wishart (full, tied; Murphy 2007, "Conjugate Bayesian analysis of the Gaussian
    distribution", eq. 266) and Normal-Gamma (diag: each dimension on its own; spherical:
    one precision for all D).
    """
    num, dim = X.shape
    m0, beta0, nu0 = model.mean_prior_, model.mean_precision_prior_, model.degrees_of_freedom_prior_
    prior = np.asarray(model.covariance_prior_)
    xbar = X.mean(axis=0)
    scatter = (X - xbar).T @ (X - xbar)
    beta = beta0 + num
    diff = xbar - m0
    if model.covariance_type in ("full", "tied"):
        nu = nu0 + num
        inv_scale = prior + scatter + beta0 * num / beta * np.outer(diff, diff)
        return (-0.5 * num * dim * np.log(np.pi) + multigammaln(0.5 * nu, dim)
                - multigammaln(0.5 * nu0, dim) + 0.5 * nu0 * np.linalg.slogdet(prior)[1]
                - 0.5 * nu * np.linalg.slogdet(inv_scale)[1]
                + 0.5 * dim * np.log(beta0 / beta))
    if model.covariance_type == "diag":
        a0, b0 = 0.5 * nu0, 0.5 * prior
        a = a0 + 0.5 * num
        b = b0 + 0.5 * (np.diag(scatter) + beta0 * num / beta * diff**2)
        per_dim = (gammaln(a) - gammaln(a0) + a0 * np.log(b0) - a * np.log(b)
                   + 0.5 * np.log(beta0 / beta) - 0.5 * num * np.log(2 * np.pi))
        return per_dim.sum()
    a0, b0 = 0.5 * nu0, 0.5 * prior
    a = a0 + 0.5 * num * dim
    b = b0 + 0.5 * (np.trace(scatter) + beta0 * num / beta * diff @ diff)
    return (gammaln(a) - gammaln(a0) + a0 * np.log(b0) - a * np.log(b)
            + 0.5 * dim * np.log(beta0 / beta) - 0.5 * num * dim * np.log(2 * np.pi))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_one_component_elbo_is_the_log_evidence(covariance_type, prior_type):
    # with K = 1 the mean-field posterior is the exact posterior, so the full ELBO is
    # log p(X) of the conjugate model
    X = np.random.default_rng(3).normal(size=(40, 3)) * [1.0, 2.0, 0.5] + [1.0, -2.0, 3.0]
    priors = {"full": [[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]],
              "tied": [[1.0, 0.0, 0.2], [0.0, 1.0, 0.0], [0.2, 0.0, 1.0]],
              "diag": [1.0, 2.0, 0.5], "spherical": 1.5}[covariance_type]
    model = BayesianGaussianMixture(n_components=1, covariance_type=covariance_type,
                                    weight_concentration_prior_type=prior_type, reg_covar=0.0,
                                    covariance_prior=priors, mean_prior=[0.0, 0.0, 1.0],
                                    mean_precision_prior=0.5, degrees_of_freedom_prior=4.5,
                                    random_state=0).fit(X)
    np.testing.assert_allclose(model.lower_bound_, _log_evidence(X, model), rtol=1e-10)
    # and the default priors, built from the data
    model = BayesianGaussianMixture(n_components=1, covariance_type=covariance_type,
                                    reg_covar=0.0, random_state=0).fit(X)
    np.testing.assert_allclose(model.lower_bound_, _log_evidence(X, model), rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_elbo_never_decreases(covariance_type, prior_type):
    X, _ = blobs(300, centers=4, seed=5)
    model = BayesianGaussianMixture(n_components=6, covariance_type=covariance_type,
                                    weight_concentration_prior_type=prior_type,
                                    init_params="random", tol=1e-8, max_iter=1000,
                                    reg_covar=0.0, random_state=0).fit(X)
    history = np.asarray(model.lower_bounds_)
    np.testing.assert_array_equal(history, model.elbo_history_)
    assert history.shape == (model.n_iter_,) and model.n_iter_ > 3
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:])), np.diff(history).min()
    assert model.lower_bound_ >= history[-1] - 1e-9 * abs(history[-1])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_maximises_the_elbo(covariance_type):
    # coordinate ascent: moving q(Lambda) away from the update, with q(Z) fixed, lowers the
    # ELBO; here nu and the inverse scale are each scaled by 1 +- 5%
    X, _ = blobs(150, centers=2, seed=9, std=1.5)
    model = BayesianGaussianMixture(n_components=2, covariance_type=covariance_type,
                                    reg_covar=0.0, random_state=0,
                                    weight_concentration_prior_type="dirichlet_distribution")
    model._check_parameters(X)
    resp = np.random.RandomState(2).dirichlet([2.0, 1.0], size=len(X))
    neg_entropy = float(np.sum(resp * np.log(resp)))
    model._m_step(X, resp)
    stats_ = model._stats
    best = model._elbo(stats_, neg_entropy)
    nu, covariances = model.degrees_of_freedom_, model.covariances_
    for nu_factor, cov_factor in ((1.05, 1.0), (0.95, 1.0), (1.0, 1.05), (1.0, 0.95)):
        model.degrees_of_freedom_ = nu * nu_factor
        model.covariances_ = covariances * cov_factor / nu_factor
        model.precisions_cholesky_ = _covariance.precision_cholesky(model.covariances_,
                                                                    covariance_type)
        assert model._elbo(stats_, neg_entropy) < best


def _scipy_log_joint_minus_q(model, X, draw, resp, rng):
    """One Monte Carlo term of E_q[log p(X, Z, theta) - log q(Z, theta)], SciPy densities."""
    num_components, dim = model.means_.shape
    cov_type = model.covariance_type
    w, mu, cov = draw["weights"], draw["means"], draw["covariances"]
    full = full_covariances(model, cov)
    # Z ~ q(Z): one categorical draw per row of the responsibilities
    u = rng.uniform(size=(X.shape[0], 1))
    z = np.minimum((np.cumsum(resp, axis=1) < u).sum(axis=1), num_components - 1)
    log_p = stats.multinomial.logpmf(np.eye(num_components)[z], 1, w).sum()
    log_q = np.sum(np.log(resp[np.arange(X.shape[0]), z]))
    for k in range(num_components):
        if np.any(z == k):
            log_p += stats.multivariate_normal(mu[k], full[k]).logpdf(X[z == k]).sum()
        log_p += stats.multivariate_normal(model.mean_prior_,
                                           full[k] / model.mean_precision_prior_).logpdf(mu[k])
        log_q += stats.multivariate_normal(model.means_[k],
                                           full[k] / model.mean_precision_[k]).logpdf(mu[k])
    nu0, prior, nu = (model.degrees_of_freedom_prior_, model.covariance_prior_,
                      model.degrees_of_freedom_)
    if cov_type in ("full", "tied"):
        lams = np.linalg.inv(cov if cov_type == "full" else cov[None])
        nus = nu if cov_type == "full" else [nu]
        posts = model.covariances_ if cov_type == "full" else model.covariances_[None]
        for lam, nu_k, post in zip(lams, nus, posts):
            lam = 0.5 * (lam + lam.T)
            log_p += stats.wishart(df=nu0, scale=np.linalg.inv(prior)).logpdf(lam)
            log_q += stats.wishart(df=nu_k, scale=np.linalg.inv(post * nu_k)).logpdf(lam)
    else:
        nu_b = nu[:, None] if cov_type == "diag" else nu
        log_p += stats.gamma(0.5 * nu0, scale=2.0 / np.asarray(prior)).logpdf(1.0 / cov).sum()
        log_q += stats.gamma(0.5 * nu_b, scale=2.0 / (nu_b * model.covariances_)).logpdf(
            1.0 / cov).sum()
    if model.weight_concentration_prior_type == "dirichlet_process":
        remaining = 1.0 - np.concatenate(([0.0], np.cumsum(w)[:-2]))
        v = w[:-1] / remaining
        a, b = model.weight_concentration_
        log_p += stats.beta(1.0, model.weight_concentration_prior_).logpdf(v).sum()
        log_q += stats.beta(a[:-1], b[:-1]).logpdf(v).sum()
    else:
        log_p += stats.dirichlet(np.full(num_components,
                                         model.weight_concentration_prior_)).logpdf(w)
        log_q += stats.dirichlet(model.weight_concentration_).logpdf(w)
    return log_p - log_q


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_lower_bound_is_the_full_elbo(covariance_type, prior_type):
    # overlapping clusters so that q(Z) is not degenerate and every term matters; a spare
    # third component sits at the prior (nu_0 = D + 2 keeps its draws well conditioned)
    X, _ = blobs(120, centers=2, seed=7, std=2.0)
    model = BayesianGaussianMixture(n_components=3, covariance_type=covariance_type,
                                    weight_concentration_prior_type=prior_type,
                                    degrees_of_freedom_prior=4.0, max_iter=2000,
                                    random_state=0).fit(X)
    resp = model.predict_proba(X)
    num_draws = 200
    draws = model.sample_posterior(num_draws, random_state=1)
    rng = np.random.default_rng(2)
    terms = np.array([
        _scipy_log_joint_minus_q(model, X, {k: v[s] for k, v in draws.items()}, resp, rng)
        for s in range(num_draws)
    ])
    mean, sem = terms.mean(), terms.std(ddof=1) / np.sqrt(num_draws)
    assert abs(mean - model.lower_bound_) < 4.0 * sem, (mean, sem, model.lower_bound_)


def test_full_elbo_prefers_two_components_for_two_clusters():
    X = two_clusters(300, seed=0)
    for cov_type in COVARIANCE_TYPES:
        kwargs = dict(weight_concentration_prior_type="dirichlet_distribution",
                      covariance_type=cov_type, random_state=0)
        one = BayesianGaussianMixture(n_components=1, **kwargs).fit(X)
        two = BayesianGaussianMixture(n_components=2, **kwargs).fit(X)
        assert one.lower_bound_ < two.lower_bound_ - 50.0


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_score_samples_is_the_posterior_predictive(covariance_type):
    # log E_q[p(x | theta)] by Monte Carlo over posterior draws: a small data set keeps the
    # posterior wide, so the Student-t tails matter
    X, _ = blobs(30, centers=2, seed=11, std=1.0)
    model = BayesianGaussianMixture(n_components=2, covariance_type=covariance_type,
                                    weight_concentration_prior_type="dirichlet_distribution",
                                    random_state=0).fit(X)
    query = np.concatenate([X[:3], X[:3] + 3.0])
    draws = model.sample_posterior(10000, random_state=0)
    log_lik = model.log_likelihood_draws(query, draws)  # (S, 6)
    mc = logsumexp(log_lik, axis=0) - np.log(len(log_lik))
    weights = np.exp(log_lik - log_lik.max(axis=0))
    rel_sem = weights.std(axis=0) / weights.mean(axis=0) / np.sqrt(len(log_lik))
    np.testing.assert_allclose(model.score_samples(query), mc, atol=5.0 * rel_sem.max())


def test_dirichlet_process_attributes_have_sklearn_shapes():
    X, _ = blobs(500, centers=3, seed=2)
    model = BayesianGaussianMixture(n_components=3, random_state=0).fit(X)
    a, b = model.weight_concentration_
    assert a.shape == b.shape == (3,) and b[-1] == 0.0
    # scikit-learn's formula for the weights gives ours: the last stick is 1
    expected = a / (a + b) * np.hstack((1.0, np.cumprod(b / (a + b))[:-1]))
    np.testing.assert_allclose(model.weights_, expected, rtol=1e-12)
    np.testing.assert_allclose(model.weights_.sum(), 1.0)
    # sklearn keeps a free last stick: close, not equal
    ref = sk_mixture.BayesianGaussianMixture(n_components=3, random_state=0).fit(X)
    assert adjusted_rand_score(model.predict(X), ref.predict(X)) > 0.99
    np.testing.assert_allclose(model.weights_, ref.weights_, atol=5e-3)
    np.testing.assert_allclose(model.means_, ref.means_, atol=5e-3)


# ------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("cls", [GaussianMixture, BayesianGaussianMixture])
def test_fit_predict_equals_fit_then_predict(cls, covariance_type):
    X, _ = blobs(300, centers=3, seed=4)
    estimator = cls(n_components=4, covariance_type=covariance_type, init_params="random",
                    max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = estimator.fit_predict(X)
        np.testing.assert_array_equal(labels, estimator.fit(X).predict(X))
    np.testing.assert_allclose(estimator.predict_proba(X).sum(axis=1), 1.0)
    assert isinstance(estimator.score(X), float)


# ------------------------------------------------------------------------- posterior draws


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_sample_posterior_moments(covariance_type, prior_type):
    X, _ = blobs(200, centers=3, seed=9)
    model = BayesianGaussianMixture(n_components=3, covariance_type=covariance_type,
                                    weight_concentration_prior_type=prior_type,
                                    random_state=0).fit(X)
    num = 4000
    draws = model.sample_posterior(num, random_state=0)
    assert draws["weights"].shape == (num, 3) and draws["means"].shape == (num, 3, 2)
    assert draws["covariances"].shape == (num,) + model.covariances_.shape
    np.testing.assert_allclose(draws["weights"].sum(axis=1), 1.0)
    full = full_covariances(model, draws["covariances"])
    assert np.all(np.linalg.eigvalsh(full) > 0.0)
    precisions = (np.linalg.inv(draws["covariances"]) if covariance_type in ("full", "tied")
                  else 1.0 / draws["covariances"])
    # Monte Carlo means against the posterior's: E[pi], E[mu] = m, E[Lambda] = precisions_
    for draw, expected in ((draws["weights"], model.weights_), (draws["means"], model.means_),
                           (precisions, model.precisions_)):
        sem = draw.std(axis=0) / np.sqrt(num)
        assert np.all(np.abs(draw.mean(axis=0) - expected) < 5.0 * sem + 1e-12)
    again = model.sample_posterior(3, random_state=5)
    np.testing.assert_array_equal(again["means"], model.sample_posterior(3, random_state=5)["means"])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_draw_densities_match_scipy(covariance_type):
    X, _ = blobs(150, centers=2, seed=8)
    model = BayesianGaussianMixture(n_components=2, covariance_type=covariance_type,
                                    weight_concentration_prior_type="dirichlet_distribution",
                                    random_state=0).fit(X)
    draws = model.sample_posterior(4, random_state=0)
    full = full_covariances(model, draws["covariances"])
    loglik = model.log_likelihood_draws(X, draws)
    assert loglik.shape == (4, X.shape[0])
    nu = model.degrees_of_freedom_
    for s in range(4):
        dens = sum(draws["weights"][s, k]
                   * stats.multivariate_normal(draws["means"][s, k], full[s, k]).pdf(X)
                   for k in range(2))
        np.testing.assert_allclose(loglik[s], np.log(dens), rtol=1e-10)
        # log q(theta_s): Dirichlet x prod_k Normal(mu_k | m_k, Sigma_k / beta_k) x q(Lambda)
        expected = stats.dirichlet(model.weight_concentration_).logpdf(draws["weights"][s])
        expected += sum(stats.multivariate_normal(model.means_[k],
                                                  full[s, k] / model.mean_precision_[k]
                                                  ).logpdf(draws["means"][s, k])
                        for k in range(2))
        cov_s = draws["covariances"][s]
        if covariance_type == "full":
            expected += sum(stats.wishart(nu[k], np.linalg.inv(model.covariances_[k] * nu[k])
                                          ).logpdf(np.linalg.inv(cov_s[k])) for k in range(2))
        elif covariance_type == "tied":
            expected += stats.wishart(nu, np.linalg.inv(model.covariances_ * nu)).logpdf(
                np.linalg.inv(cov_s))
        else:
            nu_b = nu[:, None] if covariance_type == "diag" else nu
            expected += stats.gamma(0.5 * nu_b, scale=2.0 / (nu_b * model.covariances_)
                                    ).logpdf(1.0 / cov_s).sum()
        np.testing.assert_allclose(model.log_q_draws(draws)[s], expected, rtol=1e-9)
    log_joint = model.log_joint_draws(X, draws)
    assert log_joint.shape == (4,) and np.all(np.isfinite(log_joint))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_membership_intervals(covariance_type):
    query = np.array([[3.0, 0.0], [2.6, 0.5], [0.0, 0.0], [3.4, -0.5]])
    widths = []
    for num in (40, 2000):
        X = two_clusters(num, seed=1)
        model = BayesianGaussianMixture(n_components=2, covariance_type=covariance_type,
                                        weight_concentration_prior_type="dirichlet_distribution",
                                        random_state=0).fit(X)
        out = model.membership_intervals(query, num_samples=1000, credible_mass=0.9,
                                         random_state=0)
        assert set(out) == {"mean", "lower", "upper"}
        for value in out.values():
            assert value.shape == (4, 2)
        np.testing.assert_allclose(out["mean"].sum(axis=1), 1.0)
        assert np.all(out["lower"] <= out["mean"]) and np.all(out["mean"] <= out["upper"])
        widths.append((out["upper"] - out["lower"])[:2].mean())
    # fifty times the data: the parameter uncertainty, and the intervals, shrink
    assert widths[1] < 0.5 * widths[0]


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cls", [GaussianMixture, BayesianGaussianMixture])
@pytest.mark.parametrize("kwargs, message", [
    ({"n_components": 0}, "The 'n_components' parameter of {} must be an int in the range [1, inf). Got 0 instead."),
    ({"n_components": 2.5}, "The 'n_components' parameter of {} must be an int in the range [1, inf). Got 2.5 instead."),
    ({"tol": -1.0}, "The 'tol' parameter of {} must be a float in the range [0.0, inf). Got -1.0 instead."),
    ({"reg_covar": -1e-3}, "The 'reg_covar' parameter of {} must be a float in the range [0.0, inf)."),
    ({"max_iter": -1}, "The 'max_iter' parameter of {} must be an int in the range [0, inf). Got -1 instead."),
    ({"n_init": 0}, "The 'n_init' parameter of {} must be an int in the range [1, inf). Got 0 instead."),
    ({"init_params": "kmeans+"}, "The 'init_params' parameter of {} must be a str among {{'k-means++', 'kmeans', 'random', 'random_from_data'}}. Got 'kmeans+' instead."),
    ({"covariance_type": "diagonal"}, "The 'covariance_type' parameter of {} must be a str among {{'diag', 'full', 'spherical', 'tied'}}. Got 'diagonal' instead."),
    ({"warm_start": 1}, "The 'warm_start' parameter of {} must be an instance of 'bool'. Got 1 instead."),
    ({"verbose": -1}, "The 'verbose' parameter of {} must be an int in the range [0, inf)"),
    ({"verbose_interval": 0}, "The 'verbose_interval' parameter of {} must be an int in the range [1, inf)."),
])
def test_bad_parameters(cls, kwargs, message):
    X, _ = blobs(50)
    with pytest.raises(ValueError) as info:
        cls(**{"n_components": 2, **kwargs}).fit(X)
    assert message.format(cls.__name__) in str(info.value)


@pytest.mark.parametrize("covariance_type, kwargs, message", [
    ("full", {"weight_concentration_prior_type": "dirichlet"},
     "The 'weight_concentration_prior_type' parameter of BayesianGaussianMixture must be a str "
     "among {'dirichlet_distribution', 'dirichlet_process'}. Got 'dirichlet' instead."),
    ("full", {"weight_concentration_prior": 0.0},
     "The 'weight_concentration_prior' parameter of BayesianGaussianMixture must be a float in "
     "the range (0.0, inf) or None. Got 0.0 instead."),
    ("full", {"mean_precision_prior": -1.0}, "The 'mean_precision_prior' parameter"),
    ("full", {"degrees_of_freedom_prior": 0.5},
     "The parameter 'degrees_of_freedom_prior' should be greater than 1, but got 0.500."),
    ("full", {"mean_prior": [0.0, 0.0, 0.0]},
     "The parameter 'means' should have the shape of (2,), but got (3,)"),
    ("full", {"covariance_prior": np.eye(3)},
     "The parameter 'full covariance_prior' should have the shape of (2, 2), but got (3, 3)"),
    ("tied", {"covariance_prior": -np.eye(2)},
     "'tied covariance_prior' should be symmetric, positive-definite"),
    ("diag", {"covariance_prior": [1.0, -1.0]}, "'diag covariance_prior' should be positive"),
    ("diag", {"covariance_prior": [1.0]},
     "The parameter 'diag covariance_prior' should have the shape of (2,), but got (1,)"),
    ("spherical", {"covariance_prior": -2.0},
     "The 'covariance_prior' parameter of BayesianGaussianMixture must be a float in the "
     "range (0.0, inf). Got -2.0 instead."),
])
def test_bad_bayesian_parameters(covariance_type, kwargs, message):
    X, _ = blobs(50)
    with pytest.raises(ValueError) as info:
        BayesianGaussianMixture(n_components=2, covariance_type=covariance_type,
                                **kwargs).fit(X)
    assert message in str(info.value)


@pytest.mark.parametrize("covariance_type, precisions, message", [
    ("full", np.ones((3, 2, 2)), "The parameter 'full precision' should have the shape of (2, 2, 2)"),
    ("tied", [[1.0, 2.0], [2.0, 1.0]], "'tied precision' should be symmetric, positive-definite"),
    ("diag", -np.ones((2, 2)), "'diag precision' should be positive"),
    ("spherical", [1.0, 0.0], "'spherical precision' should be positive"),
])
def test_bad_initial_values(covariance_type, precisions, message):
    X, _ = blobs(50)
    with pytest.raises(ValueError, match=re.escape(message)):
        GaussianMixture(2, covariance_type=covariance_type, precisions_init=precisions).fit(X)
    with pytest.raises(ValueError, match=re.escape("The parameter 'weights' should be normalized")):
        GaussianMixture(2, weights_init=[0.2, 0.2]).fit(X)
    with pytest.raises(ValueError, match=re.escape("The parameter 'means' should have the shape")):
        GaussianMixture(2, means_init=[[0.0, 0.0]]).fit(X)


@pytest.mark.parametrize("cls", [GaussianMixture, BayesianGaussianMixture])
def test_bad_data(cls):
    X, _ = blobs(50)
    model = cls(n_components=2, random_state=0)
    with pytest.raises(NotFittedError):
        model.predict(X)
    with pytest.raises(NotFittedError):
        model.sample(3)
    for bad, message in ((np.nan, "Input X contains NaN"), (np.inf, "Input X contains infinity")):
        X_bad = X.copy()
        X_bad[3, 1] = bad
        with pytest.raises(ValueError, match=message):
            model.fit(X_bad)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array instead"):
        model.fit(X[:, 0])
    with pytest.raises(ValueError, match="Expected n_samples >= n_components but got "
                                         "n_components = 5, n_samples = 3"):
        cls(n_components=5).fit(X[:3])
    model.fit(X)
    with pytest.raises(ValueError, match=f"X has 3 features, but {cls.__name__} is "
                                         "expecting 2 features as input."):
        model.predict(np.ones((4, 3)))
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array instead"):
        model.predict_proba(X[0])


def test_bad_draw_arguments():
    X, _ = blobs(50)
    model = BayesianGaussianMixture(n_components=2, covariance_type="diag", random_state=0)
    with pytest.raises(NotFittedError):
        model.sample_posterior(10)
    model.fit(X)
    with pytest.raises(ValueError, match="'num_samples' parameter of sample_posterior must be an int"):
        model.sample_posterior(0)
    with pytest.raises(ValueError, match=re.escape("covariances (S, K, D) for covariance_type 'diag'")):
        model.log_q_draws({"weights": np.ones((2, 2)) / 2, "means": np.zeros((2, 2, 2)),
                           "covariances": np.ones((2, 2, 2, 2))})
    with pytest.raises(ValueError, match="'credible_mass' parameter"):
        model.membership_intervals(X, credible_mass=1.5)


def test_one_component_dirichlet_process_draws_from_its_posterior():
    """K = 1 under the default Dirichlet-process prior: no stick to break, every draw has
    weight 1 (sample_posterior, and gmm_inference_data, which converts the weights back to
    sticks, once crashed on the empty stick array)."""
    X = np.random.default_rng(0).normal(size=(50, 2))
    model = BayesianGaussianMixture(n_components=1, random_state=0).fit(X)
    draws = model.sample_posterior(20, random_state=1)
    np.testing.assert_allclose(draws["weights"], 1.0)
    pytest.importorskip("arviz")
    from ppl_vae import diagnostics

    idata = diagnostics.gmm_inference_data(model, X, num_samples=20, random_state=0)
    assert "posterior" in diagnostics.group_names(idata)
