"""VampPrior (NumPyro): density against SciPy, normalisation, moments, numerics, pytree
safety, shapes under expand and plates, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import random
from numpyro import handlers
from scipy import stats
from scipy.special import logsumexp

from ppl_vae.numpyro import VampPrior, vamp_prior
from ppl_vae.numpyro._mixture_math import diag_normal_mixture_log_prob

EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(autouse=True)
def _validation():
    numpyro.enable_validation(True)
    yield


def _random_components(K, L, seed=0, loc_scale=2.0, scale_range=(0.3, 1.0)):
    rng = np.random.default_rng(seed)
    loc = loc_scale * (2 * rng.random((K, L)) - 1)
    lo, hi = scale_range
    scale = lo + (hi - lo) * rng.random((K, L))
    return loc, scale  # float64 NumPy


def _scipy_log_prob(z, loc, scale):
    """Independent reference: mean of K scipy multivariate normal densities (float64)."""
    comps = [stats.multivariate_normal(m, np.diag(s**2)).logpdf(z) for m, s in zip(loc, scale)]
    return logsumexp(np.stack(comps, -1), axis=-1) - math.log(len(comps))


def _direct_log_prob(z, loc, scale):
    """The direct (N, K, L) form in float64 NumPy."""
    z, loc, scale = (np.asarray(a, np.float64) for a in (z, loc, scale))
    comp = (-0.5 * (((z[:, None, :] - loc) / scale) ** 2) - np.log(scale)
            - 0.5 * math.log(2 * math.pi)).sum(-1)
    return logsumexp(comp, axis=-1) - math.log(len(loc))


def test_log_prob_matches_scipy_float64():
    loc, scale = _random_components(7, 3)
    z = 2 * np.random.default_rng(1).standard_normal((50, 3))
    with jax.enable_x64(True):
        actual = np.asarray(VampPrior(jnp.asarray(loc), jnp.asarray(scale)).log_prob(jnp.asarray(z)))
        assert actual.dtype == np.float64
    np.testing.assert_allclose(actual, _scipy_log_prob(z, loc, scale), rtol=1e-10)


def test_log_prob_matches_scipy_float32():
    loc, scale = _random_components(7, 3)
    z = 2 * np.random.default_rng(1).standard_normal((50, 3))
    p = VampPrior(jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32))
    actual = np.asarray(p.log_prob(jnp.asarray(z, jnp.float32)), np.float64)
    expected = _scipy_log_prob(z.astype(np.float32), loc.astype(np.float32),
                               scale.astype(np.float32))
    # Terms of the expansion are at most ~ (|z| + |m|)^2 / s^2 ~ 10^2; a few float32 roundings
    # of that size.
    np.testing.assert_allclose(actual, expected, rtol=0, atol=100 * 16 * EPS32)


def test_integrates_to_one_in_2d():
    loc, scale = _random_components(5, 2)
    h = 0.02
    grid = np.arange(-8, 8, h) + h / 2
    zz = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with jax.enable_x64(True):
        log_p = VampPrior(jnp.asarray(loc), jnp.asarray(scale)).log_prob(jnp.asarray(zz))
        mass = float(jnp.exp(log_p).sum() * h * h)
    # Midpoint rule on Gaussians of scale >= 0.3 is accurate far beyond 1e-6 here; the tails
    # beyond +-8 hold < 1e-15.
    assert abs(mass - 1) < 1e-6


def test_sample_moments_match_mean_and_variance():
    loc, scale = _random_components(4, 3)
    p = VampPrior(jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32))
    n = 200_000
    x = np.asarray(p.sample(random.PRNGKey(0), (n,)), np.float64)
    assert x.shape == (n, 3)
    mean, var = np.asarray(p.mean, np.float64), np.asarray(p.variance, np.float64)
    # Exact moments of the mixture (law of total variance), independently of the class.
    np.testing.assert_allclose(mean, loc.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, (scale**2 + loc**2).mean(0) - loc.mean(0) ** 2, rtol=1e-5)
    # Mean: standard error sqrt(var / n). Variance: standard error sqrt(Var[(x-mu)^2] / n).
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
    centred_sq = (x - mean) ** 2
    assert np.all(np.abs(centred_sq.mean(0) - var) < 5 * np.sqrt(centred_sq.var(0) / n))


def test_stable_far_from_every_component():
    loc, scale = _random_components(10, 4, scale_range=(0.05, 0.2))
    z = np.full((3, 4), 1e3) * np.array([[1.0], [-1.0], [0.5]])
    p = VampPrior(jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32))
    actual = np.asarray(p.log_prob(jnp.asarray(z, jnp.float32)), np.float64)
    expected = _direct_log_prob(z, loc.astype(np.float32), scale.astype(np.float32))
    assert np.all(np.isfinite(actual)) and np.all(expected < -1e6)
    np.testing.assert_allclose(actual, expected, rtol=1e-5)
    # The gradient stays finite too (logsumexp, not log(sum(exp))).
    grad = jax.grad(lambda z: p.log_prob(z).sum())(jnp.asarray(z, jnp.float32))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_stable_with_many_components():
    loc, scale = _random_components(3000, 8, seed=3)
    z = np.random.default_rng(4).standard_normal((64, 8)) * 3
    p = VampPrior(jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32))
    actual = np.asarray(p.log_prob(jnp.asarray(z, jnp.float32)), np.float64)
    expected = _direct_log_prob(z.astype(np.float32), loc.astype(np.float32),
                                scale.astype(np.float32))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-3)


def test_matmul_form_agrees_with_direct_form_under_cancellation():
    """z exactly at a component with the smallest scale the encoder allows (exp(-3) ~ 0.05),
    far from the origin: the expansion's terms are large and cancel to 0."""
    L = 40
    loc, scale = _random_components(50, L, seed=5, loc_scale=3.0, scale_range=(0.0498, 0.06))
    loc32, scale32 = loc.astype(np.float32), scale.astype(np.float32)
    z = loc32[:5]  # at components 0..4
    actual = np.asarray(diag_normal_mixture_log_prob(
        jnp.asarray(z), jnp.asarray(loc32), jnp.asarray(scale32)), np.float64)
    expected = _direct_log_prob(z, loc32, scale32) + math.log(len(loc))
    # Bound: each float32 rounding of the 2L-term dot product and of the bias errs by at most
    # (2L + 2) eps times the sum of the magnitudes of the terms, here computed per point for
    # the component it sits on (the one that dominates the logsumexp), after centring.
    c = loc32.mean(0)
    zc, mc = (z - c).astype(np.float64), (loc32[:5] - c).astype(np.float64)
    prec = 1.0 / scale32[:5].astype(np.float64) ** 2
    magnitude = 0.5 * (prec * (zc**2 + 2 * np.abs(zc * mc) + mc**2)).sum(-1)
    bound = (2 * L + 2) * EPS32 * (magnitude + np.abs(expected))
    assert np.all(np.abs(actual - expected) <= bound), (actual - expected, bound)
    # And the cap keeps it one-sided at the peak: never above the exact maximum density.
    log_peak = -np.log(scale32[:5].astype(np.float64)).sum(-1) - 0.5 * L * math.log(2 * math.pi)
    assert np.all(actual <= log_peak + (2 * L + 2) * EPS32 * np.abs(log_peak))


def test_jit_and_vmap():
    loc, scale = _random_components(6, 3)
    p = VampPrior(jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32))
    z = jnp.asarray(np.random.default_rng(2).standard_normal((10, 3)), jnp.float32)
    eager = np.asarray(p.log_prob(z))
    np.testing.assert_allclose(jax.jit(lambda d, z: d.log_prob(z))(p, z), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(p.log_prob)(z), eager, rtol=1e-6)
    # A distribution returned from jit keeps its arrays and shapes.
    q = jax.jit(lambda loc, scale: VampPrior(loc, scale))(p.component_loc, p.component_scale)
    assert isinstance(q, VampPrior) and q.event_shape == (3,) and q.batch_shape == ()
    np.testing.assert_allclose(q.log_prob(z), eager, rtol=1e-6)
    # vmap over a stack of distributions (pytree leaves batched).
    p2 = VampPrior(p.component_loc + 1.0, p.component_scale)
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), p, p2)
    both = jax.vmap(lambda d: d.log_prob(z))(stacked)
    np.testing.assert_allclose(both, np.stack([eager, p2.log_prob(z)]), rtol=1e-6)
    # Sampling under jit with the same key gives the same draws.
    key = random.PRNGKey(3)
    np.testing.assert_allclose(jax.jit(lambda d, k: d.sample(k, (4,)))(p, key),
                               p.sample(key, (4,)), rtol=1e-6)


def test_expand_and_plates_behave_like_numpyro_distributions():
    L = 3
    loc, scale = _random_components(4, L)
    p = VampPrior(jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32))
    ref = dist.Normal(jnp.zeros(L), 1.0).to_event(1)
    e = p.expand((5,))
    assert type(e) is VampPrior  # not an ExpandedDistribution: a registered KL is found
    assert e.batch_shape == (5,) and e.event_shape == (L,)
    assert p.expand_by((2,)).batch_shape == (2,)
    assert p.expand(()) is p
    key = random.PRNGKey(0)
    assert e.sample(key, (2,)).shape == ref.expand((5,)).sample(key, (2,)).shape == (2, 5, L)
    assert e.mean.shape == e.variance.shape == (5, L)
    z = jnp.asarray(np.random.default_rng(0).standard_normal((5, L)), jnp.float32)
    np.testing.assert_allclose(e.log_prob(z), p.log_prob(z), rtol=1e-6)
    # An unbatched value broadcasts against the batch shape, as for NumPyro's own.
    assert e.log_prob(z[0]).shape == ref.expand((5,)).log_prob(z[0]).shape == (5,)
    # Expanded distributions stay pytrees with their batch shape.
    assert jax.jit(lambda d: d.log_prob(z))(e).shape == (5,)

    def program(d):
        with numpyro.plate("outer", 2, dim=-2), numpyro.plate("data", 5, dim=-1):
            return numpyro.sample("z", d)

    for d in (p, ref):
        tr = handlers.trace(handlers.seed(program, 0)).get_trace(d)
        site = tr["z"]
        assert site["value"].shape == (2, 5, L)
        assert site["fn"].batch_shape == (2, 5)
        assert site["fn"].log_prob(site["value"]).shape == (2, 5)
    tr = handlers.trace(handlers.seed(program, 0)).get_trace(p)
    assert type(tr["z"]["fn"]) is VampPrior


def test_vamp_prior_factory():
    loc, scale = _random_components(4, 2)

    def encoder(u):
        return u[:, :2] * 0 + jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32)

    p = vamp_prior(encoder, jnp.zeros((4, 7)))
    assert isinstance(p, VampPrior) and p.event_shape == (2,)
    with pytest.raises(ValueError, match=r"\(K, D\).*\(7,\)"):
        vamp_prior(encoder, jnp.zeros(7))


def test_bad_shapes_raise_value_error_naming_both():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 4\)"):
        VampPrior(jnp.zeros((3, 2)), jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"\(6,\).*\(6,\)"):
        VampPrior(jnp.zeros(6), jnp.ones(6))
    with pytest.raises(ValueError, match="K = 0"):
        VampPrior(jnp.zeros((0, 2)), jnp.ones((0, 2)))
    with pytest.raises(TypeError, match="list"):
        VampPrior([[0.0, 0.0]], jnp.ones((1, 2)))
    p = VampPrior(jnp.zeros((3, 2)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"\(2,\).*\(4, 5\)"):
        p.log_prob(jnp.zeros((4, 5)))


def test_validation_rejects_non_positive_scale():
    with pytest.raises(ValueError, match="component_scale"):
        VampPrior(jnp.zeros((3, 2)), -jnp.ones((3, 2)), validate_args=True)


def test_mixture_of_gaussians_prior_log_prob_matches_mixture_same_family():
    """The MoG prior's matmul log-density equals NumPyro's MixtureSameFamily, under jit too."""
    import jax
    import numpyro.distributions as ndist

    from ppl_vae.numpyro.priors import DiagonalNormalMixture

    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    logits = jax.random.normal(keys[0], (6,))
    loc = jax.random.normal(keys[1], (6, 3))
    scale = 0.3 + jax.random.uniform(keys[2], (6, 3))
    ours = DiagonalNormalMixture(logits, loc, scale)
    ref = ndist.MixtureSameFamily(ndist.Categorical(logits=logits),
                                  ndist.Normal(loc, scale).to_event(1))
    z = 2 * jax.random.normal(keys[3], (5, 4, 3))
    np.testing.assert_allclose(ours.log_prob(z), ref.log_prob(z), rtol=1e-5, atol=1e-5)
    jitted = jax.jit(lambda d, v: d.log_prob(v))(ours, z)
    np.testing.assert_allclose(jitted, ref.log_prob(z), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.expand([4]).log_prob(z), ref.expand([4]).log_prob(z),
                               rtol=1e-5, atol=1e-5)
