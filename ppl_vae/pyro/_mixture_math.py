"""Log-density of a mixture of diagonal Gaussians as one matrix product.

For N points and K components in L dimensions the direct form builds an ``(N, K, L)`` tensor.
Expanding the square,

.. math::

    \\sum_d \\frac{(z_d - m_{kd})^2}{s_{kd}^2}
      = z^2 \\cdot p_k - 2\\, z \\cdot (m_k p_k) + \\sum_d m_{kd}^2 p_{kd},
    \\qquad p_k = 1 / s_k^2,

turns it into a single ``(N, 2L) x (2L, K)`` GEMM. The expansion cancels in float32 when
``z`` is close to a component with a small scale; two guards keep the error small and
one-sided: both ``z`` and ``m`` are first centred on the mean component location (which
shrinks every term of the expansion), and the per-component log-density is capped at its
exact maximum ``log N(m_k; m_k, s_k)`` (the quadratic form can only round to a negative
value, never be one). ``tests/test_vamp_prior_pyro.py`` checks the result against the direct
float64 form with a tolerance derived from this bound.

The log-sum-exp floors components more than :func:`far_nats` below the best one (see
:func:`_logsumexp_near`: torch's CPU ``exp`` is 80-200 times slower where float32
underflows). The NumPyro twin has no floor: XLA's ``exp`` has no such slow path (its epoch
time stays flat over a long run, ``benchmarks/long_run.py``).
"""

import math

import torch

from ppl_vae.pyro import _numerics


def diag_normal_mixture_log_prob(value, loc, scale, log_weights=None):
    """``log sum_k w_k N(value; loc_k, diag scale_k^2)``, with ``w_k = 1`` when no weights.

    :param torch.Tensor value: points, shape ``batch_shape + (L,)``.
    :param torch.Tensor loc: component means, shape ``(K, L)``.
    :param torch.Tensor scale: component standard deviations, shape ``(K, L)``.
    :param torch.Tensor log_weights: optional log mixture weights, shape ``(K,)``.
    :returns: log-density, shape ``batch_shape``.
    """
    num_dims = loc.shape[-1]
    batch_shape = value.shape[:-1]
    center = loc.detach().mean(0)
    precision = scale.reciprocal().square()  # (K, L)
    m = loc - center  # (K, L)
    z = (value - center).reshape(-1, num_dims)  # (N, L)
    # log N(m_k; m_k, s_k): the largest value each component's log-density can take.
    log_peak = -scale.log().sum(-1) - 0.5 * num_dims * math.log(2 * math.pi)  # (K,)
    bias = log_peak - 0.5 * (m * m * precision).sum(-1)  # (K,)
    weight = torch.cat([-0.5 * precision, m * precision], dim=-1)  # (K, 2L)
    features = torch.cat([z * z, z], dim=-1)  # (N, 2L)
    component_log_prob = torch.addmm(bias, features, weight.T)  # (N, K)
    component_log_prob = torch.minimum(component_log_prob, log_peak)
    if log_weights is not None:
        component_log_prob = component_log_prob + log_weights
    return _logsumexp_near(component_log_prob).reshape(batch_shape)


def far_nats(dtype):
    """How far below the best component :func:`diag_normal_mixture_log_prob` floors the
    others: ``-log(tiny) - 7`` nats (80.3 in float32, 701.4 in float64), so that
    ``exp(-far_nats)`` is ``2^10`` times the smallest normal number."""
    return -math.log(torch.finfo(dtype).tiny) - 7.0


def _logsumexp_near(c):
    """``logsumexp(c, -1)`` with every entry floored at ``max - far_nats(dtype)``.

    Why: torch's CPU ``exp`` leaves its vector path for arguments below about -87 (where
    float32 underflows) and is then 80-200 times slower (1.2-2.9 ms instead of 14 us for
    78,400 floats, with or without flush-to-zero). In the mixture the components far from
    a point are exactly those arguments, and there are more of them as training sharpens the
    components: 20% of the ``(batch, K)`` entries after 10 static-MNIST epochs, 43% after
    40 (issue 14's creeping epoch time); the 5000-sample evaluation of that 40-epoch model
    took 1.66x longer without the floor.

    The floor does not change the result at the dtype's precision: each floored entry adds
    at most ``exp(-far_nats) = 1.8e-35`` (float32) to a sum that is at least 1, and its
    gradient (its responsibility, below that) becomes exactly zero. The maximum is detached,
    which is exact (the gradient of ``m + log sum exp(c - m)`` does not depend on ``m``),
    and ``exp``'s backward reuses its output, so the backward pass calls no ``exp`` at all
    (``torch.logsumexp``'s backward recomputes one). Floating-point only; other dtypes
    (half precision has no room for the floor) take ``torch.logsumexp``.
    """
    if (c.dtype not in (torch.float32, torch.float64) or c.shape[-1] == 0
            or not _numerics._ENABLED):
        return torch.logsumexp(c, dim=-1)
    top = c.detach().amax(-1, keepdim=True)
    finite = torch.isfinite(top)
    m = torch.where(finite, top, torch.zeros_like(top))
    shifted = (c - m).clamp(min=-far_nats(c.dtype))
    out = torch.log(shifted.exp().sum(-1, keepdim=True)) + m
    # a row whose best entry is +-inf or NaN: that entry, as torch.logsumexp gives it
    return torch.where(finite, out, top).squeeze(-1)
