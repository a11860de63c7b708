"""Networks of the two-layer hierarchical VAE (torch.nn), as in Tomczak & Welling (2018).

The HVAE of the VampPrior paper (the reference's ``HVAE_2level``) has two stochastic layers
of 40 units each:

.. math::

    p(x, z_1, z_2) = p(z_2)\\, p(z_1 \\mid z_2)\\, p(x \\mid z_1, z_2), \\qquad
    q(z_1, z_2 \\mid x) = q(z_2 \\mid x)\\, q(z_1 \\mid x, z_2),

with :math:`p(z_2)` any prior (the VampPrior, whose encoder is :math:`q(z_2 \\mid x)`).
Every network is built from two blocks:

- :class:`ConditionalGaussian` -- a diagonal Gaussian whose location and scale are an MLP of
  one or more inputs: :math:`q(z_2 \\mid x)`, :math:`q(z_1 \\mid x, z_2)` and
  :math:`p(z_1 \\mid z_2)`;
- :class:`MultiInputDecoder` -- the likelihood parameters of :math:`p(x \\mid z_1, z_2)`.

With several inputs, each input has its own first hidden layer; the outputs are concatenated
and pass through the remaining hidden layers (``hidden_dims=(300, 300)`` with inputs
``(x, z2)`` is the reference's ``x -> gated 300, z2 -> gated 300, concat -> gated 300``).
With one input this is a plain MLP, so ``ConditionalGaussian(784, 40)`` is the one-layer
:class:`~ppl_vae.pyro.Encoder` (both work as the VampPrior's encoder).

:func:`hvae_posterior_means` gives the per-layer posterior means for the active-units
statistic (:mod:`ppl_vae.metrics`).
"""

import numpy as np
import torch
from torch import nn

from ppl_vae._checks import check_dims, check_int
from ppl_vae.pyro.nets import MLP, _he_normal_

__all__ = ["ConditionalGaussian", "MultiInputDecoder", "hvae_posterior_means"]


class _MultiInputBody(nn.Module):
    """One first hidden layer per input, concatenation, then ``hidden_dims[1:]``."""

    def __init__(self, input_dims, hidden_dims, gated):
        super().__init__()
        self.branches = nn.ModuleList(MLP(d, hidden_dims[:1], gated) for d in input_dims)
        self.joint = MLP(len(input_dims) * hidden_dims[0], hidden_dims[1:], gated)
        # One hidden layer: the concatenation itself feeds the head.
        self.out_features = (hidden_dims[-1] if len(hidden_dims) > 1
                             else len(input_dims) * hidden_dims[0])

    def forward(self, *inputs):
        if len(inputs) != len(self.branches):
            raise TypeError(
                f"expected {len(self.branches)} input tensor(s); got {len(inputs)}."
            )
        hs = [branch(x) for branch, x in zip(self.branches, inputs)]
        if len(hs) > 1:
            # x is (N, D) while z2 may carry extra leading sample dims (S, N, L): broadcast
            # the (cheap) hidden activations, not the inputs.
            hs = torch.broadcast_tensors(*hs)
        return self.joint(torch.cat(hs, dim=-1))


class ConditionalGaussian(nn.Module):
    """Diagonal Gaussian :math:`N(loc(u), diag\\, scale(u)^2)` of inputs
    :math:`u = (u_1, \\dots, u_m)`.

    The log-variance is clamped to ``[logvar_min, logvar_max]`` (hardtanh, the reference's
    [-6, 2]), so the scale lies in about [0.05, 2.7].

    Example::

        >>> q_z1 = ConditionalGaussian((784, 40), 40)  # q(z1 | x, z2)
        >>> loc, scale = q_z1(torch.rand(5, 784), torch.randn(5, 40))
        >>> loc.shape, scale.shape
        (torch.Size([5, 40]), torch.Size([5, 40]))

    :param input_dims: an int or a tuple of ints, the sizes of the inputs in call order.
    :param int latent_dim: L, the size of the Gaussian.
    :param hidden_dims: hidden widths; the first layer is per input (see the module doc).
    :param bool gated: gated dense units (default, as the reference) or ReLU layers.
    :returns: ``forward(*inputs)`` maps inputs ``(..., input_dims[i])`` (broadcastable batch
        shapes) to ``(loc, scale)``, each ``(..., L)``.
    """

    def __init__(self, input_dims, latent_dim=40, hidden_dims=(300, 300), gated=True,
                 logvar_min=-6.0, logvar_max=2.0):
        super().__init__()
        self.input_dims = check_dims("input_dims", input_dims)
        self.latent_dim = check_dims("latent_dim", latent_dim)[0]
        hidden_dims = check_dims("hidden_dims", hidden_dims)
        # What LearnedVampPrior reads off its encoder (input_dims[0] for one input, else None).
        self.input_dim = self.input_dims[0] if len(self.input_dims) == 1 else None
        self.logvar_min, self.logvar_max = float(logvar_min), float(logvar_max)
        self.body = _MultiInputBody(self.input_dims, hidden_dims, gated)
        # loc and log-variance heads share one matrix product.
        self.head = _he_normal_(nn.Linear(self.body.out_features, 2 * self.latent_dim))

    def forward(self, *inputs):
        loc, logvar = self.head(self.body(*inputs)).chunk(2, dim=-1)
        logvar = logvar.clamp(self.logvar_min, self.logvar_max)
        return loc, torch.exp(0.5 * logvar)


class MultiInputDecoder(nn.Module):
    """Maps latents ``(z_1, z_2)`` (or any inputs) to the parameters of
    :math:`p(x \\mid z_1, z_2)`, shape ``(..., P * D)``.

    Example::

        >>> dec = MultiInputDecoder((40, 40), 784)
        >>> dec(torch.randn(5, 40), torch.randn(5, 40)).shape
        torch.Size([5, 784])

    :param input_dims: sizes of the inputs in call order, ``(L1, L2)`` for the HVAE.
    :param int output_dim: D.
    :param hidden_dims: hidden widths; the first layer is per input.
    :param int params_per_pixel: P, 1 for :func:`~ppl_vae.pyro.bernoulli` (logits), 2 for
        :func:`~ppl_vae.pyro.discretized_logistic`.
    """

    def __init__(self, input_dims=(40, 40), output_dim=784, hidden_dims=(300, 300), gated=True,
                 params_per_pixel=1):
        super().__init__()
        self.input_dims = check_dims("input_dims", input_dims)
        self.output_dim = check_dims("output_dim", output_dim)[0]
        self.params_per_pixel = check_dims("params_per_pixel", params_per_pixel)[0]
        hidden_dims = check_dims("hidden_dims", hidden_dims)
        self.body = _MultiInputBody(self.input_dims, hidden_dims, gated)
        self.head = _he_normal_(nn.Linear(self.body.out_features,
                                          self.params_per_pixel * self.output_dim))

    def forward(self, *inputs):
        return self.head(self.body(*inputs))


@torch.no_grad()
def hvae_posterior_means(encoder, z1_encoder, x, num_samples=100, batch_size=1000,
                         generator=None):
    """Posterior means of both latent layers, for active units (:mod:`ppl_vae.metrics`).

    .. math::

        E_q[z_2 \\mid x] = loc_2(x), \\qquad
        E_q[z_1 \\mid x] = E_{q(z_2 \\mid x)}\\big[loc_1(x, z_2)\\big]
                        \\approx \\frac1S \\sum_{s=1}^S loc_1(x, z_2^{(s)}).

    The z1 mean is a Monte Carlo average over ``num_samples`` draws of z2 (unbiased; its
    noise adds about ``Var_q[loc_1] / S`` to each dimension's variance across x).
    ``num_samples=None`` plugs in z2's mean instead (deterministic, biased when ``loc_1`` is
    non-linear in z2).

    :param encoder: q(z2 | x), maps ``(N, D)`` to ``(loc, scale)`` ``(N, L2)``.
    :param z1_encoder: q(z1 | x, z2), maps ``(N, D), (S, N, L2)`` to ``(loc, scale)``.
    :param x: ``(N, D)`` tensor or array.
    :param int num_samples: S, or None for the plug-in estimate.
    :returns: ``(z1_means, z2_means)``, NumPy arrays ``(N, L1)`` and ``(N, L2)``.
    """
    check_int("num_samples", num_samples, allow_none=True)
    check_int("batch_size", batch_size)
    x = torch.as_tensor(x if torch.is_tensor(x) else np.asarray(x))
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, D); got {tuple(x.shape)}.")
    # The encoder's dtype and device, when it has parameters; else x's own float dtype.
    param = next(encoder.parameters(), None) if isinstance(encoder, nn.Module) else None
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    elif not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    z1_means, z2_means = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]  # (n, D)
        loc2, scale2 = encoder(xb)  # (n, L2)
        if num_samples is None:
            z1 = z1_encoder(xb, loc2)[0]
        else:
            eps = torch.randn((num_samples,) + loc2.shape, dtype=loc2.dtype,
                              device=loc2.device, generator=generator)
            z1 = z1_encoder(xb, loc2 + scale2 * eps)[0].mean(0)  # (S, n, L1) -> (n, L1)
        z1_means.append(z1.cpu().numpy())
        z2_means.append(loc2.cpu().numpy())
    return np.concatenate(z1_means), np.concatenate(z2_means)
