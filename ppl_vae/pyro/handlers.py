"""Effect handlers of ppl_vae (Pyro): :func:`latent_scale`, the KL warm-up of
:func:`~ppl_vae.pyro.fit`.

Mirror of :mod:`ppl_vae.numpyro.handlers`.
"""

from pyro.poutine.scale_messenger import ScaleMessenger

__all__ = ["LatentScaleMessenger", "latent_scale"]


class LatentScaleMessenger(ScaleMessenger):
    """Pyro's :class:`~pyro.poutine.scale_messenger.ScaleMessenger` restricted to the latent
    sample sites: every ``pyro.sample`` without an observation has its log-density
    multiplied by ``scale``; observed sites (``obs=``, ``pyro.factor``) and params are left
    alone. See :func:`latent_scale`."""

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            super()._process_message(msg)


def latent_scale(fn=None, scale=1.0):
    """Scale the log-density of every latent sample site of ``fn`` by ``scale``: the KL
    warm-up (annealing) of Bowman et al. and Sønderby et al., written as Pyro writes it, a
    handler (``poutine.scale``) rather than an argument of the program.

    :func:`~ppl_vae.pyro.fit` applies it with ``scale = beta`` (:func:`~ppl_vae.warmup_beta`)
    around both the model and the guide, so every latent site z contributes
    ``beta * (log p(z | ...) - log q(z | ...))`` to the ELBO and the likelihood term
    ``log p(x | z)`` is unscaled:

    .. math:: \\mathcal{L}_\\beta = E_q[\\log p(x \\mid z)] - \\beta\\, KL(q(z \\mid x) \\| p(z)).

    Both sides must be scaled: under ``Trace_ELBO`` scaling only the model would leave
    ``-log q`` at full weight, and ``TraceMeanField_ELBO`` computes an analytic KL from the
    guide site's scale (which it requires to equal the model site's), so its KL term is
    multiplied by ``beta`` too. Use it as ``poutine.scale``::

        with latent_scale(scale=0.1):
            loss = Trace_ELBO().differentiable_loss(model, latent_scale(guide, 0.1), x)

    :param fn: a stochastic function (model or guide), or None to use it as a context.
    :param scale: a positive float or tensor.
    """
    messenger = LatentScaleMessenger(scale)
    return messenger(fn) if fn is not None else messenger
