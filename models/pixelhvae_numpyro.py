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
from numpyro.distributions import Distribution, Normal

from ppl_vae.numpyro import bernoulli


def _sizes(decoder, z1_prior):
    """(L1, L2) from the decoder, checked against p(z1 | z2)."""
    dims = getattr(decoder, "input_dims", None)
    if dims is not None and len(dims) != 2:
        raise ValueError(
            f"decoder must take two latents (z1, z2); its input_dims are {tuple(dims)}."
        )
    l1, l2 = dims if dims is not None else (None, None)
    prior_in = getattr(z1_prior, "input_dims", None)
    prior_out = getattr(z1_prior, "latent_dim", None)
    if prior_in is not None and l2 is not None and tuple(prior_in) != (l2,):
        raise ValueError(
            f"z1_prior must take z2 alone, of size {l2} (the decoder's z2 size); its "
            f"input_dims are {tuple(prior_in)}."
        )
    if prior_out is not None and l1 is not None and prior_out != l1:
        raise ValueError(
            f"z1_prior's latent_dim ({prior_out}) must equal the decoder's z1 size ({l1})."
        )
    return l1, l2


def _check_value(name, value, size):
    # Shapes are static under jit, so this check runs at trace time.
    if size is not None and value.shape[-1:] != (size,):
        raise ValueError(
            f"site {name!r} has size {value.shape[-1]} (its value has shape "
            f"{tuple(value.shape)}, e.g. from the guide) but the decoder expects {size}: the "
            "latent sizes of model and guide do not match."
        )


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
    p_z2 = prior if isinstance(prior, Distribution) else prior()
    if p_z2.batch_shape != () or (l2 is not None and p_z2.event_shape != (l2,)):
        raise ValueError(
            f"prior must have batch_shape () and event_shape ({l2},) to match the decoder's "
            f"z2 size; got batch_shape {tuple(p_z2.batch_shape)} and event_shape "
            f"{tuple(p_z2.event_shape)}."
        )
    with numpyro.plate("data", x.shape[0]):
        z2 = numpyro.sample("z2", p_z2)  # (N, L2)
        _check_value("z2", z2, l2)
        loc, scale = p_z1_net(z2)  # (N, L1) each
        z1 = numpyro.sample("z1", Normal(loc, scale).to_event(1))
        _check_value("z1", z1, l1)
        numpyro.sample("x", likelihood(dec(x, z1, z2)), obs=x)
