"""Encoder and decoder networks (Equinox), as in Tomczak & Welling (2018).

Mirror of :mod:`ppl_vae.pyro.nets`: same classes, same constructor arguments plus a
keyword-only ``rng_key`` for the initial weights. Both networks are plain multilayer
perceptrons with two hidden layers of 300 units by default. With ``gated=True`` (the
reference's choice and our default) each hidden layer is a gated dense unit
``h = (W x + b) * sigmoid(V x + c)``, computed as one matrix product with ``2 * width``
outputs. Weights are He-normal initialised as in the reference (``N(0, 2 / fan_in)``, biases
zero), the encoder's log-variance is clamped to ``[-6, 2]``.

Why Equinox: a module is a pure pytree of arrays with no hidden state, so
``numpyro.contrib.module.eqx_module`` registers it as one ``numpyro.param`` and returns the
same object with the parameter values swapped in; the networks are called exactly like the
torch modules of the Pyro half (``encoder(x) -> (loc, scale)``), with no ``apply`` and no
variable collections. Every layer works on inputs of shape ``(..., D)`` with a single
``x @ W.T + b`` product for the whole batch (Equinox's own ``Linear`` takes one vector and
would need a ``vmap``), so weights are stored ``(out, in)`` as in ``torch.nn.Linear``.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import random

from ppl_vae._checks import check_dims

__all__ = ["GatedDense", "MLP", "Encoder", "Decoder"]


def _check_key(rng_key):
    if rng_key is None:
        raise TypeError(
            "rng_key is required to initialise the weights: pass e.g. "
            "rng_key=jax.random.PRNGKey(0)."
        )
    return rng_key


class _Linear(eqx.Module):
    """``x @ weight.T + bias`` on ``(..., in)`` inputs; He-normal weight ``(out, in)``."""

    weight: jax.Array
    bias: jax.Array

    def __init__(self, in_features, out_features, *, rng_key):
        std = math.sqrt(2.0 / in_features)  # kaiming_normal_, fan_in, gain sqrt(2)
        self.weight = std * random.normal(_check_key(rng_key), (out_features, in_features))
        self.bias = jnp.zeros(out_features)

    def __call__(self, x):
        return x @ self.weight.T + self.bias


class _ReLU(eqx.Module):
    def __call__(self, x):
        return jax.nn.relu(x)


class GatedDense(eqx.Module):
    """``h = (W x + b) * sigmoid(V x + c)``, computed with one ``(in, 2 * out)`` matrix."""

    linear: _Linear

    def __init__(self, in_features, out_features, *, rng_key):
        self.linear = _Linear(in_features, 2 * out_features, rng_key=rng_key)

    def __call__(self, x):
        h, gate = jnp.split(self.linear(x), 2, axis=-1)
        return h * jax.nn.sigmoid(gate)


class MLP(eqx.Module):
    """Hidden layers only: gated dense units, or ReLU layers when ``gated=False``.

    ``layers`` is ordered as the ``torch.nn.Sequential`` of the Pyro half (a ReLU counts as
    a layer), so ``layers[i]`` is the torch module ``str(i)``.
    """

    layers: tuple

    def __init__(self, in_features, hidden_dims, gated=True, *, rng_key):
        keys = random.split(_check_key(rng_key), len(hidden_dims))
        layers = []
        for width, key in zip(hidden_dims, keys):
            if gated:
                layers.append(GatedDense(in_features, width, rng_key=key))
            else:
                layers += [_Linear(in_features, width, rng_key=key), _ReLU()]
            in_features = width
        self.layers = tuple(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Encoder(eqx.Module):
    """Amortised diagonal Gaussian :math:`q(z \\mid x) = N(loc(x), diag\\, scale(x)^2)`.

    The log-variance is clamped to ``[logvar_min, logvar_max]`` (hardtanh, as in the
    reference: [-6, 2]), which bounds the scale to about [0.05, 2.7].

    :param int input_dim: D, size of a flattened input.
    :param int latent_dim: L.
    :param hidden_dims: widths of the hidden layers, default ``(300, 300)``.
    :param rng_key: ``jax.random.PRNGKey`` for the initial weights (keyword-only, required).
    :returns: ``encoder(x)`` maps ``(..., D)`` to ``(loc, scale)``, each ``(..., L)``.
    """

    body: MLP
    head: _Linear
    input_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    logvar_min: float = eqx.field(static=True)
    logvar_max: float = eqx.field(static=True)

    def __init__(self, input_dim=784, latent_dim=40, hidden_dims=(300, 300), gated=True,
                 logvar_min=-6.0, logvar_max=2.0, *, rng_key=None):
        self.input_dim = check_dims("input_dim", input_dim)[0]
        self.latent_dim = check_dims("latent_dim", latent_dim)[0]
        hidden_dims = check_dims("hidden_dims", hidden_dims)
        self.logvar_min, self.logvar_max = float(logvar_min), float(logvar_max)
        key_body, key_head = random.split(_check_key(rng_key))
        self.body = MLP(self.input_dim, hidden_dims, gated, rng_key=key_body)
        # loc and log-variance heads share one matrix product.
        self.head = _Linear(hidden_dims[-1], 2 * self.latent_dim, rng_key=key_head)

    def __call__(self, x):
        loc, logvar = jnp.split(self.head(self.body(x)), 2, axis=-1)
        logvar = jnp.clip(logvar, self.logvar_min, self.logvar_max)
        return loc, jnp.exp(0.5 * logvar)


class Decoder(eqx.Module):
    """Maps a latent ``(..., L)`` to the parameters of :math:`p(x \\mid z)`, ``(..., P * D)``.

    :param int params_per_pixel: P, 1 for :func:`~ppl_vae.numpyro.likelihoods.bernoulli`
        (logits), 2 for :func:`~ppl_vae.numpyro.likelihoods.discretized_logistic`
        (loc, log-scale).
    :param rng_key: ``jax.random.PRNGKey`` for the initial weights (keyword-only, required).
    """

    body: MLP
    head: _Linear
    latent_dim: int = eqx.field(static=True)
    output_dim: int = eqx.field(static=True)
    params_per_pixel: int = eqx.field(static=True)

    def __init__(self, latent_dim=40, output_dim=784, hidden_dims=(300, 300), gated=True,
                 params_per_pixel=1, *, rng_key=None):
        self.latent_dim = check_dims("latent_dim", latent_dim)[0]
        self.output_dim = check_dims("output_dim", output_dim)[0]
        self.params_per_pixel = check_dims("params_per_pixel", params_per_pixel)[0]
        hidden_dims = check_dims("hidden_dims", hidden_dims)
        key_body, key_head = random.split(_check_key(rng_key))
        self.body = MLP(self.latent_dim, hidden_dims, gated, rng_key=key_body)
        self.head = _Linear(hidden_dims[-1], self.params_per_pixel * self.output_dim,
                            rng_key=key_head)

    def __call__(self, z):
        return self.head(self.body(z))
