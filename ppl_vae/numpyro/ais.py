"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for log p(x)
(NumPyro).

Mirror of :mod:`ppl_vae.pyro.ais`. For every example :math:`x_n`, AIS anneals from a
normalised start density :math:`f_0` to the unnormalised posterior
:math:`f_T(z) = p(x_n, z)` along the geometric path

.. math::

    \\log f_t(z) = (1 - b_t) \\log f_0(z) + b_t \\log p(x_n, z),
    \\qquad 0 = b_0 < b_1 < \\dots < b_T = 1,

with ``start="guide"`` (:math:`f_0 = q(z \\mid x_n)`) or ``start="prior"``
(:math:`f_0 = p(z)`, so :math:`\\log f_t = \\log p(z) + b_t \\log p(x_n \\mid z)`). Each of C
chains starts at :math:`z_0 \\sim f_0`, gains the log-weight
:math:`(b_t - b_{t-1}) (\\log p(x_n, z_{t-1}) - \\log f_0(z_{t-1}))` at step t and then moves
by one Hamiltonian Monte Carlo transition that leaves :math:`f_t` invariant. The estimate is
:math:`\\log \\frac1C \\sum_c w_c` per example [1, 2]; BDMC [3] adds the reverse run from
the exact latents of data simulated from the model, a stochastic upper bound.

**Transitions.** HMC with identity mass, ``num_leapfrog`` leapfrog steps and a Metropolis
accept per (chain, example); the step size is per example, shared by its chains, and after
every transition :math:`\\log \\epsilon \\mathrel{+}= \\bar a - a^*`, where :math:`\\bar a` is
the acceptance probability averaged over the example's chains and :math:`a^*` is
``target_accept`` (0.65). The leapfrog is written here, not taken from
``numpyro.infer.hmc_util.velocity_verlet``: that integrator differentiates one scalar
potential, while AIS needs every (chain, example)'s energy for its own Metropolis test and
the gradients of :math:`\\log f_0` and :math:`\\log p(x, z)` separately, so that a change of
:math:`b_t` costs no extra gradient evaluation (a transition costs exactly
``num_leapfrog``). The gradients are ``jax.value_and_grad`` of the summed log-densities:
the (chain, example) pairs are independent, so the gradient of the sum is every pair's own.

**Plate convention, memory and compilation** as :mod:`ppl_vae.numpyro.evaluation`: every
sample site in the plate ``"data"`` at dim -1, the C chains in an outer plate at dim -2,
log-densities from ``handlers.condition`` on the guide's latent sites (the state is their
dict, e.g. ``z1`` and ``z2`` of the HVAE). At most ``batch_size`` (example, chain) pairs are
processed at once; each chunk is one jitted call (the whole run: ``lax.scan`` over the
steps, ``lax.fori_loop`` over the leapfrog steps), compiled once per model, guide, chunk
shape and settings; every :class:`~ppl_vae.numpyro.Prior` is built once per call.
``params=`` as for :func:`~ppl_vae.numpyro.importance_log_likelihood`.

**References.**

1. R. M. Neal, *Annealed importance sampling*, Statistics and Computing 11 (2001).
2. Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse, *On the quantitative analysis of
   decoder-based generative models*, ICLR 2017.
3. R. Grosse, Z. Ghahramani, R. P. Adams, *Sandwiching the marginal likelihood using
   bidirectional Monte Carlo*, arXiv:1511.02543 (2015).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax import lax, random
from numpyro import handlers

from ppl_vae._ais import (
    _ADAPT,
    AISResult,
    BDMCBounds,
    BDMCResult,
    _check_data_shape,
    _check_settings,
    _collect,
    ais_schedule,
)
from ppl_vae._checks import check_int
from ppl_vae.numpyro.evaluation import _bind, _check_args, _check_key, _prior_cache_jit
from ppl_vae.numpyro.priors import _cached_priors
from ppl_vae.numpyro.validation import check_model_on_data

__all__ = ["ais_log_likelihood", "bdmc_bounds", "ais_schedule", "AISResult", "BDMCBounds",
           "BDMCResult"]

_CHAINS = "_ppl_vae_chains"


def _site_log_prob(site, *shape):
    """The log-density of a site, which must have shape ``shape``: ``(C, n)`` in the chains
    plate, ``(n,)`` without it."""
    log_prob = site["fn"].log_prob(site["value"])
    if jnp.shape(log_prob) != shape:
        raise ValueError(
            f"site {site['name']!r} has log_prob shape {tuple(jnp.shape(log_prob))}; expected "
            f"{shape}: AIS needs every sample site inside the plate 'data' at dim -1 (one "
            "log-density per example)."
        )
    return log_prob


def _in_chains(fn, num_chains):
    def wrapped(*a, **k):
        with numpyro.plate(_CHAINS, num_chains, dim=-2):
            return fn(*a, **k)
    return wrapped


def _sample_sites(trace):
    return [s for s in trace.values() if s["type"] == "sample"]


def _log_density_fns(model, guide, x, num_chains, start, args, kwargs):
    """``a(z)`` = log f_0 (the guide's q(z|x), or the prior p(z)) and ``b(z)`` = log p(x, z)
    (or log p(x|z) with the prior start) at a state ``z`` (a dict of ``(C, n, ...)`` arrays),
    each ``(C, n)``; log f_t = (1 - c b_t) a + b_t b with c = 1 (guide) or 0 (prior)."""
    n = x.shape[0]

    def trace(fn, z):
        # every latent site is conditioned, so nothing is drawn: a fixed key is enough
        fn = handlers.seed(handlers.condition(_in_chains(fn, num_chains), data=z),
                           rng_seed=random.PRNGKey(0))
        return _sample_sites(handlers.trace(fn).get_trace(x, *args, **kwargs))

    def total(sites, keep):
        return sum(_site_log_prob(s, num_chains, n) for s in sites if keep(s))

    if start == "guide":
        def a(z):
            return total(trace(guide, z), lambda s: s["name"] in z)

        def b(z):
            return total(trace(model, z), lambda s: True)
    else:  # one more trace of the model: XLA drops what each function does not use
        def a(z):
            return total(trace(model, z), lambda s: s["name"] in z)

        def b(z):
            return total(trace(model, z), lambda s: s["name"] not in z)
    return a, b


def _with_grads(a_fn, b_fn):
    def value_and_grad(fn):
        return jax.value_and_grad(lambda z: (lambda v: (v.sum(), v))(fn(z)), has_aux=True)

    va, vb = value_and_grad(a_fn), value_and_grad(b_fn)

    def terms(z):
        (_, a), grad_a = va(z)
        (_, b), grad_b = vb(z)
        return a, b, grad_a, grad_b

    return terms


def _per_example(eps, value):
    """``eps`` (n,) shaped to broadcast against a ``(C, n, ...)`` site value."""
    return eps.reshape((1, -1) + (1,) * (value.ndim - 2))


def _kinetic(r):
    return sum(0.5 * jnp.sum(v.reshape(v.shape[:2] + (-1,)) ** 2, -1) for v in r.values())


def _hmc_transition(key, terms, c, state, beta, eps, num_leapfrog, initialise=False):
    """One HMC transition leaving f_beta invariant, for every (chain, example) at once.
    Returns the new state and the acceptance probabilities ``(C, n)``. With ``initialise``
    (traced) the step size is 0 and the move accepted: the state's log-densities and
    gradients, whatever they held, become those at its ``z``."""
    z, a, b, grad_a, grad_b = state
    wa, wb = 1.0 - c * beta, beta
    key_r, key_u = random.split(key)
    names = list(z)
    keys = dict(zip(names, random.split(key_r, len(names))))
    step = {k: _per_example(jnp.where(initialise, 0.0, eps), v) for k, v in z.items()}
    r = {k: random.normal(keys[k], v.shape, v.dtype) for k, v in z.items()}
    energy = -(wa * a + wb * b) + _kinetic(r)
    r = {k: r[k] + 0.5 * step[k] * (wa * grad_a[k] + wb * grad_b[k]) for k in names}

    def leapfrog(i, carry):
        z_new, r, _, _, _, _ = carry
        z_new = {k: z_new[k] + step[k] * r[k] for k in names}
        a_new, b_new, ga_new, gb_new = terms(z_new)
        scale = jnp.where(i < num_leapfrog - 1, 1.0, 0.5)
        r = {k: r[k] + scale * step[k] * (wa * ga_new[k] + wb * gb_new[k]) for k in names}
        return z_new, r, a_new, b_new, ga_new, gb_new

    z_new, r, a_new, b_new, ga_new, gb_new = lax.fori_loop(
        0, num_leapfrog, leapfrog, (z, r, a, b, grad_a, grad_b))
    energy_new = -(wa * a_new + wb * b_new) + _kinetic(r)
    log_accept = jnp.minimum(energy - energy_new, 0.0)
    log_accept = jnp.where(jnp.isnan(log_accept), -jnp.inf, log_accept)  # diverged: reject
    accept_prob = jnp.exp(log_accept)
    accept = (random.uniform(key_u, accept_prob.shape, accept_prob.dtype) < accept_prob) | initialise

    def pick(new, old):
        return jnp.where(accept.reshape(accept.shape + (1,) * (new.ndim - 2)), new, old)

    state = ({k: pick(z_new[k], z[k]) for k in names}, pick(a_new, a), pick(b_new, b),
             {k: pick(ga_new[k], grad_a[k]) for k in names},
             {k: pick(gb_new[k], grad_b[k]) for k in names})
    return state, accept_prob


def _initial_state(key, model, guide, x, num_chains, start, args, kwargs):
    """z_0 ~ f_0 for every (chain, example): the guide's or the prior's latent sites."""
    fn = handlers.seed(_in_chains(guide if start == "guide" else model, num_chains), key)
    trace = handlers.trace(fn).get_trace(x, *args, **kwargs)
    return {s["name"]: s["value"] for s in _sample_sites(trace) if not s["is_observed"]}


def _run_chains(key, model, guide, x, z, betas, settings, args, kwargs):
    """One AIS run over ``betas`` for the examples ``x`` (traced) from the start state ``z``
    (a dict of ``(C, n, ...)`` arrays: draws from f_0, or the exact latents for reverse AIS).
    Returns ``log_w (C, n)``, mean acceptance ``(n,)`` and the final step size ``(n,)``."""
    num_leapfrog, step_size, target_accept, start = settings
    c = 1.0 if start == "guide" else 0.0
    num_chains = next(iter(z.values())).shape[0]
    terms = _with_grads(*_log_density_fns(model, guide, x, num_chains, start, args, kwargs))
    dtype = jnp.result_type(float)
    zeros = jnp.zeros((num_chains, x.shape[0]), dtype)
    # The log-densities and gradients at the start state come from a first pass of the scan
    # below with step size 0 (an accepted move that stays put), not from a call of ``terms``
    # before it: the model and guide then appear once in the compiled program, not twice,
    # which halves the compilation time for the cost of num_leapfrog - 1 extra gradient
    # evaluations per run.
    state = (z, zeros, zeros, {k: jnp.zeros_like(v) for k, v in z.items()},
             {k: jnp.zeros_like(v) for k, v in z.items()})
    betas = betas.astype(dtype)
    num_steps = betas.shape[0] - 1
    eps = jnp.full((x.shape[0],), step_size, dtype)

    def step(carry, inputs):
        state, log_w, eps, accepted = carry
        key, db, beta, first = inputs
        log_w = log_w + db * (state[2] - c * state[1])
        state, accept_prob = _hmc_transition(key, terms, c, state, beta, eps, num_leapfrog,
                                             first)
        rate = jnp.where(first, target_accept, accept_prob.mean(0))  # (n,)
        eps = eps * jnp.exp(_ADAPT * (rate - target_accept))
        return (state, log_w, eps, accepted + jnp.where(first, 0.0, rate)), None

    # the initialising pass, then the transitions after steps 1..T-1 (the last transition
    # would change no weight)
    db = betas[1:] - betas[:-1]
    inputs = (random.split(key, num_steps), jnp.concatenate([jnp.zeros(1, dtype), db[:-1]]),
              betas[:-1], jnp.arange(num_steps) == 0)
    carry = (state, zeros, eps, jnp.zeros_like(eps))
    (state, log_w, eps, accepted), _ = lax.scan(step, carry, inputs)
    log_w = log_w + db[-1] * (state[2] - c * state[1])
    return log_w, accepted / max(num_steps - 1, 1), eps


# The jitted chunk lives at module level and is compiled by ``eqx.filter_jit``, as in
# :mod:`ppl_vae.numpyro.evaluation`: a second call with the same model and guide objects,
# chunk shape and settings reuses the compiled code. The reverse run of BDMC differs from a
# forward run only in traced arguments (the exact latents, a flag, the reversed schedule),
# so the two share one compilation.
@eqx.filter_jit
def _ais_chunk(model, guide, params, cache, key, x, z_exact, reverse, betas, args, kwargs,
               num_chains, num_pieces, settings, total_chains):
    """AIS for the examples ``x`` in ``num_pieces`` runs of ``num_chains`` chains; every
    chain starts at a draw from f_0, or where ``reverse`` (a traced bool) at ``z_exact`` (a
    dict of ``(n, ...)`` latents)."""
    m, g = _bind(model, params), _bind(guide, params)

    def run(key):
        key_start, key_run = random.split(key)
        z = _initial_state(key_start, m, g, x, num_chains, settings[3], args, kwargs)
        z = {k: jnp.where(reverse, jnp.broadcast_to(z_exact[k], v.shape), v)
             for k, v in z.items()}
        return _run_chains(key_run, m, g, x, z, betas, settings, args, kwargs)

    with _cached_priors(cache):
        log_w, acceptance, eps = lax.map(run, random.split(key, num_pieces))
    # (pieces, C', n), (pieces, n), (pieces, n)
    log_w = log_w.reshape(num_pieces * num_chains, x.shape[0])[:total_chains]
    return log_w.T, acceptance.mean(0), eps.mean(0)


def _chunks(rng_key, model, guide, data, args, kwargs, num_chains, betas, settings, batch_size,
            params, device, latent_shapes, latents=None):
    """Yield ``(rows, log_w (n, C), acceptance (n,), step_size (n,))`` as NumPy, chunk by
    chunk of at most ``batch_size`` (example, chain) pairs; chunk ``i`` uses the key
    ``fold_in(rng_key, i)``. With ``latents`` (a dict of ``(N, ...)`` arrays) every chain
    starts there (reverse AIS)."""
    # at most N: a small evaluation is not padded to a chunk of batch_size pairs
    examples_per_chunk = min(max(1, batch_size // num_chains), len(data))
    chains_per_chunk = min(num_chains, batch_size)
    num_pieces = math.ceil(num_chains / chains_per_chunk)
    key_cache, key_chunks = random.split(rng_key)

    def put(x):
        return jax.device_put(x, device) if device is not None else jnp.asarray(x)

    def pad(x, n):  # pad the last chunk: one compiled shape for all chunks
        if len(x) == examples_per_chunk:
            return x
        return np.concatenate([x, np.repeat(x[-1:], examples_per_chunk - n, axis=0)])

    cache = _prior_cache_jit(model, params, key_cache, put(data[:1]), args, kwargs)
    betas = jnp.asarray(betas, dtype=jnp.result_type(float))
    reverse = jnp.asarray(latents is not None)
    if latents is None:  # placeholders of the right shapes: the same compiled function
        latents = {k: np.zeros((len(data), *shape), dtype) for k, (shape, dtype)
                   in latent_shapes.items()}
    for i, first in enumerate(range(0, len(data), examples_per_chunk)):
        rows = slice(first, min(first + examples_per_chunk, len(data)))
        n = rows.stop - rows.start
        z_exact = {k: put(pad(np.asarray(v[rows], latent_shapes[k][1]), n))
                   for k, v in latents.items()}
        out = _ais_chunk(model, guide, params, cache, random.fold_in(key_chunks, i),
                         put(pad(data[rows], n)), z_exact, reverse, betas, args, kwargs,
                         chains_per_chunk, num_pieces, settings, num_chains)
        yield (rows, *(np.asarray(o, dtype=np.float64)[:n] for o in out))


def _latent_shapes(model, guide, x, params, args, kwargs):
    """``{name: (event shape, dtype)}`` of the guide's latent sites, after checking the plate
    convention and that they are the model's (AIS moves only those): by tracing the pair
    abstractly on the first two examples (``jax.eval_shape``: nothing is computed)."""
    found = {}

    def run(x, params):
        key_g, key_m = random.split(random.PRNGKey(0))
        guide_trace = handlers.trace(handlers.seed(_bind(guide, params), key_g)).get_trace(
            x, *args, **kwargs)
        model_trace = handlers.trace(handlers.replay(
            handlers.seed(_bind(model, params), key_m), trace=guide_trace)).get_trace(
            x, *args, **kwargs)
        for site in _sample_sites(guide_trace) + _sample_sites(model_trace):
            _site_log_prob(site, x.shape[0])
        found["model"] = {s["name"] for s in _sample_sites(model_trace) if not s["is_observed"]}
        found["guide"] = {s["name"]: (tuple(jnp.shape(s["value"])[1:]), s["value"].dtype)
                          for s in _sample_sites(guide_trace) if not s["is_observed"]}
        return 0

    jax.eval_shape(run, x, params)
    if found["model"] != set(found["guide"]):
        raise ValueError(
            f"the guide's latent sites {sorted(found['guide'])} must be the model's "
            f"{sorted(found['model'])}: AIS moves the latent values of the guide's sites and "
            "scores them under both.")
    return found["guide"]


def _prepare(model, guide, data, args, kwargs, num_steps, num_chains, num_leapfrog, step_size,
             target_accept, schedule, start, batch_size, params, device):
    data, batch_size = _check_args(data, 1, batch_size, device)
    betas = ais_schedule(num_steps, schedule)
    _check_settings(num_chains, num_leapfrog, step_size, target_accept, start)
    check_model_on_data(model, guide, data, "data", *args, params=params, **kwargs)
    shapes = _latent_shapes(model, guide, jnp.asarray(data[:2]), params, args, kwargs)
    settings = (int(num_leapfrog), float(step_size), float(target_accept), start)
    return data, batch_size, betas, settings, shapes


def ais_log_likelihood(rng_key, model, guide, data, *args, num_steps=1000, num_chains=16,
                       num_leapfrog=5, step_size=0.05, target_accept=0.65, schedule="sigmoid",
                       start="guide", batch_size=None, params=None, device=None,
                       return_details=False, **kwargs):
    """Per-example AIS estimate of log p(x), a NumPy array of shape ``(N,)``.

    Example::

        ll = ais_log_likelihood(random.PRNGKey(0), model, guide, x_test, num_steps=1000,
                                num_chains=16, params=fitted.params)
        r = ais_log_likelihood(random.PRNGKey(0), model, guide, x_test,
                               params=fitted.params, return_details=True)
        print(r.log_likelihood.mean(), r.stderr.mean(), r.acceptance.mean())

    :param rng_key: ``jax.random.PRNGKey`` for the start draws, momenta and accepts.
    :param model: a NumPyro model ``model(x, *args, **kwargs)`` following the plate
        convention.
    :param guide: its guide, same signature, with the model's latent sites.
    :param data: ``(N, ...)`` array of examples.
    :param int num_steps: T, annealing steps (T transitions of ``num_leapfrog`` gradient
        evaluations each, less the last, which would change no weight). ``num_steps=1`` is
        importance sampling with ``num_chains`` samples.
    :param int num_chains: C, independent chains per example.
    :param int num_leapfrog: leapfrog steps per HMC transition.
    :param float step_size: the initial leapfrog step size (then adapted per example).
    :param float target_accept: the acceptance rate the step size is adapted toward.
    :param schedule: see :func:`ais_schedule`.
    :param str start: ``"guide"`` (anneal from q(z|x)) or ``"prior"`` (from p(z)).
    :param int batch_size: the most (example, chain) pairs evaluated at once; bounds memory.
        Default (None): as :func:`~ppl_vae.numpyro.importance_log_likelihood`.
    :param dict params: parameter values by NumPyro param name (e.g. ``FitResult.params``);
        None to run model and guide as they are.
    :param device: a ``jax.Device`` to put each chunk of data on (default: JAX's default).
    :param bool return_details: return an :class:`AISResult` (log-weights, chain spread,
        acceptance, step sizes) instead of the estimates alone.
    :returns: ``log_px`` ``(N,)`` float64, or an :class:`AISResult`.
    """
    _check_key(rng_key)
    data, batch_size, betas, settings, shapes = _prepare(
        model, guide, data, args, kwargs, num_steps, num_chains, num_leapfrog, step_size,
        target_accept, schedule, start, batch_size, params, device)
    result = _collect(_chunks(rng_key, model, guide, data, args, kwargs, num_chains, betas,
                              settings, batch_size, params, device, shapes), len(data),
                      num_chains)
    return result if return_details else result.log_likelihood


def _simulate(rng_key, model, params, num_examples, data_shape, args, kwargs):
    """(x, z) ~ p(x, z): the model run with its observed site sampled
    (``handlers.uncondition``)."""
    dummy = jnp.zeros((num_examples, *data_shape), jnp.result_type(float))
    model = _bind(model, params)
    conditioned = handlers.trace(handlers.seed(model, rng_key)).get_trace(dummy, *args, **kwargs)
    observed = [s for s in _sample_sites(conditioned) if s["is_observed"]]
    if len(observed) != 1 or jnp.shape(observed[0]["value"]) != dummy.shape:
        raise ValueError(
            "bdmc_bounds needs a model with exactly one observed site, whose value is the data "
            f"(its first argument); got observed sites {[s['name'] for s in observed]}.")
    name = observed[0]["name"]
    trace = handlers.trace(handlers.uncondition(handlers.seed(model, rng_key))).get_trace(
        dummy, *args, **kwargs)
    x = np.asarray(trace[name]["value"])
    latents = {s["name"]: np.asarray(s["value"]) for s in _sample_sites(trace)
               if s["name"] != name}
    return x, latents


def bdmc_bounds(rng_key, model, guide, num_examples, *args, data_shape=None, num_steps=1000,
                num_chains=16, num_leapfrog=5, step_size=0.05, target_accept=0.65,
                schedule="sigmoid", start="guide", batch_size=None, params=None, device=None,
                return_details=False, **kwargs):
    """Bidirectional Monte Carlo (Grosse et al. 2015): stochastic lower and upper bounds of
    log p(x) on ``num_examples`` examples simulated from the model.

    Forward AIS (as :func:`ais_log_likelihood`) gives the lower bound; AIS run backwards
    along the same schedule, every chain starting at the latent values that generated the
    example, gives the upper bound :math:`-\\log \\frac1C \\sum_c w^{rev}_c`. Their gap bounds
    the error of AIS with these settings on data like the model's own.

    Example::

        bounds = bdmc_bounds(random.PRNGKey(0), model, guide, 100, data_shape=(784,),
                             num_steps=1000, params=fitted.params)
        print(bounds.lower.mean(), bounds.upper.mean(), bounds.mean_gap)

    :param rng_key: ``jax.random.PRNGKey``: the simulated data and both runs.
    :param int num_examples: N, examples drawn from p(x, z).
    :param data_shape: the shape of one example, e.g. ``(784,)``: the model is called on an
        ``(N, *data_shape)`` batch with its observed site sampled instead of observed.
    :param return_details: return a :class:`BDMCResult` (with the simulated data and both
        runs' :class:`AISResult`) instead of :class:`BDMCBounds`.
    :returns: :class:`BDMCBounds` ``(lower, upper)``, each ``(N,)`` float64.

    The other arguments are those of :func:`ais_log_likelihood`.
    """
    _check_key(rng_key)
    num_examples = check_int("num_examples", num_examples)
    data_shape = _check_data_shape(data_shape)
    key_sim, key_forward, key_reverse = random.split(rng_key, 3)
    x, latents = _simulate(key_sim, model, params, num_examples, data_shape, args, kwargs)
    data, batch_size, betas, settings, shapes = _prepare(
        model, guide, x, args, kwargs, num_steps, num_chains, num_leapfrog, step_size,
        target_accept, schedule, start, batch_size, params, device)
    forward = _collect(_chunks(key_forward, model, guide, data, args, kwargs, num_chains, betas,
                               settings, batch_size, params, device, shapes), num_examples,
                       num_chains)
    reverse = _collect(_chunks(key_reverse, model, guide, data, args, kwargs, num_chains,
                               betas[::-1].copy(), settings, batch_size, params, device, shapes,
                               latents), num_examples, num_chains, sign=-1.0)
    if return_details:
        return BDMCResult(forward.log_likelihood, reverse.log_likelihood,
                          np.asarray(x, dtype=np.float64), forward, reverse)
    return BDMCBounds(forward.log_likelihood, reverse.log_likelihood)
