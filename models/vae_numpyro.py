"""The VAE's generative program in NumPyro: p(x | z) p(z) with any prior.

Mirror of :mod:`models.vae_pyro`. Sites: latent ``"z"`` and observed ``"x"``, both in plate
``"data"`` (dim -1). Networks are Equinox modules registered by name with
``numpyro.contrib.module.eqx_module`` (``"decoder"``; the prior registers its own, e.g.
``"encoder"`` and ``"pseudo_inputs"`` for the VampPrior). Bind the networks with
``functools.partial`` and hand the result to :func:`~ppl_vae.numpyro.fit` (which adds KL warm-up as a handler,
:class:`~ppl_vae.numpyro.latent_scale`) or to NumPyro's SVI::

    model = partial(vae_model, decoder=decoder, prior=LearnedVampPrior(encoder, rng_key=k))
    guide = partial(vae_guide, encoder=encoder)
    svi = SVI(model, guide, numpyro.optim.Adam(5e-4), Trace_ELBO())
    state = svi.init(rng_key, x)
    state, loss = svi.update(state, x)
"""

import numpyro
from numpyro.contrib.module import eqx_module
from numpyro.distributions import Distribution

from ppl_vae.numpyro import bernoulli


def latent_prior(prior, latent_dim=None):
    """Evaluate ``prior`` (a :class:`~ppl_vae.numpyro.Prior` or any distribution) and check
    that its event shape is ``(latent_dim,)``."""
    p_z = prior if isinstance(prior, Distribution) else prior()
    if p_z.batch_shape != () or (latent_dim is not None and p_z.event_shape != (latent_dim,)):
        raise ValueError(
            f"prior must have batch_shape () and event_shape ({latent_dim},) to match the "
            f"decoder's latent_dim; got batch_shape {tuple(p_z.batch_shape)} and event_shape "
            f"{tuple(p_z.event_shape)}."
        )
    return p_z


def vae_model(x, *, decoder, prior, likelihood=bernoulli):
    """p(x, z) = p(z) p(x | z) for a batch ``x`` of shape ``(N, D)``.

    :param decoder: Equinox module mapping ``(..., L)`` to likelihood parameters
        ``(..., P * D)``.
    :param prior: a :class:`~ppl_vae.numpyro.Prior` or a distribution with event shape
        ``(L,)``.
    :param likelihood: maps decoder outputs to p(x | z), e.g. :func:`~ppl_vae.numpyro.bernoulli`.
    """
    net = eqx_module("decoder", decoder)
    p_z = latent_prior(prior, getattr(decoder, "latent_dim", None))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", p_z)  # (N, L)
        numpyro.sample("x", likelihood(net(z)), obs=x)
