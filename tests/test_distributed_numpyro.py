"""Data-parallel fit and evaluation (NumPyro) over two forced host devices of this CPU, and
over two processes joined by ``jax.distributed``.

``XLA_FLAGS=--xla_force_host_platform_device_count=2`` must be set before JAX starts, so the
work runs in a subprocess (``tests/_distributed_worker.py``); the tests compare what it
wrote.

**Tolerance.** The random numbers do not depend on the sharding (threefry is partitionable),
so a sharded step differs from the single-device one only in how XLA groups each gradient's
sum over the B rows of a minibatch: at worst B units of float32 round-off (u = 2^-24)
relative. Letting that add up over the T steps, parameters and losses must agree to
``T * B * u`` relative to ``max(1, |value|)`` (1.8e-5 here; the differences seen are about
1e-7 for parameters, 2e-6 for Adam's moments).
"""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppl_vae.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_distributed_worker", HERE / "_distributed_worker.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

# Compiling is what these tests cost; XLA's backend optimisations off make it a third
# cheaper, and every program compared is compiled the same way.
FAST_COMPILE = "--xla_backend_optimization_level=0"
U = 2.0**-24  # float32 unit round-off
STEPS = W.EPOCHS * (W.NUMPYRO_TRAIN // W.FIT["batch_size"])
TOL = STEPS * W.FIT["batch_size"] * U


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env | extra


def _close(a, b, tol=TOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    excess = np.abs(a - b) - tol * np.maximum(1.0, np.abs(b))
    assert excess.max() <= 0, f"differ by {np.abs(a - b).max():.3g} (tolerance {tol:.3g})"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("numpyro_dp")
    proc = subprocess.run(
        [sys.executable, str(HERE / "_distributed_worker.py"), "numpyro", str(out)],
        capture_output=True, text=True, timeout=300, cwd=HERE.parent,
        env=_env(XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _last(path):
    arrays, meta = load_checkpoint(path / "last.npz", backend="numpyro")
    return arrays, meta


def _assert_same_run(run, reference):
    arrays, meta = _last(run)
    ref_arrays, ref_meta = _last(reference)
    assert arrays.keys() == ref_arrays.keys() and len(meta["history"]) == W.EPOCHS
    for name in ref_arrays:
        if name.startswith(("params/", "state/")) and ref_arrays[name].dtype.kind == "f":
            _close(arrays[name], ref_arrays[name])
    for key in ("train_loss", "valid_elbo"):
        _close([h[key] for h in meta["history"]], [h[key] for h in ref_meta["history"]])
    return meta


def test_sharded_run_equals_the_single_device_run_and_resumes_either_way(runs):
    """single_half: 2 epochs on one device, 2 more sharded; sharded_half: the other way
    round; both against 4 straight epochs on one device."""
    assert int(np.load(runs / "numpyro.npz")["num_devices"]) == 2
    assert _assert_same_run(runs / "single_half", runs / "single")["num_devices"] == 2
    assert _assert_same_run(runs / "sharded_half", runs / "single")["num_devices"] == 1


def test_sharded_evaluation_equals_single_device(runs):
    r = np.load(runs / "numpyro.npz")
    # chunk i on device i % 2, the same compiled function and key: the same bits
    np.testing.assert_array_equal(r["log_px_sharded"], r["log_px_single"])
    np.testing.assert_array_equal(r["log_w_sharded"], r["log_w_single"])
    assert r["log_w_single"].shape == (W.NUM_TEST, W.EVAL["num_samples"])
    np.testing.assert_allclose(r["elbo_sharded"], r["elbo_single"], rtol=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_hosts_give_the_single_device_run(runs, tmp_path):
    """Two processes, one device each, joined through the coordinator variables."""
    shutil.copy(runs / "single" / "last.npz", tmp_path / "reference.npz")
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, str(HERE / "_distributed_worker.py"), "numpyro-hosts", str(tmp_path)],
        env=_env(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i), XLA_FLAGS=FAST_COMPILE),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent)
        for i in range(2)]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-5000:]
    hosts = np.load(tmp_path / "hosts.npz")
    assert (int(hosts["num_devices"]), int(hosts["num_processes"])) == (2, 2)
    arrays, meta = _last(tmp_path / "hosts")
    ref_arrays, ref_meta = _last(runs / "single")
    assert meta["num_devices"] == 2 and len(meta["history"]) == W.EPOCHS
    for name in ref_arrays:
        if name.startswith("params/"):
            _close(arrays[name], ref_arrays[name])
    _close([h["train_loss"] for h in meta["history"]],
           [h["train_loss"] for h in ref_meta["history"]])
    single = np.load(runs / "numpyro.npz")
    np.testing.assert_array_equal(hosts["log_px"], single["log_px_single"])
    np.testing.assert_array_equal(hosts["log_w"], single["log_w_single"])
