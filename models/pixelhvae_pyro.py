"""The PixelHVAE's generative program in Pyro: p(x | z1, z2) p(z1 | z2) p(z2) with an
autoregressive decoder, :math:`p(x \\mid z_1, z_2) = \\prod_i p(x_i \\mid x_{<i}, z_1, z_2)`.

The program of :mod:`ppl_vae.models.hvae_pyro` with one difference: the decoder reads the
image too, ``decoder(x, z1, z2)`` (a :class:`~ppl_vae.pyro.PixelCNNDecoder`), and returns the
parameters of every pixel's conditional at once, so ``likelihood(...).log_prob(x)`` is the
exact log-density in one pass. Same sites (``"z2"``, ``"z1"``, observed ``"x"``, plate
``"data"`` at dim -1), same network names (``"decoder"``, ``"z1_prior"``; the VampPrior
registers ``"encoder"`` and ``"pseudo_inputs"``), and the guide is the HVAE's,
:func:`ppl_vae.guides.hvae_pyro.hvae_guide`, with convolutional encoders. The convHVAE needs
no program of its own: it is ``hvae_model`` / ``hvae_guide`` with the networks of
:mod:`ppl_vae.pyro.conv`. The reference's ``PixelHVAE_2level`` with a VampPrior::

    from functools import partial
    from ppl_vae.pyro import (ConditionalGaussian, ConvEncoder, LearnedVampPrior,
                              PixelCNNDecoder, discretized_logistic, fit,
                              importance_log_likelihood, sample_pixelcnn)
    from ppl_vae.models.pixelhvae_pyro import pixelhvae_model
    from ppl_vae.guides.hvae_pyro import hvae_guide

    shape, L, K = (28, 20), 40, 500                                   # Frey Faces
    encoder = ConvEncoder(shape, L)                                   # q(z2 | x)
    z1_encoder = ConvEncoder(shape, L, cond_dim=L, kernel_sizes=(3,) * 5)  # q(z1 | x, z2)
    z1_prior = ConditionalGaussian(L, L)                              # p(z1 | z2)
    decoder = PixelCNNDecoder(shape, (L, L), params_per_pixel=2)      # p(x | z1, z2)
    model = partial(pixelhvae_model, decoder=decoder, z1_prior=z1_prior,
                    prior=LearnedVampPrior(encoder, K, init_loc=0.5, init_scale=0.02),
                    likelihood=discretized_logistic)
    guide = partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder)
    result = fit(model, guide, x_train, x_valid, warmup_epochs=100, early_stopping=50)
    ll = importance_log_likelihood(model, guide, x_test, num_samples=5000)   # (N,) nats
    z2 = model.keywords["prior"]().sample((16,))
    x = sample_pixelcnn(decoder, z1_prior(z2)[0], z2, likelihood=discretized_logistic)
"""

import pyro
import torch
from pyro.distributions import Normal

from ppl_vae.pyro import bernoulli


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
    if size is not None and value.shape[-1:] != (size,):
        raise ValueError(
            f"site {name!r} has size {value.shape[-1]} (its value has shape "
            f"{tuple(value.shape)}, e.g. from the guide) but the decoder expects {size}: the "
            "latent sizes of model and guide do not match."
        )


def pixelhvae_model(x, *, decoder, z1_prior, prior, likelihood=bernoulli):
    """p(x, z1, z2) = p(z2) p(z1 | z2) prod_i p(x_i | x_<i, z1, z2) for a batch ``x`` of
    shape ``(N, D)``.

    :param decoder: module mapping ``(x, z1, z2)``, ``(..., D)``, ``(..., L1)``, ``(..., L2)``,
        to the parameters of each pixel's conditional, ``(..., P * D)``, causal in x, e.g.
        :class:`~ppl_vae.pyro.PixelCNNDecoder`.
    :param z1_prior: module mapping z2 to ``(loc, scale)`` of p(z1 | z2), each ``(..., L1)``.
    :param prior: p(z2): a :class:`~ppl_vae.pyro.Prior` or a distribution with event shape
        ``(L2,)``.
    :param likelihood: maps decoder outputs to the pixels' distribution, e.g.
        :func:`~ppl_vae.pyro.bernoulli`.
    :raises ValueError: when the networks, the prior or the guide's samples disagree on L1 or
        L2.
    """
    pyro.module("decoder", decoder)
    pyro.module("z1_prior", z1_prior)
    l1, l2 = _sizes(decoder, z1_prior)
    p_z2 = prior if isinstance(prior, torch.distributions.Distribution) else prior()
    if p_z2.batch_shape != () or (l2 is not None and p_z2.event_shape != (l2,)):
        raise ValueError(
            f"prior must have batch_shape () and event_shape ({l2},) to match the decoder's "
            f"z2 size; got batch_shape {tuple(p_z2.batch_shape)} and event_shape "
            f"{tuple(p_z2.event_shape)}."
        )
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", p_z2)  # (N, L2)
        _check_value("z2", z2, l2)
        loc, scale = z1_prior(z2)  # (N, L1) each
        z1 = pyro.sample("z1", Normal(loc, scale).to_event(1))
        _check_value("z1", z1, l1)
        pyro.sample("x", likelihood(decoder(x, z1, z2)), obs=x)
