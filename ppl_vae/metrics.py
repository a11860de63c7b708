"""Backend-free statistics of trained latent-variable models (NumPy only).

Active units (Burda, Grosse & Salakhutdinov, 2016): latent dimension :math:`d` is *active*
when its posterior mean varies across the data,

.. math::

    A_d = \\operatorname{Cov}_x\\big(E_{q(z \\mid x)}[z_d]\\big) > \\delta,
    \\qquad \\delta = 0.01.

An inactive dimension has collapsed to the prior: whatever the input, the encoder says the
same thing ("posterior collapse"). The posterior means come from the backend, e.g.
``encoder(x)[0]`` for a one-layer VAE or :func:`ppl_vae.pyro.hvae_posterior_means` /
:func:`ppl_vae.numpyro.hvae_posterior_means` per layer of the HVAE.

References:

[1] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

import numpy as np

__all__ = ["active_units", "active_unit_variances"]


def _check_means(posterior_means):
    means = np.asarray(posterior_means, dtype=np.float64)
    if means.ndim != 2 or means.shape[0] < 2 or means.shape[1] < 1:
        raise ValueError(
            "posterior_means must have shape (N, L) with N >= 2 examples and L >= 1 "
            f"dimensions; got {means.shape}."
        )
    if not np.isfinite(means).all():
        raise ValueError("posterior_means contains NaN or infinite values.")
    return means


def active_unit_variances(posterior_means):
    """Per-dimension variance of the posterior means across examples, :math:`A_d`.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> means = rng.standard_normal((1000, 2)) * [1.0, 0.01]
        >>> active_unit_variances(means).round(2)
        array([1.04, 0.  ])

    :param posterior_means: ``(N, L)`` array, :math:`E_q[z \\mid x_n]` per example.
    :returns: ``(L,)`` float64 array (population variance, ``ddof=0``).
    """
    return _check_means(posterior_means).var(axis=0)


def active_units(posterior_means, threshold=0.01):
    """Number of active latent dimensions: :math:`\\#\\{d : A_d > threshold\\}`.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> active_units(rng.standard_normal((1000, 5)) * [1, 1, 1, 0.01, 0.01])
        3

    :param posterior_means: ``(N, L)`` array, :math:`E_q[z \\mid x_n]` per example.
    :param float threshold: :math:`\\delta`, 0.01 as in Burda et al. (2016).
    :rtype: int
    """
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating))
            or not np.isfinite(threshold) or threshold < 0):
        raise ValueError(f"threshold must be a finite number >= 0; got {threshold!r}.")
    return int(np.sum(active_unit_variances(posterior_means) > threshold))
