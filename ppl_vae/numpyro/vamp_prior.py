"""The VampPrior as a NumPyro distribution.

Mirror of :mod:`ppl_vae.pyro.vamp_prior`. The VampPrior (Tomczak & Welling, 2018) is the
aggregate posterior of the encoder evaluated at K learned pseudo-inputs
:math:`u_1, \\dots, u_K`:

.. math::

    p_\\lambda(z) = \\frac{1}{K} \\sum_{k=1}^K q_\\phi(z \\mid u_k)
                 = \\frac{1}{K} \\sum_{k=1}^K \\mathcal{N}(z; \\mu_k, \\operatorname{diag} \\sigma_k^2).

The distribution holds the component parameters ``(mu_k, sigma_k)`` only (it is a pytree of
two arrays, safe to pass through ``jax.jit`` and ``jax.vmap``); networks live in the model,
which builds the distribution with :func:`vamp_prior` (see :mod:`ppl_vae.numpyro.priors`).
"""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.batch_util import promote_batch_shape, vmap_over
from numpyro.distributions.util import validate_sample

from ppl_vae.numpyro._mixture_math import diag_normal_mixture_log_prob

__all__ = ["VampPrior", "vamp_prior"]


def _is_array(x):
    return isinstance(x, (jax.Array, np.ndarray))


class VampPrior(Distribution):
    """Uniform mixture of K diagonal Gaussians over :math:`z \\in \\mathbb{R}^L`.

    .. math::

        \\log p(z) = \\operatorname{logsumexp}_k \\log \\mathcal{N}(z; \\mu_k,
                      \\operatorname{diag} \\sigma_k^2) - \\log K

    The log-density is computed with matrix products, never a ``(N, K, L)`` intermediate,
    is accurate (value and gradients) next to a component centre in float32, and is stable far
    from every component and for K in the thousands
    (:func:`~ppl_vae.numpyro._mixture_math.diag_normal_mixture_log_prob`).

    The parameters may carry batch dimensions, ``batch_shape + (K, L)``, one mixture per batch
    element; :meth:`expand` shares the components among new batch elements without copying
    them, so that ``numpyro.plate`` costs nothing. The distribution is a pytree of its two
    arrays and works under ``jax.jit``, ``jax.vmap`` and ``numpyro.contrib.control_flow.scan``
    (``promote_batch_shape`` is registered for it).

    Example::

        >>> import jax.numpy as jnp
        >>> p = VampPrior(jnp.zeros((3, 2)), jnp.ones((3, 2)))
        >>> p.event_shape, p.batch_shape
        ((2,), ())
        >>> round(float(p.log_prob(jnp.zeros(2))), 5)  # == log N(0; 0, I) in 2-D
        -1.83788
        >>> p.expand((5,)).log_prob(jnp.zeros(2)).shape
        (5,)

    :param jax.Array component_loc: component means :math:`\\mu_k`, shape ``(K, L)``, or
        ``batch_shape + (K, L)``.
    :param jax.Array component_scale: component standard deviations :math:`\\sigma_k > 0`,
        shape ``(K, L)``, or ``batch_shape + (K, L)`` (broadcastable with ``component_loc``'s).
    :param bool validate_args: as for every NumPyro distribution.

    References:

    [1] J. M. Tomczak, M. Welling. VAE with a VampPrior. AISTATS 2018.
    """

    arg_constraints = {
        "component_loc": constraints.independent(constraints.real, 2),
        "component_scale": constraints.independent(constraints.positive, 2),
    }
    support = constraints.real_vector
    reparametrized_params = []
    # The parameters' own batch shape (static): expand() adds batch dimensions that the
    # parameters do not have, and jax.vmap / scan add leading ones that they do have;
    # promote_batch_shape needs to tell them apart.
    pytree_aux_fields = ("_component_batch_shape",)

    def __init__(self, component_loc, component_scale, validate_args=None):
        if not (_is_array(component_loc) and _is_array(component_scale)):
            raise TypeError(
                "VampPrior expects arrays for component_loc and component_scale; got "
                f"{type(component_loc).__name__} and {type(component_scale).__name__}."
            )
        batch_shape, event_shape = self.infer_shapes(
            jnp.shape(component_loc), jnp.shape(component_scale)
        )
        if jnp.shape(component_loc)[-2] == 0:
            raise ValueError("VampPrior needs at least one component (K >= 1); got K = 0.")
        components = batch_shape + jnp.shape(component_loc)[-2:]
        if jnp.shape(component_loc) != jnp.shape(component_scale):
            component_loc = jnp.broadcast_to(component_loc, components)
            component_scale = jnp.broadcast_to(component_scale, components)
        self.component_loc = component_loc
        self.component_scale = component_scale
        self._component_batch_shape = batch_shape
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @classmethod
    def infer_shapes(cls, component_loc, component_scale):
        """``(batch_shape, event_shape)`` of a VampPrior with parameters of these shapes."""
        loc_shape, scale_shape = tuple(component_loc), tuple(component_scale)
        if len(loc_shape) < 2 or loc_shape[-2:] != scale_shape[-2:]:
            raise ValueError(
                "VampPrior expects component_loc and component_scale of the same shape (K, L), "
                f"or batch_shape + (K, L); got component_loc {loc_shape} and "
                f"component_scale {scale_shape}."
            )
        try:
            batch_shape = lax.broadcast_shapes(loc_shape[:-2], scale_shape[:-2])
        except (TypeError, ValueError):
            raise ValueError(
                "VampPrior expects component_loc and component_scale with broadcastable batch "
                f"shapes; got component_loc {loc_shape} and component_scale {scale_shape}."
            ) from None
        return tuple(batch_shape), loc_shape[-1:]

    @property
    def num_components(self):
        return jnp.shape(self.component_loc)[-2]

    def expand(self, batch_shape):
        # The default expand wraps the distribution in ExpandedDistribution, behind which a KL
        # registered for VampPrior is never found. The components are shared by the new batch
        # elements: only the batch shape is recorded, after the same check as Normal's.
        batch_shape = tuple(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        if any(not isinstance(n, int) or n < 0 for n in batch_shape):
            raise ValueError(f"batch_shape must be a tuple of non-negative ints; got {batch_shape}.")
        _check_expand(self.batch_shape, batch_shape)
        # batch_shape is a pytree aux field: flatten/unflatten copies the arrays untouched.
        leaves, treedef = jax.tree_util.tree_flatten(self)
        new = jax.tree_util.tree_unflatten(treedef, leaves)
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _check_value(self, value):
        event_shape = self.event_shape
        if jnp.ndim(value) < 1 or jnp.shape(value)[-1:] != event_shape:
            raise ValueError(
                f"VampPrior.log_prob expects values of shape (..., {event_shape[0]}) to match "
                f"event_shape {event_shape}; got value shape {tuple(jnp.shape(value))}."
            )

    @validate_sample
    def log_prob(self, value):
        self._check_value(value)
        log_p = diag_normal_mixture_log_prob(
            value, self.component_loc, self.component_scale
        ) - math.log(self.num_components)
        # Values without the batch dimensions broadcast against the batch, as in NumPyro.
        shape = lax.broadcast_shapes(jnp.shape(log_p), self.batch_shape)
        return jnp.broadcast_to(log_p, shape)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        key_k, key_eps = random.split(key)
        loc = lax.stop_gradient(self.component_loc)
        scale = lax.stop_gradient(self.component_scale)
        k = random.randint(key_k, shape, 0, self.num_components)
        eps = random.normal(key_eps, shape + self.event_shape, dtype=jnp.result_type(loc))
        if jnp.ndim(loc) > 2:  # one mixture per batch element: pick within each
            rows = k.reshape(shape + (1, 1))
            pad = (1,) * (len(shape) + 2 - jnp.ndim(loc))
            loc = jnp.take_along_axis(loc.reshape(pad + jnp.shape(loc)), rows, axis=-2)[..., 0, :]
            scale = jnp.take_along_axis(
                scale.reshape(pad + jnp.shape(scale)), rows, axis=-2)[..., 0, :]
            return loc + scale * eps
        return loc[k] + scale[k] * eps

    @property
    def mean(self):
        return jnp.broadcast_to(
            self.component_loc.mean(-2), self.batch_shape + self.event_shape
        )

    @property
    def variance(self):
        # Law of total variance: E_k[sigma_k^2] + Var_k[mu_k].
        second_moment = (self.component_scale**2 + self.component_loc**2).mean(-2)
        var = second_moment - self.component_loc.mean(-2) ** 2
        return jnp.broadcast_to(var, self.batch_shape + self.event_shape)


def _check_expand(batch_shape, new_shape):
    """Refuse what NumPyro's ExpandedDistribution refuses: dropping a batch dimension, or
    changing one whose size is not 1."""
    if len(new_shape) < len(batch_shape) or any(
        old not in (1, new) for old, new in zip(reversed(batch_shape), reversed(new_shape))
    ):
        raise ValueError(
            f"Cannot broadcast distribution of shape {tuple(batch_shape)} to shape "
            f"{tuple(new_shape)}: VampPrior.expand keeps every batch dimension and can only "
            "grow those of size 1."
        )


@promote_batch_shape.register
def _promote_batch_shape_vamp_prior(d: VampPrior):
    # Leading dimensions that jax.vmap or scan stacked onto the parameters become leading
    # batch dimensions; dimensions that expand() added (absent from the parameters) get
    # size-1 axes in the parameters so that the two still broadcast.
    own = d._component_batch_shape
    new_dims = jnp.shape(d.component_loc)[: jnp.ndim(d.component_loc) - 2 - len(own)]
    if not new_dims:
        return d
    gap = (1,) * (len(d.batch_shape) - len(own))
    new = copy.copy(d)
    if gap:
        shape = new_dims + gap + jnp.shape(d.component_loc)[len(new_dims):]
        new.component_loc = jnp.reshape(d.component_loc, shape)
        new.component_scale = jnp.reshape(d.component_scale, shape)
    new._component_batch_shape = new_dims + gap + own
    new._batch_shape = new_dims + d.batch_shape
    return new


@vmap_over.register
def _vmap_over_vamp_prior(d: VampPrior, component_loc=None, component_scale=None):
    return vmap_over.dispatch(Distribution)(
        d, component_loc=component_loc, component_scale=component_scale
    )


def vamp_prior(encoder, pseudo_inputs, validate_args=None):
    """Build the :class:`VampPrior` of ``encoder`` at ``pseudo_inputs``.

    :param encoder: a callable mapping ``(K, D)`` inputs to ``(loc, scale)``, each ``(K, L)``.
    :param jax.Array pseudo_inputs: the K pseudo-inputs, shape ``(K, D)``.
    :rtype: VampPrior
    """
    if not _is_array(pseudo_inputs) or jnp.ndim(pseudo_inputs) != 2:
        raise ValueError(
            "pseudo_inputs must be an array of shape (K, D); got "
            f"{tuple(jnp.shape(pseudo_inputs)) if _is_array(pseudo_inputs) else type(pseudo_inputs).__name__}."
        )
    loc, scale = encoder(pseudo_inputs)
    return VampPrior(loc, scale, validate_args=validate_args)
