"""The Pyro formulation of the Bayesian GMM against the closed-form variational EM."""

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")

from pyro import poutine  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from pyro.optim import ClippedAdam  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from ppl_vae.guides.gmm_pyro import gmm_guide  # noqa: E402
from ppl_vae.mixture import BayesianGaussianMixture  # noqa: E402
from ppl_vae.models.gmm_pyro import gmm_model, gmm_prior  # noqa: E402


@pytest.fixture(autouse=True)
def pyro_setup():
    # tiny tensors: one thread avoids contention that makes each op cost milliseconds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    torch.set_num_threads(threads)


def two_clusters(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal([0.0, 0.0], [1.0, 0.5], size=(150, 2)),
                           rng.normal([5.0, 3.0], [0.7, 1.2], size=(150, 2))])


def closed_form(X, num_components, **priors):
    return BayesianGaussianMixture(
        n_components=num_components, weight_concentration_prior_type="dirichlet_distribution",
        max_iter=1000, random_state=0, **priors).fit(X)


@pytest.mark.parametrize("priors", [
    {},
    {"weight_concentration_prior": 2.0, "mean_precision_prior": 0.3, "mean_prior": [1.0, 2.0],
     "degrees_of_freedom_prior": 4.5, "covariance_prior": [[2.0, 0.5], [0.5, 1.0]]},
])
def test_model_log_joint_equals_closed_form(priors):
    # the same generative program: log p(theta, X) of the Pyro model equals the closed-form
    # estimator's log_joint_draws at posterior draws
    X = two_clusters()
    bgm = closed_form(X, 3, **priors)
    draws = bgm.sample_posterior(4, random_state=0)
    x = torch.tensor(X)
    prior = gmm_prior(x, 3, **priors)
    expected = bgm.log_joint_draws(X, draws)
    for s in range(4):
        values = {
            "weights": torch.tensor(draws["weights"][s]),
            "locs": torch.tensor(draws["means"][s]),
            "precisions": torch.linalg.inv(torch.tensor(draws["covariances"][s])),
        }
        conditioned = poutine.condition(partial(gmm_model, num_components=3, **prior), values)
        trace = poutine.trace(conditioned).get_trace(x)
        np.testing.assert_allclose(trace.log_prob_sum().item(), expected[s], rtol=1e-9)


def test_svi_agrees_with_closed_form_updates():
    X = two_clusters()
    num_components = 2
    bgm = closed_form(X, num_components)

    x = torch.tensor(X)
    centers = KMeans(num_components, n_init=1, random_state=0).fit(X).cluster_centers_
    model = partial(gmm_model, num_components=num_components, **gmm_prior(x, num_components))
    guide = partial(gmm_guide, num_components=num_components, init_locs=centers)
    num_steps = 800
    optim = ClippedAdam({"lr": 0.05, "lrd": 0.02 ** (1.0 / num_steps)})
    svi = SVI(model, guide, optim, Trace_ELBO())
    losses = [svi.step(x) for _ in range(num_steps)]
    # the SVI loss is a one-sample estimate of -ELBO; near the optimum it hovers around the
    # closed form's (the mean-field family is smaller, so slightly above on average)
    assert abs(np.mean(losses[-200:]) + bgm.lower_bound_) < 10.0

    store = pyro.get_param_store()
    locs = store["gmm_locs_loc"].detach().numpy()
    concentration = store["gmm_weights_concentration"].detach().numpy()
    df = store["gmm_precisions_df"].detach().numpy()
    tril = store["gmm_precisions_scale_tril"].detach()
    precisions = (df[:, None, None] * (tril @ tril.mT).numpy())  # E_q[Lambda_k]

    order = np.argsort(locs[:, 0])
    ref = np.argsort(bgm.means_[:, 0])
    # posterior means of the component means: within a fraction of their posterior sd
    posterior_sd = np.sqrt(np.diagonal(bgm.covariances_, axis1=1, axis2=2)
                           / bgm.mean_precision_[:, None])
    assert np.all(np.abs(locs[order] - bgm.means_[ref]) < 0.5 * posterior_sd[ref])
    np.testing.assert_allclose((concentration / concentration.sum())[order], bgm.weights_[ref],
                               atol=0.02)
    np.testing.assert_allclose(precisions[order], bgm.precisions_[ref], rtol=0.25, atol=0.1)

    # the same clustering: plug-in responsibilities from the guide's posterior means
    log_dens = np.stack([
        np.log(concentration[k]) - 0.5 * np.einsum(
            "ni,ij,nj->n", X - locs[k], precisions[k], X - locs[k])
        + 0.5 * np.linalg.slogdet(precisions[k])[1] for k in range(num_components)], axis=1)
    assert adjusted_rand_score(log_dens.argmax(axis=1), bgm.predict(X)) > 0.99
