"""Importance-sampled marginal log-likelihood for any model/guide pair (NumPyro).

Mirror of :mod:`ppl_vae.pyro.evaluation`:

.. math::

    \\log p(x) \\approx \\log \\frac1S \\sum_{s=1}^S
        \\frac{p(x, z_s)}{q(z_s \\mid x)}, \\qquad z_s \\sim q(z \\mid x),

per example, as in Burda et al. (2016) and Tomczak & Welling (2018) (S = 5000). The model and
guide must follow the plate convention: every sample site lies in the plate ``"data"`` at
dim -1 and the first argument is the data batch. The S particles are drawn vectorised in an
outer plate at dim -2, in chunks of at most ``batch_size`` (example, particle) pairs, so memory
is bounded by ``batch_size`` whatever N and S are. Each chunk is one call of a jitted
function (the last chunk is padded, so it compiles once), compiled once per model, guide
and chunk shape: a second evaluation with the same model and guide objects reuses it.

**Chunk size.** On a CPU the default is small, :data:`CPU_BATCH_SIZE` = 1000 pairs: the
decoder's ``(pairs, D)`` activations (3 MB for MNIST) then stay in cache, and every
elementwise pass (gates, the Bernoulli softplus, the log-sum-exp over the K components) reads
cache instead of memory. With 20000 pairs (63 MB per activation) the same evaluation took
1.4-1.6x as long on a 2-core CPU (``benchmarks/evaluate_speed.py --batch-size``). On a GPU
the default is :data:`ACCELERATOR_BATCH_SIZE` = 20000 pairs, to keep it busy.

**Parameters.** NumPyro keeps no global parameter store: pass the trained values as
``params=`` (the dict of :class:`~ppl_vae.numpyro.FitResult`, ``svi.get_params(state)``),
which is substituted into both model and guide inside the jitted function (the values are
arguments, not compile-time constants). ``params=None`` evaluates the model and guide as
they are, e.g. already wrapped in ``numpyro.handlers.substitute(model, data=params)``, or
with the initial weights of their networks.

**Fixed work is done once.** Every :class:`~ppl_vae.numpyro.Prior` is built once per call
(for the VampPrior: the K pseudo-input encodings) by one jitted trace of the model on one
example; the resulting distributions are handed to each chunk as a pytree argument.

**Over several devices.** With ``distributed=True`` the chunks are dealt out round-robin
over ``jax.devices()`` (chunk ``i`` on device ``i % num_devices``; on several hosts each
process computes those of its own devices): every chunk is the same compiled function with
the same key as on one device, so the result equals the single-device one bit for bit
(:mod:`ppl_vae.numpyro.distributed`).
"""

import collections
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax import lax, random
from numpyro import handlers
from scipy.special import logsumexp

from ppl_vae._checks import check_data, check_int
from ppl_vae.numpyro import distributed as _dist
from ppl_vae.numpyro.priors import _cached_priors
from ppl_vae.numpyro.validation import check_model_on_data

__all__ = ["importance_log_weights", "importance_log_likelihood", "log_weight_chunks",
           "CPU_BATCH_SIZE", "ACCELERATOR_BATCH_SIZE"]

_PARTICLES = "_ppl_vae_particles"

CPU_BATCH_SIZE = 1000
ACCELERATOR_BATCH_SIZE = 20000


def _default_batch_size(device):
    platform = (device if device is not None else jax.devices()[0]).platform
    return CPU_BATCH_SIZE if platform == "cpu" else ACCELERATOR_BATCH_SIZE


def _check_key(rng_key):
    if not isinstance(rng_key, (jax.Array, np.ndarray)):
        raise TypeError(
            f"rng_key must be a jax.random.PRNGKey; got {type(rng_key).__name__}."
        )
    return rng_key


def _check_args(data, num_samples, batch_size, device):
    check_data("data", data, matrix=False)
    if hasattr(data, "detach"):  # a torch tensor
        data = data.detach().cpu().numpy()
    data = np.asarray(data).astype(jnp.result_type(float), copy=False)
    if batch_size is None:
        batch_size = _default_batch_size(device)
    check_int("num_samples", num_samples)
    check_int("batch_size", batch_size)
    return data, batch_size


def _bind(fn, params):
    return fn if params is None else handlers.substitute(fn, data=params)


def _site_log_prob(site, num_particles, num_examples):
    log_prob = site["fn"].log_prob(site["value"])
    if jnp.shape(log_prob) != (num_particles, num_examples):
        raise ValueError(
            f"site {site['name']!r} has log_prob shape {tuple(jnp.shape(log_prob))}; expected "
            f"({num_particles}, {num_examples}): importance_log_likelihood needs every sample "
            "site inside the plate 'data' at dim -1 (one log-density per example)."
        )
    return log_prob


def _log_weights(rng_key, model, guide, x, num_particles, args, kwargs):
    """(num_particles, len(x)) log p(x, z) - log q(z | x) for z ~ q, one vectorised pass."""

    def particles(fn):
        def wrapped(*a, **k):
            with numpyro.plate(_PARTICLES, num_particles, dim=-2):
                return fn(*a, **k)
        return wrapped

    key_guide, key_model = random.split(rng_key)
    guide_trace = handlers.trace(handlers.seed(particles(guide), key_guide)).get_trace(
        x, *args, **kwargs)
    model_trace = handlers.trace(
        handlers.replay(handlers.seed(particles(model), key_model), trace=guide_trace)
    ).get_trace(x, *args, **kwargs)
    log_w = 0.0
    for site in model_trace.values():
        if site["type"] == "sample":
            log_w = log_w + _site_log_prob(site, num_particles, len(x))
    for site in guide_trace.values():
        if site["type"] == "sample" and not site["is_observed"]:
            log_w = log_w - _site_log_prob(site, num_particles, len(x))
    return log_w


def _build_prior_cache(rng_key, model, params, x, args, kwargs):
    """Run the model once on ``x`` (one example) and return every Prior's distribution,
    ``{id(prior): distribution}`` (call it jitted: the result is a pytree)."""
    with _cached_priors() as entries:
        handlers.trace(handlers.seed(_bind(model, params), rng_key)).get_trace(
            x, *args, **kwargs)
    return entries


# Both jitted functions live at module level and are compiled by ``eqx.filter_jit``: arrays
# anywhere in the arguments (params, the prior cache, data, arrays in args/kwargs) are traced,
# everything else (model, guide, Python scalars) is static and part of the compilation key. So
# a second evaluation with the same model and guide objects and chunk shape reuses the
# compiled code instead of compiling again (a closure jitted per call recompiled every time:
# about 0.9 s per call on a 2-core CPU).
@eqx.filter_jit
def _prior_cache_jit(model, params, key, x, args, kwargs):
    return _build_prior_cache(key, model, params, x, args, kwargs)


@eqx.filter_jit
def _log_weight_chunk(model, guide, params, cache, key, x, args, kwargs, particles_per_chunk,
                      num_pieces, num_samples):
    m, g = _bind(model, params), _bind(guide, params)
    with _cached_priors(cache):
        log_w = lax.map(
            lambda k: _log_weights(k, m, g, x, particles_per_chunk, args, kwargs),
            random.split(key, num_pieces),
        )  # (pieces, P, n)
    log_w = log_w.reshape(num_pieces * particles_per_chunk, x.shape[0])[:num_samples]
    return log_w.T  # (n, S)


def log_weight_chunks(rng_key, model, guide, data, *args, num_samples=5000, batch_size=None,
                      params=None, device=None, distributed=False, **kwargs):
    """Yield ``(rows, log_w)``: a slice of example indices and their ``(n, num_samples)``
    log importance weights (NumPy), chunk by chunk (the streaming core of the two functions
    below). Chunk ``i`` uses the key ``fold_in(rng_key, i)``, so results do not depend on
    how the caller consumes the generator.

    With ``distributed=True`` chunk ``i`` runs on device ``i % len(jax.devices())`` and this
    process yields the chunks of its own devices (all of them on one host);
    :func:`ppl_vae.numpyro.distributed.gather_rows` assembles per-example results from
    several hosts.
    """
    _check_key(rng_key)
    if distributed and device is not None:
        raise ValueError(f"distributed=True runs on every device, jax.devices(); got device="
                         f"{device!r} too. Leave device None.")
    data, batch_size = _check_args(data, num_samples, batch_size, device)
    # validated now, not at the first chunk: the generator below runs lazily
    check_model_on_data(model, guide, data, "data", *args, params=params, **kwargs)
    if distributed:
        _dist.initialize()
    return _chunks(rng_key, model, guide, data, args, kwargs, num_samples, batch_size, params,
                   device, jax.devices() if distributed else None)


def _on(device, tree):
    """``tree``'s arrays on ``device`` (committed there); other leaves as they are."""
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, device) if isinstance(a, (jax.Array, np.ndarray)) else a,
        tree)


def _chunks(rng_key, model, guide, data, args, kwargs, num_samples, batch_size, params,
            device, devices=None):
    examples_per_chunk = max(1, batch_size // num_samples)
    particles_per_chunk = min(num_samples, batch_size)
    num_pieces = math.ceil(num_samples / particles_per_chunk)
    key_cache, key_chunks = random.split(rng_key)

    def put(x):
        return jax.device_put(x, device) if device is not None else jnp.asarray(x)

    cache = _prior_cache_jit(model, params, key_cache, put(data[:1]), args, kwargs)
    if devices is not None:  # every argument once on each of this process's devices
        local = {d: _on(d, (params, cache, args, kwargs)) for d in devices
                 if d.process_index == jax.process_index()}
    # Lag of one chunk per device: the next chunks are dispatched before this one is copied
    # to host.
    pending = collections.deque()
    for i, start in enumerate(range(0, len(data), examples_per_chunk)):
        rows = slice(start, min(start + examples_per_chunk, len(data)))
        x = data[rows]
        n = len(x)
        if n < examples_per_chunk:  # pad the last chunk: one compiled shape for all chunks
            x = np.concatenate([x, np.repeat(x[-1:], examples_per_chunk - n, axis=0)])
        if devices is None:
            out = _log_weight_chunk(model, guide, params, cache, random.fold_in(key_chunks, i),
                                    put(x), args, kwargs, particles_per_chunk, num_pieces,
                                    num_samples)
        else:
            target = devices[i % len(devices)]
            if target not in local:
                continue  # another host's device
            p, c, a, k = local[target]
            out = _log_weight_chunk(model, guide, p, c,
                                    jax.device_put(random.fold_in(key_chunks, i), target),
                                    jax.device_put(x, target), a, k, particles_per_chunk,
                                    num_pieces, num_samples)
        if len(pending) == (1 if devices is None else len(local)):
            rows_, out_, n_ = pending.popleft()
            yield rows_, np.asarray(out_)[:n_]
        pending.append((rows, out, n))
    while pending:
        rows_, out_, n_ = pending.popleft()
        yield rows_, np.asarray(out_)[:n_]


def importance_log_weights(rng_key, model, guide, data, *args, num_samples=5000,
                           batch_size=None, params=None, device=None, distributed=False,
                           **kwargs):
    """The ``(N, num_samples)`` matrix of log importance weights
    ``log p(x_n, z_ns) - log q(z_ns | x_n)`` as a NumPy array (for Pareto k-hat diagnostics).

    Arguments as for :func:`importance_log_likelihood`.
    """
    chunks = log_weight_chunks(rng_key, model, guide, data, *args, num_samples=num_samples,
                               batch_size=batch_size, params=params, device=device,
                               distributed=distributed, **kwargs)
    if distributed:
        return _dist.gather_rows(chunks, len(data), (num_samples,))
    out = np.empty((len(data), num_samples), dtype=np.float64)
    for rows, log_w in chunks:
        out[rows] = log_w
    return out


def importance_log_likelihood(rng_key, model, guide, data, *args, num_samples=5000,
                              batch_size=None, params=None, device=None,
                              return_log_weights=False, distributed=False, **kwargs):
    """Per-example importance-sampled estimate of log p(x), a NumPy array of shape ``(N,)``.

    Example::

        fitted = fit(random.PRNGKey(0), model, guide, x_train, x_valid)
        ll = importance_log_likelihood(random.PRNGKey(1), model, guide, x_test,
                                       num_samples=5000, params=fitted.params)
        print(ll.mean())  # nats per example

    :param rng_key: ``jax.random.PRNGKey`` for the importance samples.
    :param model: a NumPyro model ``model(x, *args, **kwargs)`` following the plate convention.
    :param guide: its guide, same signature.
    :param data: ``(N, ...)`` array of examples.
    :param int num_samples: S, importance samples per example (5000 in the paper).
    :param int batch_size: the most (example, sample) pairs evaluated at once; bounds memory.
        Default (None): :data:`CPU_BATCH_SIZE` on a CPU, :data:`ACCELERATOR_BATCH_SIZE`
        otherwise.
    :param dict params: parameter values by NumPyro param name, substituted into model and
        guide (e.g. ``FitResult.params``); None to run them as they are.
    :param device: a ``jax.Device`` to put each chunk of data on (default: JAX's default).
    :param bool return_log_weights: also return the ``(N, S)`` log-weights.
    :param bool distributed: deal the chunks out over every device (and host) and gather the
        result: the same array as on one device. Leave ``device`` None.
    :returns: ``log_px`` ``(N,)`` float64, or ``(log_px, log_weights)``.
    """
    if return_log_weights:
        log_w = importance_log_weights(rng_key, model, guide, data, *args,
                                       num_samples=num_samples, batch_size=batch_size,
                                       params=params, device=device, distributed=distributed,
                                       **kwargs)
        return _logmeanexp_np(log_w), log_w
    chunks = ((rows, _logmeanexp_np(log_w.astype(np.float64))) for rows, log_w in
              log_weight_chunks(rng_key, model, guide, data, *args, num_samples=num_samples,
                                batch_size=batch_size, params=params, device=device,
                                distributed=distributed, **kwargs))
    if distributed:
        return _dist.gather_rows(chunks, len(data))
    out = np.empty(len(data), dtype=np.float64)
    for rows, log_px in chunks:
        out[rows] = log_px
    return out


def _logmeanexp_np(log_w):
    """log of the mean of exp(log_w) along the samples axis: (N, S) -> (N,)."""
    return logsumexp(log_w, axis=1) - math.log(log_w.shape[1])
