"""The Pyro and NumPyro AIS agree: same public names and schedules, and in float64 the same
values: exactly log p(x) with the exact posterior as guide (the two-layer linear HVAE, two
latent sites), and, on a gated VampPrior VAE with the same weights in both, estimates within
their chain spreads of each other."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as ndist
import pyro
import pyro.distributions as pdist
import pytest
import torch
from jax import random
from scipy import stats

import ppl_vae.numpyro as pn
import ppl_vae.numpyro.ais
import ppl_vae.pyro as pp
import ppl_vae.pyro.ais
from ppl_vae.guides.vae_numpyro import vae_guide as guide_n
from ppl_vae.guides.vae_pyro import vae_guide as guide_p
from ppl_vae.models.vae_numpyro import vae_model as model_n
from ppl_vae.models.vae_pyro import vae_model as model_p

L1, L2, S1, SIGMA, DX = 2, 2, 0.7, 0.5, 6


@pytest.fixture(autouse=True)
def _validation():
    numpyro.enable_validation(True)
    pyro.enable_validation(True)
    yield


def test_public_names_results_and_schedules_are_the_same():
    assert ppl_vae.numpyro.ais.__all__ == ppl_vae.pyro.ais.__all__
    for name in ppl_vae.pyro.ais.__all__:
        assert name in pp.__all__ and name in pn.__all__
    for name in ("AISResult", "BDMCBounds", "BDMCResult"):
        assert getattr(pp, name)._fields == getattr(pn, name)._fields
    for args in ((1,), (7,), (100,), (4, "linear"), (2, [0, 0.2, 1])):
        np.testing.assert_array_equal(pp.ais_schedule(*args), pn.ais_schedule(*args))


def _hvae_params(seed=0):
    rng = np.random.default_rng(seed)
    A, a = rng.standard_normal((L1, L2)), rng.standard_normal(L1)
    W1, W2, b = (rng.standard_normal((DX, L1)), rng.standard_normal((DX, L2)),
                 rng.standard_normal(DX))
    mean_z = np.concatenate([a, np.zeros(L2)])
    cov_z = np.block([[A @ A.T + S1**2 * np.eye(L1), A], [A.T, np.eye(L2)]])
    M = np.hstack([W1, W2])
    P = np.linalg.inv(np.linalg.inv(cov_z) + M.T @ M / SIGMA**2)  # posterior covariance
    K = P[:L1, L1:] @ np.linalg.inv(P[L1:, L1:])
    return dict(A=A, a=a, W1=W1, W2=W2, b=b, M=M, G=np.linalg.inv(cov_z) @ mean_z, P=P, K=K,
                chol2=np.linalg.cholesky(P[L1:, L1:]),
                chol1=np.linalg.cholesky(P[:L1, :L1] - K @ P[L1:, :L1]),
                mean_x=M @ mean_z + b, cov_x=M @ cov_z @ M.T + SIGMA**2 * np.eye(DX))


def _posterior_mean(x, p):
    mu = ((x - p["b"]) @ p["M"] / SIGMA**2 + p["G"]) @ p["P"]
    return mu[:, :L1], mu[:, L1:]


def hvae_model_p(x, p):
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", pdist.Normal(torch.zeros(L2, dtype=x.dtype), 1.0).to_event(1))
        z1 = pyro.sample("z1", pdist.Normal(z2 @ p["A"].T + p["a"], S1).to_event(1))
        pyro.sample("x", pdist.Normal(z1 @ p["W1"].T + z2 @ p["W2"].T + p["b"], SIGMA)
                    .to_event(1), obs=x)


def hvae_guide_p(x, p):
    mu1, mu2 = _posterior_mean(x, p)
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", pdist.MultivariateNormal(mu2, scale_tril=p["chol2"]))
        pyro.sample("z1", pdist.MultivariateNormal(mu1 + (z2 - mu2) @ p["K"].T,
                                                   scale_tril=p["chol1"]))


def hvae_model_n(x, p):
    with numpyro.plate("data", x.shape[0]):
        z2 = numpyro.sample("z2", ndist.Normal(jnp.zeros(L2), 1.0).to_event(1))
        z1 = numpyro.sample("z1", ndist.Normal(z2 @ p["A"].T + p["a"], S1).to_event(1))
        numpyro.sample("x", ndist.Normal(z1 @ p["W1"].T + z2 @ p["W2"].T + p["b"], SIGMA)
                       .to_event(1), obs=x)


def hvae_guide_n(x, p):
    mu1, mu2 = _posterior_mean(x, p)
    with numpyro.plate("data", x.shape[0]):
        z2 = numpyro.sample("z2", ndist.MultivariateNormal(mu2, scale_tril=p["chol2"]))
        numpyro.sample("z1", ndist.MultivariateNormal(mu1 + (z2 - mu2) @ p["K"].T,
                                                      scale_tril=p["chol1"]))


@pytest.mark.usefixtures("float64")
def test_exact_posterior_gives_log_p_x_in_both_backends():
    p = _hvae_params()
    x = np.random.default_rng(1).standard_normal((5, DX))
    exact = stats.multivariate_normal(p["mean_x"], p["cov_x"]).logpdf(x)
    kw = dict(num_steps=6, num_chains=3, batch_size=6)
    ll_p = pp.ais_log_likelihood(hvae_model_p, hvae_guide_p, torch.as_tensor(x),
                                 {k: torch.as_tensor(v) for k, v in p.items()}, **kw)
    with jax.enable_x64(True):
        ll_n = pn.ais_log_likelihood(random.PRNGKey(0), hvae_model_n, hvae_guide_n, x,
                                     {k: jnp.asarray(v) for k, v in p.items()}, **kw)
    np.testing.assert_allclose(ll_p, exact, rtol=1e-10)
    np.testing.assert_allclose(ll_n, exact, rtol=1e-10)


def _module_at(module, path):
    for part in path.split("."):
        module = module.layers[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _copy_weights(torch_module, eqx_module):
    for name, param in torch_module.named_parameters():
        value = jnp.asarray(param.detach().numpy())
        eqx_module = eqx.tree_at(lambda m, name=name: _module_at(m, name), eqx_module, value)
    return eqx_module


@pytest.mark.usefixtures("float64")
def test_vamp_prior_vae_estimates_agree_within_their_chain_spread():
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
