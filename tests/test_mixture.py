"""Tests for ppl_vae.mixture: against scikit-learn, SciPy densities and closed forms."""

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn import mixture as sk_mixture
from sklearn.datasets import load_iris, make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score

from ppl_vae.mixture import BayesianGaussianMixture, GaussianMixture

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


# ------------------------------------------------------------------------- against sklearn


def _match_components(means, ref_means):
    """Column order of ``means`` that best matches ``ref_means``."""
    cost = np.linalg.norm(means[None, :, :] - ref_means[:, None, :], axis=2)
    return linear_sum_assignment(cost)[1]


@pytest.mark.parametrize("n_components", [1, 2, 3, 4])
@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_em_matches_sklearn_on_iris(n_components, init_params):
    X = load_iris().data
    ours = GaussianMixture(n_components, init_params=init_params, n_init=2, max_iter=500,
                           random_state=0).fit(X)
    ref = sk_mixture.GaussianMixture(n_components, init_params=init_params, n_init=2,
                                     max_iter=500, random_state=0).fit(X)
    # same init and same path: the same local optimum, up to rounding
    np.testing.assert_allclose(ours.score(X), ref.score(X), rtol=1e-8)
    np.testing.assert_allclose(ours.aic(X), ref.aic(X), rtol=1e-8)
    np.testing.assert_allclose(ours.bic(X), ref.bic(X), rtol=1e-8)
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), atol=1e-6)
    # best-of-n_init may pick a relabelled twin of the same optimum: align the labels
    order = _match_components(ours.means_, ref.means_)
    np.testing.assert_allclose(ours.predict_proba(X)[:, order], ref.predict_proba(X), atol=1e-6)
    assert ours.converged_ == ref.converged_


def test_em_means_init_matches_sklearn():
    X, _ = blobs(300, centers=3, seed=3)
    means_init = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    ours = GaussianMixture(3, means_init=means_init, random_state=1).fit(X)
    ref = sk_mixture.GaussianMixture(3, means_init=means_init, random_state=1).fit(X)
    np.testing.assert_allclose(ours.means_, ref.means_, atol=1e-8)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, atol=1e-8)
    np.testing.assert_allclose(ours.weights_, ref.weights_, atol=1e-10)


@pytest.mark.parametrize("n_components", [2, 3, 5])
def test_bayesian_matches_sklearn_dirichlet_distribution(n_components):
    X, _ = blobs(500, centers=3, seed=1)
    kwargs = dict(n_components=n_components, random_state=0, max_iter=500,
                  weight_concentration_prior_type="dirichlet_distribution")
    ours = BayesianGaussianMixture(**kwargs).fit(X)
    ref = sk_mixture.BayesianGaussianMixture(**kwargs).fit(X)
    assert adjusted_rand_score(ours.predict(X), ref.predict(X)) > 0.999
    np.testing.assert_allclose(ours.weights_, ref.weights_, atol=1e-6)
    np.testing.assert_allclose(ours.means_, ref.means_, atol=1e-6)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    assert ours.n_iter_ == ref.n_iter_
    # the bounds differ by a constant only: the same per-iteration changes
    np.testing.assert_allclose(np.diff(ours.elbo_history_), np.diff(ref.lower_bounds_),
                               rtol=1e-3, atol=1e-6)


def test_bayesian_process_close_to_sklearn():
    # our truncation fixes the last stick at 1 (scikit-learn keeps a free last stick), so
    # agreement is close rather than exact
    X, _ = blobs(500, centers=3, seed=2)
    kwargs = dict(n_components=3, random_state=0, weight_concentration_prior_type="dirichlet_process")
    ours = BayesianGaussianMixture(**kwargs).fit(X)
    ref = sk_mixture.BayesianGaussianMixture(**kwargs).fit(X)
    assert adjusted_rand_score(ours.predict(X), ref.predict(X)) > 0.99
    np.testing.assert_allclose(ours.weights_, ref.weights_, atol=5e-3)
    np.testing.assert_allclose(ours.means_, ref.means_, atol=5e-3)


# ------------------------------------------------------------------------- the ELBO


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_elbo_never_decreases(prior_type, init_params):
    X, _ = blobs(300, centers=4, seed=5)
    model = BayesianGaussianMixture(n_components=6, weight_concentration_prior_type=prior_type,
                                    init_params=init_params, tol=1e-8, max_iter=1000,
                                    random_state=0).fit(X)
    history = model.elbo_history_
    assert history.shape == (model.n_iter_,) and model.n_iter_ > 3
    steps = np.diff(history)
    assert np.all(steps >= -1e-9 * np.abs(history[1:])), steps.min()
    assert model.lower_bound_ >= history[-1] - 1e-9 * abs(history[-1])


def test_em_log_likelihood_never_decreases():
    X, _ = blobs(300, centers=4, seed=5)
    model = GaussianMixture(5, init_params="random", tol=1e-10, max_iter=1000,
                            random_state=0).fit(X)
    steps = np.diff(model.lower_bounds_)
    assert np.all(steps >= -1e-9 * np.abs(model.lower_bounds_[1:]))


def _scipy_log_joint_minus_q(model, X, draws, resp, rng):
    """One MC term of E_q[log p(X, Z, theta) - log q(Z, theta)], densities from SciPy."""
    num_components, dim = model.means_.shape
    w, mu, cov = draws["weights"], draws["means"], draws["covariances"]
    process = model.weight_concentration_prior_type == "dirichlet_process"
    # Z ~ q(Z): one categorical draw per row of the responsibilities
    u = rng.uniform(size=(X.shape[0], 1))
    z = np.minimum((np.cumsum(resp, axis=1) < u).sum(axis=1), num_components - 1)
    # log p(Z | pi): one single-trial multinomial (a categorical) per row
    log_p = stats.multinomial.logpmf(np.eye(num_components)[z], 1, w).sum()
    log_q = np.sum(np.log(resp[np.arange(X.shape[0]), z]))
    for k in range(num_components):
        lam = np.linalg.inv(cov[k])
        lam = 0.5 * (lam + lam.T)
        if np.any(z == k):
            log_p += stats.multivariate_normal(mu[k], cov[k]).logpdf(X[z == k]).sum()
        log_p += stats.multivariate_normal(model.mean_prior_,
                                           cov[k] / model.mean_precision_prior_).logpdf(mu[k])
        log_p += stats.wishart(df=model.degrees_of_freedom_prior_,
                               scale=np.linalg.inv(model.covariance_prior_)).logpdf(lam)
        log_q += stats.multivariate_normal(model.means_[k],
                                           cov[k] / model.mean_precision_[k]).logpdf(mu[k])
        nu = model.degrees_of_freedom_[k]
        log_q += stats.wishart(df=nu, scale=np.linalg.inv(model.covariances_[k] * nu)).logpdf(lam)
    if process:
        remaining = 1.0 - np.concatenate(([0.0], np.cumsum(w)[:-2]))
        v = w[:-1] / remaining
        a, b = model.weight_concentration_
        log_p += stats.beta(1.0, model.weight_concentration_prior_).logpdf(v).sum()
        log_q += stats.beta(a, b).logpdf(v).sum()
    else:
        alpha0 = np.full(num_components, model.weight_concentration_prior_)
        log_p += stats.dirichlet(alpha0).logpdf(w)
        log_q += stats.dirichlet(model.weight_concentration_).logpdf(w)
    return log_p - log_q


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("n_components, priors", [
    (2, {}),
    # a spare component sits at the prior: nu_0 = D + 2 keeps its draws well conditioned
    # for SciPy's checks
    (3, {"degrees_of_freedom_prior": 4.0, "weight_concentration_prior": 0.5,
         "mean_precision_prior": 0.2, "mean_prior": [1.0, -1.0],
         "covariance_prior": [[2.0, 0.3], [0.3, 1.0]]}),
])
def test_lower_bound_is_the_full_elbo(prior_type, n_components, priors):
    # overlapping clusters so that q(Z) is not degenerate and every term matters
    X, _ = blobs(120, centers=2, seed=7, std=2.0)
    model = BayesianGaussianMixture(n_components=n_components, max_iter=2000, random_state=0,
                                    weight_concentration_prior_type=prior_type, **priors).fit(X)
    resp = model.predict_proba(X)
    num_draws = 400
    draws = model.sample_posterior(num_draws, random_state=1)
    rng = np.random.default_rng(2)
    terms = np.array([
        _scipy_log_joint_minus_q(model, X, {k: v[s] for k, v in draws.items()}, resp, rng)
        for s in range(num_draws)
    ])
    mean, sem = terms.mean(), terms.std(ddof=1) / np.sqrt(num_draws)
    assert abs(mean - model.lower_bound_) < 4.0 * sem + 1e-6, (mean, sem, model.lower_bound_)


def test_draw_densities_match_scipy():
    X, _ = blobs(150, centers=2, seed=8)
    model = BayesianGaussianMixture(n_components=2, random_state=0,
                                    weight_concentration_prior_type="dirichlet_distribution").fit(X)
    draws = model.sample_posterior(5, random_state=0)
    loglik = model.log_likelihood_draws(X, draws)
    assert loglik.shape == (5, X.shape[0])
    for s in range(5):
        dens = sum(draws["weights"][s, k]
                   * stats.multivariate_normal(draws["means"][s, k], draws["covariances"][s, k]).pdf(X)
                   for k in range(2))
        np.testing.assert_allclose(loglik[s], np.log(dens), rtol=1e-10)
    log_q = model.log_q_draws(draws)
    log_joint = model.log_joint_draws(X, draws)
    assert log_q.shape == log_joint.shape == (5,)
    assert np.all(np.isfinite(log_joint - log_q))


def test_full_elbo_prefers_two_components_for_two_clusters():
    X = two_clusters(300, seed=0)
    kwargs = dict(weight_concentration_prior_type="dirichlet_distribution", random_state=0)
    one = BayesianGaussianMixture(n_components=1, **kwargs).fit(X)
    two = BayesianGaussianMixture(n_components=2, **kwargs).fit(X)
    assert one.lower_bound_ < two.lower_bound_ - 50.0


def test_score_samples_is_a_normalised_density():
    # the posterior predictive integrates to one: check on a grid in 1-D
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-3, 1, 60), rng.normal(3, 0.5, 40)])[:, None]
    model = BayesianGaussianMixture(n_components=2, random_state=0).fit(X)
    grid = np.linspace(-40, 40, 40001)[:, None]
    mass = np.trapezoid(np.exp(model.score_samples(grid)), grid[:, 0])
    assert abs(mass - 1.0) < 1e-3


# ------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("estimator", [
    GaussianMixture(3, random_state=0, tol=1e-1),
    GaussianMixture(4, init_params="random", max_iter=5, random_state=0),
    BayesianGaussianMixture(n_components=3, random_state=0, tol=1e-1),
    BayesianGaussianMixture(n_components=4, init_params="random", tol=10.0, random_state=0),
])
def test_fit_predict_equals_fit_then_predict(estimator):
    X, _ = blobs(300, centers=3, seed=4)
    labels = estimator.fit_predict(X)
    np.testing.assert_array_equal(labels, estimator.fit(X).predict(X))
    proba = estimator.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert isinstance(estimator.score(X), float)


# ------------------------------------------------------------------------- posterior draws


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_sample_posterior(prior_type):
    X, _ = blobs(200, centers=3, seed=9)
    model = BayesianGaussianMixture(n_components=3, weight_concentration_prior_type=prior_type,
                                    random_state=0).fit(X)
    num = 4000
    draws = model.sample_posterior(num, random_state=0)
    assert draws["weights"].shape == (num, 3)
    assert draws["means"].shape == (num, 3, 2)
    assert draws["covariances"].shape == (num, 3, 2, 2)
    np.testing.assert_allclose(draws["weights"].sum(axis=1), 1.0)
    cov = draws["covariances"]
    np.testing.assert_allclose(cov, np.swapaxes(cov, -1, -2), atol=1e-12)
    assert np.all(np.linalg.eigvalsh(cov) > 0.0)
    # Monte Carlo means against the posterior's: E[pi], E[mu] = m, E[Lambda] = nu W
    for draw, expected in ((draws["weights"], model.weights_),
                           (draws["means"], model.means_),
                           (np.linalg.inv(cov), model.precisions_)):
        sem = draw.std(axis=0) / np.sqrt(num)
        assert np.all(np.abs(draw.mean(axis=0) - expected) < 5.0 * sem + 1e-12)
    # seeded draws repeat
    again = model.sample_posterior(3, random_state=5)
    np.testing.assert_array_equal(again["means"], model.sample_posterior(3, random_state=5)["means"])


def test_membership_intervals():
    X_small = two_clusters(40, seed=1)
    X_large = two_clusters(2000, seed=1)
    query = np.array([[3.0, 0.0], [2.6, 0.5], [0.0, 0.0], [3.4, -0.5]])
    widths = []
    for X in (X_small, X_large):
        model = BayesianGaussianMixture(n_components=2, random_state=0,
                                        weight_concentration_prior_type="dirichlet_distribution").fit(X)
        out = model.membership_intervals(query, num_samples=2000, credible_mass=0.9,
                                         random_state=0)
        assert set(out) == {"mean", "lower", "upper"}
        for value in out.values():
            assert value.shape == (4, 2)
        np.testing.assert_allclose(out["mean"].sum(axis=1), 1.0)
        assert np.all(out["lower"] <= out["mean"]) and np.all(out["mean"] <= out["upper"])
        point = model.predict_proba(query)
        assert np.all(out["lower"] - 1e-9 <= point) and np.all(point <= out["upper"] + 1e-9)
        widths.append((out["upper"] - out["lower"])[:2].mean())
    assert widths[1] < 0.5 * widths[0]


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cls", [GaussianMixture, BayesianGaussianMixture])
@pytest.mark.parametrize("kwargs, message", [
    ({"n_components": 0}, "The 'n_components' parameter of {} must be an int in the range [1, inf). Got 0 instead."),
    ({"n_components": 2.5}, "The 'n_components' parameter of {} must be an int in the range [1, inf). Got 2.5 instead."),
    ({"tol": -1.0}, "The 'tol' parameter of {} must be a float in the range [0.0, inf). Got -1.0 instead."),
    ({"reg_covar": -1e-3}, "The 'reg_covar' parameter of {} must be a float in the range [0.0, inf)."),
    ({"max_iter": 0}, "The 'max_iter' parameter of {} must be an int in the range [1, inf). Got 0 instead."),
    ({"n_init": 0}, "The 'n_init' parameter of {} must be an int in the range [1, inf). Got 0 instead."),
    ({"init_params": "kmeans++"}, "The 'init_params' parameter of {} must be a str among {{'kmeans', 'random'}}. Got 'kmeans++' instead."),
    ({"covariance_type": "diag"}, "The 'covariance_type' parameter of {} must be a str among {{'full'}}. Got 'diag' instead."),
])
def test_bad_parameters(cls, kwargs, message):
    X, _ = blobs(50)
    with pytest.raises(ValueError) as info:
        cls(**{"n_components": 2, **kwargs}).fit(X)
    assert message.format(cls.__name__) in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"weight_concentration_prior_type": "dirichlet"},
     "The 'weight_concentration_prior_type' parameter of BayesianGaussianMixture must be a str "
     "among {'dirichlet_distribution', 'dirichlet_process'}. Got 'dirichlet' instead."),
    ({"weight_concentration_prior": 0.0},
     "The 'weight_concentration_prior' parameter of BayesianGaussianMixture must be a float in "
     "the range (0.0, inf) or None. Got 0.0 instead."),
    ({"mean_precision_prior": -1.0}, "The 'mean_precision_prior' parameter"),
    ({"degrees_of_freedom_prior": 0.5},
     "The parameter 'degrees_of_freedom_prior' should be greater than 1, but got 0.500."),
    ({"mean_prior": [0.0, 0.0, 0.0]},
     "The parameter 'means' should have the shape of (2,), but got (3,)"),
    ({"covariance_prior": np.eye(3)}, "should have the shape of (2, 2), but got (3, 3)"),
    ({"covariance_prior": -np.eye(2)}, "'full covariance_prior' should be symmetric, positive-definite"),
])
def test_bad_bayesian_parameters(kwargs, message):
    X, _ = blobs(50)
    with pytest.raises(ValueError) as info:
        BayesianGaussianMixture(n_components=2, **kwargs).fit(X)
    assert message in str(info.value)


@pytest.mark.parametrize("cls", [GaussianMixture, BayesianGaussianMixture])
def test_bad_data(cls):
    X, _ = blobs(50)
    model = cls(n_components=2, random_state=0)
    with pytest.raises(NotFittedError):
        model.predict(X)
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
    X_bad = X.copy()
    X_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        model.score_samples(X_bad)


def test_bad_draw_arguments():
    X, _ = blobs(50)
    model = BayesianGaussianMixture(n_components=2, random_state=0)
    with pytest.raises(NotFittedError):
        model.sample_posterior(10)
    model.fit(X)
    with pytest.raises(ValueError, match="'num_samples' parameter of sample_posterior must be an int"):
        model.sample_posterior(0)
    with pytest.raises(ValueError, match="draws must hold weights"):
        model.log_q_draws({"weights": np.ones((2, 3)) / 3, "means": np.zeros((2, 3, 2)),
                           "covariances": np.zeros((2, 3, 2, 2))})
    with pytest.raises(ValueError, match="'credible_mass' parameter"):
        model.membership_intervals(X, credible_mass=1.5)
