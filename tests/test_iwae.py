"""The IWAE bound (``RenyiELBO(alpha=0, num_particles=k)``, Burda et al. 2016) as fit's
objective in both backends, and the experiment's ``--elbo iwae --num-particles k``
(``ppl_vae.cli``, what ``examples/vamp_mnist.py`` and ``python -m ppl_vae`` run).

Checks against a closed form: with the exact posterior of probabilistic PCA as guide, every
importance weight is p(x), so the IWAE bound is log p(x) exactly, for any k. KL warm-up is
defined for it: fit's handler scales the latent sites in model and guide (as for the ELBO),
so each weight is ``log w = log p(x | z) + beta (log p(z) - log q(z | x))``.
"""

import contextlib
import json

import numpy as np
import pytest
from backends import patterns, ppca_data, ppca_log_px, ppca_params

from ppl_vae import cli


def test_iwae_bound_is_exact_with_the_exact_posterior(backend):
    """In float32 (to 1e-5), and in float64 where that is cheap (Pyro, to 1e-10)."""
    for precision in backend.precisions:
        _iwae_bound_is_exact(backend, precision, {"float32": 1e-5, "float64": 1e-10}[precision])


def _iwae_bound_is_exact(backend, precision, rtol):
    W, b = ppca_params()
    x = ppca_data(W, b, 8, seed=0)
    exact = ppca_log_px(x, W, b)
    model, guide = backend.ppca
    renyi = backend.elbos["renyi"]
    # (Pyro: with the particles in a loop and vectorised)
    variants = ([{"vectorize_particles": v} for v in (False, True)] if backend.name == "pyro"
                else [{}])
    with backend.float64() if precision == "float64" else contextlib.nullcontext():
        args = (backend.array(W), backend.array(b))
        for variant in variants:
            bound = backend.elbo_per_example(model, guide, backend.array(x),
                                             renyi(alpha=0, num_particles=5, **variant),
                                             model_args=args)
            # per example (not one IWAE over the whole batch): the mean of log p(x_n)
            np.testing.assert_allclose(bound, exact.mean(), rtol=rtol)


def test_fit_trains_with_the_iwae_bound_and_kl_warm_up(backend):
    model, guide = backend.vae("standard", num_features=12, latent_dim=2, hidden=(16,))
    renyi = backend.elbos["renyi"]
    extra = {"vectorize_particles": True} if backend.name == "pyro" else {}
    x_valid = backend.array(patterns(50, seed=1))
    result = backend.fit(model, guide, patterns(200), x_valid, num_epochs=4, batch_size=50,
                         learning_rate=3e-3, elbo=renyi(alpha=0, num_particles=4, **extra),
                         warmup_epochs=2)
    assert [h["beta"] for h in result.history] == [0.5, 1.0, 1.0, 1.0]
    # valid_elbo is the IWAE bound (k = 4) of the validation images
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["valid_elbo"])
               for h in result.history)
    assert result.config["elbo"] == "RenyiELBO" and result.config["num_particles"] == 4
    params = backend.params_kw(result)
    iwae = backend.elbo_per_example(model, guide, x_valid,
                                    renyi(alpha=0, num_particles=16, **extra), **params)
    assert iwae > backend.elbo_per_example(model, guide, x_valid, backend.elbos["trace"](),
                                           **params)


# ---------------------------------------------------------------- the experiment's flags
def test_the_experiment_flags(capsys):
    config = cli.parse_config(["--elbo", "iwae", "--num-particles", "5", "--eval", "ais",
                               "--ais-steps", "200", "--ais-chains", "8", "--ais-leapfrog", "3"])
    assert (config.elbo, config.num_particles, config.eval) == ("iwae", 5, "ais")
    assert (config.ais_steps, config.ais_chains, config.ais_leapfrog) == (200, 8, 3)
    assert cli.parse_config([]).eval == "is" and cli.parse_config([]).num_particles == 1
    for flags, message in [(["--elbo", "iwae"], "--elbo iwae needs --num-particles k >= 2"),
                           (["--num-particles", "0"], "--num-particles must be a positive"),
                           (["--ais-steps", "0"], "--ais-steps must be a positive"),
                           (["--ais-chains", "-1"], "--ais-chains must be a positive"),
                           (["--eval", "bdmc"], "invalid choice: 'bdmc'")]:
        with pytest.raises(SystemExit) as info:
            cli.parse_config(flags)
        assert info.value.code == 2 and message in capsys.readouterr().err, flags


def _run_experiment(tmp_path, capsys, *flags):
    """The command line, in this process (``cli.main``, as ``python -m ppl_vae`` runs it)."""
    cli.main(["--backend", "pyro", "--prior", "standard", "--eval", "ais", "--ais-steps", "5",
              "--ais-chains", "2", "--epochs", "1", "--max-train", "200", "--max-test", "6",
              "--eval-samples", "30", "--hidden", "16", "--latent-dim", "4", "--no-progress",
              "--out", str(tmp_path), *flags])
    assert "AIS (5 steps x 2 chains) | AIS - IS |" in capsys.readouterr().out
    (record,) = json.loads((tmp_path / "metrics.json").read_text())
    assert np.isfinite(record["test_log_likelihood_ais"])
    assert record["ais_steps"] == 5 and record["ais_chains"] == 2
    assert (tmp_path / "is_vs_ais_standard.png").stat().st_size > 1000
    from ppl_vae import diagnostics

    runs = diagnostics.load(tmp_path / "inference_data.nc")  # {prior: InferenceData}
    ais = diagnostics.group(runs["standard"], "ais")
    assert ais["log_weights"].shape == (6, 2)  # (test images, chains) of this prior
    np.testing.assert_allclose(ais["log_likelihood"].values.mean(),
                               record["test_log_likelihood_ais"])
    return record


def test_the_experiment_evaluates_by_ais(tmp_path, capsys):
    # (the NumPyro half of --eval ais takes half a minute to compile here: the same code
    # path, run by hand for docs/ais.md)
    record = _run_experiment(tmp_path, capsys, "--num-particles", "2")
    assert record["fit_config"]["elbo"] == "Trace_ELBO"
    assert record["fit_config"]["num_particles"] == 2


def test_the_experiment_trains_with_the_iwae_bound(tmp_path, capsys):
    record = _run_experiment(tmp_path, capsys, "--elbo", "iwae", "--num-particles", "3")
    assert record["fit_config"]["elbo"] == "RenyiELBO"
    assert record["fit_config"]["num_particles"] == 3
