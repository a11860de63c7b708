"""ppl_vae.diagnostics: Pareto k-hat against closed-form tail indices, InferenceData layout
and netCDF round trips, PSIS-LOO against the full ELBO on the wine data, variational k-hat.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp
from sklearn.datasets import load_wine

from ppl_vae import diagnostics
from ppl_vae.mixture import BayesianGaussianMixture

with warnings.catch_warnings():
    # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning on the first import of the day
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
    az = pytest.importorskip("arviz")

NUM_ROWS, NUM_DRAWS = 32, 4000


def _gaussian_log_weights(rng, proposal_scale, target_scale=1.0):
    """log w = log N(z; 0, s_p^2) - log N(z; 0, s_q^2) with z ~ N(0, s_q^2); (32, 4000)."""
    z = rng.normal(scale=proposal_scale, size=(NUM_ROWS, NUM_DRAWS))
    return stats.norm.logpdf(z, scale=target_scale) - stats.norm.logpdf(z, scale=proposal_scale)


# Tail index in closed form. With z ~ q = N(0, s_q^2), target p = N(0, s_p^2):
#   w(z) = p(z)/q(z) ∝ exp(c z^2 / 2),  c = 1/s_q^2 - 1/s_p^2.
# For s_q < s_p (c > 0): P(w > t) = P(z^2 > 2 log(t') / c) and z^2 / s_q^2 ~ chi2_1, whose
# tail is exp(-u/2) up to a factor u^(-1/2); so P(w > t) ≈ t^(-1 / (c s_q^2)) times a slowly
# varying factor (log t)^(-1/2). A power law with index alpha = 1 / (c s_q^2): the GPD shape
# is k = 1/alpha = c s_q^2 = 1 - s_q^2 / s_p^2.
# For s_q > s_p (c < 0) the weights are bounded by their value at z = 0, and near that bound
# P(w_max - w < t) ∝ P(|z| < sqrt(t)) ∝ t^(1/2): a GPD with negative shape (k = -2), far
# below 0.5.


def test_khat_bounded_weights_from_a_wider_proposal():
    rng = np.random.default_rng(0)
    khat = diagnostics.psis_khat(_gaussian_log_weights(rng, proposal_scale=1.5))
    assert khat.shape == (NUM_ROWS,)
    assert np.all(khat < 0.0)  # bounded weights: a negative GPD shape, in any row


def test_khat_matches_the_closed_form_tail_index():
    rng = np.random.default_rng(1)
    khat = diagnostics.psis_khat(_gaussian_log_weights(rng, proposal_scale=0.8))
    # k = 1 - 0.64 = 0.36; the row mean of 32 fits with S = 4000 has sd ~0.02 (measured over
    # seeds: 0.32..0.38, the slowly varying factor biases the fit slightly low)
    assert abs(khat.mean() - 0.36) < 0.08


def test_khat_heavy_tail_from_a_narrow_proposal():
    rng = np.random.default_rng(2)
    log_w = _gaussian_log_weights(rng, proposal_scale=0.3)
    khat = diagnostics.psis_khat(log_w)
    # k = 1 - 0.09 = 0.91: infinite variance, unreliable; fits are biased low at S = 4000
    assert khat.shape == (NUM_ROWS,)
    assert khat.mean() > 0.7 and np.median(khat) > 0.7
    summary = diagnostics.khat_summary(khat)
    assert summary["share_bad"] > 0.5
    assert summary["share_good"] + summary["share_ok"] + summary["share_bad"] == pytest.approx(1)
    # rows are independent: a row's k-hat does not depend on its neighbours
    np.testing.assert_allclose(diagnostics.psis_khat(log_w[3:5]), khat[3:5])


def test_khat_input_checks():
    rng = np.random.default_rng(3)
    assert diagnostics.psis_khat(rng.normal(size=(2, 10))).tolist() == [np.inf, np.inf]
    with pytest.raises(ValueError, match="shape"):
        diagnostics.psis_khat(1.0)
    with pytest.raises(ValueError, match="NaN"):
        diagnostics.psis_khat(np.array([[0.0, np.nan, 1.0]]))
    s = diagnostics.khat_summary([0.1, 0.55, 0.7, 0.71, np.inf])
    assert (s["share_good"], s["share_ok"], s["share_bad"]) == (0.2, 0.4, 0.4)


def test_vae_inference_data_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    num, num_particles = 7, 50
    log_w = rng.normal(size=(num, num_particles)) - 90.0
    log_px = logsumexp(log_w, axis=1) - np.log(num_particles)  # (7,)
    khat = rng.uniform(0, 1, size=num)
    history = [{"epoch": e, "beta": min(1.0, (e + 1) / 2), "train_loss": 100.0 - e,
                "valid_elbo": None if e == 0 else -100.0 + e, "seconds": 0.5}
               for e in range(4)]
    idata = diagnostics.vae_inference_data(log_px, khat, history, log_weights=log_w,
                                           attrs={"prior": "vamp", "flag": True})
    path = diagnostics.save(idata, tmp_path / "vae.nc")
    for loaded in (diagnostics.load(path), az.from_netcdf(str(path))):
        assert {"log_likelihood", "importance", "training"} <= set(
            diagnostics.group_names(loaded))
        assert "sample_stats" not in diagnostics.group_names(loaded)
        ll = diagnostics.group(loaded, "log_likelihood")["x"]
        assert ll.dims == ("chain", "draw", "example") and ll.shape == (1, 1, num)
        np.testing.assert_allclose(ll.values[0, 0], log_px)
        imp = diagnostics.group(loaded, "importance")
        assert imp["khat"].dims == ("example",)
        np.testing.assert_allclose(imp["khat"].values, khat)
        assert imp["log_weights"].dims == ("example", "particle")
        np.testing.assert_allclose(imp["log_weights"].values, log_w)
        assert imp.attrs["num_particles"] == num_particles and imp.attrs["prior"] == "vamp"
        training = diagnostics.group(loaded, "training")
        assert training["train_loss"].dims == ("step",)
        np.testing.assert_allclose(training["train_loss"].values, [100.0, 99.0, 98.0, 97.0])
        np.testing.assert_allclose(training["beta"].values, [0.5, 1.0, 1.0, 1.0])
        valid = training["valid_elbo"].values
        assert np.isnan(valid[0]) and np.allclose(valid[1:], [-99.0, -98.0, -97.0])
    with pytest.raises(ValueError, match="khat must have shape"):
        diagnostics.vae_inference_data(log_px, khat[:3])


def _wine():
    wine = load_wine()
    cols = [wine.feature_names.index(n) for n in ("malic_acid", "total_phenols")]
    return wine.data[:, cols]  # (178, 2), raw units as in examples/gmm_wine.py


def _fit(X, k, n_init=5, seed=0):
    return BayesianGaussianMixture(n_components=k, n_init=n_init, max_iter=2000, tol=1e-6,
                                   random_state=seed,
                                   weight_concentration_prior_type="dirichlet_distribution"
                                   ).fit(X)


def test_gmm_inference_data_round_trip(tmp_path):
    X = _wine()
    vb = _fit(X, 2, n_init=1)
    idata = diagnostics.gmm_inference_data(vb, X, num_samples=300, random_state=0,
                                           feature_names=["malic_acid", "total_phenols"])
    draws = vb.sample_posterior(300, random_state=0)  # the same draws
    path = diagnostics.save(idata, tmp_path / "gmm.nc")
    loaded = az.from_netcdf(str(path))
    assert {"posterior", "log_likelihood", "observed_data", "sample_stats"} <= set(
        diagnostics.group_names(loaded))
    post = diagnostics.group(loaded, "posterior")
    assert post["weights"].dims == ("chain", "draw", "component")
    assert post["means"].dims == ("chain", "draw", "component", "feature")
    assert post["covariances"].dims == ("chain", "draw", "component", "feature", "feature2")
    assert post["covariances"].shape == (1, 300, 2, 2, 2)
    assert list(post["feature"].values) == ["malic_acid", "total_phenols"]
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(post[name].values[0], draws[name])
    ll = diagnostics.group(loaded, "log_likelihood")["x"]
    assert ll.dims == ("chain", "draw", "obs") and ll.shape == (1, 300, 178)
    np.testing.assert_allclose(ll.values[0], vb.log_likelihood_draws(X, draws))
    # assignments marginalised: log sum_k pi_k N(x | mu_k, Sigma_k), checked with SciPy
    s, n = 5, 11
    ref = np.logaddexp(*[np.log(draws["weights"][s, k]) + stats.multivariate_normal.logpdf(
        X[n], draws["means"][s, k], draws["covariances"][s, k]) for k in range(2)])
    assert ll.values[0, s, n] == pytest.approx(ref, rel=1e-10)
    np.testing.assert_allclose(diagnostics.group(loaded, "observed_data")["x"].values, X)
    stats_group = diagnostics.group(loaded, "sample_stats")
    np.testing.assert_allclose(stats_group["lp"].values[0], vb.log_joint_draws(X, draws))
    assert loaded.posterior.attrs["elbo"] == pytest.approx(vb.lower_bound_)
    # ArviZ's own summaries work on it
    summary = az.summary(loaded, var_names=["weights"], kind="stats")
    np.testing.assert_allclose(summary["mean"].values, draws["weights"].mean(axis=0), atol=1e-3)


def test_wine_loo_and_elbo_agree_on_direction():
    X = _wine()
    models = {k: _fit(X, k) for k in range(1, 7)}
    idatas = {k: diagnostics.gmm_inference_data(m, X, num_samples=1000, random_state=0)
              for k, m in models.items()}
    table = diagnostics.compare(idatas)
    elbo = {k: m.lower_bound_ for k, m in models.items()}
    elpd, dse = table["elpd_loo"], table["dse"]
    # the full ELBO (like BIC) picks 2 or 3 and prefers both to K = 1 and to K = 6
    best_elbo = max(elbo, key=elbo.get)
    assert best_elbo in (2, 3)
    assert min(elbo[2], elbo[3]) > max(elbo[1], elbo[6])
    # LOO: K = 1 is far worst; K = 3..6 differ by less than their standard errors (LOO is a
    # predictive criterion, like AIC, and empty components cost it little), so the smallest
    # K within 2 dse of the best is the LOO choice, and it is 2 or 3
    assert table.index[-1] == 1 and elpd[2] - elpd[1] > 4 * dse[1]
    within = [k for k in table.index if table.loc[k, "elpd_diff"] <= 2 * dse[k]]
    assert min(within) in (2, 3)
    assert elpd[3] > elpd[1] and elpd[2] > elpd[1]
    # in the direction the ELBO takes, LOO does not contradict it: K = 6 is not
    # significantly better than K = 3
    assert elpd[6] - elpd[3] < 2 * dse[3] + 1e-9 or elpd[6] < elpd[3]
    # every pointwise LOO k-hat is fine: the LOO estimates themselves can be trusted
    for k in (2, 3):
        assert diagnostics.loo(idatas[k])["pareto_k"].max() < 0.7


def test_variational_khat_small_for_a_well_specified_fit():
    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(size=(1000, 2)) + [6.0, 0.0], rng.normal(size=(1000, 2))])
    vb = _fit(X, 2, n_init=1)
    khat = diagnostics.variational_khat(vb, X, num_samples=2000, random_state=0)
    assert np.isfinite(khat) and khat < 0.7


def test_variational_khat_of_an_exact_posterior():
    # K = 1: the Normal-Wishart q is the exact posterior, log p(theta, X) - log q(theta) is
    # the constant log p(X), and the weights carry no tail at all
    X = _wine()
    vb = _fit(X, 1, n_init=1)
    draws = vb.sample_posterior(500, random_state=0)
    log_w = vb.log_joint_draws(X, draws) - vb.log_q_draws(draws)
    assert np.std(log_w) < 1e-3
    assert diagnostics.variational_khat(vb, X, num_samples=500, random_state=0) < 0.5


def test_importing_the_package_does_not_import_arviz():
    code = ("import sys, ppl_vae, ppl_vae.diagnostics; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'arviz', 'torch', 'jax'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_concat_stacks_fits_along_a_new_dim_and_round_trips(tmp_path):
    import arviz as az

    from ppl_vae.diagnostics import concat, save, vae_inference_data

    hist = [{"epoch": e, "beta": 1.0, "train_loss": 10.0 - e, "valid_elbo": -9.0 + e,
             "seconds": 1.0} for e in (1, 2, 3)]
    a = vae_inference_data(np.array([-1.0, -2.0]), np.array([0.1, 0.9]), hist[:1])
    b = vae_inference_data(np.array([-3.0, -4.0]), np.array([0.2, 0.3]), hist)
    both = concat({"standard": a, "vamp": b}, dim="prior")
    save(both, tmp_path / "both.nc")
    back = az.from_netcdf(tmp_path / "both.nc")
    np.testing.assert_array_equal(back.log_likelihood.x.sel(prior="vamp").values.ravel(),
                                  [-3.0, -4.0])
    np.testing.assert_array_equal(back.importance.khat.sel(prior="standard").values, [0.1, 0.9])
    # the shorter history is padded with NaN after its last step
    loss = back.training.train_loss.sel(prior="standard").values
    assert loss[0] == 9.0 and np.isnan(loss[1:]).all()
    with pytest.raises(ValueError, match="at least one"):
        concat({})


def test_gmm_inference_data_with_dirichlet_process_weights_is_warning_free():
    from ppl_vae.diagnostics import gmm_inference_data
    from ppl_vae.mixture import BayesianGaussianMixture

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(150, 2)), rng.normal(size=(150, 2)) + 4])
    model = BayesianGaussianMixture(n_components=6, random_state=0,
                                    weight_concentration_prior_type="dirichlet_process").fit(X)
    idata = gmm_inference_data(model, X, num_samples=300, random_state=0)
    assert np.isfinite(idata.log_likelihood.x.values).all()
