"""ppl_vae.diagnostics gives the same answers under ArviZ 0.x and 1.x.

CI runs this file under both (0.23 on Python 3.11, 1.x on 3.13). Each test checks one
installed version against an independent reference (a closed form or the exact Pareto
shape) and against ``data/diagnostics_reference.json``, the values ArviZ 0.23 gave for the
same inputs (written by ``data/make_diagnostics_reference.py``). The inputs are
deterministic: quantiles of known laws, shuffled by the legacy ``RandomState``, whose
streams NumPy keeps frozen across versions.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("arviz")

from ppl_vae import diagnostics

REFERENCE = json.loads((Path(__file__).parent / "data" / "diagnostics_reference.json")
                       .read_text())
SHAPES = (0.2, 0.5, 0.8, 1.2)
NUM_WEIGHTS = 5000


def pareto_log_weights(k, num=NUM_WEIGHTS):
    """log of the exact quantiles of a generalised Pareto law of shape k (plus a tiny
    offset so that no weight is 0), in a fixed shuffled order."""
    u = (np.arange(num) + 0.5) / num
    w = stats.genpareto.ppf(u, c=k) + 1e-3
    return np.log(w[np.random.RandomState(0).permutation(num)])


def normal_model_fit(sigma, num_draws=4000):
    """y_n ~ N(theta, sigma^2), theta ~ N(0, 10^2), on 40 fixed observations: posterior
    draws of theta (exact quantiles, shuffled) and the pointwise log-likelihood (S, N),
    with the exact leave-one-out elpd in closed form."""
    y = np.random.RandomState(1).normal(1.0, 1.0, size=40)
    prec = 1 / 100 + y.size / sigma**2
    mean = y.sum() / sigma**2 / prec
    u = (np.arange(num_draws) + 0.5) / num_draws
    theta = mean + stats.norm.ppf(u)[np.random.RandomState(2).permutation(num_draws)] / np.sqrt(
        prec)
    log_lik = stats.norm.logpdf(y[None, :], theta[:, None], sigma)
    prec_loo = 1 / 100 + (y.size - 1) / sigma**2
    mean_loo = (y.sum() - y) / sigma**2 / prec_loo
    exact = stats.norm.logpdf(y, mean_loo, np.sqrt(sigma**2 + 1 / prec_loo)).sum()
    data = diagnostics._arviz().from_dict(
        {"posterior": {"theta": theta[None]}, "log_likelihood": {"y": log_lik[None]}},
        coords={"obs": np.arange(y.size)}, dims={"y": ["obs"]}, attrs={})
    return data, float(exact)


@pytest.mark.parametrize("k", SHAPES)
def test_khat_recovers_the_pareto_shape(k):
    khat = diagnostics.psis_khat(pareto_log_weights(k)[None])[0]
    # the fit shrinks k toward 0.5 with weight 10 / (M + 10), M the tail length
    # (3 sqrt(S) = 212 draws)
    tail = np.floor(3 * np.sqrt(NUM_WEIGHTS))
    expected = k + 10 / (tail + 10) * (0.5 - k)
    assert abs(khat - expected) < 0.02
    # ArviZ 0.23's value for the same input: the 1.x tail is one draw shorter
    assert khat == pytest.approx(REFERENCE["khat"][str(k)], abs=2e-3)


def test_khat_too_few_samples_is_inf_in_every_version():
    log_w = np.random.RandomState(3).normal(size=(2, diagnostics.MIN_KHAT_SAMPLES - 1))
    assert np.all(np.isinf(diagnostics.psis_khat(log_w)))
    for num in (diagnostics.MIN_KHAT_SAMPLES, 100):
        # never NaN: a tail that cannot be fitted is inf (unreliable), in both versions
        assert not np.isnan(diagnostics.psis_khat(
            np.random.RandomState(3).normal(size=(2, num)))).any()


def test_loo_matches_exact_leave_one_out():
    data, exact = normal_model_fit(sigma=1.0)
    result = diagnostics.loo(data)
    # PSIS-LOO of a well-behaved posterior: within a few hundredths of a nat of the exact
    # value (4000 draws; every pointwise k-hat small)
    assert result["elpd_loo"] == pytest.approx(exact, abs=0.05)
    assert result["pareto_k"].max() < 0.5
    assert result["elpd_loo"] == pytest.approx(REFERENCE["loo"]["elpd_loo"], abs=0.01)
    assert result["p_loo"] == pytest.approx(REFERENCE["loo"]["p_loo"], abs=0.01)
    # the standard error is sqrt(N) * sd of the pointwise elpd: ArviZ 0.x takes the sd with
    # N - 1 in the denominator, 1.x with N, so the two differ by sqrt(N / (N - 1))
    ratio = result["se"] / REFERENCE["loo"]["se"]
    assert min(abs(ratio - 1), abs(ratio - np.sqrt(40 / 39))) < 1e-3


def test_compare_has_the_same_table_in_every_version():
    (right, exact_right), (wrong, exact_wrong) = (normal_model_fit(1.0),
                                                  normal_model_fit(2.0))
    table = diagnostics.compare({"right": right, "wrong": wrong})
    assert list(table.columns[:8]) == ["rank", "elpd_loo", "p_loo", "elpd_diff", "weight",
                                       "se", "dse", "warning"]
    assert list(table.index) == ["right", "wrong"]
    assert table["rank"].tolist() == [0, 1]
    # unrounded, with 0.x's sign: elpd_diff = best elpd - this model's elpd >= 0
    diff = table.loc["right", "elpd_loo"] - table.loc["wrong", "elpd_loo"]
    assert table.loc["wrong", "elpd_diff"] == pytest.approx(diff, rel=1e-9)
    assert table.loc["right", "elpd_diff"] == 0.0
    assert diff == pytest.approx(exact_right - exact_wrong, abs=0.1)
    assert diff == pytest.approx(REFERENCE["compare"]["elpd_diff"], abs=0.01)
    ratio = table.loc["wrong", "dse"] / REFERENCE["compare"]["dse"]
    assert min(abs(ratio - 1), abs(ratio - np.sqrt(40 / 39))) < 1e-3  # as for se
    assert not table["warning"].any()
    assert table["weight"].sum() == pytest.approx(1.0)


def held_out_runs():
    """Two priors' per-image test log p(x) on 50 images (normal quantiles, shuffled) and
    their k-hats, as held-out evaluations with S = 2000 importance samples."""
    u = (np.arange(50) + 0.5) / 50
    base = -90.0 + 5.0 * stats.norm.ppf(u)[np.random.RandomState(4).permutation(50)]
    gain = 0.5 + 2.5 * stats.norm.ppf(u)[np.random.RandomState(5).permutation(50)]
    log_px = {"standard": base, "vamp": base + gain}
    khat = {"standard": np.linspace(0.3, 0.9, 50), "vamp": np.linspace(0.2, 0.6, 50)}
    return log_px, {name: diagnostics.vae_inference_data(log_px[name], khat[name],
                                                         num_samples=2000)
                    for name in log_px}


def test_held_out_compare_has_the_same_table_in_every_version(tmp_path):
    log_px, runs = held_out_runs()
    back = diagnostics.load(diagnostics.save_runs(runs, tmp_path))
    table = diagnostics.compare(back)
    assert list(table.index) == ["vamp", "standard"]
    diff = log_px["vamp"] - log_px["standard"]
    # closed forms: totals, sqrt(N) sd (N - 1) for se, ArviZ's sqrt(N var) (N) for dse
    assert table.loc["standard", "elpd_diff"] == pytest.approx(diff.sum(), rel=1e-12)
    assert table.loc["standard", "dse"] == pytest.approx(np.sqrt(50 * np.var(diff)), rel=1e-12)
    for name, x in log_px.items():
        assert table.loc[name, "elpd_loo"] == pytest.approx(x.sum(), rel=1e-12)
        assert table.loc[name, "se"] == pytest.approx(np.sqrt(50) * np.std(x, ddof=1),
                                                      rel=1e-12)
    # k-hat threshold min(1 - 1/log10(2000), 0.7) = 0.697: standard's top k-hats exceed it
    assert table["warning"].tolist() == [False, True]
    reference = REFERENCE["held_out"]
    for column in ("elpd_loo", "se", "elpd_diff", "dse"):
        np.testing.assert_allclose(table[column], reference[column], rtol=1e-12)
    # the stacking optimum, up to the optimiser's tolerance across SciPy versions
    np.testing.assert_allclose(table["weight"], reference["weight"], atol=1e-4)
    printed = str(diagnostics.elpd(back["vamp"]))
    assert printed.startswith("Held-out elpd of 50 test examples (2000 importance samples")


def test_netcdf_round_trip_keeps_values_and_attrs(tmp_path):
    data, _ = normal_model_fit(1.0)
    path = diagnostics.save(data, tmp_path / "fit.nc")
    back = diagnostics.load(path)
    assert diagnostics.group_names(back) == diagnostics.group_names(data)
    np.testing.assert_array_equal(diagnostics.group(back, "log_likelihood")["y"].values,
                                  diagnostics.group(data, "log_likelihood")["y"].values)
    assert diagnostics.loo(back)["elpd_loo"] == diagnostics.loo(data)["elpd_loo"]
