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
from pyro.distributions import Normal

from ppl_vae.models.hvae_pyro import _check_value, _sizes, _top_prior
from ppl_vae.pyro import bernoulli


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
    p_z2 = _top_prior(prior, l2)
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", p_z2)  # (N, L2)
        _check_value("z2", z2, l2, "prior, z1_prior and decoder")
        loc, scale = z1_prior(z2)  # (N, L1) each
        z1 = pyro.sample("z1", Normal(loc, scale).to_event(1))
        _check_value("z1", z1, l1, "z1_prior and decoder")
        pyro.sample("x", likelihood(decoder(x, z1, z2)), obs=x)
