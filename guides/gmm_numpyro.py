"""Mean-field variational family for ``models.gmm_numpyro.gmm_model``.

Mirror of :mod:`guides.gmm_pyro`: the same family, sites and parameter names. Full
covariances::

    q(pi) q(Lambda) q(mu) = Dirichlet(pi | alpha) prod_k Wishart(Lambda_k | nu_k, W_k)
                            N(mu_k | loc_k, L_k L_k^T)

diagonal ones: ``prod_kd Gamma(lambda_kd | a_kd, b_kd) N(mu_kd | loc_kd, s_kd^2)``.
Parameters (``numpyro.param`` names): ``"gmm_weights_concentration"`` (K,),
``"gmm_locs_loc"`` (K, D); full: ``"gmm_precisions_df"`` (K,),
``"gmm_precisions_scale_tril"`` (K, D, D), ``"gmm_locs_scale_tril"`` (K, D, D); diag:
``"gmm_precisions_concentration"`` and ``"gmm_precisions_rate"`` (K, D),
``"gmm_locs_scale"`` (K, D).
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def gmm_guide(x, *, num_components, init_locs, precision_prior, **prior):
    """q(pi, mu, Lambda) for data ``x`` (N, D).

    :param int num_components: K.
    :param init_locs: initial component means, shape (K, D) (e.g. k-means centres).
    :param precision_prior: the model's; its event shape picks the family (full or diag).
    :param prior: the model's other hyperparameters, accepted so that model and guide can
        be bound with the same keywords; unused.
    """
    num_components = int(num_components)
    num, dim = x.shape
    full = len(precision_prior.event_shape) == 2
    variances = jnp.cov(x.T).reshape(dim, dim)
    # start every precision around the inverse of the data's spread, with a confident
    # number of pseudo-observations: each component's share of the data
    share = num / num_components
    concentration = numpyro.param("gmm_weights_concentration",
                                  jnp.full((num_components,), share, x.dtype),
                                  constraint=constraints.positive)
    loc = numpyro.param("gmm_locs_loc", jnp.asarray(init_locs, x.dtype))
    numpyro.sample("weights", dist.Dirichlet(concentration))
    with numpyro.plate("components", num_components):
        if full:
            df0 = dim + 1.0 + share
            df = numpyro.param("gmm_precisions_df", jnp.full((num_components,), df0, x.dtype),
                               constraint=constraints.greater_than(float(dim - 1)))
            precision_tril = numpyro.param(
                "gmm_precisions_scale_tril",
                jnp.broadcast_to(jnp.linalg.cholesky(jnp.linalg.inv(variances) / df0),
                                 (num_components, dim, dim)),
                constraint=constraints.lower_cholesky)
            loc_tril = numpyro.param(
                "gmm_locs_scale_tril",
                jnp.broadcast_to(jnp.diag(0.1 * jnp.sqrt(jnp.diagonal(variances))),
                                 (num_components, dim, dim)),
                constraint=constraints.lower_cholesky)
            numpyro.sample("precisions", dist.Wishart(df, scale_tril=precision_tril))
            numpyro.sample("locs", dist.MultivariateNormal(loc, scale_tril=loc_tril))
        else:
            shape = numpyro.param("gmm_precisions_concentration",
                                  jnp.full((num_components, dim), 0.5 * share, x.dtype),
                                  constraint=constraints.positive)
            rate = numpyro.param("gmm_precisions_rate",
                                 jnp.broadcast_to(0.5 * share * jnp.diagonal(variances),
                                                  (num_components, dim)),
                                 constraint=constraints.positive)
            loc_scale = numpyro.param("gmm_locs_scale",
                                      jnp.broadcast_to(0.1 * jnp.sqrt(jnp.diagonal(variances)),
                                                       (num_components, dim)),
                                      constraint=constraints.positive)
            numpyro.sample("precisions", dist.Gamma(shape, rate).to_event(1))
            numpyro.sample("locs", dist.Normal(loc, loc_scale).to_event(1))
