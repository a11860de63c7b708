"""Effect handlers of ppl_vae (NumPyro): :class:`latent_scale`, the KL warm-up of
:func:`~ppl_vae.numpyro.fit`.

Mirror of :mod:`ppl_vae.pyro.handlers`.
"""

from numpyro import handlers

__all__ = ["latent_scale"]


class latent_scale(handlers.scale):
    """Scale the log-density of every latent sample site of ``fn`` by ``scale``: NumPyro's
    ``handlers.scale`` restricted to the sample sites without an observation (observed sites,
    ``numpyro.factor`` and params are left alone). It is the KL warm-up (annealing) of
    Bowman et al. and Sønderby et al., written as NumPyro writes it, a handler rather than
    an argument of the program.

    :func:`~ppl_vae.numpyro.fit` applies it with ``scale = beta``
    (:func:`~ppl_vae.warmup_beta`, a jnp scalar so that the jitted epoch compiles once)
    around both the model and the guide, so every latent site z contributes
    ``beta * (log p(z | ...) - log q(z | ...))`` to the ELBO and the likelihood term
    ``log p(x | z)`` is unscaled:

    .. math:: \\mathcal{L}_\\beta = E_q[\\log p(x \\mid z)] - \\beta\\, KL(q(z \\mid x) \\| p(z)).

    Both sides must be scaled: under ``Trace_ELBO`` scaling only the model would leave
    ``-log q`` at full weight, and ``TraceMeanField_ELBO`` multiplies its analytic KL by the
    sites' scale (which must agree between model and guide), so its KL term is multiplied
    by ``beta`` too. Use it as ``handlers.scale``::

        loss = Trace_ELBO().loss(key, params, latent_scale(model, 0.1),
                                 latent_scale(guide, 0.1), x)

    :param fn: a stochastic function (model or guide), or None to use it as a context.
    :param scale: a positive float or jnp array.
    """

    def process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = (self.scale if msg.get("scale") is None
                            else self.scale * msg["scale"])
