"""Composing priors in Pyro: a tour for a user who brings their own model.

Run (offline, about a minute on a 2-core CPU, embedded 5,000-digit MNIST sample):

    python examples/compose_priors.py --out runs/compose_priors

Four parts, each a hand-written Pyro model trained briefly on 1,000 binary digits and scored
by its importance-sampled test log-likelihood (``ppl_vae.pyro.importance_log_likelihood``):

1. the VampPrior as the prior of a latent in a model that is not ours (``VampPrior`` is an
   ordinary Pyro distribution: build it from your encoder and pseudo-inputs);
2. a prior composed with Pyro's own tools: a learnable autoregressive flow on top of the
   VampPrior (``TransformedDistribution``);
3. the hierarchical prior p(z1 | z2) p(z2), VampPrior on z2, written by hand (the packaged
   version is ``models/hvae_pyro.py``), with its active units per layer;
4. a KL registered for (Normal guide, VampPrior) with ``torch.distributions.kl.register_kl``,
   so that ``TraceMeanField_ELBO`` uses it instead of the sampled log-density ratio.

Budgets here are tiny (a few epochs, small networks), so the numbers compare the parts only
loosely; the paper-sized runs are ``examples/vamp_mnist.py``. Writes ``metrics.json`` (one
record per part) to ``--out``.
"""

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.infer import TraceMeanField_ELBO
from pyro.nn import AutoRegressiveNN
from torch import nn
from torch.distributions import Independent, Normal, constraints, register_kl

from ppl_vae.data import load_embedded_mnist
from ppl_vae.metrics import active_units
from ppl_vae.pyro import (
    ConditionalGaussian,
    MultiInputDecoder,
    VampPrior,
    fit,
    hvae_posterior_means,
    importance_log_likelihood,
)

# -----------------------------------------------------------------------------------------
# Defaults, all in one place.
NUM_TRAIN = 1000      # training images from the embedded sample
NUM_TEST = 200        # test images scored by importance sampling
EPOCHS = 30
BATCH_SIZE = 100
LEARNING_RATE = 1e-3
HIDDEN = 128          # one hidden layer per network (the paper: two gated layers of 300)
LATENT = 8            # L (the paper: 40)
NUM_PSEUDO = 50       # K pseudo-inputs (the paper: 500)
EVAL_SAMPLES = 200    # S importance samples per test image (the paper: 5000)
D = 784
# -----------------------------------------------------------------------------------------


class MyEncoder(nn.Module):
    """A user's own encoder: any module mapping (..., D) to (loc, scale) will do."""

    def __init__(self, latent_dim=LATENT):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU())
        self.loc = nn.Linear(HIDDEN, latent_dim)
        self.scale = nn.Sequential(nn.Linear(HIDDEN, latent_dim), nn.Softplus())

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), self.scale(h) + 1e-3


def pseudo_inputs():
    """K trainable pseudo-inputs in (0, 1), initialised as the reference does."""
    init = (0.05 + 0.01 * torch.randn(NUM_PSEUDO, D)).clamp(1e-3, 1 - 1e-3)
    return pyro.param("my_pseudo_inputs", init, constraint=constraints.unit_interval)


# --- Part 1: the VampPrior in a hand-written model -------------------------------------------

def part1_networks():
    return MyEncoder(), nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, D))


def make_vamp_model(encoder, decoder, transform=None):
    """A model of our own naming: latent "code", observed "pixels". Only the plate
    convention matters to ppl_vae's fit and evaluation (everything in plate "data"); fit
    adds the KL warm-up itself, as a handler around the latent sites."""

    def model(x):
        pyro.module("my_encoder", encoder)   # the guide's encoder: p(z) = mean_k q(z | u_k)
        pyro.module("my_decoder", decoder)
        loc, scale = encoder(pseudo_inputs())  # (K, L) each
        p_z = VampPrior(loc, scale)            # batch_shape (), event_shape (L,)
        if transform is not None:              # part 2: a flow on top of the VampPrior
            pyro.module("my_prior_flow", transform)
            # transform.inv: log_prob(z) runs the autoregressive net forward once (the MAF
            # direction); the plain transform would invert it dimension by dimension.
            p_z = dist.TransformedDistribution(p_z, [transform.inv])
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("code", p_z)  # (N, L)
            pyro.sample("pixels", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    return model


def make_guide(encoder):
    def guide(x):
        pyro.module("my_encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("code", dist.Normal(loc, scale).to_event(1))
    return guide


def part1(args):
    encoder, decoder = part1_networks()
    return make_vamp_model(encoder, decoder), make_guide(encoder), {}


# --- Part 2: a learnable flow on top of the VampPrior ----------------------------------------

def part2(args):
    encoder, decoder = part1_networks()
    flow = AffineAutoregressive(AutoRegressiveNN(LATENT, [4 * LATENT]))
    return make_vamp_model(encoder, decoder, transform=flow), make_guide(encoder), {}


# --- Part 3: the hierarchical prior p(z1 | z2) p(z2), written by hand ------------------------

def part3(args):
    L1 = L2 = LATENT
    encoder = ConditionalGaussian(D, L2, (HIDDEN,))             # q(z2 | x)
    z1_encoder = ConditionalGaussian((D, L2), L1, (HIDDEN,))    # q(z1 | x, z2)
    z1_prior = ConditionalGaussian(L2, L1, (HIDDEN,))           # p(z1 | z2)
    decoder = MultiInputDecoder((L1, L2), D, (HIDDEN,))          # p(x | z1, z2)

    def model(x):
        for name, net in (("encoder", encoder), ("z1_prior", z1_prior), ("decoder", decoder)):
            pyro.module(name, net)
        p_z2 = VampPrior(*encoder(pseudo_inputs()))            # VampPrior on the top layer
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", p_z2)                                  # (N, L2)
            z1 = pyro.sample("z1", dist.Normal(*z1_prior(z2)).to_event(1))  # (N, L1)
            pyro.sample("x", dist.Bernoulli(logits=decoder(z1, z2)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        pyro.module("z1_encoder", z1_encoder)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(*encoder(x)).to_event(1))
            pyro.sample("z1", dist.Normal(*z1_encoder(x, z2)).to_event(1))

    def extra(x_test):
        # Active units (Burda et al. 2016): Var_x E_q[z_d | x] > 0.01; E_q[z1 | x] averages
        # the z1 encoder's mean over 100 draws of z2 ~ q(z2 | x).
        z1_means, z2_means = hvae_posterior_means(encoder, z1_encoder, x_test, num_samples=100)
        return {"active_units_z1": active_units(z1_means),
                "active_units_z2": active_units(z2_means)}

    return model, guide, {"extra": extra}


# --- Part 4: a registered KL(Normal || VampPrior) for TraceMeanField_ELBO --------------------

KL_CALLS = [0]


@register_kl(Independent, VampPrior)
def kl_normal_vamp(q, p):
    """Deterministic upper bound on KL(q || p) for a diagonal Gaussian q and the VampPrior
    p = (1/K) sum_k N_k (Hershey & Olsen, 2007; Jensen's inequality on log-sum-exp):

        KL(q || p) <= -log (1/K) sum_k exp(-KL(q || N_k)),

    each KL(q || N_k) in closed form. TraceMeanField_ELBO subtracts this instead of
    log q(z) - log p(z) at one sample: zero variance, and since the KL is over-estimated the
    objective is still a lower bound on log p(x). The bound is exact when one component
    dominates. Torch finds this function only because VampPrior.expand returns a VampPrior:
    the default expand wraps it in ExpandedDistribution, and then no KL is ever found.
    """
    if not isinstance(q.base_dist, Normal) or q.reinterpreted_batch_ndims != 1:
        raise NotImplementedError  # TraceMeanField_ELBO falls back to the sampled estimate
    KL_CALLS[0] += 1
    q_loc, q_var = q.base_dist.loc.unsqueeze(-2), q.base_dist.scale.pow(2).unsqueeze(-2)
    p_loc, p_var = p.component_loc, p.component_scale.pow(2)   # (K, L)
    # KL(N(m, s^2) || N(mu_k, sigma_k^2)) per component: (..., K)
    kl_k = 0.5 * (torch.log(p_var / q_var) + (q_var + (q_loc - p_loc) ** 2) / p_var - 1).sum(-1)
    return math.log(p.num_components) - torch.logsumexp(-kl_k, dim=-1)


def part4(args):
    encoder, decoder = part1_networks()
    model, guide = make_vamp_model(encoder, decoder), make_guide(encoder)

    def extra(x_test):
        # How loose is the bound? Against a 1000-sample estimate of the exact KL.
        with torch.no_grad():
            loc, scale = encoder(x_test)
            p = VampPrior(*encoder(pseudo_inputs()))
            q = dist.Normal(loc, scale).to_event(1)
            z = q.sample((1000,))
            kl_mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
            bound = kl_normal_vamp(q, p.expand(loc.shape[:1]))
        return {"kl_bound_calls": KL_CALLS[0], "kl_bound_mean": float(bound.mean()),
                "kl_monte_carlo_mean": float(kl_mc.mean())}

    return model, guide, {"elbo": TraceMeanField_ELBO(), "extra": extra}


PARTS = [
    ("VampPrior in a hand-written model", part1),
    ("flow (affine autoregressive) on top of a VampPrior", part2),
    ("hierarchical p(z1|z2) p(z2), VampPrior on z2", part3),
    ("registered KL(Normal || VampPrior) bound + TraceMeanField_ELBO", part4),
]


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/compose_priors"),
                        help="output directory for metrics.json")
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=positive_int, default=NUM_TRAIN)
    parser.add_argument("--num-test", type=positive_int, default=NUM_TEST)
    parser.add_argument("--eval-samples", type=positive_int, default=EVAL_SAMPLES,
                        help="importance samples per test image")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (small networks: one is fastest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    splits = load_embedded_mnist(seed=args.seed)
    x_train = torch.as_tensor(splits.train[:args.num_train])  # (N, 784) in {0, 1}
    x_test = torch.as_tensor(splits.test[:args.num_test])
    print(f"embedded MNIST: {len(x_train)} train / {len(x_test)} test images, "
          f"{args.epochs} epochs, L = {LATENT}, K = {NUM_PSEUDO}, S = {args.eval_samples}")

    records = []
    for i, (title, build) in enumerate(PARTS, start=1):
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        model, guide, options = build(args)
        t0 = time.perf_counter()
        result = fit(model, guide, x_train, num_epochs=args.epochs, batch_size=BATCH_SIZE,
                     learning_rate=LEARNING_RATE, elbo=options.get("elbo"), seed=args.seed,
                     progress=False)
        ll = importance_log_likelihood(model, guide, x_test, num_samples=args.eval_samples)
        record = {"part": i, "title": title, "test_log_likelihood": float(ll.mean()),
                  "final_train_loss": result.history[-1]["train_loss"],
                  "seconds": time.perf_counter() - t0}
        if "extra" in options:
            record.update(options["extra"](x_test))
        records.append(record)
        print(f"part {i}: {title}: test log-likelihood {record['test_log_likelihood']:.2f} "
              f"nats (train loss {record['final_train_loss']:.2f}, {record['seconds']:.1f} s)")
        for key, value in record.items():
            if key not in ("part", "title", "test_log_likelihood", "final_train_loss",
                           "seconds"):
                print(f"    {key}: {value:.2f}" if isinstance(value, float)
                      else f"    {key}: {value}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(records, indent=2))
    print(f"wrote {args.out / 'metrics.json'}")


if __name__ == "__main__":
    main()
