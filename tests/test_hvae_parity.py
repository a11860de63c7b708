"""The Pyro and NumPyro HVAEs agree: same public names in ppl_vae.{pyro,numpyro}.hvae, and
with the same weights copied across in float64, the same log joint p(x, z1, z2) and guide
density at fixed (z1, z2)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pyro
import pytest
import torch
from numpyro.infer.util import log_density
from pyro import poutine

import ppl_vae.numpyro as pn
import ppl_vae.numpyro.hvae
import ppl_vae.pyro as pp
import ppl_vae.pyro.hvae
from ppl_vae.guides.hvae_numpyro import hvae_guide as guide_n
from ppl_vae.guides.hvae_pyro import hvae_guide as guide_p
from ppl_vae.models.hvae_numpyro import hvae_model as model_n
from ppl_vae.models.hvae_pyro import hvae_model as model_p

RTOL = 1e-6
D, L1, L2, K, N = 20, 3, 4, 7, 6
HIDDEN = (8, 5)


@pytest.fixture(autouse=True)
def _validation():
    numpyro.enable_validation(True)
    pyro.enable_validation(True)
    yield


def test_hvae_public_names_are_the_same():
    assert ppl_vae.numpyro.hvae.__all__ == ppl_vae.pyro.hvae.__all__
    for name in ppl_vae.pyro.hvae.__all__:
        assert name in pp.__all__ and name in pn.__all__


def _module_at(module, path):
    """The Equinox sub-module or array at a torch parameter path
    ('body.branches.1.0.linear.weight'): tuples index directly, MLPs through .layers."""
    for part in path.split("."):
        if part.isdigit():
            module = module[int(part)] if isinstance(module, tuple) else module.layers[int(part)]
        else:
            module = getattr(module, part)
    return module


def copy_weights(torch_module, eqx_module):
    for name, p in torch_module.named_parameters():
        value = jnp.asarray(p.detach().numpy())
        assert _module_at(eqx_module, name).shape == value.shape, name
        eqx_module = eqx.tree_at(lambda m, name=name: _module_at(m, name), eqx_module, value)
    return eqx_module


def _pair(prior_kind, gated):
    torch.manual_seed(0)
    nets_p = dict(encoder=pp.ConditionalGaussian(D, L2, HIDDEN, gated).double(),
                  z1_encoder=pp.ConditionalGaussian((D, L2), L1, HIDDEN, gated).double(),
                  z1_prior=pp.ConditionalGaussian(L2, L1, HIDDEN, gated).double(),
                  decoder=pp.MultiInputDecoder((L1, L2), D, HIDDEN, gated).double())
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    nets_n = dict(encoder=pn.ConditionalGaussian(D, L2, HIDDEN, gated, rng_key=keys[0]),
                  z1_encoder=pn.ConditionalGaussian((D, L2), L1, HIDDEN, gated, rng_key=keys[1]),
                  z1_prior=pn.ConditionalGaussian(L2, L1, HIDDEN, gated, rng_key=keys[2]),
                  decoder=pn.MultiInputDecoder((L1, L2), D, HIDDEN, gated, rng_key=keys[3]))
    nets_n = {k: copy_weights(nets_p[k], v) for k, v in nets_n.items()}
    if prior_kind == "vamp":
        init = np.linspace(-0.3, 1.3, K * D).reshape(K, D)  # both sides of the hardtanh
        prior_p = pp.LearnedVampPrior(nets_p["encoder"], K, init=torch.from_numpy(init))
        prior_p.pseudo_inputs.double()
        with torch.no_grad():
            prior_p.pseudo_inputs.weight.copy_(torch.from_numpy(init))
        prior_n = pn.LearnedVampPrior(nets_n["encoder"], K, init=init)
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
    rng = np.random.default_rng(0)
    x = (rng.random((N, D)) < 0.4).astype(np.float64)
    z = {"z1": 1.3 * rng.standard_normal((N, L1)), "z2": 1.3 * rng.standard_normal((N, L2))}
    with jax.enable_x64(True):
        mp, gp, mn, gn = _pair(prior_kind, gated)
        zt = {k: torch.from_numpy(v) for k, v in z.items()}
        xt = torch.from_numpy(x)
        joint_p = poutine.trace(poutine.condition(mp, data=zt)).get_trace(xt).log_prob_sum()
        guide_p_ = poutine.trace(poutine.condition(gp, data=zt)).get_trace(xt).log_prob_sum()

        @jax.jit
        def numpyro_side(xj, zj):
            return (log_density(mn, (xj,), {}, zj)[0], log_density(gn, (xj,), {}, zj)[0])

        joint_n, guide_n_ = numpyro_side(jnp.asarray(x), {k: jnp.asarray(v)
                                                          for k, v in z.items()})
        assert joint_n.dtype == jnp.float64
    np.testing.assert_allclose(float(joint_n), joint_p.item(), rtol=RTOL)
    np.testing.assert_allclose(float(guide_n_), guide_p_.item(), rtol=RTOL)
