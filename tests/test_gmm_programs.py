"""The Bayesian GMM as Pyro and NumPyro programs, against the closed-form variational EM.

One test per property, parametrised over the backend (``models.gmm_pyro`` /
``models.gmm_numpyro`` with their guides) and over the covariance types the programs
cover (full, diag).
"""

from functools import partial

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from ppl_vae.mixture import BayesianGaussianMixture

COVARIANCE_TYPES = ["full", "diag"]


class PyroBackend:
    name = "pyro"

    def __init__(self):
        self.torch = pytest.importorskip("torch")
        self.pyro = pytest.importorskip("pyro")
        from ppl_vae.guides.gmm_pyro import gmm_guide
        from ppl_vae.models.gmm_pyro import gmm_model, gmm_prior

        self.model, self.guide, self.prior = gmm_model, gmm_guide, gmm_prior

    def data(self, X):
        return self.torch.tensor(X)  # float64

    def log_joint(self, model, x, values):
        from pyro import poutine

        values = {k: self.torch.tensor(v) for k, v in values.items()}
        trace = poutine.trace(poutine.condition(model, values)).get_trace(x)
        return trace.log_prob_sum().item()

    def svi(self, model, guide, x, num_steps):
        from pyro.infer import SVI, Trace_ELBO
        from pyro.optim import ClippedAdam

        torch = self.torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: one thread avoids contention
        try:
            optim = ClippedAdam({"lr": 0.05, "lrd": 0.02 ** (1.0 / num_steps)})
            svi = SVI(model, guide, optim, Trace_ELBO())
            losses = [svi.step(x) for _ in range(num_steps)]
        finally:
            torch.set_num_threads(threads)
        store = self.pyro.get_param_store()
        return {k: store[k].detach().numpy() for k in store.keys()}, np.asarray(losses)


class NumPyroBackend:
    name = "numpyro"

    def __init__(self):
        self.jax = pytest.importorskip("jax")
        self.numpyro = pytest.importorskip("numpyro")
        from ppl_vae.guides.gmm_numpyro import gmm_guide
        from ppl_vae.models.gmm_numpyro import gmm_model, gmm_prior

        self.model, self.guide, self.prior = gmm_model, gmm_guide, gmm_prior
        self.numpyro.enable_validation(True)

    def data(self, X):
        return self.jax.numpy.asarray(X)

    def log_joint(self, model, x, values):
        from numpyro.infer.util import log_density

        values = {k: self.jax.numpy.asarray(v) for k, v in values.items()}
        log_joint, _ = log_density(model, (x,), {}, values)
        return float(log_joint)

    def svi(self, model, guide, x, num_steps):
        import optax
        from numpyro.infer import SVI, Trace_ELBO

        schedule = optax.exponential_decay(0.05, num_steps, 0.02)
        svi = SVI(model, guide, optax.adam(schedule), Trace_ELBO())
        result = svi.run(self.jax.random.PRNGKey(0), num_steps, x, progress_bar=False)
        return ({k: np.asarray(v) for k, v in result.params.items()},
                np.asarray(result.losses))


@pytest.fixture(params=["pyro", "numpyro"])
def backend(request):
    if request.param == "pyro":
        yield PyroBackend()
        return
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):  # float64, to compare with the NumPy estimator at 1e-9
        yield NumPyroBackend()


def two_clusters(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal([0.0, 0.0], [1.0, 0.5], size=(150, 2)),
                           rng.normal([5.0, 3.0], [0.7, 1.2], size=(150, 2))])


def closed_form(X, num_components, covariance_type, **priors):
    return BayesianGaussianMixture(
        n_components=num_components, covariance_type=covariance_type,
        weight_concentration_prior_type="dirichlet_distribution", max_iter=1000,
        random_state=0, **priors).fit(X)


def precisions_of(draws, covariance_type):
    cov = draws["covariances"]
    return np.linalg.inv(cov) if covariance_type == "full" else 1.0 / cov


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("custom", [False, True])
def test_model_log_joint_equals_closed_form(backend, covariance_type, custom):
    # the same generative program: log p(theta, X) of the model equals the closed-form
    # estimator's log_joint_draws at posterior draws
    priors = {}
    if custom:
        priors = {"weight_concentration_prior": 2.0, "mean_precision_prior": 0.3,
                  "mean_prior": [1.0, 2.0], "degrees_of_freedom_prior": 4.5,
                  "covariance_prior": ([[2.0, 0.5], [0.5, 1.0]] if covariance_type == "full"
                                       else [2.0, 0.7])}
    X = two_clusters()
    bgm = closed_form(X, 3, covariance_type, **priors)
    draws = bgm.sample_posterior(4, random_state=0)
    expected = bgm.log_joint_draws(X, draws)
    x = backend.data(X)
    model = partial(backend.model, num_components=3,
                    **backend.prior(x, 3, covariance_type=covariance_type, **priors))
    precisions = precisions_of(draws, covariance_type)
    for s in range(4):
        values = {"weights": draws["weights"][s], "locs": draws["means"][s],
                  "precisions": precisions[s]}
        np.testing.assert_allclose(backend.log_joint(model, x, values), expected[s],
                                   rtol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_svi_agrees_with_closed_form_updates(backend, covariance_type):
    X = two_clusters()
    num_components = 2
    bgm = closed_form(X, num_components, covariance_type)
    x = backend.data(X)
    centers = KMeans(num_components, n_init=1, random_state=0).fit(X).cluster_centers_
    prior = backend.prior(x, num_components, covariance_type=covariance_type)
    model = partial(backend.model, num_components=num_components, **prior)
    guide = partial(backend.guide, num_components=num_components, init_locs=centers, **prior)
    params, losses = backend.svi(model, guide, x, num_steps=800)
    # the loss is a one-sample estimate of -ELBO; near the optimum it hovers around the
    # closed form's (the mean-field family is smaller, so slightly above on average)
    assert abs(np.mean(losses[-200:]) + bgm.lower_bound_) < 10.0

    locs = params["gmm_locs_loc"]
    concentration = params["gmm_weights_concentration"]
    if covariance_type == "full":
        tril = params["gmm_precisions_scale_tril"]
        precisions = params["gmm_precisions_df"][:, None, None] * (tril @ np.swapaxes(tril, 1, 2))
        variances = np.diagonal(bgm.covariances_, axis1=1, axis2=2)
    else:
        precisions = params["gmm_precisions_concentration"] / params["gmm_precisions_rate"]
        variances = bgm.covariances_
    order, ref = np.argsort(locs[:, 0]), np.argsort(bgm.means_[:, 0])
    # posterior means of the component means: within a fraction of their posterior sd
    posterior_sd = np.sqrt(variances / bgm.mean_precision_[:, None])
    assert np.all(np.abs(locs[order] - bgm.means_[ref]) < 0.5 * posterior_sd[ref])
    np.testing.assert_allclose((concentration / concentration.sum())[order],
                               bgm.weights_[ref], atol=0.02)
    # E_q[Lambda] within a quarter (relative) of the closed form's
    np.testing.assert_allclose(precisions[order], bgm.precisions_[ref], rtol=0.25, atol=0.1)

    # the same clustering: plug-in responsibilities from the guide's posterior means
    full_prec = precisions if covariance_type == "full" else precisions[:, :, None] * np.eye(2)
    log_dens = np.stack([
        np.log(concentration[k]) - 0.5 * np.einsum(
            "ni,ij,nj->n", X - locs[k], full_prec[k], X - locs[k])
        + 0.5 * np.linalg.slogdet(full_prec[k])[1] for k in range(num_components)], axis=1)
    assert adjusted_rand_score(log_dens.argmax(axis=1), bgm.predict(X)) > 0.99


def test_prior_refuses_other_covariance_types(backend):
    x = backend.data(two_clusters())
    with pytest.raises(ValueError, match="covariance_type must be 'full' or 'diag'; got 'tied'"):
        backend.prior(x, 2, covariance_type="tied")
