"""Networks of the two-layer hierarchical VAE (Equinox), as in Tomczak & Welling (2018).

Mirror of :mod:`ppl_vae.pyro.hvae`: same classes and constructor arguments plus a
keyword-only ``rng_key`` for the initial weights. The HVAE of the VampPrior paper (the
reference's ``HVAE_2level``) has two stochastic layers of 40 units each:

.. math::

    p(x, z_1, z_2) = p(z_2)\\, p(z_1 \\mid z_2)\\, p(x \\mid z_1, z_2), \\qquad
    q(z_1, z_2 \\mid x) = q(z_2 \\mid x)\\, q(z_1 \\mid x, z_2).

- :class:`ConditionalGaussian` -- a diagonal Gaussian whose location and scale are an MLP of
  one or more inputs: :math:`q(z_2 \\mid x)`, :math:`q(z_1 \\mid x, z_2)`, :math:`p(z_1 \\mid z_2)`;
- :class:`MultiInputDecoder` -- the likelihood parameters of :math:`p(x \\mid z_1, z_2)`.

With several inputs, each input has its own first hidden layer; the outputs are concatenated
and pass through the remaining hidden layers. Parameters are laid out as in the torch
modules (``body.branches[i]``, ``body.joint.layers[j]``, ``head``), so weights copy across
by path.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import random

from ppl_vae._checks import check_dims, check_int
from ppl_vae.numpyro.nets import MLP, _check_key, _Linear

__all__ = ["ConditionalGaussian", "MultiInputDecoder", "hvae_posterior_means"]


class _MultiInputBody(eqx.Module):
    """One first hidden layer per input, concatenation, then ``hidden_dims[1:]``."""

    branches: tuple
    joint: MLP
    out_features: int = eqx.field(static=True)

    def __init__(self, input_dims, hidden_dims, gated, *, rng_key):
        keys = random.split(_check_key(rng_key), len(input_dims) + 1)
        self.branches = tuple(MLP(d, hidden_dims[:1], gated, rng_key=k)
                              for d, k in zip(input_dims, keys[:-1]))
        self.joint = MLP(len(input_dims) * hidden_dims[0], hidden_dims[1:], gated,
                         rng_key=keys[-1])
        # One hidden layer: the concatenation itself feeds the head.
        self.out_features = (hidden_dims[-1] if len(hidden_dims) > 1
                             else len(input_dims) * hidden_dims[0])

    def __call__(self, *inputs):
        if len(inputs) != len(self.branches):
            raise TypeError(
                f"expected {len(self.branches)} input array(s); got {len(inputs)}."
            )
        hs = [branch(x) for branch, x in zip(self.branches, inputs)]
        if len(hs) > 1:
            # x is (N, D) while z2 may carry extra leading sample dims (S, N, L): broadcast
            # the (cheap) hidden activations, not the inputs.
            hs = jnp.broadcast_arrays(*hs)
        return self.joint(jnp.concatenate(hs, axis=-1))


class ConditionalGaussian(eqx.Module):
    """Diagonal Gaussian :math:`N(loc(u), diag\\, scale(u)^2)` of inputs
    :math:`u = (u_1, \\dots, u_m)`.

    The log-variance is clamped to ``[logvar_min, logvar_max]`` (hardtanh, the reference's
    [-6, 2]), so the scale lies in about [0.05, 2.7].

    Example::

        >>> q_z1 = ConditionalGaussian((784, 40), 40, rng_key=random.PRNGKey(0))
        >>> loc, scale = q_z1(jnp.ones((5, 784)), jnp.zeros((5, 40)))
        >>> loc.shape, scale.shape
        ((5, 40), (5, 40))

    :param input_dims: an int or a tuple of ints, the sizes of the inputs in call order.
    :param int latent_dim: L, the size of the Gaussian.
    :param hidden_dims: hidden widths; the first layer is per input.
    :param bool gated: gated dense units (default, as the reference) or ReLU layers.
    :param rng_key: ``jax.random.PRNGKey`` for the initial weights (keyword-only, required).
    :returns: ``module(*inputs)`` maps inputs ``(..., input_dims[i])`` (broadcastable batch
        shapes) to ``(loc, scale)``, each ``(..., L)``.
    """

    body: _MultiInputBody
    head: _Linear
    input_dims: tuple = eqx.field(static=True)
    input_dim: object = eqx.field(static=True)  # input_dims[0] for one input, else None
    latent_dim: int = eqx.field(static=True)
    logvar_min: float = eqx.field(static=True)
    logvar_max: float = eqx.field(static=True)

    def __init__(self, input_dims, latent_dim=40, hidden_dims=(300, 300), gated=True,
                 logvar_min=-6.0, logvar_max=2.0, *, rng_key=None):
        self.input_dims = check_dims("input_dims", input_dims)
        self.latent_dim = check_dims("latent_dim", latent_dim)[0]
        hidden_dims = check_dims("hidden_dims", hidden_dims)
        # What LearnedVampPrior reads off its encoder.
        self.input_dim = self.input_dims[0] if len(self.input_dims) == 1 else None
        self.logvar_min, self.logvar_max = float(logvar_min), float(logvar_max)
        key_body, key_head = random.split(_check_key(rng_key))
        self.body = _MultiInputBody(self.input_dims, hidden_dims, gated, rng_key=key_body)
        # loc and log-variance heads share one matrix product.
        self.head = _Linear(self.body.out_features, 2 * self.latent_dim, rng_key=key_head)

    def __call__(self, *inputs):
        loc, logvar = jnp.split(self.head(self.body(*inputs)), 2, axis=-1)
        logvar = jnp.clip(logvar, self.logvar_min, self.logvar_max)
        return loc, jnp.exp(0.5 * logvar)


class MultiInputDecoder(eqx.Module):
    """Maps latents ``(z_1, z_2)`` (or any inputs) to the parameters of
    :math:`p(x \\mid z_1, z_2)`, shape ``(..., P * D)``.

    :param input_dims: sizes of the inputs in call order, ``(L1, L2)`` for the HVAE.
    :param int output_dim: D.
    :param hidden_dims: hidden widths; the first layer is per input.
    :param int params_per_pixel: P, 1 for :func:`~ppl_vae.numpyro.bernoulli` (logits), 2 for
        :func:`~ppl_vae.numpyro.discretized_logistic`.
    :param rng_key: ``jax.random.PRNGKey`` for the initial weights (keyword-only, required).
    """

    body: _MultiInputBody
    head: _Linear
    input_dims: tuple = eqx.field(static=True)
    output_dim: int = eqx.field(static=True)
    params_per_pixel: int = eqx.field(static=True)

    def __init__(self, input_dims=(40, 40), output_dim=784, hidden_dims=(300, 300), gated=True,
                 params_per_pixel=1, *, rng_key=None):
        self.input_dims = check_dims("input_dims", input_dims)
        self.output_dim = check_dims("output_dim", output_dim)[0]
        self.params_per_pixel = check_dims("params_per_pixel", params_per_pixel)[0]
        hidden_dims = check_dims("hidden_dims", hidden_dims)
        key_body, key_head = random.split(_check_key(rng_key))
        self.body = _MultiInputBody(self.input_dims, hidden_dims, gated, rng_key=key_body)
        self.head = _Linear(self.body.out_features, self.params_per_pixel * self.output_dim,
                            rng_key=key_head)

    def __call__(self, *inputs):
        return self.head(self.body(*inputs))


def _trained(module, name, params):
    """``module`` with the values that ``eqx_module(name, module)`` registered, if given."""
    key = name + "$params"  # eqx_module's param name
    if not params or key not in params:
        return module
    return eqx.combine(params[key], eqx.partition(module, eqx.is_inexact_array)[1])


def hvae_posterior_means(rng_key, encoder, z1_encoder, x, num_samples=100, batch_size=1000,
                         *, params=None):
    """Posterior means of both latent layers, for active units (:mod:`ppl_vae.metrics`).

    .. math::

        E_q[z_2 \\mid x] = loc_2(x), \\qquad
        E_q[z_1 \\mid x] = E_{q(z_2 \\mid x)}\\big[loc_1(x, z_2)\\big]
                        \\approx \\frac1S \\sum_{s=1}^S loc_1(x, z_2^{(s)}).

    The z1 mean is a Monte Carlo average over ``num_samples`` draws of z2 (unbiased; its
    noise adds about ``Var_q[loc_1] / S`` to each dimension's variance across x).
    ``num_samples=None`` plugs in z2's mean instead (deterministic, biased when ``loc_1`` is
    non-linear in z2).

    :param rng_key: ``jax.random.PRNGKey`` for the z2 draws (unused with ``num_samples=None``).
    :param encoder: q(z2 | x), an Equinox module mapping ``(N, D)`` to ``(loc, scale)``.
    :param z1_encoder: q(z1 | x, z2), maps ``(N, D), (S, N, L2)`` to ``(loc, scale)``.
    :param x: ``(N, D)`` array.
    :param int num_samples: S, or None for the plug-in estimate.
    :param dict params: trained values by NumPyro param name (e.g. ``FitResult.params``:
        ``"encoder$params"`` and ``"z1_encoder$params"``); None for the modules as they are.
    :returns: ``(z1_means, z2_means)``, NumPy arrays ``(N, L1)`` and ``(N, L2)``.
    """
    check_int("num_samples", num_samples, allow_none=True)
    check_int("batch_size", batch_size)
    x = np.asarray(x, dtype=jnp.result_type(float))
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, D); got {x.shape}.")

    @jax.jit
    def means(key, params, xb):
        enc, z1_enc = (_trained(encoder, "encoder", params),
                       _trained(z1_encoder, "z1_encoder", params))
        loc2, scale2 = enc(xb)  # (n, L2)
        if num_samples is None:
            return z1_enc(xb, loc2)[0], loc2
        eps = random.normal(key, (num_samples,) + loc2.shape, loc2.dtype)
        return z1_enc(xb, loc2 + scale2 * eps)[0].mean(0), loc2  # (S, n, L1) -> (n, L1)

    z1_means, z2_means = [], []
    for i, start in enumerate(range(0, len(x), batch_size)):
        z1, z2 = means(random.fold_in(rng_key, i), params, x[start:start + batch_size])
        z1_means.append(np.asarray(z1))
        z2_means.append(np.asarray(z2))
    return np.concatenate(z1_means), np.concatenate(z2_means)

