"""The hierarchical VAE in Pyro: importance log-likelihood exact on a linear-Gaussian
two-layer model (closed-form marginal, exact posterior as guide), sites/plate/KL scaling,
bad input, posterior means, and training."""

from functools import partial

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions import MultivariateNormal, Normal
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from scipy.stats import multivariate_normal

from ppl_vae.guides.hvae_pyro import hvae_guide
from ppl_vae.models.hvae_pyro import hvae_model
from ppl_vae.pyro import (
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
def _one_thread():
    # Tiny networks: a second intra-op thread only adds contention on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the linear-Gaussian two-layer model and its exact posterior (NumPy, float64) -------------

def linear_gaussian(A, a, B, C, c, s1, s):
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2 I), x | z1, z2 ~ N(B z1 + C z2 + c, s^2 I).

    The vector v = (z2, z1, x) is v = T e + m with e ~ N(0, I), so it is Gaussian with mean m
    and covariance T T^T. Returns the marginal of x and the two exact conditionals as affine
    maps: q(z2 | x) = N(G2 x + g2, S2) and q(z1 | x, z2) = N(Gx x + Gz z2 + g1, S1).
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
    i2, i1, ix = slice(0, l2), slice(l2, l2 + l1), slice(l2 + l1, None)
    mu_x, S_xx = m[ix], S[ix, ix]
    # q(z2 | x): Gaussian conditioning on x.
    G2 = np.linalg.solve(S_xx, S[ix, i2]).T
    post2 = (G2, m[i2] - G2 @ mu_x, S[i2, i2] - G2 @ S[ix, i2])
    # q(z1 | x, z2): conditioning on y = (x, z2), the z1 encoder's input order.
    iy = np.r_[np.arange(l2 + l1, l2 + l1 + d), np.arange(l2)]
    G = np.linalg.solve(S[np.ix_(iy, iy)], S[np.ix_(iy, np.arange(l2, l2 + l1))]).T
    Gx, Gz = G[:, :d], G[:, d:]
    post1 = (Gx, Gz, m[i1] - G @ m[iy], S[i1, i1] - G @ S[np.ix_(iy, np.arange(l2, l2 + l1))])
    return (mu_x, S_xx), post2, post1


def general_params(rng, d=5, l1=2, l2=3):
    return dict(A=rng.standard_normal((l1, l2)), a=rng.standard_normal(l1),
                B=rng.standard_normal((d, l1)), C=rng.standard_normal((d, l2)),
                c=rng.standard_normal(d), s1=0.7, s=0.5)


def diagonal_params():
    """Chosen so that both exact posteriors are diagonal (then the library's own diagonal
    guide is exact): B has orthogonal columns spanning e1, e2; C orthogonal columns in the
    complement; A orthogonal columns. The z2 precision is I + A^T A b^2/(s1^2 b^2 + s^2)
    + C^T C / s^2 and the z1 precision I/s1^2 + B^T B/s^2, both diagonal."""
    d, b = 6, 1.5
    B = np.zeros((d, 2))
    B[0, 0] = B[1, 1] = b
    C = np.zeros((d, 2))
    C[2, 0], C[3, 1], C[4, 1] = 1.2, 0.8, 0.8
    A = 0.8 * np.array([[1.0, -0.6], [0.6, 1.0]])
    return dict(A=A, a=np.array([0.3, -0.2]), B=B, C=C, c=np.linspace(-0.5, 0.5, d),
                s1=0.7, s=0.5)


class Affine(torch.nn.Module):
    """out = sum_i inputs[i] @ W_i^T + b, with a fixed diagonal scale when ``scale`` is given."""

    def __init__(self, weights, bias, scale=None, latent_dim=None):
        super().__init__()
        self.weights = [torch.as_tensor(w) for w in weights]
        self.bias = torch.as_tensor(bias)
        self.scale = None if scale is None else torch.as_tensor(scale)
        self.input_dims = tuple(w.shape[1] for w in weights)
        self.latent_dim = latent_dim
        if len(self.input_dims) == 1:
            self.input_dim = self.input_dims[0]

    def forward(self, *inputs):
        out = self.bias + sum(u @ w.T for u, w in zip(inputs, self.weights))
        return out if self.scale is None else (out, self.scale.expand(out.shape))


def linear_model(p):
    l1, l2 = p["A"].shape
    decoder = Affine([p["B"], p["C"]], p["c"])
    z1_prior = Affine([p["A"]], p["a"], np.full(l1, p["s1"]), latent_dim=l1)
    return partial(hvae_model, decoder=decoder, z1_prior=z1_prior,
                   prior=StandardNormalPrior(l2).double(),
                   likelihood=lambda loc: Normal(loc, p["s"]).to_event(1))


def full_covariance_guide(post2, post1):
    """Same sites as hvae_guide, with the exact full-covariance Gaussian posteriors."""
    G2, g2, S2 = (torch.as_tensor(v) for v in post2)
    Gx, Gz, g1, S1 = (torch.as_tensor(v) for v in post1)
    tril2, tril1 = torch.linalg.cholesky(S2), torch.linalg.cholesky(S1)

    def guide(x, beta=None):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", MultivariateNormal(x @ G2.T + g2, scale_tril=tril2))
            pyro.sample("z1", MultivariateNormal(x @ Gx.T + z2 @ Gz.T + g1, scale_tril=tril1))
    return guide


def _data(marginal, n=4, seed=1):
    mu_x, S_xx = marginal
    return np.random.default_rng(seed).multivariate_normal(mu_x, S_xx, size=n) + 0.5


@pytest.mark.usefixtures("float64")
def test_importance_log_likelihood_exact_full_covariance_posterior():
    p = general_params(np.random.default_rng(0))
    marginal, post2, post1 = linear_gaussian(**p)
    x = _data(marginal)
    expected = multivariate_normal(*marginal).logpdf(x)
    model, guide = linear_model(p), full_covariance_guide(post2, post1)
    xt = torch.from_numpy(x)
    log_w = importance_log_weights(model, guide, xt, num_samples=7)
    # Every weight equals p(x) when q is the exact posterior: the estimate has zero variance.
    np.testing.assert_allclose(log_w, np.repeat(expected[:, None], 7, 1), rtol=1e-12, atol=1e-11)
    ll = importance_log_likelihood(model, guide, xt, num_samples=7, batch_size=10)
    np.testing.assert_allclose(ll, expected, rtol=1e-12, atol=1e-11)


@pytest.mark.usefixtures("float64")
def test_importance_log_likelihood_exact_with_hvae_guide():
    """The library's guide (diagonal Gaussians) with linear encoders at the exact posterior."""
    p = diagonal_params()
    marginal, (G2, g2, S2), (Gx, Gz, g1, S1) = linear_gaussian(**p)
    for S in (S2, S1):  # the construction makes both posteriors diagonal
        np.testing.assert_allclose(S, np.diag(np.diag(S)), atol=1e-12)
    l1, l2 = p["A"].shape
    encoder = Affine([G2], g2, np.sqrt(np.diag(S2)), latent_dim=l2)
    z1_encoder = Affine([Gx, Gz], g1, np.sqrt(np.diag(S1)), latent_dim=l1)
    guide = partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder)
    x = _data(marginal, n=5)
    ll = importance_log_likelihood(linear_model(p), guide, torch.from_numpy(x), num_samples=11)
    np.testing.assert_allclose(ll, multivariate_normal(*marginal).logpdf(x), rtol=1e-12,
                               atol=1e-11)
    # Posterior means: E_q[z1 | x] = Gx x + Gz E[z2 | x] + g1 exactly (linear in z2).
    z1_plug, z2_mean = hvae_posterior_means(encoder, z1_encoder, x, num_samples=None)
    np.testing.assert_allclose(z2_mean, x @ G2.T + g2, rtol=1e-12)
    np.testing.assert_allclose(z1_plug, x @ Gx.T + (x @ G2.T + g2) @ Gz.T + g1, rtol=1e-12)
    S = 4000
    z1_mc, _ = hvae_posterior_means(encoder, z1_encoder, x, num_samples=S,
                                    generator=torch.Generator().manual_seed(0))
    # Monte Carlo error of the mean of Gz z2 over S draws: sd = sqrt(diag(Gz S2 Gz^T) / S).
    mc_sd = np.sqrt(np.diag(Gz @ S2 @ Gz.T) / S)
    assert np.all(np.abs(z1_mc - z1_plug) < 5 * mc_sd)


# --- the gated networks ------------------------------------------------------------------------

D, L1, L2, K, N = 12, 3, 4, 5, 6


def _hvae(prior=None, l1=L1, l2=L2, hidden=(8, 7)):
    torch.manual_seed(0)
    encoder = ConditionalGaussian(D, l2, hidden)
    z1_encoder = ConditionalGaussian((D, l2), l1, hidden)
    z1_prior = ConditionalGaussian(l2, l1, hidden)
    decoder = MultiInputDecoder((l1, l2), D, hidden)
    prior = LearnedVampPrior(encoder, K) if prior is None else prior
    return (partial(hvae_model, decoder=decoder, z1_prior=z1_prior, prior=prior),
            partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder))


def _x(n=N):
    return (torch.rand(n, D, generator=torch.Generator().manual_seed(0)) < 0.4).float()


def test_networks_shapes_and_layout():
    q = ConditionalGaussian((D, L2), L1, (8, 7))
    loc, scale = q(torch.rand(N, D), torch.randn(3, N, L2))  # x broadcast over samples
    assert loc.shape == scale.shape == (3, N, L1)
    assert (scale >= np.exp(-3) - 1e-6).all() and (scale <= np.exp(1) + 1e-6).all()
    # reference layout: x -> 8, z2 -> 8, concat (16) -> 7 -> heads (gated: 2x widths)
    shapes = {n: tuple(p.shape) for n, p in q.named_parameters()}
    assert shapes["body.branches.0.0.linear.weight"] == (16, D)
    assert shapes["body.branches.1.0.linear.weight"] == (16, L2)
    assert shapes["body.joint.0.linear.weight"] == (14, 16)
    assert shapes["head.weight"] == (2 * L1, 7)
    assert ConditionalGaussian(D, L2).input_dim == D and q.input_dim is None
    dec = MultiInputDecoder((L1, L2), D, (8, 7), params_per_pixel=2)
    assert dec(torch.randn(N, L1), torch.randn(N, L2)).shape == (N, 2 * D)
    with pytest.raises(TypeError, match="expected 2 input"):
        dec(torch.randn(N, L1))
    with pytest.raises(ValueError, match="input_dims must be positive ints"):
        ConditionalGaussian((D, 0), L1)


def test_sites_plate_and_registered_names():
    model, guide = _hvae()
    x = _x()
    guide_tr = poutine.trace(guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    def sites(tr):
        return [n for n, s in tr.nodes.items() if s["type"] == "sample" and n != "data"]
    assert sites(model_tr) == ["z2", "z1", "x"] and sites(guide_tr) == ["z2", "z1"]
    for tr in (model_tr, guide_tr):
        for name in ("z2", "z1"):
            site = tr.nodes[name]
            assert [(f.name, f.dim) for f in site["cond_indep_stack"]] == [("data", -1)]
            assert site["fn"].batch_shape == (N,)
    assert model_tr.nodes["z2"]["value"].shape == (N, L2)
    assert model_tr.nodes["z1"]["value"].shape == (N, L1)
    assert model_tr.nodes["x"]["fn"].event_shape == (D,)
    prefixes = {k.split("$$$")[0] for k in pyro.get_param_store().keys()}
    assert prefixes == {"encoder", "z1_encoder", "z1_prior", "decoder", "pseudo_inputs"}


def test_beta_scales_both_latent_sites_in_model_and_guide():
    model, guide = _hvae()
    x, beta = _x(), torch.tensor(0.25)
    guide_tr = poutine.trace(guide).get_trace(x, beta)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, beta)
    for tr in (model_tr, guide_tr):
        assert float(tr.nodes["z2"]["scale"]) == float(tr.nodes["z1"]["scale"]) == 0.25
    assert model_tr.nodes["x"]["scale"] == 1.0

    # The loss is linear in beta at a fixed sample: -E log p(x|z) + beta * KL-part.
    def loss(b):
        pyro.set_rng_seed(5)
        return Trace_ELBO().loss(model, guide, x, torch.tensor(b))
    l25, l50, l100 = loss(0.25), loss(0.5), loss(1.0)
    np.testing.assert_allclose(l100 - l50, 2 * (l50 - l25), rtol=1e-4)
    pyro.set_rng_seed(5)
    assert l100 == pytest.approx(Trace_ELBO().loss(model, guide, x, None), rel=1e-6)


def test_bad_input_raises_clear_errors():
    x = _x()
    # prior of the wrong size for z2
    model, guide = _hvae(prior=StandardNormalPrior(L2 + 1))
    with pytest.raises(ValueError, match=rf"event_shape \({L2},\).*event_shape \({L2 + 1},\)"):
        Trace_ELBO().differentiable_loss(model, guide, x, None)
    # a prior that is not a single distribution over z2
    model, _ = _hvae(prior=Normal(torch.zeros(3, L2), 1.0).to_event(1))
    with pytest.raises(ValueError, match=r"batch_shape \(\)"):
        poutine.trace(model).get_trace(x)
    # z1_prior and decoder disagree on L1
    torch.manual_seed(0)
    decoder = MultiInputDecoder((L1, L2), D, (8,))
    bad = partial(hvae_model, decoder=decoder, z1_prior=ConditionalGaussian(L2, L1 + 2, (8,)),
                  prior=StandardNormalPrior(L2))
    with pytest.raises(ValueError, match=rf"latent_dim \({L1 + 2}\).*z1 size \({L1}\)"):
        poutine.trace(bad).get_trace(x)
    bad = partial(hvae_model, decoder=decoder, z1_prior=ConditionalGaussian(L2 + 1, L1, (8,)),
                  prior=StandardNormalPrior(L2))
    with pytest.raises(ValueError, match=rf"z2 alone, of size {L2}"):
        poutine.trace(bad).get_trace(x)
    # guide's latent sizes differ from the model's: named at the first model call
    model, _ = _hvae()
    _, guide = _hvae(l2=L2 + 2)
    with pytest.raises(ValueError, match=rf"'z2' has size {L2 + 2}.*expects {L2}"):
        Trace_ELBO().differentiable_loss(model, guide, x, None)
    model, _ = _hvae(prior=StandardNormalPrior(L2))
    _, guide = _hvae(l1=L1 + 1, prior=StandardNormalPrior(L2))
    with pytest.raises(ValueError, match=rf"'z1' has size {L1 + 1}.*expects {L1}"):
        Trace_ELBO().differentiable_loss(model, guide, x, None)
    # the guide's own networks disagree
    torch.manual_seed(0)
    guide = partial(hvae_guide, encoder=ConditionalGaussian(D, L2, (8,)),
                    z1_encoder=ConditionalGaussian((D, L2 + 1), L1, (8,)))
    with pytest.raises(ValueError, match=rf"z2 of size {L2 + 1}.*latent_dim {L2}"):
        poutine.trace(guide).get_trace(x)
    with pytest.raises(ValueError, match=rf"x has {D + 1} features but the encoder expects {D}"):
        poutine.trace(guide).get_trace(torch.ones(2, D + 1))


def test_importance_log_likelihood_and_posterior_means_with_gated_networks():
    model, guide = _hvae()
    x = _x()
    ll = importance_log_likelihood(model, guide, x, num_samples=50, batch_size=120)
    assert ll.shape == (N,) and np.isfinite(ll).all() and (ll < 0).all()
    encoder, z1_encoder = guide.keywords["encoder"], guide.keywords["z1_encoder"]
    z1, z2 = hvae_posterior_means(encoder, z1_encoder, x, num_samples=8, batch_size=4)
    assert z1.shape == (N, L1) and z2.shape == (N, L2) and z1.dtype == np.float32
    np.testing.assert_allclose(z2, encoder(x)[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    z1_plug, _ = hvae_posterior_means(encoder, z1_encoder, x, num_samples=None)
    np.testing.assert_allclose(z1_plug, z1_encoder(x, encoder(x)[0])[0].detach().numpy(), atol=1e-6,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="num_samples must be a positive int or None"):
        hvae_posterior_means(encoder, z1_encoder, x, num_samples=0)


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
def test_hvae_trains(elbo):
    rng = np.random.default_rng(0)
    probs = rng.random(D) * 0.8 + 0.1
    x = (rng.random((200, D)) < probs).astype(np.float32)
    model, guide = _hvae(hidden=(32,))
    result = fit(model, guide, x, num_epochs=6, batch_size=20, learning_rate=3e-3,
                 elbo=elbo(), progress=False, seed=0)
    losses = [h["train_loss"] for h in result.history]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.5, losses
