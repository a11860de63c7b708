"""Priors p(z) as objects handed to a model (NumPyro).

Mirror of :mod:`ppl_vae.pyro.priors`. A prior is an object whose call registers its
parameters with NumPyro (by name, through ``numpyro.contrib.module``) and returns a
distribution with event shape ``(L,)``:

- :class:`StandardNormalPrior` -- ``N(0, I)``;
- :class:`MixtureOfGaussiansPrior` -- a mixture with learned weights, locations and scales
  (NumPyro's ``MixtureSameFamily``), registered as ``"prior"``;
- :class:`LearnedVampPrior` -- the VampPrior with K learned pseudo-inputs, initialised as the
  reference does (``N(0.05, 0.01)``, kept in [0, 1] by a hardtanh), registered as
  ``"pseudo_inputs"``, its encoder (Equinox, Flax NNX or Linen, stax, or a function) under
  the guide's name for it (``"encoder"`` by default);
- :func:`vamp_data_prior` -- the VampPrior-data: pseudo-inputs initialised from K training
  images plus ``N(0, 0.01)`` noise, still trainable.

Random initialisation takes an explicit ``rng_key`` where the Pyro half takes a torch
``generator``.

During evaluation the prior is fixed, so :func:`prior_cache` lets each prior build its
distribution once (for the VampPrior: encode the K pseudo-inputs once, not per chunk).
"""

import contextlib
import importlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax import random
from numpyro.contrib.module import eqx_module, flax_module, nnx_module
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


# The network kinds LearnedVampPrior takes, as NumPyro registers each (numpyro.contrib.module).
_NETWORK_KINDS = (
    "an Equinox module, a Flax NNX module, a Flax Linen module, a stax (init_fn, apply_fn) "
    "pair, or a function encode(pseudo_inputs) -> (loc, scale)"
)


def _flax(submodule):
    """``flax.nnx`` / ``flax.linen`` if the caller has imported Flax (a Flax network cannot
    exist otherwise), else None: Flax is never imported on ppl_vae's behalf."""
    if "flax" not in sys.modules:
        return None
    return importlib.import_module(f"flax.{submodule}")


def _network_kind(encoder):
    """``"equinox"``, ``"nnx"``, ``"linen"``, ``"stax"`` or ``"function"``; TypeError else."""
    if isinstance(encoder, eqx.Module):
        return "equinox"
    nnx = _flax("nnx")
    if nnx is not None and isinstance(encoder, nnx.Module):
        return "nnx"
    linen = _flax("linen")
    if linen is not None and isinstance(encoder, linen.Module):
        return "linen"
    if isinstance(encoder, tuple) and len(encoder) == 2 and all(map(callable, encoder)):
        return "stax"
    if callable(encoder) and not isinstance(encoder, (tuple, list)):
        return "function"
    raise TypeError(
        f"LearnedVampPrior's encoder must be {_NETWORK_KINDS}; got {_describe(encoder)}."
    )


def _describe(obj):
    name = type(obj).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if isinstance(obj, (tuple, list)):
        return f"{article} {name} of {len(obj)} ({', '.join(type(o).__name__ for o in obj)})"
    return f"{article} {name}"


_KIND_NAMES = {"equinox": "an Equinox module", "nnx": "a Flax NNX module",
               "linen": "a Flax Linen module", "stax": "a stax (init_fn, apply_fn) pair",
               "function": "a function"}


def _abstract_apply(kind, encoder, pseudo_inputs):
    """What the encoder returns on ``pseudo_inputs``, as shapes only (``jax.eval_shape``: no
    computation, no state touched; Linen and stax parameters are initialised abstractly)."""
    key = jax.random.PRNGKey(0)
    if kind == "nnx":
        nnx = _flax("nnx")
        graph, state = nnx.split(encoder)
        return jax.eval_shape(lambda state, u: nnx.merge(graph, state)(u), state, pseudo_inputs)
    if kind == "linen":
        return jax.eval_shape(lambda u: encoder.apply(encoder.init(key, u), u), pseudo_inputs)
    if kind == "stax":
        init_fn, apply_fn = encoder
        return jax.eval_shape(lambda u: apply_fn(init_fn(key, u.shape)[1], u), pseudo_inputs)
    return jax.eval_shape(encoder, pseudo_inputs)


def _check_encoder_output(kind, encoder, pseudo_inputs):
    """Run the encoder abstractly on the pseudo-inputs; return L, or raise naming what it
    returned and what is needed: ``(loc, scale)``, each ``(num_pseudo, latent_dim)``."""
    what = _KIND_NAMES[kind]
    try:
        out = _abstract_apply(kind, encoder, pseudo_inputs)
    except Exception as e:
        raise ValueError(
            f"LearnedVampPrior could not apply its encoder ({what}) to the pseudo-inputs, "
            f"shape (num_pseudo, input_dim) = {tuple(pseudo_inputs.shape)}: "
            f"{type(e).__name__}: {e}"
        ) from e
    shapes = [tuple(getattr(o, "shape", ())) for o in out] if isinstance(out, (tuple, list)) else None
    num_pseudo = pseudo_inputs.shape[0]
    if (shapes is None or len(shapes) != 2 or shapes[0] != shapes[1] or len(shapes[0]) != 2
            or shapes[0][0] != num_pseudo):
        got = (f"a {type(out).__name__} of shapes {shapes}" if shapes is not None
               else f"a {type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}")
        raise TypeError(
            f"LearnedVampPrior's encoder ({what}) must return (loc, scale), two arrays of shape "
            f"(num_pseudo, latent_dim), here ({num_pseudo}, L); on pseudo-inputs of shape "
            f"{tuple(pseudo_inputs.shape)} it returned {got}."
        )
    return shapes[0][1]


class LearnedVampPrior(Prior):
    """VampPrior with learned pseudo-inputs: :math:`p(z) = \\frac1K \\sum_k q(z \\mid u_k)`.

    Registers the encoder under ``name`` (the guide's name for it, so that guide and prior
    train one set of weights) and the pseudo-inputs as ``"pseudo_inputs"``. The encoder may
    be any of the network kinds NumPyro registers, each the way ``numpyro.contrib.module``
    does, so that a guide registering the same network under the same name shares it:

    ==========================================  ==================================================
    encoder                                     registered with
    ==========================================  ==================================================
    an Equinox module (e.g. ppl_vae's Encoder)  ``eqx_module(name, encoder)``
    a Flax NNX module                           ``nnx_module(name, encoder)``
    a Flax Linen module                         ``flax_module(name, encoder, input_shape=(1, D))``
    a stax ``(init_fn, apply_fn)`` pair         ``numpyro.module(name, encoder, (1, D))``
    a function ``encode(u) -> (loc, scale)``    nothing: its parameters are the caller's
    ==========================================  ==================================================

    The network must map the ``(K, D)`` pseudo-inputs to ``(loc, scale)``, each ``(K, L)``;
    anything else is refused here, at construction (checked with ``jax.eval_shape``, which
    computes nothing).

    Example (NumPyro's own VAE example's stax encoder, shared with a guide)::

        >>> from jax import random
        >>> from jax.example_libraries import stax
        >>> encoder = stax.serial(stax.Dense(16), stax.Softplus,
        ...                       stax.FanOut(2), stax.parallel(stax.Dense(2),
        ...                       stax.serial(stax.Dense(2), stax.Exp)))
        >>> prior = LearnedVampPrior(encoder, num_pseudo=5, input_dim=8, name="encoder",
        ...                          rng_key=random.PRNGKey(0))
        >>> prior.latent_dim
        2

    :param encoder: the guide's network, of one of the kinds above.
    :param int num_pseudo: K.
    :param int input_dim: D; defaults to ``encoder.input_dim``.
    :param init: optional ``(K, D)`` initial pseudo-inputs; by default
        ``N(init_loc, init_scale^2)`` drawn with ``rng_key``.
    :param rng_key: ``jax.random.PRNGKey``, required when ``init`` is None.
    :param str name: the name the encoder is registered under (default ``"encoder"``).
    """

    def __init__(self, encoder, num_pseudo=500, input_dim=None, init=None, init_loc=0.05,
                 init_scale=0.01, rng_key=None, *, name="encoder"):
        kind = _network_kind(encoder)
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str; got {name!r}.")
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
        # float32, or float64 under jax_enable_x64 (as the networks).
        self.pseudo_inputs = PseudoInputs(jnp.asarray(init, dtype=jnp.result_type(float)))
        self.encoder, self.name, self.kind = encoder, name, kind
        self.latent_dim = _check_encoder_output(kind, encoder, self.pseudo_inputs())

    @property
    def num_pseudo(self):
        return self.pseudo_inputs.weight.shape[0]

    @property
    def input_dim(self):
        return self.pseudo_inputs.weight.shape[1]

    def register(self):
        return self._register_encoder(), eqx_module("pseudo_inputs", self.pseudo_inputs)

    def _register_encoder(self):
        """The encoder with its current parameters, registered as NumPyro does for its kind."""
        input_shape = (1, self.input_dim)
        if self.kind == "equinox":
            return eqx_module(self.name, self.encoder)
        if self.kind == "nnx":
            return nnx_module(self.name, self.encoder)
        if self.kind == "linen":
            return flax_module(self.name, self.encoder, input_shape=input_shape)
        if self.kind == "stax":
            return numpyro.module(self.name, self.encoder, input_shape=input_shape)
        return self.encoder

    def build(self, modules):
        encoder, pseudo_inputs = modules
        return vamp_prior(encoder, pseudo_inputs())


def vamp_data_prior(encoder, data, num_pseudo=500, noise_scale=0.01, rng_key=None, *,
                    name="encoder"):
    """VampPrior-data: pseudo-inputs start at the first ``num_pseudo`` rows of ``data``
    (training images, ``(N, D)``) plus ``N(0, noise_scale^2)`` noise (drawn with the
    required ``rng_key``), as in the reference. ``encoder`` and ``name`` as for
    :class:`LearnedVampPrior`."""
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
    return LearnedVampPrior(encoder, num_pseudo, data.shape[1], init=init, name=name)
