"""importance_log_likelihood (NumPyro) on probabilistic PCA, where log p(x) is closed-form:

    z ~ N(0, I_L),  x | z ~ N(W z + b, s^2 I_D)   =>   x ~ N(b, W W^T + s^2 I_D),
    z | x ~ N(S W^T (x - b) / s^2, S),  S = (I_L + W^T W / s^2)^{-1}.

With the exact posterior as guide every log-weight equals log p(x); with another guide the
estimate is within Monte Carlo error of it.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import random
from scipy import stats

from ppl_vae.numpyro import (
    Encoder,
    LearnedVampPrior,
    importance_log_likelihood,
    importance_log_weights,
)
from ppl_vae.numpyro.evaluation import log_weight_chunks

D, L, SIGMA = 5, 2, 0.5


@pytest.fixture(autouse=True)
def _validation():
    numpyro.enable_validation(True)
    yield


def _ppca(seed=0, n=12):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((D, L)).astype(np.float32)
    b = rng.standard_normal(D).astype(np.float32)
    z = rng.standard_normal((n, L))
    x = (z @ W.T + b + SIGMA * rng.standard_normal((n, D))).astype(np.float32)
    cov = W.astype(np.float64) @ W.T.astype(np.float64) + SIGMA**2 * np.eye(D)
    exact = stats.multivariate_normal(b.astype(np.float64), cov).logpdf(x.astype(np.float64))
    return W, b, x, exact


def ppca_model(x, W0):
    W = numpyro.param("W", W0)  # trainable: lets the tests pass the true W with params=
    b = numpyro.param("b", jnp.zeros(D))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(L), 1.0).to_event(1))
        numpyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)


def exact_guide(x, W0, shift=0.0, widen=1.0):
    W, b = numpyro.param("W", W0), numpyro.param("b", jnp.zeros(D))
    cov = jnp.linalg.inv(jnp.eye(L) + W.T @ W / SIGMA**2)  # (L, L)
    loc = (x - b) @ W @ cov / SIGMA**2  # (N, L)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.MultivariateNormal(
            loc + shift, scale_tril=widen * jnp.linalg.cholesky(cov)))


def test_exact_guide_gives_exact_log_likelihood():
    W, b, x, exact = _ppca()
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    # Chunks of 3 examples x 200 samples; the last chunk (12 = 4 x 3) is full, but 200 samples
    # do not divide batch_size and exercise particle padding below.
    ll, log_w = importance_log_likelihood(
        random.PRNGKey(0), ppca_model, exact_guide, x, jnp.zeros((D, L)), num_samples=200,
        batch_size=600, params=params, return_log_weights=True)
    assert ll.shape == (12,) and ll.dtype == np.float64 and log_w.shape == (12, 200)
    # Every weight is p(x, z) / q(z | x) = p(x): float32 round-off only (values ~ 10).
    tol = 64 * np.finfo(np.float32).eps * np.abs(exact).max()
    np.testing.assert_allclose(log_w, np.broadcast_to(exact[:, None], log_w.shape), atol=tol)
    np.testing.assert_allclose(ll, exact, atol=tol)


def test_parameters_bound_by_substitute_or_params_agree():
    W, b, x, exact = _ppca(1, n=5)
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    bound_model = numpyro.handlers.substitute(ppca_model, data=params)
    bound_guide = numpyro.handlers.substitute(exact_guide, data=params)
    a = importance_log_likelihood(random.PRNGKey(0), bound_model, bound_guide, x,
                                  jnp.zeros((D, L)), num_samples=50)
    c = importance_log_likelihood(random.PRNGKey(0), ppca_model, exact_guide, x,
                                  jnp.zeros((D, L)), num_samples=50, params=params)
    np.testing.assert_allclose(a, c, rtol=1e-6)
    np.testing.assert_allclose(a, exact, atol=1e-4)


@pytest.mark.parametrize("batch_size", [20000, 700])
def test_other_guide_within_monte_carlo_error(batch_size):
    W, b, x, exact = _ppca(2, n=8)
    S = 2000
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    ll, log_w = importance_log_likelihood(
        random.PRNGKey(1), ppca_model, partial(exact_guide, shift=0.1, widen=1.3), x,
        jnp.zeros((D, L)), num_samples=S, batch_size=batch_size, params=params,
        return_log_weights=True)
    assert np.ptp(log_w, axis=1).min() > 0.1  # the weights really vary
    # Delta method: sd(log mean w) ~ sd(w) / (sqrt(S) mean(w)), from the sample itself;
    # the O(1/S) Jensen bias is far below it.
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    se = w.std(1) / (math.sqrt(S) * w.mean(1))
    assert np.all(np.abs(ll - exact) < 5 * se + 1e-4), (ll - exact, se)


def test_chunks_cover_every_example_once():
    W, b, x, exact = _ppca(3, n=7)
    seen = []
    for rows, log_w in log_weight_chunks(random.PRNGKey(0), ppca_model, exact_guide, x,
                                         jnp.zeros((D, L)), num_samples=30, batch_size=90,
                                         params={"W": W, "b": b}):
        assert log_w.shape == (rows.stop - rows.start, 30)
        seen += list(range(rows.start, rows.stop))
    assert seen == list(range(7))  # 3 + 3 + 1 (the last chunk padded internally)
    log_w = importance_log_weights(random.PRNGKey(0), ppca_model, exact_guide, x,
                                   jnp.zeros((D, L)), num_samples=30, batch_size=90,
                                   params={"W": W, "b": b})
    assert log_w.shape == (7, 30) and log_w.dtype == np.float64


def test_vamp_prior_encodings_built_once(monkeypatch):
    """The fixed VampPrior is built once per call, not once per chunk."""
    from ppl_vae.guides.vae_numpyro import vae_guide
    from ppl_vae.models.vae_numpyro import vae_model
    from ppl_vae.numpyro import Decoder

    k = random.split(random.PRNGKey(0), 3)
    enc = Encoder(12, 3, (8,), rng_key=k[0])
    dec = Decoder(3, 12, (8,), rng_key=k[1])
    prior = LearnedVampPrior(enc, 6, rng_key=k[2])
    calls = []
    original = LearnedVampPrior.build
    monkeypatch.setattr(LearnedVampPrior, "build",
                        lambda self, m: calls.append(1) or original(self, m))
    x = (np.random.default_rng(0).random((9, 12)) < 0.5).astype(np.float32)
    ll = importance_log_likelihood(random.PRNGKey(0), partial(vae_model, decoder=dec, prior=prior),
                                   partial(vae_guide, encoder=enc), x, num_samples=10,
                                   batch_size=20)  # 5 chunks of 2 examples
    assert ll.shape == (9,) and np.all(np.isfinite(ll)) and np.all(ll < 0)
    # once for the check on two rows that runs before the work, once for the evaluation
    # (not once per chunk)
    assert len(calls) == 2


def test_site_outside_data_plate_raises():
    def model(x):
        numpyro.sample("g", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)

    def guide(x):
        numpyro.sample("g", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'g'.*plate 'data'"):
        importance_log_likelihood(random.PRNGKey(0), model, guide, np.zeros((3, D)),
                                  num_samples=4)


def test_bad_arguments():
    W, b, x, _ = _ppca()
    args = (ppca_model, exact_guide)
    key = random.PRNGKey(0)
    with pytest.raises(ValueError, match="num_samples must be a positive int; got 0"):
        importance_log_likelihood(key, *args, x, W, num_samples=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 2.5"):
        importance_log_likelihood(key, *args, x, W, batch_size=2.5)
    with pytest.raises(ValueError, match=r"\(N, \.\.\.\).*\(5,\)"):
        importance_log_likelihood(key, *args, x[0], W)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        importance_log_likelihood(key, *args, bad, W)
    with pytest.raises(TypeError, match="rng_key"):
        importance_log_likelihood(0, *args, x, W)


def test_second_evaluation_reuses_the_compiled_chunk():
    """Same model and guide objects: nothing is traced (so nothing compiled) again, and new
    parameter values are arguments of the compiled code, not constants baked into it."""
    W, b, x, exact = _ppca(4, n=6)
    traces = []

    def model(x, W0):
        if isinstance(x, jax.core.Tracer):  # JAX is tracing (not the eager check)
            traces.append(1)
        ppca_model(x, W0)

    kw = dict(num_samples=40, batch_size=80)
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    first = importance_log_likelihood(random.PRNGKey(0), model, exact_guide, x,
                                      jnp.zeros((D, L)), params=params, **kw)
    assert traces
    n = len(traces)
    again = importance_log_likelihood(random.PRNGKey(0), model, exact_guide, x,
                                      jnp.zeros((D, L)), params=params, **kw)
    assert len(traces) == n
    np.testing.assert_array_equal(first, again)
    W2 = 1.5 * W  # other parameter values: the exact guide is exact for them too
    cov2 = W2.astype(np.float64) @ W2.T.astype(np.float64) + SIGMA**2 * np.eye(D)
    exact2 = stats.multivariate_normal(b.astype(np.float64), cov2).logpdf(x.astype(np.float64))
    new = importance_log_likelihood(random.PRNGKey(0), model, exact_guide, x,
                                    jnp.zeros((D, L)), params={"W": W2, "b": b}, **kw)
    assert len(traces) == n
    tol = 64 * np.finfo(np.float32).eps * np.abs(exact2).max()
    np.testing.assert_allclose(new, exact2, atol=tol)
    assert np.abs(exact2 - exact).min() > 100 * tol  # the two parameter sets really differ


def test_default_chunk_size_on_cpu():
    from ppl_vae.numpyro.evaluation import CPU_BATCH_SIZE

    W, b, x, _ = _ppca(5, n=4)
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    guide = partial(exact_guide, shift=0.1, widen=1.3)
    args = (random.PRNGKey(0), ppca_model, guide, x, jnp.zeros((D, L)))
    default = importance_log_weights(*args, num_samples=700, params=params)
    explicit = importance_log_weights(*args, num_samples=700, params=params,
                                      batch_size=CPU_BATCH_SIZE)
    np.testing.assert_array_equal(default, explicit)
    other = importance_log_weights(*args, num_samples=700, params=params, batch_size=5000)
    assert not np.array_equal(default, other)  # one chunk: other keys, other draws
