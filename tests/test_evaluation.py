"""importance_log_likelihood in both backends, on probabilistic PCA, where log p(x) is
closed-form:

    z ~ N(0, I_L),  x | z ~ N(W z + b, s^2 I_D)   =>   x ~ N(b, W W^T + s^2 I_D),
    z | x ~ N(S W^T (x - b) / s^2, S),  S = (I_L + W^T W / s^2)^{-1}.

With the exact posterior as guide every log-weight equals log p(x); with another guide the
estimate is within Monte Carlo error of it. The programs are ``backend.ppca``
(``tests/backends.py``), written once.
"""

import math
from functools import partial

import numpy as np
import pytest
from backends import F32_EPS, get, ppca_data, ppca_log_px, ppca_params

D, L = 5, 2


def _ppca(backend, seed, n):
    """``x`` and ``(W, b)`` as backend arrays, and log p(x) (float64, SciPy)."""
    W, b = ppca_params(seed)
    x = ppca_data(W, b, n, seed=seed + 1)
    return backend.array(x), (backend.array(W), backend.array(b)), ppca_log_px(x, W, b)


def test_exact_with_the_true_posterior(backend):
    """Every weight is p(x, z) / q(z | x) = p(x): exact up to round-off, a few units of the
    dtype's eps of the terms (|log p(x)| ~ 10): 64 eps |log p(x)|. In float32, and in
    float64 where that is cheap (Pyro; ``backend.precisions``)."""
    model, guide = backend.ppca
    for precision in backend.precisions:
        with backend.float64() if precision == "float64" else _nothing():
            x, Wb, exact = _ppca(backend, 0, 12)
            # Chunks of 3 examples x 200 samples; the last chunk (12 = 4 x 3) is full, but
            # 200 samples do not divide batch_size and exercise particle padding (NumPyro).
            ll, log_w = backend.importance_log_likelihood(
                model, guide, x, *Wb, num_samples=200, batch_size=600, return_log_weights=True)
        assert ll.shape == (12,) and ll.dtype == np.float64 and log_w.shape == (12, 200)
        tol = 64 * np.finfo(precision).eps * np.abs(exact).max()
        np.testing.assert_allclose(log_w, np.broadcast_to(exact[:, None], log_w.shape),
                                   rtol=0, atol=tol, err_msg=precision)
        np.testing.assert_allclose(ll, exact, rtol=0, atol=tol, err_msg=precision)


def _nothing():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize("batch_size", [20000, 700])
def test_another_guide_is_within_monte_carlo_error(backend, batch_size):
    """Delta method: sd(log mean w) ~ sd(w) / (sqrt(S) mean(w)), from the sample itself; the
    O(1/S) Jensen bias is far below it. 5 standard errors, plus float32 round-off of the
    log-weights (64 eps |log p(x)|)."""
    model, _ = backend.ppca
    x, Wb, exact = _ppca(backend, 2, 8)
    S = 2000
    ll, log_w = backend.importance_log_likelihood(
        model, backend.ppca_guides["near"], x, *Wb, num_samples=S, batch_size=batch_size,
        return_log_weights=True, seed=1)
    assert log_w.shape == (8, S)
    assert np.ptp(log_w, axis=1).min() > 0.1  # the weights really vary
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    se = w.std(1) / (math.sqrt(S) * w.mean(1))
    slack = 64 * F32_EPS * np.abs(exact).max()
    assert np.all(np.abs(ll - exact) < 5 * se + slack), (ll - exact, se)
    # The estimate is a lower bound in expectation, above the ELBO on average.
    assert np.mean(ll) > np.mean(log_w)


def test_chunks_cover_every_example_once(backend):
    model, guide = backend.ppca
    x, Wb, _ = _ppca(backend, 3, 7)
    seen = []
    for rows, log_w in backend.log_weight_chunks(model, guide, x, *Wb, num_samples=30,
                                                 batch_size=90):
        assert log_w.shape == (rows.stop - rows.start, 30)
        seen += list(range(rows.start, rows.stop))
    assert seen == list(range(7))  # 3 + 3 + 1 (NumPyro pads the last chunk internally)
    log_w = backend.importance_log_weights(model, guide, x, *Wb, num_samples=30, batch_size=90)
    assert log_w.shape == (7, 30) and log_w.dtype == np.float64


def test_default_chunk_size_on_cpu(backend):
    """The default is CPU_BATCH_SIZE pairs: the same chunks and seeds, so the same numbers
    (same process, same code, same inputs: bit for bit); one chunk of 5000 draws others."""
    model, _ = backend.ppca
    guide = backend.ppca_guides["near"]
    x, Wb, _ = _ppca(backend, 5, 4)
    kw = dict(num_samples=700, seed=0)
    default = backend.importance_log_weights(model, guide, x, *Wb, **kw)
    explicit = backend.importance_log_weights(model, guide, x, *Wb, **kw,
                                              batch_size=backend.lib.evaluation.CPU_BATCH_SIZE)
    np.testing.assert_array_equal(default, explicit)
    other = backend.importance_log_weights(model, guide, x, *Wb, **kw, batch_size=5000)
    assert not np.array_equal(default, other)  # one chunk: other draws


def test_a_vamp_prior_is_built_once_per_evaluation(backend, monkeypatch):
    """Not once per chunk: once for the check on two rows that runs before the work, once for
    the evaluation."""
    calls = []
    prior_class = backend.lib.LearnedVampPrior
    original = prior_class.build
    monkeypatch.setattr(prior_class, "build",
                        lambda self, *a: calls.append(1) or original(self, *a))
    model, guide = backend.vae(num_features=12, latent_dim=3, hidden=(8,), num_pseudo=6)
    x = backend.array((np.random.default_rng(0).random((9, 12)) < 0.5).astype(np.float32))
    ll = backend.importance_log_likelihood(model, guide, x, num_samples=10, batch_size=20)
    assert ll.shape == (9,) and np.all(np.isfinite(ll)) and np.all(ll < 0)  # 5 chunks
    assert len(calls) == 2


def test_pyro_the_check_runs_the_guide_then_the_prior():
    backend = get("pyro")
    model, guide = backend.vae(num_features=20, latent_dim=3, hidden=(16,), num_pseudo=7)
    calls = []
    guide.keywords["encoder"].register_forward_hook(
        lambda m, inp, out: calls.append(inp[0].shape[0]))
    x = backend.array((np.random.default_rng(0).random((12, 20)) < 0.3).astype(np.float32))
    ll = backend.importance_log_likelihood(model, guide, x, num_samples=10, batch_size=40)
    assert np.isfinite(ll).all()
    # the K = 7 pseudo-inputs: once by the check on two rows that runs before the work, and
    # once for the whole evaluation, not once per chunk
    assert calls.count(7) == 2
    assert calls[:2] == [2, 7]  # the check: the guide on two rows, then the prior


def test_sites_outside_the_data_plate_and_bad_arguments_are_refused(backend):
    ppl, dist = backend.ppl, backend.dist

    def model(x):
        ppl.sample("g", dist.Normal(0.0, 1.0))
        with ppl.plate("data", x.shape[0]):
            ppl.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)

    def guide(x):
        ppl.sample("g", dist.Normal(0.0, 1.0))

    zeros = backend.array(np.zeros((3, D)))
    with pytest.raises(ValueError, match="'g'.*plate 'data'"):
        backend.importance_log_likelihood(model, guide, zeros, num_samples=4)
    model, guide = backend.ppca
    x, Wb, _ = _ppca(backend, 0, 4)
    ll = partial(backend.importance_log_likelihood, model, guide)
    with pytest.raises(ValueError, match="num_samples must be a positive int; got 0"):
        ll(x, *Wb, num_samples=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 2.5"):
        ll(x, *Wb, batch_size=2.5)
    with pytest.raises(ValueError, match=r"\(N, \.\.\.\).*\(5,\)"):
        ll(x[0], *Wb)
    bad = backend.numpy(x).copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ll(backend.array(bad), *Wb)


# ------------------------------------------------------------------------------- Pyro
def test_pyro_trace_and_meanfield_elbo_agree_in_expectation():
    """Analytic KL (standard prior) vs sampled KL: the same ELBO in expectation; the VampPrior
    has no registered KL, so TraceMeanField falls back to the sampled term."""
    import torch

    backend = get("pyro")
    x = (torch.rand(4, 10) < 0.4).float()
    for prior in ("standard", "vamp"):
        model, guide = backend.vae(prior, num_features=10, latent_dim=2, hidden=(8,),
                                   num_pseudo=5)
        estimates = {}
        for name in ("trace", "meanfield"):
            elbo = backend.elbos[name](num_particles=100, vectorize_particles=True)
            losses = torch.tensor([elbo.loss(model, guide, x) for _ in range(60)])
            estimates[name] = (losses.mean(), losses.std() / 60**0.5)
        (m1, s1), (m2, s2) = estimates["trace"], estimates["meanfield"]
        assert abs(m1 - m2) < 5 * (s1**2 + s2**2) ** 0.5 + 1e-6


def test_pyro_evaluation_builds_no_autograd_graph_and_leaves_grad_mode_alone():
    """Parameters that require grad give log-weights without a graph (no saved activations
    per chunk), and grad mode is as the caller left it while the generator is suspended."""
    import torch

    backend = get("pyro")
    model, guide = backend.ppca
    with backend.float64():
        x, (W, b), _ = _ppca(backend, 2, 5)
        W, b = W.requires_grad_(), b.requires_grad_()
        for _rows, log_w in backend.lib.log_weight_chunks(model, guide, x, W, b,
                                                          num_samples=20, batch_size=40):
            assert not log_w.requires_grad and log_w.grad_fn is None
            assert torch.is_grad_enabled()


# ---------------------------------------------------------------------------- NumPyro
def _ppca_with_params(backend):
    """PPCA with W and b as NumPyro params (initialised at W0 and 0): what ``params=`` and
    ``handlers.substitute`` bind."""
    numpyro, jnp = backend.ppl, backend.xp
    model_args, guide_args = backend.ppca

    def model(x, W0):
        W, b = numpyro.param("W", W0), numpyro.param("b", jnp.zeros(D))
        model_args(x, W, b)

    def guide(x, W0):
        W, b = numpyro.param("W", W0), numpyro.param("b", jnp.zeros(D))
        guide_args(x, W, b)

    return model, guide


def test_numpyro_parameters_bound_by_substitute_or_params_agree():
    backend = get("numpyro")
    if backend is None:
        pytest.skip("numpyro is not installed")
    from numpyro import handlers

    model, guide = _ppca_with_params(backend)
    x, Wb, exact = _ppca(backend, 1, 5)
    params = {"W": Wb[0], "b": Wb[1]}
    W0 = backend.xp.zeros((D, L))
    a = backend.importance_log_likelihood(handlers.substitute(model, data=params),
                                          handlers.substitute(guide, data=params), x, W0,
                                          num_samples=50)
    c = backend.importance_log_likelihood(model, guide, x, W0, num_samples=50, params=params)
    np.testing.assert_allclose(a, c, rtol=1e-6)
    np.testing.assert_allclose(a, exact, atol=1e-4)


def test_numpyro_second_evaluation_reuses_the_compiled_chunk():
    """Same model and guide objects: nothing is traced (so nothing compiled) again, and new
    parameter values are arguments of the compiled code, not constants baked into it."""
    backend = get("numpyro")
    if backend is None:
        pytest.skip("numpyro is not installed")
    import jax
    from scipy import stats

    model_params, guide = _ppca_with_params(backend)
    traces = []

    def model(x, W0):
        if isinstance(x, jax.core.Tracer):  # JAX is tracing (not the eager check)
            traces.append(1)
        model_params(x, W0)

    x, (W, b), exact = _ppca(backend, 4, 6)
    kw = dict(num_samples=40, batch_size=80)
    W0 = backend.xp.zeros((D, L))
    first = backend.importance_log_likelihood(model, guide, x, W0, params={"W": W, "b": b},
                                              **kw)
    assert traces
    n = len(traces)
    again = backend.importance_log_likelihood(model, guide, x, W0, params={"W": W, "b": b},
                                              **kw)
    assert len(traces) == n
    # the same compiled function, key and inputs, in this process: the same bits
    np.testing.assert_array_equal(first, again)
    W2 = 1.5 * np.asarray(W, np.float64)  # other values: the exact guide is exact for them too
    cov2 = W2 @ W2.T + 0.5**2 * np.eye(D)
    exact2 = stats.multivariate_normal(np.asarray(b, np.float64), cov2).logpdf(
        np.asarray(x, np.float64))
    new = backend.importance_log_likelihood(model, guide, x, W0,
                                            params={"W": backend.array(W2), "b": b}, **kw)
    assert len(traces) == n
    tol = 64 * F32_EPS * np.abs(exact2).max()
    np.testing.assert_allclose(new, exact2, atol=tol)
    assert np.abs(exact2 - exact).min() > 100 * tol  # the two parameter sets really differ


def test_numpyro_rng_key_is_checked():
    backend = get("numpyro")
    if backend is None:
        pytest.skip("numpyro is not installed")
    model, guide = backend.ppca
    x, Wb, _ = _ppca(backend, 0, 3)
    with pytest.raises(TypeError, match="rng_key"):
        backend.lib.importance_log_likelihood(0, model, guide, x, *Wb)
