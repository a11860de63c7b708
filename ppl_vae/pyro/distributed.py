"""Data parallelism over ``torch.distributed`` ranks: what ``fit(..., distributed=True)``
and the evaluation functions' ``distributed=True`` stand on.

Launch one process per device with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)::

    torchrun --nproc_per_node 2 examples/vamp_mnist.py --distributed

:func:`initialize` joins the default process group from those variables (gloo on a CPU,
nccl on CUDA). Then, in :func:`~ppl_vae.pyro.fit`:

- **Same data, disjoint rows.** Every rank holds all the training data and draws the same
  permutation (the same seed); each takes its contiguous block of every global minibatch
  (:func:`shard_bounds`) and computes the ELBO on it.
- **Summed gradients.** The loss is a sum over examples, so the gradients are summed over
  ranks, with one ``all_reduce`` of one flat bucket per step (the loss value and an error flag
  travel in the same bucket): every rank then takes the same Adam step as a single process
  on the whole minibatch, and the same divergence decision.
- **The single-process noise.** Under :func:`shard_sampling` every latent site draws the
  standard-normal noise of the whole global minibatch and keeps its own rows, so every
  rank's generator advances exactly as a single process's would, and a run on W ranks equals
  the single-process run with the same seed up to float32 summation order, and resumes from
  (or into) a checkpoint of any number of ranks. Latent sites must be Normal or
  MultivariateNormal (with ``.to_event``), inside the plate ``"data"``, and the networks must
  draw no random numbers of their own (no dropout).
- **Rank 0 writes.** Only rank 0 writes checkpoints and shows progress; a barrier follows
  every write. On ``resume`` every rank loads the same ``last.npz``, so ``checkpoint_dir``
  must be visible to all of them (one host, or a shared file system).
- **Failure.** A rank that dies or stops answering makes the next collective fail (at once
  for a closed connection, after the process group's ``timeout`` for a hang); :func:`fit`
  turns that into :class:`DistributedError`, naming the epoch, the step and the last good
  checkpoint, which loads on any number of ranks.

Evaluation (``importance_log_likelihood(..., distributed=True)``) deals the chunks out
round-robin: chunk ``i`` on rank ``i % world_size``, each with its own seed, so every chunk
is computed exactly as in a single process; :func:`gather_rows` assembles the per-example
results on every rank.
"""

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist
from pyro.distributions import MaskedDistribution
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent, MultivariateNormal, Normal
from torch.distributions.multivariate_normal import _batch_mv
from torch.distributions.utils import _standard_normal

from ppl_vae.errors import DistributedError

__all__ = ["DistributedError", "initialize", "is_main_process", "num_shards", "shard_index",
           "shard_bounds", "shard_sampling", "gather_rows", "barrier", "all_reduce_sum", "broadcast_",
           "local_device", "DEFAULT_TIMEOUT"]

#: seconds a collective waits for the other ranks before it fails (a rank that hangs)
DEFAULT_TIMEOUT = 600.0

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def local_device(device=None):
    """The device of this rank: ``cuda`` (no index) becomes ``cuda:LOCAL_RANK``, anything
    else is returned as a ``torch.device``."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def initialize(device=None, timeout=DEFAULT_TIMEOUT):
    """Join the default process group, once (later calls return at once): gloo for a CPU
    ``device``, nccl for CUDA, from the environment that ``torchrun`` sets.

    :param device: this rank's device (``cuda`` means ``cuda:LOCAL_RANK``).
    :param float timeout: seconds a collective waits for the others before it fails.
    :returns: ``(rank, world_size)``.
    :raises RuntimeError: no process group and none of torchrun's variables to make one.
    """
    if not dist.is_available():
        raise RuntimeError("distributed=True needs torch.distributed, which this torch build "
                           "lacks.")
    if not dist.is_initialized():
        missing = [name for name in _ENV if name not in os.environ]
        if missing:
            raise RuntimeError(
                f"distributed=True needs a process group, and there is none: the environment "
                f"lacks {', '.join(missing)}. Launch with torchrun, e.g. `torchrun "
                "--nproc_per_node 2 your_script.py`, or call torch.distributed."
                "init_process_group yourself first.")
        device = local_device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()


def _active():
    return dist.is_available() and dist.is_initialized()


def shard_index():
    """This rank (0 without a process group)."""
    return dist.get_rank() if _active() else 0


def num_shards():
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if _active() else 1


def is_main_process():
    """True on rank 0 (and without a process group): the one that writes and prints."""
    return shard_index() == 0


def shard_bounds(num_examples, index, num_shards):
    """``(start, stop)`` of shard ``index``'s contiguous block of ``num_examples`` rows:
    blocks in rank order, their sizes differing by at most one."""
    return num_examples * index // num_shards, num_examples * (index + 1) // num_shards


def barrier():
    """Wait for every rank (nothing without a process group)."""
    if _active():
        dist.barrier()


def _collective(op, tensor, *args):
    """``op`` on ``tensor``, through this rank's CUDA device when the backend is nccl (which
    takes no CPU tensors)."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        op(moved, *args)
        tensor.copy_(moved)
    else:
        op(tensor, *args)
    return tensor


def all_reduce_sum(tensor):
    """Sum ``tensor`` over ranks, in place, and return it (as is without a process group)."""
    return _collective(dist.all_reduce, tensor) if _active() else tensor


def broadcast_(tensor, src=0):
    """Overwrite ``tensor`` with rank ``src``'s, in place, and return it (as is without a
    process group)."""
    return _collective(dist.broadcast, tensor, src) if _active() else tensor


def gather_rows(chunks, num_examples, trailing_shape=()):
    """Assemble per-example results that the ranks computed for disjoint rows.

    :param chunks: this rank's ``(rows, values)`` pairs: a slice (or index array) of example
        indices and an array of shape ``(n, *trailing_shape)``.
    :param int num_examples: N.
    :param tuple trailing_shape: the shape of one example's result (``()`` for log p(x),
        ``(S,)`` for its log-weights).
    :returns: ``(N, *trailing_shape)`` float64 NumPy array, the same on every rank, rows in
        order.
    """
    out = np.zeros((num_examples, *trailing_shape), dtype=np.float64)
    for rows, values in chunks:
        out[rows] = np.asarray(values, dtype=np.float64)
    if _active():
        # Every row is non-zero on one rank only, and x + 0 is exact: the sum is a gather.
        out = all_reduce_sum(torch.from_numpy(out)).numpy()
    return out


def _leaf(fn):
    while isinstance(fn, (Independent, MaskedDistribution)):
        fn = fn.base_dist
    return fn


class _ShardSampling(Messenger):
    def __init__(self, rows, global_size, plate="data"):
        super().__init__()
        self.start, self.stop = rows.start, rows.stop
        self.global_size, self.plate = global_size, plate

    def _pyro_sample(self, msg):
        fn = msg["fn"]
        if type(fn).__name__ == "_Subsample" or msg["is_observed"] or msg["value"] is not None:
            return  # a plate's index, the data, or a value replayed from the guide
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.plate), None)
        if frame is None:
            raise ValueError(
                f"distributed=True needs every sample site inside the plate {self.plate!r} (a "
                f"global site would count once per rank); site {msg['name']!r} is not.")
        leaf = _leaf(fn)
        if (getattr(type(leaf), "rsample", None) not in (Normal.rsample, MultivariateNormal.rsample)
                or msg["kwargs"].get("sample_shape")):
            raise ValueError(
                f"distributed=True draws each latent site's noise for the whole global "
                f"minibatch (so that it equals a single-process run), which it can do for "
                f"Normal and MultivariateNormal sites (with .to_event); site {msg['name']!r} "
                f"is a {type(leaf).__name__}. Train it without distributed=True.")
        shape = list(fn.shape())
        dim = frame.dim - len(fn.event_shape)  # the plate's position in the sample's shape
        if shape[dim] != self.stop - self.start:
            raise ValueError(
                f"site {msg['name']!r} has {shape[dim]} rows in plate {self.plate!r}; this "
                f"rank's shard has {self.stop - self.start} (a subsampled plate cannot be "
                "sharded).")
        shape[dim] = self.global_size
        eps = _standard_normal(shape, dtype=leaf.loc.dtype, device=leaf.loc.device)
        eps = eps.narrow(dim, self.start, self.stop - self.start)
        # the expressions of Normal.rsample and MultivariateNormal.rsample, on this rank's rows
        if isinstance(leaf, MultivariateNormal):
            value = leaf.loc + _batch_mv(leaf._unbroadcasted_scale_tril, eps)
        else:
            value = leaf.loc + eps * leaf.scale
        msg["value"] = value


def shard_sampling(rows, global_size, plate="data"):
    """Inside this context, every latent sample site in ``plate`` takes rows ``rows`` of the
    noise a single process would draw for all ``global_size`` rows.

    Wrap the ELBO call of one shard in it: the guide's latent sites draw
    ``(..., global_size, ...)`` standard normals, keep ``rows`` and transform them as
    ``rsample`` would; sites the model replays from the guide, observed sites and the
    plate's own index are left alone.

    :param slice rows: this shard's contiguous rows of the global batch.
    :param int global_size: the global batch size.
    :raises ValueError: (at a site) a latent site outside ``plate``, or not Normal /
        MultivariateNormal.
    """
    return _ShardSampling(rows, global_size, plate)
