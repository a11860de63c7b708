"""Stochastic variational inference for model/guide pairs that follow the plate convention.

:func:`fit` is the training loop behind ``examples/vamp_mnist.py``: minibatch SVI with a
Pyro ELBO (``Trace_ELBO`` or ``TraceMeanField_ELBO``), Adam, KL warm-up, early stopping on the
validation ELBO, checkpoints on disk, ``resume`` and a progress bar.

It uses Pyro's ``elbo.differentiable_loss`` with one ``torch.optim.Adam`` over every
parameter in the param store (the pattern of Pyro's "custom objectives" tutorial) rather
than ``SVI.step``, whose per-parameter optimizers cost a Python loop per step; the gradients
and the objective are Pyro's own.

The model and guide are called as ``model(x, beta)`` and ``guide(x, beta)``: ``beta`` is the
KL warm-up weight, a 0-d tensor, ``min(1, epoch / warmup_epochs)`` with epochs counted from 1,
fixed within an epoch (as in the reference implementation).
"""

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from tqdm.auto import tqdm

from ppl_vae._checks import (
    EXPLODED_NATS_PER_DIM,
    check_bool,
    check_data,
    check_int,
    check_positive_float,
    exploded_reason,
    valid_elbo_problem,
)
from ppl_vae.pyro._numerics import keep_optimizer_state_normal
from ppl_vae.checkpoint import (
    CheckpointError,
    check_resumable,
    check_signature,
    legacy_checkpoints,
    load_checkpoint,
    param_signature,
    save_checkpoint,
)
from ppl_vae.pyro import distributed as _dist
from ppl_vae.pyro.priors import prior_cache
from ppl_vae.pyro.validation import check_model_on_data

__all__ = ["fit", "FitResult", "TrainingDivergedError", "elbo_per_example", "warmup_beta",
           "load_params"]


class TrainingDivergedError(RuntimeError):
    """Training diverged: a NaN or infinite loss or gradient at some step, a loss that
    exploded, or a validation ELBO that collapsed (the rules: :mod:`ppl_vae._checks`).

    The parameters of the last good epoch (or the initial ones) are restored in the param
    store and held in ``.params``; the checkpoints on disk are those of the last good epoch.
    ``.epoch`` and ``.step`` say where it happened (1-based; ``.step`` None for a collapse).
    """

    def __init__(self, message, params=None, epoch=None, step=None):
        super().__init__(message)
        self.params, self.epoch, self.step = params, epoch, step


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    :ivar list history: one dict per epoch: ``epoch``, ``beta``, ``learning_rate``,
        ``train_loss`` (the scaled negative ELBO per example), ``valid_elbo`` (full ELBO per
        example, or None), ``seconds``.
    :ivar int best_epoch: the epoch whose parameters are loaded on return.
    :ivar float best_valid_elbo: its validation ELBO (None without validation data).
    :ivar bool stopped_early: True when early stopping ended the run.
    :ivar checkpoint_dir: where ``last.npz`` and ``best.npz`` were written (or None).
    :ivar dict params: the best epoch's parameters by param-store name (unconstrained).
    :ivar dict config: the run's configuration, as stored in its checkpoints.
    """

    history: list
    best_epoch: int
    best_valid_elbo: float
    stopped_early: bool
    checkpoint_dir: object
    params: dict
    config: dict = None


def _renyi_loss(elbo, model, guide, *args, **kwargs):
    """-(the Renyi bound) summed over the examples, differentiable: what Pyro's
    ``RenyiELBO`` computes, which has no ``differentiable_loss``. For ``alpha=0`` it is the
    IWAE bound of Burda et al. (2016), per example the log of the mean of the
    ``num_particles`` importance weights. The weights are those of the scaled sites, so under
    KL warm-up ``log w = log p(x | z) + beta (log p(z) - log q(z | x))`` (beta = 1: IWAE).
    The guide's sites must be reparameterised (the gradient is the pathwise one)."""
    log_w = []
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        # the plates common to every site (the data plate, and the particles' own when
        # vectorised) are kept: one log-weight per particle and example
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        w = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                w = w + torch_sum(site["log_prob"], sum_dims)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                if not site["fn"].has_rsample:
                    raise ValueError(
                        f"elbo=RenyiELBO needs reparameterised guide sites; {site['name']!r} "
                        f"({type(site['fn']).__name__}) has no rsample.")
                w = w - torch_sum(site["log_prob"], sum_dims)
        log_w.append(w)
    vectorized = elbo.vectorize_particles and elbo.num_particles > 1
    log_w = log_w[0] if vectorized else torch.stack(log_w)  # (num_particles, N)
    scaled = (1.0 - elbo.alpha) * log_w
    bound = (torch.logsumexp(scaled, 0) - math.log(elbo.num_particles)) / (1.0 - elbo.alpha)
    return -bound.sum()


def _differentiable_loss(elbo, model, guide, *args, **kwargs):
    """``elbo.differentiable_loss``, and the same for ``RenyiELBO`` (IWAE), which lacks it."""
    if isinstance(elbo, RenyiELBO):
        return _renyi_loss(elbo, model, guide, *args, **kwargs)
    return elbo.differentiable_loss(model, guide, *args, **kwargs)


def warmup_beta(epoch, warmup_epochs):
    """KL weight for 0-based ``epoch``: ``min(1, (epoch + 1) / warmup_epochs)``, 1 without
    warm-up. Never 0 (``poutine.scale`` rejects a zero scale)."""
    if not warmup_epochs:
        return 1.0
    return min(1.0, (epoch + 1) / warmup_epochs)


def _as_tensor(name, data, device, num_features=None):
    """Validated ``(N, D)`` data as a tensor of the default dtype on ``device``: arrays and
    tensors of any float or integer dtype alike (float64 becomes float32, as in NumPyro)."""
    if data is None:
        return None
    check_data(name, data, num_features)
    if not torch.is_tensor(data):
        data = torch.as_tensor(np.asarray(data))
    return data.to(device=device, dtype=torch.get_default_dtype())


@torch.no_grad()
def elbo_per_example(model, guide, data, elbo=None, batch_size=1000, *, distributed=False):
    """Mean single-sample ELBO per example of ``data`` (``model(x, None)``: full KL).

    :param bool distributed: every rank of the process group computes its block of each
        chunk (:mod:`ppl_vae.pyro.distributed`) and the sums are added up: the same value on
        every rank, equal to the single-process one up to float32 summation order.
    """
    check_int("batch_size", batch_size)
    elbo = elbo or Trace_ELBO()
    if distributed:
        _dist.initialize(data.device)
        total = torch.tensor(_local_elbo_sum(model, guide, data, elbo, batch_size),
                             dtype=torch.float64, device=data.device)
        return -float(_dist.all_reduce_sum(total)) / len(data)
    total = 0.0
    with prior_cache():
        for start in range(0, len(data), batch_size):
            x = data[start:start + batch_size]
            total += float(_differentiable_loss(elbo, model, guide, x, None))
    return -total / len(data)


@torch.no_grad()
def _local_elbo_sum(model, guide, data, elbo, batch_size):
    """This rank's part of the summed negative ELBO: its block of every chunk."""
    rank, world = _dist.shard_index(), _dist.num_shards()
    total = 0.0
    with prior_cache():
        for start in range(0, len(data), batch_size):
            x = data[start:start + batch_size]
            lo, hi = _dist.shard_bounds(len(x), rank, world)
            # An empty block runs row 0 and discards it: its generator advances as the others'.
            rows = slice(lo, hi) if hi > lo else slice(0, 1)
            with _dist.shard_sampling(rows, len(x)):
                loss = float(_differentiable_loss(elbo, model, guide, x[rows], None))
            total += loss if hi > lo else 0.0
    return total


def _param_state():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


@torch.no_grad()
def _load_param_state(state):
    store = pyro.get_param_store()
    for name, value in state.items():
        store.get_param(name).unconstrained().copy_(value)


def _checkpoint_arrays(params, best_params=None, optimizer=None):
    arrays = {f"params/{k}": v.detach().cpu().numpy() for k, v in params.items()}
    if best_params is not None:
        arrays.update({f"best/{k}": v.detach().cpu().numpy() for k, v in best_params.items()})
    if optimizer is not None:
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                arrays[f"optim/{index}/{key}"] = torch.as_tensor(value).cpu().numpy()
    arrays["rng/torch"] = torch.get_rng_state().numpy()
    return arrays


def _group(arrays, prefix, device):
    n = len(prefix) + 1
    return {k[n:]: torch.as_tensor(v, device=device) for k, v in arrays.items()
            if k.startswith(prefix + "/")}


def _normalize_gradients(optimizer, args, kwargs):
    """Step pre-hook: every parameter's gradient divided by its own L2 norm (plus 1e-7), the
    reference implementation's ``AdamNormGrad`` (``fit(normalize_gradients=True)``)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    if grads:
        torch._foreach_div_(grads, torch._foreach_add(torch._foreach_norm(grads), 1e-7))


def _adam(params, learning_rate, normalize_gradients=False):
    """``torch.optim.Adam`` with the fused kernel where torch has one for the parameters'
    device (CPU and CUDA): one pass over each parameter instead of the for-loop version's
    six (``lerp_``, ``mul_``, ``addcmul_``, ``sqrt``, ``div``, ``addcdiv_``), which took a
    fifth of a VampPrior VAE step on the CPU. The same update: Adam's algorithm, so the
    checkpoints (``exp_avg``, ``exp_avg_sq``, ``step``) are interchangeable. Registers
    :func:`~ppl_vae.pyro._numerics.keep_optimizer_state_normal` on it, and with
    ``normalize_gradients`` a step pre-hook that scales each gradient to unit L2 norm."""
    try:
        optimizer = torch.optim.Adam(params, lr=learning_rate, fused=True)
    except RuntimeError:  # "fused=True requires ... Tensors of supported devices"
        optimizer = torch.optim.Adam(params, lr=learning_rate)
    if normalize_gradients:
        optimizer.register_step_pre_hook(_normalize_gradients)
    # Adam's first moment of a parameter whose gradient is exactly 0 (a pseudo-input pixel
    # outside hardtanh's [0, 1]) decays into subnormals that never reach 0 and slow every
    # step; zero them every 100 steps (ppl_vae.pyro._numerics; results unchanged)
    keep_optimizer_state_normal(optimizer)
    return optimizer


def _optimizer_state(arrays, param_groups):
    state = {}
    for key, value in arrays.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            # Adam keeps ``step`` on the CPU and its moments beside the parameters
            state.setdefault(int(index), {})[name] = torch.as_tensor(value)
    return {"state": state, "param_groups": param_groups}


def load_params(path, model, guide, data, *args, device=None):
    """Load the parameters of a checkpoint (``best.npz`` or ``last.npz``) into the param
    store, e.g. to evaluate a trained model without training.

    :param model: the model the checkpoint was trained with (``model(x, *args)``).
    :param guide: its guide.
    :param data: a few rows ``(n, D)``: one trace of the pair registers its parameters.
    :param args: the model's other arguments (e.g. ``beta``, default 1).
    :returns: the checkpoint's metadata (``epoch``, ``config``, ...).
    :raises CheckpointError: unreadable, written by the NumPyro backend, or for another model.
    """
    arrays, meta = load_checkpoint(path, backend="pyro")
    x = torch.as_tensor(np.asarray(data[:2]) if not torch.is_tensor(data) else data[:2],
                        dtype=torch.get_default_dtype(), device=device)
    args = args or (torch.tensor(1.0, device=device),)
    with poutine.trace(param_only=True) as capture, torch.no_grad():
        Trace_ELBO().differentiable_loss(model, guide, x, *args)
    current = {name: site["value"].unconstrained().detach().cpu().numpy()
               for name, site in capture.trace.nodes.items()}
    check_signature(path, meta, param_signature(current))
    _load_param_state(_group(arrays, "params", device))
    return meta


def _run_config(config, **settings):
    return {"backend": "pyro", **settings, **(config or {})}


def fit(model, guide, train_data, valid_data=None, *, num_epochs=100, batch_size=100,
        learning_rate=5e-4, elbo=None, warmup_epochs=0, early_stopping=None,
        checkpoint_dir=None, resume=False, seed=0, device=None, progress=True,
        description="train", config=None, dynamic_binarization=False, distributed=False,
        normalize_gradients=False):
    """Train ``model``/``guide`` by SVI on ``train_data``; return a :class:`FitResult`.

    On return the parameters of the best epoch (highest validation ELBO; the last epoch without
    validation data) are loaded into the param store and so into the networks.

    Everything is validated before the first step: the arguments, the data (shape, finite
    values, the same D in both splits, the support of the model's likelihood: binary data
    for a Bernoulli), and one run of the model and guide on two rows (a width that does not
    match D fails there, with a message naming the data). A ``batch_size`` above N trains
    on one batch of all N examples per epoch.

    :param model: ``model(x, beta)``, e.g. a ``functools.partial`` of
        ``ppl_vae.models.vae_pyro.vae_model``.
    :param guide: ``guide(x, beta)``.
    :param train_data: ``(N, D)`` tensor or array (any float or integer dtype; converted to
        the default dtype).
    :param valid_data: optional ``(M, D)``; its full ELBO drives early stopping and the best
        checkpoint.
    :param elbo: a Pyro ELBO instance (default ``Trace_ELBO()``); ``TraceMeanField_ELBO()`` uses
        an analytic KL where one is registered.
    :param int warmup_epochs: KL warm-up length (0: none).
    :param int early_stopping: stop after this many epochs past warm-up without a better
        validation ELBO (None: never).
    :param bool normalize_gradients: divide each parameter's gradient by its own L2 norm
        (plus 1e-7) before Adam, as the reference implementation of the VampPrior paper
        does (its ``AdamNormGrad``); default plain Adam.
    :param checkpoint_dir: directory for ``last.npz`` (every epoch) and ``best.npz``
        (:mod:`ppl_vae.checkpoint`: arrays and JSON, never a pickle).
    :param bool resume: continue from ``checkpoint_dir/last.npz``; the result is identical to
        an uninterrupted run with the same seed. The checkpoint's configuration must match
        this run's, except ``num_epochs``, ``early_stopping`` and ``learning_rate`` (which
        then applies from the next step on); otherwise :class:`~ppl_vae.checkpoint.
        CheckpointMismatchError` lists the differences.
    :param int seed: seeds Pyro's RNGs (initialisation, shuffling, ELBO samples).
    :param dict config: the caller's description of the run (model, prior, sizes,
        likelihood, dataset, ...): plain JSON data, stored in the checkpoints beside fit's
        own settings and compared on ``resume``.
    :param bool dynamic_binarization: ``train_data`` holds grey levels in [0, 1] and each
        minibatch is a fresh Bernoulli draw of them (dynamically binarised MNIST); the
        draws come from torch's generator, which the checkpoints save, so a resumed run
        draws the same. Validation data are used as given (binarise them once, with a fixed
        seed).
    :param bool distributed: data-parallel over the ranks of ``torchrun`` (the process group
        is made from its environment if there is none: gloo on a CPU, nccl on CUDA, where
        ``device="cuda"`` means ``cuda:LOCAL_RANK``). Each rank takes its block of every
        minibatch and the gradients are summed over ranks, so every rank takes the step a
        single process takes on the whole minibatch, with the same noise: the result equals
        the single-process run with the same seed up to float32 summation order
        (:mod:`ppl_vae.pyro.distributed`). Every rank returns the same result; only rank 0
        writes checkpoints, which resume on any number of ranks.
    :raises ValueError: bad arguments or data, before any work.
    :raises TrainingDivergedError: the loss or a gradient turned NaN/inf at some step, the
        loss exploded, or the validation ELBO collapsed; the last good epoch's parameters
        are restored and its checkpoints are kept.
    :raises ~ppl_vae.pyro.distributed.DistributedError: (``distributed=True``) another rank
        died or stopped answering; the last good epoch's parameters are restored and its
        checkpoint (on rank 0's disk) is named.
    """
    num_epochs = check_int("num_epochs", num_epochs)
    warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
    if early_stopping is not None:
        early_stopping = check_int("early_stopping", early_stopping)
    learning_rate = check_positive_float("learning_rate", learning_rate)
    normalize_gradients = check_bool("normalize_gradients", normalize_gradients)
    seed = check_int("seed", seed, 0)
    if elbo is not None and not isinstance(elbo, ELBO):
        raise ValueError(f"elbo must be a Pyro ELBO instance such as Trace_ELBO(); got "
                         f"{type(elbo).__name__}.")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a dict of plain settings; got {type(config).__name__}.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from.")
    if distributed:
        rank, world = _dist.initialize(device)
        device = _dist.local_device(device)
    else:
        rank, world = 0, 1
    main = rank == 0  # writes the checkpoints and shows the progress bar
    device = torch.device(device) if device is not None else torch.device("cpu")
    train_data = _as_tensor("train_data", train_data, device)
    num_train, num_features = train_data.shape
    valid_data = _as_tensor("valid_data", valid_data, device, num_features)
    batch_size = check_int("batch_size", batch_size)  # above N: one batch of all N
    if dynamic_binarization and not bool(((train_data >= 0) & (train_data <= 1)).all()):
        raise ValueError("dynamic_binarization=True needs train_data in [0, 1] (the "
                         "probabilities each pixel is drawn with); got values in "
                         f"[{float(train_data.min())}, {float(train_data.max())}].")
    elbo = elbo or Trace_ELBO()
    pyro.set_rng_seed(seed)
    one = torch.tensor(1.0, device=device)
    head = torch.bernoulli(train_data[:2]) if dynamic_binarization else train_data
    # The checks run the model and guide once: on forked generators, and forgetting the
    # parameters they created, so that the run draws exactly what it would without them.
    store = pyro.get_param_store()
    existing = set(store.keys())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        check_model_on_data(model, guide, head, "train_data", one)
        if valid_data is not None:
            check_model_on_data(model, guide, valid_data, "valid_data", one)
    for name in set(store.keys()) - existing:
        del store[name]

    # One trace registers every parameter (networks, pseudo-inputs, ...) in the param store.
    with poutine.trace(param_only=True) as param_capture:
        _differentiable_loss(elbo, model, guide, head[:2], one)
    names = list(param_capture.trace.nodes)
    params = [site["value"].unconstrained() for site in param_capture.trace.nodes.values()]
    optimizer = _adam(params, learning_rate, normalize_gradients)
    run_config = _run_config(
        config, elbo=type(elbo).__name__, num_particles=getattr(elbo, "num_particles", 1),
        batch_size=batch_size, warmup_epochs=warmup_epochs, seed=seed, num_train=num_train,
        num_valid=0 if valid_data is None else len(valid_data), num_features=num_features,
        dynamic_binarization=bool(dynamic_binarization), num_epochs=num_epochs,
        early_stopping=early_stopping, learning_rate=learning_rate,
        normalize_gradients=normalize_gradients)
    signature = param_signature({n: p.detach().cpu().numpy() for n, p in zip(names, params)})

    history, start_epoch = [], 0
    best = {"epoch": -1, "valid_elbo": -math.inf, "params": None, "bad_epochs": 0}
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last_path = best_path = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last_path, best_path = ckpt_dir / "last.npz", ckpt_dir / "best.npz"
        if resume and last_path.exists():
            arrays, meta = load_checkpoint(last_path, backend="pyro")
            check_resumable(last_path, meta, run_config, signature)
            _load_param_state(_group(arrays, "params", device))
            param_groups = meta["optimizer"]["param_groups"]
            options = {k: optimizer.param_groups[0][k] for k in ("lr", "fused", "foreach")}
            optimizer.load_state_dict(_optimizer_state(arrays, param_groups))
            for group in optimizer.param_groups:  # this run's learning rate and kernel
                group.update(options)
            torch.set_rng_state(torch.as_tensor(arrays["rng/torch"]))
            if device.type == "cuda" and "rng/cuda" in arrays:
                torch.cuda.set_rng_state(torch.as_tensor(arrays["rng/cuda"]), device)
            history, start_epoch = meta["history"], meta["epoch"]
            best = dict(meta["best"], params=_group(arrays, "best", device) or None)
        elif resume and legacy_checkpoints(ckpt_dir):
            raise CheckpointError(
                f"{legacy_checkpoints(ckpt_dir)[0]} is a checkpoint of ppl_vae 0.1, a pickle, "
                "which is never loaded (unpickling can run code). Train again (without "
                "resume, or in another checkpoint_dir).")
        elif resume and main:
            warnings.warn(f"resume=True but {last_path} does not exist; starting from "
                          "scratch.", stacklevel=2)
    if distributed:
        _agree_and_broadcast(params, start_epoch, last_path, device)

    good = {"epoch": start_epoch, "params": _param_state()}  # what a divergence restores
    num_batches = math.ceil(num_train / batch_size)  # one when batch_size >= N
    exploded = EXPLODED_NATS_PER_DIM * num_features
    stopped_early = False
    bar = tqdm(range(start_epoch, num_epochs), desc=description, disable=not progress or not main,
               initial=start_epoch, total=num_epochs, unit="epoch", dynamic_ncols=True)

    def diverged(reason, epoch, step=None):
        _load_param_state(good["params"])
        bar.close()
        where = (f"; the last good checkpoint is {last_path}" if last_path is not None
                 and last_path.exists() else "")
        at = f"epoch {epoch}" + (f", step {step} of {num_batches}" if step else "")
        restored = (f"the parameters of epoch {good['epoch']}" if good["epoch"]
                    else "the initial parameters")
        return TrainingDivergedError(
            f"training diverged in {at}: {reason}. Stopped and restored {restored}{where}. "
            f"Try a smaller learning_rate (now {learning_rate:g}).",
            params=good["params"], epoch=epoch, step=step)

    @contextlib.contextmanager
    def collective(what, epoch, step=None):
        """A failed collective (a rank died, or a timeout) as a DistributedError."""
        try:
            yield
        except RuntimeError as e:  # torch.distributed.DistBackendError is one
            _load_param_state(good["params"])
            bar.close()
            at = f"epoch {epoch}" + (f", step {step} of {num_batches}" if step else "")
            where = (f"the last good checkpoint is {last_path} (epoch {good['epoch']}): resume "
                     "from it with resume=True, on any number of ranks"
                     if last_path is not None and good["epoch"] else "no checkpoint was written")
            raise _dist.DistributedError(
                f"rank {rank} of {world}: {what} failed in {at}: another rank died or stopped "
                f"answering ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}). "
                f"Stopped; {where}.", epoch=epoch, step=step,
                checkpoint=last_path if last_path is not None and good["epoch"] else None
            ) from e

    def shard_step(epoch, i, perm, beta_t):
        """One step on this rank's block of minibatch ``i``; returns the global loss."""
        index = perm[i * batch_size:(i + 1) * batch_size]
        size = len(index)
        lo, hi = _dist.shard_bounds(size, rank, world)
        # An empty block runs row 0 and discards it: its generator advances as the others'.
        rows = slice(lo, hi) if hi > lo else slice(0, 1)
        if dynamic_binarization:  # the whole minibatch's draws, as a single process's
            x = torch.bernoulli(train_data[index])[rows]
        else:
            x = train_data[index[rows]]
        failure = None
        optimizer.zero_grad(set_to_none=True)
        try:
            with warnings.catch_warnings(), _dist.shard_sampling(rows, size):
                warnings.filterwarnings("ignore", message="Encountered NaN")
                loss = _differentiable_loss(elbo, model, guide, x, beta_t)
        except ValueError as e:
            if "invalid values" not in str(e) and "Expected parameter" not in str(e):
                raise
            failure, loss = str(e).splitlines()[0][:120], None
        if loss is not None and hi > lo and bool(torch.isfinite(loss.detach())):
            loss.backward()
        zero = torch.zeros((), device=device)
        local = loss.detach() if loss is not None and hi > lo else zero
        # one bucket: every gradient, which of them exist, the loss and the failure count
        flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                          for p in params] + [torch.stack(
                              [(p.grad is not None) + zero for p in params]
                              + [local.to(zero.dtype), (failure is not None) + zero])])
        with collective("the all-reduce of the gradients", epoch + 1, i + 1):
            _dist.all_reduce_sum(flat)
        stats = flat[-len(params) - 2:].tolist()
        value, failures = stats[-2], int(stats[-1])
        if failures:
            detail = f" ({failure})" if failure else ""
            raise diverged(f"a distribution got non-finite parameters on {failures} of {world} "
                           f"ranks{detail}", epoch + 1, i + 1)
        if not math.isfinite(value):
            raise diverged(f"the loss became {value}", epoch + 1, i + 1)
        if value / size > exploded:
            raise diverged(exploded_reason(value / size), epoch + 1, i + 1)
        offset = 0
        for p, has_grad in zip(params, stats[:len(params)]):
            if has_grad:
                p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if not bool(torch.isfinite(norm)):
            raise diverged(f"a gradient became non-finite (norm {float(norm)})", epoch + 1,
                           i + 1)
        optimizer.step()
        return value

    for epoch in bar:
        t0 = time.perf_counter()
        beta = warmup_beta(epoch, warmup_epochs)
        beta_t = torch.tensor(beta, device=device)
        # The permutation and the dynamic binarisation come from the CPU generator that the
        # checkpoint saves, so a resumed run shuffles and draws exactly as an uninterrupted one.
        perm = torch.randperm(num_train).to(device)
        total = 0.0
        for i in range(num_batches):
            if distributed:
                total += shard_step(epoch, i, perm, beta_t)
                continue
            x = train_data[perm[i * batch_size:(i + 1) * batch_size]]
            if dynamic_binarization:
                x = torch.bernoulli(x)
            try:
                with warnings.catch_warnings():
                    # Pyro warns of a NaN log-density; the divergence error below says more
                    warnings.filterwarnings("ignore", message="Encountered NaN")
                    loss = _differentiable_loss(elbo, model, guide, x, beta_t)
            except ValueError as e:
                if "invalid values" not in str(e) and "Expected parameter" not in str(e):
                    raise
                raise diverged("a distribution got non-finite parameters ("
                               f"{str(e).splitlines()[0][:120]})", epoch + 1, i + 1) from None
            value = float(loss.detach())  # one host sync per step: the divergence check
            if not math.isfinite(value):
                raise diverged(f"the loss became {value}", epoch + 1, i + 1)
            if value / len(x) > exploded:
                raise diverged(exploded_reason(value / len(x)), epoch + 1, i + 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if not bool(torch.isfinite(norm)):
                raise diverged(f"a gradient became non-finite (norm {float(norm)})", epoch + 1,
                               i + 1)
            optimizer.step()
            total += value
        train_loss = total / num_train
        record = {"epoch": epoch + 1, "beta": beta, "learning_rate": learning_rate,
                  "train_loss": train_loss, "valid_elbo": None, "seconds": None}
        if valid_data is not None and distributed:
            valid = torch.tensor(_local_elbo_sum(model, guide, valid_data, elbo, 1000),
                                 dtype=torch.float64, device=device)
            with collective("the all-reduce of the validation ELBO", epoch + 1):
                _dist.all_reduce_sum(valid)
            record["valid_elbo"] = -float(valid) / len(valid_data)
        elif valid_data is not None:
            record["valid_elbo"] = elbo_per_example(model, guide, valid_data, elbo)
        if valid_data is not None:
            problem = valid_elbo_problem(record["valid_elbo"], best["valid_elbo"],
                                         best["epoch"], num_features)
            if problem:
                raise diverged(problem, epoch + 1)
        record["seconds"] = time.perf_counter() - t0
        history.append(record)

        params_now = _param_state()  # one copy per epoch, shared by best and last
        score = record["valid_elbo"] if valid_data is not None else -train_loss
        if score > best["valid_elbo"] or valid_data is None:
            best.update(epoch=epoch + 1, valid_elbo=score, params=params_now, bad_epochs=0)
            if ckpt_dir is not None and main:
                save_checkpoint(best_path, _checkpoint_arrays(best["params"]), {
                    "backend": "pyro", "kind": "best", "epoch": epoch + 1,
                    "valid_elbo": record["valid_elbo"], "config": run_config,
                    "signature": signature, "param_names": names})
        elif epoch + 1 > warmup_epochs:
            best["bad_epochs"] += 1
        if ckpt_dir is not None and main:
            arrays = _checkpoint_arrays(params_now, best["params"], optimizer)
            if device.type == "cuda":
                arrays["rng/cuda"] = torch.cuda.get_rng_state(device).numpy()
            param_groups = [{k: v for k, v in g.items() if k != "params"} | {
                "params": list(range(len(params)))} for g in optimizer.param_groups]
            save_checkpoint(last_path, arrays, {
                "backend": "pyro", "kind": "last", "epoch": epoch + 1, "config": run_config,
                "signature": signature, "param_names": names, "history": history,
                "best": {k: v for k, v in best.items() if k != "params"},
                "optimizer": {"param_groups": param_groups}, "world_size": world,
                "versions": {"torch": torch.__version__, "pyro": pyro.__version__}})
        if ckpt_dir is not None and distributed:
            with collective("the barrier after rank 0's checkpoint", epoch + 1):
                _dist.barrier()  # no rank runs ahead of rank 0's files
        good = {"epoch": epoch + 1, "params": params_now}
        bar.set_postfix(loss=f"{train_loss:.2f}", valid=(
            f"{record['valid_elbo']:.2f}" if record["valid_elbo"] is not None else "-"),
            beta=f"{beta:.2f}")
        if early_stopping is not None and best["bad_epochs"] >= early_stopping:
            stopped_early = True
            break
    bar.close()
    if best["params"] is not None:
        _load_param_state(best["params"])
    return FitResult(history, best["epoch"],
                     best["valid_elbo"] if valid_data is not None else None,
                     stopped_early, ckpt_dir, best["params"], run_config)


def _agree_and_broadcast(params, start_epoch, last_path, device):
    """Every rank must start from the same epoch (a checkpoint_dir that one rank cannot see
    would silently split the run); then rank 0's parameters go to all, as DDP does, so that
    networks built without a common seed start alike."""
    epochs = torch.tensor([start_epoch, -start_epoch], dtype=torch.float64, device=device)
    try:
        torch.distributed.all_reduce(epochs, op=torch.distributed.ReduceOp.MAX)
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        torch.distributed.broadcast(flat, 0)
    except RuntimeError as e:
        raise _dist.DistributedError(
            f"rank {_dist.shard_index()}: the ranks could not agree on a start: another rank "
            f"died or stopped answering ({type(e).__name__}: {str(e).strip()[:200]}).") from e
    if epochs[0] != -epochs[1]:
        raise CheckpointError(
            f"the ranks would resume from different epochs ({int(-epochs[1])} to "
            f"{int(epochs[0])}; rank {_dist.shard_index()} from {start_epoch}): {last_path} "
            "must be visible to every rank (one host, or a shared file system).")
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
