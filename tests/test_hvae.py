"""The hierarchical VAE in both backends: importance log-likelihood exact on a linear-Gaussian
two-layer model (closed-form marginal, exact posterior as guide), posterior means, sites,
plate and KL warm-up, bad input, training; and the two backends compared (same names, and
with the same weights in float64 the same log joint and guide density)."""

from functools import partial

import numpy as np
import pytest
from backends import get
from scipy.stats import multivariate_normal


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny networks: a second intra-op thread only adds contention on a shared 2-core machine.
    if get("pyro") is None:
        yield
        return
    import torch

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
    i2, ix = slice(0, l2), slice(l2 + l1, None)
    i1 = np.arange(l2, l2 + l1)
    mu_x, S_xx = m[ix], S[ix, ix]
    # q(z2 | x): Gaussian conditioning on x.
    G2 = np.linalg.solve(S_xx, S[ix, i2]).T
    post2 = (G2, m[i2] - G2 @ mu_x, S[i2, i2] - G2 @ S[ix, i2])
    # q(z1 | x, z2): conditioning on y = (x, z2), the z1 encoder's input order.
    iy = np.r_[np.arange(l2 + l1, l2 + l1 + d), np.arange(l2)]
    G = np.linalg.solve(S[np.ix_(iy, iy)], S[np.ix_(iy, i1)]).T
    post1 = (G[:, :d], G[:, d:], m[i1] - G @ m[iy], S[np.ix_(i1, i1)] - G @ S[np.ix_(iy, i1)])
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


def affine(backend, weights, bias, scale=None, latent_dim=None):
    """out = sum_i inputs[i] @ W_i^T + b, with a fixed diagonal scale when ``scale`` is given:
    a network of the backend's kind (a torch module, an Equinox module)."""
    if backend.name == "pyro":
        import torch

        class Affine(torch.nn.Module):
            def __init__(self):
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

        return Affine()
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    class Affine(eqx.Module):
        weights: tuple
        bias: jax.Array
        scale: object
        input_dims: tuple = eqx.field(static=True)
        latent_dim: object = eqx.field(static=True)
        input_dim: object = eqx.field(static=True)

        def __init__(self):
            self.weights = tuple(jnp.asarray(w) for w in weights)
            self.bias = jnp.asarray(bias)
            self.scale = None if scale is None else jnp.asarray(scale)
            self.input_dims = tuple(w.shape[1] for w in weights)
            self.latent_dim = latent_dim
            self.input_dim = self.input_dims[0] if len(self.input_dims) == 1 else None

        def __call__(self, *inputs):
            out = self.bias + sum(u @ w.T for u, w in zip(inputs, self.weights))
            return out if self.scale is None else (out, jnp.broadcast_to(self.scale, out.shape))

    return Affine()


def _programs(backend):
    import importlib

    return (importlib.import_module(f"ppl_vae.models.hvae_{backend.name}").hvae_model,
            importlib.import_module(f"ppl_vae.guides.hvae_{backend.name}").hvae_guide)


def linear_model(backend, p):
    l1, l2 = p["A"].shape
    hvae_model, _ = _programs(backend)
    prior = backend.lib.StandardNormalPrior(l2)
    return partial(hvae_model, decoder=affine(backend, [p["B"], p["C"]], p["c"]),
                   z1_prior=affine(backend, [p["A"]], p["a"], np.full(l1, p["s1"]),
                                   latent_dim=l1),
                   prior=prior.double() if backend.name == "pyro" else prior,
                   likelihood=lambda loc: backend.dist.Normal(loc, p["s"]).to_event(1))


def full_covariance_guide(backend, post2, post1):
    """Same sites as hvae_guide, with the exact full-covariance Gaussian posteriors."""
    ppl, dist = backend.ppl, backend.dist
    G2, g2, S2 = (backend.array(v) for v in post2)
    Gx, Gz, g1, S1 = (backend.array(v) for v in post1)
    tril2, tril1 = (backend.array(np.linalg.cholesky(S)) for S in (post2[2], post1[3]))

    def guide(x):
        with ppl.plate("data", x.shape[0]):
            z2 = ppl.sample("z2", dist.MultivariateNormal(x @ G2.T + g2, scale_tril=tril2))
            ppl.sample("z1", dist.MultivariateNormal(x @ Gx.T + z2 @ Gz.T + g1,
                                                     scale_tril=tril1))
    return guide


def _data(marginal, n=4, seed=1):
    mu_x, S_xx = marginal
    return np.random.default_rng(seed).multivariate_normal(mu_x, S_xx, size=n) + 0.5


def test_importance_log_likelihood_exact_full_covariance_posterior(backend):
    p = general_params(np.random.default_rng(0))
    marginal, post2, post1 = linear_gaussian(**p)
    x = _data(marginal)
    expected = multivariate_normal(*marginal).logpdf(x)
    with backend.float64():
        model, guide = linear_model(backend, p), full_covariance_guide(backend, post2, post1)
        ll, log_w = backend.importance_log_likelihood(
            model, guide, backend.array(x), num_samples=7, batch_size=10,
            return_log_weights=True)
    # Every weight equals p(x) when q is the exact posterior: the estimate has zero variance.
    np.testing.assert_allclose(log_w, np.repeat(expected[:, None], 7, 1), rtol=1e-12,
                               atol=1e-11)
    np.testing.assert_allclose(ll, expected, rtol=1e-12, atol=1e-11)


def test_importance_log_likelihood_exact_with_hvae_guide(backend):
    """The library's guide (diagonal Gaussians) with linear encoders at the exact posterior."""
    p = diagonal_params()
    marginal, (G2, g2, S2), (Gx, Gz, g1, S1) = linear_gaussian(**p)
    for S in (S2, S1):  # the construction makes both posteriors diagonal
        np.testing.assert_allclose(S, np.diag(np.diag(S)), atol=1e-12)
    l1, l2 = p["A"].shape
    x = _data(marginal, n=5)
    S = 4000
    with backend.float64():
        encoder = affine(backend, [G2], g2, np.sqrt(np.diag(S2)), latent_dim=l2)
        z1_encoder = affine(backend, [Gx, Gz], g1, np.sqrt(np.diag(S1)), latent_dim=l1)
        guide = partial(_programs(backend)[1], encoder=encoder, z1_encoder=z1_encoder)
        xb = backend.array(x)
        ll = backend.importance_log_likelihood(linear_model(backend, p), guide, xb,
                                               num_samples=11)
        z1_plug, z2_mean = backend.posterior_means(encoder, z1_encoder, xb, num_samples=None,
                                                   seed=1)
        z1_mc, _ = backend.posterior_means(encoder, z1_encoder, xb, num_samples=S, seed=2)
    np.testing.assert_allclose(ll, multivariate_normal(*marginal).logpdf(x), rtol=1e-12,
                               atol=1e-11)
    # Posterior means: E_q[z1 | x] = Gx x + Gz E[z2 | x] + g1 exactly (linear in z2).
    np.testing.assert_allclose(z2_mean, x @ G2.T + g2, rtol=1e-12)
    np.testing.assert_allclose(z1_plug, x @ Gx.T + (x @ G2.T + g2) @ Gz.T + g1, rtol=1e-12)
    # Monte Carlo error of the mean of Gz z2 over S draws: sd = sqrt(diag(Gz S2 Gz^T) / S).
    mc_sd = np.sqrt(np.diag(Gz @ S2 @ Gz.T) / S)
    assert np.all(np.abs(z1_mc - z1_plug) < 5 * mc_sd)


# --- the gated networks ------------------------------------------------------------------------

D, L1, L2, K, N = 12, 3, 4, 5, 6


def _x(backend, n=N):
    return backend.array((np.random.default_rng(0).random((n, D)) < 0.4).astype(np.float32))


def _shape_at(backend, module, path):
    """The shape of a parameter by its torch path ('body.branches.0.0.linear.weight'); in
    Equinox tuples index directly and MLPs through .layers."""
    if backend.name == "pyro":
        return tuple(dict(module.named_parameters())[path].shape)
    for part in path.split("."):
        if part.isdigit():
            module = module[int(part)] if isinstance(module, tuple) else module.layers[int(part)]
        else:
            module = getattr(module, part)
    return tuple(module.shape)


def test_networks_shapes_and_layout(backend):
    q = backend.net("ConditionalGaussian", (D, L2), L1, (8, 7))
    loc, scale = q(backend.xp.ones((N, D)), backend.xp.zeros((3, N, L2)))  # x broadcast
    assert loc.shape == scale.shape == (3, N, L1)
    scale = backend.numpy(scale)
    assert (scale >= np.exp(-3) - 1e-6).all() and (scale <= np.exp(1) + 1e-6).all()
    # reference layout: x -> 8, z2 -> 8, concat (16) -> 7 -> heads (gated: 2x widths)
    assert _shape_at(backend, q, "body.branches.0.0.linear.weight") == (16, D)
    assert _shape_at(backend, q, "body.branches.1.0.linear.weight") == (16, L2)
    assert _shape_at(backend, q, "body.joint.0.linear.weight") == (14, 16)
    assert _shape_at(backend, q, "head.weight") == (2 * L1, 7)
    assert backend.net("ConditionalGaussian", D, L2).input_dim == D and q.input_dim is None
    dec = backend.net("MultiInputDecoder", (L1, L2), D, (8, 7), params_per_pixel=2)
    assert dec(backend.xp.ones((N, L1)), backend.xp.ones((N, L2))).shape == (N, 2 * D)
    with pytest.raises(TypeError, match="expected 2 input"):
        dec(backend.xp.ones((N, L1)))
    with pytest.raises(ValueError, match="input_dims must be positive ints"):
        backend.net("ConditionalGaussian", (D, 0), L1)


def test_numpyro_networks_need_a_key():
    backend = get("numpyro")
    if backend is None:
        pytest.skip("numpyro is not installed")
    with pytest.raises(TypeError, match="rng_key is required"):
        backend.lib.MultiInputDecoder((L1, L2), D)


def test_sites_plate_kl_warm_up_and_registered_names(backend):
    """latent_scale (fit's KL warm-up) scales both latent sites in model and guide, not the
    likelihood; every site is in the plate 'data'."""
    model, guide = backend.hvae()
    scaled = backend.lib.latent_scale
    model_tr, guide_tr = backend.traces(scaled(model, scale=0.25), scaled(guide, scale=0.25),
                                        _x(backend))
    assert backend.sample_sites(model_tr) == ["z2", "z1", "x"]
    assert backend.sample_sites(guide_tr) == ["z2", "z1"]
    for tr in (model_tr, guide_tr):
        for name in ("z2", "z1"):
            site = tr[name]
            assert [(f.name, f.dim) for f in site["cond_indep_stack"]] == [("data", -1)]
            assert site["fn"].batch_shape == (N,)
            assert float(site["scale"]) == 0.25
    assert model_tr["x"]["scale"] in (None, 1.0)
    assert model_tr["z2"]["value"].shape == (N, L2) and model_tr["z1"]["value"].shape == (N, L1)
    assert model_tr["x"]["fn"].event_shape == (D,)
    assert backend.param_names((model_tr, guide_tr)) == {"encoder", "z1_encoder", "z1_prior",
                                                         "decoder", "pseudo_inputs"}


def test_the_loss_is_linear_in_the_kl_weight(backend):
    """At a fixed sample, -E log p(x | z) + beta * (the KL part): the losses at beta = 1/4,
    1/2, 1 satisfy l(1) - l(1/2) = 2 (l(1/2) - l(1/4)), and beta = 1 is the plain ELBO."""
    model, guide = backend.hvae()
    x, elbo = _x(backend), backend.elbos["trace"]()
    l25, l50, l100 = (backend.loss(elbo, model, guide, x, seed=5, scale=b)
                      for b in (0.25, 0.5, 1.0))
    np.testing.assert_allclose(l100 - l50, 2 * (l50 - l25), rtol=1e-4)
    assert l100 == pytest.approx(backend.loss(elbo, model, guide, x, seed=5), rel=1e-6)


def test_bad_input_raises_clear_errors(backend):
    x = _x(backend)

    def run(model, guide, data=x):
        backend.traces(model, guide, data)

    # prior of the wrong size for z2
    model, guide = backend.hvae(prior=backend.lib.StandardNormalPrior(L2 + 1))
    with pytest.raises(ValueError, match=rf"event_shape \({L2},\).*event_shape \({L2 + 1},\)"):
        run(model, guide)
    # a prior that is not a single distribution over z2
    model, guide = backend.hvae(prior=backend.dist.Normal(backend.xp.zeros((3, L2)), 1.0)
                                .to_event(1))
    with pytest.raises(ValueError, match=r"batch_shape \(\)"):
        run(model, guide)
    # z1_prior and decoder disagree on L1
    model, guide = backend.hvae()
    decoder = backend.net("MultiInputDecoder", (L1, L2), D, (8,))
    hvae_model, hvae_guide = _programs(backend)
    bad = partial(hvae_model, decoder=decoder,
                  z1_prior=backend.net("ConditionalGaussian", L2, L1 + 2, (8,), seed=1),
                  prior=backend.lib.StandardNormalPrior(L2))
    with pytest.raises(ValueError, match=rf"latent_dim \({L1 + 2}\).*z1 size \({L1}\)"):
        run(bad, guide)
    bad = partial(hvae_model, decoder=decoder,
                  z1_prior=backend.net("ConditionalGaussian", L2 + 1, L1, (8,), seed=1),
                  prior=backend.lib.StandardNormalPrior(L2))
    with pytest.raises(ValueError, match=rf"z2 alone, of size {L2}"):
        run(bad, guide)
    # guide's latent sizes differ from the model's: named at the first model call
    model, _ = backend.hvae()
    _, guide = backend.hvae(l2=L2 + 2)
    with pytest.raises(ValueError, match=rf"'z2' has size {L2 + 2}.*expects {L2}"):
        run(model, guide)
    model, _ = backend.hvae(prior=backend.lib.StandardNormalPrior(L2))
    _, guide = backend.hvae(l1=L1 + 1, prior=backend.lib.StandardNormalPrior(L2))
    with pytest.raises(ValueError, match=rf"'z1' has size {L1 + 1}.*expects {L1}"):
        run(model, guide)
    # the guide's own networks disagree
    guide = partial(hvae_guide, encoder=backend.net("ConditionalGaussian", D, L2, (8,)),
                    z1_encoder=backend.net("ConditionalGaussian", (D, L2 + 1), L1, (8,),
                                           seed=1))
    with pytest.raises(ValueError, match=rf"z2 of size {L2 + 1}.*latent_dim {L2}"):
        run(model, guide)
    _, guide = backend.hvae()
    with pytest.raises(ValueError, match=rf"x has {D + 1} features but the encoder expects {D}"):
        run(model, guide, backend.xp.ones((2, D + 1)))


def _encoder_mean(backend, encoder, x, result=None):
    """q(z2 | x)'s mean under the trained parameters (Pyro: in the network; NumPyro:
    ``result.params``) or, without ``result``, the network's own."""
    if backend.name == "pyro" or result is None:
        return backend.numpy(encoder(x)[0])
    import equinox as eqx

    static = eqx.partition(encoder, eqx.is_inexact_array)[1]
    return np.asarray(eqx.combine(result.params["encoder$params"], static)(x)[0])


def test_hvae_trains_and_evaluates(backend):
    """Trains (with TraceMeanField_ELBO too in Pyro; each ELBO compiles once in NumPyro);
    then the evaluation functions use the trained parameters, not the initial ones."""
    rng = np.random.default_rng(0)
    probs = rng.random(D) * 0.8 + 0.1
    x = (rng.random((200, D)) < probs).astype(np.float32)
    for elbo in ("trace", "meanfield") if backend.name == "pyro" else ("trace",):
        model, guide = backend.hvae(hidden=(32,))
        encoder, z1_encoder = guide.keywords["encoder"], guide.keywords["z1_encoder"]
        x_eval = backend.array(x[:N])
        initial = _encoder_mean(backend, encoder, x_eval)
        result = backend.fit(model, guide, x, num_epochs=6, batch_size=20, learning_rate=3e-3,
                             elbo=backend.elbos[elbo]())
        losses = [h["train_loss"] for h in result.history]
        assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.5, (elbo, losses)
    params = backend.params_kw(result)
    ll = backend.importance_log_likelihood(model, guide, x_eval, num_samples=50, seed=1,
                                           batch_size=120, **params)
    assert ll.shape == (N,) and np.isfinite(ll).all() and (ll < 0).all()
    z1, z2 = backend.posterior_means(encoder, z1_encoder, x_eval, num_samples=8, batch_size=4,
                                     seed=2, **params)
    assert z1.shape == (N, L1) and z2.shape == (N, L2) and z1.dtype == np.float32
    trained = _encoder_mean(backend, encoder, x_eval, result)
    np.testing.assert_allclose(z2, trained, rtol=1e-5, atol=1e-6)
    assert not np.allclose(z2, initial, atol=1e-3)  # the trained parameters, not the initial
    with pytest.raises(ValueError, match="num_samples must be a positive int or None"):
        backend.posterior_means(encoder, z1_encoder, x_eval, num_samples=0, **params)


def test_pyro_posterior_means_plug_in_the_z2_mean():
    """Pyro's networks hold their parameters: the plug-in z1 mean is z1_encoder at the z2
    mean."""
    backend = get("pyro")
    _, guide = backend.hvae()
    encoder, z1_encoder = guide.keywords["encoder"], guide.keywords["z1_encoder"]
    x = _x(backend)
    z1_plug, _ = backend.posterior_means(encoder, z1_encoder, x, num_samples=None)
    np.testing.assert_allclose(z1_plug, backend.numpy(z1_encoder(x, encoder(x)[0])[0]),
                               atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------ the two backends compared
HIDDEN, DP, KP = (8, 5), 20, 7


def test_hvae_public_names_are_the_same():
    import ppl_vae.numpyro as pn
    import ppl_vae.numpyro.hvae
    import ppl_vae.pyro as pp
    import ppl_vae.pyro.hvae

    assert ppl_vae.numpyro.hvae.__all__ == ppl_vae.pyro.hvae.__all__
    for name in ppl_vae.pyro.hvae.__all__:
        assert name in pp.__all__ and name in pn.__all__


def _copy_weights(torch_module, eqx_module):
    import equinox as eqx
    import jax.numpy as jnp

    numpyro = get("numpyro")
    for name, p in torch_module.named_parameters():
        value = jnp.asarray(p.detach().numpy())
        assert _shape_at(numpyro, eqx_module, name) == value.shape, name

        def at(m, name=name):
            for part in name.split("."):
                if part.isdigit():
                    m = m[int(part)] if isinstance(m, tuple) else m.layers[int(part)]
                else:
                    m = getattr(m, part)
            return m

        eqx_module = eqx.tree_at(at, eqx_module, value)
    return eqx_module


def _pair(prior_kind, gated):
    import jax
    import torch

    import ppl_vae.numpyro as pn
    import ppl_vae.pyro as pp

    model_p, guide_p = _programs(get("pyro"))
    model_n, guide_n = _programs(get("numpyro"))
    torch.manual_seed(0)
    nets_p = dict(encoder=pp.ConditionalGaussian(DP, L2, HIDDEN, gated).double(),
                  z1_encoder=pp.ConditionalGaussian((DP, L2), L1, HIDDEN, gated).double(),
                  z1_prior=pp.ConditionalGaussian(L2, L1, HIDDEN, gated).double(),
                  decoder=pp.MultiInputDecoder((L1, L2), DP, HIDDEN, gated).double())
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    nets_n = dict(encoder=pn.ConditionalGaussian(DP, L2, HIDDEN, gated, rng_key=keys[0]),
                  z1_encoder=pn.ConditionalGaussian((DP, L2), L1, HIDDEN, gated,
                                                    rng_key=keys[1]),
                  z1_prior=pn.ConditionalGaussian(L2, L1, HIDDEN, gated, rng_key=keys[2]),
                  decoder=pn.MultiInputDecoder((L1, L2), DP, HIDDEN, gated, rng_key=keys[3]))
    nets_n = {k: _copy_weights(nets_p[k], v) for k, v in nets_n.items()}
    if prior_kind == "vamp":
        init = np.linspace(-0.3, 1.3, KP * DP).reshape(KP, DP)  # both sides of the hardtanh
        prior_p = pp.LearnedVampPrior(nets_p["encoder"], KP, init=torch.from_numpy(init))
        prior_p.pseudo_inputs.double()
        with torch.no_grad():
            prior_p.pseudo_inputs.weight.copy_(torch.from_numpy(init))
        prior_n = pn.LearnedVampPrior(nets_n["encoder"], KP, init=init)
    else:
        prior_p, prior_n = pp.StandardNormalPrior(L2).double(), pn.StandardNormalPrior(L2)

    def model_guide(model, guide, nets, prior):
        return ((lambda x: model(x, decoder=nets["decoder"], z1_prior=nets["z1_prior"],
                                 prior=prior)),
                (lambda x: guide(x, encoder=nets["encoder"], z1_encoder=nets["z1_encoder"])))

    return (*model_guide(model_p, guide_p, nets_p, prior_p),
            *model_guide(model_n, guide_n, nets_n, prior_n))


@pytest.mark.parametrize("prior_kind,gated", [("vamp", True), ("vamp", False),
                                              ("standard", True)])
def test_hvae_log_joint_parity(prior_kind, gated):
    """The same networks and weights in float64: the same log p(x, z1, z2) and log q(z1, z2 |
    x) at fixed (z1, z2), to 1e-6 relative (float64 round-off of different kernels is far
    below)."""
    import jax
    import jax.numpy as jnp
    import torch
    from numpyro.infer.util import log_density
    from pyro import poutine

    rng = np.random.default_rng(0)
    x = (rng.random((N, DP)) < 0.4).astype(np.float64)
    z = {"z1": 1.3 * rng.standard_normal((N, L1)), "z2": 1.3 * rng.standard_normal((N, L2))}
    with jax.enable_x64(True):
        mp, gp, mn, gn = _pair(prior_kind, gated)
        zt = {k: torch.from_numpy(v) for k, v in z.items()}
        xt = torch.from_numpy(x)
        joint_p = poutine.trace(poutine.condition(mp, data=zt)).get_trace(xt).log_prob_sum()
        guide_p = poutine.trace(poutine.condition(gp, data=zt)).get_trace(xt).log_prob_sum()

        @jax.jit
        def numpyro_side(xj, zj):
            return (log_density(mn, (xj,), {}, zj)[0], log_density(gn, (xj,), {}, zj)[0])

        joint_n, guide_n = numpyro_side(jnp.asarray(x), {k: jnp.asarray(v)
                                                         for k, v in z.items()})
        assert joint_n.dtype == jnp.float64
    np.testing.assert_allclose(float(joint_n), joint_p.item(), rtol=1e-6)
    np.testing.assert_allclose(float(guide_n), guide_p.item(), rtol=1e-6)

