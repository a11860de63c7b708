"""Active units (Burda et al. 2016) on posterior means with known per-dimension variances."""

import subprocess
import sys

import numpy as np
import pytest

from ppl_vae.metrics import active_unit_variances, active_units


def test_active_units_known_variances():
    rng = np.random.default_rng(0)
    n = 20000
    sd = np.array([1.0, 1.0, 1.0, 1e-2, 1e-2])  # variances 1, 1, 1, 1e-4, 1e-4
    means = rng.standard_normal((n, 5)) * sd + rng.standard_normal(5)  # offsets do not matter
    var = active_unit_variances(means)
    assert var.shape == (5,) and var.dtype == np.float64
    # The sample variance of n normals has relative sd sqrt(2 / n) = 1%: allow 5 sd.
    np.testing.assert_allclose(var, sd**2, rtol=5 * np.sqrt(2 / n))
    assert active_units(means) == 3
    assert isinstance(active_units(means), int)
    assert active_units(means, threshold=1e-5) == 5
    assert active_units(means, threshold=2.0) == 0


def test_active_unit_variances_is_population_variance():
    means = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    np.testing.assert_allclose(active_unit_variances(means), [8 / 3, 0.0])
    assert active_units(means.tolist()) == 1  # lists are accepted


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((1, 3)), np.zeros((4, 0)),
                                 np.array([[0.0, np.nan], [1.0, 2.0]])])
def test_bad_means(bad):
    with pytest.raises(ValueError, match="posterior_means"):
        active_units(bad)


@pytest.mark.parametrize("threshold", [-0.1, float("nan"), "0.01", True])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
        active_units(np.zeros((3, 2)), threshold=threshold)


def test_metrics_imports_no_backend():
    code = ("import sys, ppl_vae.metrics; "
            "assert not {'torch', 'jax'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
