r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for log p(x).

For every example :math:`x_n`, AIS anneals from a normalised start density :math:`f_0` to
the unnormalised posterior :math:`f_T(z) = p(x_n, z)` along the geometric path

.. math::

    \\log f_t(z) = (1 - b_t) \\log f_0(z) + b_t \\log p(x_n, z),
    \\qquad 0 = b_0 < b_1 < \\dots < b_T = 1,

with ``start="guide"`` (:math:`f_0 = q(z \\mid x_n)`) or ``start="prior"``
(:math:`f_0 = p(z)`, so :math:`\\log f_t = \\log p(z) + b_t \\log p(x_n \\mid z)`). Each of C
chains starts at :math:`z_0 \\sim f_0`, gains the log-weight
:math:`(b_t - b_{t-1}) (\\log p(x_n, z_{t-1}) - \\log f_0(z_{t-1}))` at step t and then moves
by one Hamiltonian Monte Carlo transition that leaves :math:`f_t` invariant. Each chain's
weight is an unbiased estimate of :math:`p(x_n)`; the estimate is
:math:`\\log \\frac1C \\sum_c w_c` (a stochastic lower bound, Neal 2001) [1, 2].

**BDMC** [3] simulates :math:`(x, z) \\sim p(x, z)` from the model, runs AIS forward (a
stochastic lower bound of log p(x)) and backward from the exact z, the schedule reversed:
:math:`-\\log \\frac1C \\sum_c w^{rev}_c` is a stochastic upper bound. The gap between the
two bounds is an upper bound on the error of the forward estimate on simulated data.

**Transitions.** Each transition is HMC with identity mass, ``num_leapfrog`` leapfrog steps
and a Metropolis accept per (chain, example). The step size is per example, shared by its
chains, and adapted during the run, as in Wu et al. (2017) [2]: after every transition
:math:`\log \epsilon \mathrel{+}= \bar a - a^*`, where :math:`\bar a` is the acceptance
probability averaged over the example's chains and :math:`a^*` is ``target_accept``
(0.65). The leapfrog is written here
rather than taken from :func:`pyro.ops.integrator.velocity_verlet`: that integrator
differentiates one scalar potential, so at every change of :math:`b_t` it would need one
more gradient evaluation; here the gradients of :math:`\\log f_0` and
:math:`\\log p(x, z)` are carried separately, and a transition costs exactly
``num_leapfrog`` gradient evaluations of the model and the start density.

**Plate convention.** As :mod:`ppl_vae.pyro.evaluation`: every sample site in the plate
``"data"`` at dim -1, the data batch the first argument. The state is the dict of the
guide's latent sites (e.g. ``z1`` and ``z2`` of the HVAE); log-densities at given values
come from replaying the model and the guide with ``poutine.condition`` on them, the C
chains in an outer plate at dim -2. At most ``batch_size`` (example, chain) pairs are
processed at once; every :class:`~ppl_vae.pyro.Prior` is built once per call.

**References.**

1. R. M. Neal, *Annealed importance sampling*, Statistics and Computing 11 (2001).
2. Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse, *On the quantitative analysis of
   decoder-based generative models*, ICLR 2017.
3. R. Grosse, Z. Ghahramani, R. P. Adams, *Sandwiching the marginal likelihood using
   bidirectional Monte Carlo*, arXiv:1511.02543 (2015).
"""

import math

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

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
from ppl_vae.pyro.evaluation import _check_args
from ppl_vae.pyro.priors import _cached_priors
from ppl_vae.pyro.validation import check_model_on_data

__all__ = ["ais_log_likelihood", "bdmc_bounds", "ais_schedule", "AISResult", "BDMCBounds",
           "BDMCResult"]

_CHAINS = "_ppl_vae_chains"


def _site_log_prob(site, *shape):
    """The log-density of a site, which must have shape ``shape``: ``(C, n)`` in the chains
    plate, ``(n,)`` without it."""
    log_prob = site["fn"].log_prob(site["value"])
    if tuple(log_prob.shape) != shape:
        raise ValueError(
            f"site {site['name']!r} has log_prob shape {tuple(log_prob.shape)}; expected "
            f"{shape}: AIS needs every sample site inside the plate 'data' at dim -1 (one "
            "log-density per example)."
        )
    return log_prob


def _sample_sites(trace):
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


class _Target:
    """The two log-densities of the path at a state ``z`` (a dict of ``(C, n, ...)``
    tensors) and their gradients: ``a`` is log f_0 (the guide's q(z|x), or the prior p(z)),
    ``b`` is log p(x, z) (or log p(x|z) with the prior start), each ``(C, n)``; then
    log f_t = (1 - c b_t) a + b_t b with c = 1 (guide) or 0 (prior)."""

    def __init__(self, model, guide, x, num_chains, start, args, kwargs):
        self.model, self.guide, self.x = model, guide, x
        self.num_chains, self.start, self.args, self.kwargs = num_chains, start, args, kwargs
        self.c = 1.0 if start == "guide" else 0.0

    def _trace(self, fn, z):
        plated = pyro.plate(_CHAINS, self.num_chains, dim=-2)(poutine.condition(fn, data=z))
        return poutine.trace(plated).get_trace(self.x, *self.args, **self.kwargs)

    def __call__(self, z):
        n = len(self.x)
        with torch.enable_grad():
            z = {k: v.detach().requires_grad_() for k, v in z.items()}
            model_sites = _sample_sites(self._trace(self.model, z))
            if self.start == "guide":
                a = sum(_site_log_prob(s, self.num_chains, n)
                        for s in _sample_sites(self._trace(self.guide, z)) if s["name"] in z)
                b = sum(_site_log_prob(s, self.num_chains, n) for s in model_sites)
            else:
                a = sum(_site_log_prob(s, self.num_chains, n) for s in model_sites
                        if s["name"] in z)
                b = sum(_site_log_prob(s, self.num_chains, n) for s in model_sites
                        if s["name"] not in z)
            values = list(z.values())
            # Separate backward passes: the two graphs hardly overlap (guide and model; with
            # the prior start, only the prior's part), so this costs what one pass would.
            grad_a = torch.autograd.grad(a.sum(), values, retain_graph=True, allow_unused=True)
            grad_b = torch.autograd.grad(b.sum(), values, allow_unused=True)
        zero = torch.zeros_like
        grad_a = {k: zero(v) if g is None else g for (k, v), g in zip(z.items(), grad_a)}
        grad_b = {k: zero(v) if g is None else g for (k, v), g in zip(z.items(), grad_b)}
        return a.detach(), b.detach(), grad_a, grad_b


def _per_example(eps, value):
    """``eps`` (n,) shaped to broadcast against a ``(C, n, ...)`` site value."""
    return eps.reshape((1, -1) + (1,) * (value.dim() - 2))


def _kinetic(r):
    return sum(0.5 * v.pow(2).flatten(2).sum(-1) for v in r.values())  # (C, n)


def _hmc_transition(target, state, beta, eps, num_leapfrog):
    """One HMC transition leaving f_beta invariant, for every (chain, example) at once.
    Returns the new state and the acceptance probabilities ``(C, n)``."""
    z, a, b, grad_a, grad_b = state
    wa, wb = 1.0 - target.c * beta, beta

    def grad_log_f(ga, gb):
        return {k: wa * ga[k] + wb * gb[k] for k in ga}

    step = {k: _per_example(eps, v) for k, v in z.items()}
    r = {k: torch.randn_like(v) for k, v in z.items()}
    energy = -(wa * a + wb * b) + _kinetic(r)
    g = grad_log_f(grad_a, grad_b)
    r = {k: r[k] + 0.5 * step[k] * g[k] for k in r}
    z_new = z
    for i in range(num_leapfrog):
        z_new = {k: z_new[k] + step[k] * r[k] for k in r}
        a_new, b_new, ga_new, gb_new = target(z_new)
        g = grad_log_f(ga_new, gb_new)
        scale = 1.0 if i < num_leapfrog - 1 else 0.5
        r = {k: r[k] + scale * step[k] * g[k] for k in r}
    energy_new = -(wa * a_new + wb * b_new) + _kinetic(r)
    log_accept = (energy - energy_new).clamp(max=0.0)
    log_accept = torch.where(torch.isnan(log_accept), -math.inf, log_accept)  # diverged: reject
    accept_prob = log_accept.exp()
    accept = torch.rand_like(accept_prob) < accept_prob  # (C, n)

    def pick(new, old):
        mask = accept.reshape(accept.shape + (1,) * (new.dim() - 2))
        return torch.where(mask, new, old)

    state = ({k: pick(z_new[k], z[k]) for k in z}, pick(a_new, a), pick(b_new, b),
             {k: pick(ga_new[k], grad_a[k]) for k in z}, {k: pick(gb_new[k], grad_b[k]) for k in z})
    return state, accept_prob


def _initial_state(model, guide, x, num_chains, start, args, kwargs):
    """z_0 ~ f_0 for every (chain, example): the guide's or the prior's latent sites."""
    fn = guide if start == "guide" else model
    with torch.no_grad():
        trace = poutine.trace(pyro.plate(_CHAINS, num_chains, dim=-2)(fn)).get_trace(
            x, *args, **kwargs)
    return {s["name"]: s["value"].detach() for s in _sample_sites(trace) if not s["is_observed"]}


def _run_chains(model, guide, x, num_chains, betas, settings, args, kwargs, z_exact=None):
    """One AIS run over ``betas`` for the examples ``x``; ``z_exact`` (a dict of ``(n, ...)``
    latents) starts every chain there instead of at f_0 (reverse AIS). Returns torch tensors
    ``log_w (n, C)``, mean acceptance ``(n,)`` and the final step size ``(n,)``."""
    num_leapfrog, step_size, target_accept, start = settings
    target = _Target(model, guide, x, num_chains, start, args, kwargs)
    if z_exact is None:
        z = _initial_state(model, guide, x, num_chains, start, args, kwargs)
    else:
        z = {k: v.expand((num_chains,) + v.shape).clone() for k, v in z_exact.items()}
    state = (z, *target(z))
    a, b = state[1], state[2]
    log_w = torch.zeros_like(a)
    eps = torch.full((len(x),), step_size, dtype=a.dtype, device=a.device)
    accepted = torch.zeros_like(eps)
    num_steps = len(betas) - 1
    for t in range(1, num_steps + 1):
        a, b = state[1], state[2]
        log_w = log_w + float(betas[t] - betas[t - 1]) * (b - target.c * a)
        if t == num_steps:
            break  # the last transition would not change any weight
        state, accept_prob = _hmc_transition(target, state, float(betas[t]), eps, num_leapfrog)
        rate = accept_prob.mean(0)  # (n,)
        accepted = accepted + rate
        eps = eps * torch.exp(_ADAPT * (rate - target_accept))
    acceptance = accepted / max(num_steps - 1, 1)
    return log_w.T, acceptance, eps


def _chunks(model, guide, data, args, kwargs, num_chains, betas, settings, batch_size,
            device, latents=None):
    """Yield ``(rows, log_w (n, C), acceptance (n,), step_size (n,))`` as NumPy, chunk by
    chunk of at most ``batch_size`` (example, chain) pairs."""
    # at most N: a small evaluation is not padded to a chunk of batch_size pairs
    examples_per_chunk = min(max(1, batch_size // num_chains), len(data))
    chains_per_chunk = min(num_chains, batch_size)
    priors = {}  # every Prior's distribution, built once for the whole call
    for start in range(0, len(data), examples_per_chunk):
        rows = slice(start, min(start + examples_per_chunk, len(data)))
        x = data[rows].to(device) if device is not None else data[rows]
        z_exact = None if latents is None else {
            k: (v[rows].to(device) if device is not None else v[rows]) for k, v in latents.items()}
        pieces, acceptance, step = [], 0.0, 0.0
        num_pieces = math.ceil(num_chains / chains_per_chunk)
        with _cached_priors(priors), pyro.validation_enabled(False):
            # validated once by check_model_on_data; a diverging leapfrog step must be
            # rejected, not raise
            for s in range(0, num_chains, chains_per_chunk):
                c = min(chains_per_chunk, num_chains - s)
                log_w, acc, eps = _run_chains(model, guide, x, c, betas, settings, args, kwargs,
                                              z_exact)
                pieces.append(log_w)
                acceptance, step = acceptance + acc / num_pieces, step + eps / num_pieces
        host = [t.double().cpu().numpy() for t in (torch.cat(pieces, 1), acceptance, step)]
        yield (rows, *host)


def _prepare(model, guide, data, args, kwargs, num_steps, num_chains, num_leapfrog, step_size,
             target_accept, schedule, start, batch_size, device):
    data, batch_size = _check_args(data, 1, batch_size, device)
    betas = ais_schedule(num_steps, schedule)
    _check_settings(num_chains, num_leapfrog, step_size, target_accept, start)
    check_model_on_data(model, guide, data.to(device) if device is not None else data, "data",
                        *args, **kwargs)
    _check_latent_sites(model, guide, data[:2].to(device) if device is not None else data[:2],
                        args, kwargs)
    settings = (int(num_leapfrog), float(step_size), float(target_accept), start)
    return data, batch_size, betas, settings


def _check_latent_sites(model, guide, x, args, kwargs):
    """The plate convention, and the guide must propose every latent site of the model (AIS
    moves only those): one run of the pair on the first two examples."""
    with torch.no_grad(), pyro.validation_enabled(False):
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *args, **kwargs)
        for site in _sample_sites(guide_trace) + _sample_sites(model_trace):
            _site_log_prob(site, len(x))
    model_latents = {s["name"] for s in _sample_sites(model_trace) if not s["is_observed"]}
    guide_latents = {s["name"] for s in _sample_sites(guide_trace) if not s["is_observed"]}
    if model_latents != guide_latents:
        raise ValueError(
            f"the guide's latent sites {sorted(guide_latents)} must be the model's "
            f"{sorted(model_latents)}: AIS moves the latent values of the guide's sites and "
            "scores them under both.")


def ais_log_likelihood(model, guide, data, *args, num_steps=1000, num_chains=16,
                       num_leapfrog=5, step_size=0.05, target_accept=0.65, schedule="sigmoid",
                       start="guide", batch_size=None, device=None, return_details=False,
                       **kwargs):
    """Per-example AIS estimate of log p(x), a NumPy array of shape ``(N,)``.

    Example::

        ll = ais_log_likelihood(model, guide, x_test, num_steps=1000, num_chains=16)
        r = ais_log_likelihood(model, guide, x_test, return_details=True)
        print(r.log_likelihood.mean(), r.stderr.mean(), r.acceptance.mean())

    :param model: a Pyro model ``model(x, *args, **kwargs)`` following the plate convention.
    :param guide: its guide, same signature, with the model's latent sites.
    :param data: ``(N, ...)`` tensor or array of examples.
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
        Default (None): as :func:`~ppl_vae.pyro.importance_log_likelihood`.
    :param device: where to move each chunk of data (default: leave it where it is).
    :param bool return_details: return an :class:`AISResult` (log-weights, chain spread,
        acceptance, step sizes) instead of the estimates alone.
    :returns: ``log_px`` ``(N,)`` float64, or an :class:`AISResult`.
    """
    data, batch_size, betas, settings = _prepare(
        model, guide, data, args, kwargs, num_steps, num_chains, num_leapfrog, step_size,
        target_accept, schedule, start, batch_size, device)
    result = _collect(_chunks(model, guide, data, args, kwargs, num_chains, betas, settings,
                              batch_size, device), len(data), num_chains)
    return result if return_details else result.log_likelihood


def _simulate(model, num_examples, data_shape, args, kwargs, device):
    """(x, z) ~ p(x, z): the model run with its observed site sampled (poutine.uncondition)."""
    dummy = torch.zeros((num_examples, *data_shape), device=device)
    with torch.no_grad():
        conditioned = poutine.trace(model).get_trace(dummy, *args, **kwargs)
        observed = [s for s in _sample_sites(conditioned) if s["is_observed"]]
        if len(observed) != 1 or observed[0]["value"].shape != dummy.shape:
            raise ValueError(
                "bdmc_bounds needs a model with exactly one observed site, whose value is the "
                f"data (its first argument); got observed sites {[s['name'] for s in observed]}.")
        name = observed[0]["name"]
        trace = poutine.trace(poutine.uncondition(model)).get_trace(dummy, *args, **kwargs)
    sites = _sample_sites(trace)
    x = trace.nodes[name]["value"].detach()
    latents = {s["name"]: s["value"].detach() for s in sites if s["name"] != name}
    return x, latents


def bdmc_bounds(model, guide, num_examples, *args, data_shape=None, num_steps=1000,
                num_chains=16, num_leapfrog=5, step_size=0.05, target_accept=0.65,
                schedule="sigmoid", start="guide", batch_size=None, device=None,
                return_details=False, **kwargs):
    """Bidirectional Monte Carlo (Grosse et al. 2015): stochastic lower and upper bounds of
    log p(x) on ``num_examples`` examples simulated from the model.

    Forward AIS (as :func:`ais_log_likelihood`) gives the lower bound; AIS run backwards
    along the same schedule, every chain starting at the latent values that generated the
    example, gives the upper bound :math:`-\\log \\frac1C \\sum_c w^{rev}_c`. Their gap bounds
    the error of AIS with these settings on data like the model's own.

    Example::

        bounds = bdmc_bounds(model, guide, 100, data_shape=(784,), num_steps=1000)
        print(bounds.lower.mean(), bounds.upper.mean(), bounds.mean_gap)

    :param int num_examples: N, examples drawn from p(x, z).
    :param data_shape: the shape of one example, e.g. ``(784,)``: the model is called on an
        ``(N, *data_shape)`` batch with its observed site sampled instead of observed.
    :param return_details: return a :class:`BDMCResult` (with the simulated data and both
        runs' :class:`AISResult`) instead of :class:`BDMCBounds`.
    :returns: :class:`BDMCBounds` ``(lower, upper)``, each ``(N,)`` float64.

    The other arguments are those of :func:`ais_log_likelihood`.
    """
    num_examples = check_int("num_examples", num_examples)
    data_shape = _check_data_shape(data_shape)
    x, latents = _simulate(model, num_examples, data_shape, args, kwargs, device)
    data, batch_size, betas, settings = _prepare(
        model, guide, x, args, kwargs, num_steps, num_chains, num_leapfrog, step_size,
        target_accept, schedule, start, batch_size, device)
    forward = _collect(_chunks(model, guide, data, args, kwargs, num_chains, betas, settings,
                               batch_size, device), num_examples, num_chains)
    reverse = _collect(_chunks(model, guide, data, args, kwargs, num_chains, betas[::-1].copy(),
                               settings, batch_size, device, latents), num_examples, num_chains,
                       sign=-1.0)
    if return_details:
        return BDMCResult(forward.log_likelihood, reverse.log_likelihood,
                          x.double().cpu().numpy(), forward, reverse)
    return BDMCBounds(forward.log_likelihood, reverse.log_likelihood)
