"""Speed of the 5000-sample importance-sampled log-likelihood against its FLOP floor.

Run (about 2 minutes on a 2-core CPU)::

    python benchmarks/evaluate_speed.py --num-images 100 --json evaluate_speed.json

The VampPrior VAE (784-300-300-40 gated MLPs, K = 500) evaluates log p(x) for the first
``--num-images`` static-MNIST test images (the embedded sample where static MNIST is absent)
with 5000 importance samples each, in each backend (``ppl_vae.pyro.importance_log_likelihood``
and ``ppl_vae.numpyro.importance_log_likelihood``).

Fresh weights by default. The time does depend on the values: torch's CPU ``exp`` is 80-200x
slower below -87 (float32 underflow), which is where a trained mixture prior's far components
sit, so the Pyro evaluation of a trained model took 1.66x that of a fresh one before its
log-sum-exp floored them (``ppl_vae/pyro/_numerics.py``). ``--trained-epochs N`` first trains
each backend's model with its ``fit`` for N epochs on the first 5000 training images (the
embedded sample's where static MNIST is absent), and times the trained model::

    python benchmarks/evaluate_speed.py --num-images 100 --trained-epochs 40

The floor is the evaluation's matrix-product FLOPs at the
machine's GEMM rate (``throughput.gemm_rate``): per (image, sample) pair the decoder's three
layers and the mixture's ``(2L x K)`` product; per image the encoder, and once the K
pseudo-inputs' encodings.
"""

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from throughput import (  # noqa: E402,F401
    BATCH,
    HIDDEN,
    INPUT,
    LATENT,
    K,
    gemm_rate,
    interleaved_medians,
)

STATIC_MNIST = ROOT.parent / "shared" / "data"


def eval_flops(num_images, num_samples, num_pseudo=K):
    pair = 2 * (LATENT * 2 * HIDDEN + HIDDEN * 2 * HIDDEN + HIDDEN * INPUT)  # decoder
    pair += 2 * (2 * LATENT) * num_pseudo  # mixture log-density
    encoder = 2 * (INPUT * 2 * HIDDEN + HIDDEN * 2 * HIDDEN + HIDDEN * 2 * LATENT)
    return num_images * num_samples * pair + (num_images + num_pseudo) * encoder


def load_images(n, num_train=5000):
    """``(test images, training images, source)``."""
    from ppl_vae.data import load_embedded_mnist, load_static_mnist

    if (STATIC_MNIST / "static_mnist.npz").exists():
        data, source = load_static_mnist(STATIC_MNIST), "static-mnist"
    else:
        data, source = load_embedded_mnist(), "embedded-mnist"
    return data.test[:n], data.train[:num_train].astype(np.float32), f"{source} test"


def pyro_eval(x, num_samples, batch_size, train=None, epochs=0):
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
    if epochs:
        pv.fit(model, guide, torch.as_tensor(train), num_epochs=epochs, progress=False)
    xt = torch.as_tensor(x)
    return lambda: pv.importance_log_likelihood(model, guide, xt, num_samples=num_samples,
                                                batch_size=batch_size)


def numpyro_eval(x, num_samples, batch_size, train=None, epochs=0):
    from jax import random

    import ppl_vae.numpyro as pv
    from ppl_vae.guides.vae_numpyro import vae_guide
    from ppl_vae.models.vae_numpyro import vae_model

    k = random.split(random.PRNGKey(0), 4)
    enc = pv.Encoder(INPUT, LATENT, rng_key=k[0])
    dec = pv.Decoder(LATENT, INPUT, rng_key=k[1])
    model = partial(vae_model, decoder=dec, prior=pv.LearnedVampPrior(enc, K, rng_key=k[2]))
    guide = partial(vae_guide, encoder=enc)
    params = (pv.fit(random.PRNGKey(1), model, guide, train, num_epochs=epochs,
                     progress=False).params if epochs else None)
    return lambda: pv.importance_log_likelihood(k[3], model, guide, x, num_samples=num_samples,
                                                batch_size=batch_size, params=params)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=None,
                   help="(image, sample) pairs per chunk, both backends (default: the "
                        "library's, 1000 on a CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", nargs="+", default=["pyro", "numpyro"])
    p.add_argument("--trained-epochs", type=int, default=0,
                   help="train each backend's model this many epochs (5000 training images) "
                        "before timing it (default 0: fresh weights)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.trained_epochs < 0:
        p.error(f"--trained-epochs must be >= 0; got {args.trained_epochs}")

    x, train, source = load_images(args.num_images)
    rate = gemm_rate()
    flops = eval_flops(len(x), args.num_samples)
    floor = flops / rate / 1e9
    runners = {"pyro": pyro_eval, "numpyro": numpyro_eval}
    runs = {b: runners[b](x, args.num_samples, args.batch_size, train, args.trained_epochs)
            for b in args.backends}
    def check(_, ll):
        assert ll.shape == (len(x),) and np.isfinite(ll).all()

    med = interleaved_medians(runs, args.repeats, check)
    chunk = args.batch_size or "default"
    print(f"{len(x)} {source} images x {args.num_samples} samples: {flops / 1e12:.2f} TFLOP; "
          f"GEMM {rate:.0f} GFLOP/s -> floor {floor:.1f} s; batch_size {chunk}; "
          f"{f'trained {args.trained_epochs} epochs' if args.trained_epochs else 'fresh'}")
    print("| backend | seconds (median) | per image (ms) | vs FLOP floor |")
    print("|---|---|---|---|")
    for b, t in med.items():
        print(f"| {b} | {t:.1f} | {1e3 * t / len(x):.0f} | {t / floor:.2f} |")
    result = {"num_images": len(x), "source": source, "num_samples": args.num_samples,
              "batch_size": args.batch_size, "trained_epochs": args.trained_epochs,
              "gemm_gflops": rate, "tflop": flops / 1e12, "floor_s": floor,
              "seconds": med, "over_floor": {b: t / floor for b, t in med.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
