"""Data parallelism over devices, and hosts, for the NumPyro backend: what
``fit(..., distributed=True)`` and the evaluation functions' ``distributed=True`` stand on.

Mirror of :mod:`ppl_vae.pyro.distributed`, where the unit is a process per device; here one
process drives every device it sees, and several hosts join through
``jax.distributed.initialize`` (:func:`initialize`, when ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are set)::

    python examples/vamp_mnist.py --backend numpyro --distributed        # every local device
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python ...         # two CPU "devices"

In :func:`~ppl_vae.numpyro.fit`:

- **One mesh.** :func:`mesh` lays ``jax.devices()`` (every host's) along one axis,
  :data:`AXIS` = ``"batch"``. The SVI state and the data are replicated on it; inside the
  jitted epoch each minibatch is constrained to ``NamedSharding(mesh, P("batch"))``, so XLA
  partitions every step over the devices and turns the gradient's sum over rows into an
  all-reduce. There is no hand-written communication.
- **The same random numbers.** With ``jax_threefry_partitionable`` (JAX's default) a draw
  does not depend on how its array is sharded: a sharded run equals the single-device run
  with the same key up to float32 summation order, and its checkpoints resume on any number
  of devices (the other way too).
- **Process 0 writes** checkpoints and shows progress; :func:`barrier` follows every write.
- **Failure.** A host that dies makes the others' next collective fail, or JAX's
  coordination service stop them after its heartbeat timeout; :func:`fit` turns an error it
  can catch into :class:`DistributedError`, naming the last good checkpoint.

Evaluation (``importance_log_likelihood(..., distributed=True)``) deals the chunks out
round-robin over the devices (chunk ``i`` on device ``i % num_devices``), each computed by
the same compiled function with the same key ``fold_in(rng_key, i)`` as on one device, so
the result equals the single-device one bit for bit (sharding each chunk over the mesh
instead changes the last bit of some log-weights: the partitioned program sums in another
order).
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ppl_vae.errors import DistributedError

__all__ = ["DistributedError", "initialize", "is_main_process", "num_shards", "shard_bounds",
           "gather_rows", "barrier", "mesh", "replicate", "batch_sharding", "AXIS",
           "DEFAULT_TIMEOUT"]

#: the mesh axis the minibatch (and nothing else) is split along
AXIS = "batch"
#: seconds :func:`initialize` waits for the other hosts to join
DEFAULT_TIMEOUT = 600.0

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(timeout=DEFAULT_TIMEOUT):
    """Join the other hosts when ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are set; nothing otherwise, or when already
    joined. Call it first: JAX refuses once it has computed anything.

    :param float timeout: seconds to wait for the other hosts to join.
    :returns: the number of devices, over every host.
    :raises RuntimeError: only some of the variables are set, or JAX has computed already.
    """
    present = [name for name in _ENV if os.environ.get(name)]
    if present and not jax.distributed.is_initialized():
        if len(present) < len(_ENV):
            raise RuntimeError(
                f"joining several hosts needs {', '.join(_ENV)}; only {', '.join(present)} "
                "set.")
        try:
            jax.distributed.initialize(
                os.environ["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]),
                initialization_timeout=int(timeout))
        except RuntimeError as e:
            raise RuntimeError(
                f"jax.distributed.initialize failed ({e}). Call "
                "ppl_vae.numpyro.distributed.initialize() at the start of the program, before "
                "any JAX array is made (networks included).") from e
    return len(jax.devices())


def is_main_process():
    """True in process 0 (and in a single process): the one that writes and prints."""
    return jax.process_index() == 0


def num_shards():
    """The number of devices the minibatch is split over: ``len(jax.devices())``."""
    return len(jax.devices())


def shard_bounds(num_examples, index, num_shards):
    """``(start, stop)`` of shard ``index``'s contiguous block of ``num_examples`` rows:
    blocks in order, their sizes differing by at most one (as XLA splits a sharded axis
    that divides evenly)."""
    return num_examples * index // num_shards, num_examples * (index + 1) // num_shards


def mesh(devices=None):
    """A one-axis ``Mesh`` (:data:`AXIS`) over ``devices`` (default ``jax.devices()``)."""
    return Mesh(np.array(jax.devices() if devices is None else devices), (AXIS,))


def batch_sharding(mesh):
    """Rows split over the mesh, everything else whole: ``NamedSharding(mesh, P("batch"))``."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree, mesh):
    """Every array of ``tree`` placed whole on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def barrier(name="ppl_vae"):
    """Wait for every host (nothing in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_rows(chunks, num_examples, trailing_shape=()):
    """Assemble per-example results that the hosts computed for disjoint rows.

    :param chunks: this process's ``(rows, values)`` pairs: a slice (or index array) of
        example indices and an array of shape ``(n, *trailing_shape)``.
    :param int num_examples: N.
    :param tuple trailing_shape: the shape of one example's result.
    :returns: ``(N, *trailing_shape)`` float64 NumPy array, the same in every process, rows
        in order.
    """
    out = np.zeros((num_examples, *trailing_shape), dtype=np.float64)
    for rows, values in chunks:
        out[rows] = np.asarray(values, dtype=np.float64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        # Every row is non-zero in one process only, and x + 0 is exact: the sum is a gather
        # (as raw 32-bit words, which JAX does not turn into float32 without x64).
        words = multihost_utils.process_allgather(out.view(np.uint32))
        out = np.asarray(words).view(np.float64).sum(axis=0)
    return out
