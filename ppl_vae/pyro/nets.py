"""Encoder and decoder networks (torch.nn), as in Tomczak & Welling (2018).

Both are plain multilayer perceptrons with two hidden layers of 300 units by default. With
``gated=True`` (the reference's choice and our default) each hidden layer is a gated dense
unit ``h = (W x + b) * sigmoid(V x + c)``; the two products are computed as one matrix
product with ``2 * width`` outputs. Weights are He-normal initialised as in the reference.
"""

import torch
from torch import nn

from ppl_vae._checks import check_dims

__all__ = ["GatedDense", "MLP", "Encoder", "Decoder"]


def _he_normal_(linear):
    nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
    nn.init.zeros_(linear.bias)
    return linear


class GatedDense(nn.Module):
    """``h = (W x + b) * sigmoid(V x + c)``, computed with one ``(in, 2 * out)`` matrix."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = _he_normal_(nn.Linear(in_features, 2 * out_features))

    def forward(self, x):
        h, gate = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(gate)


class MLP(nn.Sequential):
    """Hidden layers only: gated dense units, or ReLU layers when ``gated=False``."""

    def __init__(self, in_features, hidden_dims, gated=True):
        layers = []
        for width in hidden_dims:
            if gated:
                layers.append(GatedDense(in_features, width))
            else:
                layers += [_he_normal_(nn.Linear(in_features, width)), nn.ReLU()]
            in_features = width
        super().__init__(*layers)


class Encoder(nn.Module):
    """Amortised diagonal Gaussian :math:`q(z \\mid x) = N(loc(x), diag\\, scale(x)^2)`.

    The log-variance is clamped to ``[logvar_min, logvar_max]`` (hardtanh, as in the
    reference: [-6, 2]), which bounds the scale to about [0.05, 2.7].

    :param int input_dim: D, size of a flattened input.
    :param int latent_dim: L.
    :param hidden_dims: widths of the hidden layers, default ``(300, 300)``.
    :returns: ``forward(x)`` maps ``(..., D)`` to ``(loc, scale)``, each ``(..., L)``.
    """

    def __init__(self, input_dim=784, latent_dim=40, hidden_dims=(300, 300), gated=True,
                 logvar_min=-6.0, logvar_max=2.0):
        super().__init__()
        self.input_dim = check_dims("input_dim", input_dim)[0]
        self.latent_dim = check_dims("latent_dim", latent_dim)[0]
        hidden_dims = check_dims("hidden_dims", hidden_dims)
        self.logvar_min, self.logvar_max = float(logvar_min), float(logvar_max)
        self.body = MLP(self.input_dim, hidden_dims, gated)
        # loc and log-variance heads share one matrix product.
        self.head = nn.Linear(hidden_dims[-1], 2 * self.latent_dim)
        nn.init.kaiming_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        loc, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        logvar = logvar.clamp(self.logvar_min, self.logvar_max)
        return loc, torch.exp(0.5 * logvar)


class Decoder(nn.Module):
    """Maps a latent ``(..., L)`` to the parameters of :math:`p(x \\mid z)`, ``(..., P * D)``.

    :param int params_per_pixel: P, 1 for :func:`~ppl_vae.pyro.likelihoods.bernoulli` (logits),
        2 for :func:`~ppl_vae.pyro.likelihoods.discretized_logistic` (loc, log-scale).
    """

    def __init__(self, latent_dim=40, output_dim=784, hidden_dims=(300, 300), gated=True,
                 params_per_pixel=1):
        super().__init__()
        self.latent_dim = check_dims("latent_dim", latent_dim)[0]
        self.output_dim = check_dims("output_dim", output_dim)[0]
        self.params_per_pixel = check_dims("params_per_pixel", params_per_pixel)[0]
        hidden_dims = check_dims("hidden_dims", hidden_dims)
        self.body = MLP(self.latent_dim, hidden_dims, gated)
        self.head = nn.Linear(hidden_dims[-1], self.params_per_pixel * self.output_dim)
        nn.init.kaiming_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, z):
        return self.head(self.body(z))
