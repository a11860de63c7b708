"""The hierarchical VAE in NumPyro: importance log-likelihood exact on a linear-Gaussian
two-layer model (closed-form marginal, exact posterior as guide), sites/plate/KL scaling,
bad input, posterior means, and training. Mirror of tests/test_hvae_pyro.py."""

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from jax import random
from numpyro import handlers
from numpyro.distributions import MultivariateNormal, Normal
from numpyro.infer import Trace_ELBO
from scipy.stats import multivariate_normal

from ppl_vae.guides.hvae_numpyro import hvae_guide
from ppl_vae.models.hvae_numpyro import hvae_model
from ppl_vae.numpyro import (
    ConditionalGaussian,
    LearnedVampPrior,
    MultiInputDecoder,
    StandardNormalPrior,
    fit,
    hvae_posterior_means,
    importance_log_likelihood,
    importance_log_weights,
)


@pytest.fixture(autouse=True)
def _validation():
    numpyro.enable_validation(True)
    yield


# --- the linear-Gaussian two-layer model (same math as tests/test_hvae_pyro.py) -------------

def linear_gaussian(A, a, B, C, c, s1, s):
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2 I), x | z1, z2 ~ N(B z1 + C z2 + c, s^2 I).

    (z2, z1, x) = T e + m with e ~ N(0, I): Gaussian with mean m, covariance T T^T. Returns
    the marginal of x and the exact conditionals q(z2 | x) = N(G2 x + g2, S2),
    q(z1 | x, z2) = N(Gx x + Gz z2 + g1, S1).
    """
    l1, l2 = A.shape
    d = B.shape[0]
    T = np.zeros((l2 + l1 + d,) * 2)
    T[:l2, :l2] = np.eye(l2)
    T[l2:l2 + l1, :l2], T[l2:l2 + l1, l2:l2 + l1] = A, s1 * np.eye(l1)
    T[l2 + l1:, :l2] = B @ A + C
    T[l2 + l1:, l2:l2 + l1], T[l2 + l1:, l2 + l1:] = s1 * B, s * np.eye(d)
    m = np.concatenate([np.zeros(l2), a, B @ a + c])
    S = T @ T.T
    i2, ix = slice(0, l2), slice(l2 + l1, None)
    i1 = np.arange(l2, l2 + l1)
    mu_x, S_xx = m[ix], S[ix, ix]
    G2 = np.linalg.solve(S_xx, S[ix, i2]).T
    post2 = (G2, m[i2] - G2 @ mu_x, S[i2, i2] - G2 @ S[ix, i2])
    iy = np.r_[np.arange(l2 + l1, l2 + l1 + d), np.arange(l2)]  # y = (x, z2)
    G = np.linalg.solve(S[np.ix_(iy, iy)], S[np.ix_(iy, i1)]).T
    post1 = (G[:, :d], G[:, d:], m[i1] - G @ m[iy], S[np.ix_(i1, i1)] - G @ S[np.ix_(iy, i1)])
    return (mu_x, S_xx), post2, post1


def diagonal_params():
    """Both exact posteriors diagonal (see tests/test_hvae_pyro.py): the library's guide is
    exact."""
    d, b = 6, 1.5
    B = np.zeros((d, 2))
    B[0, 0] = B[1, 1] = b
    C = np.zeros((d, 2))
    C[2, 0], C[3, 1], C[4, 1] = 1.2, 0.8, 0.8
    A = 0.8 * np.array([[1.0, -0.6], [0.6, 1.0]])
    return dict(A=A, a=np.array([0.3, -0.2]), B=B, C=C, c=np.linspace(-0.5, 0.5, d),
                s1=0.7, s=0.5)


class Affine(eqx.Module):
    """out = sum_i inputs[i] @ W_i^T + b, with a fixed diagonal scale when ``scale`` is given."""

    weights: tuple
    bias: jax.Array
    scale: object
    input_dims: tuple = eqx.field(static=True)
    latent_dim: object = eqx.field(static=True)
    input_dim: object = eqx.field(static=True)

    def __init__(self, weights, bias, scale=None, latent_dim=None):
        self.weights = tuple(jnp.asarray(w) for w in weights)
        self.bias = jnp.asarray(bias)
        self.scale = None if scale is None else jnp.asarray(scale)
        self.input_dims = tuple(w.shape[1] for w in weights)
        self.latent_dim = latent_dim
        self.input_dim = self.input_dims[0] if len(self.input_dims) == 1 else None

    def __call__(self, *inputs):
        out = self.bias + sum(u @ w.T for u, w in zip(inputs, self.weights))
        return out if self.scale is None else (out, jnp.broadcast_to(self.scale, out.shape))


def linear_model(p):
    l1, l2 = p["A"].shape
    return partial(hvae_model, decoder=Affine([p["B"], p["C"]], p["c"]),
                   z1_prior=Affine([p["A"]], p["a"], np.full(l1, p["s1"]), latent_dim=l1),
                   prior=StandardNormalPrior(l2),
                   likelihood=lambda loc: Normal(loc, p["s"]).to_event(1))


def full_covariance_guide(post2, post1):
    """Same sites as hvae_guide, with the exact full-covariance Gaussian posteriors."""
    G2, g2, S2 = post2
    Gx, Gz, g1, S1 = post1
    tril2, tril1 = np.linalg.cholesky(S2), np.linalg.cholesky(S1)

    def guide(x, beta=None):
        with numpyro.plate("data", x.shape[0]):
            z2 = numpyro.sample("z2", MultivariateNormal(x @ G2.T + g2, scale_tril=tril2))
            numpyro.sample("z1", MultivariateNormal(x @ Gx.T + z2 @ Gz.T + g1,
                                                    scale_tril=tril1))
    return guide


def _data(marginal, n=4, seed=1):
    mu_x, S_xx = marginal
    return np.random.default_rng(seed).multivariate_normal(mu_x, S_xx, size=n) + 0.5


def test_importance_log_likelihood_exact_full_covariance_posterior():
    rng = np.random.default_rng(0)
    d, l1, l2 = 5, 2, 3
    p = dict(A=rng.standard_normal((l1, l2)), a=rng.standard_normal(l1),
             B=rng.standard_normal((d, l1)), C=rng.standard_normal((d, l2)),
             c=rng.standard_normal(d), s1=0.7, s=0.5)
    marginal, post2, post1 = linear_gaussian(**p)
    x = _data(marginal)
    expected = multivariate_normal(*marginal).logpdf(x)
    with jax.enable_x64(True):
        log_w = importance_log_weights(random.PRNGKey(0), linear_model(p),
                                       full_covariance_guide(post2, post1), x, num_samples=7)
    # Every weight equals p(x) when q is the exact posterior: the estimate has zero variance.
    np.testing.assert_allclose(log_w, np.repeat(expected[:, None], 7, 1), rtol=1e-12,
                               atol=1e-11)


def test_importance_log_likelihood_exact_with_hvae_guide():
    p = diagonal_params()
    marginal, (G2, g2, S2), (Gx, Gz, g1, S1) = linear_gaussian(**p)
    for S in (S2, S1):
        np.testing.assert_allclose(S, np.diag(np.diag(S)), atol=1e-12)
    l1, l2 = p["A"].shape
    x = _data(marginal, n=5)
    with jax.enable_x64(True):
        encoder = Affine([G2], g2, np.sqrt(np.diag(S2)), latent_dim=l2)
        z1_encoder = Affine([Gx, Gz], g1, np.sqrt(np.diag(S1)), latent_dim=l1)
        guide = partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder)
        ll = importance_log_likelihood(random.PRNGKey(0), linear_model(p), guide, x,
                                       num_samples=11)
        z1_plug, z2_mean = hvae_posterior_means(random.PRNGKey(1), encoder, z1_encoder, x,
                                                num_samples=None)
        S = 4000
        z1_mc, _ = hvae_posterior_means(random.PRNGKey(2), encoder, z1_encoder, x,
                                        num_samples=S)
    np.testing.assert_allclose(ll, multivariate_normal(*marginal).logpdf(x), rtol=1e-12,
                               atol=1e-11)
    np.testing.assert_allclose(z2_mean, x @ G2.T + g2, rtol=1e-12)
    np.testing.assert_allclose(z1_plug, x @ Gx.T + (x @ G2.T + g2) @ Gz.T + g1, rtol=1e-12)
    mc_sd = np.sqrt(np.diag(Gz @ S2 @ Gz.T) / S)  # Monte Carlo sd of the mean of Gz z2
    assert np.all(np.abs(z1_mc - z1_plug) < 5 * mc_sd)


# --- the gated networks ------------------------------------------------------------------------

D, L1, L2, K, N = 12, 3, 4, 5, 6


def _hvae(prior=None, l1=L1, l2=L2, hidden=(8, 7), seed=0):
    k = random.split(random.PRNGKey(seed), 5)
    encoder = ConditionalGaussian(D, l2, hidden, rng_key=k[0])
    z1_encoder = ConditionalGaussian((D, l2), l1, hidden, rng_key=k[1])
    z1_prior = ConditionalGaussian(l2, l1, hidden, rng_key=k[2])
    decoder = MultiInputDecoder((l1, l2), D, hidden, rng_key=k[3])
    prior = LearnedVampPrior(encoder, K, rng_key=k[4]) if prior is None else prior
    return (partial(hvae_model, decoder=decoder, z1_prior=z1_prior, prior=prior),
            partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder))


def _x(n=N):
    return (np.random.default_rng(0).random((n, D)) < 0.4).astype(np.float32)


def _traces(model, guide, x, beta=None):
    guide_tr = handlers.trace(handlers.seed(guide, 0)).get_trace(x, beta)
    model_tr = handlers.trace(handlers.replay(handlers.seed(model, 1), guide_tr)).get_trace(
        x, beta)
    return model_tr, guide_tr


def test_networks_shapes_and_layout():
    q = ConditionalGaussian((D, L2), L1, (8, 7), rng_key=random.PRNGKey(0))
    loc, scale = q(jnp.ones((N, D)), jnp.zeros((3, N, L2)))  # x broadcast over samples
    assert loc.shape == scale.shape == (3, N, L1)
    assert q.body.branches[0].layers[0].linear.weight.shape == (16, D)
    assert q.body.branches[1].layers[0].linear.weight.shape == (16, L2)
    assert q.body.joint.layers[0].linear.weight.shape == (14, 16)
    assert q.head.weight.shape == (2 * L1, 7)
    assert ConditionalGaussian(D, L2, rng_key=random.PRNGKey(0)).input_dim == D
    dec = MultiInputDecoder((L1, L2), D, (8,), params_per_pixel=2, rng_key=random.PRNGKey(1))
    assert dec(jnp.ones((N, L1)), jnp.ones((N, L2))).shape == (N, 2 * D)
    with pytest.raises(TypeError, match="rng_key is required"):
        MultiInputDecoder((L1, L2), D)


def test_sites_plate_beta_and_registered_names():
    model, guide = _hvae()
    model_tr, guide_tr = _traces(model, guide, _x(), jnp.asarray(0.25))
    assert [n for n, s in model_tr.items() if s["type"] == "sample"] == ["z2", "z1", "x"]
    assert [n for n, s in guide_tr.items() if s["type"] == "sample"] == ["z2", "z1"]
    for tr in (model_tr, guide_tr):
        for name in ("z2", "z1"):
            assert [(f.name, f.dim) for f in tr[name]["cond_indep_stack"]] == [("data", -1)]
            assert float(tr[name]["scale"]) == 0.25
    assert model_tr["x"]["scale"] is None
    assert model_tr["z2"]["value"].shape == (N, L2) and model_tr["z1"]["value"].shape == (N, L1)
    params = {n.split("$")[0] for tr in (model_tr, guide_tr) for n, s in tr.items()
              if s["type"] == "param"}
    assert params == {"encoder", "z1_encoder", "z1_prior", "decoder", "pseudo_inputs"}


def test_bad_input_raises_clear_errors():
    x = _x()
    model, guide = _hvae(prior=StandardNormalPrior(L2 + 1))
    with pytest.raises(ValueError, match=rf"event_shape \({L2},\).*event_shape \({L2 + 1},\)"):
        _traces(model, guide, x)
    model, _ = _hvae()
    _, guide = _hvae(l2=L2 + 2)
    with pytest.raises(ValueError, match=rf"'z2' has size {L2 + 2}.*expects {L2}"):
        Trace_ELBO().loss(random.PRNGKey(0), {}, model, guide, x, None)
    model, _ = _hvae(prior=StandardNormalPrior(L2))
    _, guide = _hvae(l1=L1 + 1, prior=StandardNormalPrior(L2))
    with pytest.raises(ValueError, match=rf"'z1' has size {L1 + 1}.*expects {L1}"):
        _traces(model, guide, x)
    k = random.split(random.PRNGKey(0), 2)
    bad = partial(hvae_model, decoder=MultiInputDecoder((L1, L2), D, (8,), rng_key=k[0]),
                  z1_prior=ConditionalGaussian(L2, L1 + 2, (8,), rng_key=k[1]),
                  prior=StandardNormalPrior(L2))
    with pytest.raises(ValueError, match=rf"latent_dim \({L1 + 2}\).*z1 size \({L1}\)"):
        handlers.seed(bad, 0)(x)
    guide = partial(hvae_guide, encoder=ConditionalGaussian(D, L2, (8,), rng_key=k[0]),
                    z1_encoder=ConditionalGaussian((D, L2 + 1), L1, (8,), rng_key=k[1]))
    with pytest.raises(ValueError, match=rf"z2 of size {L2 + 1}.*latent_dim {L2}"):
        handlers.seed(guide, 0)(x)


def test_hvae_trains_and_evaluates():
    rng = np.random.default_rng(0)
    probs = rng.random(D) * 0.8 + 0.1
    x = (rng.random((200, D)) < probs).astype(np.float32)
    model, guide = _hvae(hidden=(32,))
    result = fit(random.PRNGKey(0), model, guide, x, num_epochs=6, batch_size=20,
                 learning_rate=3e-3, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.5, losses
    ll = importance_log_likelihood(random.PRNGKey(1), model, guide, x[:N], num_samples=50,
                                   params=result.params)
    assert ll.shape == (N,) and np.isfinite(ll).all() and (ll < 0).all()
    encoder, z1_encoder = guide.keywords["encoder"], guide.keywords["z1_encoder"]
    z1, z2 = hvae_posterior_means(random.PRNGKey(2), encoder, z1_encoder, x[:N],
                                  num_samples=8, batch_size=4, params=result.params)
    assert z1.shape == (N, L1) and z2.shape == (N, L2)
    trained = result.params["encoder$params"]
    expected = eqx.combine(trained, eqx.partition(encoder, eqx.is_inexact_array)[1])(x[:N])[0]
    np.testing.assert_allclose(z2, np.asarray(expected), rtol=1e-5, atol=1e-6)
    # the trained parameters are used, not the initial ones
    assert not np.allclose(z2, np.asarray(encoder(x[:N])[0]), atol=1e-3)
