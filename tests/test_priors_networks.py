"""LearnedVampPrior with the network kinds each backend's users have: registered under the
guide's name for the encoder, so that guide and prior train one set of weights; a network of
the wrong kind or output refused at construction, naming what came and what is accepted."""

import numpy as np
import pytest

D, L, K, H = 8, 2, 5, 16  # input dim, latent dim, pseudo-inputs, hidden units


# ---- NumPyro: Equinox, Flax NNX, Flax Linen, stax, a function -------------------------------
def _numpyro_encoder(kind):
    """A small encoder ``(N, D) -> (loc, scale)`` of the given kind."""
    import jax
    import jax.numpy as jnp
    from jax import random

    if kind == "equinox":
        from ppl_vae.numpyro import Encoder

        return Encoder(D, L, (H,), rng_key=random.PRNGKey(1))
    if kind == "nnx":
        from flax import nnx

        class NNXEncoder(nnx.Module):
            def __init__(self, rngs):
                self.hidden = nnx.Linear(D, H, rngs=rngs)
                self.loc = nnx.Linear(H, L, rngs=rngs)
                self.log_scale = nnx.Linear(H, L, rngs=rngs)

            def __call__(self, x):
                h = jax.nn.softplus(self.hidden(x))
                return self.loc(h), jnp.exp(self.log_scale(h))

        return NNXEncoder(nnx.Rngs(0))
    if kind == "linen":
        from flax import linen

        class LinenEncoder(linen.Module):
            @linen.compact
            def __call__(self, x):
                h = linen.softplus(linen.Dense(H)(x))
                return linen.Dense(L)(h), jnp.exp(linen.Dense(L)(h))

        return LinenEncoder()
    if kind == "stax":  # as in NumPyro's examples/vae.py
        from jax.example_libraries import stax

        return stax.serial(stax.Dense(H), stax.Softplus, stax.FanOut(2),
                           stax.parallel(stax.Dense(L), stax.serial(stax.Dense(L), stax.Exp)))
    w = random.normal(random.PRNGKey(1), (D, L))

    def encode(u):  # a function with fixed weights: nothing to register
        return u @ w, jnp.exp(0.1 * u[:, :L])

    return encode


def _register(kind, name, encoder):
    """The guide's registration, as NumPyro's documentation writes it for each kind."""
    import numpyro
    from numpyro.contrib.module import eqx_module, flax_module, nnx_module

    if kind == "equinox":
        return eqx_module(name, encoder)
    if kind == "nnx":
        return nnx_module(name, encoder)
    if kind == "linen":
        return flax_module(name, encoder, input_shape=(1, D))
    if kind == "stax":
        return numpyro.module(name, encoder, input_shape=(1, D))
    return encoder


KINDS = ["equinox", "nnx", "linen", "stax", "function"]


@pytest.fixture
def numpyro_validated():
    numpyro = pytest.importorskip("numpyro")
    numpyro.enable_validation(True)
    return numpyro


@pytest.mark.parametrize("kind", KINDS)
def test_numpyro_guide_and_prior_share_one_encoder(numpyro_validated, kind):
    if kind in ("nnx", "linen"):
        pytest.importorskip("flax")
    import jax
    import jax.numpy as jnp
    import optax
    from jax import random
    from numpyro import handlers
    from numpyro.contrib.module import eqx_module
    from numpyro.distributions import Bernoulli, Normal
    from numpyro.infer import SVI, Trace_ELBO

    from ppl_vae.numpyro import Decoder, LearnedVampPrior

    numpyro = numpyro_validated
    encoder = _numpyro_encoder(kind)
    prior = LearnedVampPrior(encoder, K, D, rng_key=random.PRNGKey(2), name="my_encoder")
    assert prior.latent_dim == L
    decoder = Decoder(L, D, (H,), rng_key=random.PRNGKey(3))

    def model(x):
        net = eqx_module("decoder", decoder)
        p_z = prior()
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", p_z)
            numpyro.sample("x", Bernoulli(logits=net(z)).to_event(1), obs=x)

    def guide(x):
        net = _register(kind, "my_encoder", encoder)
        with numpyro.plate("data", x.shape[0]):
            loc, scale = net(x)
            numpyro.sample("z", Normal(loc, scale).to_event(1))

    x = (random.uniform(random.PRNGKey(4), (20, D)) < 0.3).astype(jnp.float32)
    svi = SVI(model, guide, optax.adam(1e-2), Trace_ELBO())
    state = svi.init(random.PRNGKey(5), x)
    params = svi.get_params(state)
    shared = {"my_encoder$params"} if kind != "function" else set()
    assert set(params) == {"decoder$params", "pseudo_inputs$params"} | shared
    state, loss = jax.jit(svi.update)(state, x)
    assert np.isfinite(float(loss))
    # The prior's components are the guide's network, with the trained weights, at the
    # clipped pseudo-inputs.
    params = svi.get_params(state)
    with handlers.seed(rng_seed=0), handlers.substitute(data=params):
        p_z = prior()
        loc, scale = _register(kind, "my_encoder", encoder)(
            jnp.clip(params["pseudo_inputs$params"].weight, 0.0, 1.0))
    np.testing.assert_allclose(p_z.component_loc, loc, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p_z.component_scale, scale, rtol=1e-6, atol=1e-6)


def test_numpyro_default_name_is_encoder(numpyro_validated):
    from jax import random
    from numpyro import handlers

    from ppl_vae.numpyro import LearnedVampPrior

    prior = LearnedVampPrior(_numpyro_encoder("stax"), K, D, rng_key=random.PRNGKey(0))
    with handlers.seed(rng_seed=0):
        tr = handlers.trace(prior).get_trace()
    assert {name for name, site in tr.items() if site["type"] == "param"} == {
        "encoder$params", "pseudo_inputs$params"}


@pytest.mark.parametrize("encoder, got", [
    (42, "got an int"),
    ("encoder", "got a str"),
    ((lambda rng, shape: None,), r"got a tuple of 1 \(function\)"),
    ([lambda rng, shape: None, lambda p, x: x], r"got a list of 2 \(function, function\)"),
])
def test_numpyro_refuses_a_network_of_the_wrong_kind(numpyro_validated, encoder, got):
    from jax import random

    from ppl_vae.numpyro import LearnedVampPrior

    accepted = ("an Equinox module, a Flax NNX module, a Flax Linen module, a stax "
                r"\(init_fn, apply_fn\) pair, or a function encode\(pseudo_inputs\) -> "
                r"\(loc, scale\)")
    with pytest.raises(TypeError, match=f"encoder must be {accepted}; {got}"):
        LearnedVampPrior(encoder, K, D, rng_key=random.PRNGKey(0))


def test_numpyro_refuses_a_network_of_the_wrong_output(numpyro_validated):
    import jax.numpy as jnp
    from jax import random
    from jax.example_libraries import stax

    from ppl_vae.numpyro import Encoder, LearnedVampPrior

    key = random.PRNGKey(0)
    one_output = stax.serial(stax.Dense(H), stax.Softplus, stax.Dense(2 * L))
    with pytest.raises(TypeError, match=r"stax \(init_fn, apply_fn\) pair\) must return "
                       r"\(loc, scale\).*shape \(5, 8\).*a .* of shape \(5, 4\)"):
        LearnedVampPrior(one_output, K, D, rng_key=key)
    with pytest.raises(TypeError, match=r"\(a function\) must return \(loc, scale\).*"
                       r"shapes \[\(5, 2\), \(5, 3\)\]"):
        LearnedVampPrior(lambda u: (u[:, :2], jnp.ones((len(u), 3))), K, D, rng_key=key)
    # An encoder for other inputs: the error says which shapes met.
    with pytest.raises(ValueError, match=r"could not apply its encoder \(an Equinox module\) "
                       r"to the pseudo-inputs, shape \(num_pseudo, input_dim\) = \(5, 8\)"):
        LearnedVampPrior(Encoder(9, L, (H,), rng_key=key), K, D, rng_key=key)


def test_numpyro_constructor_arguments_keep_working(numpyro_validated):
    from jax import random

    from ppl_vae.numpyro import Encoder, LearnedVampPrior, vamp_data_prior

    encoder = Encoder(D, L, (H,), rng_key=random.PRNGKey(0))
    prior = LearnedVampPrior(encoder, 400, D, init_loc=0.5, init_scale=0.02,
                             rng_key=random.PRNGKey(1))
    w = np.asarray(prior.pseudo_inputs.weight, np.float64)
    n = w.size  # N(0.5, 0.02^2) draws: mean within 5 standard errors, sd within 5%
    assert abs(w.mean() - 0.5) < 5 * 0.02 / np.sqrt(n)
    assert abs(w.std() / 0.02 - 1) < 0.05
    assert prior.latent_dim == L and prior.num_pseudo == 400 and prior.name == "encoder"
    data = np.random.default_rng(0).random((30, D)).astype(np.float32)
    data_prior = vamp_data_prior(encoder, data, 7, rng_key=random.PRNGKey(2), name="enc")
    noise = np.asarray(data_prior.pseudo_inputs.weight) - data[:7]
    assert data_prior.name == "enc" and noise.shape == (7, D)
    assert np.abs(noise).max() < 5 * 0.01 and noise.std() > 0.005


# ---- Pyro: any nn.Module, or a function ----------------------------------------------------
def _pyro_model_and_guide(prior, encoder, decoder, name):
    import pyro
    from pyro.distributions import Bernoulli, Normal

    def model(x):
        pyro.module("decoder", decoder)
        p_z = prior()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", p_z)
            pyro.sample("x", Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module(name, encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", Normal(loc, scale).to_event(1))

    return model, guide


class _TorchEncoder:
    """A plain nn.Module (not ppl_vae's): one hidden layer, (loc, scale) heads."""

    @staticmethod
    def make():
        import torch
        from torch import nn

        class TorchEncoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.hidden, self.loc, self.log_scale = (
                    nn.Linear(D, H), nn.Linear(H, L), nn.Linear(H, L))

            def forward(self, x):
                h = torch.nn.functional.softplus(self.hidden(x))
                return self.loc(h), self.log_scale(h).exp()

        return TorchEncoder()


@pytest.mark.parametrize("kind", ["ppl_vae", "nn.Module"])
@pytest.mark.parametrize("name", ["encoder", "my_encoder"])
def test_pyro_guide_and_prior_share_one_encoder(kind, name):
    pyro = pytest.importorskip("pyro")
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    from ppl_vae.pyro import Decoder, Encoder, LearnedVampPrior

    torch.manual_seed(0)
    encoder = Encoder(D, L, (H,)) if kind == "ppl_vae" else _TorchEncoder.make()
    decoder = Decoder(L, D, (H,))
    prior = LearnedVampPrior(encoder, K, D, name=name)
    assert prior.latent_dim == L and prior.name == name
    model, guide = _pyro_model_and_guide(prior, encoder, decoder, name)
    x = (torch.rand(20, D) < 0.3).float()
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    assert np.isfinite(svi.step(x))
    store = pyro.get_param_store()
    modules = {key.split("$$$")[0] for key in store}
    assert modules == {name, "decoder", "pseudo_inputs"}
    # one copy of the encoder's weights: the module's own tensors, trained by both
    encoder_keys = [key for key in store if key.startswith(name + "$$$")]
    assert len(encoder_keys) == len(list(encoder.parameters()))
    for key, p in encoder.named_parameters():
        assert store[f"{name}$$${key}"] is p


def test_pyro_accepts_a_function():
    import torch

    from ppl_vae.pyro import LearnedVampPrior

    w = torch.randn(D, L)
    prior = LearnedVampPrior(lambda u: (u @ w, torch.exp(0.1 * u[:, :L])), K, D)
    p_z = prior()
    torch.testing.assert_close(p_z.component_loc, prior.pseudo_inputs() @ w)


@pytest.mark.parametrize("encoder, got", [
    (42, "got an int"),
    ((1, 2), "got a tuple of 2"),
])
def test_pyro_refuses_a_network_of_the_wrong_kind(encoder, got):
    pytest.importorskip("pyro")
    from ppl_vae.pyro import LearnedVampPrior

    with pytest.raises(TypeError, match=r"encoder must be a torch.nn.Module, or a function "
                       rf"encode\(pseudo_inputs\) -> \(loc, scale\); {got}"):
        LearnedVampPrior(encoder, K, D)


def test_pyro_refuses_a_network_of_the_wrong_output():
    pytest.importorskip("pyro")
    import torch
    from torch import nn

    from ppl_vae.pyro import LearnedVampPrior

    with pytest.raises(TypeError, match=r"\(torch.nn.Module\) must return \(loc, scale\).*"
                       r"shape \(1, 8\) it returned a Tensor of shape \(1, 4\)"):
        LearnedVampPrior(nn.Linear(D, 2 * L), K, D)
    with pytest.raises(TypeError, match=r"\(function\) must return \(loc, scale\).*"
                       r"\[\(1, 2\), \(1, 3\)\]"):
        LearnedVampPrior(lambda u: (u[:, :2], torch.ones(len(u), 3)), K, D)
    with pytest.raises(ValueError, match=r"could not apply its encoder \(torch.nn.Module\) to a "
                       r"pseudo-input of shape \(1, input_dim\) = \(1, 8\): RuntimeError"):
        LearnedVampPrior(nn.Sequential(nn.Linear(D + 1, L)), K, D)


def test_pyro_construction_changes_nothing_observable():
    """The output check runs the encoder once; batch-norm statistics, the module's mode and
    torch's random stream are as they were."""
    pytest.importorskip("pyro")
    import torch
    from torch import nn

    from ppl_vae.pyro import LearnedVampPrior

    class WithBatchNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.drop, self.head = nn.BatchNorm1d(D), nn.Dropout(0.5), nn.Linear(D, 2 * L)

        def forward(self, x):
            loc, log_scale = self.head(self.drop(self.norm(x))).chunk(2, -1)
            return loc, log_scale.exp()

    encoder = WithBatchNorm()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    prior = LearnedVampPrior(encoder, K, D, init=torch.full((K, D), 0.5))
    assert torch.equal(torch.rand(3), expected)
    assert encoder.training and prior.latent_dim == L
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_pyro_constructor_arguments_keep_working():
    pytest.importorskip("pyro")
    import torch

    from ppl_vae.pyro import Encoder, LearnedVampPrior, vamp_data_prior

    encoder = Encoder(D, L, (H,))
    g = torch.Generator().manual_seed(1)
    prior = LearnedVampPrior(encoder, 400, D, init_loc=0.5, init_scale=0.02, generator=g)
    w = prior.pseudo_inputs.weight.detach().double().numpy()
    n = w.size  # N(0.5, 0.02^2) draws: mean within 5 standard errors, sd within 5%
    assert abs(w.mean() - 0.5) < 5 * 0.02 / np.sqrt(n)
    assert abs(w.std() / 0.02 - 1) < 0.05
    assert prior.latent_dim == L and prior.num_pseudo == 400 and prior.name == "encoder"
    data = np.random.default_rng(0).random((30, D)).astype(np.float32)
    data_prior = vamp_data_prior(encoder, data, 7, generator=g, name="enc")
    noise = data_prior.pseudo_inputs.weight.detach().numpy() - data[:7]
    assert data_prior.name == "enc" and noise.shape == (7, D)
    assert np.abs(noise).max() < 5 * 0.01 and noise.std() > 0.005
