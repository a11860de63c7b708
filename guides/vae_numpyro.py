"""The VAE's amortised guide in NumPyro: q(z | x) = N(loc(x), diag scale(x)^2).

Mirror of :mod:`guides.vae_pyro`. Same signature as :func:`models.vae_numpyro.vae_model`
(SVI calls both with the same arguments); registers ``"encoder"`` with ``eqx_module``;
latent site ``"z"`` in plate ``"data"`` (dim -1).
"""

import numpyro
from numpyro.contrib.module import eqx_module
from numpyro.distributions import Normal


def vae_guide(x, *, encoder):
    """q(z | x) for a batch ``x`` of shape ``(N, D)``."""
    net = eqx_module("encoder", encoder)
    with numpyro.plate("data", x.shape[0]):
        loc, scale = net(x)  # (N, L) each
        numpyro.sample("z", Normal(loc, scale).to_event(1))
