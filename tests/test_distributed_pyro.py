"""Data-parallel fit and evaluation (Pyro) on two gloo processes of this CPU.

One ``torchrun --nproc_per_node 2`` launch (``tests/_distributed_worker.py``, one thread per
process) trains, resumes and evaluates sharded; the tests compare it with single-process
runs of the same settings here. A second launch, of two bare processes with torchrun's
environment (no agent to kill the survivor first), has one rank die mid-run.

**Tolerance.** With the noise of a single process (``shard_sampling``), a sharded step differs
from the single-process one only in how each gradient's sum over the B rows of a minibatch
is grouped: at worst B units of float32 round-off (u = 2^-24) relative. Letting that add up
over the T steps, parameters and losses must agree to ``T * B * u`` relative to
``max(1, |value|)`` (2.4e-5 here; the differences seen are about 2e-6).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from ppl_vae.checkpoint import load_checkpoint
from ppl_vae.guides.vae_pyro import vae_guide
from ppl_vae.models.vae_pyro import vae_model
from ppl_vae.pyro import Decoder, Encoder, LearnedVampPrior, fit, log_weight_chunks
from ppl_vae.pyro.distributed import shard_bounds, shard_sampling

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed with gloo")

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_distributed_worker", HERE / "_distributed_worker.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

U = 2.0**-24  # float32 unit round-off
STEPS = W.EPOCHS * -(-W.NUM_TRAIN // W.FIT["batch_size"])
TOL = STEPS * W.FIT["batch_size"] * U


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _close(a, b, tol=TOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    excess = np.abs(a - b) - tol * np.maximum(1.0, np.abs(b))
    assert excess.max() <= 0, f"differ by {np.abs(a - b).max():.3g} (tolerance {tol:.3g})"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process references, one torchrun launch, then the 1-rank resume of its
    2-rank half."""
    out = tmp_path_factory.mktemp("pyro_dp")
    pyro.enable_validation(True)
    W.pyro_fit(out / "A1", W.EPOCHS)  # straight, one process
    W.pyro_fit(out / "C", W.HALF)  # for the 2-rank resume
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "_distributed_worker.py"), "pyro", str(out)],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=HERE.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    W.pyro_fit(out / "B", W.EPOCHS, resume=True)  # a 2-rank checkpoint, resumed in one process
    return out


def _last(path):
    arrays, meta = load_checkpoint(path / "last.npz", backend="pyro")
    return {k: v for k, v in arrays.items() if k.startswith("params/")}, meta


def _assert_same_run(run, reference):
    params, meta = _last(run)
    ref_params, ref_meta = _last(reference)
    assert params.keys() == ref_params.keys() and len(meta["history"]) == W.EPOCHS
    for name in ref_params:
        _close(params[name], ref_params[name])
    for key in ("train_loss", "valid_elbo"):
        _close([h[key] for h in meta["history"]], [h[key] for h in ref_meta["history"]])
    assert [h["beta"] for h in meta["history"]] == [h["beta"] for h in ref_meta["history"]]
    return meta


def test_two_ranks_give_the_single_process_run(runs):
    meta = _assert_same_run(runs / "A", runs / "A1")
    assert meta["world_size"] == 2
    # every rank drew the single process's noise and permutations, and no more
    rng = load_checkpoint(runs / "A" / "last.npz")[0]["rng/torch"]
    np.testing.assert_array_equal(rng, load_checkpoint(runs / "A1" / "last.npz")[0]["rng/torch"])


def test_checkpoints_resume_on_another_number_of_ranks(runs):
    assert _assert_same_run(runs / "B", runs / "A1")["world_size"] == 1  # 2 ranks, then 1
    assert _assert_same_run(runs / "C", runs / "A1")["world_size"] == 2  # 1 rank, then 2


def test_sharded_evaluation_equals_single_process(runs):
    sharded = np.load(runs / "eval.npz")
    single = W.pyro_evaluate(runs / "A" / "last.npz")
    # chunk i on rank i % 2 with its own seed: computed exactly as in one process
    for key in ("log_px", "log_w", "log_px_alone"):
        np.testing.assert_array_equal(sharded[key], single[key])
    assert single["log_w"].shape == (W.NUM_TEST, W.EVAL["num_samples"])
    # the ELBO: each chunk's rows split over the ranks, the sums added
    np.testing.assert_allclose(sharded["elbo"], single["elbo"], rtol=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_that_dies_stops_the_others_at_the_last_good_checkpoint(tmp_path):
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


# ----------------------------------------------------------------- in this process, no ranks


def test_shard_bounds_cover_every_row_once():
    for n in (1, 2, 7, 25, 100):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


def _mvn_guide(x, beta=None):
    loc = x[:, :2] * 0.5
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=torch.eye(2) * 0.3))


@pytest.mark.parametrize("kind", ["normal", "multivariate"])
def test_shards_draw_the_rows_of_the_single_process_noise(kind):
    torch.manual_seed(0)
    encoder = Encoder(10, 2, (8,))
    guide = partial(vae_guide, encoder=encoder) if kind == "normal" else _mvn_guide
    x = (torch.rand(7, 10) < 0.4).float()
    pyro.set_rng_seed(3)
    full = poutine.trace(guide).get_trace(x, torch.tensor(0.5)).nodes["z"]["value"]
    after = torch.get_rng_state()
    parts = []
    for lo, hi in [(0, 3), (3, 7)]:
        pyro.set_rng_seed(3)
        with shard_sampling(slice(lo, hi), 7):
            parts.append(poutine.trace(guide).get_trace(x[lo:hi], torch.tensor(0.5))
                         .nodes["z"]["value"])
        torch.testing.assert_close(torch.get_rng_state(), after, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(parts), full, rtol=0, atol=0)


def test_shard_sampling_refuses_what_it_cannot_split():
    def global_site(x, beta=None):
        pyro.sample("g", dist.Normal(0.0, 1.0))

    def gamma_site(x, beta=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Gamma(torch.ones(x.shape[0]), 1.0))

    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="inside the plate 'data'.*'g' is not"):
        with shard_sampling(slice(0, 4), 8):
            poutine.trace(global_site).get_trace(x)
    with pytest.raises(ValueError, match="Normal and MultivariateNormal.*'z' is a Gamma"):
        with shard_sampling(slice(0, 4), 8):
            poutine.trace(gamma_site).get_trace(x)


def test_distributed_without_a_process_group_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    encoder, decoder = Encoder(10, 2, (8,)), Decoder(2, 10, (8,))
    model = partial(vae_model, decoder=decoder, prior=LearnedVampPrior(encoder, 3))
    x = (torch.rand(8, 10) < 0.4).float()
    with pytest.raises(RuntimeError, match="lacks RANK, WORLD_SIZE.*torchrun --nproc_per_node"):
        fit(model, partial(vae_guide, encoder=encoder), x, distributed=True, progress=False)


def test_evaluation_chunks_do_not_depend_on_what_the_caller_draws():
    """Each chunk has its own seed: drawing between chunks changes nothing (which is what
    lets the ranks compute disjoint chunks)."""
    encoder, decoder = Encoder(10, 2, (8,)), Decoder(2, 10, (8,))
    model = partial(vae_model, decoder=decoder, prior=LearnedVampPrior(encoder, 3))
    guide = partial(vae_guide, encoder=encoder)
    x = (torch.rand(6, 10) < 0.4).float()
    runs = []
    for interfere in (False, True):
        pyro.set_rng_seed(1)
        chunks = []
        for _rows, log_w in log_weight_chunks(model, guide, x, num_samples=5, batch_size=10):
            chunks.append(log_w)
            if interfere:
                torch.randn(100)
        runs.append(torch.cat(chunks))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert len(chunks) == 3
