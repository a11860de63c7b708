"""Observation models (Pyro) against Pyro's own distributions."""

import pyro.distributions as dist
import pytest
import torch

from ppl_vae.pyro import bernoulli


def test_bernoulli_matches_pyro_bernoulli_to_event_with_broadcasting():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(30, 5, 784, generator=g, dtype=torch.float64)  # (S, N, D)
    x = (torch.rand(5, 784, generator=g) < 0.2).double()  # (N, D), broadcast over S
    ours, ref = bernoulli(logits), dist.Bernoulli(logits=logits).to_event(1)
    assert ours.batch_shape == ref.batch_shape and ours.event_shape == ref.event_shape
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x), rtol=1e-12, atol=1e-10)
    # Soft targets in [0, 1] (validation off): the same cross-entropy as Pyro's.
    soft = torch.rand(5, 784, generator=g, dtype=torch.float64)
    ref_soft = dist.Bernoulli(logits=logits, validate_args=False).to_event(1)
    torch.testing.assert_close(type(ours)(logits, validate_args=False).log_prob(soft),
                               ref_soft.log_prob(soft), rtol=1e-12, atol=1e-10)
    # Expanded in a plate and sampled like Pyro's Bernoulli.
    e = bernoulli(logits[0, 0]).expand([3])
    assert type(e) is type(ours) and e.batch_shape == (3,) and e.sample().shape == (3, 784)


def test_bernoulli_rejects_non_binary_data_when_validating():
    logits = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="support"):
        bernoulli(logits).log_prob(torch.full((2, 4), 0.5))  # conftest enables validation
