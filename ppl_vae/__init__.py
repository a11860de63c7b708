"""ppl_vae: deep latent-variable models with composable priors, for Pyro and NumPyro.

The package is split by backend so that ``import ppl_vae`` imports neither torch nor jax:

- :mod:`ppl_vae.pyro` -- the torch half (VampPrior distribution, priors, networks, SVI
  training, importance-sampled log-likelihood, AIS);
- :mod:`ppl_vae.numpyro` -- the JAX half, a mirror image of the Pyro half;
- :mod:`ppl_vae.experiment` -- the paper's experiment as a library call (config -> data ->
  build -> fit -> evaluate -> record), what ``python -m ppl_vae`` (:mod:`ppl_vae.cli`) and
  ``examples/vamp_mnist.py`` run;
- :mod:`ppl_vae.data` (:mod:`ppl_vae.datasets`) -- every dataset of the paper and the seed
  report as NumPy arrays: embedded offline MNIST, static, dynamic and Fashion-MNIST,
  OMNIGLOT, Caltech 101 Silhouettes, Frey Faces, Histopathology, and your own ``.npz``;
- :mod:`ppl_vae.mixture` -- Gaussian mixtures by EM and by variational EM (NumPy,
  scikit-learn's API);
- :mod:`ppl_vae.diagnostics` -- ArviZ conversion, Pareto k-hat and model comparison (the
  only ArviZ user);
- :mod:`ppl_vae.errors` -- every exception, shared by both backends;
  :mod:`ppl_vae.checkpoint` -- the one checkpoint format; :mod:`ppl_vae.callbacks` -- per-epoch
  loggers for ``fit``; :mod:`ppl_vae.metrics`, :mod:`ppl_vae.plotting`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
