"""Mean-field variational family for ``models.gmm_pyro.gmm_model``.

    q(pi) q(Lambda) q(mu) = Dirichlet(pi | alpha) prod_k Wishart(Lambda_k | nu_k, W_k)
                            N(mu_k | loc_k, L_k L_k^T)

Unlike the closed-form updates, whose q(mu_k | Lambda_k) depends on Lambda_k, the means and
precisions are independent here; the optimal q(mu_k) has the same mean m_k either way.
Parameters (``pyro.param`` names): ``"gmm_weights_concentration"`` (K,),
``"gmm_precisions_df"`` (K,), ``"gmm_precisions_scale_tril"`` (K, D, D),
``"gmm_locs_loc"`` (K, D), ``"gmm_locs_scale_tril"`` (K, D, D).
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


def gmm_guide(x, *, num_components, init_locs, **prior):
    """q(pi, mu, Lambda) for data ``x`` (N, D).

    :param int num_components: K.
    :param init_locs: initial component means, shape (K, D) (e.g. k-means centres).
    :param prior: the model's hyperparameters, accepted so that model and guide can be bound
        with the same keywords; unused.
    """
    num_components = int(num_components)
    num, dim = x.shape
    init_locs = torch.as_tensor(init_locs, dtype=x.dtype)
    # start every precision around the inverse of the data's spread, with a confident df
    df0 = dim + 1.0 + num / num_components
    data_precision = torch.linalg.inv(torch.cov(x.T).reshape(dim, dim))
    concentration = pyro.param("gmm_weights_concentration",
                               lambda: x.new_full((num_components,), num / num_components),
                               constraint=constraints.positive)
    df = pyro.param("gmm_precisions_df", lambda: x.new_full((num_components,), df0),
                    constraint=constraints.greater_than(float(dim)))
    precision_tril = pyro.param(
        "gmm_precisions_scale_tril",
        lambda: torch.linalg.cholesky(data_precision / df0).expand(num_components, dim, dim)
        .clone(),
        constraint=constraints.lower_cholesky)
    loc = pyro.param("gmm_locs_loc", lambda: init_locs.clone())
    loc_tril = pyro.param("gmm_locs_scale_tril",
                          lambda: 0.1 * torch.diag(torch.cov(x.T).reshape(dim, dim)).sqrt()
                          .diag_embed().expand(num_components, dim, dim).clone(),
                          constraint=constraints.lower_cholesky)
    pyro.sample("weights", dist.Dirichlet(concentration))
    with pyro.plate("components", num_components):
        pyro.sample("precisions", _Wishart(df, scale_tril=precision_tril))
        pyro.sample("locs", dist.MultivariateNormal(loc, scale_tril=loc_tril))
