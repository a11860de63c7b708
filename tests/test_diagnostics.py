"""ppl_vae.diagnostics: Pareto k-hat against closed-form tail indices; InferenceData layout
and netCDF round trips; ArviZ's own calls on every kind of file we write (a held-out VAE
evaluation, a run of several models, a Gaussian mixture's posterior draws), each giving a
meaningful answer checked against a closed form or raising, and none pooling models; the
held-out elpd and its comparison against closed forms; PSIS-LOO against the full ELBO on the
wine data; variational k-hat.

Runs under ArviZ 0.x (Python 3.11) and 1.x (Python 3.12+); it needs neither torch nor jax.
"""

import pickle
import subprocess
import sys
import warnings
from collections import namedtuple

import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import logsumexp, softmax
from sklearn.datasets import load_wine

from ppl_vae import diagnostics
from ppl_vae.mixture import BayesianGaussianMixture

with warnings.catch_warnings():
    # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning on the first import of the day
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
    az = pytest.importorskip("arviz")

MODERN = int(az.__version__.split(".")[0]) >= 1  # ArviZ 1.x: DataTree, arviz-stats, no waic
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


# --------------------------------------------------------------------------------------
# a VAE's held-out evaluation: layout, elpd, comparison
# --------------------------------------------------------------------------------------

NUM_TEST, NUM_SAMPLES = 60, 1000
EXAMPLES = np.arange(100, 100 + NUM_TEST)  # test-set indices, not 0..N-1
GOOD_K = 1 - 1 / np.log10(NUM_SAMPLES)  # 0.667: az.loo's min(1 - 1/log10(S), 0.7)


def _held_out_runs(offset=0.0):
    """Three priors' per-image test log p(x) (N = 60) and k-hats, and their InferenceData:
    vamp beats standard by ~1.5 nats an image, mog is close to standard but noisier."""
    rng = np.random.default_rng(7)
    base = rng.normal(-95.0, 6.0, NUM_TEST) + offset
    log_px = {"standard": base, "vamp": base + rng.normal(1.5, 1.0, NUM_TEST),
              "mog": base + rng.normal(0.3, 3.0, NUM_TEST)}
    khat = {name: rng.uniform(0.2, 0.8, NUM_TEST) for name in log_px}
    runs = {name: diagnostics.vae_inference_data(
        log_px[name], khat[name], num_samples=NUM_SAMPLES, coords={"example": EXAMPLES},
        attrs={"prior": name}) for name in log_px}
    return log_px, khat, runs


def _native(result):
    """An ELPD object's fields read the way ArviZ's own users read them in each version."""
    if MODERN:
        return {"kind": result.kind, "elpd": result.elpd, "se": result.se, "p": result.p,
                "elpd_i": result.elpd_i, "pareto_k": result.pareto_k,
                "good_k": result.good_k, "warning": result.warning}
    return {"kind": result.index[0].split("_", 1)[1], "elpd": result["elpd_loo"],
            "se": result["se"], "p": result["p_loo"], "elpd_i": result["loo_i"],
            "pareto_k": result["pareto_k"], "good_k": result["good_k"],
            "warning": result["warning"]}


def _native_compare(elpds):
    """``az.compare`` of ELPD objects, in ArviZ 0.x's column names and signs."""
    with warnings.catch_warnings():
        # ArviZ 0.23 calls sort_values(inplace=True), which pandas >= 3.1 deprecates
        warnings.filterwarnings("ignore", message=r"The inplace keyword in DataFrame")
        if not MODERN:
            return az.compare(elpds)
        table = az.compare(elpds, round_to="none").rename(columns={"elpd": "elpd_loo"})
        table["elpd_diff"] = -table["elpd_diff"]
        return table


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
        # no posterior draws, so no group that ArviZ reads as draws
        assert set(diagnostics.group_names(loaded)) == {"importance", "training"}
        assert loaded.attrs["ppl_vae_evaluation"] == "held_out"
        assert "diagnostics.elpd" in loaded.attrs["note"] and loaded.attrs["prior"] == "vamp"
        imp = diagnostics.group(loaded, "importance")
        assert imp["log_likelihood"].dims == ("example",)
        np.testing.assert_allclose(imp["log_likelihood"].values, log_px)
        assert imp["khat"].dims == ("example",)
        np.testing.assert_allclose(imp["khat"].values, khat)
        assert imp["log_weights"].dims == ("example", "particle")
        np.testing.assert_allclose(imp["log_weights"].values, log_w)
        assert imp.attrs["num_particles"] == num_particles and imp.attrs["prior"] == "vamp"
        assert imp.attrs["flag"] == 1  # netCDF has no booleans
        training = diagnostics.group(loaded, "training")
        assert training["train_loss"].dims == ("step",)
        np.testing.assert_allclose(training["train_loss"].values, [100.0, 99.0, 98.0, 97.0])
        np.testing.assert_allclose(training["beta"].values, [0.5, 1.0, 1.0, 1.0])
        valid = training["valid_elbo"].values
        assert np.isnan(valid[0]) and np.allclose(valid[1:], [-99.0, -98.0, -97.0])
    with pytest.raises(ValueError, match="khat must have shape"):
        diagnostics.vae_inference_data(log_px, khat[:3])
    with pytest.raises(ValueError, match="num_samples"):
        diagnostics.vae_inference_data(log_px, khat, log_weights=log_w, num_samples=10)


def test_held_out_elpd_is_the_summed_test_log_likelihood():
    log_px, khat, runs = _held_out_runs()
    result = diagnostics.elpd(runs["vamp"])
    native = _native(result)
    x = log_px["vamp"]
    # the test images were never fitted: their summed log p(x) is the out-of-sample elpd,
    # its se sqrt(N) sd (N - 1 denominator: se / N is the mean's standard error), p = 0
    assert native["elpd"] == pytest.approx(x.sum(), rel=1e-12)
    assert native["se"] == pytest.approx(np.sqrt(NUM_TEST) * np.std(x, ddof=1), rel=1e-12)
    assert native["p"] == 0.0
    np.testing.assert_array_equal(native["elpd_i"].values, x)
    np.testing.assert_array_equal(native["pareto_k"].values, khat["vamp"])
    np.testing.assert_array_equal(native["pareto_k"]["example"].values, EXAMPLES)
    assert native["good_k"] == pytest.approx(GOOD_K)
    assert native["warning"] == bool((khat["vamp"] > GOOD_K).any())
    assert native["kind"] == ("held_out" if MODERN else "loo")  # 0.x knows loo and waic only
    assert str(result).startswith(f"Held-out elpd of {NUM_TEST} test examples "
                                  f"({NUM_SAMPLES} importance samples each)")
    # the ELPD object survives pickling (its class is built with ArviZ, found by name)
    back = pickle.loads(pickle.dumps(result))
    assert type(back) is type(result) and _native(back)["elpd"] == native["elpd"]
    # one ELPD per model for a run; ELPD objects pass through
    assert set(diagnostics.elpd(runs)) == set(runs)
    assert diagnostics.elpd(result) is result


def _stacking_weights(log_px):
    """Stacking (Yao et al. 2018) solved independently: maximise
    sum_n log sum_k w_k p_k(x_n) over the simplex, w = softmax(a)."""
    values = np.stack(list(log_px.values()), axis=1)  # (N, K)

    def negative_score(a):
        return -logsumexp(values + np.log(softmax(a))[None, :], axis=1).sum()

    a = optimize.minimize(negative_score, np.zeros(values.shape[1]), method="BFGS").x
    return dict(zip(log_px, softmax(a))), -negative_score(a)


def test_compare_ranks_held_out_models_by_their_paired_differences():
    log_px, khat, runs = _held_out_runs()
    table = diagnostics.compare(runs)
    totals = {name: x.sum() for name, x in log_px.items()}
    best = max(totals, key=totals.get)
    assert best == "vamp" and list(table.index) == sorted(totals, key=totals.get)[::-1]
    assert table["rank"].tolist() == [0, 1, 2]
    for name, x in log_px.items():
        row = table.loc[name]
        assert row["elpd_loo"] == pytest.approx(totals[name], rel=1e-12)
        assert row["se"] == pytest.approx(np.sqrt(NUM_TEST) * np.std(x, ddof=1), rel=1e-12)
        assert row["p_loo"] == 0.0
        diff = log_px[best] - x  # paired, image by image
        assert row["elpd_diff"] == pytest.approx(diff.sum(), abs=1e-9)
        # ArviZ's dse: sqrt(N var(diff)) with N in the denominator, in both versions
        assert row["dse"] == pytest.approx(np.sqrt(NUM_TEST * np.var(diff)), abs=1e-9)
        assert row["warning"] == bool((khat[name] > GOOD_K).any())
    # pairing matters: vamp's lead over standard is many paired standard errors, where the
    # unpaired se of the difference of the totals would not call it clear
    lead, se = table.loc["standard", "elpd_diff"], table["se"]
    assert lead > 8 * table.loc["standard", "dse"]
    assert lead < 2 * np.hypot(se["standard"], se["vamp"])
    # stacking weights: the optimum of the stacking score, found here independently
    weights, best_score = _stacking_weights(log_px)
    score = logsumexp(np.stack([log_px[n] for n in table.index], axis=1)
                      + np.log(np.maximum(table["weight"].values, 1e-300)), axis=1).sum()
    assert table["weight"].sum() == pytest.approx(1.0)
    assert score == pytest.approx(best_score, abs=1e-4)
    for name in log_px:
        assert table.loc[name, "weight"] == pytest.approx(weights[name], abs=0.02)
    # ArviZ's own compare of the ELPD objects gives the same table
    native = _native_compare(diagnostics.elpd(runs))
    for column in ("elpd_loo", "elpd_diff", "dse", "se", "weight"):
        np.testing.assert_allclose(native.loc[table.index, column], table[column],
                                   rtol=1e-9, atol=1e-6)


def test_compare_weights_survive_log_densities_of_thousands_of_nats():
    # Frey Faces' images score about -2300 nats: exp() of that is 0 in float64, and
    # stacking computed from exp(elpd_i) would take log(0). Shifting each image's values
    # by their maximum over the models leaves weights, elpd_diff and dse unchanged
    _, _, runs = _held_out_runs()
    _, _, shifted = _held_out_runs(offset=-3000.0)
    table, far = diagnostics.compare(runs), diagnostics.compare(shifted)  # warnings: errors
    assert list(far.index) == list(table.index)
    for column in ("weight", "elpd_diff", "dse", "se"):
        np.testing.assert_allclose(far[column], table[column], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(far["elpd_loo"], table["elpd_loo"] - 3000.0 * NUM_TEST)


def test_loo_of_a_held_out_evaluation_is_its_held_out_elpd():
    log_px, khat, runs = _held_out_runs()
    result = diagnostics.loo(runs["mog"])
    assert result["elpd_loo"] == pytest.approx(log_px["mog"].sum(), rel=1e-12)
    assert result["p_loo"] == 0.0
    np.testing.assert_array_equal(result["pareto_k"], khat["mog"])
    assert set(diagnostics.loo(runs)) == set(runs)  # a run: one result per model


@pytest.mark.parametrize("call", ["summary", "loo", "waic", "compare", "plot_forest"])
def test_arviz_calls_on_a_held_out_file_raise_instead_of_reading_draws(tmp_path, call):
    # a held-out evaluation has no posterior draws: each of ArviZ's calls that needs them
    # raises (none returns NaN or a number from a fake draw); the elpd, its comparison and
    # its k-hats are ArviZ's ELPD route, tested below
    if call == "waic" and MODERN:
        pytest.skip("ArviZ 1.x has no waic")
    _, _, runs = _held_out_runs()
    path = diagnostics.save(runs["vamp"], tmp_path / "vamp.nc")
    data = az.from_netcdf(str(path))
    calls = {"summary": lambda: az.summary(data), "loo": lambda: az.loo(data),
             "waic": lambda: az.waic(data),
             "compare": lambda: az.compare({"a": data, "b": az.from_netcdf(str(path))}),
             "plot_forest": lambda: az.plot_forest(data)}
    with warnings.catch_warnings():
        # ArviZ 0.x's summary warns "Selecting first found group" before it raises
        warnings.filterwarnings("ignore", message="Selecting first found group")
        with pytest.raises((TypeError, ValueError, KeyError)):
            calls[call]()
    # what to use instead is in the file itself (and in ArviZ 1.x's message, which prints
    # the DataTree with its root attributes)
    assert data.attrs["elpd"] == "ppl_vae.diagnostics.elpd(idata), not az.loo"
    assert "diagnostics.elpd" in data.attrs["note"]


def test_arviz_draws_the_held_out_comparison_and_khats(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, khat, runs = _held_out_runs()
    elpds = diagnostics.elpd(runs)
    table = _native_compare(elpds)
    with warnings.catch_warnings():
        # ArviZ 0.23's plots pass a dict to matplotlib 3.11's normalize_kwargs and call
        # sort_values(inplace=True): deprecations in ArviZ, not in our data
        warnings.filterwarnings("ignore", message=r"Passing a dict or None as alias_mapping")
        warnings.filterwarnings("ignore", message=r"The inplace keyword in DataFrame")
        if MODERN:
            az.plot_compare(az.compare(elpds), backend="matplotlib")
            collection = az.plot_khat(elpds["vamp"], backend="matplotlib")
            assert collection is not None
        else:
            assert az.plot_compare(table) is not None
            ax = az.plot_khat(elpds["vamp"])
            # one point per test image, at its k-hat
            np.testing.assert_allclose(np.sort(ax.collections[0].get_offsets()[:, 1]),
                                       np.sort(khat["vamp"]))
    figure = diagnostics.plot_compare(diagnostics.compare(runs), tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 0
    for source in (elpds["vamp"], runs["vamp"]):  # our own k-hat figure takes both
        fig = diagnostics.plot_khat(source)
        np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets()[:, 1],
                                   khat["vamp"])
        plt.close(fig)
    plt.close("all")
    with pytest.raises(ValueError, match="plot_compare"):
        diagnostics.plot_forest(runs["vamp"], ["x"], tmp_path / "forest.png")
    del figure


@pytest.mark.parametrize("call", ["summary", "loo", "waic", "compare"])
def test_arviz_calls_on_a_run_file_cannot_pool_the_models(tmp_path, call):
    if call == "waic" and MODERN:
        pytest.skip("ArviZ 1.x has no waic")
    _, _, runs = _held_out_runs()
    path = diagnostics.save_runs(runs, tmp_path)
    assert path == tmp_path / "inference_data.nc"
    data = az.from_netcdf(str(path))
    # the file's root holds no data: ArviZ finds nothing to read as draws or observations
    # (0.x: no groups; 1.x: one child per model)
    assert diagnostics.group_names(data) == ([*runs] if MODERN else [])
    calls = {"summary": lambda: az.summary(data), "loo": lambda: az.loo(data),
             "waic": lambda: az.waic(data),
             "compare": lambda: az.compare({"a": data, "b": data})}
    with pytest.raises((TypeError, ValueError)):
        calls[call]()


def test_a_run_file_reads_back_per_model(tmp_path):
    log_px, khat, runs = _held_out_runs()
    path = diagnostics.save_runs(runs, tmp_path / "run.nc")
    back = diagnostics.load(path)
    assert list(back) == list(runs)
    for name in runs:
        imp = diagnostics.group(back[name], "importance")
        np.testing.assert_array_equal(imp["log_likelihood"].values, log_px[name])
        np.testing.assert_array_equal(imp["example"].values, EXAMPLES)
        assert back[name].attrs["prior"] == name
    # a run's comparison from the file alone is the in-memory one
    np.testing.assert_array_equal(diagnostics.compare(back)["elpd_loo"],
                                  diagnostics.compare(runs)["elpd_loo"])
    # one model read with ArviZ alone, as the file's note says
    if MODERN:
        one = az.from_netcdf(str(path))["vamp"]
    else:
        one = az.InferenceData.from_netcdf(str(path), base_group="vamp")
    assert _native(diagnostics.elpd(one))["elpd"] == pytest.approx(log_px["vamp"].sum())
    with pytest.raises(TypeError, match="load"):  # the whole file is not one model
        diagnostics.elpd(az.from_netcdf(str(path)))
    with pytest.raises(ValueError, match="names"):
        diagnostics.save_runs({"a/b": runs["vamp"]}, tmp_path / "bad.nc")
    with pytest.raises(FileNotFoundError):
        diagnostics.load(tmp_path / "missing.nc")


def test_a_run_file_of_mixtures_compares_like_the_fits(tmp_path):
    X = _wine()
    fits = {f"K={k}": diagnostics.gmm_inference_data(_fit(X, k, n_init=1), X, num_samples=200,
                                                     random_state=0) for k in (1, 2)}
    path = diagnostics.save_runs(fits, tmp_path / "gmm_runs.nc")
    data = az.from_netcdf(str(path))
    with pytest.raises(TypeError):  # nothing at the root for PSIS-LOO to pool
        az.loo(data)
    back = diagnostics.load(path)
    assert set(diagnostics.group_names(back["K=2"])) >= {"posterior", "log_likelihood"}
    np.testing.assert_allclose(diagnostics.compare(back)["elpd_loo"],
                               diagnostics.compare(fits)["elpd_loo"], rtol=1e-12)
    # a failed write leaves the previous file whole and no partial file behind
    with pytest.raises(TypeError, match="itself a run"):
        diagnostics.save_runs({"K=1": fits["K=1"], "both": data}, path)
    assert list(diagnostics.load(path)) == ["K=1", "K=2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gmm_runs.nc"]


def _legacy_run_file(path, log_px, khat):
    """The layout written before: log p(x) as log_likelihood/x (chain=1, draw=1, example),
    k-hat in importance, priors stacked along a leading dim."""
    import xarray as xr

    groups = {}
    for name in ("log_likelihood", "importance"):
        parts = []
        for prior in log_px:
            if name == "log_likelihood":
                var = (("chain", "draw", "example"), log_px[prior][None, None])
            else:
                var = ("example", khat[prior])
            parts.append(xr.Dataset({"x" if name == "log_likelihood" else "khat": var},
                                    coords={"example": EXAMPLES}))
        groups[name] = xr.concat(parts, dim=xr.Variable("prior", list(log_px)).to_index())
    data = (xr.DataTree.from_dict(groups) if MODERN else az.InferenceData(**groups))
    data.to_netcdf(str(path), engine="h5netcdf")
    return path


def test_the_legacy_run_file_is_read_per_model(tmp_path):
    log_px, khat, _ = _held_out_runs()
    path = _legacy_run_file(tmp_path / "inference_data.nc", log_px, khat)
    if not MODERN:
        # what the issue found: az.waic pools every prior's images into one model
        pooled = az.waic(az.from_netcdf(str(path)))
        assert pooled["n_data_points"] == 3 * NUM_TEST
        assert pooled["elpd_waic"] == pytest.approx(sum(x.sum() for x in log_px.values()))
    back = diagnostics.load(tmp_path)
    assert list(back) == list(log_px)
    table = diagnostics.compare(back)
    for name, x in log_px.items():
        assert table.loc[name, "elpd_loo"] == pytest.approx(x.sum(), rel=1e-12)
        np.testing.assert_array_equal(diagnostics.loo(back[name])["pareto_k"], khat[name])


AISResult = namedtuple("AISResult", "log_likelihood log_weights stderr acceptance step_size")


def _ais(rng, log_px, num_chains):
    log_w = log_px[:, None] + rng.normal(scale=0.3, size=(log_px.size, num_chains))
    return AISResult(logsumexp(log_w, axis=1) - np.log(num_chains), log_w,
                     np.full(log_px.size, 0.1), np.full(log_px.size, 0.65),
                     np.full(log_px.size, 0.02))


def test_add_ais_and_its_elpd(tmp_path):
    rng = np.random.default_rng(8)
    log_px, _, runs = _held_out_runs()
    for name, num_chains in (("standard", 16), ("vamp", 40)):
        ais = _ais(rng, log_px[name] + 1.0, num_chains)
        diagnostics.add_ais(runs[name], ais, {"num_steps": 500, "start": "guide"})
    del runs["mog"]
    back = diagnostics.load(diagnostics.save_runs(runs, tmp_path))
    group = diagnostics.group(back["vamp"], "ais")
    # AIS chains are not ArviZ's MCMC chains: their own dim name
    assert group["log_weights"].dims == ("example", "ais_chain")
    assert group.attrs["num_chains"] == 40 and group.attrs["num_steps"] == 500
    assert group.attrs["prior"] == "vamp"
    np.testing.assert_array_equal(group["example"].values, EXAMPLES)
    for name, num_chains in (("standard", 16), ("vamp", 40)):
        ais_ll = diagnostics.group(back[name], "ais")["log_likelihood"].values
        native = _native(diagnostics.elpd(back[name], estimator="ais"))
        assert native["elpd"] == pytest.approx(ais_ll.sum(), rel=1e-12)
        khat = native["pareto_k"].values
        if num_chains < diagnostics.MIN_KHAT_SAMPLES:
            assert np.isinf(khat).all() and native["warning"]  # too few chains to judge
        else:
            log_w = diagnostics.group(back[name], "ais")["log_weights"].values
            np.testing.assert_allclose(khat, diagnostics.psis_khat(log_w))
    table = diagnostics.compare(back, estimator="ais")
    assert list(table.index) == ["vamp", "standard"]
    with pytest.raises(ValueError, match="add_ais"):
        diagnostics.elpd(diagnostics.vae_inference_data([-1.0, -2.0], [0.1, 0.2]),
                         estimator="ais")
    with pytest.raises(ValueError, match="shape"):
        diagnostics.add_ais(runs["vamp"], _ais(rng, log_px["vamp"][:5], 16))


def test_compare_refuses_mixed_evaluations_and_different_test_sets():
    _, _, runs = _held_out_runs()
    X = _wine()
    gmm = diagnostics.gmm_inference_data(_fit(X, 2, n_init=1), X, num_samples=200,
                                         random_state=0)
    with pytest.raises(ValueError, match="held-out"):
        diagnostics.compare({"vae": runs["vamp"], "gmm": gmm})
    other = diagnostics.vae_inference_data(np.full(NUM_TEST, -90.0), np.zeros(NUM_TEST),
                                           coords={"example": EXAMPLES + 1})
    with pytest.raises(ValueError, match="different test examples"):
        diagnostics.compare({"vamp": runs["vamp"], "other": other})
    with pytest.raises(TypeError, match="load"):
        diagnostics.compare("out/inference_data.nc")
    with pytest.raises(TypeError, match="stacks 3 models"):
        diagnostics.elpd(diagnostics.concat(runs, dim="prior"))


# --------------------------------------------------------------------------------------
# Gaussian mixtures: posterior draws
# --------------------------------------------------------------------------------------


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
    # ArviZ's own calls read it as the draws it holds
    summary = az.summary(loaded, var_names=["weights"], kind="stats")
    np.testing.assert_allclose(summary["mean"].values, draws["weights"].mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(summary["sd"].values, draws["weights"].std(axis=0, ddof=1),
                               atol=1e-3)
    # iid draws from q: the effective sample size is about S (its sd over seeds is ~10%)
    ess = az.summary(loaded, var_names=["weights"], kind="diagnostics")["ess_bulk"].values
    assert np.all((ess > 0.7 * 300) & (ess < 1.4 * 300))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Estimated shape parameter of Pareto")
        native = az.loo(loaded, pointwise=True)
    ours = diagnostics.loo(loaded)
    assert ours["elpd_loo"] == pytest.approx(native.elpd if MODERN else native["elpd_loo"])
    # PSIS-LOO sits below the in-sample lppd by p_loo > 0 (here a few parameters' worth)
    lppd = (logsumexp(ll.values[0], axis=0) - np.log(300)).sum()
    assert ours["elpd_loo"] == pytest.approx(lppd - ours["p_loo"], rel=1e-9)
    assert 2 < ours["p_loo"] < 20
    if not MODERN:  # WAIC, which 1.x dropped, agrees with PSIS-LOO on a regular model
        assert az.waic(loaded)["elpd_waic"] == pytest.approx(ours["elpd_loo"], abs=1.0)


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



class _StubMixture:
    """What gmm_inference_data reads from a fitted mixture, for every covariance_type of
    scikit-learn (ppl_vae.mixture may offer only 'full')."""

    def __init__(self, covariance_type, num_components=3, dim=2):
        self.covariance_type = covariance_type
        self.means_ = np.zeros((num_components, dim))
        self.lower_bound_ = -1.0

    def sample_posterior(self, num_samples, random_state=None):
        rng = np.random.default_rng(random_state)
        (k, d), s = self.means_.shape, num_samples
        shape = {"full": (s, k, d, d), "tied": (s, d, d), "diag": (s, k, d),
                 "spherical": (s, k)}[self.covariance_type]
        return {"weights": rng.dirichlet(np.ones(k), size=s),
                "means": rng.normal(size=(s, k, d)), "covariances": rng.uniform(1, 2, shape)}

    def log_likelihood_draws(self, X, draws):
        return np.zeros((len(draws["weights"]), len(X)))

    def log_prior_draws(self, draws):
        return np.zeros(len(draws["weights"]))

    log_q_draws = log_prior_draws


@pytest.mark.parametrize("covariance_type, dims", [
    ("full", ("component", "feature", "feature2")), ("tied", ("feature", "feature2")),
    ("diag", ("component", "feature")), ("spherical", ("component",))])
def test_gmm_inference_data_names_the_dims_of_every_covariance_type(covariance_type, dims):
    X = np.zeros((5, 2))
    idata = diagnostics.gmm_inference_data(_StubMixture(covariance_type), X, num_samples=4,
                                           random_state=0)
    covariances = diagnostics.group(idata, "posterior")["covariances"]
    assert covariances.dims == ("chain", "draw", *dims)
    sizes = {"component": 3, "feature": 2, "feature2": 2}
    assert covariances.shape == (1, 4, *(sizes[d] for d in dims))
    assert idata.attrs["covariance_type"] == covariance_type
    model = _StubMixture(covariance_type)
    model.covariance_type = "banded"
    with pytest.raises(ValueError, match="covariance_type"):
        diagnostics.gmm_inference_data(model, X, num_samples=4)



def test_importing_the_package_does_not_import_arviz():
    code = ("import sys, ppl_vae, ppl_vae.diagnostics; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'arviz', 'torch', 'jax'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_concat_stacks_held_out_fits_for_xarray_and_refuses_draws(tmp_path):
    hist = [{"epoch": e, "beta": 1.0, "train_loss": 10.0 - e, "valid_elbo": -9.0 + e,
             "seconds": 1.0} for e in (1, 2, 3)]
    a = diagnostics.vae_inference_data(np.array([-1.0, -2.0]), np.array([0.1, 0.9]), hist[:1])
    b = diagnostics.vae_inference_data(np.array([-3.0, -4.0]), np.array([0.2, 0.3]), hist)
    both = diagnostics.concat({"standard": a, "vamp": b}, dim="prior")
    diagnostics.save(both, tmp_path / "both.nc")
    back = az.from_netcdf(str(tmp_path / "both.nc"))
    np.testing.assert_array_equal(
        diagnostics.group(back, "importance")["log_likelihood"].sel(prior="vamp").values,
        [-3.0, -4.0])
    np.testing.assert_array_equal(
        diagnostics.group(back, "importance")["khat"].sel(prior="standard").values, [0.1, 0.9])
    # the shorter history is padded with NaN after its last step
    loss = diagnostics.group(back, "training")["train_loss"].sel(prior="standard").values
    assert loss[0] == 9.0 and np.isnan(loss[1:]).all()
    with pytest.raises(ValueError, match="at least one"):
        diagnostics.concat({})
    # draws stacked along a model dim would be pooled by az.waic / az.summary: refused
    X = _wine()
    gmm = {k: diagnostics.gmm_inference_data(_fit(X, k, n_init=1), X, num_samples=50,
                                             random_state=0) for k in (2, 3)}
    with pytest.raises(ValueError, match="save_runs"):
        diagnostics.concat(gmm, dim="n_components")


def test_gmm_inference_data_with_dirichlet_process_weights_is_warning_free():
    from ppl_vae.diagnostics import gmm_inference_data
    from ppl_vae.mixture import BayesianGaussianMixture

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(150, 2)), rng.normal(size=(150, 2)) + 4])
    model = BayesianGaussianMixture(n_components=6, random_state=0,
                                    weight_concentration_prior_type="dirichlet_process").fit(X)
    idata = gmm_inference_data(model, X, num_samples=300, random_state=0)
    assert np.isfinite(idata.log_likelihood.x.values).all()
