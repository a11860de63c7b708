"""Importance-sampled marginal log-likelihood for any model/guide pair.

.. math::

    \\log p(x) \\approx \\log \\frac1S \\sum_{s=1}^S
        \\frac{p(x, z_s)}{q(z_s \\mid x)}, \\qquad z_s \\sim q(z \\mid x),

per example, as in Burda et al. (2016) and Tomczak & Welling (2018) (S = 5000). The model and
guide must follow the plate convention: every sample site lies in the plate ``"data"`` at
dim -1 and the first argument is the data batch. The S particles are drawn vectorised in an
outer plate at dim -2, in chunks of at most ``batch_size`` (example, particle) pairs, so memory
is bounded by ``batch_size`` whatever N and S are.

**Chunk size.** On a CPU the default is small, :data:`CPU_BATCH_SIZE` = 1000 pairs: the
decoder's ``(pairs, D)`` activations (3 MB for MNIST) then stay in cache, and every
elementwise pass (gates, the Bernoulli softplus, the log-sum-exp over the K components) reads
cache instead of memory. With 20000 pairs (63 MB per activation) the same evaluation took
1.3-1.5x as long on a 2-core CPU (``benchmarks/evaluate_speed.py --batch-size``). On a GPU
the default is :data:`ACCELERATOR_BATCH_SIZE` = 20000 pairs, to keep it busy.

**Chunks have their own seeds.** Chunk ``i`` draws its samples from a generator seeded with
``seed + i``, where ``seed`` is drawn once from torch's generator when the evaluation starts
(as NumPyro's chunk ``i`` uses ``fold_in(rng_key, i)``). So the results do not depend on what
the caller draws between chunks, and with ``distributed=True`` the chunks are dealt out
round-robin over the ranks of the process group (chunk ``i`` on rank ``i % world_size``;
:mod:`ppl_vae.pyro.distributed`), each computed exactly as a single process computes it: the
gathered result equals the single-process one, bit for bit on the same hardware.
"""

import contextlib
import math

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy.special import logsumexp

from ppl_vae._checks import check_data, check_int
from ppl_vae.pyro import distributed as _dist
from ppl_vae.pyro.priors import _cached_priors
from ppl_vae.pyro.validation import check_model_on_data

__all__ = ["importance_log_weights", "importance_log_likelihood", "log_weight_chunks",
           "CPU_BATCH_SIZE", "ACCELERATOR_BATCH_SIZE"]

_PARTICLES = "_ppl_vae_particles"

CPU_BATCH_SIZE = 1000
ACCELERATOR_BATCH_SIZE = 20000


def _default_batch_size(data, device):
    target = torch.device(device) if device is not None else data.device
    return CPU_BATCH_SIZE if target.type == "cpu" else ACCELERATOR_BATCH_SIZE


def _check_args(data, num_samples, batch_size, device):
    check_data("data", data, matrix=False)
    if not torch.is_tensor(data):
        data = torch.as_tensor(np.asarray(data))
    data = data.to(dtype=torch.get_default_dtype())  # float64 and integer data like NumPyro's
    if batch_size is None:
        batch_size = _default_batch_size(data, device)
    check_int("num_samples", num_samples)
    check_int("batch_size", batch_size)
    return data, batch_size


def _site_log_prob(site, num_particles, num_examples):
    log_prob = site["fn"].log_prob(site["value"])
    if log_prob.shape != (num_particles, num_examples):
        raise ValueError(
            f"site {site['name']!r} has log_prob shape {tuple(log_prob.shape)}; expected "
            f"({num_particles}, {num_examples}): importance_log_likelihood needs every sample "
            "site inside the plate 'data' at dim -1 (one log-density per example)."
        )
    return log_prob


def _log_weights(model, guide, x, num_particles, args, kwargs):
    """(num_particles, len(x)) log p(x, z) - log q(z | x) for z ~ q, one vectorised pass."""
    particles = pyro.plate(_PARTICLES, num_particles, dim=-2)
    guide_trace = poutine.trace(particles(guide)).get_trace(x, *args, **kwargs)
    model_trace = poutine.trace(
        poutine.replay(particles(model), trace=guide_trace)
    ).get_trace(x, *args, **kwargs)
    log_w = 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            log_w = log_w + _site_log_prob(site, num_particles, len(x))
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            log_w = log_w - _site_log_prob(site, num_particles, len(x))
    return log_w


def log_weight_chunks(model, guide, data, *args, num_samples=5000, batch_size=None,
                      device=None, distributed=False, **kwargs):
    """Yield ``(rows, log_w)``: a slice of example indices and their ``(n, num_samples)``
    log importance weights, chunk by chunk (the streaming core of the two functions below).

    With ``distributed=True`` only this rank's chunks (chunk ``i`` on rank
    ``i % world_size``); :func:`ppl_vae.pyro.distributed.gather_rows` assembles per-example
    results computed from them.
    """
    data, batch_size = _check_args(data, num_samples, batch_size, device)
    # validated now, not at the first chunk: the generator below runs lazily
    check_model_on_data(model, guide, data.to(device) if device is not None else data, "data",
                        *args, **kwargs)
    rank, world = _dist.initialize(device or data.device) if distributed else (0, 1)
    seed = torch.randint(0, 2**62, ())  # the chunks' seeds: seed, seed + 1, ...
    if distributed:  # every rank the same seeds, whatever each drew before
        seed = _dist.broadcast_(seed)
    return _chunks(model, guide, data, args, kwargs, num_samples, batch_size, device,
                   int(seed), rank, world)


@contextlib.contextmanager
def _seeded(seed, device):
    """torch's generator for ``device`` seeded with ``seed``, restored on exit."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _chunks(model, guide, data, args, kwargs, num_samples, batch_size, device, seed, rank,
            world):
    examples_per_chunk = max(1, batch_size // num_samples)
    particles_per_chunk = min(num_samples, batch_size)
    priors = {}  # each Prior's distribution, built once for the whole evaluation
    for i, start in enumerate(range(0, len(data), examples_per_chunk)):
        if i % world != rank:
            continue
        rows = slice(start, min(start + examples_per_chunk, len(data)))
        x = data[rows].to(device) if device is not None else data[rows]
        pieces = []
        # Entered per chunk, not around the loop: the caller runs between yields, and must
        # find neither the cache nor no-grad mode switched on.
        with _cached_priors(priors), _seeded(seed + i, x.device):
            for s in range(0, num_samples, particles_per_chunk):
                n = min(particles_per_chunk, num_samples - s)
                pieces.append(_log_weights(model, guide, x, n, args, kwargs))
        yield rows, torch.cat(pieces, dim=0).T  # (n, S)


def importance_log_weights(model, guide, data, *args, num_samples=5000, batch_size=None,
                           device=None, distributed=False, **kwargs):
    """The ``(N, num_samples)`` matrix of log importance weights
    ``log p(x_n, z_ns) - log q(z_ns | x_n)`` as a NumPy array (for Pareto k-hat diagnostics).

    Arguments as for :func:`importance_log_likelihood`.
    """
    chunks = log_weight_chunks(model, guide, data, *args, num_samples=num_samples,
                               batch_size=batch_size, device=device, distributed=distributed,
                               **kwargs)
    if distributed:
        return _dist.gather_rows(((rows, log_w.double().cpu().numpy()) for rows, log_w in chunks),
                                 len(data), (num_samples,))
    out = np.empty((len(data), num_samples), dtype=np.float64)
    for rows, log_w in chunks:
        out[rows] = log_w.double().cpu().numpy()
    return out


def importance_log_likelihood(model, guide, data, *args, num_samples=5000, batch_size=None,
                              device=None, return_log_weights=False, distributed=False,
                              **kwargs):
    """Per-example importance-sampled estimate of log p(x), a NumPy array of shape ``(N,)``.

    Example::

        ll = importance_log_likelihood(model, guide, x_test, num_samples=5000)
        print(ll.mean())  # nats per example

    :param model: a Pyro model ``model(x, *args, **kwargs)`` following the plate convention.
    :param guide: its guide, same signature.
    :param data: ``(N, ...)`` tensor or array of examples.
    :param int num_samples: S, importance samples per example (5000 in the paper).
    :param int batch_size: the most (example, sample) pairs evaluated at once; bounds memory.
        Default (None): :data:`CPU_BATCH_SIZE` on a CPU, :data:`ACCELERATOR_BATCH_SIZE`
        otherwise.
    :param device: where to move each chunk of data (default: leave it where it is).
    :param bool return_log_weights: also return the ``(N, S)`` log-weights.
    :param bool distributed: split the chunks over the ranks of the process group (made from
        ``torchrun``'s environment if there is none) and gather the result on every rank: the
        same array as a single process's.
    :returns: ``log_px`` ``(N,)`` float64, or ``(log_px, log_weights)``.
    """
    if return_log_weights:
        log_w = importance_log_weights(model, guide, data, *args, num_samples=num_samples,
                                       batch_size=batch_size, device=device,
                                       distributed=distributed, **kwargs)
        return _logmeanexp_np(log_w), log_w
    chunks = ((rows, _logmeanexp_np(log_w.double().cpu().numpy())) for rows, log_w in
              log_weight_chunks(model, guide, data, *args, num_samples=num_samples,
                                batch_size=batch_size, device=device, distributed=distributed,
                                **kwargs))
    if distributed:
        return _dist.gather_rows(chunks, len(data))
    out = np.empty(len(data), dtype=np.float64)
    for rows, log_px in chunks:
        out[rows] = log_px
    return out


def _logmeanexp_np(log_w):
    """log of the mean of exp(log_w) along the samples axis: (N, S) -> (N,)."""
    return logsumexp(log_w, axis=1) - math.log(log_w.shape[1])
