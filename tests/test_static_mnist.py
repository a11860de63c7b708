"""On the benchmark data (static MNIST, ../shared/data; skipped where absent): at an equal small
budget the VampPrior beats the standard prior in test log-likelihood."""

from functools import partial

import numpy as np
import pyro
import torch

from ppl_vae.data import load_static_mnist, subset_indices
from ppl_vae.guides.vae_pyro import vae_guide
from ppl_vae.models.vae_pyro import vae_model
from ppl_vae.pyro import (
    Decoder,
    Encoder,
    LearnedVampPrior,
    StandardNormalPrior,
    fit,
    importance_log_likelihood,
)


def test_vamp_prior_beats_standard_prior_at_equal_budget(static_mnist_dir):
    data = load_static_mnist(static_mnist_dir)
    test = data.test[subset_indices(len(data.test), 300)]  # the file is grouped by digit
    train, valid = data.train[:10_000], data.valid[:1000]
    results = {}
    for name in ("standard", "vamp"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        encoder, decoder = Encoder(784, 40), Decoder(40, 784)
        prior = StandardNormalPrior(40) if name == "standard" else LearnedVampPrior(encoder, 500)
        model = partial(vae_model, decoder=decoder, prior=prior)
        guide = partial(vae_guide, encoder=encoder)
        fit(model, guide, train, valid, num_epochs=2, progress=False, seed=0)
        results[name] = importance_log_likelihood(model, guide, test, num_samples=100)
    diff = results["vamp"] - results["standard"]  # paired over the same test images
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    print({k: v.mean() for k, v in results.items()}, "diff", diff.mean(), "se", se)
    assert diff.mean() > 3 * se and diff.mean() > 1.0
