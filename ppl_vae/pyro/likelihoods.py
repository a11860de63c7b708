"""Observation models p(x | z): functions from decoder outputs to a distribution.

A likelihood is handed to the model as an object (``likelihood=bernoulli``); each returns a
distribution with event shape ``(D,)`` so that the model's ``"x"`` site sits in the
``"data"`` plate with one log-density per example.
"""

import torch
import torch.nn.functional as F
from pyro.distributions import Bernoulli, Independent, TorchDistribution, constraints

__all__ = ["bernoulli", "discretized_logistic", "DiscretizedLogistic"]


class _BernoulliPixels(Independent):
    """``Bernoulli(logits).to_event(1)`` with a fused log-density.

    .. math:: \\log p(x) = \\sum_d x_d l_d - \\operatorname{softplus}(l_d)

    The data term is a batched dot product and the rest one elementwise pass; torch's
    ``binary_cross_entropy_with_logits`` behind ``Bernoulli.log_prob`` makes several
    image-sized temporaries, which dominated the 5000-sample evaluation. Same value for any
    ``x`` in [0, 1]; sampling and support are Pyro's ``Bernoulli``'s, and the data are
    validated against that support.
    """

    def __init__(self, logits, validate_args=None):
        # The data are validated (binary support) in log_prob; the logits are the decoder's
        # output, and checking S x N x D of them for NaN every chunk cost more than the
        # log-density itself (a NaN still shows up as a NaN loss, which fit() stops on).
        # Pyro's Independent takes its validation flag from the base distribution, so the
        # data check keeps a flag of its own (the global default unless told otherwise).
        super().__init__(Bernoulli(logits=logits, validate_args=False), 1)
        self._validate_data = (torch.distributions.Distribution._validate_args
                               if validate_args is None else validate_args)

    def expand(self, batch_shape, _instance=None):
        logits = self.base_dist.logits.expand(torch.Size(batch_shape) + self.event_shape)
        return _BernoulliPixels(logits, validate_args=self._validate_data)

    def log_prob(self, value):
        if self._validate_data:
            self._validate_sample(value)
        logits = self.base_dist.logits
        return torch.einsum("...d,...d->...", logits, value) - F.softplus(logits).sum(-1)


def bernoulli(params):
    """Binary pixels: ``params`` are logits, shape ``(..., D)``; event shape ``(D,)``."""
    return _BernoulliPixels(params)


bernoulli.params_per_pixel = 1


class DiscretizedLogistic(TorchDistribution):
    """Logistic distribution discretised into ``num_bins`` equal bins on ``[0, 1]``.

    Grey levels ``x = i / (num_bins - 1)`` get the logistic mass of
    ``[x - h, x + h]`` with ``h = 1 / (2 (num_bins - 1))``; the two end bins take the tails, so
    the masses sum to one (the likelihood of PixelCNN++ and of the VampPrior reference for
    Frey Faces).

    :param torch.Tensor loc: location in [0, 1], shape ``batch_shape``.
    :param torch.Tensor scale: positive scale, shape ``batch_shape``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(self, loc, scale, num_bins=256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.num_bins = int(num_bins)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.num_bins = self.num_bins
        super(DiscretizedLogistic, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        half_bin = 0.5 / (self.num_bins - 1)
        upper = (value + half_bin - self.loc) / self.scale
        lower = (value - half_bin - self.loc) / self.scale
        # log(sigmoid(upper) - sigmoid(lower)) = log sigmoid(upper) + log(1 - exp(-(upper-lower))
        # ... ) is stable when written with softplus: sigmoid(u) - sigmoid(l) =
        # sigmoid(u) * sigmoid(-l) * (1 - exp(l - u)).
        log_mass = (
            -F.softplus(-upper) - F.softplus(lower) + torch.log(-torch.expm1(lower - upper))
        )
        log_cdf_upper = -F.softplus(-upper)  # first bin: P(X < x + h)
        log_sf_lower = -F.softplus(lower)  # last bin: P(X > x - h)
        log_mass = torch.where(value < half_bin, log_cdf_upper, log_mass)
        return torch.where(value > 1 - half_bin, log_sf_lower, log_mass)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            x = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))
            steps = self.num_bins - 1
            return torch.round(x.clamp(0, 1) * steps) / steps


def discretized_logistic(params, num_bins=256):
    """Grey-level pixels in [0, 1]: ``params`` ``(..., 2D)`` are a location logit and a
    log-scale per pixel (log-scale clamped to [-4.5, 0] for stability)."""
    loc_logit, log_scale = params.chunk(2, dim=-1)
    return DiscretizedLogistic(
        torch.sigmoid(loc_logit), log_scale.clamp(-4.5, 0.0).exp(), num_bins
    ).to_event(1)


discretized_logistic.params_per_pixel = 2
