"""Every example script runs end to end (tiny budgets) and writes what its docstring promises.

``test_every_example_is_smoke_tested`` fails when a new script in examples/ has no entry in
``SMOKE`` below.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# script -> fast flags (the output directory is appended as --out).
SMOKE = {
    "vamp_mnist.py": ["--prior", "standard", "mog", "vamp", "vamp-data", "--epochs", "2",
                      "--max-train", "300", "--max-test", "20", "--eval-samples", "40",
                      "--num-pseudo", "20", "--hidden", "32", "--warmup", "1",
                      "--latent-gmm", "5", "--no-progress"],
    "gmm_wine.py": ["--max-components", "3", "--n-init", "1", "--num-posterior-samples", "200"],
    "compose_priors.py": ["--epochs", "1", "--num-train", "200", "--num-test", "10",
                          "--eval-samples", "20"],
}


def _run(script, flags, out):
    cmd = [sys.executable, str(REPO / "examples" / script), *flags, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_every_example_is_smoke_tested():
    scripts = {p.name for p in (REPO / "examples").glob("*.py")}
    assert scripts <= set(SMOKE), f"examples without a smoke test: {scripts - set(SMOKE)}"


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_vamp_mnist(tmp_path, backend):
    stdout = _run("vamp_mnist.py", SMOKE["vamp_mnist.py"] + ["--backend", backend], tmp_path)
    assert "| prior | test ELBO | test log-likelihood" in stdout
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["prior"] for r in records] == ["standard", "mog", "vamp", "vamp-data"]
    for r in records:
        assert r["backend"] == backend and r["dataset"] == "embedded-mnist"
        assert r["epochs"] == 2 and r["num_pseudo"] == 20 and r["eval_samples"] == 40
        # log p(x) >= ELBO holds in expectation; both finite and negative.
        assert r["test_log_likelihood"] < 0 and r["test_elbo"] < 0
        assert r["train_seconds"] > 0
        assert r["model"] == "vae" and 0 <= r["active_units"] <= 40
        assert 0 <= r["khat_above_0_7"] <= 1
        assert -1 <= r["latent_gmm_ari"] <= 1 and 1 <= r["latent_gmm_components"] <= 5
    from ppl_vae import diagnostics

    runs = diagnostics.load(tmp_path)  # the folder's inference_data.nc: one model per prior
    assert list(runs) == ["standard", "mog", "vamp", "vamp-data"]
    for r in records:
        idata = runs[r["prior"]]
        assert {"importance", "training"} <= set(diagnostics.group_names(idata))
        ll = diagnostics.group(idata, "importance")["log_likelihood"]
        assert ll.shape == (20,)
        assert round(float(ll.mean()), 6) == round(r["test_log_likelihood"], 6)
        assert diagnostics.group(idata, "training")["train_loss"].shape == (2,)
    table = diagnostics.compare(runs)  # the priors ranked by held-out log-likelihood
    assert sorted(table.index) == sorted(runs)
    best = max(records, key=lambda r: r["test_log_likelihood"])["prior"]
    assert table.index[0] == best
    for name in ["elbo_curves.png", "samples_vamp.png", "reconstructions_standard.png",
                 "pseudo_inputs_vamp.png", "pseudo_inputs_vamp-data.png", "latent_gmm_vamp.png"]:
        assert (tmp_path / name).stat().st_size > 1000, name


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_vamp_mnist_hvae(tmp_path, backend):
    flags = ["--model", "hvae", "--prior", "vamp", "--epochs", "1", "--max-train", "200",
             "--max-test", "20", "--eval-samples", "30", "--num-pseudo", "10", "--hidden", "16",
             "--latent-dim", "4", "--no-progress", "--backend", backend]
    stdout = _run("vamp_mnist.py", flags, tmp_path)
    assert "active units" in stdout
    (r,) = json.loads((tmp_path / "metrics.json").read_text())
    assert r["model"] == "hvae" and r["prior"] == "vamp" and r["backend"] == backend
    assert set(r["active_units"]) == {"z1", "z2"}
    assert all(0 <= n <= 4 for n in r["active_units"].values())
    assert r["test_log_likelihood"] < 0


def test_vamp_mnist_help_and_bad_flags():
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "vamp_mnist.py"), "--help"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "--num-pseudo" in proc.stdout and "static-mnist" in proc.stdout
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "vamp_mnist.py"),
                           "--num-pseudo", "0"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "--num-pseudo must be a positive integer; got 0" in proc.stderr
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "vamp_mnist.py"),
                           "--dataset", "static-mnist", "--data-dir", "/nonexistent/dir"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "/nonexistent/dir" in proc.stderr


def test_gmm_wine(tmp_path):
    stdout = _run("gmm_wine.py", SMOKE["gmm_wine.py"], tmp_path)
    assert "| K | log-lik | AIC | BIC | full ELBO | ARI (EM) | ARI (VB) |" in stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["K"] for r in metrics["table"]] == [1, 2, 3]
    for name in ["model_selection.png", "contours.png", "responsibilities.png",
                 "membership_intervals.png", "loo_compare.png", "forest.png"]:
        assert (tmp_path / name).stat().st_size > 1000, name
    # ArviZ: LOO table beside AIC/BIC/ELBO, k-hats, and the chosen K's InferenceData
    assert "| K | elpd_loo | se | p_loo | elpd_diff | dse | max LOO k |" in stdout
    for r in metrics["table"]:
        assert r["elpd_loo"] < 0 and r["loo_se"] > 0 and abs(r["variational_khat"]) < 10
        assert r["loo_max_khat"] < 1.0
    from ppl_vae import diagnostics  # imported here: only this test needs ArviZ

    chosen = metrics["best_k"]["loo_parsimony"]
    idata = diagnostics.load(tmp_path / "inference_data.nc")
    assert {"posterior", "log_likelihood", "observed_data"} <= set(
        diagnostics.group_names(idata))
    assert diagnostics.group(idata, "posterior")["weights"].shape == (1, 200, chosen)
    assert diagnostics.group(idata, "log_likelihood")["x"].shape == (1, 200, 178)
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "gmm_wine.py"), "--help"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "--max-components" in proc.stdout and "ELBO" in proc.stdout


def test_compose_priors(tmp_path):
    import math
    import re

    stdout = _run("compose_priors.py", SMOKE["compose_priors.py"], tmp_path)
    found = re.findall(r"^part (\d): .*test log-likelihood (\S+) nats", stdout, re.M)
    assert [int(p) for p, _ in found] == [1, 2, 3, 4], stdout
    assert all(math.isfinite(float(v)) and float(v) < 0 for _, v in found), stdout
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["part"] for r in records] == [1, 2, 3, 4]
    assert 0 <= records[2]["active_units_z1"] <= 8 and 0 <= records[2]["active_units_z2"] <= 8
    assert records[3]["kl_bound_calls"] > 0  # TraceMeanField_ELBO found the registered KL
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "compose_priors.py"),
                           "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "--epochs" in proc.stdout and "--seed" in proc.stdout
