"""The Bayesian Gaussian mixture of :class:`ppl_vae.mixture.BayesianGaussianMixture` in Pyro.

The same generative program as the closed-form estimator (Bishop, PRML 10.2) with a
Dirichlet weight prior, for full and diagonal covariances::

    pi ~ Dirichlet(alpha_0 1_K)
    Lambda_k ~ precision_prior                full: Wishart(nu_0, inv(C_0)), (D, D)
                                              diag: prod_d Gamma(nu_0 / 2, C_0d / 2), (D,)
    mu_k | Lambda_k ~ N(m_0, inv(beta_0 Lambda_k))
    x_n ~ sum_k pi_k N(mu_k, inv(Lambda_k))   (the assignment z_n summed out)

The precision prior is a distribution object; its event shape, (D, D) or (D,), says which
of the two the program is. Sites: ``"weights"`` (K,), ``"precisions"`` (K, D, D) or (K, D)
and ``"locs"`` (K, D) in plate ``"components"``; observed ``"x"`` in plate ``"data"``
(dim -1). Mirror of :mod:`models.gmm_numpyro`. Bind the prior with ``functools.partial``
and fit with SVI::

    prior = gmm_prior(x, num_components=2, covariance_type="diag")
    model = partial(gmm_model, num_components=2, **prior)
    guide = partial(gmm_guide, num_components=2, init_locs=centers, **prior)
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


def gmm_prior(x, num_components, covariance_type="full", weight_concentration_prior=None,
              mean_prior=None, mean_precision_prior=None, degrees_of_freedom_prior=None,
              covariance_prior=None):
    """The model's keyword arguments with scikit-learn's defaults for data ``x`` (N, D).

    ``1 / num_components``, the data mean, 1, D and the empirical covariance (its diagonal
    for ``"diag"``), unless given; the arguments mean what they mean for
    :class:`~ppl_vae.mixture.BayesianGaussianMixture`.

    :param str covariance_type: ``"full"`` or ``"diag"``: the precision prior's family.
    :returns: dict with ``weight_concentration_prior``, ``mean_prior`` (D,),
        ``mean_precision_prior`` and ``precision_prior`` (a distribution with event shape
        (D, D) or (D,)).
    """
    if covariance_type not in ("full", "diag"):
        raise ValueError(f"covariance_type must be 'full' or 'diag'; got {covariance_type!r}.")
    dim = x.shape[-1]
    as_tensor = lambda value: torch.as_tensor(value, dtype=x.dtype)  # noqa: E731
    nu0 = as_tensor(float(dim) if degrees_of_freedom_prior is None
                    else degrees_of_freedom_prior)
    empirical = torch.cov(x.T).reshape(dim, dim)
    if covariance_type == "full":
        cov0 = empirical if covariance_prior is None else as_tensor(covariance_prior)
        precision_prior = _Wishart(nu0, scale_tril=torch.linalg.cholesky(torch.linalg.inv(cov0)))
    else:
        cov0 = empirical.diagonal() if covariance_prior is None else as_tensor(covariance_prior)
        precision_prior = dist.Gamma(0.5 * nu0, 0.5 * cov0).to_event(1)
    return {
        "weight_concentration_prior": as_tensor(
            1.0 / num_components if weight_concentration_prior is None
            else weight_concentration_prior),
        "mean_prior": x.mean(0) if mean_prior is None else as_tensor(mean_prior),
        "mean_precision_prior": as_tensor(
            1.0 if mean_precision_prior is None else mean_precision_prior),
        "precision_prior": precision_prior,
    }


def gmm_model(x, *, num_components, weight_concentration_prior, mean_prior,
              mean_precision_prior, precision_prior):
    """p(x, pi, mu, Lambda) for data ``x`` of shape (N, D).

    :param int num_components: K.
    :param weight_concentration_prior: alpha_0, scalar tensor.
    :param mean_prior: m_0, shape (D,).
    :param mean_precision_prior: beta_0, scalar tensor.
    :param precision_prior: the prior of one component's precision: event shape (D, D)
        (a Wishart: full covariances) or (D,) (independent precisions: diagonal ones).
    """
    num_components = int(num_components)
    full = len(precision_prior.event_shape) == 2
    weights = pyro.sample(
        "weights",
        dist.Dirichlet(weight_concentration_prior * x.new_ones(num_components)))  # (K,)
    with pyro.plate("components", num_components):
        precisions = pyro.sample("precisions", precision_prior)  # (K, D, D) or (K, D)
        if full:
            locs = pyro.sample("locs", dist.MultivariateNormal(
                mean_prior, precision_matrix=mean_precision_prior * precisions))
            components = dist.MultivariateNormal(locs, precision_matrix=precisions)
        else:
            locs = pyro.sample("locs", dist.Normal(
                mean_prior, (mean_precision_prior * precisions).rsqrt()).to_event(1))
            components = dist.Normal(locs, precisions.rsqrt()).to_event(1)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.MixtureSameFamily(dist.Categorical(weights), components), obs=x)
