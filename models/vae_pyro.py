"""The VAE's generative program in Pyro: p(x | z) p(z) with any prior.

Sites: latent ``"z"`` and observed ``"x"``, both in plate ``"data"`` (dim -1). Networks are
registered by name (``"decoder"``; the prior registers its own, e.g. ``"encoder"`` and
``"pseudo_inputs"`` for the VampPrior). Bind the networks with ``functools.partial`` and
hand the result to :func:`~ppl_vae.pyro.fit` (which adds KL warm-up as a handler,
:func:`~ppl_vae.pyro.latent_scale`) or to Pyro's SVI::

    model = partial(vae_model, decoder=decoder, prior=LearnedVampPrior(encoder))
    guide = partial(vae_guide, encoder=encoder)
    svi = SVI(model, guide, Adam({"lr": 5e-4}), Trace_ELBO())
    svi.step(x)
"""

import pyro
import torch

from ppl_vae.pyro import bernoulli


def latent_prior(prior, latent_dim=None):
    """Evaluate ``prior`` (a :class:`~ppl_vae.pyro.Prior` or any distribution) and check that
    its event shape is ``(latent_dim,)``."""
    p_z = prior if isinstance(prior, torch.distributions.Distribution) else prior()
    if p_z.batch_shape != () or (latent_dim is not None and p_z.event_shape != (latent_dim,)):
        raise ValueError(
            f"prior must have batch_shape () and event_shape ({latent_dim},) to match the "
            f"decoder's latent_dim; got batch_shape {tuple(p_z.batch_shape)} and event_shape "
            f"{tuple(p_z.event_shape)}."
        )
    return p_z


def vae_model(x, *, decoder, prior, likelihood=bernoulli):
    """p(x, z) = p(z) p(x | z) for a batch ``x`` of shape ``(N, D)``.

    :param decoder: module mapping ``(..., L)`` to likelihood parameters ``(..., P * D)``.
    :param prior: a :class:`~ppl_vae.pyro.Prior` or a distribution with event shape ``(L,)``.
    :param likelihood: maps decoder outputs to p(x | z), e.g. :func:`~ppl_vae.pyro.bernoulli`.
    """
    pyro.module("decoder", decoder)
    p_z = latent_prior(prior, getattr(decoder, "latent_dim", None))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", p_z)  # (N, L)
        pyro.sample("x", likelihood(decoder(z)), obs=x)
