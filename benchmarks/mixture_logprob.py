"""Speed of the VampPrior's mixture log-density, this checkout against another one.

Run (about 4 minutes on a 2-core CPU)::

    mkdir /tmp/baseline && git archive HEAD | tar -x -C /tmp/baseline
    python benchmarks/mixture_logprob.py --baseline /tmp/baseline --json mixture.json

What is timed, in both backends, each with this checkout's ``_mixture_math`` and
``vamp_prior`` and with the baseline's (``--baseline``: the root of another ppl_vae checkout;
those two files of each backend are loaded from it by path, everything else is this
checkout's):

- ``mixture``: ``diag_normal_mixture_log_prob`` forward and backward (gradients with respect
  to the points, the means and the scales) at the VAE's shapes: batch 100, K = 500, L = 40,
  float32; components ``N(0, 1)`` means and scales ``exp(U(-3, 0))`` (the encoder's range),
  points drawn from the mixture. Torch wraps the components in ``flush_negligible_grad`` as
  :class:`~ppl_vae.pyro.VampPrior` does; JAX runs one jitted ``grad``.
- ``step``: one training step of the paper's network (784-300-300-40 gated MLPs, batch 100,
  K = 500, Bernoulli, Adam 5e-4) written by hand around the library's nets, whose prior term
  is ``VampPrior(encoder(pseudo_inputs)).expand([batch]).log_prob(z)`` (what a plate makes of
  the model's prior site): only the VampPrior differs between the two contenders. Torch:
  fused Adam, like ``fit``; JAX: ``--calls`` steps in one jitted ``lax.scan`` (step = scan /
  calls).

Contenders are interleaved within each round, in a new random order each round; the
figures are medians over rounds of the mean time of ``--calls`` consecutive calls, as wall
time and as the process's CPU time (the latter is the steadier on a shared machine; use
``--threads 1``, which also makes XLA single-threaded, to compare CPU times), and the ratio
this / baseline of the CPU times paired round by round (median and quartiles): on a shared
2-core machine a single median moves by 3-5% from run to run, the paired ratio less.
"""

import argparse
import importlib.util
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

# ---- settings -----------------------------------------------------------------------------
BATCH, K, LATENT, HIDDEN, INPUT, LR = 100, 500, 40, 300, 784, 5e-4
REPO = Path(__file__).resolve().parents[1]


def load_module(path, name):
    """A module loaded by path under its own name."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_version(root, backend, label):
    """``(mixture_math, vamp_prior)`` of the checkout at ``root``: its ``_mixture_math.py``,
    and its ``vamp_prior.py`` bound to that ``_mixture_math`` (the rest of ppl_vae is this
    checkout's)."""
    package = f"ppl_vae.{backend}._mixture_math"
    math_module = load_module(root / "ppl_vae" / backend / "_mixture_math.py",
                              f"_{label}_{backend}_mixture_math")
    saved = sys.modules.get(package)
    sys.modules[package] = math_module  # what vamp_prior.py imports its functions from
    try:
        vamp = load_module(root / "ppl_vae" / backend / "vamp_prior.py",
                           f"_{label}_{backend}_vamp_prior")
    finally:
        if saved is None:
            del sys.modules[package]
        else:
            sys.modules[package] = saved
    return math_module, vamp


def components(seed=0):
    """``(z, loc, scale)`` as float32 NumPy arrays: points drawn from the mixture."""
    import numpy as np

    rng = np.random.default_rng(seed)
    loc = rng.standard_normal((K, LATENT))
    scale = np.exp(-3.0 * rng.random((K, LATENT)))
    k = rng.integers(K, size=BATCH)
    z = loc[k] + scale[k] * rng.standard_normal((BATCH, LATENT))
    return tuple(a.astype(np.float32) for a in (z, loc, scale))


def embedded_mnist(n):
    from ppl_vae.data import load_embedded_mnist

    return load_embedded_mnist().train[:n].astype("float32")


# ---- torch ----------------------------------------------------------------------------------
def torch_mixture(version, calls):
    import torch

    from ppl_vae.pyro._numerics import flush_negligible_grad

    z0, loc0, scale0 = (torch.as_tensor(a) for a in components())

    def run():
        for _ in range(calls):
            z, loc, scale = (a.clone().requires_grad_(True) for a in (z0, loc0, scale0))
            log_p = version[0].diag_normal_mixture_log_prob(
                z, flush_negligible_grad(loc), flush_negligible_grad(scale))
            log_p.sum().backward()

    return run


def torch_step(version, calls):
    import torch

    import ppl_vae.pyro as pv

    torch.manual_seed(0)
    enc = pv.Encoder(INPUT, LATENT, (HIDDEN, HIDDEN))
    dec = pv.Decoder(LATENT, INPUT, (HIDDEN, HIDDEN))
    pseudo = torch.nn.Parameter(0.05 + 0.01 * torch.randn(K, INPUT))
    params = [*enc.parameters(), *dec.parameters(), pseudo]
    try:
        opt = torch.optim.Adam(params, lr=LR, fused=True)
    except RuntimeError:
        opt = torch.optim.Adam(params, lr=LR)
    data = torch.as_tensor(embedded_mnist(BATCH * calls)).reshape(calls, BATCH, INPUT)

    def loss_fn(x):
        loc, scale = enc(x)  # (B, L) each
        z = loc + scale * torch.randn_like(loc)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        p_loc, p_scale = enc(torch.nn.functional.hardtanh(pseudo, 0.0, 1.0))  # (K, L) each
        log_p = version[1].VampPrior(p_loc, p_scale).expand([BATCH]).log_prob(z)  # a plate
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
            dec(z), x, reduction="none").sum(-1)
        return -(log_lik + log_p - log_q).sum()

    def run():
        for x in data:
            loss = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


# ---- JAX ------------------------------------------------------------------------------------
def jax_mixture(version, calls):
    import jax
    import jax.numpy as jnp

    z, loc, scale = (jnp.asarray(a) for a in components())
    grad = jax.jit(jax.grad(
        lambda z, loc, scale: version[0].diag_normal_mixture_log_prob(z, loc, scale).sum(),
        argnums=(0, 1, 2)))

    def run():
        for _ in range(calls):
            out = grad(z, loc, scale)
        jax.block_until_ready(out)

    return run


def jax_step(version, calls):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax, random

    import ppl_vae.numpyro as pv

    keys = random.split(random.PRNGKey(0), 4)
    params = (pv.Encoder(INPUT, LATENT, (HIDDEN, HIDDEN), rng_key=keys[0]),
              pv.Decoder(LATENT, INPUT, (HIDDEN, HIDDEN), rng_key=keys[1]),
              0.05 + 0.01 * random.normal(keys[2], (K, INPUT)))
    arrays, static = eqx.partition(params, eqx.is_array)
    opt = optax.adam(LR)
    data = jnp.asarray(embedded_mnist(BATCH * calls)).reshape(calls, BATCH, INPUT)

    def loss_fn(arrays, x, key):
        enc, dec, pseudo = eqx.combine(arrays, static)
        loc, scale = enc(x)  # (B, L) each
        eps = random.normal(key, loc.shape)
        z = loc + scale * eps
        log_q = (-0.5 * eps**2 - jnp.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
        p_loc, p_scale = enc(jnp.clip(pseudo, 0.0, 1.0))  # (K, L) each
        log_p = version[1].VampPrior(p_loc, p_scale).expand((BATCH,)).log_prob(z)  # a plate
        logits = dec(z)
        log_lik = -(jnp.logaddexp(0.0, logits) - x * logits).sum(-1)
        return -(log_lik + log_p - log_q).sum()

    @jax.jit
    def epoch(arrays, opt_state, key):
        def step(carry, inputs):
            arrays, opt_state = carry
            x, i = inputs
            loss, grads = jax.value_and_grad(loss_fn)(arrays, x, random.fold_in(key, i))
            updates, opt_state = opt.update(grads, opt_state)
            return (optax.apply_updates(arrays, updates), opt_state), loss

        (arrays, opt_state), losses = lax.scan(step, (arrays, opt_state),
                                               (data, jnp.arange(calls)))
        return arrays, opt_state, losses.sum()

    state = {"arrays": arrays, "opt": opt.init(arrays), "i": 0}

    def run():
        state["i"] += 1
        state["arrays"], state["opt"], total = epoch(state["arrays"], state["opt"],
                                                     random.PRNGKey(state["i"]))
        jax.block_until_ready(total)

    return run


# ---- measurement ------------------------------------------------------------------------------
def measure(runners, calls, rounds):
    """Median over rounds of (wall, CPU) seconds per call; contenders interleaved in a new
    random order each round, so that none always follows the same one. (A rotation of one
    order would not do: it keeps every contender behind the same neighbour, and whatever runs
    right after a JAX step or a torch step pays for its worker threads winding down; here
    that made one side of a pair 10% slower in every round.)"""
    for run in runners.values():  # warm-up (and JIT compilation)
        run()
    names = list(runners)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    order = random.Random(0)
    for _ in range(rounds):
        for name in order.sample(names, len(names)):
            w0, c0 = time.perf_counter(), time.process_time()
            runners[name]()
            cpu[name].append((time.process_time() - c0) / calls)
            wall[name].append((time.perf_counter() - w0) / calls)
    results = {name: {"wall_ms": 1e3 * statistics.median(wall[name]),
                      "cpu_ms": 1e3 * statistics.median(cpu[name]),
                      "cpu_ms_min": 1e3 * min(cpu[name])} for name in names}
    for name in names:  # this / baseline, round by round (the two ran close together)
        if name.endswith("/this"):
            base = name[: -len("this")] + "baseline"
            ratios = sorted(t / b for t, b in zip(cpu[name], cpu[base]))
            q1, q2, q3 = statistics.quantiles(ratios, n=4)
            results[name]["paired_cpu_ratio"] = {"median": q2, "q1": q1, "q3": q3}
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, type=Path,
                   help="root of the ppl_vae checkout to compare against")
    p.add_argument("--calls", type=int, default=20, help="calls (steps) per timed block")
    p.add_argument("--rounds", type=int, default=25, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads; 1 also makes XLA single-threaded")
    p.add_argument("--backend", choices=["pyro", "numpyro", "both"], default="both")
    p.add_argument("--what", choices=["mixture", "step", "both"], default="both")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads == 1:  # before JAX is imported
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    runners = {}
    for backend, mixture_fn, step_fn in [("pyro", torch_mixture, torch_step),
                                         ("numpyro", jax_mixture, jax_step)]:
        if args.backend not in (backend, "both"):
            continue
        modules = {"this": load_version(REPO, backend, "this"),
                   "baseline": load_version(args.baseline, backend, "baseline")}
        for kind, make in [("mixture", mixture_fn), ("step", step_fn)]:
            if args.what not in (kind, "both"):
                continue
            for which, module in modules.items():
                runners[f"{backend}/{kind}/{which}"] = make(module, args.calls)

    results = measure(runners, args.calls, args.rounds)
    print(f"{'contender':<24} {'wall ms':>8} {'cpu ms':>8} {'cpu min':>8}   this / baseline: "
          "wall, cpu, cpu paired by round (median [quartiles])")
    for name, r in results.items():
        line = f"{name:<24} {r['wall_ms']:8.3f} {r['cpu_ms']:8.3f} {r['cpu_ms_min']:8.3f}"
        if name.endswith("/this"):
            base = results[name[: -len("this")] + "baseline"]
            paired = r["paired_cpu_ratio"]
            line += (f"   {r['wall_ms'] / base['wall_ms']:.3f}, {r['cpu_ms'] / base['cpu_ms']:.3f}, "
                     f"{paired['median']:.3f} [{paired['q1']:.3f}, {paired['q3']:.3f}]")
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"settings": vars(args) | {"baseline": str(args.baseline)}, "results": results},
            indent=2))


if __name__ == "__main__":
    main()
