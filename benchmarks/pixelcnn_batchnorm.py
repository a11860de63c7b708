"""Does the reference's BatchNorm in the PixelCNN change how the PixelHVAE learns? (issue 24)

ppl_vae's PixelCNN decoder has no BatchNorm (``ppl_vae.pyro.conv`` says why: batch statistics
make the network non-causal while it trains, and they are state that NumPyro's parameters do
not hold). The reference (``models/PixelHVAE_2level.py``) has a ``BatchNorm2d`` after every
masked convolution. This trains the Pyro PixelHVAE with a VampPrior twice from the same seed
and the same minibatches (``fit`` as the experiment calls it, the table1.py budget's
warm-up): as ppl_vae builds it, and with the reference's BatchNorm added (batch statistics
while training, running averages for the validation ELBO, as ``model.eval()`` would). It
prints and writes (``--out``, JSON) both validation ELBOs per epoch::

    python benchmarks/pixelcnn_batchnorm.py --data-dir ../shared/data --epochs 50

The runs are one after the other: compare ELBOs epoch by epoch; their seconds per epoch
are only comparable on a quiet machine. ``--baseline out/conv/freyfaces/pixelhvae/checkpoints/
vamp/last.npz`` takes ppl_vae's curve from a run already made with the same settings (its
recorded configuration is compared first) and trains only the BatchNorm variant.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ppl_vae.checkpoint import config_mismatches, load_checkpoint
from ppl_vae.experiment import ExperimentConfig, prepare

ROOT = Path(__file__).resolve().parents[1]


def add_batch_norm(decoder):
    """The reference's ``BatchNorm2d`` after each masked convolution of ``decoder`` (a
    :class:`ppl_vae.pyro.PixelCNNDecoder`), before its ReLU. Training steps (gradients on)
    normalise with the batch's statistics and update the running averages; evaluation
    (under ``torch.no_grad``, as fit validates) uses the running averages."""
    decoder.norms = nn.ModuleList(nn.BatchNorm2d(layer.weight.shape[0])
                                  for layer in decoder.layers).to(decoder.head.weight.device)

    def body(h):
        for layer, norm in zip(decoder.layers, decoder.norms):
            h = F.batch_norm(layer(h), norm.running_mean, norm.running_var, norm.weight,
                             norm.bias, training=torch.is_grad_enabled(), momentum=0.1)
            h = torch.relu(h)
        return h

    decoder._body = body
    return decoder


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--dataset", default="freyfaces")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=100,
                   help="KL warm-up epochs (the table1.py budget's: 100)")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--out", default="out/pixelcnn_batchnorm.json")
    p.add_argument("--baseline", metavar="CHECKPOINT",
                   help="ppl_vae's curve from this checkpoint of a run with the same settings "
                        "(table1.py's) instead of training it again")
    args = p.parse_args(argv)
    config = ExperimentConfig(backend="pyro", model="pixelhvae", dataset=args.dataset,
                              data_dir=args.data_dir, prior=("vamp",), epochs=args.epochs,
                              warmup=args.warmup, max_train=args.max_train, progress=False)
    experiment = prepare(config)
    data, runner = experiment.data, experiment.runner
    histories = {}
    if args.baseline:
        _, meta = load_checkpoint(args.baseline)
        differences = config_mismatches(meta["config"], experiment.run_config("vamp"))
        if differences:
            raise SystemExit(f"--baseline {args.baseline} was trained with other settings: "
                             + "; ".join(f"{k}: {a} there, {b} here" for k, a, b in differences))
        if len(meta["history"]) < args.epochs:
            raise SystemExit(f"--baseline {args.baseline} has {len(meta['history'])} epochs; "
                             f"--epochs is {args.epochs}")
        histories["ppl_vae"] = meta["history"][:args.epochs]
    for name in ("ppl_vae", "batchnorm"):
        if name in histories:
            continue
        built = runner.build("vamp", data.train.shape[1], data.train)  # same seed, same init
        if name == "batchnorm":
            add_batch_norm(built.networks["decoder"])
        settings = dict(experiment.fit_settings("vamp"), checkpoint_dir=None, resume=False)
        t0 = time.perf_counter()
        result = runner.fit(built, data.train, data.valid, **settings)
        histories[name] = result.history
        print(f"{name}: {len(result.history)} epochs in {time.perf_counter() - t0:.0f} s, "
              f"best validation ELBO {result.best_valid_elbo:.2f}", flush=True)
    print("| epoch | beta | ppl_vae (no BatchNorm) | with BatchNorm | difference |")
    print("|---|---|---|---|---|")
    for a, b in zip(histories["ppl_vae"], histories["batchnorm"]):
        if a["epoch"] % max(1, args.epochs // 20) == 0 or a["epoch"] == args.epochs:
            print(f"| {a['epoch']} | {a['beta']:.2f} | {a['valid_elbo']:.2f} | "
                  f"{b['valid_elbo']:.2f} | {b['valid_elbo'] - a['valid_elbo']:+.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "histories": histories}, indent=2))


if __name__ == "__main__":
    main()
