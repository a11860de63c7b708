"""The two-layer hierarchical VAE's generative program in NumPyro:
p(x | z1, z2) p(z1 | z2) p(z2), with any prior p(z2).

Mirror of :mod:`models.hvae_pyro`. Sites: latents ``"z2"`` then ``"z1"`` and observed
``"x"``, all in plate ``"data"`` (dim -1). Networks are Equinox modules registered by name
with ``numpyro.contrib.module.eqx_module``: ``"z1_prior"`` (p(z1 | z2)), ``"decoder"``
(p(x | z1, z2)); the prior registers its own (``"encoder"`` and ``"pseudo_inputs"`` for the
VampPrior, whose encoder is the guide's q(z2 | x))::

    from functools import partial
    from jax import random
    from ppl_vae.metrics import active_units
    from ppl_vae.numpyro import (ConditionalGaussian, LearnedVampPrior, MultiInputDecoder, fit,
                                 hvae_posterior_means, importance_log_likelihood)
    from ppl_vae.models.hvae_numpyro import hvae_model
    from ppl_vae.guides.hvae_numpyro import hvae_guide

    D, L1, L2, K = 784, 40, 40, 500
    k = random.split(random.PRNGKey(0), 5)
    encoder = ConditionalGaussian(D, L2, rng_key=k[0])           # q(z2 | x)
    z1_encoder = ConditionalGaussian((D, L2), L1, rng_key=k[1])  # q(z1 | x, z2)
    z1_prior = ConditionalGaussian(L2, L1, rng_key=k[2])         # p(z1 | z2)
    decoder = MultiInputDecoder((L1, L2), D, rng_key=k[3])       # p(x | z1, z2)
    model = partial(hvae_model, decoder=decoder, z1_prior=z1_prior,
                    prior=LearnedVampPrior(encoder, K, rng_key=k[4]))
    guide = partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder)
    result = fit(random.PRNGKey(1), model, guide, x_train, x_valid, warmup_epochs=100)
    ll = importance_log_likelihood(random.PRNGKey(2), model, guide, x_test,
                                   params=result.params)
    z1_means, z2_means = hvae_posterior_means(random.PRNGKey(3), encoder, z1_encoder, x_test,
                                              params=result.params)
    print(active_units(z1_means), active_units(z2_means))
"""

import numpyro
from numpyro.contrib.module import eqx_module
from numpyro.distributions import Distribution, Normal

from ppl_vae.numpyro import bernoulli


def _sizes(decoder, z1_prior):
    """(L1, L2) as the networks declare them (None where a network does not say), after
    checking that the networks agree with one another."""
    dec_dims = getattr(decoder, "input_dims", None)
    if dec_dims is not None and len(dec_dims) != 2:
        raise ValueError(
            f"decoder must take two inputs (z1, z2); its input_dims are {tuple(dec_dims)}."
        )
    l1, l2 = dec_dims if dec_dims is not None else (None, None)
    prior_in = getattr(z1_prior, "input_dims", None)
    prior_out = getattr(z1_prior, "latent_dim", None)
    if prior_in is not None and (len(prior_in) != 1 or (l2 is not None and prior_in[0] != l2)):
        raise ValueError(
            f"z1_prior must take z2 alone, of size {l2} (the decoder's z2 size); its "
            f"input_dims are {tuple(prior_in)}."
        )
    if prior_out is not None and l1 is not None and prior_out != l1:
        raise ValueError(
            f"z1_prior's latent_dim ({prior_out}) must equal the decoder's z1 size ({l1})."
        )
    l1 = l1 if l1 is not None else prior_out
    l2 = l2 if l2 is not None else (prior_in[0] if prior_in is not None else None)
    return l1, l2


def _check_value(name, value, size, where):
    # Shapes are static under jit, so this check runs at trace time.
    if size is not None and value.shape[-1:] != (size,):
        raise ValueError(
            f"site {name!r} has size {value.shape[-1]} (its value has shape "
            f"{tuple(value.shape)}, e.g. from the guide) but the model's {where} expects "
            f"{size}: the latent sizes of model and guide do not match."
        )


def _top_prior(prior, latent_dim):
    p_z2 = prior if isinstance(prior, Distribution) else prior()
    if p_z2.batch_shape != () or (latent_dim is not None and p_z2.event_shape != (latent_dim,)):
        raise ValueError(
            f"prior must have batch_shape () and event_shape ({latent_dim},) to match the "
            f"z2 size of the decoder and z1_prior; got batch_shape {tuple(p_z2.batch_shape)} "
            f"and event_shape {tuple(p_z2.event_shape)}."
        )
    return p_z2


def hvae_model(x, *, decoder, z1_prior, prior, likelihood=bernoulli):
    """p(x, z1, z2) = p(z2) p(z1 | z2) p(x | z1, z2) for a batch ``x`` of shape ``(N, D)``.

    :param decoder: Equinox module mapping ``(z1, z2)``, ``(..., L1)`` and ``(..., L2)``, to
        likelihood parameters ``(..., P * D)``, e.g. :class:`~ppl_vae.numpyro.MultiInputDecoder`.
    :param z1_prior: Equinox module mapping z2 ``(..., L2)`` to ``(loc, scale)`` of the
        diagonal Gaussian p(z1 | z2), e.g. :class:`~ppl_vae.numpyro.ConditionalGaussian`.
    :param prior: p(z2): a :class:`~ppl_vae.numpyro.Prior` or a distribution with event shape
        ``(L2,)``.
    :param likelihood: maps decoder outputs to p(x | z1, z2), e.g.
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
        numpyro.sample("x", likelihood(dec(z1, z2)), obs=x)
