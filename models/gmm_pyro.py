"""The Bayesian Gaussian mixture of :class:`ppl_vae.mixture.BayesianGaussianMixture` in Pyro.

The same generative program as the closed-form estimator (Bishop, PRML 10.2)::

    pi ~ Dirichlet(alpha_0 1_K)
    Lambda_k ~ Wishart(nu_0, W_0),            W_0 = inv(covariance_prior)
    mu_k | Lambda_k ~ N(m_0, inv(beta_0 Lambda_k))
    x_n ~ sum_k pi_k N(mu_k, inv(Lambda_k))   (the assignment z_n summed out)

Sites: ``"weights"`` (K,), ``"precisions"`` (K, D, D) and ``"locs"`` (K, D) in plate
``"components"``; observed ``"x"`` in plate ``"data"`` (dim -1). Bind the prior with
``functools.partial`` and fit with SVI::

    model = partial(gmm_model, num_components=2, **gmm_prior(x, num_components=2))
    guide = partial(gmm_guide, num_components=2, init_locs=centers)
    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
"""

import pyro
import pyro.distributions as dist
import torch


class _Wishart(dist.Wishart):
    """Wishart whose ``rsample`` is the plain Bartlett construction.

    torch 2.13's ``Wishart.rsample`` tests its draws with an inverted check: it warns
    "Singular sample detected." for every positive-definite draw and redraws it.
    """

    def rsample(self, sample_shape=torch.Size()):
        return self._bartlett_sampling(torch.Size(sample_shape))


def gmm_prior(x, num_components, weight_concentration_prior=None, mean_prior=None,
              mean_precision_prior=None, degrees_of_freedom_prior=None,
              covariance_prior=None):
    """scikit-learn's default hyperparameters for data ``x`` (N, D), as tensors.

    ``1 / num_components``, the data mean, 1, D and the empirical covariance, unless given.
    """
    dim = x.shape[-1]
    as_tensor = lambda value: torch.as_tensor(value, dtype=x.dtype)  # noqa: E731
    return {
        "weight_concentration_prior": as_tensor(
            1.0 / num_components if weight_concentration_prior is None
            else weight_concentration_prior),
        "mean_prior": x.mean(0) if mean_prior is None else as_tensor(mean_prior),
        "mean_precision_prior": as_tensor(
            1.0 if mean_precision_prior is None else mean_precision_prior),
        "degrees_of_freedom_prior": as_tensor(
            float(dim) if degrees_of_freedom_prior is None else degrees_of_freedom_prior),
        "covariance_prior": (torch.cov(x.T).reshape(dim, dim) if covariance_prior is None
                             else as_tensor(covariance_prior)),
    }


def gmm_model(x, *, num_components, weight_concentration_prior, mean_prior,
              mean_precision_prior, degrees_of_freedom_prior, covariance_prior):
    """p(x, pi, mu, Lambda) for data ``x`` of shape (N, D).

    :param int num_components: K.
    :param weight_concentration_prior: alpha_0, scalar tensor.
    :param mean_prior: m_0, shape (D,).
    :param mean_precision_prior: beta_0, scalar tensor.
    :param degrees_of_freedom_prior: nu_0 > D - 1, scalar tensor.
    :param covariance_prior: W_0^{-1}, shape (D, D).
    """
    num_components = int(num_components)
    weights = pyro.sample(
        "weights",
        dist.Dirichlet(weight_concentration_prior * x.new_ones(num_components)))  # (K,)
    wishart_scale_tril = torch.linalg.cholesky(torch.linalg.inv(covariance_prior))
    with pyro.plate("components", num_components):
        precisions = pyro.sample(
            "precisions",
            _Wishart(degrees_of_freedom_prior, scale_tril=wishart_scale_tril))  # (K, D, D)
        locs = pyro.sample(
            "locs",
            dist.MultivariateNormal(mean_prior,
                                    precision_matrix=mean_precision_prior * precisions))
    components = dist.MultivariateNormal(locs, precision_matrix=precisions)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.MixtureSameFamily(dist.Categorical(weights), components), obs=x)
