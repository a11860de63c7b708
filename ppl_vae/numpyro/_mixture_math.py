"""Log-density of a mixture of diagonal Gaussians as one matrix product (JAX).

Mirror of :mod:`ppl_vae.pyro._mixture_math`. For N points and K components in L dimensions
the direct form builds an ``(N, K, L)`` array. Expanding the square,

.. math::

    \\sum_d \\frac{(z_d - m_{kd})^2}{s_{kd}^2}
      = z^2 \\cdot p_k - 2\\, z \\cdot (m_k p_k) + \\sum_d m_{kd}^2 p_{kd},
    \\qquad p_k = 1 / s_k^2,

turns it into a single ``(N, 2L) x (2L, K)`` GEMM. The expansion cancels in float32 when
``z`` is close to a component with a small scale; two guards keep the error small and
one-sided: both ``z`` and ``m`` are first centred on the mean component location (which
shrinks every term of the expansion), and the per-component log-density is capped at its
exact maximum ``log N(m_k; m_k, s_k)`` (the quadratic form can only round to a negative
value, never be one). ``tests/test_vamp_prior_numpyro.py`` checks the result against the
direct float64 form with a tolerance derived from this bound.
"""

import math

import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp


def diag_normal_mixture_log_prob(value, loc, scale, log_weights=None):
    """``log sum_k w_k N(value; loc_k, diag scale_k^2)``, with ``w_k = 1`` when no weights.

    :param jax.Array value: points, shape ``batch_shape + (L,)``.
    :param jax.Array loc: component means, shape ``(K, L)``.
    :param jax.Array scale: component standard deviations, shape ``(K, L)``.
    :param jax.Array log_weights: optional log mixture weights, shape ``(K,)``.
    :returns: log-density, shape ``batch_shape``.
    """
    num_dims = loc.shape[-1]
    batch_shape = jnp.shape(value)[:-1]
    center = lax.stop_gradient(loc).mean(0)
    precision = jnp.reciprocal(jnp.square(scale))  # (K, L)
    m = loc - center  # (K, L)
    z = (value - center).reshape(-1, num_dims)  # (N, L)
    # log N(m_k; m_k, s_k): the largest value each component's log-density can take.
    log_peak = -jnp.log(scale).sum(-1) - 0.5 * num_dims * math.log(2 * math.pi)  # (K,)
    bias = log_peak - 0.5 * (m * m * precision).sum(-1)  # (K,)
    weight = jnp.concatenate([-0.5 * precision, m * precision], axis=-1)  # (K, 2L)
    features = jnp.concatenate([z * z, z], axis=-1)  # (N, 2L)
    # HIGHEST: accelerators may otherwise round float32 GEMM inputs (TF32), and this
    # expansion is the one product here that cannot afford it.
    component_log_prob = (
        jnp.matmul(features, weight.T, precision=lax.Precision.HIGHEST) + bias
    )  # (N, K)
    component_log_prob = jnp.minimum(component_log_prob, log_peak)
    if log_weights is not None:
        component_log_prob = component_log_prob + log_weights
    return logsumexp(component_log_prob, axis=-1).reshape(batch_shape)
