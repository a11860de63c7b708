"""scikit-learn's own mixture tests, run on ppl_vae's estimators.

The installed scikit-learn's ``sklearn/mixture/tests/test_gaussian_mixture.py``,
``test_bayesian_mixture.py`` and ``test_mixture.py`` are copied to a temporary directory,
their imports of ``GaussianMixture`` and ``BayesianGaussianMixture`` swapped to
``ppl_vae.mixture``, and run by pytest in one subprocess (scikit-learn's ``conftest`` is
loaded as a plugin for its fixtures). Nothing of scikit-learn's tests is stored in this
repository.

With scikit-learn 1.9.1 the files hold 77 tests that run on a CPU without an array API
library (the other 291 are scikit-learn's array-API tests, skipped there as for sklearn's
own estimators). ``MIN_PASSED`` of them must pass, and a failure is allowed only for the
tests in ``BY_DESIGN``, which check what ppl_vae deliberately does differently.
"""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sklearn = pytest.importorskip("sklearn")

FILES = ("test_gaussian_mixture.py", "test_bayesian_mixture.py", "test_mixture.py")
# the import line of each file and its replacement
SWAPS = {
    "from sklearn.mixture import GaussianMixture\n":
        "from ppl_vae.mixture import GaussianMixture\n",
    "from sklearn.mixture import BayesianGaussianMixture\n":
        "from ppl_vae.mixture import BayesianGaussianMixture\n",
    "from sklearn.mixture import BayesianGaussianMixture, GaussianMixture\n":
        "from ppl_vae.mixture import BayesianGaussianMixture, GaussianMixture\n",
}
MIN_PASSED = 75  # of 77 with scikit-learn 1.9.1 (the goal of issue 22 was 68)
BY_DESIGN = {
    "test_bayesian_mixture.py::test_compare_covar_type":
        "checks scikit-learn's tied and spherical updates (the tied W^-1 the average of the "
        "full ones with nu_0 + N / K degrees of freedom, the spherical one the mean of the "
        "diagonal ones); ours are the exact variational updates of the tied and spherical "
        "models, whose full ELBO never decreases: tied sums the components' scatter with "
        "nu_0 + N degrees of freedom, spherical counts D observations per point",
    "test_gaussian_mixture.py::test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters":
        "counts the calls of scikit-learn's private "
        "sklearn.mixture._gaussian_mixture._estimate_gaussian_parameters through a mock; "
        "ppl_vae never calls scikit-learn's private functions",
}


def _copy_with_our_estimators(directory):
    source = Path(sklearn.__file__).parent / "mixture" / "tests"
    for name in FILES:
        text = (source / name).read_text()
        swapped = 0
        for old, new in SWAPS.items():
            swapped += text.count(old)
            text = text.replace(old, new)
        assert swapped == 1, f"{name}: expected one estimator import to swap, found {swapped}"
        assert not re.search(r"^from sklearn\.mixture import", text, re.MULTILINE), name
        (directory / name).write_text(text)
    # an empty configuration: none of this repository's settings (filterwarnings = error)
    (directory / "pytest.ini").write_text("[pytest]\n")


def _outcomes(report):
    """``{"file.py::test_name[params]": "passed" | "failed" | "skipped"}``."""
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        name = f"{case.get('classname').split('.')[-1]}.py::{case.get('name')}"
        outcomes[name] = ("skipped" if "skipped" in kinds
                          else "failed" if kinds & {"failure", "error"} else "passed")
    return outcomes


def test_sklearn_mixture_tests_pass_on_ours(tmp_path):
    _copy_with_our_estimators(tmp_path)
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items()
           if k not in ("SKLEARN_TESTS_GLOBAL_RANDOM_SEED", "SKLEARN_RUN_FLOAT32_TESTS")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "sklearn.conftest", "-p", "no:cacheprovider",
         "-q", "--junitxml", str(report), *FILES],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes = _outcomes(report)
    passed = sorted(k for k, v in outcomes.items() if v == "passed")
    failed = sorted(k for k, v in outcomes.items() if v == "failed")
    unexpected = [name for name in failed if name.split("[")[0] not in BY_DESIGN]
    assert not unexpected, (f"failures not listed in BY_DESIGN: {unexpected}\n"
                            + proc.stdout[-6000:])
    assert len(passed) >= MIN_PASSED, (len(passed), failed)
