"""The hierarchical VAE's amortised guide in Pyro: q(z2 | x) q(z1 | x, z2), both diagonal
Gaussians.

Same signature as :func:`models.hvae_pyro.hvae_model` apart from the networks; registers
``"encoder"`` (q(z2 | x), shared with a VampPrior on z2) and ``"z1_encoder"``; latent sites
``"z2"`` then ``"z1"`` in plate ``"data"`` (dim -1), the model's order, so
``TraceMeanField_ELBO`` can use the analytic KL for z1 given each sampled z2.
"""

import pyro
from pyro.distributions import Normal


def _check_sizes(x, encoder, z1_encoder):
    d = getattr(encoder, "input_dim", None)
    l2 = getattr(encoder, "latent_dim", None)
    in_dims = getattr(z1_encoder, "input_dims", None)
    if d is not None and x.shape[-1] != d:
        raise ValueError(f"x has {x.shape[-1]} features but the encoder expects {d}.")
    if in_dims is not None:
        if len(in_dims) != 2:
            raise ValueError(
                f"z1_encoder must take two inputs (x, z2); its input_dims are {tuple(in_dims)}."
            )
        if in_dims[0] != x.shape[-1]:
            raise ValueError(
                f"x has {x.shape[-1]} features but z1_encoder expects {in_dims[0]}."
            )
        if l2 is not None and in_dims[1] != l2:
            raise ValueError(
                f"z1_encoder takes z2 of size {in_dims[1]} but the encoder q(z2 | x) has "
                f"latent_dim {l2}."
            )


def hvae_guide(x, *, encoder, z1_encoder):
    """q(z1, z2 | x) for a batch ``x`` of shape ``(N, D)``.

    :param encoder: q(z2 | x), maps ``(..., D)`` to ``(loc, scale)``, each ``(..., L2)``.
    :param z1_encoder: q(z1 | x, z2), maps ``(N, D)`` and ``(..., N, L2)`` to ``(loc, scale)``,
        each ``(..., N, L1)``.
    """
    pyro.module("encoder", encoder)
    pyro.module("z1_encoder", z1_encoder)
    _check_sizes(x, encoder, z1_encoder)
    with pyro.plate("data", x.shape[0]):
        loc2, scale2 = encoder(x)  # (N, L2) each
        z2 = pyro.sample("z2", Normal(loc2, scale2).to_event(1))
        loc1, scale1 = z1_encoder(x, z2)  # (N, L1) each, or (S, N, L1)
        pyro.sample("z1", Normal(loc1, scale1).to_event(1))
