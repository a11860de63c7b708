"""AIS and BDMC (Pyro) on linear-Gaussian models, where log p(x) is closed-form:

- probabilistic PCA: z ~ N(0, I_L), x | z ~ N(W z + b, s^2 I_D), so x ~ N(b, W W^T + s^2 I);
- the two-layer linear HVAE: z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2 I),
  x | z1, z2 ~ N(W1 z1 + W2 z2 + b, s^2 I), so x is Gaussian too (the joint of (z1, z2) is).

With the exact posterior as guide every AIS weight is exactly p(x), whatever the
transitions do; with a poor guide (or the prior) the estimate converges to log p(x) as the
number of steps grows, within its chain spread, and the BDMC bounds contain log p(x) and
close. Tolerances come from the chain spread (the delta-method standard error over chains).
"""

from functools import partial

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from ppl_vae.guides.vae_pyro import vae_guide
from ppl_vae.models.vae_pyro import vae_model
from ppl_vae.pyro import (
    Decoder,
    Encoder,
    LearnedVampPrior,
    StandardNormalPrior,
    ais_log_likelihood,
    ais_schedule,
    bdmc_bounds,
    fit,
    importance_log_likelihood,
)

D, L, SIGMA = 5, 2, 0.5
L1, L2, S1 = 2, 2, 0.7


def _ppca(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((D, L)), rng.standard_normal(D)


def _chol(cov):
    # NumPy's: torch's Cholesky of a 2 x 2 matrix takes milliseconds on a busy 2-core CPU
    return torch.as_tensor(np.linalg.cholesky(cov.numpy()), dtype=cov.dtype)


def ppca_model(x, W, b):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(L, dtype=x.dtype), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)


def ppca_guide(x, W, b, exact=True, shift=0.5, widen=0.5):
    cov = torch.linalg.inv(torch.eye(L, dtype=x.dtype) + W.T @ W / SIGMA**2)
    loc = (x - b) @ W @ cov / SIGMA**2
    with pyro.plate("data", x.shape[0]):
        if exact:
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=_chol(cov)))
        else:  # shifted and too narrow: IS with few samples is far off
            pyro.sample("z", dist.Normal(loc + shift, widen * cov.diagonal().sqrt()).to_event(1))


def ppca_log_px(x, W, b):
    return stats.multivariate_normal(b, W @ W.T + SIGMA**2 * np.eye(D)).logpdf(x)


def _hvae_params(seed=0, d=6):
    rng = np.random.default_rng(seed)
    A, a = rng.standard_normal((L1, L2)), rng.standard_normal(L1)
    W1, W2, b = rng.standard_normal((d, L1)), rng.standard_normal((d, L2)), rng.standard_normal(d)
    # joint of (z1, z2), then of x, then the posterior of (z1, z2) given x
    mean_z = np.concatenate([a, np.zeros(L2)])
    cov_z = np.block([[A @ A.T + S1**2 * np.eye(L1), A], [A.T, np.eye(L2)]])
    M = np.hstack([W1, W2])
    post_cov = np.linalg.inv(np.linalg.inv(cov_z) + M.T @ M / SIGMA**2)
    return dict(A=A, a=a, W1=W1, W2=W2, b=b, mean_z=mean_z, cov_z=cov_z, M=M, post_cov=post_cov)


def hvae_log_px(x, p):
    M = p["M"]
    cov = M @ p["cov_z"] @ M.T + SIGMA**2 * np.eye(M.shape[0])
    return stats.multivariate_normal(M @ p["mean_z"] + p["b"], cov).logpdf(x)


def _torch(p):
    return {k: torch.as_tensor(v) for k, v in p.items()}


def hvae_model(x, p):
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", dist.Normal(torch.zeros(L2, dtype=x.dtype), 1.0).to_event(1))
        z1 = pyro.sample("z1", dist.Normal(z2 @ p["A"].T + p["a"], S1).to_event(1))
        pyro.sample("x", dist.Normal(z1 @ p["W1"].T + z2 @ p["W2"].T + p["b"], SIGMA)
                    .to_event(1), obs=x)


def hvae_guide(x, p, exact=True, shift=0.3, widen=0.7):
    """q(z2 | x) q(z1 | x, z2): the exact posterior's marginal and conditional (full
    covariances), or diagonal, shifted and narrowed versions of them."""
    P = p["post_cov"]
    mu = ((p["M"].T @ (x - p["b"]).T).T / SIGMA**2
          + p["mean_z"] @ torch.linalg.inv(p["cov_z"])) @ P  # (N, L1 + L2)
    mu1, mu2 = mu[:, :L1], mu[:, L1:]
    P11, P12, P22 = P[:L1, :L1], P[:L1, L1:], P[L1:, L1:]
    K = P12 @ torch.linalg.inv(P22)
    cond = P11 - K @ P12.T
    with pyro.plate("data", x.shape[0]):
        if exact:
            z2 = pyro.sample("z2", dist.MultivariateNormal(mu2, scale_tril=_chol(P22)))
            pyro.sample("z1", dist.MultivariateNormal(mu1 + (z2 - mu2) @ K.T,
                                                      scale_tril=_chol(cond)))
        else:
            z2 = pyro.sample("z2", dist.Normal(mu2 + shift, widen * P22.diagonal().sqrt())
                             .to_event(1))
            pyro.sample("z1", dist.Normal(mu1 + (z2 - mu2) @ K.T, widen * cond.diagonal().sqrt())
                        .to_event(1))


def _ppca_data(W, b, n, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, L)) @ W.T + b + SIGMA * rng.standard_normal((n, D))


def _tensors(*arrays):
    return [torch.as_tensor(a) for a in arrays]


@pytest.mark.usefixtures("float64")
def test_exact_posterior_gives_exact_log_likelihood_and_bounds():
    W, b = _ppca()
    x = _ppca_data(W, b, 7)
    Wt, bt, xt = _tensors(W, b, x)
    exact = ppca_log_px(x, W, b)
    # 7 examples x 4 chains in chunks of 3 pairs: chains split in two pieces, 7 chunks
    r = ais_log_likelihood(ppca_model, ppca_guide, xt, Wt, bt, num_steps=5, num_chains=4,
                           batch_size=3, return_details=True)
    assert r.log_likelihood.shape == (7,) and r.log_weights.shape == (7, 4)
    assert r.log_likelihood.dtype == np.float64
    # every weight is p(x, z) / q(z | x) = p(x), whatever the HMC moves do
    np.testing.assert_allclose(r.log_weights, np.repeat(exact[:, None], 4, 1), rtol=1e-10)
    assert np.all(r.acceptance > 0) and np.all(r.step_size > 0)
    bounds = bdmc_bounds(ppca_model, ppca_guide, 5, Wt, bt, data_shape=(D,), num_steps=5,
                         num_chains=3, return_details=True)
    exact_sim = ppca_log_px(bounds.data, W, b)
    np.testing.assert_allclose(bounds.lower, exact_sim, rtol=1e-10)
    np.testing.assert_allclose(bounds.upper, exact_sim, rtol=1e-10)
    assert np.abs(bounds.gap).max() < 1e-9


@pytest.mark.usefixtures("float64")
def test_ais_is_unbiased_for_p_of_x_with_many_chains():
    """Each chain's weight is an unbiased estimate of p(x) for any number of steps: with
    1000 chains the log of their mean is within its standard error of log p(x) already for
    T = 3 (a guide wider than the posterior, so that the weights have a finite variance)."""
    W, b = _ppca(2)
    x = _ppca_data(W, b, 4)
    Wt, bt, xt = _tensors(W, b, x)
    r = ais_log_likelihood(ppca_model, partial(ppca_guide, exact=False, shift=0.5, widen=1.5),
                           xt, Wt, bt, num_steps=3, num_chains=1000, batch_size=10_000,
                           return_details=True)
    assert np.all(np.abs(r.log_likelihood - ppca_log_px(x, W, b)) < 4 * r.stderr)


@pytest.mark.usefixtures("float64")
def test_ais_converges_on_ppca_within_its_chain_spread():
    W, b = _ppca(1)
    x = _ppca_data(W, b, 6)
    Wt, bt, xt = _tensors(W, b, x)
    exact = ppca_log_px(x, W, b)
    # from the prior, and from a shifted guide twice as wide as the posterior
    guide = partial(ppca_guide, exact=False, shift=1.0, widen=2.0)
    for start in ("prior", "guide"):
        errors = {}
        for T in (1, 100):
            r = ais_log_likelihood(ppca_model, guide, xt, Wt, bt, num_steps=T, num_chains=8,
                                   start=start, return_details=True)
            errors[T] = np.abs(r.log_likelihood - exact)
        assert np.all(errors[100] < 4 * r.stderr + 0.1), (errors, r.stderr)
        assert 0.5 < r.acceptance.mean() < 0.8  # the step size adapted toward 0.65
        # T = 1 is importance sampling with 8 samples: far off with this guide
        assert errors[100].mean() < errors[1].mean() / (4 if start == "guide" else 1), errors


@pytest.mark.usefixtures("float64")
def test_bdmc_sandwich_contains_exact_value_and_closes_on_linear_hvae():
    p = _hvae_params()
    pt = _torch(p)
    gaps = {}
    for T in (10, 100):
        r = bdmc_bounds(hvae_model, hvae_guide, 6, pt, data_shape=(6,), num_steps=T,
                        num_chains=16, start="prior", return_details=True)
        gaps[T] = r.mean_gap
    exact = hvae_log_px(r.data, p)
    # stochastic bounds: below and above log p(x) in expectation; at T = 100 on average over
    # the examples within the chain spread of that, and each within its own
    se_lower, se_upper = r.forward.stderr, r.reverse.stderr
    assert np.mean(r.lower - exact) < 3 * np.sqrt(np.sum(se_lower**2)) / 6 + 0.05
    assert np.mean(r.upper - exact) > -3 * np.sqrt(np.sum(se_upper**2)) / 6 - 0.05
    assert np.all(r.lower - exact < 4 * se_lower + 0.1)
    assert np.all(r.upper - exact > -4 * se_upper - 0.1)
    assert gaps[100] < gaps[10] / 2, gaps


@pytest.mark.usefixtures("float64")
def test_exact_guide_on_the_linear_hvae_and_two_latent_sites():
    p = _hvae_params(2)
    pt = _torch(p)
    x = torch.as_tensor(np.random.default_rng(3).standard_normal((4, 6)))
    ll = ais_log_likelihood(hvae_model, hvae_guide, x, pt, num_steps=4, num_chains=3)
    np.testing.assert_allclose(ll, hvae_log_px(x.numpy(), p), rtol=1e-10)


def _patterns(n, d=12, seed=0):
    """Binary images: one of three prototypes with 10% of the pixels flipped."""
    rng = np.random.default_rng(seed)
    protos = rng.random((3, d)) < 0.5
    x = protos[rng.integers(0, 3, n)] ^ (rng.random((n, d)) < 0.1)
    return x.astype(np.float32)


def test_trained_vae_ais_above_importance_sampling_and_bdmc_gap_shrinks():
    x = _patterns(300)
    encoder, decoder = Encoder(12, 2, (16,)), Decoder(2, 12, (16,))
    model = partial(vae_model, decoder=decoder, prior=StandardNormalPrior(2))
    guide = partial(vae_guide, encoder=encoder)
    fit(model, guide, x, num_epochs=15, batch_size=50, learning_rate=3e-3, progress=False)
    x_test = torch.as_tensor(_patterns(12, seed=1))
    is_ll = importance_log_likelihood(model, guide, x_test, num_samples=64)
    r = ais_log_likelihood(model, guide, x_test, num_steps=100, num_chains=8,
                           return_details=True)
    # AIS is at least IS on average (both stochastic lower bounds; AIS the tighter)
    assert r.log_likelihood.mean() > is_ll.mean() - 3 * np.sqrt(np.sum(r.stderr**2)) / 12
    # BDMC from the prior (the guide is nearly exact here): the sandwich is wide after 5
    # steps and closed, up to the chain spread, after 50
    bdmc = {T: bdmc_bounds(model, guide, 8, data_shape=(12,), num_steps=T, num_chains=8,
                           start="prior", return_details=True) for T in (5, 50)}
    assert bdmc[5].mean_gap > 0 and bdmc[50].mean_gap < bdmc[5].mean_gap / 2
    spread = np.sqrt(np.sum(bdmc[50].forward.stderr**2 + bdmc[50].reverse.stderr**2)) / 8
    assert bdmc[50].mean_gap > -3 * spread - 0.05


def test_vamp_prior_encodes_pseudo_inputs_once_per_call():
    encoder, decoder = Encoder(10, 2, (8,)), Decoder(2, 10, (8,))
    prior = LearnedVampPrior(encoder, num_pseudo=7)
    calls = []
    encoder.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    model = partial(vae_model, decoder=decoder, prior=prior)
    guide = partial(vae_guide, encoder=encoder)
    x = torch.as_tensor(_patterns(5, d=10))
    ll = ais_log_likelihood(model, guide, x, num_steps=3, num_chains=4, batch_size=8)
    assert ll.shape == (5,) and np.isfinite(ll).all()
    # the pseudo-inputs: by the checks before the work (twice), then once for all 3 chunks
    assert calls.count(7) == 3


def test_schedules():
    s = ais_schedule(10)
    assert s.shape == (11,) and s[0] == 0 and s[-1] == 1 and np.all(np.diff(s) > 0)
    np.testing.assert_allclose(s + s[::-1], 1.0, atol=1e-12)  # symmetric
    assert np.diff(s)[0] < np.diff(s)[5]  # small steps at the ends
    np.testing.assert_allclose(ais_schedule(4, "linear"), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(ais_schedule(1), [0.0, 1.0])
    np.testing.assert_array_equal(ais_schedule(2, [0, 0.3, 1]), [0, 0.3, 1])
    with pytest.raises(ValueError, match="num_steps must be a positive int; got 0"):
        ais_schedule(0)
    with pytest.raises(ValueError, match="schedule must be 'sigmoid', 'linear'"):
        ais_schedule(5, "cosine")
    with pytest.raises(ValueError, match="increasing 1-d array of num_steps \\+ 1 = 3"):
        ais_schedule(2, [0, 0.5, 0.4, 1])
    with pytest.raises(ValueError, match="from 0.1 to 1"):
        ais_schedule(2, [0.1, 0.5, 1])


def test_bad_arguments():
    W, b = _tensors(*_ppca())
    x = torch.zeros(3, D)
    args = (ppca_model, ppca_guide, x, W.float(), b.float())
    for kw, match in [({"num_chains": 0}, "num_chains must be a positive int"),
                      ({"num_leapfrog": 1.5}, "num_leapfrog must be a positive int"),
                      ({"step_size": -0.1}, "step_size must be a finite number > 0"),
                      ({"target_accept": 1.0}, "target_accept must be a number in \\(0, 1\\)"),
                      ({"start": "posterior"}, "start must be 'guide' or 'prior'"),
                      ({"num_steps": 0}, "num_steps must be a positive int"),
                      ({"batch_size": 0}, "batch_size must be a positive int")]:
        with pytest.raises(ValueError, match=match):
            ais_log_likelihood(*args, **kw)
    with pytest.raises(ValueError, match="NaN"):
        ais_log_likelihood(ppca_model, ppca_guide, torch.full((3, D), float("nan")), W, b)
    with pytest.raises(TypeError, match="data_shape="):
        bdmc_bounds(ppca_model, ppca_guide, 3, W.float(), b.float())
    with pytest.raises(ValueError, match="num_examples must be a positive int"):
        bdmc_bounds(ppca_model, ppca_guide, 0, W.float(), b.float(), data_shape=(D,))


def test_rejects_sites_outside_the_plate_and_missing_latents():
    def model(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))  # outside the plate
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(g[..., None] * torch.ones(2), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="plate 'data'"):
        ais_log_likelihood(model, guide, torch.zeros(3, 2), num_steps=2, num_chains=2)

    def two_latents(x):
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            v = pyro.sample("v", dist.Normal(u, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(v, 1.0).to_event(1), obs=x)

    def one_latent(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("u", dist.Normal(torch.zeros(1), 1.0).to_event(1))

    with pytest.raises(ValueError, match="latent sites \\['u'\\] must be the model's"):
        ais_log_likelihood(two_latents, one_latent, torch.zeros(3, 1), num_steps=2)
