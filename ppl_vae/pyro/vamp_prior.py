"""The VampPrior as a Pyro distribution.

The VampPrior (Tomczak & Welling, 2018) is the aggregate posterior of the encoder evaluated at
K learned pseudo-inputs :math:`u_1, \\dots, u_K`:

.. math::

    p_\\lambda(z) = \\frac{1}{K} \\sum_{k=1}^K q_\\phi(z \\mid u_k)
                 = \\frac{1}{K} \\sum_{k=1}^K \\mathcal{N}(z; \\mu_k, \\operatorname{diag} \\sigma_k^2).

The distribution holds the component parameters ``(mu_k, sigma_k)`` only; networks live in the
model, which builds the distribution with :func:`vamp_prior` (see :mod:`ppl_vae.pyro.priors`).
"""

import math

import torch
from pyro.distributions import TorchDistribution, constraints

from ppl_vae.pyro._mixture_math import diag_normal_mixture_log_prob
from ppl_vae.pyro._numerics import flush_negligible_grad

__all__ = ["VampPrior", "vamp_prior"]


class VampPrior(TorchDistribution):
    """Uniform mixture of K diagonal Gaussians over :math:`z \\in \\mathbb{R}^L`.

    .. math::

        \\log p(z) = \\operatorname{logsumexp}_k \\log \\mathcal{N}(z; \\mu_k,
                      \\operatorname{diag} \\sigma_k^2) - \\log K

    The log-density is computed with matrix products, never a ``(N, K, L)`` intermediate,
    is accurate (value and gradients) next to a component centre in float32, and is stable far
    from every component and for K in the thousands
    (:func:`~ppl_vae.pyro._mixture_math.diag_normal_mixture_log_prob`).

    The parameters may carry batch dimensions, ``batch_shape + (K, L)``, one mixture per batch
    element; :meth:`expand` shares the components among new batch elements without copying
    them, so that ``pyro.plate`` costs nothing.

    Example::

        >>> import torch
        >>> p = VampPrior(torch.zeros(3, 2), torch.ones(3, 2))
        >>> p.event_shape, p.batch_shape
        (torch.Size([2]), torch.Size([]))
        >>> float(p.log_prob(torch.zeros(2)))  # == log N(0; 0, I) in 2-D
        -1.8378770351409912
        >>> p.expand([5]).log_prob(torch.zeros(2)).shape
        torch.Size([5])

    :param torch.Tensor component_loc: component means :math:`\\mu_k`, shape ``(K, L)``, or
        ``batch_shape + (K, L)``.
    :param torch.Tensor component_scale: component standard deviations :math:`\\sigma_k > 0`,
        shape ``(K, L)``, or ``batch_shape + (K, L)`` (broadcastable with ``component_loc``'s).
    :param bool validate_args: as for every torch distribution.

    References:

    [1] J. M. Tomczak, M. Welling. VAE with a VampPrior. AISTATS 2018.
    """

    arg_constraints = {
        "component_loc": constraints.independent(constraints.real, 2),
        "component_scale": constraints.independent(constraints.positive, 2),
    }
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, component_loc, component_scale, validate_args=None):
        if not (torch.is_tensor(component_loc) and torch.is_tensor(component_scale)):
            raise TypeError(
                "VampPrior expects torch tensors for component_loc and component_scale; got "
                f"{type(component_loc).__name__} and {type(component_scale).__name__}."
            )
        batch_shape, event_shape = self.infer_shapes(component_loc.shape, component_scale.shape)
        if component_loc.shape[-2] == 0:
            raise ValueError("VampPrior needs at least one component (K >= 1); got K = 0.")
        components = batch_shape + component_loc.shape[-2:]
        if component_loc.shape != component_scale.shape:  # views, no copies
            component_loc = component_loc.expand(components)
            component_scale = component_scale.expand(components)
        self.component_loc = component_loc
        self.component_scale = component_scale
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @classmethod
    def infer_shapes(cls, component_loc, component_scale):
        """``(batch_shape, event_shape)`` of a VampPrior with parameters of these shapes."""
        loc_shape, scale_shape = torch.Size(component_loc), torch.Size(component_scale)
        if len(loc_shape) < 2 or loc_shape[-2:] != scale_shape[-2:]:
            raise ValueError(
                "VampPrior expects component_loc and component_scale of the same shape (K, L), "
                f"or batch_shape + (K, L); got component_loc {tuple(loc_shape)} and "
                f"component_scale {tuple(scale_shape)}."
            )
        try:
            batch_shape = torch.broadcast_shapes(loc_shape[:-2], scale_shape[:-2])
        except RuntimeError:
            raise ValueError(
                "VampPrior expects component_loc and component_scale with broadcastable batch "
                f"shapes; got component_loc {tuple(loc_shape)} and component_scale "
                f"{tuple(scale_shape)}."
            ) from None
        return batch_shape, loc_shape[-1:]

    @property
    def num_components(self):
        return self.component_loc.shape[-2]

    def expand(self, batch_shape, _instance=None):
        # The default expand wraps the distribution in ExpandedDistribution, behind which a KL
        # registered for VampPrior is never found. The components are shared by the new batch
        # elements: only the batch shape is recorded, after the same check as Normal's.
        batch_shape = torch.Size(batch_shape)
        _check_expand(self.batch_shape, batch_shape)
        new = self._get_checked_instance(VampPrior, _instance)
        new.component_loc = self.component_loc
        new.component_scale = self.component_scale
        super(VampPrior, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        # A component 87-103 nats below the best one at every point of the batch gets a
        # gradient made of subnormal responsibilities; cut it to zero here, before it runs
        # back through the encoder's pass over the pseudo-inputs (see ppl_vae.pyro._numerics).
        log_p = diag_normal_mixture_log_prob(
            value, flush_negligible_grad(self.component_loc),
            flush_negligible_grad(self.component_scale),
        ) - math.log(self.num_components)
        # Values without the batch dimensions broadcast against the batch, as in Pyro.
        shape = torch.broadcast_shapes(log_p.shape, self.batch_shape)
        return log_p if log_p.shape == shape else log_p.expand(shape)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)  # sample_shape + batch_shape + (L,)
        with torch.no_grad():
            loc, scale = self.component_loc, self.component_scale
            k = torch.randint(self.num_components, shape[:-1], device=loc.device)
            if loc.dim() > 2:  # one mixture per batch element: pick within each
                components = shape[:-1] + loc.shape[-2:]
                index = k[..., None, None].expand(shape[:-1] + (1, shape[-1]))
                loc = loc.expand(components).gather(-2, index).squeeze(-2)
                scale = scale.expand(components).gather(-2, index).squeeze(-2)
            else:
                loc, scale = loc[k], scale[k]
            return loc + scale * torch.randn(shape, dtype=loc.dtype, device=loc.device)

    @property
    def mean(self):
        return self.component_loc.mean(-2).expand(self.batch_shape + self.event_shape)

    @property
    def variance(self):
        # Law of total variance: E_k[sigma_k^2] + Var_k[mu_k].
        second_moment = (self.component_scale**2 + self.component_loc**2).mean(-2)
        var = second_moment - self.component_loc.mean(-2) ** 2
        return var.expand(self.batch_shape + self.event_shape)


def _check_expand(batch_shape, new_shape):
    """Refuse what torch refuses for a tensor: dropping a batch dimension, or changing one
    whose size is not 1."""
    if len(new_shape) < len(batch_shape) or any(
        old not in (1, new) for old, new in zip(reversed(batch_shape), reversed(new_shape))
    ):
        raise ValueError(
            f"Cannot broadcast distribution of shape {tuple(batch_shape)} to shape "
            f"{tuple(new_shape)}: VampPrior.expand keeps every batch dimension and can only "
            "grow those of size 1."
        )


def vamp_prior(encoder, pseudo_inputs, validate_args=None):
    """Build the :class:`VampPrior` of ``encoder`` at ``pseudo_inputs``.

    :param encoder: a callable mapping ``(K, D)`` inputs to ``(loc, scale)``, each ``(K, L)``.
    :param torch.Tensor pseudo_inputs: the K pseudo-inputs, shape ``(K, D)``.
    :rtype: VampPrior
    """
    if not torch.is_tensor(pseudo_inputs) or pseudo_inputs.dim() != 2:
        raise ValueError(
            "pseudo_inputs must be a tensor of shape (K, D); got "
            f"{tuple(pseudo_inputs.shape) if torch.is_tensor(pseudo_inputs) else type(pseudo_inputs).__name__}."
        )
    loc, scale = encoder(pseudo_inputs)
    return VampPrior(loc, scale, validate_args=validate_args)
