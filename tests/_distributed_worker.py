"""The work of the data-parallel tests, run in processes the tests launch (not a test itself).

Pyro, one process per rank (``python -m torch.distributed.run --nproc_per_node 2 ...``)::

    _distributed_worker.py pyro OUT        # fit, resume and evaluate, sharded; rank 0 writes
    _distributed_worker.py pyro-die OUT    # rank 1 dies in epoch 2; the others must stop

NumPyro, one process over forced host devices (``XLA_FLAGS`` set by the caller)::

    _distributed_worker.py numpyro OUT     # sharded vs single-device fits, resume, evaluation

and one process per host, one CPU device each (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` set by the caller)::

    _distributed_worker.py numpyro-hosts OUT

The models, data and settings are defined here once, for the launched processes and the
tests that compare with them.
"""

import json
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np

D, L, K, HIDDEN = 20, 3, 6, (16,)
NUM_TRAIN, NUM_VALID, NUM_TEST = 90, 30, 13
# 90 rows in batches of 25: three full minibatches (blocks of 12 and 13 rows on two ranks)
# and a last one of 15
FIT = dict(batch_size=25, learning_rate=3e-3, warmup_epochs=2, progress=False)
EPOCHS, HALF = 4, 2
EVAL = dict(num_samples=20, batch_size=40)  # two test images per chunk, seven chunks
NUMPYRO_TRAIN = 75  # three full minibatches: one compiled step (compiling is NumPyro's cost)


def data(seed=0):
    rng = np.random.default_rng(seed)
    proto = rng.random((3, D)) < 0.3
    x = proto[rng.integers(3, size=NUM_TRAIN + NUM_VALID + NUM_TEST)]
    x = np.where(rng.random(x.shape) < 0.05, ~x, x).astype(np.float32)
    return x[:NUM_TRAIN], x[NUM_TRAIN:NUM_TRAIN + NUM_VALID], x[NUM_TRAIN + NUM_VALID:]


# -------------------------------------------------------------------------------------- Pyro
def pyro_vae(die_after=None):
    """A VampPrior VAE; with ``die_after``, rank 1's decoder ends its process at that call."""
    import pyro
    import torch

    import ppl_vae.pyro as pp
    from ppl_vae.guides.vae_pyro import vae_guide
    from ppl_vae.models.vae_pyro import vae_model

    pyro.clear_param_store()
    torch.manual_seed(0)
    encoder, decoder = pp.Encoder(D, L, HIDDEN), pp.Decoder(L, D, HIDDEN)
    prior = pp.LearnedVampPrior(encoder, K)
    if die_after is not None and int(os.environ.get("RANK", 0)) == 1:
        calls = {"n": 0}

        def hook(module, inputs):
            calls["n"] += 1
            if calls["n"] == die_after:
                os._exit(17)  # no exception, no clean-up: as a killed process

        decoder.register_forward_pre_hook(hook)
    return (partial(vae_model, decoder=decoder, prior=prior),
            partial(vae_guide, encoder=encoder))


def pyro_fit(out, num_epochs, resume=False, distributed=False, die_after=None):
    import ppl_vae.pyro as pp

    train, valid, _ = data()
    model, guide = pyro_vae(die_after)
    return pp.fit(model, guide, train, valid, num_epochs=num_epochs, checkpoint_dir=out,
                  resume=resume, seed=1, distributed=distributed, **FIT)


def pyro_evaluate(checkpoint, distributed=False):
    import pyro
    import torch

    import ppl_vae.pyro as pp

    _, _, test = data()
    model, guide = pyro_vae()
    x = torch.as_tensor(test)
    pp.load_params(checkpoint, model, guide, x)
    pyro.set_rng_seed(5)
    log_px, log_w = pp.importance_log_likelihood(model, guide, x, return_log_weights=True,
                                                 distributed=distributed, **EVAL)
    alone = pp.importance_log_likelihood(model, guide, x, distributed=distributed, **EVAL)
    elbo = pp.elbo_per_example(model, guide, x, batch_size=8, distributed=distributed)
    return {"log_px": log_px, "log_w": log_w, "log_px_alone": alone, "elbo": np.array(elbo)}


def run_pyro(out):
    """Straight run (A), first half for a 1-process resume (B), resume of a 1-process half
    (C, written by the test beforehand), evaluation; rank 0 writes ``eval.npz``."""
    import torch.distributed as dist

    from ppl_vae.pyro.distributed import initialize

    initialize()
    pyro_fit(out / "A", EPOCHS, distributed=True)
    pyro_fit(out / "B", HALF, distributed=True)
    pyro_fit(out / "C", EPOCHS, resume=True, distributed=True)
    results = pyro_evaluate(out / "A" / "last.npz", distributed=True)
    if dist.get_rank() == 0:
        np.savez(out / "eval.npz", **results)
    dist.barrier()
    dist.destroy_process_group()
    _leave(0)


def _leave(status):
    """Exit without the interpreter's teardown: a c10d background thread sometimes outlives
    it and aborts the process ("terminate called without an active exception") after the
    work is done, seen with both torch builds, above all after a peer died."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_pyro_die(out):
    """Rank 1 dies in epoch 2 (its decoder's 7th call: epoch 1 is 4 steps and 1 validation
    pass = 5 calls); the survivors write what they caught."""
    import torch.distributed as dist

    from ppl_vae.pyro.distributed import DistributedError, initialize

    initialize(timeout=30)
    rank = dist.get_rank()
    try:
        pyro_fit(out / "run", EPOCHS, distributed=True, die_after=10)
    except DistributedError as e:
        (out / f"error_{rank}.json").write_text(json.dumps({
            "message": str(e), "epoch": e.epoch, "step": e.step,
            "checkpoint": None if e.checkpoint is None else str(e.checkpoint)}))
        _leave(3)
    _leave(0)


# ----------------------------------------------------------------------------------- NumPyro
def numpyro_vae():
    from jax import random

    import ppl_vae.numpyro as pn
    from ppl_vae.guides.vae_numpyro import vae_guide
    from ppl_vae.models.vae_numpyro import vae_model

    k = random.split(random.PRNGKey(0), 3)
    encoder = pn.Encoder(D, L, HIDDEN, gated=False, rng_key=k[0])
    decoder = pn.Decoder(L, D, HIDDEN, gated=False, rng_key=k[1])
    prior = pn.LearnedVampPrior(encoder, K, rng_key=k[2])
    return (partial(vae_model, decoder=decoder, prior=prior),
            partial(vae_guide, encoder=encoder))


def run_numpyro(out):
    """Every comparison in one process (compiling is the cost, so identical programs come
    from JAX's compilation cache): two epochs on one device and sharded over all, each
    resumed to four the other way, four straight on one device, and evaluation on one
    device and sharded; writes ``numpyro.npz``."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import numpyro
    from jax import random

    import ppl_vae.numpyro as pn

    numpyro.enable_validation(True)
    train, valid, test = data()
    train = train[:NUMPYRO_TRAIN]
    model, guide = numpyro_vae()

    def fit(name, num_epochs, distributed, resume=False):
        return pn.fit(random.PRNGKey(1), model, guide, train, valid, num_epochs=num_epochs,
                      checkpoint_dir=out / name, resume=resume, distributed=distributed,
                      **FIT)

    fit("single_half", HALF, False)
    fit("sharded_half", HALF, True)
    fit("single_half", EPOCHS, True, resume=True)  # one device's checkpoint, resumed sharded
    fit("sharded_half", EPOCHS, False, resume=True)  # and the other way
    fit("single", EPOCHS, False)
    results = {"num_devices": np.array(len(jax.devices()))}
    params, _ = pn.load_params(out / "single" / "last.npz", model, guide, train)
    for tag, distributed in (("single", False), ("sharded", True)):
        results.update(numpyro_evaluate(model, guide, params, distributed, tag))
    np.savez(out / "numpyro.npz", **results)


def numpyro_evaluate(model, guide, params, distributed, tag):
    from jax import random

    import ppl_vae.numpyro as pn

    _, valid, test = data()
    log_px, log_w = pn.importance_log_likelihood(
        random.PRNGKey(5), model, guide, test, params=params, return_log_weights=True,
        distributed=distributed, **EVAL)
    # the validation set in chunks of 1000, as fit computes it: the same compiled program
    elbo = pn.elbo_per_example(random.PRNGKey(6), model, guide, valid, params=params,
                               distributed=distributed)
    return {f"log_px_{tag}": log_px, f"log_w_{tag}": log_w, f"elbo_{tag}": np.array(elbo)}


def run_numpyro_hosts(out):
    """One of two processes (one CPU device each) joined by ``JAX_COORDINATOR_ADDRESS``:
    four epochs sharded over both hosts (no validation set: one program less to compile,
    and the same parameters, whose keys do not depend on it), then the test images,
    sharded, with the parameters of ``out/reference.npz``; process 0 writes ``hosts.npz``."""
    from ppl_vae.numpyro.distributed import initialize

    initialize(timeout=60)  # first, before any JAX array
    import jax
    import numpyro
    from jax import random

    import ppl_vae.numpyro as pn

    numpyro.enable_validation(True)
    train, _, test = data()
    train = train[:NUMPYRO_TRAIN]
    model, guide = numpyro_vae()
    pn.fit(random.PRNGKey(1), model, guide, train, num_epochs=EPOCHS,
           checkpoint_dir=out / "hosts", distributed=True, **FIT)
    params, _ = pn.load_params(out / "reference.npz", model, guide, train)
    log_px, log_w = pn.importance_log_likelihood(
        random.PRNGKey(5), model, guide, test, params=params, return_log_weights=True,
        distributed=True, **EVAL)
    if jax.process_index() == 0:
        np.savez(out / "hosts.npz", num_devices=len(jax.devices()),
                 num_processes=jax.process_count(), log_px=log_px, log_w=log_w)


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    {"pyro": run_pyro, "pyro-die": run_pyro_die, "numpyro": run_numpyro,
     "numpyro-hosts": run_numpyro_hosts}[mode](out)
