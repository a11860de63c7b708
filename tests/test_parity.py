"""The Pyro and NumPyro halves agree: same public names, and with the same weights copied
across in float64 the same VampPrior density, model log joint and importance log-weights."""

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pyro
import pytest
import torch
from jax import random
from numpyro import handlers
from numpyro.infer.util import log_density
from pyro import poutine

import ppl_vae.numpyro as pn
import ppl_vae.pyro as pp
from ppl_vae.guides.vae_numpyro import vae_guide as guide_n
from ppl_vae.guides.vae_pyro import vae_guide as guide_p
from ppl_vae.models.vae_numpyro import vae_model as model_n
from ppl_vae.models.vae_pyro import vae_model as model_p

RTOL = 1e-6
D, L, K, N = 20, 3, 7, 6


def test_public_names_are_the_same():
    assert pn.__all__ == pp.__all__
    for name in pn.__all__:
        assert hasattr(pn, name) and hasattr(pp, name)
    for module in ("vamp_prior", "priors", "nets", "likelihoods", "evaluation", "training"):
        a = __import__(f"ppl_vae.numpyro.{module}", fromlist=["__all__"]).__all__
        b = __import__(f"ppl_vae.pyro.{module}", fromlist=["__all__"]).__all__
        assert a == b, module
    # fit's KL warm-up handler, one name in both
    for backend in (pn, pp):
        assert "latent_scale" in backend.handlers.__all__


def _module_at(module, path):
    """The Equinox sub-module or array at a torch parameter path ('body.0.linear.weight')."""
    for part in path.split("."):
        module = module.layers[int(part)] if part.isdigit() else getattr(module, part)
    return module


def copy_weights(torch_module, eqx_module):
    """torch -> Equinox: every parameter by its module path (weights are (out, in) in both)."""
    for name, p in torch_module.named_parameters():
        value = jnp.asarray(p.detach().numpy())
        assert _module_at(eqx_module, name).shape == value.shape, name
        eqx_module = eqx.tree_at(lambda m, name=name: _module_at(m, name), eqx_module, value)
    return eqx_module


def _pair(prior_kind, gated=True):
    """The same VAE in both backends, float64, identical weights."""
    torch.manual_seed(0)
    enc_p = pp.Encoder(D, L, (8, 5), gated=gated).double()
    dec_p = pp.Decoder(L, D, (5, 8), gated=gated).double()
    k = random.split(random.PRNGKey(0), 3)
    enc_n = copy_weights(enc_p, pn.Encoder(D, L, (8, 5), gated=gated, rng_key=k[0]))
    dec_n = copy_weights(dec_p, pn.Decoder(L, D, (5, 8), gated=gated, rng_key=k[1]))
    if prior_kind == "vamp":
        prior_p = pp.LearnedVampPrior(enc_p, K, generator=torch.Generator().manual_seed(1))
        prior_p.pseudo_inputs.double()
        init = prior_p.pseudo_inputs.weight.detach().numpy()
        # Some pseudo-inputs outside [0, 1], to exercise the hardtanh on both sides.
        init = init + np.linspace(-1.2, 1.2, init.size).reshape(init.shape)
        with torch.no_grad():
            prior_p.pseudo_inputs.weight.copy_(torch.from_numpy(init))
        prior_n = pn.LearnedVampPrior(enc_n, K, init=init)
    elif prior_kind == "mog":
        prior_p = pp.MixtureOfGaussiansPrior(L, K, generator=torch.Generator().manual_seed(1))
        prior_p.double()
        with torch.no_grad():
            prior_p.logits.copy_(torch.linspace(-1, 1, K, dtype=torch.float64))
            prior_p.log_scale.copy_(torch.linspace(-0.5, 0.3, K * L).reshape(K, L))
        prior_n = pn.MixtureOfGaussiansPrior(L, K, rng_key=k[2])
        prior_n.params = copy_weights(prior_p, prior_n.params)
    else:
        prior_p, prior_n = pp.StandardNormalPrior(L).double(), pn.StandardNormalPrior(L)
    return (partial(model_p, decoder=dec_p, prior=prior_p), partial(guide_p, encoder=enc_p),
            partial(model_n, decoder=dec_n, prior=prior_n), partial(guide_n, encoder=enc_n))


def _inputs():
    rng = np.random.default_rng(0)
    x = (rng.random((N, D)) < 0.4).astype(np.float64)
    z = 1.5 * rng.standard_normal((N, L))
    return x, z


def test_vamp_prior_log_prob_parity():
    rng = np.random.default_rng(1)
    loc, scale = rng.standard_normal((50, 6)), 0.05 + rng.random((50, 6))
    z = 2 * rng.standard_normal((30, 6))
    expected = pp.VampPrior(torch.from_numpy(loc), torch.from_numpy(scale)).log_prob(
        torch.from_numpy(z)).numpy()
    with jax.enable_x64(True):
        actual = np.asarray(pn.VampPrior(jnp.asarray(loc), jnp.asarray(scale)).log_prob(
            jnp.asarray(z)))
    np.testing.assert_allclose(actual, expected, rtol=RTOL)


@pytest.mark.parametrize("prior_kind,gated", [("vamp", True), ("vamp", False), ("mog", True),
                                              ("standard", True)])
def test_model_log_joint_and_log_weights_parity(prior_kind, gated):
    x, z = _inputs()
    with jax.enable_x64(True):
        mp, gp, mn, gn = _pair(prior_kind, gated)
        # Pyro: per-example log p(x, z) and log q(z | x) at the fixed z.
        xt, zt = torch.from_numpy(x), torch.from_numpy(z)
        tr_m = poutine.trace(poutine.condition(mp, data={"z": zt})).get_trace(xt)
        tr_g = poutine.trace(poutine.condition(gp, data={"z": zt})).get_trace(xt)
        joint_p = tr_m.log_prob_sum().item()
        per_ex_p = sum(tr_m.nodes[s]["fn"].log_prob(tr_m.nodes[s]["value"]) for s in ("z", "x"))
        log_w_p = (per_ex_p - tr_g.nodes["z"]["fn"].log_prob(zt)).detach().numpy()

        # NumPyro: the same through log_density and traces.
        @jax.jit  # one compilation instead of many eager float64 ops
        def numpyro_side(xj, zj):
            joint_n, _ = log_density(mn, (xj,), {}, {"z": zj})
            tr_m = handlers.trace(handlers.substitute(mn, data={"z": zj})).get_trace(xj)
            tr_g = handlers.trace(handlers.substitute(handlers.seed(gn, 0), data={"z": zj})
                                  ).get_trace(xj)
            per_ex_n = sum(tr_m[s]["fn"].log_prob(tr_m[s]["value"]) for s in ("z", "x"))
            return joint_n, per_ex_n - tr_g["z"]["fn"].log_prob(zj)

        joint_n, log_w_n = numpyro_side(jnp.asarray(x), jnp.asarray(z))
        log_w_n = np.asarray(log_w_n)
        assert log_w_n.dtype == np.float64

    np.testing.assert_allclose(float(joint_n), joint_p, rtol=RTOL)
    np.testing.assert_allclose(log_w_n, log_w_p, rtol=RTOL)


def test_importance_log_weights_parity_given_same_samples():
    """The evaluation functions' per-particle log-weights at the same z samples."""
    from ppl_vae.numpyro.evaluation import _log_weights as log_weights_n

    x, _ = _inputs()
    S = 4
    z = 1.2 * np.random.default_rng(3).standard_normal((S, N, L))
    with jax.enable_x64(True):
        mp, gp, mn, gn = _pair("vamp")
        # NumPyro's evaluation core with the guide's z pinned (substitute keeps it latent).
        xj = jnp.asarray(x)
        actual = np.asarray(jax.jit(lambda xj, zj: log_weights_n(
            random.PRNGKey(0), mn, handlers.substitute(gn, data={"z": zj}), xj, S, (), {})
        )(xj, jnp.asarray(z)))
        # Pyro, computed directly from its traces at the same z.
        xt, zt = torch.from_numpy(x), torch.from_numpy(z)
        with pyro.plate("particles", S, dim=-2):
            tr_m = poutine.trace(poutine.condition(mp, data={"z": zt})).get_trace(xt)
            tr_g = poutine.trace(poutine.condition(gp, data={"z": zt})).get_trace(xt)
        expected = (tr_m.nodes["z"]["fn"].log_prob(zt) + tr_m.nodes["x"]["fn"].log_prob(xt)
                    - tr_g.nodes["z"]["fn"].log_prob(zt)).detach().numpy()
    assert actual.shape == expected.shape == (S, N)
    np.testing.assert_allclose(actual, expected, rtol=RTOL)


def test_discretized_logistic_parity_and_normalisation():
    rng = np.random.default_rng(4)
    params = rng.standard_normal((3, 2 * 5))
    bins = np.arange(256) / 255.0
    values = bins[rng.integers(0, 256, (3, 5))]
    expected = pp.discretized_logistic(torch.from_numpy(params)).log_prob(
        torch.from_numpy(values)).numpy()
    with jax.enable_x64(True):
        d = pn.discretized_logistic(jnp.asarray(params))
        actual = np.asarray(d.log_prob(jnp.asarray(values)))
        # Every pixel's 256 bin masses sum to one.
        base = d.base_dist
        grid = jnp.broadcast_to(jnp.asarray(bins)[:, None, None], (256,) + base.batch_shape)
        total = np.asarray(jnp.exp(base.log_prob(grid)).sum(0))
    assert actual.shape == (3,)
    np.testing.assert_allclose(actual, expected, rtol=RTOL)
    np.testing.assert_allclose(total, 1.0, rtol=1e-10)
