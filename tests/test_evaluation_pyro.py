"""importance_log_likelihood (Pyro) on probabilistic PCA, where log p(x) is closed-form."""

from functools import partial

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppl_vae.guides.vae_pyro import vae_guide
from ppl_vae.models.vae_pyro import vae_model
from ppl_vae.pyro import (
    Decoder,
    Encoder,
    LearnedVampPrior,
    StandardNormalPrior,
    importance_log_likelihood,
    importance_log_weights,
)

L, D, SIGMA = 2, 5, 0.5


def _ppca(seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, L, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    return W, b


def ppca_model(x, W, b):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(L, dtype=x.dtype), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)


def exact_posterior(x, W, b):
    """q(z | x) = N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1."""
    cov = torch.linalg.inv(torch.eye(L, dtype=x.dtype) + W.T @ W / SIGMA**2)
    return (x - b) @ W @ cov / SIGMA**2, cov


def exact_guide(x, W, b):
    loc, cov = exact_posterior(x, W, b)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=cov))


def wide_guide(x, W, b):
    loc, cov = exact_posterior(x, W, b)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc + 0.1, 1.5 * cov.diagonal().sqrt()).to_event(1))


def _data(W, b, n=30):
    z = torch.randn(n, L, dtype=torch.float64)
    x = z @ W.T + b + SIGMA * torch.randn(n, D, dtype=torch.float64)
    exact = dist.MultivariateNormal(b, W @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64))
    return x, exact.log_prob(x).numpy()


@pytest.mark.usefixtures("float64")
def test_exact_with_the_true_posterior():
    W, b = _ppca()
    x, log_px = _data(W, b)
    est = importance_log_likelihood(ppca_model, exact_guide, x, W, b, num_samples=50,
                                    batch_size=64)
    assert est.shape == (30,) and est.dtype == np.float64
    # Every weight equals p(x): the estimate is exact up to float64 round-off.
    np.testing.assert_allclose(est, log_px, rtol=1e-10)


@pytest.mark.usefixtures("float64")
def test_within_monte_carlo_error_with_another_guide():
    W, b = _ppca(1)
    x, log_px = _data(W, b)
    S = 4000
    log_w = importance_log_weights(ppca_model, wide_guide, x, W, b, num_samples=S,
                                   batch_size=10_000)
    assert log_w.shape == (30, S)
    est = importance_log_likelihood(ppca_model, wide_guide, x, W, b, num_samples=S)
    # Delta method: sd(log mean w) ~= sd(w) / (sqrt(S) mean(w)); 5 standard errors.
    w = np.exp(log_w - log_px[:, None])
    se = w.std(1) / np.sqrt(S) / w.mean(1)
    assert np.all(np.abs(est - log_px) < 5 * se + 1e-12)
    # The estimate is a lower bound in expectation, above the ELBO on average.
    assert np.mean(est) > np.mean(log_w)


def test_rejects_sites_outside_the_data_plate():
    def model(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1), obs=x)
    def guide(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))
    import pytest
    with pytest.raises(ValueError, match="plate 'data'"):
        importance_log_likelihood(model, guide, torch.zeros(3, 2), num_samples=4)
    with pytest.raises(ValueError, match="num_samples"):
        importance_log_likelihood(model, guide, torch.zeros(3, 2), num_samples=0)
    with pytest.raises(ValueError, match="NaN"):
        importance_log_likelihood(model, guide, torch.full((3, 2), float("nan")), num_samples=4)


def test_vamp_prior_encodes_pseudo_inputs_once_per_evaluation():
    encoder, decoder = Encoder(20, 3, (16,)), Decoder(3, 20, (16,))
    prior = LearnedVampPrior(encoder, num_pseudo=7)
    calls = []
    encoder.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    model = partial(vae_model, decoder=decoder, prior=prior)
    guide = partial(vae_guide, encoder=encoder)
    x = (torch.rand(12, 20) < 0.3).float()
    ll = importance_log_likelihood(model, guide, x, num_samples=10, batch_size=40)  # 3 chunks
    assert np.isfinite(ll).all()
    # the K = 7 pseudo-inputs: once by the check on two rows that runs before the work, and
    # once for the whole evaluation, not once per chunk
    assert calls.count(7) == 2
    assert calls[:2] == [2, 7]  # the check: the guide on two rows, then the prior


def test_trace_and_meanfield_elbo_agree_in_expectation():
    """Analytic KL (standard prior) vs sampled KL: the same ELBO in expectation; the VampPrior
    has no registered KL, so TraceMeanField falls back to the sampled term."""
    torch.manual_seed(0)
    encoder, decoder = Encoder(10, 2, (8,)), Decoder(2, 10, (8,))
    x = (torch.rand(4, 10) < 0.4).float()
    for prior in (StandardNormalPrior(2), LearnedVampPrior(encoder, 5)):
        model = partial(vae_model, decoder=decoder, prior=prior)
        guide = partial(vae_guide, encoder=encoder)
        estimates = {}
        for name, elbo in (("trace", Trace_ELBO), ("meanfield", TraceMeanField_ELBO)):
            losses = torch.tensor([
                elbo(num_particles=100, vectorize_particles=True).loss(model, guide, x)
                for _ in range(60)])
            estimates[name] = (losses.mean(), losses.std() / 60**0.5)
        (m1, s1), (m2, s2) = estimates["trace"], estimates["meanfield"]
        assert abs(m1 - m2) < 5 * (s1**2 + s2**2) ** 0.5 + 1e-6


@pytest.mark.usefixtures("float64")
def test_evaluation_builds_no_autograd_graph_and_leaves_grad_mode_alone():
    """Parameters that require grad give log-weights without a graph (no saved activations
    per chunk), and grad mode is as the caller left it while the generator is suspended."""
    from ppl_vae.pyro import log_weight_chunks

    W, b = (t.requires_grad_() for t in _ppca(2))
    x, _ = _data(W.detach(), b.detach(), n=5)
    for _rows, log_w in log_weight_chunks(ppca_model, exact_guide, x, W, b, num_samples=20,
                                         batch_size=40):
        assert not log_w.requires_grad and log_w.grad_fn is None
        assert torch.is_grad_enabled()


@pytest.mark.usefixtures("float64")
def test_default_chunk_size_on_cpu():
    from ppl_vae.pyro.evaluation import CPU_BATCH_SIZE

    W, b = _ppca(3)
    x, log_px = _data(W, b, n=4)
    pyro.set_rng_seed(0)
    default = importance_log_weights(ppca_model, wide_guide, x, W, b, num_samples=700)
    pyro.set_rng_seed(0)
    explicit = importance_log_weights(ppca_model, wide_guide, x, W, b, num_samples=700,
                                      batch_size=CPU_BATCH_SIZE)
    np.testing.assert_array_equal(default, explicit)
    pyro.set_rng_seed(0)
    other = importance_log_weights(ppca_model, wide_guide, x, W, b, num_samples=700,
                                   batch_size=5000)  # one chunk: other draws
    assert not np.array_equal(default, other)
