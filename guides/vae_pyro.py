"""The VAE's amortised guide in Pyro: q(z | x) = N(loc(x), diag scale(x)^2).

Same signature as :func:`models.vae_pyro.vae_model` (SVI calls both with the same
arguments); registers ``"encoder"``; latent site ``"z"`` in plate ``"data"`` (dim -1).
"""

import pyro
from pyro.distributions import Normal


def vae_guide(x, *, encoder):
    """q(z | x) for a batch ``x`` of shape ``(N, D)``."""
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        loc, scale = encoder(x)  # (N, L) each
        pyro.sample("z", Normal(loc, scale).to_event(1))
