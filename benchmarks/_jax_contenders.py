"""JAX contenders for ``benchmarks/throughput.py``: ppl_vae's NumPyro epoch and a hand-written
JAX + optax epoch of the same VampPrior VAE (784-300-300-40 gated MLPs, K = 500, batch 100,
Adam 5e-4, Bernoulli likelihood). Each runner runs one whole jitted epoch over the data it was
built with; a step's time is the epoch's time / (len(data) / 100).

Run the comparison with ``python benchmarks/throughput.py``.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax, random

# ---- settings ---------------------------------------------------------------------------
BATCH, K, LATENT, HIDDEN, INPUT = 100, 500, 40, 300, 784
LR = 5e-4


def load_data(num):
    try:
        from ppl_vae.data import load_embedded_mnist
        return load_embedded_mnist().train[:num]
    except Exception:  # offline fallback: random binary images
        rng = np.random.default_rng(0)
        return (rng.random((num, INPUT)) < 0.2).astype(np.float32)


# ---- NumPyro ------------------------------------------------------------------------------
def numpyro_runner(data):
    from ppl_vae import numpyro as pv
    from ppl_vae.guides.vae_numpyro import vae_guide
    from ppl_vae.models.vae_numpyro import vae_model

    k = random.split(random.PRNGKey(0), 3)
    enc = pv.Encoder(INPUT, LATENT, (HIDDEN, HIDDEN), rng_key=k[0])
    dec = pv.Decoder(LATENT, INPUT, (HIDDEN, HIDDEN), rng_key=k[1])
    prior = pv.LearnedVampPrior(enc, K, rng_key=k[2])
    model = partial(vae_model, decoder=dec, prior=prior)
    guide = partial(vae_guide, encoder=enc)
    # The compiled epoch of ppl_vae.numpyro.fit itself (fit minus checkpoints/validation).
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro

    from ppl_vae.numpyro.training import _annealed, _epoch_fn
    # fit's programs: model and guide under the KL warm-up handler
    svi = SVI(_annealed(model), _annealed(guide), optax_to_numpyro(optax.adam(LR)), Trace_ELBO())
    x = jnp.asarray(data)
    state = svi.init(random.PRNGKey(1), x[:BATCH], _kl_weight=jnp.asarray(1.0))
    n = len(x)
    # fit's epoch with its per-step divergence check (nothing counts as exploded here)
    epoch = _epoch_fn(svi, n, BATCH, float("inf"), False)

    holder = {"state": state, "i": 0}

    def run():
        holder["i"] += 1
        holder["state"], total, _, _ = epoch(holder["state"], random.PRNGKey(holder["i"]),
                                             jnp.asarray(1.0), x)
        return float(total) / n

    return run


# ---- hand-written JAX + optax -----------------------------------------------------------
def jax_runner(data):
    def linear(key, n_in, n_out):
        return {"w": math.sqrt(2.0 / n_in) * random.normal(key, (n_out, n_in)),
                "b": jnp.zeros(n_out)}

    def mlp(key, n_in, n_out):
        k = random.split(key, 3)
        return [linear(k[0], n_in, 2 * HIDDEN), linear(k[1], HIDDEN, 2 * HIDDEN),
                linear(k[2], HIDDEN, n_out)]

    def apply(layers, x):
        for layer in layers[:-1]:
            h, g = jnp.split(x @ layer["w"].T + layer["b"], 2, axis=-1)
            x = h * jax.nn.sigmoid(g)
        return x @ layers[-1]["w"].T + layers[-1]["b"]

    def encode(p, x):
        loc, logvar = jnp.split(apply(p["enc"], x), 2, axis=-1)
        return loc, jnp.clip(logvar, -6.0, 2.0)

    def mixture_log_prob(z, m, logvar):  # matmul form, centred, capped (as _mixture_math)
        c = lax.stop_gradient(m).mean(0)
        prec = jnp.exp(-logvar)
        m = m - c
        z = z - c
        log_peak = -0.5 * logvar.sum(-1) - 0.5 * LATENT * math.log(2 * math.pi)
        bias = log_peak - 0.5 * (m * m * prec).sum(-1)
        w = jnp.concatenate([-0.5 * prec, m * prec], -1)
        f = jnp.concatenate([z * z, z], -1)
        lp = jnp.minimum(jnp.matmul(f, w.T, precision=lax.Precision.HIGHEST) + bias, log_peak)
        return jax.scipy.special.logsumexp(lp, -1) - math.log(K)

    def loss_fn(p, x, key):
        loc, logvar = encode(p, x)
        scale = jnp.exp(0.5 * logvar)
        eps = random.normal(key, loc.shape)
        z = loc + scale * eps
        logits = apply(p["dec"], z)
        log_px = -(jnp.logaddexp(0.0, logits) - x * logits).sum(-1)
        log_q = (-0.5 * eps**2 - jnp.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
        m_k, lv_k = encode(p, jnp.clip(p["u"], 0.0, 1.0))
        log_pz = mixture_log_prob(z, m_k, lv_k)
        return -(log_px + log_pz - log_q).sum()

    k = random.split(random.PRNGKey(0), 3)
    params = {"enc": mlp(k[0], INPUT, 2 * LATENT), "dec": mlp(k[1], LATENT, INPUT),
              "u": 0.05 + 0.01 * random.normal(k[2], (K, INPUT))}
    opt = optax.adam(LR)
    opt_state = opt.init(params)
    x = jnp.asarray(data)
    n = len(x)

    @jax.jit
    def epoch(params, opt_state, key, data):
        perm_key, step_key = random.split(key)
        perm = random.permutation(perm_key, n)

        def step(i, carry):
            params, opt_state, total = carry
            xb = data[lax.dynamic_slice_in_dim(perm, i * BATCH, BATCH)]
            loss, grads = jax.value_and_grad(loss_fn)(params, xb, random.fold_in(step_key, i))
            updates, opt_state = opt.update(grads, opt_state)
            return optax.apply_updates(params, updates), opt_state, total + loss

        return lax.fori_loop(0, n // BATCH, step, (params, opt_state, jnp.zeros(())))

    holder = {"p": params, "o": opt_state, "i": 0}

    def run():
        holder["i"] += 1
        holder["p"], holder["o"], total = epoch(holder["p"], holder["o"],
                                                random.PRNGKey(holder["i"]), x)
        return float(total) / n

    return run
