"""Epoch time across a long run: does training slow down as it goes (issue 14)?

Run (the full default, 100 epochs of each of the three contenders on both datasets, takes
roughly half an hour on a 2-core CPU; pass fewer)::

    python benchmarks/long_run.py --json out/long_run.json
    python benchmarks/long_run.py --dataset frey --backend pyro --epochs 30 --threads 1
    python benchmarks/long_run.py --dataset frey --backend pyro --epochs 30 --threads 1 --no-fix

On a machine that other work shares, ``--clock cpu`` times epochs in the process's CPU
seconds instead of wall-clock seconds.

Datasets (``--dataset``): ``frey`` (Frey Faces, 28 x 20 grey faces, the 256-bin discretised
logistic, pseudo-inputs initialised N(0.5, 0.02), the first 1565 of a fixed shuffle: 16 steps
an epoch) and ``static-mnist`` (binary, Bernoulli, pseudo-inputs N(0.05, 0.01), the first
``--max-train`` images). Network: the paper's gated MLPs (D-300-300-40 encoder and decoder),
VampPrior with K = 500, batch 100, Adam 5e-4, no validation, no KL warm-up unless
``--warmup``.

Contenders (``--backend``):

- ``pyro``: ``ppl_vae.pyro.fit``; per-epoch seconds from ``FitResult.history``;
- ``numpyro``: ``ppl_vae.numpyro.fit`` (its epoch 1 includes the compilation);
- ``torch``: a hand-written plain PyTorch loop of the same network (gated MLPs, the mixture
  log-density by broadcasting, Adam over every parameter, the same batches), no Pyro and no
  ppl_vae code: what plain PyTorch does with this model.

For each: epoch-1 and epoch-N seconds and their ratio, and, less noisy, the median of epochs
2-6 against the median of the last five (``late_over_early``). A ratio well above 1 is the
slow-down; ``--json`` keeps every epoch's time.

Subnormal floats made the Pyro epoch grow (0.5 s to 4 s over 60 Frey Faces epochs): the
VampPrior's log-density gave far-away components subnormal gradients, which then ran back
through the encoder's matrix products; and Adam's first moments of pseudo-input pixels stuck
outside [0, 1] decayed into the subnormal range and stayed there. A third slow path is not
subnormal: torch's CPU ``exp`` is 80-200x slower below -87, which is where the far
components of the mixture's log-sum-exp sit; it made the epoch creep up 15-19% over 100
epochs after the first two were fixed (see ``ppl_vae/pyro/_numerics.py``). ``--no-fix`` turns
ppl_vae's fixes off to reproduce all three; ``--flush-denormal`` runs the torch-side
contenders inside ``ppl_vae.pyro._numerics.flush_denormal()`` (the global CPU switch; it covers
only the calling thread, so use it with ``--threads 1``).
"""

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH, K, LATENT, HIDDEN, LR = 100, 500, 40, 300, 5e-4
DATASETS = ("frey", "static-mnist")
BACKENDS = ("pyro", "numpyro", "torch")


# ---- data ------------------------------------------------------------------------------------
def load_data(name, data_dir, max_train):
    """``(x_train float32 (N, D), spec)``; spec: likelihood and the pseudo-input init."""
    data_dir = Path(data_dir)
    if name == "frey":
        from scipy.io import loadmat

        path = data_dir / "freyfaces" / "frey_rawface.mat"
        if not path.exists():
            path = data_dir / "frey_rawface.mat"
        faces = loadmat(path)["ff"].T.astype(np.float32) / 255.0  # (1965, 560), i / 255
        faces = faces[np.random.default_rng(0).permutation(len(faces))]
        return faces[:1565], {"likelihood": "logistic", "init_loc": 0.5, "init_scale": 0.02}
    from ppl_vae.data import load_static_mnist

    train = load_static_mnist(data_dir).train[:max_train].astype(np.float32)
    return train, {"likelihood": "bernoulli", "init_loc": 0.05, "init_scale": 0.01}


def summarize(seconds):
    early = seconds[1:6] or seconds[:1]
    late = seconds[-5:]
    out = {"epochs": len(seconds), "epoch_1_s": seconds[0], "epoch_n_s": seconds[-1],
           "ratio": seconds[-1] / seconds[0],
           "early_median_s": statistics.median(early), "late_median_s": statistics.median(late)}
    out["late_over_early"] = out["late_median_s"] / out["early_median_s"]
    return out


# ---- contenders: each returns the list of per-epoch seconds -----------------------------------
def _library_fix(enabled):
    """With ``enabled=False`` ppl_vae's subnormal fixes are off (issue 14's state)."""
    from ppl_vae.pyro._numerics import fixes_disabled

    return contextlib.nullcontext() if enabled else fixes_disabled()


def _flush_context(args):
    if not args.flush_denormal:
        return contextlib.nullcontext()
    from ppl_vae.pyro._numerics import flush_denormal

    return flush_denormal()


def run_pyro(x, spec, args):
    from functools import partial

    import pyro
    import torch

    import ppl_vae.pyro as pv
    from ppl_vae.guides.vae_pyro import vae_guide
    from ppl_vae.models.vae_pyro import vae_model

    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    likelihood = pv.discretized_logistic if spec["likelihood"] == "logistic" else pv.bernoulli
    dim = x.shape[1]
    encoder = pv.Encoder(dim, LATENT, (HIDDEN, HIDDEN))
    decoder = pv.Decoder(LATENT, dim, (HIDDEN, HIDDEN),
                         params_per_pixel=likelihood.params_per_pixel)
    prior = pv.LearnedVampPrior(encoder, args.num_pseudo, init_loc=spec["init_loc"],
                                init_scale=spec["init_scale"])
    model = partial(vae_model, decoder=decoder, prior=prior, likelihood=likelihood)
    guide = partial(vae_guide, encoder=encoder)
    with _library_fix(not args.no_fix), _flush_context(args):
        result = pv.fit(model, guide, torch.as_tensor(x), None, num_epochs=args.epochs,
                        batch_size=args.batch_size, learning_rate=args.lr,
                        warmup_epochs=args.warmup, seed=args.seed, progress=False)
    return [r["seconds"] for r in result.history]


def run_numpyro(x, spec, args):
    from functools import partial

    from jax import random

    import ppl_vae.numpyro as pn
    from ppl_vae.guides.vae_numpyro import vae_guide
    from ppl_vae.models.vae_numpyro import vae_model

    k_enc, k_dec, k_prior, k_fit = random.split(random.PRNGKey(args.seed), 4)
    likelihood = pn.discretized_logistic if spec["likelihood"] == "logistic" else pn.bernoulli
    dim = x.shape[1]
    encoder = pn.Encoder(dim, LATENT, (HIDDEN, HIDDEN), rng_key=k_enc)
    decoder = pn.Decoder(LATENT, dim, (HIDDEN, HIDDEN),
                         params_per_pixel=likelihood.params_per_pixel, rng_key=k_dec)
    prior = pn.LearnedVampPrior(encoder, args.num_pseudo, init_loc=spec["init_loc"],
                                init_scale=spec["init_scale"], rng_key=k_prior)
    model = partial(vae_model, decoder=decoder, prior=prior, likelihood=likelihood)
    guide = partial(vae_guide, encoder=encoder)
    result = pn.fit(k_fit, model, guide, x, None, num_epochs=args.epochs,
                    batch_size=args.batch_size, learning_rate=args.lr,
                    warmup_epochs=args.warmup, progress=False)
    return [r["seconds"] for r in result.history]


def run_torch(x, spec, args):
    """Plain PyTorch, written the usual way (no Pyro, no ppl_vae)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def linear(n_in, n_out):  # He-normal, as the paper's code
        lin = nn.Linear(n_in, n_out)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        return lin

    class Gated(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.h, self.g = linear(n_in, n_out), linear(n_in, n_out)

        def forward(self, v):
            return self.h(v) * torch.sigmoid(self.g(v))

    def mlp(n_in, n_out):
        return nn.Sequential(Gated(n_in, HIDDEN), Gated(HIDDEN, HIDDEN), linear(HIDDEN, n_out))

    torch.manual_seed(args.seed)
    dim = x.shape[1]
    logistic = spec["likelihood"] == "logistic"
    enc, dec = mlp(dim, 2 * LATENT), mlp(LATENT, (2 if logistic else 1) * dim)
    pseudo = nn.Parameter(spec["init_loc"] + spec["init_scale"] * torch.randn(args.num_pseudo, dim))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), pseudo], lr=args.lr)
    data = torch.as_tensor(x)
    half_bin = 0.5 / 255

    def encode(v):
        loc, logvar = enc(v).chunk(2, -1)
        return loc, torch.exp(0.5 * logvar.clamp(-6.0, 2.0))

    def log_lik(params, v):
        if not logistic:
            return -F.binary_cross_entropy_with_logits(params, v, reduction="none").sum(-1)
        loc_logit, log_scale = params.chunk(2, -1)
        loc, scale = torch.sigmoid(loc_logit), log_scale.clamp(-4.5, 0.0).exp()
        upper, lower = (v + half_bin - loc) / scale, (v - half_bin - loc) / scale
        mass = -F.softplus(-upper) - F.softplus(lower) + torch.log(-torch.expm1(lower - upper))
        mass = torch.where(v < half_bin, -F.softplus(-upper), mass)
        return torch.where(v > 1 - half_bin, -F.softplus(lower), mass).sum(-1)

    def loss_fn(v, beta):
        loc, scale = encode(v)
        z = loc + scale * torch.randn_like(loc)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        p_loc, p_scale = encode(F.hardtanh(pseudo, 0.0, 1.0))
        comp = torch.distributions.Normal(p_loc, p_scale).log_prob(z[:, None, :]).sum(-1)
        log_p = torch.logsumexp(comp, -1) - math.log(args.num_pseudo)
        return -(log_lik(dec(z), v) + beta * (log_p - log_q)).sum()

    seconds, n = [], len(data)
    with _flush_context(args):
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            beta = min(1.0, (epoch + 1) / args.warmup) if args.warmup else 1.0
            perm = torch.randperm(n)
            for i in range(math.ceil(n / args.batch_size)):
                loss = loss_fn(data[perm[i * args.batch_size:(i + 1) * args.batch_size]], beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            seconds.append(time.perf_counter() - t0)
    return seconds


RUNNERS = {"pyro": run_pyro, "numpyro": run_numpyro, "torch": run_torch}


@contextlib.contextmanager
def _clock(kind):
    """``--clock cpu``: every ``time.perf_counter`` (the clock both ``fit``s and the torch loop
    time their epochs with) reads the process's CPU time instead, so that other work on a
    shared machine does not count (CPU seconds add up over threads)."""
    if kind == "wall":
        yield
        return
    original = time.perf_counter
    time.perf_counter = time.process_time
    try:
        yield
    finally:
        time.perf_counter = original


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--backend", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--epochs", type=int, default=100, help="epochs per run (default 100)")
    p.add_argument("--max-train", type=int, default=5000,
                   help="static MNIST training images (Frey Faces always uses 1565)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--num-pseudo", type=int, default=K)
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--warmup", type=int, default=0, help="KL warm-up epochs (default none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads, and XLA's intra-op threads (default: each library's)")
    p.add_argument("--no-fix", action="store_true",
                   help="turn off ppl_vae's three fixes (the gradient cut, the Adam state "
                        "flush, the log-sum-exp floor: reproduces issue 14)")
    p.add_argument("--flush-denormal", action="store_true",
                   help="run the pyro and torch contenders with the CPU's flush-to-zero on")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="epoch times in wall-clock seconds, or in the process's CPU seconds "
                        "(not counting other work on a shared machine)")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.threads:
        # Before JAX is imported (only run_numpyro imports it).
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                              f"intra_op_parallelism_threads={args.threads}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"{args.epochs} epochs; {args.clock} clock; library fix {'off' if args.no_fix else 'on'}"
          f"{', flush-denormal on' if args.flush_denormal else ''}")
    print("| dataset | backend | epoch 1 s | epoch N s | N / 1 | median 2-6 s | median last 5 s "
          "| late / early |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.dataset:
        x, spec = load_data(name, args.data_dir, args.max_train)
        for backend in args.backend:
            with _clock(args.clock):
                seconds = RUNNERS[backend](x, spec, args)
            s = summarize(seconds)
            results.append({"dataset": name, "backend": backend, "num_train": len(x), **s,
                            "seconds": seconds})
            print(f"| {name} | {backend} | {s['epoch_1_s']:.3f} | {s['epoch_n_s']:.3f} | "
                  f"{s['ratio']:.2f} | {s['early_median_s']:.3f} | {s['late_median_s']:.3f} | "
                  f"{s['late_over_early']:.2f} |", flush=True)
    if args.json:
        meta = {"torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS"),
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(), "torch": torch.__version__, **vars(args)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": results}, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
