"""examples/vamp_mnist.py fails before the work, with the flag's name and no traceback, and
never writes an unflagged absurd result (both backends)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppl_vae.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "vamp_mnist.py"
TINY = ["--prior", "vamp", "--epochs", "1", "--max-train", "200", "--max-test", "10",
        "--eval-samples", "30", "--num-pseudo", "10", "--hidden", "32", "--warmup", "1",
        "--no-progress"]

# Hides ArviZ from the script, as on an install without the diagnostics extra.
NO_ARVIZ = """
import runpy, sys
sys.modules["arviz"] = None  # import arviz now raises ImportError, as without the package
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(flags, out, no_arviz=False):
    head = [sys.executable, "-c", NO_ARVIZ] if no_arviz else [sys.executable]
    proc = subprocess.run([*head, str(SCRIPT), *flags, "--out", str(out)], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("flags, expected", [
    (["--eval-samples", "1"], "--eval-samples must be at least 25"),
    (["--lr", "0"], "--lr must be a finite number > 0; got 0.0"),
    (["--lr", "nan"], "--lr must be a finite number > 0; got nan"),
    (["--hidden", "300", "0"], "--hidden widths must be positive integers"),
    (["--latent-gmm", "100000"], "--latent-gmm must be at most the number of training images "
                                 "(200); got 100000"),
    (["--prior", "vamp-data", "--num-pseudo", "500"], "--num-pseudo must be at most the number "
                                                      "of training images (200)"),
])
def test_bad_flags_fail_before_any_work(flags, expected, tmp_path):
    proc = _run([*TINY, *flags], tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_resume_with_other_flags_is_refused_and_the_record_is_complete(backend, tmp_path):
    out = tmp_path / "run"
    proc = _run([*TINY, "--backend", backend], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = json.loads((out / "metrics.json").read_text())
    # a complete record: every setting that shaped the result, versions, the checkpoint
    for key, value in [("likelihood", "bernoulli"), ("learning_rate", 5e-4), ("batch_size", 100),
                       ("warmup", 1), ("seed", 0), ("status", "ok"), ("num_pseudo", 10),
                       ("backend", backend), ("eval_samples", 30)]:
        assert record[key] == value, key
    # one epoch on 200 images may not beat a uniform model yet: flagged if so, never hidden
    assert set(record["flags"]) <= {"worse_than_uniform"}
    assert record["settings"]["hidden"] == [32]
    assert "numpy" in record["environment"]["versions"] and record["environment"]["cpu"]
    assert record["checkpoint"]["epoch"] == record["best_epoch"] == 1
    _, meta = load_checkpoint(record["checkpoint"]["path"], backend=backend)
    assert meta["config"]["num_pseudo"] == 10 and meta["config"]["prior"] == "vamp"
    before = (out / "metrics.json").read_text()

    proc = _run([*TINY, "--backend", backend, "--resume", "--num-pseudo", "12", "--hidden",
                 "16", "--epochs", "2", "--normalize-gradients"], out)
    assert proc.returncode == 2
    assert "--num-pseudo: checkpoint 10, now 12" in proc.stderr
    assert "--hidden: checkpoint [32], now [16]" in proc.stderr
    assert "--normalize-gradients: checkpoint false, now true" in proc.stderr
    assert "--epochs" not in proc.stderr.split("Only")[0]  # may change
    assert (out / "metrics.json").read_text() == before  # nothing overwritten
    other = "numpyro" if backend == "pyro" else "pyro"
    proc = _run([*TINY, "--backend", other, "--resume"], out)
    assert proc.returncode == 2 and f"written by the {backend} backend" in proc.stderr


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_a_diverging_run_exits_3_and_flags_its_record(backend, tmp_path):
    out = tmp_path / "run"
    proc = _run([*TINY, "--backend", backend, "--prior", "standard", "vamp", "--lr", "1e6",
                 "--epochs", "3"], out)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "training diverged" in proc.stderr and "Try a smaller --lr (now 1e+06)" in proc.stderr
    records = json.loads((out / "metrics.json").read_text())
    assert [r["prior"] for r in records] == ["standard", "vamp"]
    for r in records:  # no log-likelihood of -8e12 passes as a result
        assert r["status"] == "diverged" and "test_log_likelihood" not in r
        last = out / "checkpoints" / r["prior"] / "last.npz"
        if last.exists():  # the last good epoch's checkpoint still loads
            _, meta = load_checkpoint(last, backend=backend)
            assert meta["epoch"] == r["diverged_epoch"] - 1


def test_without_arviz_the_run_falls_back_and_says_so(tmp_path):
    out = tmp_path / "run"
    proc = _run([*TINY, "--eval-samples", "10"], out, no_arviz=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ArviZ is not installed" in proc.stderr
    (record,) = json.loads((out / "metrics.json").read_text())
    assert record["khat_above_0_7"] is None and "no_khat_without_arviz" in record["flags"]
    assert np.isfinite(record["test_log_likelihood"])
    assert not (out / "inference_data.nc").exists()
