"""The Bayesian Gaussian mixture of :class:`ppl_vae.mixture.BayesianGaussianMixture` in NumPyro.

Mirror of :mod:`models.gmm_pyro`: the same program, sites, plates and arguments, for full
and diagonal covariances with a Dirichlet weight prior::

    pi ~ Dirichlet(alpha_0 1_K)
    Lambda_k ~ precision_prior                full: Wishart(nu_0, inv(C_0)), (D, D)
                                              diag: prod_d Gamma(nu_0 / 2, C_0d / 2), (D,)
    mu_k | Lambda_k ~ N(m_0, inv(beta_0 Lambda_k))
    x_n ~ sum_k pi_k N(mu_k, inv(Lambda_k))   (the assignment z_n summed out)

Sites: ``"weights"`` (K,), ``"precisions"`` (K, D, D) or (K, D) and ``"locs"`` (K, D) in
plate ``"components"``; observed ``"x"`` in plate ``"data"`` (dim -1). Bind the prior with
``functools.partial`` and fit with SVI::

    prior = gmm_prior(x, num_components=2, covariance_type="diag")
    model = partial(gmm_model, num_components=2, **prior)
    guide = partial(gmm_guide, num_components=2, init_locs=centers, **prior)
    svi = SVI(model, guide, numpyro.optim.Adam(0.05), Trace_ELBO())
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


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
    x = jnp.asarray(x)
    dim = x.shape[-1]
    nu0 = jnp.asarray(float(dim) if degrees_of_freedom_prior is None
                      else degrees_of_freedom_prior, dtype=x.dtype)
    empirical = jnp.cov(x.T).reshape(dim, dim)
    if covariance_type == "full":
        cov0 = empirical if covariance_prior is None else jnp.asarray(covariance_prior, x.dtype)
        precision_prior = dist.Wishart(nu0, scale_tril=jnp.linalg.cholesky(jnp.linalg.inv(cov0)))
    else:
        cov0 = (jnp.diagonal(empirical) if covariance_prior is None
                else jnp.asarray(covariance_prior, x.dtype))
        precision_prior = dist.Gamma(0.5 * nu0, 0.5 * cov0).to_event(1)
    return {
        "weight_concentration_prior": jnp.asarray(
            1.0 / num_components if weight_concentration_prior is None
            else weight_concentration_prior, dtype=x.dtype),
        "mean_prior": x.mean(0) if mean_prior is None else jnp.asarray(mean_prior, x.dtype),
        "mean_precision_prior": jnp.asarray(
            1.0 if mean_precision_prior is None else mean_precision_prior, dtype=x.dtype),
        "precision_prior": precision_prior,
    }


def gmm_model(x, *, num_components, weight_concentration_prior, mean_prior,
              mean_precision_prior, precision_prior):
    """p(x, pi, mu, Lambda) for data ``x`` of shape (N, D).

    :param int num_components: K.
    :param weight_concentration_prior: alpha_0, scalar.
    :param mean_prior: m_0, shape (D,).
    :param mean_precision_prior: beta_0, scalar.
    :param precision_prior: the prior of one component's precision: event shape (D, D)
        (a Wishart: full covariances) or (D,) (independent precisions: diagonal ones).
    """
    num_components = int(num_components)
    full = len(precision_prior.event_shape) == 2
    weights = numpyro.sample(
        "weights",
        dist.Dirichlet(weight_concentration_prior * jnp.ones(num_components, x.dtype)))
    with numpyro.plate("components", num_components):
        precisions = numpyro.sample("precisions", precision_prior)  # (K, D, D) or (K, D)
        if full:
            locs = numpyro.sample("locs", dist.MultivariateNormal(
                mean_prior, precision_matrix=mean_precision_prior * precisions))
            components = dist.MultivariateNormal(locs, precision_matrix=precisions)
        else:
            locs = numpyro.sample("locs", dist.Normal(
                mean_prior, 1.0 / jnp.sqrt(mean_precision_prior * precisions)).to_event(1))
            components = dist.Normal(locs, 1.0 / jnp.sqrt(precisions)).to_event(1)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.MixtureSameFamily(dist.Categorical(weights), components),
                       obs=x)
