"""JAX contenders for ``benchmarks/throughput.py conv``: ppl_vae's NumPyro epoch and a
hand-written JAX + optax step of the same convHVAE / PixelHVAE (the reference's networks,
:mod:`ppl_vae.numpyro.conv`; latent 40 + 40, K = 500 image pseudo-inputs, batch 100, Adam
5e-4, Bernoulli likelihood), and the NumPyro importance-sampled log-likelihood. Each training
runner runs one epoch over the data it was built with (NumPyro: fit's jitted epoch;
hand-written: a jitted step per batch); a step's time is the epoch's time / (len(data) / 100).
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax, random

BATCH, K, LATENT, HIDDEN, LR = 100, 500, 40, 300, 5e-4
_NHWC = ("NHWC", "HWIO", "NHWC")


# ---- ppl_vae --------------------------------------------------------------------------------
def numpyro_programs(model_name, image_shape, num_pseudo=K, seed=0):
    """``(model, guide)`` of ppl_vae's NumPyro convHVAE / PixelHVAE as the experiment builds
    them (``ppl_vae/numpyro/_runner.py``)."""
    from ppl_vae import numpyro as pv
    from ppl_vae.guides.hvae_numpyro import hvae_guide
    from ppl_vae.models.hvae_numpyro import hvae_model
    from ppl_vae.models.pixelhvae_numpyro import pixelhvae_model

    k = random.split(random.PRNGKey(seed), 5)
    L = LATENT
    enc = pv.ConvEncoder(image_shape, L, rng_key=k[0])
    enc1 = pv.ConvEncoder(image_shape, L, cond_dim=L, kernel_sizes=(3,) * 5, rng_key=k[1])
    z1_prior = pv.ConditionalGaussian(L, L, rng_key=k[2])
    if model_name == "convhvae":
        dec, program = pv.ConvDecoder(image_shape, (L, L), rng_key=k[3]), hvae_model
    else:
        dec, program = pv.PixelCNNDecoder(image_shape, (L, L), rng_key=k[3]), pixelhvae_model
    prior = pv.LearnedVampPrior(enc, num_pseudo, rng_key=k[4])
    return (partial(program, decoder=dec, z1_prior=z1_prior, prior=prior),
            partial(hvae_guide, encoder=enc, z1_encoder=enc1))


def numpyro_runner(data, model_name, image_shape):
    """fit's compiled epoch (with its per-step divergence check) over ``data``."""
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro

    from ppl_vae.numpyro.training import _annealed, _epoch_fn

    model, guide = numpyro_programs(model_name, image_shape)
    svi = SVI(_annealed(model), _annealed(guide), optax_to_numpyro(optax.adam(LR)), Trace_ELBO())
    x = jnp.asarray(data)
    state = jax.jit(lambda key, xb: svi.init(key, xb, _kl_weight=jnp.asarray(1.0)))(
        random.PRNGKey(1), x[:BATCH])
    epoch = _epoch_fn(svi, len(x), BATCH, float("inf"), False)
    holder = {"state": state, "i": 0}

    def run():
        holder["i"] += 1
        holder["state"], total, _, _ = epoch(holder["state"], random.PRNGKey(holder["i"]),
                                             jnp.asarray(1.0), x)
        return float(total) / len(x)

    return run


def numpyro_eval(x, model_name, image_shape, num_samples):
    """ppl_vae's NumPyro importance-sampled log p(x) of the rows of ``x``, with the parameters
    passed as ``params=`` as the experiment passes fit's (with ``params=None`` the networks'
    arrays are compile-time constants and XLA constant-folds the encoder over the K
    pseudo-inputs: 36 s for the convolutional one)."""
    from numpyro import handlers

    from ppl_vae import numpyro as pv

    model, guide = numpyro_programs(model_name, image_shape)
    params = {}
    for fn in (guide, model):
        trace = handlers.trace(handlers.seed(fn, 0)).get_trace(jnp.asarray(x[:1]))
        params.update({k: s["value"] for k, s in trace.items() if s["type"] == "param"})
    return lambda: pv.importance_log_likelihood(random.PRNGKey(2), model, guide, x,
                                                num_samples=num_samples, params=params)


# ---- hand-written JAX + optax ---------------------------------------------------------------
def _conv_p(key, cin, cout, k):
    bound = 1.0 / math.sqrt(cin * k * k)
    kw, kb = random.split(key)
    return {"w": random.uniform(kw, (k, k, cin, cout), minval=-bound, maxval=bound),
            "b": random.uniform(kb, (cout,), minval=-bound, maxval=bound)}


def _dense_p(key, n_in, n_out):
    return {"w": math.sqrt(2.0 / n_in) * random.normal(key, (n_in, n_out)), "b": jnp.zeros(n_out)}


def _conv(p, x, stride=1):
    k = p["w"].shape[0]
    return lax.conv_general_dilated(x, p["w"], (stride, stride), ((k // 2, k // 2),) * 2,
                                    dimension_numbers=_NHWC) + p["b"]


def _gate(y):
    h, g = jnp.split(y, 2, axis=-1)
    return h * jax.nn.sigmoid(g)


def _dense(p, x):
    return x @ p["w"] + p["b"]


def _encoder_p(key, image_shape, kernels, cond):
    chans, strides = (32, 32, 64, 64, 6), (1, 2, 1, 2, 1)
    keys = random.split(key, 8)
    h, w = image_shape
    for s in strides:
        h, w = -(-h // s), -(-w // s)
    feats = 6 * h * w
    p = {"convs": [_conv_p(kk, i, 2 * o, k) for kk, i, o, k in
                   zip(keys, (1,) + chans[:-1], chans, kernels)]}
    if cond:
        p["cond"], p["joint"] = _dense_p(keys[5], LATENT, 2 * feats), _dense_p(keys[6], 2 * feats,
                                                                                2 * HIDDEN)
        p["head"] = _dense_p(keys[7], HIDDEN, 2 * LATENT)
    else:
        p["head"] = _dense_p(keys[7], feats, 2 * LATENT)
    return p


def _encode(p, x, image_shape, z=None):
    h = x.reshape(-1, *image_shape, 1)
    for layer, s in zip(p["convs"], (1, 2, 1, 2, 1)):
        h = _gate(_conv(layer, h, s))
    h = h.reshape(len(x), -1)
    if z is not None:
        h = _gate(_dense(p["joint"], jnp.concatenate([h, _gate(_dense(p["cond"], z))], -1)))
    loc, logvar = jnp.split(_dense(p["head"], h), 2, axis=-1)
    return loc, jnp.clip(logvar, -6.0, 2.0)


def _mask(k, mask_type, cin, cond):
    m = np.ones((k, k, cin, 1))
    c = k // 2
    m[c + 1:] = 0
    m[c, c + 1:] = 0
    if mask_type == "A":
        m[c, c, :cin - cond] = 0
    return m


def jax_runner(data, model_name, image_shape):
    D = image_shape[0] * image_shape[1]
    keys = random.split(random.PRNGKey(0), 16)
    params = {
        "enc": _encoder_p(keys[0], image_shape, (7, 3, 5, 3, 3), False),
        "enc1": _encoder_p(keys[1], image_shape, (3,) * 5, True),
        "prior1": [_dense_p(keys[2], LATENT, 2 * HIDDEN), _dense_p(keys[3], HIDDEN, 2 * HIDDEN),
                   _dense_p(keys[4], HIDDEN, 2 * LATENT)],
        "u": 0.05 + 0.01 * random.normal(keys[5], (K, D)),
    }
    if model_name == "convhvae":
        params["dec"] = {"z": [_dense_p(keys[6], LATENT, 2 * HIDDEN), _dense_p(keys[7], LATENT,
                                                                               2 * HIDDEN)],
                         "joint": _dense_p(keys[8], 2 * HIDDEN, 2 * D),
                         "convs": [_conv_p(keys[9 + i], 1 if i == 0 else 64, 128, 3)
                                   for i in range(4)],
                         "head": _conv_p(keys[13], 64, 1, 1)}
    else:
        layers = [_conv_p(keys[9], 3, 64, 3)] + [_conv_p(kk, 64, 64, 3)
                                                for kk in random.split(keys[10], 7)]
        params["dec"] = {"z": [_dense_p(keys[6], LATENT, 2 * D), _dense_p(keys[7], LATENT, 2 * D)],
                         "layers": layers, "head": _conv_p(keys[13], 64, 1, 1)}
    masks = [_mask(3, "A", 3, 2)] + [_mask(3, "B", 64, 0)] * 7

    def decode(p, x, z1, z2):
        if model_name == "convhvae":
            h = jnp.concatenate([_gate(_dense(p["z"][0], z1)), _gate(_dense(p["z"][1], z2))], -1)
            h = _gate(_dense(p["joint"], h)).reshape(-1, *image_shape, 1)
            for layer in p["convs"]:
                h = _gate(_conv(layer, h))
        else:
            maps = [_gate(_dense(q, z)).reshape(-1, *image_shape, 1)
                    for q, z in zip(p["z"], (z1, z2))]
            h = jnp.concatenate([x.reshape(-1, *image_shape, 1), *maps], -1)
            for layer, m in zip(p["layers"], masks):
                h = jax.nn.relu(_conv({"w": layer["w"] * m, "b": layer["b"]}, h))
        return _conv(p["head"], h).reshape(len(z1), D)

    def normal_lp(z, loc, logvar):
        return (-0.5 * (z - loc) ** 2 * jnp.exp(-logvar) - 0.5 * logvar
                - 0.5 * math.log(2 * math.pi)).sum(-1)

    def mixture_log_prob(z, m, logvar):  # matmul form, centred, capped (as _mixture_math)
        c = lax.stop_gradient(m).mean(0)
        prec = jnp.exp(-logvar)
        m, z = m - c, z - c
        log_peak = -0.5 * logvar.sum(-1) - 0.5 * LATENT * math.log(2 * math.pi)
        bias = log_peak - 0.5 * (m * m * prec).sum(-1)
        w = jnp.concatenate([-0.5 * prec, m * prec], -1)
        f = jnp.concatenate([z * z, z], -1)
        lp = jnp.minimum(jnp.matmul(f, w.T, precision=lax.Precision.HIGHEST) + bias, log_peak)
        return jax.scipy.special.logsumexp(lp, -1) - math.log(K)

    def loss_fn(p, x, key):
        k2, k1 = random.split(key)
        loc2, lv2 = _encode(p["enc"], x, image_shape)
        z2 = loc2 + jnp.exp(0.5 * lv2) * random.normal(k2, loc2.shape)
        loc1, lv1 = _encode(p["enc1"], x, image_shape, z2)
        z1 = loc1 + jnp.exp(0.5 * lv1) * random.normal(k1, loc1.shape)
        h = z2
        for layer in p["prior1"][:-1]:
            h = _gate(_dense(layer, h))
        ploc1, plv1 = jnp.split(_dense(p["prior1"][-1], h), 2, axis=-1)
        plv1 = jnp.clip(plv1, -6.0, 2.0)
        logits = decode(p["dec"], x, z1, z2)
        log_px = (x * logits - jnp.logaddexp(0.0, logits)).sum(-1)
        m_k, lv_k = _encode(p["enc"], jnp.clip(p["u"], 0.0, 1.0), image_shape)
        log_p = mixture_log_prob(z2, m_k, lv_k) + normal_lp(z1, ploc1, plv1)
        log_q = normal_lp(z2, loc2, lv2) + normal_lp(z1, loc1, lv1)
        return -(log_px + log_p - log_q).sum()

    opt = optax.adam(LR)
    opt_state = opt.init(params)
    x = jnp.asarray(data)
    n = len(x)

    # One jitted step called from Python, not a jitted epoch: XLA's CPU backend compiles a
    # convolution's weight gradient inside a loop body to a naive loop nest (jax-ml/jax#12868;
    # measured: this network's epoch took 380 s to compile and over 40 s a step).
    @jax.jit
    def step(params, opt_state, key, xb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, key)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    holder = {"p": params, "o": opt_state, "i": 0}

    def run():
        holder["i"] += 1
        key = random.PRNGKey(holder["i"])
        perm = np.asarray(random.permutation(key, n))
        total = 0.0
        for i in range(n // BATCH):
            holder["p"], holder["o"], loss = step(holder["p"], holder["o"],
                                                  random.fold_in(key, i),
                                                  x[perm[i * BATCH:(i + 1) * BATCH]])
            total += loss
        return float(total) / n

    return run
