"""ArviZ diagnostics: every fit lands in InferenceData that ArviZ's own calls read
correctly, and every log-likelihood estimate says how far to trust it.

This is the only part of ppl_vae that imports ArviZ, and it imports it lazily (the
``diagnostics`` extra), so ``import ppl_vae`` and ``import ppl_vae.diagnostics`` never pull
it in. It imports neither torch nor jax: callers pass NumPy arrays (``np.asarray`` is
applied, so torch CPU tensors and jax arrays work too).

One model per InferenceData; several models are a dict ``{name: InferenceData}``, as
``az.compare`` takes them, never one dataset with a model dimension (ArviZ would read that
dimension as observations and pool the models).

- :func:`psis_khat` -- Pareto k-hat [1] of each row of an (N, S) matrix of log importance
  weights: how far to trust each importance-sampled ``log p(x_n)``;
- :func:`khat_summary`, :func:`plot_khat` -- shares of good / ok / bad k-hats, a figure;
- :func:`vae_inference_data` -- one VAE's held-out (test-set) evaluation: per-example
  log-likelihood, k-hat and training history, with no posterior draws;
  :func:`add_ais` adds the same examples by AIS;
- :func:`gmm_inference_data` -- draws of a fitted
  :class:`~ppl_vae.mixture.BayesianGaussianMixture` posterior with the pointwise
  log-likelihood, ready for ``az.summary``, ``az.plot_forest``, ``az.loo`` and
  :func:`compare`;
- :func:`variational_khat` -- k-hat of the variational posterior itself [2];
- :func:`elpd` -- ArviZ's ELPD object of a model: the held-out elpd of a VAE evaluation
  (for ``az.compare``, ``az.plot_compare``, ``az.plot_khat``), PSIS-LOO of posterior
  draws; :func:`loo` the same as a dict;
- :func:`compare`, :func:`plot_compare` -- ``az.compare`` with the column names of ArviZ
  0.x whatever the version, and its figure; :func:`plot_forest` for posterior draws;
- :func:`save`, :func:`save_runs`, :func:`load` -- netCDF: one model per file, or a run's
  models in one file with a group per model; :func:`concat` stacks fits for xarray.

Under ArviZ 1.x a held-out ELPD object is an instance of ``ppl_vae.diagnostics.HeldOutELPD``
(kind ``held_out``), under 0.x of a subclass of ``arviz.ELPDData``; the class is built on
first use, with ArviZ.

Both ArviZ 0.x (pip gives 0.23 on Python 3.11) and 1.x (1.3 on Python 3.12 and 3.13) are
supported and tested (``tests/test_diagnostics_versions.py`` checks both against closed
forms and against 0.23's values for the same inputs). ArviZ 1.x changes a few calls
(``from_dict`` takes one nested dict and returns an ``xarray.DataTree``; no top-level
``psislw``; ``arviz_stats`` wants negated log weights; group access; ``ELPDData`` is a
dataclass with a ``kind``; ``compare`` rounds its table, flips the sign of ``elpd_diff``
and renames columns; no ``waic``; plotting moved to arviz-plots). Those calls, and only
those, go through the class ``_ArviZ`` (``ppl_vae/diagnostics/_arviz.py``), which picks its
branch from ``arviz.__version__``. What still differs, within the math's tolerance: the
Pareto tail is one draw shorter under 1.x (k-hat moves by about 1e-3 at S = 5000), and
1.x's LOO standard errors divide by N rather than N - 1 (a factor sqrt(N / (N - 1))).

Thresholds (Vehtari et al. [1]): ``k < 0.5`` the importance-sampling estimate converges
quickly; ``0.5 <= k <= 0.7`` it converges, slowly (more samples help); ``k > 0.7`` the
estimate is unreliable (the weights' variance is effectively infinite; change the
proposal, e.g. a wider guide, rather than adding samples).

References:

1. A. Vehtari, D. Simpson, A. Gelman, Y. Yao and J. Gabry, "Pareto smoothed importance
   sampling", *JMLR* 25(72), 2024.
2. Y. Yao, A. Vehtari, D. Simpson and A. Gelman, "Yes, but did it work?: Evaluating
   variational inference", *ICML* 2018.
"""

from ppl_vae.diagnostics._arviz import HELD_OUT_CLASS_NAME, _arviz
from ppl_vae.diagnostics._data import (
    add_ais,
    gmm_inference_data,
    group,
    group_names,
    vae_inference_data,
    variational_khat,
)
from ppl_vae.diagnostics._elpd import compare, elpd, loo, plot_compare, plot_forest
from ppl_vae.diagnostics._io import RUNS_FILE, concat, load, save, save_runs
from ppl_vae.diagnostics._khat import (
    KHAT_BAD,
    KHAT_GOOD,
    MIN_KHAT_SAMPLES,
    khat_summary,
    plot_khat,
    psis_khat,
)

__all__ = [
    "psis_khat",
    "khat_summary",
    "plot_khat",
    "vae_inference_data",
    "add_ais",
    "gmm_inference_data",
    "variational_khat",
    "elpd",
    "loo",
    "compare",
    "plot_compare",
    "plot_forest",
    "group_names",
    "group",
    "concat",
    "save",
    "save_runs",
    "load",
    "KHAT_GOOD",
    "KHAT_BAD",
    "MIN_KHAT_SAMPLES",
    "RUNS_FILE",
]


def __getattr__(name):
    # the held-out ELPD class subclasses ArviZ's, so it exists once ArviZ is imported;
    # pickle finds it here
    if name == HELD_OUT_CLASS_NAME:
        return _arviz().held_out_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
