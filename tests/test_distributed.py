"""Data-parallel fit and evaluation in both backends, compared with single-process runs.

- Pyro: one ``torchrun --nproc_per_node 2`` launch of two gloo processes of this CPU
  (``tests/_distributed_worker.py``, one thread per process) trains, resumes and evaluates
  sharded; the tests compare it with single-process runs of the same settings here. A second
  launch, of two bare processes with torchrun's environment (no agent to kill the survivor
  first), has one rank die mid-run.
- NumPyro: one process over two forced host devices (``XLA_FLAGS`` must be set before JAX
  starts, so it is a subprocess too) runs the sharded and single-device fits and evaluations;
  two processes joined by ``jax.distributed`` are two hosts.

**Training tolerance.** A sharded step draws the single process's noise (Pyro:
``shard_sampling``; NumPyro: threefry is partitionable) and differs from the single-process
step only in how each gradient's sum over the B rows of a minibatch is grouped: at worst B
units of float32 round-off (u = 2^-24) relative. Letting that add up over the T steps,
parameters, optimizer states and losses agree to ``T * B * u`` relative to ``max(1, |value|)``
(about 2e-5 here; the differences seen are about 2e-6).

**Evaluation tolerance.** Chunk i of an evaluation runs on shard i % 2 with chunk i's own
seed: the same computation as in one process. What can differ is the order of the float32
sums inside it, wherever another process's kernels or thread count sum differently (seen:
Pyro on a 2-core AMD EPYC, 2e-9 relative). A log-weight is a chain of sums: the encoder's
matrix products (over the D inputs, then the hidden units), the decoder's (over the L latent
units, then the hidden units), and the D pixels' log-probabilities, whose terms share a
sign; reordering a sum of n terms moves it by at most n u of its terms' magnitudes (the first
order of Higham's bound), so a log-weight moves by at most ``R u`` of its magnitude,
``R = 2 (D + H) + L + H``, each of the two computations by that much: ``2 R u`` relative to
``max(1, |value|)`` (1e-5 here). Log-likelihoods are log-mean-exps of the log-weights, so move
no more; the ELBO adds each chunk's rows in two groups (``B`` u more). Within one process the
same compiled chunk with the same key and inputs gives the same bits (NumPyro's devices).
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from backends import FAST_COMPILE, get

from ppl_vae.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_distributed_worker",
                                               HERE / "_distributed_worker.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

U = 2.0**-24  # float32 unit round-off
R = 2 * (W.D + sum(W.HIDDEN)) + W.L + sum(W.HIDDEN)  # terms summed along a log-weight
EVAL_TOL = 2 * R * U


def _gloo():
    import torch

    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env | extra


def _close(a, b, tol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    excess = np.abs(a - b) - tol * np.maximum(1.0, np.abs(b))
    assert excess.max() <= 0, f"differ by {np.abs(a - b).max():.3g} (tolerance {tol:.3g})"


def _run_pyro(out):
    """The single-process references, one torchrun launch, then the 1-rank resume of its
    2-rank half."""
    import pyro

    pyro.enable_validation(True)
    W.pyro_fit(out / "A1", W.EPOCHS)  # straight, one process
    W.pyro_fit(out / "C", W.HALF)  # for the 2-rank resume
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "_distributed_worker.py"), "pyro", str(out)],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=HERE.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    W.pyro_fit(out / "B", W.EPOCHS, resume=True)  # a 2-rank checkpoint, resumed in one process
    steps = W.EPOCHS * -(-W.NUM_TRAIN // W.FIT["batch_size"])
    sharded = np.load(out / "eval.npz")
    single = W.pyro_evaluate(out / "A" / "last.npz")  # in this process
    return SimpleNamespace(
        tol=steps * W.FIT["batch_size"] * U, shards="world_size",
        # (run, its single-process reference, the shards that wrote its last checkpoint)
        same_runs=[("A", "A1", 2), ("B", "A1", 1), ("C", "A1", 2)],
        evaluations=[(sharded[k], single[k], False) for k in ("log_px", "log_w",
                                                              "log_px_alone")],
        elbo=(float(sharded["elbo"]), float(single["elbo"]), 8),
        log_w_shape=single["log_w"].shape)


def _run_numpyro(out):
    proc = subprocess.run(
        [sys.executable, str(HERE / "_distributed_worker.py"), "numpyro", str(out)],
        capture_output=True, text=True, timeout=300, cwd=HERE.parent,
        env=_env(XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = np.load(out / "numpyro.npz")
    assert int(r["num_devices"]) == 2
    steps = W.EPOCHS * (W.NUMPYRO_TRAIN // W.FIT["batch_size"])
    return SimpleNamespace(
        tol=steps * W.FIT["batch_size"] * U, shards="num_devices",
        # single_half: 2 epochs on one device, 2 more sharded; sharded_half: the other way
        # round; both against 4 straight epochs on one device
        same_runs=[("single_half", "single", 2), ("sharded_half", "single", 1)],
        # both in the worker's process: chunk i on device i % 2, the same compiled chunk
        evaluations=[(r["log_px_sharded"], r["log_px_single"], True),
                     (r["log_w_sharded"], r["log_w_single"], True)],
        elbo=(float(r["elbo_sharded"]), float(r["elbo_single"]), 1000),
        log_w_shape=r["log_w_single"].shape)


@pytest.fixture(scope="module", params=["pyro", "numpyro"])
def runs(request, tmp_path_factory):
    """Each backend's launches (above), once; the tests compare what they wrote."""
    if get(request.param) is None:
        pytest.skip(f"{request.param} is not installed")
    if request.param == "pyro" and not _gloo():
        pytest.skip("this torch build has no torch.distributed with gloo")
    out = tmp_path_factory.mktemp(f"{request.param}_dp")
    found = (_run_pyro if request.param == "pyro" else _run_numpyro)(out)
    found.out, found.backend = out, request.param
    return found


def _last(runs, name):
    return load_checkpoint(runs.out / name / "last.npz", backend=runs.backend)


def test_a_sharded_run_equals_the_single_process_run_and_resumes_on_any_number(runs):
    for run, reference, shards in runs.same_runs:
        arrays, meta = _last(runs, run)
        ref_arrays, ref_meta = _last(runs, reference)
        assert arrays.keys() == ref_arrays.keys() and len(meta["history"]) == W.EPOCHS
        for name in ref_arrays:  # parameters and optimizer states
            if name.startswith(("params/", "state/", "optim/")) and ref_arrays[name].dtype.kind == "f":
                _close(arrays[name], ref_arrays[name], runs.tol)
        for key in ("train_loss", "valid_elbo"):
            _close([h[key] for h in meta["history"]], [h[key] for h in ref_meta["history"]],
                   runs.tol)
        assert [h["beta"] for h in meta["history"]] == [h["beta"] for h in ref_meta["history"]]
        assert meta[runs.shards] == shards, (run, meta[runs.shards])
    if runs.backend == "pyro":
        # every rank drew the single process's noise and permutations, and no more
        np.testing.assert_array_equal(_last(runs, "A")[0]["rng/torch"],
                                      _last(runs, "A1")[0]["rng/torch"])


def test_sharded_evaluation_equals_the_single_process_one(runs):
    """Within one process (NumPyro's devices): bit for bit. Across processes (Pyro's ranks
    against this one): to ``EVAL_TOL`` (the module's docstring)."""
    for sharded, single, same_process in runs.evaluations:
        if same_process:
            np.testing.assert_array_equal(sharded, single)
        else:
            _close(sharded, single, EVAL_TOL)
    assert runs.log_w_shape == (W.NUM_TEST, W.EVAL["num_samples"])
    # the ELBO: each chunk's rows split over the shards, the sums added
    sharded, single, rows_per_chunk = runs.elbo
    _close(sharded, single, EVAL_TOL + min(rows_per_chunk, W.NUM_VALID) * U)


# ------------------------------------------------------------------ Pyro: torch.distributed
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pyro_ranks = pytest.mark.skipif(get("pyro") is None or not _gloo(),
                                reason="needs Pyro and a torch.distributed with gloo")


@pyro_ranks
def test_pyro_a_rank_that_dies_stops_the_others_at_the_last_good_checkpoint(tmp_path):
    env = dict(_env(), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               LOCAL_WORLD_SIZE="2")
    procs = [subprocess.Popen(
        [sys.executable, str(HERE / "_distributed_worker.py"), "pyro-die", str(tmp_path)],
        env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=HERE.parent) for r in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert procs[1].returncode == 17, outputs[1][1][-3000:]  # died, as arranged
    assert procs[0].returncode == 3, outputs[0][1][-3000:]  # stopped with DistributedError
    error = json.loads((tmp_path / "error_0.json").read_text())
    last = tmp_path / "run" / "last.npz"
    assert (error["epoch"], error["step"], error["checkpoint"]) == (2, 2, str(last))
    assert "another rank died or stopped answering" in error["message"]
    assert f"the last good checkpoint is {last} (epoch 1)" in error["message"]
    _, meta = load_checkpoint(last, backend="pyro")
    assert meta["epoch"] == 1 and meta["world_size"] == 2
    resumed = W.pyro_fit(tmp_path / "run", W.EPOCHS, resume=True)  # in one process
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]


@pyro_ranks
def test_pyro_shard_bounds_cover_every_row_once():
    from ppl_vae.pyro.distributed import shard_bounds

    for n in (1, 2, 7, 25, 100):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


def _mvn_guide(x):
    import pyro
    import pyro.distributions as dist
    import torch

    loc = x[:, :2] * 0.5
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=torch.eye(2) * 0.3))


@pyro_ranks
@pytest.mark.parametrize("kind", ["normal", "multivariate"])
def test_pyro_shards_draw_the_rows_of_the_single_process_noise(kind):
    """A shard draws the whole minibatch's noise and keeps its rows: the generator ends where
    the single process's does (bit for bit: the same draws), and the rows of z are those of
    the single process's z, whose loc and scale the encoder computes here on 3 or 4 rows
    rather than 7: other matrix shapes, which a BLAS may sum in another order, so to 2 R u
    of the values, R the terms summed along them (the module's docstring)."""
    import torch
    from pyro import poutine

    from ppl_vae.pyro.distributed import shard_sampling

    backend = get("pyro")
    _, guide = backend.vae(num_features=10, latent_dim=2, hidden=(8,))
    guide = guide if kind == "normal" else _mvn_guide
    x = (torch.rand(7, 10) < 0.4).float()
    backend.ppl.set_rng_seed(3)
    full = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    after = torch.get_rng_state()
    parts = []
    for lo, hi in [(0, 3), (3, 7)]:
        backend.ppl.set_rng_seed(3)
        with shard_sampling(slice(lo, hi), 7):
            parts.append(poutine.trace(guide).get_trace(x[lo:hi]).nodes["z"]["value"])
        assert torch.equal(torch.get_rng_state(), after)
    _close(torch.cat(parts).detach().numpy(), full.detach().numpy(), 2 * (2 * (10 + 8)) * U)


@pyro_ranks
def test_pyro_shard_sampling_refuses_what_it_cannot_split():
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro import poutine

    from ppl_vae.pyro.distributed import shard_sampling

    def global_site(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))

    def gamma_site(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Gamma(torch.ones(x.shape[0]), 1.0))

    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="inside the plate 'data'.*'g' is not"):
        with shard_sampling(slice(0, 4), 8):
            poutine.trace(global_site).get_trace(x)
    with pytest.raises(ValueError, match="Normal and MultivariateNormal.*'z' is a Gamma"):
        with shard_sampling(slice(0, 4), 8):
            poutine.trace(gamma_site).get_trace(x)


@pyro_ranks
def test_pyro_distributed_without_a_process_group_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    backend = get("pyro")
    model, guide = backend.vae(num_features=10, latent_dim=2, hidden=(8,), num_pseudo=3)
    x = (np.random.default_rng(0).random((8, 10)) < 0.4).astype(np.float32)
    with pytest.raises(RuntimeError, match="lacks RANK, WORLD_SIZE.*torchrun --nproc_per_node"):
        backend.fit(model, guide, x, distributed=True)


@pyro_ranks
def test_pyro_evaluation_chunks_do_not_depend_on_what_the_caller_draws():
    """Each chunk has its own seed: drawing between chunks changes nothing (which is what
    lets the ranks compute disjoint chunks). The same chunks, seeds and inputs in this
    process: bit for bit."""
    import torch

    backend = get("pyro")
    model, guide = backend.vae(num_features=10, latent_dim=2, hidden=(8,), num_pseudo=3)
    x = (torch.rand(6, 10) < 0.4).float()
    results = []
    for interfere in (False, True):
        backend.ppl.set_rng_seed(1)
        chunks = []
        for _rows, log_w in backend.lib.log_weight_chunks(model, guide, x, num_samples=5,
                                                          batch_size=10):
            chunks.append(log_w)
            if interfere:
                torch.randn(100)
        results.append(torch.cat(chunks))
    assert torch.equal(results[0], results[1])
    assert len(chunks) == 3


# ----------------------------------------------------------------- NumPyro: two hosts
@pytest.mark.parametrize("runs", ["numpyro"], indirect=True)
def test_numpyro_two_hosts_give_the_single_device_run(runs, tmp_path):
    """Two processes, one device each, joined through the coordinator variables: the run
    within the training tolerance, the evaluation (other processes than the reference's)
    within the evaluation tolerance."""
    shutil.copy(runs.out / "single" / "last.npz", tmp_path / "reference.npz")
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
    arrays, meta = load_checkpoint(tmp_path / "hosts" / "last.npz", backend="numpyro")
    ref_arrays, ref_meta = _last(runs, "single")
    assert meta["num_devices"] == 2 and len(meta["history"]) == W.EPOCHS
    for name in ref_arrays:
        if name.startswith("params/"):
            _close(arrays[name], ref_arrays[name], runs.tol)
    _close([h["train_loss"] for h in meta["history"]],
           [h["train_loss"] for h in ref_meta["history"]], runs.tol)
    single = np.load(runs.out / "numpyro.npz")
    _close(hosts["log_px"], single["log_px_single"], EVAL_TOL)
    _close(hosts["log_w"], single["log_w_single"], EVAL_TOL)

