"""VampPrior (Pyro): density against SciPy, normalisation, moments, numerics, shapes."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from ppl_vae.pyro import VampPrior, vamp_prior
from ppl_vae.pyro._mixture_math import diag_normal_mixture_log_prob


def _random_components(K, L, seed=0, dtype=torch.float64, loc_scale=2.0, scale_range=(0.3, 1.0)):
    g = torch.Generator().manual_seed(seed)
    loc = loc_scale * (2 * torch.rand(K, L, generator=g, dtype=dtype) - 1)
    lo, hi = scale_range
    scale = lo + (hi - lo) * torch.rand(K, L, generator=g, dtype=dtype)
    return loc, scale


def _scipy_log_prob(z, loc, scale):
    """Independent reference: mean of K scipy multivariate normal densities."""
    comps = [stats.multivariate_normal(m, np.diag(s**2)).logpdf(z)
             for m, s in zip(loc.numpy(), scale.numpy())]
    return logsumexp(np.stack(comps, -1), axis=-1) - math.log(len(comps))


def test_log_prob_matches_scipy():
    loc, scale = _random_components(7, 3)
    z = torch.randn(50, 3, dtype=torch.float64) * 2
    actual = VampPrior(loc, scale).log_prob(z).numpy()
    np.testing.assert_allclose(actual, _scipy_log_prob(z.numpy(), loc, scale), rtol=1e-10)


def test_integrates_to_one_in_2d():
    loc, scale = _random_components(5, 2)
    h = 0.02
    grid = torch.arange(-8, 8, h, dtype=torch.float64) + h / 2
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    mass = VampPrior(loc, scale).log_prob(zz).exp().sum() * h * h
    # Midpoint rule on Gaussians of scale >= 0.3 is accurate far beyond 1e-6 here; the tails
    # beyond +-8 hold < 1e-15.
    assert abs(float(mass) - 1) < 1e-6


def test_sample_moments_match_mean_and_variance():
    loc, scale = _random_components(4, 3, dtype=torch.float32)
    p = VampPrior(loc, scale)
    n = 200_000
    x = p.sample((n,)).double()
    assert x.shape == (n, 3)
    mean, var = p.mean.double(), p.variance.double()
    # Mean: standard error sqrt(var / n). Variance: standard error sqrt(Var[(x-mu)^2] / n).
    assert torch.all((x.mean(0) - mean).abs() < 5 * (var / n).sqrt())
    centred_sq = (x - mean) ** 2
    assert torch.all((centred_sq.mean(0) - var).abs() < 5 * (centred_sq.var(0) / n).sqrt())
    # And the moments themselves against the mixture's closed form.
    np.testing.assert_allclose(mean.numpy(), loc.double().mean(0).numpy(), rtol=1e-6)


def test_stable_far_from_every_component_and_large_k():
    loc, scale = _random_components(3000, 10)
    z = torch.tensor([[1e3] * 10, [-5e2] * 10], dtype=torch.float64)
    lp = VampPrior(loc, scale).log_prob(z)
    assert torch.isfinite(lp).all()
    comp = dist.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1).numpy()  # direct form
    np.testing.assert_allclose(lp.numpy(), logsumexp(comp, -1) - math.log(3000), rtol=1e-9)
    # float32: far values stay finite and close to the float64 answer.
    lp32 = VampPrior(loc.float(), scale.float()).log_prob(z.float())
    np.testing.assert_allclose(lp32.double().numpy(), lp.numpy(), rtol=1e-4)


def test_matmul_form_float32_under_cancellation_agrees_with_direct_form():
    """z at a component's mean with the smallest scale the encoder allows (logvar = -6):
    the expanded quadratic cancels; the error must stay within its float32 bound."""
    L, K = 40, 500
    loc64, scale64 = _random_components(K, L, seed=1, loc_scale=3.0, scale_range=(0.0498, 0.2))
    z64 = torch.cat([loc64[:20], loc64[:20] + 0.01 * torch.randn(20, L, dtype=torch.float64)])
    loc, scale, z = loc64.float(), scale64.float(), z64.float()
    direct = logsumexp(dist.Normal(loc.double(), scale.double()).log_prob(
        z.double()[:, None, :]).sum(-1).numpy(), -1)  # float64 direct form at float32 inputs
    fast = diag_normal_mixture_log_prob(z, loc, scale).double().numpy()
    # Bound: a float32 dot product of 2L terms errs by at most ~2L * eps * sum|terms|; the
    # log-density carries half of the quadratic form's error.
    c = loc.double().mean(0)
    zc, mc, prec = (z.double() - c)[:, None], (loc.double() - c)[None], scale.double() ** -2
    terms = (zc**2 * prec + 2 * (zc * mc * prec).abs() + mc**2 * prec).sum(-1)  # (N, K)
    own = terms.gather(1, torch.arange(len(z))[:, None] % 20).squeeze(1)  # own component
    bound = 0.5 * 2 * L * np.finfo(np.float32).eps * own.numpy() + 1e-4
    assert np.all(np.abs(fast - direct) <= bound)
    assert np.max(np.abs(fast - direct)) < 0.02  # nats: small beside any reported figure


def test_expand_and_plates_behave_like_pyro_distributions():
    loc, scale = _random_components(6, 4, dtype=torch.float32)
    p = VampPrior(loc, scale)
    assert p.batch_shape == () and p.event_shape == (4,)
    e = p.expand([3, 2])
    assert type(e) is VampPrior and e.batch_shape == (3, 2)
    assert e.sample().shape == (3, 2, 4) and e.sample((5,)).shape == (5, 3, 2, 4)
    assert e.log_prob(torch.zeros(3, 2, 4)).shape == (3, 2)
    assert e.mean.shape == (3, 2, 4) and e.variance.shape == (3, 2, 4)
    # In a plate, exactly like a Normal(...).to_event(1) of the same event shape.
    def model():
        with pyro.plate("data", 5):
            pyro.sample("z", p)
            pyro.sample("w", dist.Normal(torch.zeros(4), 1.0).to_event(1))
    tr = pyro.poutine.trace(model).get_trace()
    tr.compute_log_prob()
    for name in ("z", "w"):
        assert tr.nodes[name]["value"].shape == (5, 4)
        assert tr.nodes[name]["log_prob"].shape == (5,)
    # A KL registered for VampPrior is still found after expand (not an ExpandedDistribution).
    assert isinstance(p.expand([5]), VampPrior)


def test_factory_builds_from_encoder_and_pseudo_inputs():
    w = torch.randn(3, 2)
    def encoder(u):
        return u @ w, torch.full((len(u), 2), 0.5)
    u = torch.rand(4, 3)
    p = vamp_prior(encoder, u)
    assert p.num_components == 4
    torch.testing.assert_close(p.component_loc, u @ w)


def test_bad_shapes_and_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match=r"component_loc \(3, 2\) and component_scale \(3, 4\)"):
        VampPrior(torch.zeros(3, 2), torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"shape \(K, L\)"):
        VampPrior(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="K >= 1"):
        VampPrior(torch.zeros(0, 2), torch.ones(0, 2))
    with pytest.raises(ValueError, match="component_scale"):
        VampPrior(torch.zeros(3, 2), -torch.ones(3, 2), validate_args=True)
    with pytest.raises(ValueError, match="pseudo_inputs"):
        vamp_prior(lambda u: u, torch.zeros(5))


def test_mixture_of_gaussians_prior_log_prob_matches_mixture_same_family():
    """The MoG prior's matmul log-density equals Pyro's MixtureSameFamily, also expanded."""
    from ppl_vae.pyro.priors import DiagonalNormalMixture

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, generator=g, dtype=torch.float64)
    loc, scale = _random_components(6, 3, seed=3)
    ours = DiagonalNormalMixture(logits, loc, scale)
    ref = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
    z = 2 * torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours.log_prob(z), ref.log_prob(z), rtol=1e-12, atol=1e-12)
    expanded = ours.expand([4])
    assert type(expanded) is DiagonalNormalMixture and expanded.batch_shape == (4,)
    torch.testing.assert_close(expanded.log_prob(z), ref.expand([4]).log_prob(z), rtol=1e-12,
                               atol=1e-12)
