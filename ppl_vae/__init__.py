"""ppl_vae: deep latent-variable models with composable priors, for Pyro and NumPyro.

The package is split by backend so that ``import ppl_vae`` imports neither torch nor jax:

- :mod:`ppl_vae.pyro` -- the torch half (VampPrior distribution, priors, networks, SVI
  training, importance-sampled log-likelihood);
- :mod:`ppl_vae.numpyro` -- the JAX half, a mirror image of the Pyro half;
- :mod:`ppl_vae.data` -- datasets as NumPy arrays (embedded offline MNIST sample, static
  binarized MNIST);
- :mod:`ppl_vae.mixture` -- Gaussian mixtures by EM and by variational EM (NumPy);
- :mod:`ppl_vae.diagnostics` -- ArviZ conversion and Pareto k-hat (the only ArviZ user).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
