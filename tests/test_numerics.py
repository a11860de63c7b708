"""Subnormal floats (issue 14): the gradient cut in the mixture priors and the scoped switch."""

import math

import pytest
import torch

from ppl_vae.pyro import VampPrior
from ppl_vae.pyro._mixture_math import _logsumexp_near, diag_normal_mixture_log_prob, far_nats
from ppl_vae.pyro._numerics import (
    count_subnormal,
    denormals_flushed,
    fixes_disabled,
    flush_denormal,
    flush_negligible_grad,
    flush_optimizer_state,
    keep_optimizer_state_normal,
    negligible_threshold,
)
from ppl_vae.pyro.priors import DiagonalNormalMixture

TINY = torch.finfo(torch.float32).tiny


def test_count_subnormal():
    x = torch.tensor([0.0, TINY, TINY / 4, -TINY / 8, 1.0, -1e-45])
    assert count_subnormal(x) == 3
    assert count_subnormal(None) == 0
    assert count_subnormal(torch.arange(3)) == 0


def test_flush_negligible_grad_is_identity_forward_and_cuts_backward():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    y = flush_negligible_grad(x)
    assert torch.equal(y, x)
    upstream = torch.tensor([1e-3, 1e-32, -TINY / 2, -5.0])  # normal, negligible, subnormal
    y.backward(upstream)
    assert torch.equal(x.grad, torch.tensor([1e-3, 0.0, 0.0, -5.0]))
    assert negligible_threshold(torch.float32) == 2.0**-100


def test_flush_negligible_grad_is_free_without_autograd():
    x = torch.ones(3)
    assert flush_negligible_grad(x) is x
    w = torch.ones(3, requires_grad=True)
    with torch.no_grad():
        assert flush_negligible_grad(w) is w


def _far_component(dtype=torch.float32):
    """Two 1-D components: one at 0, one sqrt(190) away, so that at z = 0 the far one's
    log-density is 95 nats below (responsibility e^-95 = 5.5e-42, a subnormal float32)."""
    loc = torch.tensor([[0.0], [math.sqrt(190.0)]], dtype=dtype, requires_grad=True)
    scale = torch.ones(2, 1, dtype=dtype, requires_grad=True)
    z = torch.zeros(8, 1, dtype=dtype)
    return loc, scale, z


def test_the_mixture_log_density_makes_subnormal_gradients():
    # The mechanism of issue 14, without the fixes: logsumexp's backward weights the far
    # component's gradient by its responsibility, a subnormal.
    loc, scale, z = _far_component()
    with fixes_disabled():
        diag_normal_mixture_log_prob(z, loc, scale).sum().backward()
    assert count_subnormal(loc.grad) == 1 and count_subnormal(scale.grad) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_floored_logsumexp_is_logsumexp_at_the_dtypes_precision(dtype):
    # Entries 0 to 3.7 far_nats below the best one (80.3 nats in float32, 701.4 in float64),
    # against float64 torch.logsumexp. Each floored entry adds at most exp(-far_nats) to a sum
    # >= 1, so the value is logsumexp's to rounding (a few ulp of a value ~3), and so is
    # the gradient: exp(c - lse), whose argument (up to far_nats in size) carries an absolute
    # rounding error of about |c| eps, so a relative one of far_nats eps; the floored
    # responsibilities, all below exp(-far_nats), become 0.
    g = torch.Generator().manual_seed(0)
    c = (-3.7 * far_nats(dtype) * torch.rand(64, 500, generator=g, dtype=torch.float64)).to(dtype)
    c[:, 7] = 0.5
    c.requires_grad_(True)
    floored = _logsumexp_near(c)
    floored.sum().backward()
    ref_c = c.detach().double().requires_grad_(True)
    ref = torch.logsumexp(ref_c, -1)
    ref.sum().backward()
    eps = torch.finfo(dtype).eps
    assert (c.detach() < -far_nats(dtype)).float().mean() > 0.5
    torch.testing.assert_close(floored.double(), ref, rtol=0, atol=8 * eps)
    torch.testing.assert_close(c.grad.double(), ref_c.grad, rtol=far_nats(dtype) * eps,
                               atol=2e-35)
    assert c.grad[c.detach() < 0.5 - far_nats(dtype)].abs().max() == 0
    # rows that torch.logsumexp maps to -inf, +inf and NaN map there too
    odd = torch.tensor([[-math.inf, -math.inf], [0.0, math.inf], [math.nan, 1.0]], dtype=dtype)
    assert torch.equal(_logsumexp_near(odd).isnan(), torch.logsumexp(odd, -1).isnan())
    assert _logsumexp_near(odd)[:2].tolist() == torch.logsumexp(odd, -1)[:2].tolist()


@pytest.mark.parametrize("make", [
    lambda loc, scale: VampPrior(loc, scale),
    lambda loc, scale: DiagonalNormalMixture(torch.zeros(2), loc, scale),
], ids=["VampPrior", "DiagonalNormalMixture"])
def test_priors_cut_subnormal_gradients_and_keep_the_rest(make):
    loc, scale, z = _far_component()
    log_p = make(loc, scale).log_prob(z)
    log_p.sum().backward()
    assert count_subnormal(loc.grad) == 0 and count_subnormal(scale.grad) == 0
    assert loc.grad[1].item() == 0.0 and scale.grad[1].item() == 0.0
    # The same code with nothing cut: same value, same near-component gradient, bit for bit.
    ref_loc, ref_scale, _ = _far_component()
    with fixes_disabled():
        ref = make(ref_loc, ref_scale).log_prob(z)
        ref.sum().backward()
    assert count_subnormal(ref_loc.grad) == 1  # what the cut removed
    assert torch.equal(log_p, ref)
    assert torch.equal(loc.grad[0], ref_loc.grad[0])
    assert torch.equal(scale.grad[0], ref_scale.grad[0])


def test_float64_gradients_are_never_cut():
    loc, scale, z = _far_component(torch.float64)
    VampPrior(loc, scale).log_prob(z).sum().backward()
    assert loc.grad[1].item() != 0.0  # e^-95 is a normal float64


def test_flush_denormal_restores_the_callers_setting():
    if not torch.set_flush_denormal(False):
        pytest.skip("this platform has no flush-denormal mode")
    try:
        assert not denormals_flushed()
        with flush_denormal() as supported:
            assert supported and denormals_flushed()
            with flush_denormal(False):
                assert not denormals_flushed()
            assert denormals_flushed()
        assert not denormals_flushed()
        torch.set_flush_denormal(True)  # a caller who flushes keeps flushing
        with flush_denormal(False):
            assert not denormals_flushed()
        assert denormals_flushed()
    finally:
        torch.set_flush_denormal(False)


def test_adam_first_moment_sticks_in_the_subnormal_range():
    # The mechanism behind the MNIST creep: zero gradients, and m never reaches 0.
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.full((4,), 1e-3)
    opt.step()
    for _ in range(1000):
        p.grad = torch.zeros(4)
        opt.step()
    assert count_subnormal(opt.state[p]["exp_avg"]) == 4


def test_keep_optimizer_state_normal_flushes_on_its_period():
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([p], lr=1e-3)
    handle = keep_optimizer_state_normal(opt, every=7)
    p.grad = torch.full((4,), 1e-3)
    opt.step()
    seen = []
    for _ in range(1000):
        p.grad = torch.zeros(4)
        opt.step()
        seen.append(count_subnormal(opt.state[p]["exp_avg"]))
    assert seen[-1] == 0 and max(seen) > 0  # subnormal for at most 6 steps at a time
    step = int(opt.state[p]["step"])
    assert all(n == 0 for n, s in zip(seen, range(2, step + 1)) if s % 7 == 0)
    handle.remove()
    opt.state[p]["exp_avg"].fill_(TINY / 4)
    p.grad = torch.zeros(4)
    opt.step()
    assert count_subnormal(opt.state[p]["exp_avg"]) == 4  # the hook is gone


def test_flush_optimizer_state_zeroes_only_subnormals():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    opt.state[p]["exp_avg"].copy_(torch.tensor([TINY / 2, TINY, 0.5]))
    assert flush_optimizer_state(opt) == 1
    assert opt.state[p]["exp_avg"].tolist() == [0.0, TINY, 0.5]


def test_fixes_disabled_turns_both_fixes_off():
    loc, scale, z = _far_component()
    with fixes_disabled():
        VampPrior(loc, scale).log_prob(z).sum().backward()
    assert count_subnormal(loc.grad) == 1
