"""``examples/vamp_mnist.py --model convhvae|pixelhvae`` end to end in both backends, on a tiny
6 x 5 dataset (``--dataset npz``: the networks are the paper's, the images small, so that a
run takes seconds plus NumPyro's compilation): the record, the figures, the image shape kept
in the checkpoint, a resumed run and a run rebuilt from its checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import backends
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHAPE = (6, 5)
FLAGS = ["--dataset", "npz", "--prior", "vamp", "--epochs", "1", "--warmup", "1",
         "--eval-samples", "25", "--num-pseudo", "5", "--hidden", "16", "--latent-dim", "4",
         "--no-progress"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """Noisy copies of three binary prototypes, 6 x 5: 200 / 50 / 10 images."""
    rng = np.random.default_rng(0)
    protos = rng.random((3, *SHAPE)) < 0.4

    def split(n):
        x = protos[rng.integers(0, 3, n)] ^ (rng.random((n, *SHAPE)) < 0.1)
        return x.reshape(n, -1).astype(np.uint8)

    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, train=split(200), valid=split(50), test=split(10), image_shape=SHAPE)
    return path


def _run(flags, out):
    cmd = [sys.executable, str(REPO / "examples" / "vamp_mnist.py"), *flags, "--out", str(out)]
    # XLA's optimisations on (conftest turns them off): unoptimised, the PixelCNN's
    # convolutions cost more to run than optimising them costs to compile
    env = dict(os.environ)
    if env.get("XLA_FLAGS") == backends.FAST_COMPILE:
        del env["XLA_FLAGS"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("model, backend", [("convhvae", "pyro"), ("pixelhvae", "pyro"),
                                            ("pixelhvae", "numpyro")])
def test_vamp_mnist_conv(tmp_path, tiny_npz, backend, model):
    """(NumPyro's convHVAE differs from its PixelHVAE only in the decoder, which
    ``test_conv.py`` checks against Pyro's; its run here would add half a minute of
    compiling.)"""
    pytest.importorskip(backend)
    flags = FLAGS + ["--data-path", str(tiny_npz), "--model", model, "--backend", backend]
    stdout = _run(flags, tmp_path)
    assert "| vamp |" in stdout
    (r,) = json.loads((tmp_path / "metrics.json").read_text())
    assert (r["model"], r["backend"], r["status"], r["epochs"]) == (model, backend, "ok", 1)
    assert set(r["active_units"]) == {"z1", "z2"}
    # untrained for one epoch: worse than the data's structure allows, but a density
    assert -30 * np.log(2) - 30 < r["test_log_likelihood"] < 0
    assert r["fit_config"]["image_shape"] == list(SHAPE)  # kept in the checkpoint
    for name in ("samples_vamp.png", "reconstructions_vamp.png", "pseudo_inputs_vamp.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_conv_run_resumes_and_reloads(tmp_path, tiny_npz):
    """A convolutional model's checkpoint: a resumed run continues it (its configuration,
    image shape included, matches), and :func:`ppl_vae.experiment.load_run` rebuilds the
    model from it alone (Pyro only: the configuration code is the backends' shared one)."""
    pytest.importorskip("pyro")
    from ppl_vae.experiment import ExperimentConfig, load_run, run

    config = ExperimentConfig(backend="pyro", model="convhvae", dataset="npz",
                              data_path=str(tiny_npz), prior=("vamp",), epochs=1, warmup=1,
                              eval_samples=25, num_pseudo=5, hidden=(16,), latent_dim=4,
                              progress=False, out=str(tmp_path))
    run(config)
    (r,) = run(ExperimentConfig(**{**config.__dict__, "epochs": 2, "resume": True})).records
    assert r["epochs"] == 2 and r["resumed"]
    trained = load_run(tmp_path / "checkpoints" / "vamp" / "best.npz")
    assert tuple(trained.config.image_shape) == SHAPE
    x = np.load(tiny_npz)["test"].astype(np.float32)
    log_px = trained.log_likelihood(x, num_samples=30)
    assert log_px.shape == (10,) and np.all(np.isfinite(log_px)) and np.all(log_px < 0)
