"""AIS and BDMC (NumPyro) on linear-Gaussian models, where log p(x) is closed-form (the
mirror of tests/test_ais_pyro.py, in float32; the float64 comparison of the two backends is
tests/test_ais_parity.py):

- probabilistic PCA: z ~ N(0, I_L), x | z ~ N(W z + b, s^2 I_D), so x ~ N(b, W W^T + s^2 I);
- the two-layer linear HVAE: z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2 I),
  x | z1, z2 ~ N(W1 z1 + W2 z2 + b, s^2 I).

Each distinct chunk shape and setting compiles once (a few seconds on 2 CPU cores), so the
tests share models, guides and settings where they can.
"""

from functools import partial

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import random
from scipy import stats

from ppl_vae.guides.vae_numpyro import vae_guide
from ppl_vae.models.vae_numpyro import vae_model
from ppl_vae.numpyro import (
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
F32 = np.finfo(np.float32).eps


@pytest.fixture(autouse=True)
def _validation():
    numpyro.enable_validation(True)
    yield


def _ppca(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((D, L)), rng.standard_normal(D)


def ppca_model(x, W, b):
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(L), 1.0).to_event(1))
        numpyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)


def ppca_guide(x, W, b, exact=True, shift=0.0, widen=1.0):
    cov = jnp.linalg.inv(jnp.eye(L) + W.T @ W / SIGMA**2)
    loc = (x - b) @ W @ cov / SIGMA**2
    with numpyro.plate("data", x.shape[0]):
        if exact:
            numpyro.sample("z", dist.MultivariateNormal(loc, scale_tril=jnp.linalg.cholesky(cov)))
        else:
            numpyro.sample("z", dist.Normal(loc + shift, widen * jnp.sqrt(jnp.diag(cov)))
                           .to_event(1))


# module level: the jitted chunk is compiled once per guide object
wide_guide = partial(ppca_guide, exact=False, shift=1.0, widen=2.0)
light_guide = partial(ppca_guide, exact=False, shift=0.5, widen=1.5)


def ppca_log_px(x, W, b):
    return stats.multivariate_normal(b, W @ W.T + SIGMA**2 * np.eye(D)).logpdf(x)


def _ppca_data(W, b, n, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, L)) @ W.T + b + SIGMA * rng.standard_normal((n, D))
    return x.astype(np.float32)


def _hvae_params(seed=0, d=6):
    rng = np.random.default_rng(seed)
    A, a = rng.standard_normal((L1, L2)), rng.standard_normal(L1)
    W1, W2, b = rng.standard_normal((d, L1)), rng.standard_normal((d, L2)), rng.standard_normal(d)
    mean_z = np.concatenate([a, np.zeros(L2)])
    cov_z = np.block([[A @ A.T + S1**2 * np.eye(L1), A], [A.T, np.eye(L2)]])
    M = np.hstack([W1, W2])
    post_cov = np.linalg.inv(np.linalg.inv(cov_z) + M.T @ M / SIGMA**2)
    return dict(A=A, a=a, W1=W1, W2=W2, b=b, mean_z=mean_z, cov_z=cov_z, M=M, post_cov=post_cov)


def hvae_log_px(x, p):
    M = p["M"]
    cov = M @ p["cov_z"] @ M.T + SIGMA**2 * np.eye(M.shape[0])
    return stats.multivariate_normal(M @ p["mean_z"] + p["b"], cov).logpdf(x)


def hvae_model(x, p):
    with numpyro.plate("data", x.shape[0]):
        z2 = numpyro.sample("z2", dist.Normal(jnp.zeros(L2), 1.0).to_event(1))
        z1 = numpyro.sample("z1", dist.Normal(z2 @ p["A"].T + p["a"], S1).to_event(1))
        numpyro.sample("x", dist.Normal(z1 @ p["W1"].T + z2 @ p["W2"].T + p["b"], SIGMA)
                       .to_event(1), obs=x)


def hvae_guide(x, p):
    """q(z2 | x) q(z1 | x, z2): the exact posterior's marginal and conditional."""
    P = p["post_cov"]
    mu = ((x - p["b"]) @ p["M"] / SIGMA**2 + p["mean_z"] @ jnp.linalg.inv(p["cov_z"])) @ P
    mu1, mu2 = mu[:, :L1], mu[:, L1:]
    P11, P12, P22 = P[:L1, :L1], P[:L1, L1:], P[L1:, L1:]
    K = P12 @ jnp.linalg.inv(P22)
    with numpyro.plate("data", x.shape[0]):
        z2 = numpyro.sample("z2", dist.MultivariateNormal(
            mu2, scale_tril=jnp.linalg.cholesky(P22)))
        numpyro.sample("z1", dist.MultivariateNormal(
            mu1 + (z2 - mu2) @ K.T, scale_tril=jnp.linalg.cholesky(P11 - K @ P12.T)))


def _f32(p):
    return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}


def test_exact_posterior_gives_exact_log_likelihood_and_bounds():
    W, b = _ppca()
    x = _ppca_data(W, b, 7)
    exact = ppca_log_px(x, W, b)
    Wj, bj = jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)
    # 7 examples x 4 chains in chunks of 3 pairs: the chains split in two pieces
    r = ais_log_likelihood(random.PRNGKey(0), ppca_model, ppca_guide, x, Wj, bj, num_steps=5,
                           num_chains=4, batch_size=3, return_details=True)
    assert r.log_likelihood.shape == (7,) and r.log_weights.shape == (7, 4)
    assert r.log_likelihood.dtype == np.float64
    tol = 64 * F32 * np.abs(exact).max()  # every weight is p(x): float32 round-off only
    np.testing.assert_allclose(r.log_weights, np.repeat(exact[:, None], 4, 1), atol=tol)
    assert np.all(r.acceptance > 0) and np.all(r.step_size > 0)
    # the same chunk shape and settings: the compiled chunk is reused
    bounds = bdmc_bounds(random.PRNGKey(1), ppca_model, ppca_guide, 5, Wj, bj, data_shape=(D,),
                         num_steps=5, num_chains=4, batch_size=3, return_details=True)
    exact_sim = ppca_log_px(bounds.data, W, b)
    np.testing.assert_allclose(bounds.lower, exact_sim, atol=tol)
    np.testing.assert_allclose(bounds.upper, exact_sim, atol=tol)


def test_ais_is_unbiased_for_p_of_x_with_many_chains():
    """Each chain's weight is an unbiased estimate of p(x) whatever the number of steps: with
    1000 chains the log of their mean is within its standard error of log p(x) at T = 3."""
    W, b = _ppca(2)
    x = _ppca_data(W, b, 4)
    r = ais_log_likelihood(random.PRNGKey(0), ppca_model, light_guide, x, jnp.asarray(W),
                           jnp.asarray(b), num_steps=3, num_chains=1000, batch_size=10_000,
                           return_details=True)
    assert np.all(np.abs(r.log_likelihood - ppca_log_px(x, W, b)) < 4 * r.stderr + 1e-4)


def test_ais_converges_on_ppca_within_its_chain_spread():
    W, b = _ppca(1)
    x = _ppca_data(W, b, 6)
    exact = ppca_log_px(x, W, b)
    args = (x, jnp.asarray(W), jnp.asarray(b))
    errors = {}
    for T in (1, 100):  # (the prior start: the BDMC test below)
        r = ais_log_likelihood(random.PRNGKey(T), ppca_model, wide_guide, *args, num_steps=T,
                               num_chains=8, return_details=True)
        errors[T] = np.abs(r.log_likelihood - exact)
    assert np.all(errors[100] < 4 * r.stderr + 0.1), (errors, r.stderr)
    assert 0.5 < r.acceptance.mean() < 0.8  # the step size adapted toward 0.65
    # T = 1 is importance sampling with 8 samples: far off with this guide
    assert errors[100].mean() < errors[1].mean() / 4, errors


def test_bdmc_sandwich_contains_exact_value_and_closes_on_linear_hvae():
    p = _hvae_params()
    gaps = {}
    for T in (10, 100):
        r = bdmc_bounds(random.PRNGKey(T), hvae_model, hvae_guide, 6, _f32(p), data_shape=(6,),
                        num_steps=T, num_chains=16, start="prior", return_details=True)
        gaps[T] = r.mean_gap
    exact = hvae_log_px(r.data, p)
    se_lower, se_upper = r.forward.stderr, r.reverse.stderr
    assert np.mean(r.lower - exact) < 3 * np.sqrt(np.sum(se_lower**2)) / 6 + 0.05
    assert np.mean(r.upper - exact) > -3 * np.sqrt(np.sum(se_upper**2)) / 6 - 0.05
    assert np.all(r.lower - exact < 4 * se_lower + 0.1)
    assert np.all(r.upper - exact > -4 * se_upper - 0.1)
    assert gaps[100] < gaps[10] / 2, gaps


def _patterns(n, d=12, seed=0):
    rng = np.random.default_rng(seed)
    protos = rng.random((3, d)) < 0.5
    return (protos[rng.integers(0, 3, n)] ^ (rng.random((n, d)) < 0.1)).astype(np.float32)


def test_trained_vae_ais_above_importance_sampling():
    k = random.split(random.PRNGKey(0), 3)
    encoder, decoder = Encoder(12, 2, (16,), rng_key=k[0]), Decoder(2, 12, (16,), rng_key=k[1])
    model = partial(vae_model, decoder=decoder, prior=StandardNormalPrior(2))
    guide = partial(vae_guide, encoder=encoder)
    fitted = fit(k[2], model, guide, _patterns(300), num_epochs=15, batch_size=50,
                 learning_rate=3e-3, progress=False)
    x_test = _patterns(12, seed=1)
    is_ll = importance_log_likelihood(random.PRNGKey(1), model, guide, x_test, num_samples=64,
                                      params=fitted.params)
    r = ais_log_likelihood(random.PRNGKey(2), model, guide, x_test, num_steps=50, num_chains=8,
                           params=fitted.params, return_details=True)
    assert r.log_likelihood.mean() > is_ll.mean() - 3 * np.sqrt(np.sum(r.stderr**2)) / 12
    # (BDMC on this trained VAE: tests/test_ais_pyro.py; each T compiles once here)


def test_vamp_prior_built_once_and_second_call_compiles_nothing(monkeypatch):
    k = random.split(random.PRNGKey(0), 3)
    enc, dec = Encoder(10, 2, (8,), rng_key=k[0]), Decoder(2, 10, (8,), rng_key=k[1])
    prior = LearnedVampPrior(enc, 6, rng_key=k[2])
    calls = []
    original = LearnedVampPrior.build
    monkeypatch.setattr(LearnedVampPrior, "build",
                        lambda self, m: calls.append(1) or original(self, m))
    model, guide = partial(vae_model, decoder=dec, prior=prior), partial(vae_guide, encoder=enc)
    x = _patterns(5, d=10)
    kw = dict(num_steps=3, num_chains=4, batch_size=8)  # 3 chunks of 2 examples
    ll = ais_log_likelihood(random.PRNGKey(0), model, guide, x, **kw)
    assert ll.shape == (5,) and np.isfinite(ll).all()
    # the checks before the work (twice), then once for the whole call
    assert len(calls) == 3
    again = ais_log_likelihood(random.PRNGKey(0), model, guide, x, **kw)
    np.testing.assert_array_equal(ll, again)
    assert len(calls) == 5  # the checks again; the jitted prior cache and chunk not retraced


def test_schedules_match_the_pyro_half():
    s = ais_schedule(10)
    assert s.shape == (11,) and s[0] == 0 and s[-1] == 1 and np.all(np.diff(s) > 0)
    np.testing.assert_allclose(s + s[::-1], 1.0, atol=1e-12)
    np.testing.assert_allclose(ais_schedule(4, "linear"), [0, 0.25, 0.5, 0.75, 1])
    with pytest.raises(ValueError, match="schedule must be 'sigmoid', 'linear'"):
        ais_schedule(5, "cosine")


def test_bad_arguments():
    W, b = _ppca()
    x = np.zeros((3, D), np.float32)
    key = random.PRNGKey(0)
    args = (key, ppca_model, ppca_guide, x, jnp.asarray(W, jnp.float32),
            jnp.asarray(b, jnp.float32))
    for kw, match in [({"num_chains": 0}, "num_chains must be a positive int"),
                      ({"num_leapfrog": 1.5}, "num_leapfrog must be a positive int"),
                      ({"step_size": -0.1}, "step_size must be a finite number > 0"),
                      ({"target_accept": 1.0}, "target_accept must be a number in \\(0, 1\\)"),
                      ({"start": "posterior"}, "start must be 'guide' or 'prior'"),
                      ({"num_steps": 0}, "num_steps must be a positive int"),
                      ({"batch_size": 0}, "batch_size must be a positive int")]:
        with pytest.raises(ValueError, match=match):
            ais_log_likelihood(*args, **kw)
    with pytest.raises(TypeError, match="rng_key"):
        ais_log_likelihood(0, *args[1:])
    with pytest.raises(TypeError, match="data_shape="):
        bdmc_bounds(key, ppca_model, ppca_guide, 3, *args[4:])
    with pytest.raises(ValueError, match="num_examples must be a positive int"):
        bdmc_bounds(key, ppca_model, ppca_guide, 0, *args[4:], data_shape=(D,))


def test_rejects_sites_outside_the_plate_and_missing_latents():
    def model(x):
        g = numpyro.sample("g", dist.Normal(0.0, 1.0))  # outside the plate
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(g[..., None] * jnp.ones(2), 1.0).to_event(1),
                           obs=x)

    def guide(x):
        numpyro.sample("g", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="plate 'data'"):
        ais_log_likelihood(random.PRNGKey(0), model, guide, np.zeros((3, 2)), num_steps=2,
                           num_chains=2)

    def two_latents(x):
        with numpyro.plate("data", x.shape[0]):
            u = numpyro.sample("u", dist.Normal(jnp.zeros(1), 1.0).to_event(1))
            v = numpyro.sample("v", dist.Normal(u, 1.0).to_event(1))
            numpyro.sample("x", dist.Normal(v, 1.0).to_event(1), obs=x)

    def one_latent(x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("u", dist.Normal(jnp.zeros(1), 1.0).to_event(1))

    with pytest.raises(ValueError, match="latent sites \\['u'\\] must be the model's"):
        ais_log_likelihood(random.PRNGKey(0), two_latents, one_latent, np.zeros((3, 1)),
                           num_steps=2)
