"""Observation models p(x | z): functions from decoder outputs to a distribution (NumPyro).

Mirror of :mod:`ppl_vae.pyro.likelihoods`. A likelihood is handed to the model as an object
(``likelihood=bernoulli``); each returns a distribution with event shape ``(D,)`` so that the
model's ``"x"`` site sits in the ``"data"`` plate with one log-density per example.
"""

import jax.numpy as jnp
from jax import lax, random
from jax.nn import sigmoid, softplus
from numpyro.distributions import Bernoulli, Distribution, constraints
from numpyro.distributions.util import promote_shapes, validate_sample

__all__ = ["bernoulli", "discretized_logistic", "DiscretizedLogistic"]


def bernoulli(params):
    """Binary pixels: ``params`` are logits, shape ``(..., D)``."""
    return Bernoulli(logits=params).to_event(1)


bernoulli.params_per_pixel = 1


class DiscretizedLogistic(Distribution):
    """Logistic distribution discretised into ``num_bins`` equal bins on ``[0, 1]``.

    Grey levels ``x = i / (num_bins - 1)`` get the logistic mass of
    ``[x - h, x + h]`` with ``h = 1 / (2 (num_bins - 1))``; the two end bins take the tails, so
    the masses sum to one (the likelihood of PixelCNN++ and of the VampPrior reference for
    Frey Faces).

    :param jax.Array loc: location in [0, 1], shape ``batch_shape``.
    :param jax.Array scale: positive scale, shape ``batch_shape``.
    :param int num_bins: number of grey levels (static: not a pytree leaf).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    pytree_aux_fields = ("num_bins",)

    def __init__(self, loc, scale, num_bins=256, validate_args=None):
        self.loc, self.scale = promote_shapes(loc, scale)
        self.num_bins = int(num_bins)
        batch_shape = lax.broadcast_shapes(jnp.shape(loc), jnp.shape(scale))
        super().__init__(batch_shape, (), validate_args=validate_args)

    @validate_sample
    def log_prob(self, value):
        half_bin = 0.5 / (self.num_bins - 1)
        upper = (value + half_bin - self.loc) / self.scale
        lower = (value - half_bin - self.loc) / self.scale
        # sigmoid(u) - sigmoid(l) = sigmoid(u) * sigmoid(-l) * (1 - exp(l - u)), in logs with
        # softplus: stable in both tails.
        log_mass = -softplus(-upper) - softplus(lower) + jnp.log(-jnp.expm1(lower - upper))
        log_cdf_upper = -softplus(-upper)  # first bin: P(X < x + h)
        log_sf_lower = -softplus(lower)  # last bin: P(X > x - h)
        log_mass = jnp.where(value < half_bin, log_cdf_upper, log_mass)
        return jnp.where(value > 1 - half_bin, log_sf_lower, log_mass)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        loc, scale = lax.stop_gradient(self.loc), lax.stop_gradient(self.scale)
        u = jnp.clip(random.uniform(key, shape, dtype=jnp.result_type(loc)), 1e-6, 1 - 1e-6)
        x = loc + scale * (jnp.log(u) - jnp.log1p(-u))
        steps = self.num_bins - 1
        return jnp.round(jnp.clip(x, 0, 1) * steps) / steps


def discretized_logistic(params, num_bins=256):
    """Grey-level pixels in [0, 1]: ``params`` ``(..., 2D)`` are a location logit and a
    log-scale per pixel (log-scale clamped to [-4.5, 0] for stability)."""
    loc_logit, log_scale = jnp.split(params, 2, axis=-1)
    return DiscretizedLogistic(
        sigmoid(loc_logit), jnp.exp(jnp.clip(log_scale, -4.5, 0.0)), num_bins
    ).to_event(1)


discretized_logistic.params_per_pixel = 2
