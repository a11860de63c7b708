"""AIS and BDMC in both backends, on linear-Gaussian models, where log p(x) is closed-form:

- probabilistic PCA: z ~ N(0, I_L), x | z ~ N(W z + b, s^2 I_D), so x ~ N(b, W W^T + s^2 I);
- the two-layer linear HVAE: z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2 I),
  x | z1, z2 ~ N(W1 z1 + W2 z2 + b, s^2 I), so x is Gaussian too (the joint of (z1, z2) is).

With the exact posterior as guide every AIS weight is exactly p(x), whatever the transitions
do; with a poor guide (or the prior) the estimate converges to log p(x) as the number of
steps grows, within its chain spread, and the BDMC bounds contain log p(x) and close.
Tolerances come from the chain spread (the delta-method standard error over chains), and for
exact values from the dtype's round-off. The programs are ``backend.ppca`` and
``backend.linear_hvae`` (``tests/backends.py``), written once; the two backends are also
compared with each other (same names and schedules; the same estimates on a VampPrior VAE
with the same weights).

NumPyro compiles each distinct chunk shape and setting once (a few seconds on 2 CPU cores),
so the tests share programs, shapes and settings where they can.
"""

import contextlib

import numpy as np
import pytest
from backends import (
    get,
    linear_hvae_log_px,
    linear_hvae_params,
    patterns,
    ppca_data,
    ppca_log_px,
    ppca_params,
)

D = 5


def _ppca(backend, seed, n):
    W, b = ppca_params(seed)
    x = ppca_data(W, b, n)
    return backend.array(x), (backend.array(W), backend.array(b)), ppca_log_px(x, W, b), W, b


def _precision(backend, precision):
    return backend.float64() if precision == "float64" else contextlib.nullcontext()


def test_exact_posterior_gives_exact_log_likelihood_and_bounds(backend):
    """Every weight is p(x, z) / q(z | x) = p(x), whatever the HMC moves do: exact up to
    round-off, 64 eps of the dtype times |log p(x)| (~10). In float32, and in float64 where
    that is cheap (Pyro; ``backend.precisions``)."""
    for precision in backend.precisions:
        _exact_posterior_gives_exact_log_likelihood_and_bounds(backend, precision)


def _exact_posterior_gives_exact_log_likelihood_and_bounds(backend, precision):
    model, guide = backend.ppca
    with _precision(backend, precision):
        x, Wb, exact, W, b = _ppca(backend, 0, 7)
        # 7 examples x 4 chains in chunks of 3 pairs: the chains split in two pieces
        r = backend.ais_log_likelihood(model, guide, x, *Wb, num_steps=5, num_chains=4,
                                       batch_size=3, return_details=True)
        # the same chunk shape and settings: NumPyro's compiled chunk is reused
        bounds = backend.bdmc_bounds(model, guide, 5, *Wb, data_shape=(D,), num_steps=5,
                                     num_chains=4, batch_size=3, return_details=True, seed=1)
    assert r.log_likelihood.shape == (7,) and r.log_weights.shape == (7, 4)
    assert r.log_likelihood.dtype == np.float64
    tol = 64 * np.finfo(precision).eps * np.abs(exact).max()
    np.testing.assert_allclose(r.log_weights, np.repeat(exact[:, None], 4, 1), rtol=0, atol=tol)
    assert np.all(r.acceptance > 0) and np.all(r.step_size > 0)
    exact_sim = ppca_log_px(bounds.data, W, b)
    np.testing.assert_allclose(bounds.lower, exact_sim, rtol=0, atol=tol)
    np.testing.assert_allclose(bounds.upper, exact_sim, rtol=0, atol=tol)
    assert np.abs(bounds.gap).max() < 2 * tol


def test_ais_is_unbiased_for_p_of_x_with_many_chains(backend):
    """Each chain's weight is an unbiased estimate of p(x) for any number of steps: with
    1000 chains the log of their mean is within its standard error of log p(x) already for
    T = 3 (a guide wider than the posterior, so that the weights have a finite variance);
    plus float32 round-off of the weights (64 eps |log p(x)|)."""
    model, _ = backend.ppca
    x, Wb, exact, _, _ = _ppca(backend, 2, 4)
    r = backend.ais_log_likelihood(model, backend.ppca_guides["light"], x, *Wb, num_steps=3,
                                   num_chains=1000, batch_size=10_000, return_details=True)
    slack = 64 * np.finfo(np.float32).eps * np.abs(exact).max()
    assert np.all(np.abs(r.log_likelihood - exact) < 4 * r.stderr + slack)


def test_ais_converges_on_ppca_within_its_chain_spread(backend):
    model, _ = backend.ppca
    x, Wb, exact, _, _ = _ppca(backend, 1, 6)
    # from a shifted guide twice as wide as the posterior, and (Pyro; NumPyro's prior start
    # is the BDMC test's, each start a compilation) from the prior
    guide = backend.ppca_guides["wide"]
    for start in ("prior", "guide") if backend.name == "pyro" else ("guide",):
        errors = {}
        for T in (1, 100):
            r = backend.ais_log_likelihood(model, guide, x, *Wb, num_steps=T, num_chains=8,
                                           start=start, return_details=True, seed=T)
            errors[T] = np.abs(r.log_likelihood - exact)
        assert np.all(errors[100] < 4 * r.stderr + 0.1), (errors, r.stderr)
        assert 0.5 < r.acceptance.mean() < 0.8  # the step size adapted toward 0.65
        # T = 1 is importance sampling with 8 samples: far off with this guide
        assert errors[100].mean() < errors[1].mean() / (4 if start == "guide" else 1), errors


def test_bdmc_sandwich_contains_exact_value_and_closes_on_linear_hvae(backend):
    p = linear_hvae_params()
    model, guide = backend.linear_hvae
    gaps = {}
    for T in (10, 100):
        r = backend.bdmc_bounds(model, guide, 6, backend.tree(p), data_shape=(6,),
                                num_steps=T, num_chains=16, start="prior",
                                return_details=True, seed=T)
        gaps[T] = r.mean_gap
    exact = linear_hvae_log_px(r.data, p)
    # stochastic bounds: below and above log p(x) in expectation; at T = 100 on average over
    # the examples within the chain spread of that, and each within its own
    se_lower, se_upper = r.forward.stderr, r.reverse.stderr
    assert np.mean(r.lower - exact) < 3 * np.sqrt(np.sum(se_lower**2)) / 6 + 0.05
    assert np.mean(r.upper - exact) > -3 * np.sqrt(np.sum(se_upper**2)) / 6 - 0.05
    assert np.all(r.lower - exact < 4 * se_lower + 0.1)
    assert np.all(r.upper - exact > -4 * se_upper - 0.1)
    assert gaps[100] < gaps[10] / 2, gaps


def test_exact_posterior_on_the_linear_hvae_two_latent_sites(backend):
    """Two latent sites, each exact (the posterior's marginal and conditional): log p(x) in
    float64 to 1e-10."""
    p = linear_hvae_params()
    model, guide = backend.linear_hvae
    x = np.random.default_rng(1).standard_normal((5, 6))
    with backend.float64():
        ll = backend.ais_log_likelihood(model, guide, backend.array(x), backend.tree(p),
                                        num_steps=6, num_chains=3, batch_size=6)
    np.testing.assert_allclose(ll, linear_hvae_log_px(x, p), rtol=1e-10)


@pytest.fixture(scope="module")
def trained_vae(backend):
    """A small VAE trained on binary patterns (the guide is nearly exact)."""
    model, guide = backend.vae("standard", num_features=12, latent_dim=2, hidden=(16,))
    result = backend.fit(model, guide, patterns(300), num_epochs=15, batch_size=50,
                         learning_rate=3e-3)
    return model, guide, backend.params_kw(result)


def test_trained_vae_ais_above_importance_sampling(backend, trained_vae):
    model, guide, params = trained_vae
    x_test = backend.array(patterns(12, seed=1))
    is_ll = backend.importance_log_likelihood(model, guide, x_test, num_samples=64, seed=1,
                                              **params)
    r = backend.ais_log_likelihood(model, guide, x_test, num_steps=50, num_chains=8, seed=2,
                                   return_details=True, **params)
    # AIS is at least IS on average (both stochastic lower bounds; AIS the tighter)
    assert r.log_likelihood.mean() > is_ll.mean() - 3 * np.sqrt(np.sum(r.stderr**2)) / 12


def test_pyro_bdmc_gap_of_a_trained_vae_shrinks():
    """BDMC from the prior (the guide is nearly exact here): the sandwich is wide after 5
    steps and closed, up to the chain spread, after 50. (Pyro: each T compiles once in
    NumPyro.)"""
    backend = get("pyro")
    model, guide = backend.vae("standard", num_features=12, latent_dim=2, hidden=(16,))
    backend.fit(model, guide, patterns(300), num_epochs=15, batch_size=50, learning_rate=3e-3)
    bdmc = {T: backend.bdmc_bounds(model, guide, 8, data_shape=(12,), num_steps=T,
                                   num_chains=8, start="prior", return_details=True)
            for T in (5, 50)}
    assert bdmc[5].mean_gap > 0 and bdmc[50].mean_gap < bdmc[5].mean_gap / 2
    spread = np.sqrt(np.sum(bdmc[50].forward.stderr**2 + bdmc[50].reverse.stderr**2)) / 8
    assert bdmc[50].mean_gap > -3 * spread - 0.05


def test_a_vamp_prior_is_built_once_per_call(backend, monkeypatch):
    calls = []
    prior_class = backend.lib.LearnedVampPrior
    original = prior_class.build
    monkeypatch.setattr(prior_class, "build",
                        lambda self, *a: calls.append(1) or original(self, *a))
    model, guide = backend.vae(num_features=10, latent_dim=2, hidden=(8,), num_pseudo=6)
    x = backend.array(patterns(5, d=10))
    kw = dict(num_steps=3, num_chains=4, batch_size=8)  # 3 chunks of 2 examples
    ll = backend.ais_log_likelihood(model, guide, x, **kw)
    assert ll.shape == (5,) and np.isfinite(ll).all()
    # the checks before the work (twice), then once for the whole call
    assert len(calls) == 3
    again = backend.ais_log_likelihood(model, guide, x, **kw)
    # the same seed, program and inputs, in this process: the same bits
    np.testing.assert_array_equal(ll, again)
    # the checks again; then NumPyro's jitted prior cache and chunk are not traced again,
    # while Pyro, eager, builds the prior once for the call
    assert len(calls) == (5 if backend.name == "numpyro" else 6)


def test_the_schedules_are_one_function_of_both_backends():
    from ppl_vae._ais import ais_schedule

    for name in ("pyro", "numpyro"):
        if get(name) is not None:
            assert get(name).lib.ais_schedule is ais_schedule
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


def test_bad_arguments(backend):
    model, guide = backend.ppca
    x, Wb, _, _, _ = _ppca(backend, 0, 3)
    args = (model, guide, x, *Wb)
    for kw, match in [({"num_chains": 0}, "num_chains must be a positive int"),
                      ({"num_leapfrog": 1.5}, "num_leapfrog must be a positive int"),
                      ({"step_size": -0.1}, "step_size must be a finite number > 0"),
                      ({"target_accept": 1.0}, "target_accept must be a number in \\(0, 1\\)"),
                      ({"start": "posterior"}, "start must be 'guide' or 'prior'"),
                      ({"num_steps": 0}, "num_steps must be a positive int"),
                      ({"batch_size": 0}, "batch_size must be a positive int")]:
        with pytest.raises(ValueError, match=match):
            backend.ais_log_likelihood(*args, **kw)
    bad = backend.numpy(x).copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        backend.ais_log_likelihood(model, guide, backend.array(bad), *Wb)
    with pytest.raises(TypeError, match="data_shape="):
        backend.bdmc_bounds(model, guide, 3, *Wb)
    with pytest.raises(ValueError, match="num_examples must be a positive int"):
        backend.bdmc_bounds(model, guide, 0, *Wb, data_shape=(D,))


def test_numpyro_rng_key_is_checked():
    backend = get("numpyro")
    if backend is None:
        pytest.skip("numpyro is not installed")
    model, guide = backend.ppca
    x, Wb, _, _, _ = _ppca(backend, 0, 3)
    with pytest.raises(TypeError, match="rng_key"):
        backend.lib.ais_log_likelihood(0, model, guide, x, *Wb)


def test_rejects_sites_outside_the_plate_and_missing_latents(backend):
    ppl, dist, xp = backend.ppl, backend.dist, backend.xp

    def model(x):
        g = ppl.sample("g", dist.Normal(0.0, 1.0))  # outside the plate
        with ppl.plate("data", x.shape[0]):
            ppl.sample("x", dist.Normal(g[..., None] * xp.ones(2), 1.0).to_event(1), obs=x)

    def guide(x):
        ppl.sample("g", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="plate 'data'"):
        backend.ais_log_likelihood(model, guide, backend.array(np.zeros((3, 2))), num_steps=2,
                                   num_chains=2)

    def two_latents(x):
        with ppl.plate("data", x.shape[0]):
            u = ppl.sample("u", dist.Normal(xp.zeros(1), 1.0).to_event(1))
            v = ppl.sample("v", dist.Normal(u, 1.0).to_event(1))
            ppl.sample("x", dist.Normal(v, 1.0).to_event(1), obs=x)

    def one_latent(x):
        with ppl.plate("data", x.shape[0]):
            ppl.sample("u", dist.Normal(xp.zeros(1), 1.0).to_event(1))

    with pytest.raises(ValueError, match="latent sites \\['u'\\] must be the model's"):
        backend.ais_log_likelihood(two_latents, one_latent, backend.array(np.zeros((3, 1))),
                                   num_steps=2)


# ------------------------------------------------------------- the two backends compared
def test_public_names_and_results_are_the_same():
    import ppl_vae.numpyro as pn
    import ppl_vae.numpyro.ais
    import ppl_vae.pyro as pp
    import ppl_vae.pyro.ais

    assert ppl_vae.numpyro.ais.__all__ == ppl_vae.pyro.ais.__all__
    for name in ppl_vae.pyro.ais.__all__:
        assert name in pp.__all__ and name in pn.__all__
    for name in ("AISResult", "BDMCBounds", "BDMCResult"):
        assert getattr(pp, name)._fields == getattr(pn, name)._fields


def _module_at(module, path):
    for part in path.split("."):
        module = module.layers[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _copy_weights(torch_module, eqx_module):
    import equinox as eqx
    import jax.numpy as jnp

    for name, param in torch_module.named_parameters():
        value = jnp.asarray(param.detach().numpy())
        eqx_module = eqx.tree_at(lambda m, name=name: _module_at(m, name), eqx_module, value)
    return eqx_module


@pytest.mark.usefixtures("float64")
def test_vamp_prior_vae_estimates_agree_within_their_chain_spread():
    """The same gated VampPrior VAE (the same weights, float64) in both backends: the AIS
    estimates agree within their chain spreads."""
    import jax
    import torch
    from jax import random

    import ppl_vae.numpyro as pn
    import ppl_vae.pyro as pp
    from ppl_vae.guides.vae_numpyro import vae_guide as guide_n
    from ppl_vae.guides.vae_pyro import vae_guide as guide_p
    from ppl_vae.models.vae_numpyro import vae_model as model_n
    from ppl_vae.models.vae_pyro import vae_model as model_p

    D, L, K, H = 12, 2, 5, (8,)
    torch.manual_seed(0)
    enc_p, dec_p = pp.Encoder(D, L, H).double(), pp.Decoder(L, D, H).double()
    init = np.linspace(0.0, 1.0, K * D).reshape(K, D)
    prior_p = pp.LearnedVampPrior(enc_p, K, init=torch.from_numpy(init))
    prior_p.pseudo_inputs.double()
    with torch.no_grad():
        prior_p.pseudo_inputs.weight.copy_(torch.from_numpy(init))
    x = (np.random.default_rng(0).random((6, D)) < 0.4).astype(np.float64)
    kw = dict(num_steps=40, num_chains=16)
    r_p = pp.ais_log_likelihood(
        lambda x: model_p(x, decoder=dec_p, prior=prior_p), lambda x: guide_p(x, encoder=enc_p),
        torch.as_tensor(x), return_details=True, **kw)
    with jax.enable_x64(True):
        keys = random.split(random.PRNGKey(0), 2)
        enc_n = _copy_weights(enc_p, pn.Encoder(D, L, H, rng_key=keys[0]))
        dec_n = _copy_weights(dec_p, pn.Decoder(L, D, H, rng_key=keys[1]))
        prior_n = pn.LearnedVampPrior(enc_n, K, init=init)
        r_n = pn.ais_log_likelihood(
            random.PRNGKey(1), lambda x: model_n(x, decoder=dec_n, prior=prior_n),
            lambda x: guide_n(x, encoder=enc_n), x, return_details=True, **kw)
    spread = np.sqrt(r_p.stderr**2 + r_n.stderr**2)
    assert np.all(np.abs(r_p.log_likelihood - r_n.log_likelihood) < 4 * spread + 0.05), (
        r_p.log_likelihood, r_n.log_likelihood, spread)
    np.testing.assert_allclose(r_p.acceptance.mean(), r_n.acceptance.mean(), atol=0.1)
