"""The PixelHVAE's generative program in NumPyro: p(x | z1, z2) p(z1 | z2) p(z2) with an
autoregressive decoder, :math:`p(x \\mid z_1, z_2) = \\prod_i p(x_i \\mid x_{<i}, z_1, z_2)`.

Mirror of :mod:`ppl_vae.models.pixelhvae_pyro`: the program of
:mod:`ppl_vae.models.hvae_numpyro` with a decoder that reads the image too,
``decoder(x, z1, z2)`` (a :class:`~ppl_vae.numpyro.PixelCNNDecoder`). Networks are Equinox
modules registered with ``eqx_module`` (``"decoder"``, ``"z1_prior"``); the guide is
:func:`ppl_vae.guides.hvae_numpyro.hvae_guide` with convolutional encoders::

    from functools import partial
    from jax import random
    from ppl_vae.numpyro import (ConditionalGaussian, ConvEncoder, LearnedVampPrior,
                                 PixelCNNDecoder, fit, importance_log_likelihood)
    from ppl_vae.models.pixelhvae_numpyro import pixelhvae_model
    from ppl_vae.guides.hvae_numpyro import hvae_guide

    shape, L, K = (28, 28), 40, 500
    k = random.split(random.PRNGKey(0), 5)
    encoder = ConvEncoder(shape, L, rng_key=k[0])                     # q(z2 | x)
    z1_encoder = ConvEncoder(shape, L, cond_dim=L, kernel_sizes=(3,) * 5, rng_key=k[1])
    z1_prior = ConditionalGaussian(L, L, rng_key=k[2])                # p(z1 | z2)
    decoder = PixelCNNDecoder(shape, (L, L), rng_key=k[3])            # p(x | z1, z2)
    model = partial(pixelhvae_model, decoder=decoder, z1_prior=z1_prior,
                    prior=LearnedVampPrior(encoder, K, rng_key=k[4]))
    guide = partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder)
    result = fit(random.PRNGKey(1), model, guide, x_train, x_valid, warmup_epochs=100)
    ll = importance_log_likelihood(random.PRNGKey(2), model, guide, x_test,
                                   params=result.params)
"""

import numpyro
from numpyro.contrib.module import eqx_module
from numpyro.distributions import Normal

from ppl_vae.models.hvae_numpyro import _check_value, _sizes, _top_prior
from ppl_vae.numpyro import bernoulli


def pixelhvae_model(x, *, decoder, z1_prior, prior, likelihood=bernoulli):
    """p(x, z1, z2) = p(z2) p(z1 | z2) prod_i p(x_i | x_<i, z1, z2) for a batch ``x`` of
    shape ``(N, D)``.

    :param decoder: Equinox module mapping ``(x, z1, z2)`` to the parameters of each pixel's
        conditional, ``(..., P * D)``, causal in x, e.g.
        :class:`~ppl_vae.numpyro.PixelCNNDecoder`.
    :param z1_prior: Equinox module mapping z2 to ``(loc, scale)`` of p(z1 | z2).
    :param prior: p(z2): a :class:`~ppl_vae.numpyro.Prior` or a distribution with event
        shape ``(L2,)``.
    :param likelihood: maps decoder outputs to the pixels' distribution, e.g.
        :func:`~ppl_vae.numpyro.bernoulli`.
    :raises ValueError: when the networks, the prior or the guide's samples disagree on L1 or
        L2.
    """
    dec = eqx_module("decoder", decoder)
    p_z1_net = eqx_module("z1_prior", z1_prior)
    l1, l2 = _sizes(decoder, z1_prior)
    p_z2 = _top_prior(prior, l2)
    with numpyro.plate("data", x.shape[0]):
        z2 = numpyro.sample("z2", p_z2)  # (N, L2)
        _check_value("z2", z2, l2, "prior, z1_prior and decoder")
        loc, scale = p_z1_net(z2)  # (N, L1) each
        z1 = numpyro.sample("z1", Normal(loc, scale).to_event(1))
        _check_value("z1", z1, l1, "z1_prior and decoder")
        numpyro.sample("x", likelihood(dec(x, z1, z2)), obs=x)
