"""Stochastic variational inference for model/guide pairs that follow the plate convention.

:func:`fit` trains any Pyro program whose first argument is the data: ``model(x, *args,
**kwargs)`` and ``guide(x, *args, **kwargs)`` (the shape of Pyro's own
``examples/vae/vae.py``, or a ``functools.partial`` of ``ppl_vae.models.vae_pyro.vae_model``).
Minibatch SVI with a Pyro ELBO (``Trace_ELBO``, ``TraceMeanField_ELBO``, ``RenyiELBO`` for the
IWAE bound), any ``torch.optim`` optimizer (Adam by default), KL warm-up, early stopping on
the validation ELBO, checkpoints on disk, ``resume``, per-epoch callbacks and a progress bar.

**KL warm-up** is a handler, not an argument of the programs: in epoch ``e`` (1-based) fit
runs ``latent_scale(model, beta)`` and ``latent_scale(guide, beta)``
(:func:`~ppl_vae.pyro.latent_scale`), which multiply the log-density of every latent sample
site by ``beta = min(1, e / warmup_epochs)``; observed sites are not scaled, and
``TraceMeanField_ELBO``'s analytic KL is scaled too. The validation ELBO is the full one.

This module is the engine: one optimizer step, the parameters' snapshot and restore, the
optimizer state to arrays and back. What is not a torch call (the epochs, warm-up, the
divergence rules, the checkpoints, resume, early stopping, callbacks) is
:func:`ppl_vae._training.drive`, shared with the NumPyro backend. It uses Pyro's
``elbo.differentiable_loss`` with one ``torch.optim`` optimizer over every parameter in the
param store (the pattern of Pyro's "custom objectives" tutorial) rather than ``SVI.step``,
whose per-parameter optimizers cost a Python loop per step; the gradients and the objective
are Pyro's own.
"""

import contextlib
import json
import math
import warnings

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.optim import PyroOptim

from ppl_vae._checks import EXPLODED_NATS_PER_DIM, check_data, check_int, exploded_reason
from ppl_vae._training import (
    DEFAULT_OPTIMIZER,
    Diverged,
    FitResult,
    Lost,
    check_settings,
    drive,
    run_config,
    warmup_beta,
)
from ppl_vae.checkpoint import check_signature, load_checkpoint, param_signature
from ppl_vae.errors import CheckpointError, TrainingDivergedError
from ppl_vae.pyro import distributed as _dist
from ppl_vae.pyro._numerics import keep_optimizer_state_normal
from ppl_vae.pyro.handlers import latent_scale
from ppl_vae.pyro.priors import prior_cache
from ppl_vae.pyro.validation import check_model_on_data

__all__ = ["fit", "FitResult", "TrainingDivergedError", "elbo_per_example", "warmup_beta",
           "load_params"]


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


def _annealed(program):
    """``program`` under :func:`latent_scale` with the KL weight fit passes as the keyword
    ``_kl_weight`` (a 0-d tensor); the program itself never sees it."""
    def annealed(x, *args, _kl_weight, **kwargs):
        with latent_scale(scale=_kl_weight):
            return program(x, *args, **kwargs)
    return annealed


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
def elbo_per_example(model, guide, data, elbo=None, batch_size=1000, *, distributed=False,
                     model_args=(), model_kwargs=None):
    """Mean single-sample ELBO per example of ``data`` (the full ELBO: no warm-up).

    :param model: ``model(x, *model_args, **model_kwargs)``; ``guide`` likewise.
    :param bool distributed: every rank of the process group computes its block of each
        chunk (:mod:`ppl_vae.pyro.distributed`) and the sums are added up: the same value on
        every rank, equal to the single-process one up to float32 summation order.
    """
    check_int("batch_size", batch_size)
    elbo = elbo or Trace_ELBO()
    model_kwargs = model_kwargs or {}
    if distributed:
        _dist.initialize(data.device)
        total = torch.tensor(_local_elbo_sum(model, guide, data, elbo, batch_size, model_args,
                                             model_kwargs),
                             dtype=torch.float64, device=data.device)
        return -float(_dist.all_reduce_sum(total)) / len(data)
    total = 0.0
    with prior_cache():
        for start in range(0, len(data), batch_size):
            x = data[start:start + batch_size]
            total += float(_differentiable_loss(elbo, model, guide, x, *model_args,
                                                **model_kwargs))
    return -total / len(data)


@torch.no_grad()
def _local_elbo_sum(model, guide, data, elbo, batch_size, args, kwargs):
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
                loss = float(_differentiable_loss(elbo, model, guide, x[rows], *args, **kwargs))
            total += loss if hi > lo else 0.0
    return total


def _param_state():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


@torch.no_grad()
def _load_param_state(state):
    store = pyro.get_param_store()
    for name, value in state.items():
        store.get_param(name).unconstrained().copy_(value)


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


def _adam(params, learning_rate):
    """fit's default optimizer: ``torch.optim.Adam`` with the fused kernel where torch has one
    for the parameters' device (CPU and CUDA): one pass over each parameter instead of the
    for-loop version's six (``lerp_``, ``mul_``, ``addcmul_``, ``sqrt``, ``div``,
    ``addcdiv_``), which took a fifth of a VampPrior VAE step on the CPU. The same update:
    Adam's algorithm, so the checkpoints (``exp_avg``, ``exp_avg_sq``, ``step``) are
    interchangeable. Its state is kept free of subnormals (:func:`_kept_normal`)."""
    try:
        optimizer = torch.optim.Adam(params, lr=learning_rate, fused=True)
    except RuntimeError:  # "fused=True requires ... Tensors of supported devices"
        optimizer = torch.optim.Adam(params, lr=learning_rate)
    return _kept_normal(optimizer)


def _kept_normal(optimizer):
    """Register :func:`~ppl_vae.pyro._numerics.keep_optimizer_state_normal` on ``optimizer``:
    Adam's first moment of a parameter whose gradient is exactly 0 (a pseudo-input pixel
    outside hardtanh's [0, 1]) decays into subnormals that never reach 0 and slow every step;
    they are zeroed every 100 steps (results unchanged)."""
    keep_optimizer_state_normal(optimizer)
    return optimizer


def _optimizer_spec(optimizer, optimizer_args, learning_rate):
    """``(constructor, its keyword arguments, the learning rate, the checkpoint's record)``
    for fit's ``optimizer`` argument: None (fused Adam), a ``torch.optim.Optimizer`` subclass
    (with ``optimizer_args``) or a ``pyro.optim`` optimizer such as
    ``pyro.optim.ClippedAdam({"lr": 1e-3})``."""
    if optimizer_args is not None and not isinstance(optimizer_args, dict):
        raise ValueError(f"optimizer_args must be a dict of keyword arguments; got "
                         f"{type(optimizer_args).__name__}.")
    if optimizer is None:
        if optimizer_args:
            raise ValueError("optimizer_args are for an optimizer class; with optimizer=None "
                             "fit uses Adam at learning_rate.")
        return _adam, {}, learning_rate, DEFAULT_OPTIMIZER
    if isinstance(optimizer, PyroOptim):
        if optimizer_args:
            raise ValueError("optimizer_args are for an optimizer class; a pyro.optim "
                             "optimizer carries its own arguments.")
        if callable(optimizer.pt_optim_args):
            raise ValueError("fit needs one set of arguments for every parameter; got a "
                             "pyro.optim optimizer whose arguments are a per-parameter "
                             "callable.")
        constructor, args = optimizer.pt_optim_constructor, dict(optimizer.pt_optim_args)
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        constructor, args = optimizer, dict(optimizer_args or {})
    else:
        raise ValueError(
            f"optimizer must be None (Adam), a torch.optim.Optimizer subclass such as "
            f"torch.optim.SGD (its arguments in optimizer_args), or a pyro.optim optimizer "
            f"such as pyro.optim.ClippedAdam({{'lr': 1e-3}}); got {optimizer!r}.")
    learning_rate = float(args.pop("lr", learning_rate))
    name = constructor.__name__
    qualified = (f"torch.optim.{name}" if getattr(torch.optim, name, None) is constructor
                 else f"{constructor.__module__}.{constructor.__qualname__}")
    try:
        record = qualified + (f" {json.dumps(args, sort_keys=True)}" if args else "")
    except TypeError:
        raise ValueError(f"the optimizer's arguments must be plain numbers, strings or lists "
                         f"(they are recorded in the checkpoints); got {args!r}.") from None
    return ((lambda params, lr: _kept_normal(constructor(params, lr=lr, **args))), args,
            learning_rate, record)


def _optimizer_state(arrays, param_groups):
    state = {}
    for key, value in arrays.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            # Adam keeps ``step`` on the CPU and its moments beside the parameters
            state.setdefault(int(index), {})[name] = torch.as_tensor(value)
    return {"state": state, "param_groups": param_groups}


def load_params(path, model, guide, data, *args, device=None, **kwargs):
    """Load the parameters of a checkpoint (``best.npz`` or ``last.npz``) into the param
    store, e.g. to evaluate a trained model without training.

    :param model: the model the checkpoint was trained with (``model(x, *args, **kwargs)``).
    :param guide: its guide.
    :param data: a few rows ``(n, D)``: one trace of the pair registers its parameters.
    :returns: the checkpoint's metadata (``epoch``, ``config``, ...).
    :raises ~ppl_vae.errors.CheckpointError: unreadable, written by the NumPyro backend, or
        for another model.
    """
    arrays, meta = load_checkpoint(path, backend="pyro")
    x = torch.as_tensor(np.asarray(data[:2]) if not torch.is_tensor(data) else data[:2],
                        dtype=torch.get_default_dtype(), device=device)
    with poutine.trace(param_only=True) as capture, torch.no_grad():
        Trace_ELBO().differentiable_loss(model, guide, x, *args, **kwargs)
    current = {name: site["value"].unconstrained().detach().cpu().numpy()
               for name, site in capture.trace.nodes.items()}
    check_signature(path, meta, param_signature(current))
    _load_param_state(_group(arrays, "params", device))
    return meta


class _Engine:
    """What :func:`ppl_vae._training.drive` needs from Pyro: the steps of one epoch, the
    param store's snapshot and restore, and the optimizer's state as arrays."""

    backend, peers, restores_params = "pyro", "ranks", True

    def __init__(self, *, model, guide, elbo, optimizer, names, params, train_data,
                 valid_data, batch_size, dynamic_binarization, exploded, device, distributed,
                 rank, world, args, kwargs):
        # the programs as given (the validation ELBO is the full one) and under warm-up
        self.model, self.guide = model, guide
        self.annealed = _annealed(model), _annealed(guide)
        self.elbo, self.optimizer = elbo, optimizer
        self.names, self.params = names, params
        self.train_data, self.valid_data = train_data, valid_data
        self.num_train = len(train_data)
        self.batch_size, self.num_batches = batch_size, math.ceil(self.num_train / batch_size)
        self.dynamic_binarization, self.exploded = dynamic_binarization, exploded
        self.device, self.rank, self.world = device, rank, world
        self.distributed, self.is_main = distributed, rank == 0
        self.args, self.kwargs = args, kwargs
        self.signature = param_signature({n: p.detach().cpu().numpy()
                                          for n, p in zip(names, params)})

    # ------------------------------------------------------------------------- steps
    @contextlib.contextmanager
    def _collective(self, what, step=None):
        """A failed collective (a rank died, or a timeout) as :class:`Lost`."""
        try:
            yield
        except RuntimeError as e:  # torch.distributed.DistBackendError is one
            raise Lost(f"rank {self.rank} of {self.world}", what, "rank", e, step) from e

    def _loss(self, x, beta_t):
        try:
            with warnings.catch_warnings():
                # Pyro warns of a NaN log-density; the divergence error says more
                warnings.filterwarnings("ignore", message="Encountered NaN")
                return _differentiable_loss(self.elbo, *self.annealed, x, *self.args,
                                            _kl_weight=beta_t, **self.kwargs), None
        except ValueError as e:
            if "invalid values" not in str(e) and "Expected parameter" not in str(e):
                raise
            return None, str(e).splitlines()[0][:120]

    def _check_gradients(self, step):
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params
                                              if p.grad is not None])
        if not bool(torch.isfinite(norm)):
            raise Diverged(f"a gradient became non-finite (norm {float(norm)})", step)

    def _step(self, index, beta_t, step):
        x = self.train_data[index]
        if self.dynamic_binarization:
            x = torch.bernoulli(x)
        loss, failure = self._loss(x, beta_t)
        if failure is not None:
            raise Diverged(f"a distribution got non-finite parameters ({failure})", step)
        value = float(loss.detach())  # one host sync per step: the divergence check
        if not math.isfinite(value):
            raise Diverged(f"the loss became {value}", step)
        if value / len(x) > self.exploded:
            raise Diverged(exploded_reason(value / len(x)), step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._check_gradients(step)
        self.optimizer.step()
        return value

    def _shard_step(self, index, beta_t, step):
        """One step on this rank's block of the minibatch; returns the global loss."""
        size = len(index)
        lo, hi = _dist.shard_bounds(size, self.rank, self.world)
        # An empty block runs row 0 and discards it: its generator advances as the others'.
        rows = slice(lo, hi) if hi > lo else slice(0, 1)
        if self.dynamic_binarization:  # the whole minibatch's draws, as a single process's
            x = torch.bernoulli(self.train_data[index])[rows]
        else:
            x = self.train_data[index[rows]]
        self.optimizer.zero_grad(set_to_none=True)
        with _dist.shard_sampling(rows, size):
            loss, failure = self._loss(x, beta_t)
        if loss is not None and hi > lo and bool(torch.isfinite(loss.detach())):
            loss.backward()
        zero = torch.zeros((), device=self.device)
        local = loss.detach() if loss is not None and hi > lo else zero
        params = self.params
        # one bucket: every gradient, which of them exist, the loss and the failure count
        flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                          for p in params] + [torch.stack(
                              [(p.grad is not None) + zero for p in params]
                              + [local.to(zero.dtype), (failure is not None) + zero])])
        with self._collective("the all-reduce of the gradients", step):
            _dist.all_reduce_sum(flat)
        stats = flat[-len(params) - 2:].tolist()
        value, failures = stats[-2], int(stats[-1])
        if failures:
            detail = f" ({failure})" if failure else ""
            raise Diverged(f"a distribution got non-finite parameters on {failures} of "
                           f"{self.world} ranks{detail}", step)
        if not math.isfinite(value):
            raise Diverged(f"the loss became {value}", step)
        if value / size > self.exploded:
            raise Diverged(exploded_reason(value / size), step)
        offset = 0
        for p, has_grad in zip(params, stats[:len(params)]):
            if has_grad:
                p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        self._check_gradients(step)
        self.optimizer.step()
        return value

    def train_epoch(self, epoch, beta):
        beta_t = torch.tensor(beta, device=self.device)
        # The permutation and the dynamic binarisation come from the CPU generator that the
        # checkpoint saves, so a resumed run shuffles and draws exactly as an uninterrupted one.
        perm = torch.randperm(self.num_train).to(self.device)
        step = self._shard_step if self.distributed else self._step
        total = 0.0
        for i in range(self.num_batches):
            total += step(perm[i * self.batch_size:(i + 1) * self.batch_size], beta_t, i + 1)
        return total

    def valid_elbo(self, epoch):
        if not self.distributed:
            return elbo_per_example(self.model, self.guide, self.valid_data, self.elbo,
                                    model_args=self.args, model_kwargs=self.kwargs)
        valid = torch.tensor(_local_elbo_sum(self.model, self.guide, self.valid_data,
                                             self.elbo, 1000, self.args, self.kwargs),
                             dtype=torch.float64, device=self.device)
        with self._collective("the all-reduce of the validation ELBO"):
            _dist.all_reduce_sum(valid)
        return -float(valid) / len(self.valid_data)

    # ------------------------------------------------------------------- parameters
    def snapshot(self):
        return _param_state()

    def restore(self, snapshot):
        _load_param_state(snapshot)

    def result_params(self, snapshot):
        return snapshot

    def to_arrays(self, snapshot):
        return {k: v.detach().cpu().numpy() for k, v in snapshot.items()}

    def from_arrays(self, arrays):
        return {k: torch.as_tensor(v, device=self.device) for k, v in arrays.items()}

    def param_meta(self):
        return {"param_names": self.names}

    # ----------------------------------------------------------- optimizer and RNG
    def state_arrays(self):
        arrays = {}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                arrays[f"optim/{index}/{key}"] = torch.as_tensor(value).cpu().numpy()
        arrays["rng/torch"] = torch.get_rng_state().numpy()
        if self.device.type == "cuda":
            arrays["rng/cuda"] = torch.cuda.get_rng_state(self.device).numpy()
        return arrays

    def state_meta(self):
        param_groups = [{k: v for k, v in g.items() if k != "params"} | {
            "params": list(range(len(self.params)))} for g in self.optimizer.param_groups]
        return {"optimizer": {"param_groups": param_groups}, "world_size": self.world,
                "versions": {"torch": torch.__version__, "pyro": pyro.__version__}}

    def load_state(self, arrays, meta, path):
        _load_param_state(_group(arrays, "params", self.device))
        options = {k: v for k, v in self.optimizer.param_groups[0].items()
                   if k in ("lr", "fused", "foreach")}
        self.optimizer.load_state_dict(_optimizer_state(arrays,
                                                        meta["optimizer"]["param_groups"]))
        for group in self.optimizer.param_groups:  # this run's learning rate and kernel
            group.update(options)
        torch.set_rng_state(torch.as_tensor(arrays["rng/torch"]))
        if self.device.type == "cuda" and "rng/cuda" in arrays:
            torch.cuda.set_rng_state(torch.as_tensor(arrays["rng/cuda"]), self.device)

    # ------------------------------------------------------------------ the ranks
    def start(self, start_epoch, last_path):
        if self.distributed:
            _agree_and_broadcast(self.params, start_epoch, last_path, self.device)

    def barrier(self, epoch):
        if self.distributed:
            with self._collective("the barrier after rank 0's checkpoint"):
                _dist.barrier()


def fit(model, guide, train_data, valid_data=None, *, num_epochs=100, batch_size=100,
        learning_rate=5e-4, elbo=None, optimizer=None, optimizer_args=None, warmup_epochs=0,
        early_stopping=None, checkpoint_dir=None, resume=False, seed=0, device=None,
        progress=True, description="train", config=None, dynamic_binarization=False,
        distributed=False, normalize_gradients=False, callbacks=None, model_args=(),
        model_kwargs=None):
    """Train ``model``/``guide`` by SVI on ``train_data``; return a :class:`FitResult`.

    On return the parameters of the best epoch (highest validation ELBO; the last epoch without
    validation data) are loaded into the param store and so into the networks.

    Everything is validated before the first step: the arguments, the data (shape, finite
    values, the same D in both splits, the support of the model's likelihood: binary data
    for a Bernoulli), and one run of the guide and the model on two rows (what either raises
    there is shown first, as the cause of a ``ValueError`` naming the data). A
    ``batch_size`` above N trains on one batch of all N examples per epoch.

    Example (a program shaped like Pyro's ``examples/vae/vae.py``)::

        vae = VAE()                                   # an nn.Module with model(x), guide(x)
        result = fit(vae.model, vae.guide, x_train, x_valid, num_epochs=100,
                     warmup_epochs=10, optimizer=pyro.optim.ClippedAdam({"lr": 1e-3}))
        ll = importance_log_likelihood(vae.model, vae.guide, x_test, num_samples=5000)

    :param model: ``model(x, *model_args, **model_kwargs)``, ``x`` a minibatch ``(n, D)``;
        every sample site in the plate ``"data"`` (dim -1), e.g. a ``functools.partial`` of
        ``ppl_vae.models.vae_pyro.vae_model``.
    :param guide: ``guide(x, *model_args, **model_kwargs)``.
    :param train_data: ``(N, D)`` tensor or array (any float or integer dtype; converted to
        the default dtype).
    :param valid_data: optional ``(M, D)``; its full ELBO drives early stopping and the best
        checkpoint.
    :param elbo: a Pyro ELBO instance (default ``Trace_ELBO()``); ``TraceMeanField_ELBO()`` uses
        an analytic KL where one is registered; ``RenyiELBO(alpha=0, num_particles=k)`` is
        the IWAE bound.
    :param optimizer: None for Adam at ``learning_rate`` (torch's fused kernel), a
        ``torch.optim.Optimizer`` subclass (built with ``lr=learning_rate`` and
        ``optimizer_args``) or a ``pyro.optim`` optimizer (``pyro.optim.ClippedAdam({"lr":
        1e-3})``; its ``lr`` replaces ``learning_rate``). Recorded in the checkpoints: a
        resume with another optimizer is refused.
    :param dict optimizer_args: keyword arguments of an optimizer class (``{"momentum":
        0.9}``).
    :param int warmup_epochs: KL warm-up length (0: none): epoch ``e`` trains with the latent
        sites scaled by ``min(1, e / warmup_epochs)`` (:func:`~ppl_vae.pyro.latent_scale`).
        A run shorter than its warm-up warns (:class:`~ppl_vae.errors.WarmupWarning`).
    :param int early_stopping: stop after this many epochs past warm-up without a better
        validation ELBO (None: never).
    :param bool normalize_gradients: divide each parameter's gradient by its own L2 norm
        (plus 1e-7) before the optimizer's step, as the reference implementation of the
        VampPrior paper does (its ``AdamNormGrad``); default plain Adam.
    :param checkpoint_dir: directory for ``last.npz`` (every epoch) and ``best.npz``
        (:mod:`ppl_vae.checkpoint`: arrays and JSON, never a pickle).
    :param bool resume: continue from ``checkpoint_dir/last.npz``; the result is identical to
        an uninterrupted run with the same seed. The checkpoint's configuration must match
        this run's, except ``num_epochs``, ``early_stopping`` and ``learning_rate`` (which
        then applies from the next step on); otherwise
        :class:`~ppl_vae.errors.CheckpointMismatchError` lists the differences.
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
    :param callbacks: a callable or a list of them, each called after every epoch (on rank 0)
        with that epoch's history record (a dict: ``epoch``, ``beta``, ``learning_rate``,
        ``train_loss``, ``valid_elbo``, ``seconds``), e.g. to log to TensorBoard or MLflow
        (:mod:`ppl_vae.callbacks`).
    :param tuple model_args: further positional arguments of model and guide, after ``x``.
    :param dict model_kwargs: keyword arguments of model and guide.
    :raises ValueError: bad arguments or data, before any work.
    :raises ~ppl_vae.errors.TrainingDivergedError: the loss or a gradient turned NaN/inf at
        some step, the loss exploded, or the validation ELBO collapsed; the last good epoch's
        parameters are restored and its checkpoints are kept.
    :raises ~ppl_vae.errors.DistributedError: (``distributed=True``) another rank died or
        stopped answering; the last good epoch's parameters are restored and its checkpoint
        (on rank 0's disk) is named.
    """
    settings = check_settings(
        num_epochs=num_epochs, batch_size=batch_size, warmup_epochs=warmup_epochs,
        early_stopping=early_stopping, learning_rate=learning_rate,
        normalize_gradients=normalize_gradients, config=config, checkpoint_dir=checkpoint_dir,
        resume=resume, callbacks=callbacks)
    seed = check_int("seed", seed, 0)
    if elbo is not None and not isinstance(elbo, ELBO):
        raise ValueError(f"elbo must be a Pyro ELBO instance such as Trace_ELBO(); got "
                         f"{type(elbo).__name__}.")
    make_optimizer, _, lr, optimizer_record = _optimizer_spec(optimizer, optimizer_args,
                                                              settings["learning_rate"])
    model_args, model_kwargs = tuple(model_args), dict(model_kwargs or {})
    if distributed:
        rank, world = _dist.initialize(device)
        device = _dist.local_device(device)
    else:
        rank, world = 0, 1
    device = torch.device(device) if device is not None else torch.device("cpu")
    train_data = _as_tensor("train_data", train_data, device)
    num_train, num_features = train_data.shape
    valid_data = _as_tensor("valid_data", valid_data, device, num_features)
    if dynamic_binarization and not bool(((train_data >= 0) & (train_data <= 1)).all()):
        raise ValueError("dynamic_binarization=True needs train_data in [0, 1] (the "
                         "probabilities each pixel is drawn with); got values in "
                         f"[{float(train_data.min())}, {float(train_data.max())}].")
    elbo = elbo or Trace_ELBO()
    pyro.set_rng_seed(seed)
    head = torch.bernoulli(train_data[:2]) if dynamic_binarization else train_data
    # The checks run the model and guide once: on forked generators, and forgetting the
    # parameters they created, so that the run draws exactly what it would without them.
    store = pyro.get_param_store()
    existing = set(store.keys())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        check_model_on_data(model, guide, head, "train_data", *model_args, **model_kwargs)
        if valid_data is not None:
            check_model_on_data(model, guide, valid_data, "valid_data", *model_args,
                                **model_kwargs)
    for name in set(store.keys()) - existing:
        del store[name]

    # One trace registers every parameter (networks, pseudo-inputs, ...) in the param store.
    with poutine.trace(param_only=True) as param_capture:
        _differentiable_loss(elbo, model, guide, head[:2], *model_args, **model_kwargs)
    names = list(param_capture.trace.nodes)
    params = [site["value"].unconstrained() for site in param_capture.trace.nodes.values()]
    torch_optimizer = make_optimizer(params, lr)
    if settings["normalize_gradients"]:
        torch_optimizer.register_step_pre_hook(_normalize_gradients)
    run_batch_size = settings["batch_size"]
    engine = _Engine(
        model=model, guide=guide, elbo=elbo, optimizer=torch_optimizer, names=names,
        params=params, train_data=train_data, valid_data=valid_data, batch_size=run_batch_size,
        dynamic_binarization=bool(dynamic_binarization),
        exploded=EXPLODED_NATS_PER_DIM * num_features, device=device,
        distributed=bool(distributed), rank=rank, world=world, args=model_args,
        kwargs=model_kwargs)
    config = run_config(
        "pyro", elbo=elbo, seed=("seed", seed), batch_size=run_batch_size,
        warmup_epochs=settings["warmup_epochs"], num_train=num_train,
        num_valid=0 if valid_data is None else len(valid_data), num_features=num_features,
        dynamic_binarization=dynamic_binarization, num_epochs=settings["num_epochs"],
        early_stopping=settings["early_stopping"], learning_rate=lr,
        normalize_gradients=settings["normalize_gradients"], optimizer=optimizer_record,
        config=config)
    return drive(engine, config=config, num_epochs=settings["num_epochs"],
                 warmup_epochs=settings["warmup_epochs"],
                 early_stopping=settings["early_stopping"], learning_rate=lr,
                 checkpoint_dir=checkpoint_dir, resume=settings["resume"],
                 num_features=num_features, num_batches=engine.num_batches,
                 has_valid=valid_data is not None, progress=progress, description=description,
                 callbacks=settings["callbacks"])


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
