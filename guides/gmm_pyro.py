"""Mean-field variational family for ``models.gmm_pyro.gmm_model``.

Full covariances::

    q(pi) q(Lambda) q(mu) = Dirichlet(pi | alpha) prod_k Wishart(Lambda_k | nu_k, W_k)
                            N(mu_k | loc_k, L_k L_k^T)

diagonal ones: ``prod_kd Gamma(lambda_kd | a_kd, b_kd) N(mu_kd | loc_kd, s_kd^2)`` in place
of the Wishart and the multivariate normal. Unlike the closed-form updates, whose
q(mu_k | Lambda_k) depends on Lambda_k, the means and precisions are independent here; the
optimal q(mu_k) has the same mean m_k either way. Parameters (``pyro.param`` names):
``"gmm_weights_concentration"`` (K,), ``"gmm_locs_loc"`` (K, D); full:
``"gmm_precisions_df"`` (K,), ``"gmm_precisions_scale_tril"`` (K, D, D),
``"gmm_locs_scale_tril"`` (K, D, D); diag: ``"gmm_precisions_concentration"`` and
``"gmm_precisions_rate"`` (K, D), ``"gmm_locs_scale"`` (K, D). Mirror of
:mod:`guides.gmm_numpyro`.
"""

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints


class _Wishart(dist.Wishart):
    """Wishart whose ``rsample`` is the plain Bartlett construction.

    torch 2.13's ``Wishart.rsample`` tests its draws with an inverted check: it warns
    "Singular sample detected." for every positive-definite draw and redraws it.
    """

    def rsample(self, sample_shape=torch.Size()):
        return self._bartlett_sampling(torch.Size(sample_shape))


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
    init_locs = torch.as_tensor(init_locs, dtype=x.dtype)
    variances = torch.cov(x.T).reshape(dim, dim)
    # start every precision around the inverse of the data's spread, with a confident
    # number of pseudo-observations: each component's share of the data
    share = num / num_components
    concentration = pyro.param("gmm_weights_concentration",
                               lambda: x.new_full((num_components,), share),
                               constraint=constraints.positive)
    loc = pyro.param("gmm_locs_loc", lambda: init_locs.clone())
    pyro.sample("weights", dist.Dirichlet(concentration))
    with pyro.plate("components", num_components):
        if full:
            df0 = dim + 1.0 + share
            df = pyro.param("gmm_precisions_df", lambda: x.new_full((num_components,), df0),
                            constraint=constraints.greater_than(float(dim - 1)))
            precision_tril = pyro.param(
                "gmm_precisions_scale_tril",
                lambda: torch.linalg.cholesky(torch.linalg.inv(variances) / df0)
                .expand(num_components, dim, dim).clone(),
                constraint=constraints.lower_cholesky)
            loc_tril = pyro.param(
                "gmm_locs_scale_tril",
                lambda: (0.1 * variances.diagonal().sqrt()).diag_embed()
                .expand(num_components, dim, dim).clone(),
                constraint=constraints.lower_cholesky)
            pyro.sample("precisions", _Wishart(df, scale_tril=precision_tril))
            pyro.sample("locs", dist.MultivariateNormal(loc, scale_tril=loc_tril))
        else:
            shape = pyro.param("gmm_precisions_concentration",
                               lambda: x.new_full((num_components, dim), 0.5 * share),
                               constraint=constraints.positive)
            rate = pyro.param("gmm_precisions_rate",
                              lambda: (0.5 * share * variances.diagonal())
                              .expand(num_components, dim).clone(),
                              constraint=constraints.positive)
            loc_scale = pyro.param("gmm_locs_scale",
                                   lambda: (0.1 * variances.diagonal().sqrt())
                                   .expand(num_components, dim).clone(),
                                   constraint=constraints.positive)
            pyro.sample("precisions", dist.Gamma(shape, rate).to_event(1))
            pyro.sample("locs", dist.Normal(loc, loc_scale).to_event(1))
