"""Log-density of a mixture of diagonal Gaussians as one matrix product.

For N points and K components in L dimensions the direct form builds an ``(N, K, L)`` tensor.
Expanding the square,

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
  float64 at 1e-3 scales from a centre). It costs ``O(N L)`` beside the GEMM's ``O(N K L)``,
  and its row maximum is reused as the log-sum-exp's shift. The other components keep the
  GEMM entries, whose errors reach the result weighted by their responsibilities.

The log-sum-exp floors components more than :func:`far_nats` below the best one (see
:func:`_logsumexp_near`: torch's CPU ``exp`` is 80-200 times slower where float32
underflows). The NumPyro twin has no floor: XLA's ``exp`` has no such slow path (its epoch
time stays flat over a long run, ``benchmarks/long_run.py``).
"""

import math

import torch

from ppl_vae.pyro import _numerics

_LOG_2PI = math.log(2 * math.pi)


def diag_normal_mixture_log_prob(value, loc, scale, log_weights=None):
    """``log sum_k w_k N(value; loc_k, diag scale_k^2)``, with ``w_k = 1`` when no weights.

    The components may carry batch dimensions of their own (one mixture per batch element);
    they broadcast against the points' batch dimensions as a distribution's parameters do.

    :param torch.Tensor value: points, shape ``sample_shape + batch_shape + (L,)``.
    :param torch.Tensor loc: component means, shape ``param_batch_shape + (K, L)``.
    :param torch.Tensor scale: component standard deviations, the shape of ``loc``.
    :param torch.Tensor log_weights: optional log mixture weights, shape ``(K,)``.
    :returns: log-density, shape ``broadcast(value.shape[:-1], param_batch_shape)``.
    """
    num_dims = loc.shape[-1]
    value_shape, param_shape = value.shape[:-1], loc.shape[:-2]
    if all(n == 1 for n in param_shape):
        # One mixture for every point (the VAE's case): a single GEMM over all of them.
        if param_shape:
            loc, scale = loc.reshape(loc.shape[-2:]), scale.reshape(scale.shape[-2:])
        out = _rows_log_prob(value.reshape(-1, num_dims), loc, scale, log_weights)
        return out.reshape(torch.broadcast_shapes(value_shape, param_shape))
    # Batched components: one GEMM per mixture, over the points that share it. Dimensions
    # where the components have size 1 go to the points' side, so nothing is copied K times.
    shape = torch.broadcast_shapes(value_shape, param_shape)
    value = value.expand(shape + (num_dims,))
    lead = len(shape) - len(param_shape)
    mixture_axes = [lead + i for i, n in enumerate(param_shape) if n != 1]
    point_axes = list(range(lead)) + [lead + i for i, n in enumerate(param_shape) if n == 1]
    order = mixture_axes + point_axes
    mixture_shape = [shape[i] for i in mixture_axes]
    num_mixtures = math.prod(mixture_shape)
    z = value.permute(order + [len(shape)]).reshape(num_mixtures, -1, num_dims)  # (P, N, L)
    components = (num_mixtures,) + loc.shape[-2:]
    out = _rows_log_prob(z, loc.reshape(components), scale.reshape(components), log_weights)
    out = out.reshape(mixture_shape + [shape[i] for i in point_axes])
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return out.permute(inverse)


def _take(x, k):
    """Rows ``k`` of ``x``: ``x`` is ``(K, ...)`` with ``k`` ``(N,)``, or ``(P, K, ...)``
    with ``k`` ``(P, N)``; returns ``(N, ...)`` or ``(P, N, ...)``."""
    if k.dim() == 1:
        return x.index_select(0, k)
    num_mixtures, num_components = x.shape[:2]
    flat = (k + num_components * torch.arange(num_mixtures, device=k.device)[:, None]).reshape(-1)
    rows = x.reshape((-1,) + x.shape[2:]).index_select(0, flat)
    return rows.reshape(k.shape + x.shape[2:])


def _rows_log_prob(z, loc, scale, log_weights):
    """The mixture log-density of each row of ``z``: ``z`` is ``(N, L)`` or ``(P, N, L)``,
    ``loc`` and ``scale`` are ``(K, L)`` or ``(P, K, L)``; returns ``(N,)`` or ``(P, N)``."""
    num_dims = loc.shape[-1]
    center = loc.detach().mean(-2, keepdim=True)  # (..., 1, L)
    precision = scale.pow(-2)  # (..., K, L)
    m = loc - center  # (..., K, L)
    zc = z - center  # (..., N, L)
    # log N(m_k; m_k, s_k): the largest value each component's log-density can take.
    log_peak = torch.rsub(scale.log().sum(-1), -0.5 * num_dims * _LOG_2PI)  # (..., K)
    mp = m * precision  # (..., K, L)
    bias = torch.sub(log_peak, (m * mp).sum(-1), alpha=0.5)  # (..., K)
    weight = torch.cat([-0.5 * precision, mp], dim=-1)  # (..., K, 2L)
    features = torch.cat([zc * zc, zc], dim=-1)  # (..., N, 2L)
    if z.dim() == 2:
        c = torch.addmm(bias, features, weight.T)  # (N, K)
    else:
        c = torch.baddbmm(bias.unsqueeze(-2), features, weight.transpose(-1, -2))  # (P, N, K)
    if log_weights is not None:
        c = c + log_weights
    # The dominant component of each point, in the direct form (see the module docstring).
    top = c.detach().argmax(-1, keepdim=True)  # (..., N, 1)
    k = top.squeeze(-1)  # (..., N)
    diff = z - _take(loc, k)  # (..., N, L)
    exact = torch.sub(_take(log_peak, k), (diff * diff * _take(precision, k)).sum(-1),
                      alpha=0.5)  # (..., N)
    if log_weights is not None:
        exact = exact + log_weights[k]
    # In place: addmm's (and the add's) backward does not read its output.
    c.scatter_(-1, top, exact.unsqueeze(-1))
    return _logsumexp_near(c, top=exact.detach())


def far_nats(dtype):
    """How far below the best component :func:`diag_normal_mixture_log_prob` floors the
    others: ``-log(tiny) - 7`` nats (80.3 in float32, 701.4 in float64), so that
    ``exp(-far_nats)`` is ``2^10`` times the smallest normal number."""
    return -math.log(torch.finfo(dtype).tiny) - 7.0


def _logsumexp_near(c, top=None):
    """``logsumexp(c, -1)`` with every entry floored at ``max - far_nats(dtype)``.

    ``top``, if given, stands for the row maximum ``c.amax(-1)`` (without gradient); any
    value within rounding of it does, and saves a pass over ``c``.

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
    top = c.detach().amax(-1, keepdim=True) if top is None else top.unsqueeze(-1)
    finite = torch.isfinite(top)
    m = top.nan_to_num(0.0, 0.0, 0.0)  # the finite tops, 0 elsewhere
    shifted = (c - m).clamp(min=-far_nats(c.dtype))
    out = torch.log(shifted.exp().sum(-1, keepdim=True)) + m
    # a row whose best entry is +-inf or NaN: that entry, as torch.logsumexp gives it
    return torch.where(finite, out, top).squeeze(-1)
