"""Priors p(z) as objects handed to a model (NumPyro).

Mirror of :mod:`ppl_vae.pyro.priors`. A prior is an object whose call registers its
parameters with NumPyro (by name, through ``numpyro.contrib.module.eqx_module``) and returns
a distribution with event shape ``(L,)``:

- :class:`StandardNormalPrior` -- ``N(0, I)``;
- :class:`MixtureOfGaussiansPrior` -- a mixture with learned weights, locations and scales
  (NumPyro's ``MixtureSameFamily``), registered as ``"prior"``;
- :class:`LearnedVampPrior` -- the VampPrior with K learned pseudo-inputs, initialised as the
  reference does (``N(0.05, 0.01)``, kept in [0, 1] by a hardtanh), registered as
  ``"encoder"`` and ``"pseudo_inputs"``;
- :func:`vamp_data_prior` -- the VampPrior-data: pseudo-inputs initialised from K training
  images plus ``N(0, 0.01)`` noise, still trainable.

Random initialisation takes an explicit ``rng_key`` where the Pyro half takes a torch
``generator``.

During evaluation the prior is fixed, so :func:`prior_cache` lets each prior build its
distribution once (for the VampPrior: encode the K pseudo-inputs once, not per chunk).
"""

import contextlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.contrib.module import eqx_module
from numpyro.distributions import Categorical, MixtureSameFamily, Normal

from ppl_vae._checks import check_int
from ppl_vae.numpyro._mixture_math import diag_normal_mixture_log_prob
from ppl_vae.numpyro.vamp_prior import vamp_prior

__all__ = [
    "Prior",
    "StandardNormalPrior",
    "MixtureOfGaussiansPrior",
    "LearnedVampPrior",
    "vamp_data_prior",
    "prior_cache",
]


class _Cache:
    def __init__(self, entries=None, keep_tracers=False):
        self.entries = {} if entries is None else entries  # id(prior) -> distribution
        self.keep_tracers = keep_tracers


_CACHE = None  # a _Cache while prior_cache() (or the private _cached_priors) is active


def _has_tracer(tree):
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


@contextlib.contextmanager
def prior_cache():
    """Within this context every :class:`Prior` builds its distribution once.

    Only valid while parameters do not change (evaluation). A distribution built inside a
    ``jax.jit`` trace holds tracers that must not outlive the trace, so this context only
    keeps distributions built eagerly; :mod:`ppl_vae.numpyro.evaluation` builds the priors
    once in a jitted call and hands the result to every chunk as an argument.
    """
    global _CACHE
    outer = _CACHE
    _CACHE = _Cache() if outer is None else outer
    try:
        yield
    finally:
        _CACHE = outer


@contextlib.contextmanager
def _cached_priors(entries=None):
    """Private: use (and fill) ``entries``, a dict ``id(prior) -> distribution``, including
    distributions made of tracers. The caller owns the lifetime of what it puts there, e.g.
    fills it inside one jitted function and passes it to another as a pytree argument."""
    global _CACHE
    outer = _CACHE
    _CACHE = _Cache({} if entries is None else dict(entries), keep_tracers=True)
    try:
        yield _CACHE.entries
    finally:
        _CACHE = outer


class Prior:
    """Base class: ``prior()`` registers parameters with NumPyro and returns p(z).

    Subclasses implement :meth:`register` (``eqx_module`` calls; returns the modules with the
    current parameter values) and :meth:`build` (the distribution, event shape
    ``(latent_dim,)``, from what :meth:`register` returned).
    """

    latent_dim: int

    def register(self):
        return None

    def build(self, modules):
        raise NotImplementedError

    def __call__(self):
        cache = _CACHE
        if cache is not None and id(self) in cache.entries:
            return cache.entries[id(self)]
        d = self.build(self.register())
        if cache is not None and (cache.keep_tracers or not _has_tracer(d)):
            cache.entries[id(self)] = d
        return d


def _check_key(name, rng_key):
    if rng_key is None:
        raise TypeError(
            f"{name} needs rng_key for its random initialisation: pass e.g. "
            "rng_key=jax.random.PRNGKey(0)."
        )
    return rng_key


class StandardNormalPrior(Prior):
    """:math:`p(z) = N(0, I_L)`. ``TraceMeanField_ELBO`` uses the analytic KL with it."""

    def __init__(self, latent_dim=40):
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.loc = jnp.zeros(latent_dim)

    def build(self, modules):
        return Normal(self.loc, jnp.ones_like(self.loc)).to_event(1)


class DiagonalNormalMixture(MixtureSameFamily):
    """NumPyro's ``MixtureSameFamily`` of diagonal Normals with the VampPrior's log-density:
    one matrix product instead of the ``(N, K, L)`` broadcast.

    :param logits: mixture logits, shape ``(K,)``.
    :param loc: component means, shape ``(K, L)``.
    :param scale: component standard deviations, shape ``(K, L)``.
    """

    pytree_data_fields = ("_component_params",)

    def __init__(self, logits, loc, scale, *, validate_args=None):
        self._component_params = (logits, loc, scale)
        super().__init__(Categorical(logits=logits), Normal(loc, scale).to_event(1),
                         validate_args=validate_args)

    def log_prob(self, value, intermediates=None):
        logits, loc, scale = self._component_params
        return diag_normal_mixture_log_prob(value, loc, scale, jax.nn.log_softmax(logits))


class _MixtureParams(eqx.Module):
    logits: jax.Array  # (K,)
    loc: jax.Array  # (K, L)
    log_scale: jax.Array  # (K, L)


class MixtureOfGaussiansPrior(Prior):
    """:math:`p(z) = \\sum_k \\pi_k N(z; m_k, diag\\, s_k^2)` with learned ``pi, m, s``.

    Registered with NumPyro as module ``"prior"`` (fields ``logits``, ``loc``,
    ``log_scale``).

    :param int num_components: K.
    :param float init_loc_scale: component locations start at ``N(0, init_loc_scale^2)``.
    :param rng_key: ``jax.random.PRNGKey`` for the initial locations (required).
    """

    def __init__(self, latent_dim=40, num_components=500, init_loc_scale=1.0, rng_key=None):
        self.latent_dim = check_int("latent_dim", latent_dim)
        num_components = check_int("num_components", num_components)
        rng_key = _check_key("MixtureOfGaussiansPrior", rng_key)
        self.params = _MixtureParams(
            logits=jnp.zeros(num_components),
            loc=init_loc_scale * random.normal(rng_key, (num_components, latent_dim)),
            log_scale=jnp.zeros((num_components, latent_dim)),
        )

    def register(self):
        return eqx_module("prior", self.params)

    def build(self, params):
        return DiagonalNormalMixture(params.logits, params.loc, jnp.exp(params.log_scale))


class PseudoInputs(eqx.Module):
    """K trainable pseudo-inputs, kept in ``[low, high]`` by a hardtanh as in the reference."""

    weight: jax.Array
    low: float = eqx.field(static=True)
    high: float = eqx.field(static=True)

    def __init__(self, init, low=0.0, high=1.0):
        self.weight = jnp.asarray(init)
        self.low, self.high = float(low), float(high)

    def __call__(self):
        return jnp.clip(self.weight, self.low, self.high)


class LearnedVampPrior(Prior):
    """VampPrior with learned pseudo-inputs: :math:`p(z) = \\frac1K \\sum_k q(z \\mid u_k)`.

    Registers the shared encoder as ``"encoder"`` (the guide's name, so both use one set of
    weights) and the pseudo-inputs as ``"pseudo_inputs"``.

    :param encoder: the guide's :class:`~ppl_vae.numpyro.nets.Encoder` (or any Equinox module
        mapping ``(K, D)`` to ``(loc, scale)``).
    :param int num_pseudo: K.
    :param int input_dim: D; defaults to ``encoder.input_dim``.
    :param init: optional ``(K, D)`` initial pseudo-inputs; by default
        ``N(init_loc, init_scale^2)`` drawn with ``rng_key``.
    :param rng_key: ``jax.random.PRNGKey``, required when ``init`` is None.
    """

    def __init__(self, encoder, num_pseudo=500, input_dim=None, init=None, init_loc=0.05,
                 init_scale=0.01, rng_key=None):
        num_pseudo = check_int("num_pseudo", num_pseudo)
        if input_dim is None:
            input_dim = getattr(encoder, "input_dim", None)
        input_dim = check_int("input_dim", input_dim)
        if init is None:
            rng_key = _check_key("LearnedVampPrior", rng_key)
            init = init_loc + init_scale * random.normal(rng_key, (num_pseudo, input_dim))
        elif tuple(np.shape(init)) != (num_pseudo, input_dim):
            raise ValueError(
                f"init must have shape (num_pseudo, input_dim) = ({num_pseudo}, {input_dim}); "
                f"got {tuple(np.shape(init))}."
            )
        self.encoder = encoder
        self.latent_dim = getattr(encoder, "latent_dim", None)
        # float32, or float64 under jax_enable_x64 (as the networks).
        self.pseudo_inputs = PseudoInputs(jnp.asarray(init, dtype=jnp.result_type(float)))

    @property
    def num_pseudo(self):
        return self.pseudo_inputs.weight.shape[0]

    def register(self):
        return eqx_module("encoder", self.encoder), eqx_module("pseudo_inputs", self.pseudo_inputs)

    def build(self, modules):
        encoder, pseudo_inputs = modules
        return vamp_prior(encoder, pseudo_inputs())


def vamp_data_prior(encoder, data, num_pseudo=500, noise_scale=0.01, rng_key=None):
    """VampPrior-data: pseudo-inputs start at the first ``num_pseudo`` rows of ``data``
    (training images, ``(N, D)``) plus ``N(0, noise_scale^2)`` noise (drawn with the
    required ``rng_key``), as in the reference."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"data must have shape (N, D); got {tuple(data.shape)}.")
    num_pseudo = check_int("num_pseudo", num_pseudo)
    if data.shape[0] < num_pseudo:
        raise ValueError(
            f"vamp_data_prior needs at least num_pseudo = {num_pseudo} rows of data; "
            f"got {data.shape[0]}."
        )
    rng_key = _check_key("vamp_data_prior", rng_key)
    init = jnp.asarray(data[:num_pseudo]) + noise_scale * random.normal(
        rng_key, (num_pseudo, data.shape[1])
    )
    return LearnedVampPrior(encoder, num_pseudo, data.shape[1], init=init)
