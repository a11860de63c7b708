"""Gaussian mixtures by EM and by variational EM, in NumPy, with scikit-learn's interface.

Two estimators a user can swap for :class:`sklearn.mixture.GaussianMixture` and
:class:`sklearn.mixture.BayesianGaussianMixture`, with every ``covariance_type``
(``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``), ``warm_start``, ``verbose``,
``sample`` and all four ``init_params``:

- :class:`GaussianMixture` -- maximum likelihood by expectation-maximisation, with
  :meth:`~GaussianMixture.aic` and :meth:`~GaussianMixture.bic`; scikit-learn's path and
  numbers;
- :class:`BayesianGaussianMixture` -- mean-field variational EM (coordinate ascent) for the
  model of Bishop [1], section 10.2, and its tied, diagonal and spherical restrictions:

  .. math::

      \\pi \\sim \\mathrm{Dir}(\\alpha_0), \\quad
      \\Lambda_k \\sim \\mathcal{W}(C_0^{-1}, \\nu_0), \\quad
      \\mu_k \\mid \\Lambda_k \\sim \\mathcal{N}(m_0, (\\beta_0 \\Lambda_k)^{-1}), \\quad
      z_n \\sim \\mathrm{Cat}(\\pi), \\quad
      x_n \\mid z_n = k \\sim \\mathcal{N}(\\mu_k, \\Lambda_k^{-1}),

  with Gamma priors on the precisions for diag and spherical. Unlike scikit-learn,
  ``lower_bound_`` is the *full* evidence lower bound with every constant, so it can be
  compared across numbers of components and covariance types. The truncated
  stick-breaking (Dirichlet process) prior on the weights [2] is available too.

The Bayesian estimator also exposes its variational posterior: ``sample_posterior``,
``log_q_draws``, ``log_prior_draws``, ``log_joint_draws``, ``log_likelihood_draws`` (for
Pareto k-hat diagnostics) and ``membership_intervals`` (credible intervals of
:math:`p(z_n = k \\mid x_n, \\theta)`).

The package is laid out as ``sklearn/mixture``: ``_base`` (the fit loop), ``_gaussian_mixture``
(EM), ``_bayesian_mixture`` (variational EM and the full ELBO), ``_covariance`` (the
covariance math of the four types) and ``_posterior`` (posterior draws and densities).
Everything is vectorised over data points; loops run over components at most.

References:

1. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, sections 9.2
   and 10.2, appendix B.
2. D. M. Blei and M. I. Jordan, "Variational inference for Dirichlet process mixtures",
   *Bayesian Analysis* 1(1), 2006.
"""

from ._bayesian_mixture import BayesianGaussianMixture
from ._gaussian_mixture import GaussianMixture

__all__ = ["GaussianMixture", "BayesianGaussianMixture"]
