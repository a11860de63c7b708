"""Log-density of a mixture of diagonal Gaussians as one matrix product (JAX).

Mirror of :mod:`ppl_vae.pyro._mixture_math`. For N points and K components in L dimensions
the direct form builds an ``(N, K, L)`` array. Expanding the square,

.. math::

    \\sum_d \\frac{(z_d - m_{kd})^2}{s_{kd}^2}
      = z^2 \\cdot p_k - 2\\, z \\cdot (m_k p_k) + \\sum_d m_{kd}^2 p_{kd},
    \\qquad p_k = 1 / s_k^2,

turns it into a single ``(N, 2L) x (2L, K)`` GEMM. The expansion cancels in float32 when
``z`` is close to a component with a small scale: the terms are of size
``(|z| + |m_k|)^2 / s_k^2`` while their sum is ``|z - m_k|^2 / s_k^2``, and the gradient
``p_k (m_k - z)`` comes out as the difference of two such terms (20% wrong at 1e-3 scales from
a centre). Two guards keep it accurate:

- both ``z`` and ``m`` are first centred on the mean component location, which shrinks every
  term of the expansion (and so the error of every entry);
- each point's dominant component (the largest entry of its row) is recomputed in the direct
  form, ``log N(z; m_k, s_k)`` from ``z - m_k``, and replaces its GEMM entry. Near a centre
  that component carries the whole density and gradient, and the direct form has no
  cancellation: the value and the gradients with respect to ``z``, ``m`` and ``s`` are then
  accurate to a few float32 roundings (``tests/test_vamp_prior.py`` checks them against
  float64 at 1e-3 scales from a centre). It costs ``O(N L)`` beside the GEMM's ``O(N K L)``;
  the replacement is a select that XLA fuses into the log-sum-exp, whose shift it provides.
  The other components keep the GEMM entries, whose errors reach the result weighted by
  their responsibilities.
"""

import math

import jax.numpy as jnp
from jax import lax

_LOG_2PI = math.log(2 * math.pi)


def diag_normal_mixture_log_prob(value, loc, scale, log_weights=None):
    """``log sum_k w_k N(value; loc_k, diag scale_k^2)``, with ``w_k = 1`` when no weights.

    The components may carry batch dimensions of their own (one mixture per batch element);
    they broadcast against the points' batch dimensions as a distribution's parameters do.

    :param jax.Array value: points, shape ``sample_shape + batch_shape + (L,)``.
    :param jax.Array loc: component means, shape ``param_batch_shape + (K, L)``.
    :param jax.Array scale: component standard deviations, the shape of ``loc``.
    :param jax.Array log_weights: optional log mixture weights, shape ``(K,)``.
    :returns: log-density, shape ``broadcast(value.shape[:-1], param_batch_shape)``.
    """
    value, loc, scale = jnp.asarray(value), jnp.asarray(loc), jnp.asarray(scale)
    num_dims = loc.shape[-1]
    value_shape, param_shape = value.shape[:-1], loc.shape[:-2]
    if all(n == 1 for n in param_shape):
        # One mixture for every point (the VAE's case): a single GEMM over all of them.
        components = jnp.shape(loc)[-2:]
        out = _rows_log_prob(jnp.reshape(value, (-1, num_dims)), jnp.reshape(loc, components),
                             jnp.reshape(scale, components), log_weights)
        return out.reshape(lax.broadcast_shapes(value_shape, param_shape))
    # Batched components: one GEMM per mixture, over the points that share it. Dimensions
    # where the components have size 1 go to the points' side, so nothing is copied K times.
    shape = lax.broadcast_shapes(value_shape, param_shape)
    value = jnp.broadcast_to(value, shape + (num_dims,))
    lead = len(shape) - len(param_shape)
    mixture_axes = [lead + i for i, n in enumerate(param_shape) if n != 1]
    point_axes = list(range(lead)) + [lead + i for i, n in enumerate(param_shape) if n == 1]
    order = mixture_axes + point_axes
    mixture_shape = [shape[i] for i in mixture_axes]
    num_mixtures = math.prod(mixture_shape)
    z = jnp.transpose(value, order + [len(shape)]).reshape(num_mixtures, -1, num_dims)
    components = (num_mixtures,) + jnp.shape(loc)[-2:]
    out = _rows_log_prob(z, jnp.reshape(loc, components), jnp.reshape(scale, components),
                         log_weights)  # (P, N)
    out = out.reshape(mixture_shape + [shape[i] for i in point_axes])
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return jnp.transpose(out, inverse)


def _rows_log_prob(z, loc, scale, log_weights):
    """The mixture log-density of each row of ``z``: ``z`` is ``(N, L)`` or ``(P, N, L)``,
    ``loc`` and ``scale`` are ``(K, L)`` or ``(P, K, L)``; returns ``(N,)`` or ``(P, N)``."""
    num_dims = jnp.shape(loc)[-1]
    center = lax.stop_gradient(loc).mean(-2, keepdims=True)  # (..., 1, L)
    precision = jnp.reciprocal(jnp.square(scale))  # (..., K, L)
    m = loc - center  # (..., K, L)
    zc = z - center  # (..., N, L)
    # log N(m_k; m_k, s_k): the largest value each component's log-density can take.
    log_peak = -jnp.log(scale).sum(-1) - 0.5 * num_dims * _LOG_2PI  # (..., K)
    mp = m * precision  # (..., K, L)
    bias = log_peak - 0.5 * (m * mp).sum(-1)  # (..., K)
    weight = jnp.concatenate([-0.5 * precision, mp], axis=-1)  # (..., K, 2L)
    features = jnp.concatenate([zc * zc, zc], axis=-1)  # (..., N, 2L)
    # HIGHEST: accelerators may otherwise round float32 GEMM inputs (TF32), and this
    # expansion is the one product here that cannot afford it.
    c = jnp.matmul(features, jnp.swapaxes(weight, -1, -2), precision=lax.Precision.HIGHEST)
    c = c + bias[..., None, :]  # (..., N, K)
    if log_weights is not None:
        c = c + log_weights
    # The dominant component of each point, in the direct form (see the module docstring).
    num_components = c.shape[-1]
    k = _row_max_index(lax.stop_gradient(c))  # (..., N)
    num_rows = math.prod(k.shape)
    # Row gathers from the flattened (P * K, L) components: XLA's cheapest gather, and its
    # transpose (a row scatter-add) is the cheapest backward.
    flat = k if k.ndim == 1 else (k + num_components * jnp.arange(k.shape[0])[:, None])
    flat = flat.reshape(num_rows)

    def take(x):  # (..., K, L) -> (..., N, L); (..., K) -> (..., N)
        rows = x.reshape((-1,) + x.shape[k.ndim:]).at[flat].get(mode="promise_in_bounds")
        return rows.reshape(k.shape + x.shape[k.ndim:])

    diff = z - take(loc)
    exact = take(log_peak) - 0.5 * (diff * diff * take(precision)).sum(-1)  # (..., N)
    if log_weights is not None:
        exact = exact + log_weights[k]
    c = jnp.where(jnp.arange(num_components) == k[..., None], exact[..., None], c)
    # log-sum-exp shifted by the dominant entry (the row maximum up to rounding)
    top = lax.stop_gradient(exact)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return jnp.log(jnp.exp(c - top[..., None]).sum(-1)) + top


def _row_max_index(c):
    """Index of a largest entry of each row of ``c`` (``(..., K)`` -> ``(..., N)``).

    Any entry within ``2^b`` units in the last place of the maximum may be returned
    (``b = log2 K`` bits; for K = 500, 9 bits: within 6e-5 of the maximum, relatively), which
    is all the caller needs. Why not ``jnp.argmax``: its paired (value, index) reduction is
    ten times slower than a plain maximum on XLA's CPU backend. Here the entries' bits,
    reordered to sort as signed integers, carry the column index in their low ``b`` bits, so
    one integer maximum gives both.
    """
    num_components = c.shape[-1]
    bits = max(1, (num_components - 1).bit_length())
    int_dtype = {jnp.dtype(jnp.float32): jnp.int32, jnp.dtype(jnp.float64): jnp.int64}.get(
        jnp.dtype(c.dtype))
    if int_dtype is None or bits > 16:
        return jnp.argmax(c, axis=-1)
    key = lax.bitcast_convert_type(c, int_dtype)
    # Negative floats sort the wrong way round as integers: flip their magnitude bits.
    key = jnp.where(key < 0, key ^ jnp.iinfo(int_dtype).max, key)
    mask = (1 << bits) - 1
    key = (key & ~mask) | jnp.arange(num_components, dtype=int_dtype)
    return (key.max(-1) & mask).astype(jnp.int32)
