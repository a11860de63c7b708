"""AIS time per image per annealing step against the FLOP floor of its gradient evaluations,
both backends; and, on a model trained by ``examples/vamp_mnist.py``, AIS against the number
of steps and the BDMC sandwich.

Speed (about 3 minutes on a 2-core CPU)::

    python benchmarks/ais_speed.py --num-images 20 --num-steps 20 --json ais_speed.json

The VampPrior VAE (784-300-300-40 gated MLPs, K = 500; untrained weights: the work does not
depend on the values) anneals from the guide for the first ``--num-images`` static-MNIST
test images (the embedded sample where static MNIST is absent), ``--num-chains`` chains each,
``--num-leapfrog`` leapfrog steps per transition, in each backend
(``ppl_vae.pyro.ais_log_likelihood``, ``ppl_vae.numpyro.ais_log_likelihood``; the NumPyro
call is timed after a first, compiling one). Every transition evaluates the gradient of
log p(x, z) and of log q(z | x) ``num_leapfrog`` times for every (image, chain) pair. The
floor is the matrix-product FLOPs those need at the machine's GEMM rate
(``throughput.gemm_rate``): per pair and evaluation the decoder's three layers forward and
their input gradients backward, and the mixture's ``(2L x K)`` product and its gradient; the
encoder's pass over x, which a run needs once per image, is not counted (here it runs at every
evaluation: its share of the time is reported as the ``encoder`` column of the floor).

Trained model (a ``best.npz`` of ``examples/vamp_mnist.py --backend numpyro``)::

    python benchmarks/ais_speed.py --checkpoint out/vamp_mnist/checkpoints/vamp/best.npz \\
        --num-images 50 --steps 30 100 300 1000 --bdmc-examples 50 --bdmc-steps 30 300

rebuilds the model from the checkpoint's configuration and prints, for ``--num-images``
test images, IS (5000 samples, with k-hat) against AIS for every ``--steps``, then BDMC
bounds on ``--bdmc-examples`` images simulated from the model for every ``--bdmc-steps``.
"""

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from throughput import HIDDEN, INPUT, LATENT, K, gemm_rate, interleaved_medians  # noqa: E402

STATIC_MNIST = ROOT.parent / "shared" / "data"


def gradient_flops(num_pseudo=K):
    """Matrix-product FLOPs of one gradient evaluation for one (image, chain) pair: the
    decoder forward and its input gradients, the mixture log-density and its gradient; and
    (separately) the encoder's forward pass over one image."""
    decoder = 2 * (LATENT * 2 * HIDDEN + HIDDEN * 2 * HIDDEN + HIDDEN * INPUT)
    mixture = 2 * (2 * LATENT) * num_pseudo
    encoder = 2 * (INPUT * 2 * HIDDEN + HIDDEN * 2 * HIDDEN + HIDDEN * 2 * LATENT)
    return 2 * (decoder + mixture), encoder


def load_images(n):
    from ppl_vae.data import load_embedded_mnist, load_static_mnist

    if (STATIC_MNIST / "static_mnist.npz").exists():
        return load_static_mnist(STATIC_MNIST).test[:n], "static-mnist test"
    return load_embedded_mnist().test[:n], "embedded-mnist test"


def pyro_ais(x, settings):
    import pyro
    import torch

    import ppl_vae.pyro as pv
    from ppl_vae.guides.vae_pyro import vae_guide
    from ppl_vae.models.vae_pyro import vae_model

    pyro.clear_param_store()
    torch.manual_seed(0)
    enc, dec = pv.Encoder(INPUT, LATENT), pv.Decoder(LATENT, INPUT)
    model = partial(vae_model, decoder=dec, prior=pv.LearnedVampPrior(enc, K))
    guide = partial(vae_guide, encoder=enc)
    xt = torch.as_tensor(x)
    return lambda: pv.ais_log_likelihood(model, guide, xt, return_details=True, **settings)


def numpyro_ais(x, settings):
    from jax import random

    import ppl_vae.numpyro as pv
    from ppl_vae.guides.vae_numpyro import vae_guide
    from ppl_vae.models.vae_numpyro import vae_model

    k = random.split(random.PRNGKey(0), 4)
    enc = pv.Encoder(INPUT, LATENT, rng_key=k[0])
    dec = pv.Decoder(LATENT, INPUT, rng_key=k[1])
    model = partial(vae_model, decoder=dec, prior=pv.LearnedVampPrior(enc, K, rng_key=k[2]))
    guide = partial(vae_guide, encoder=enc)
    return lambda: pv.ais_log_likelihood(k[3], model, guide, x, return_details=True,
                                         **settings)


def speed(args):
    import torch

    x, source = load_images(args.num_images)
    settings = dict(num_steps=args.num_steps, num_chains=args.num_chains,
                    num_leapfrog=args.num_leapfrog, batch_size=args.batch_size)
    rate = gemm_rate()
    pair, encoder = gradient_flops()
    evaluations = (args.num_steps - 1) * args.num_leapfrog + 1  # per pair, the whole run
    flops = len(x) * evaluations * args.num_chains * pair
    floor = flops / rate / 1e9
    runners = {"pyro": pyro_ais, "numpyro": numpyro_ais}
    runs = {b: runners[b](x, settings) for b in args.backends}
    def check(_, out):
        assert np.isfinite(out.log_likelihood).all()

    med = interleaved_medians(runs, args.repeats, check)
    image_steps = len(x) * args.num_steps
    print(f"{len(x)} {source} images x {args.num_chains} chains x {args.num_steps} steps x "
          f"{args.num_leapfrog} leapfrog: {flops / 1e12:.2f} TFLOP in gradient evaluations "
          f"({pair / 1e6:.2f} MFLOP per pair; the encoder, {encoder / 1e6:.2f} MFLOP per image "
          f"and evaluation, not counted); GEMM {rate:.0f} GFLOP/s (torch, "
          f"{torch.get_num_threads()} threads) -> floor {floor:.1f} s")
    print("| backend | seconds (median) | ms per image per step | floor (ms) | vs floor |")
    print("|---|---|---|---|---|")
    for b, t in med.items():
        print(f"| {b} | {t:.1f} | {1e3 * t / image_steps:.2f} | {1e3 * floor / image_steps:.2f} "
              f"| {t / floor:.2f} |")
    return {"num_images": len(x), "source": source, **settings, "gemm_gflops": rate,
            "torch_threads": torch.get_num_threads(),
            "tflop": flops / 1e12, "floor_s": floor, "seconds": med,
            "ms_per_image_step": {b: 1e3 * t / image_steps for b, t in med.items()},
            "over_floor": {b: t / floor for b, t in med.items()}}


def _trained_numpyro(path):
    """Model, guide and parameters of a ``best.npz`` of the example's NumPyro VAE, rebuilt
    from the checkpoint's own configuration (:func:`ppl_vae.experiment.load_run`)."""
    from ppl_vae.experiment import load_run

    run = load_run(path)
    c = run.config
    if c.backend != "numpyro" or c.model != "vae" or c.likelihood != "bernoulli":
        raise SystemExit("--checkpoint: a one-layer Bernoulli VAE of examples/vamp_mnist.py "
                         "--backend numpyro")
    return run.model, run.guide, run.params, run.meta["config"]


def trained(args):
    from jax import random

    import ppl_vae.numpyro as pv
    from ppl_vae.data import load_static_mnist, subset_indices
    from ppl_vae.diagnostics import psis_khat

    model, guide, params, config = _trained_numpyro(args.checkpoint)
    test = load_static_mnist(STATIC_MNIST).test
    x = test[subset_indices(len(test), args.num_images)]
    key = random.PRNGKey(args.seed)
    t0 = time.perf_counter()
    is_ll, log_w = pv.importance_log_likelihood(random.fold_in(key, 0), model, guide, x,
                                                num_samples=5000, params=params,
                                                return_log_weights=True)
    khat = psis_khat(log_w)
    result = {"checkpoint": str(args.checkpoint), "prior": config["prior"],
              "elbo": config.get("elbo"), "num_particles": config.get("num_particles"),
              "num_images": len(x), "num_chains": args.num_chains,
              "num_leapfrog": args.num_leapfrog,
              "is": {"mean": float(is_ll.mean()), "khat_above_0_7": float(np.mean(khat > 0.7)),
                     "seconds": time.perf_counter() - t0},
              "ais": [], "bdmc": []}
    print(f"{config['prior']} prior, {config.get('elbo')} (k = {config.get('num_particles')}): "
          f"IS (5000) on {len(x)} test images {is_ll.mean():.2f}, k-hat > 0.7 for "
          f"{100 * np.mean(khat > 0.7):.0f}%")
    print("| AIS steps | AIS | AIS - IS | chain spread | acceptance | corr(AIS - IS, k-hat) "
          "| seconds |")
    print("|---|---|---|---|---|---|---|")
    for T in args.steps:
        t0 = time.perf_counter()
        r = pv.ais_log_likelihood(random.fold_in(key, T), model, guide, x, num_steps=T,
                                  num_chains=args.num_chains, num_leapfrog=args.num_leapfrog,
                                  params=params, return_details=True)
        gap = r.log_likelihood - is_ll
        row = {"num_steps": T, "mean": float(r.log_likelihood.mean()),
               "minus_is": float(gap.mean()), "minus_is_sem": float(gap.std(ddof=1)
                                                                    / np.sqrt(len(gap))),
               "stderr": float(r.stderr.mean()), "acceptance": float(r.acceptance.mean()),
               "corr_khat": float(np.corrcoef(gap, khat)[0, 1]),
               "gap_khat_above_0_7": float(gap[khat > 0.7].mean()) if (khat > 0.7).any()
               else None,
               "gap_khat_below_0_7": float(gap[khat <= 0.7].mean()) if (khat <= 0.7).any()
               else None,
               "seconds": time.perf_counter() - t0}
        result["ais"].append(row)
        print(f"| {T} | {row['mean']:.2f} | {row['minus_is']:+.2f} ± {row['minus_is_sem']:.2f} "
              f"| {row['stderr']:.2f} | {row['acceptance']:.2f} | {row['corr_khat']:.2f} "
              f"| {row['seconds']:.0f} |")
    if args.bdmc_examples:
        print(f"\nBDMC on {args.bdmc_examples} images simulated from the model")
        print("| steps | lower | upper | gap | seconds |")
        print("|---|---|---|---|---|")
    for T in args.bdmc_steps if args.bdmc_examples else ():
        t0 = time.perf_counter()
        # the same key for every T: the same simulated images (and chains' keys)
        b = pv.bdmc_bounds(random.fold_in(key, 10_000), model, guide, args.bdmc_examples,
                           data_shape=(x.shape[1],), num_steps=T, num_chains=args.num_chains,
                           num_leapfrog=args.num_leapfrog, params=params)
        row = {"num_steps": T, "lower": float(b.lower.mean()), "upper": float(b.upper.mean()),
               "gap": b.mean_gap, "gap_sem": float(b.gap.std(ddof=1) / np.sqrt(len(b.gap))),
               "seconds": time.perf_counter() - t0}
        result["bdmc"].append(row)
        print(f"| {T} | {row['lower']:.2f} | {row['upper']:.2f} | {row['gap']:.2f} ± "
              f"{row['gap_sem']:.2f} | {row['seconds']:.0f} |")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=20)
    p.add_argument("--num-steps", type=int, default=20, help="speed: annealing steps")
    p.add_argument("--num-chains", type=int, default=16)
    p.add_argument("--num-leapfrog", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=None,
                   help="speed: (image, chain) pairs per chunk (default: the library's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", nargs="+", default=["pyro", "numpyro"])
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads (also for the GEMM rate of the floor); on a "
                        "busy 2-core machine 1 is much faster for Pyro's small matrix "
                        "products than the default 2")
    p.add_argument("--checkpoint", default=None,
                   help="a best.npz of examples/vamp_mnist.py --backend numpyro: AIS against "
                        "steps and BDMC on that trained model instead of the speed test")
    p.add_argument("--steps", type=int, nargs="*", default=[30, 100, 300],
                   help="--checkpoint: AIS step counts")
    p.add_argument("--bdmc-examples", type=int, default=0)
    p.add_argument("--bdmc-steps", type=int, nargs="+", default=[30, 300])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    result = trained(args) if args.checkpoint else speed(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
