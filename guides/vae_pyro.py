"""The VAE's amortised guide in Pyro: q(z | x) = N(loc(x), diag scale(x)^2).

Same signature as :func:`models.vae_pyro.vae_model` (SVI calls both with the same
arguments); registers ``"encoder"``; latent site ``"z"`` in plate ``"data"`` (dim -1).
"""

import contextlib

import pyro
from pyro import poutine
from pyro.distributions import Normal


def vae_guide(x, beta=None, *, encoder):
    """q(z | x) for a batch ``x`` of shape ``(N, D)``; ``beta`` scales the latent site as in
    the model (KL warm-up)."""
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        loc, scale = encoder(x)  # (N, L) each
        with contextlib.nullcontext() if beta is None else poutine.scale(scale=beta):
            pyro.sample("z", Normal(loc, scale).to_event(1))
