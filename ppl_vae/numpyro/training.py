"""Stochastic variational inference for model/guide pairs that follow the plate convention
(NumPyro).

Mirror of :mod:`ppl_vae.pyro.training`: :func:`fit` is minibatch SVI with a NumPyro ELBO
(``Trace_ELBO`` or ``TraceMeanField_ELBO``), Adam (optax), KL warm-up, early stopping on the
validation ELBO, checkpoints on disk, ``resume`` and a progress bar.

A whole epoch is one jitted call: the training data sit on the device, the epoch's
permutation is drawn inside the function and ``lax.fori_loop`` runs ``svi.update`` over the
minibatches (the SVI state buffers are donated), so there is one host synchronisation per
epoch. The validation ELBO is one jitted call too, with every prior built once
(:func:`~ppl_vae.numpyro.prior_cache`).

The model and guide are called as ``model(x, beta)`` and ``guide(x, beta)``: ``beta`` is the
KL warm-up weight, a 0-d jnp array (so the epoch compiles once),
``min(1, epoch / warmup_epochs)`` with epochs counted from 1, fixed within an epoch (as in the
reference implementation).

Differences from the Pyro half, all because NumPyro has no global state: randomness comes
from the leading ``rng_key`` (no ``seed=``); there is no param store to load the best
parameters into, so they are returned in :class:`FitResult` ``.params`` (constrained values
by param name, ready for ``numpyro.handlers.substitute(model, data=params)`` or the
``params=`` argument of the evaluation functions), and :class:`TrainingDivergedError`
carries the last good parameters as ``.params``.
"""

import math
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax, random
from jax.sharding import NamedSharding, PartitionSpec
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.elbo import ELBO
from numpyro.optim import optax_to_numpyro
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
from ppl_vae.checkpoint import (
    CheckpointError,
    check_resumable,
    check_signature,
    legacy_checkpoints,
    load_checkpoint,
    param_signature,
    save_checkpoint,
)
from ppl_vae.numpyro import distributed as _dist
from ppl_vae.numpyro.evaluation import _build_prior_cache
from ppl_vae.numpyro.priors import _cached_priors
from ppl_vae.numpyro.validation import check_model_on_data

__all__ = ["fit", "FitResult", "TrainingDivergedError", "elbo_per_example", "warmup_beta",
           "load_params"]


class TrainingDivergedError(RuntimeError):
    """Training diverged: a NaN or infinite loss or gradient at some step, a loss that
    exploded, or a validation ELBO that collapsed (the rules: :mod:`ppl_vae._checks`).

    ``.params`` holds the last good epoch's parameters (the initial ones if none finished);
    the checkpoints on disk are those of the last good epoch. ``.epoch`` and ``.step`` say
    where it happened (1-based; ``.step`` None for a collapse)."""

    def __init__(self, message, params=None, epoch=None, step=None):
        super().__init__(message)
        self.params, self.epoch, self.step = params, epoch, step


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    :ivar list history: one dict per epoch: ``epoch``, ``beta``, ``learning_rate``,
        ``train_loss`` (the scaled negative ELBO per example), ``valid_elbo`` (full ELBO per
        example, or None), ``seconds``.
    :ivar int best_epoch: the epoch whose parameters are in ``params``.
    :ivar float best_valid_elbo: its validation ELBO (None without validation data).
    :ivar bool stopped_early: True when early stopping ended the run.
    :ivar checkpoint_dir: where ``last.npz`` and ``best.npz`` were written (or None).
    :ivar dict params: the best epoch's parameters by NumPyro param name (constrained values,
        as ``svi.get_params`` returns them), for ``handlers.substitute`` or ``params=``.
    :ivar dict config: the run's configuration, as stored in its checkpoints.
    """

    history: list
    best_epoch: int
    best_valid_elbo: float
    stopped_early: bool
    checkpoint_dir: object
    params: dict
    config: dict = None


def warmup_beta(epoch, warmup_epochs):
    """KL weight for 0-based ``epoch``: ``min(1, (epoch + 1) / warmup_epochs)``, 1 without
    warm-up. Never 0 (``handlers.scale`` rejects a zero scale)."""
    if not warmup_epochs:
        return 1.0
    return min(1.0, (epoch + 1) / warmup_epochs)


def _as_array(name, data, device, num_features=None):
    """Validated ``(N, D)`` data as a float array on ``device`` (eagerly: NumPyro's checks
    give NaN instead of an error inside jit); arrays and tensors of any float or integer
    dtype alike."""
    if data is None:
        return None
    check_data(name, data, num_features)
    if hasattr(data, "detach"):  # a torch tensor
        data = data.detach().cpu().numpy()
    data = np.asarray(data).astype(jnp.result_type(float), copy=False)
    return jax.device_put(data, device)


def _check_key(rng_key):
    if not isinstance(rng_key, (jax.Array, np.ndarray)):
        raise TypeError(f"rng_key must be a jax.random.PRNGKey; got {type(rng_key).__name__}.")


def _elbo_sum_fn(model, guide, elbo, batch_size, num_examples, mesh=None):
    """Jitted ``(rng_key, params, data) -> sum of -ELBO`` over ``data`` in chunks of
    ``batch_size``, with every prior built once (not per chunk); with a ``mesh``, each
    chunk's rows are split over its devices."""
    num_full, rem = divmod(num_examples, batch_size)

    def shard(x):
        return x if mesh is None else lax.with_sharding_constraint(
            x, _dist.batch_sharding(mesh))

    def total_loss(rng_key, params, data):
        key_cache, key_full, key_rem = random.split(rng_key, 3)
        cache = _build_prior_cache(key_cache, model, params, data[:1], (None,), {})
        with _cached_priors(cache):
            total = jnp.zeros((), data.dtype)
            if num_full:
                chunks = data[:num_full * batch_size].reshape(num_full, batch_size, -1)
                losses = lax.map(
                    lambda a: elbo.loss(a[0], params, model, guide, shard(a[1]), None),
                    (random.split(key_full, num_full), chunks),
                )
                total = total + losses.sum()
            if rem:
                total = total + elbo.loss(key_rem, params, model, guide,
                                          shard(data[num_full * batch_size:]), None)
        return total

    return jax.jit(total_loss)


def elbo_per_example(rng_key, model, guide, data, elbo=None, batch_size=1000, *, params=None,
                     distributed=False):
    """Mean single-sample ELBO per example of ``data`` (``model(x, None)``: full KL).

    :param dict params: parameter values by param name (e.g. ``FitResult.params``); None for
        the networks' initial weights or an already substituted model.
    :param bool distributed: split each chunk's rows over every device
        (:mod:`ppl_vae.numpyro.distributed`): the same value up to float32 summation order.
    """
    _check_key(rng_key)
    check_int("batch_size", batch_size)
    data = _as_array("data", data, None)
    elbo = elbo or Trace_ELBO()
    mesh = None
    if distributed:
        _dist.initialize()
        mesh = _dist.mesh()
        data, params = _dist.replicate((data, params or {}), mesh)
    fn = _elbo_sum_fn(model, guide, elbo, batch_size, len(data), mesh)
    return -float(fn(rng_key, params or {}, data)) / len(data)


def _leaves(tree):
    """Host copies of a pytree's leaves: safe from buffer donation."""
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _host_params(params):
    """Host copies of the leaves of a params dict, by path (``['decoder$params'].layers[0]
    .weight``: an ``eqx_module`` parameter is a whole pytree of arrays)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(params))
    return {jax.tree_util.keystr(path): np.array(leaf) for path, leaf in flat}


def _params_tree(params_def, names, flat, path):
    """Rebuild a params pytree from :func:`_host_params`'s dict (``names`` in leaf order)."""
    missing = [n for n in names if n not in flat]
    if missing:
        raise CheckpointError(f"{path} lacks parameters {missing[:3]}: it was written for a "
                              "different model.")
    return jax.tree_util.tree_unflatten(params_def, [jnp.asarray(flat[n]) for n in names])


def _unflatten(treedef, leaves, what, path):
    if treedef.num_leaves != len(leaves):
        raise CheckpointError(
            f"{path} holds {what} with {len(leaves)} arrays; this model/guide has "
            f"{treedef.num_leaves}: it was written for a different model.")
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in leaves])


def _key_data(rng_key):
    if jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        rng_key = random.key_data(rng_key)
    return np.asarray(rng_key).tolist()


def load_params(path, model, guide, data, *args):
    """The parameters of a checkpoint (``best.npz`` or ``last.npz``) for the same model and
    guide, e.g. to evaluate a trained model without training; for ``params=`` of the
    evaluation functions or ``handlers.substitute``.

    :param model: the model the checkpoint was trained with (``model(x, *args)``).
    :param guide: its guide.
    :param data: a few rows ``(n, D)``: one trace of the pair gives the parameters' structure.
    :param args: the model's other arguments (e.g. ``beta``, default 1).
    :returns: ``(params, meta)``: the constrained parameter values by name and the
        checkpoint's metadata (``epoch``, ``config``, ...).
    :raises CheckpointError: unreadable, written by the Pyro backend, or for another model.
    """
    arrays, meta = load_checkpoint(path, backend="numpyro")
    args = args or (jnp.asarray(1.0),)
    svi = SVI(model, guide, optax_to_numpyro(optax.adam(1e-3)), Trace_ELBO())
    template = svi.get_params(svi.init(random.PRNGKey(0), jnp.asarray(data[:2]), *args))
    names = list(_host_params(template))
    flat = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    check_signature(path, meta, param_signature(_host_params(template)))
    return _params_tree(jax.tree_util.tree_structure(template), names, flat, path), meta


def _epoch_fn(svi, num_train, batch_size, exploded, dynamic_binarization, mesh=None):
    """Jitted ``(svi_state, key, beta, data) -> (svi_state, summed loss, first bad step, its
    loss)``: one epoch of minibatch SVI steps over a permutation drawn from ``key``, inside
    the device (``lax.fori_loop``; the last, smaller minibatch has its own static shape).
    With a ``mesh`` each minibatch is split over its devices (``P("batch")``) and XLA
    partitions the step; the state stays replicated.

    Each step is ``svi.stable_update``, which leaves the state alone when the loss or a
    gradient is not finite; a step whose loss per example exceeds ``exploded`` counts as bad
    too, and from the first bad step (0-based, -1 if none) on no step updates the state.
    With ``dynamic_binarization`` each minibatch is a fresh Bernoulli draw of its grey
    levels, keyed by the epoch's key and the step."""
    num_full, rem = divmod(num_train, batch_size)

    def run_epoch(svi_state, key, beta, data):
        key_perm, key_bits = random.split(key)
        perm = random.permutation(key_perm, num_train)

        def step(i, x, carry):
            svi_state, total, bad, bad_loss = carry
            if mesh is not None:
                x = lax.with_sharding_constraint(x, _dist.batch_sharding(mesh))
            if dynamic_binarization:
                x = random.bernoulli(random.fold_in(key_bits, i), x).astype(x.dtype)
            new_state, loss = lax.cond(
                bad < 0, lambda s: svi.stable_update(s, x, beta),
                lambda s: (s, jnp.asarray(jnp.nan, total.dtype)), svi_state)
            is_bad = (bad < 0) & (~jnp.isfinite(loss) | (loss / x.shape[0] > exploded))
            bad_loss = jnp.where(is_bad, loss, bad_loss)
            bad = jnp.where(is_bad, i, bad)
            total = total + jnp.where(bad < 0, loss, 0.0)
            return new_state, total, bad, bad_loss

        def full_step(i, carry):
            return step(i, data[lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)],
                        carry)

        zero = jnp.zeros((), data.dtype)
        carry = (svi_state, zero, jnp.asarray(-1), zero)
        carry = lax.fori_loop(0, num_full, full_step, carry)
        if rem:
            carry = step(num_full, data[perm[num_full * batch_size:]], carry)
        return carry

    # Donating the state lets XLA update parameters and Adam moments in place.
    if mesh is None:
        return jax.jit(run_epoch, donate_argnums=0)
    return jax.jit(run_epoch, donate_argnums=0,
                   out_shardings=NamedSharding(mesh, PartitionSpec()))


def _unit_norm(updates, params=None):
    """Every leaf divided by its own L2 norm (plus 1e-7): the reference implementation's
    ``AdamNormGrad`` before its Adam step (``fit(normalize_gradients=True)``)."""
    return jax.tree_util.tree_map(lambda g: g / (jnp.linalg.norm(g.ravel()) + 1e-7), updates)


def _adam(learning_rate, normalize_gradients=False):
    """``optax.adam``, after :func:`_unit_norm` with ``normalize_gradients``."""
    adam = optax.adam(learning_rate)
    return optax.chain(optax.stateless(_unit_norm), adam) if normalize_gradients else adam


def fit(rng_key, model, guide, train_data, valid_data=None, *, num_epochs=100, batch_size=100,
        learning_rate=5e-4, elbo=None, warmup_epochs=0, early_stopping=None,
        checkpoint_dir=None, resume=False, device=None, progress=True, description="train",
        config=None, dynamic_binarization=False, distributed=False,
        normalize_gradients=False):
    """Train ``model``/``guide`` by SVI on ``train_data``; return a :class:`FitResult`.

    ``FitResult.params`` holds the parameters of the best epoch (highest validation ELBO; the
    last epoch without validation data).

    Everything is validated before the first step, as in the Pyro backend and with the same
    messages: the arguments, the data (shape, finite values, the same D in both splits, the
    support of the model's likelihood: binary data for a Bernoulli), and one eager run of
    the model and guide on two rows (a width that does not match D fails there). A
    ``batch_size`` above N trains on one batch of all N examples per epoch.

    Example::

        model = partial(vae_model, decoder=decoder, prior=LearnedVampPrior(encoder, rng_key=k1))
        guide = partial(vae_guide, encoder=encoder)
        result = fit(random.PRNGKey(0), model, guide, x_train, x_valid, warmup_epochs=100)
        ll = importance_log_likelihood(random.PRNGKey(1), model, guide, x_test,
                                       params=result.params)

    :param rng_key: ``jax.random.PRNGKey``: initialisation, shuffling, ELBO samples.
    :param model: ``model(x, beta)``, e.g. a ``functools.partial`` of
        ``ppl_vae.models.vae_numpyro.vae_model``.
    :param guide: ``guide(x, beta)``.
    :param train_data: ``(N, D)`` array (any float or integer dtype, or a torch tensor).
    :param valid_data: optional ``(M, D)``; its full ELBO drives early stopping and the best
        checkpoint.
    :param elbo: a NumPyro ELBO instance (default ``Trace_ELBO()``); ``TraceMeanField_ELBO()``
        uses an analytic KL where one is registered.
    :param int warmup_epochs: KL warm-up length (0: none).
    :param int early_stopping: stop after this many epochs past warm-up without a better
        validation ELBO (None: never).
    :param bool normalize_gradients: divide each parameter's gradient by its own L2 norm
        (plus 1e-7) before Adam, as the reference implementation of the VampPrior paper
        does (its ``AdamNormGrad``); default plain Adam.
    :param checkpoint_dir: directory for ``last.npz`` (every epoch: SVI state, key, history)
        and ``best.npz`` (best parameters), in :mod:`ppl_vae.checkpoint`'s format: arrays and
        JSON, never a pickle.
    :param bool resume: continue from ``checkpoint_dir/last.npz``; the result is identical to
        an uninterrupted run (the checkpoint's key is used). The checkpoint's configuration
        must match this run's, except ``num_epochs``, ``early_stopping`` and
        ``learning_rate`` (which then applies from the next step on); otherwise
        :class:`~ppl_vae.checkpoint.CheckpointMismatchError` lists the differences.
    :param device: a ``jax.Device`` for the data (default: JAX's default device).
    :param dict config: the caller's description of the run (model, prior, sizes,
        likelihood, dataset, ...): plain JSON data, stored in the checkpoints beside fit's
        own settings and compared on ``resume``.
    :param bool dynamic_binarization: ``train_data`` holds grey levels in [0, 1] and each
        minibatch is a fresh Bernoulli draw of them, inside the jitted epoch (keyed by the
        epoch and the step, so a resumed run draws the same). Validation data are used as
        given (binarise them once, with a fixed seed).
    :param bool distributed: data-parallel over every device, ``jax.devices()`` (every host's
        after :func:`ppl_vae.numpyro.distributed.initialize`): the data and the SVI state are
        replicated, each minibatch is split over the devices and XLA partitions the step
        (:mod:`ppl_vae.numpyro.distributed`). The random numbers are those of the
        single-device run, so the result equals it up to float32 summation order. Only
        process 0 writes checkpoints, which resume on any number of devices. Leave
        ``device`` None.
    :raises ValueError: bad arguments or data, before any work.
    :raises TrainingDivergedError: the loss or a gradient turned NaN/inf at some step, the
        loss exploded, or the validation ELBO collapsed; the error's ``.params`` are the
        last good epoch's and its checkpoints are kept.
    :raises ~ppl_vae.numpyro.distributed.DistributedError: (``distributed=True`` over several
        hosts) another host died; its message names the last good checkpoint.
    """
    _check_key(rng_key)
    num_epochs = check_int("num_epochs", num_epochs)
    batch_size = check_int("batch_size", batch_size)
    warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
    if early_stopping is not None:
        early_stopping = check_int("early_stopping", early_stopping)
    learning_rate = check_positive_float("learning_rate", learning_rate)
    normalize_gradients = check_bool("normalize_gradients", normalize_gradients)
    if elbo is not None and not isinstance(elbo, ELBO):
        raise ValueError(f"elbo must be a NumPyro ELBO instance such as Trace_ELBO(); got "
                         f"{type(elbo).__name__}.")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a dict of plain settings; got {type(config).__name__}.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from.")
    if distributed and device is not None:
        raise ValueError(f"distributed=True runs on every device, jax.devices(); got device="
                         f"{device!r} too. Leave device None.")
    mesh = None
    if distributed:
        _dist.initialize()
        mesh = _dist.mesh()
    main = mesh is None or _dist.is_main_process()  # writes checkpoints, shows progress
    train_data = _as_array("train_data", train_data, device)
    num_train, num_features = train_data.shape
    valid_data = _as_array("valid_data", valid_data, device, num_features)
    if dynamic_binarization and not bool(((train_data >= 0) & (train_data <= 1)).all()):
        raise ValueError("dynamic_binarization=True needs train_data in [0, 1] (the "
                         "probabilities each pixel is drawn with); got values in "
                         f"[{float(train_data.min())}, {float(train_data.max())}].")
    elbo = elbo or Trace_ELBO()
    one = jnp.asarray(1.0, train_data.dtype)
    head = (random.bernoulli(random.PRNGKey(0), train_data[:2]).astype(train_data.dtype)
            if dynamic_binarization else train_data)
    check_model_on_data(model, guide, head, "train_data", one)
    if valid_data is not None:
        check_model_on_data(model, guide, valid_data, "valid_data", one)

    run_config = {
        "backend": "numpyro", "elbo": type(elbo).__name__,
        "num_particles": getattr(elbo, "num_particles", 1), "batch_size": batch_size,
        "warmup_epochs": warmup_epochs, "rng_key": _key_data(rng_key), "num_train": num_train,
        "num_valid": 0 if valid_data is None else len(valid_data),
        "num_features": num_features, "dynamic_binarization": bool(dynamic_binarization),
        "num_epochs": num_epochs, "early_stopping": early_stopping,
        "learning_rate": learning_rate, "normalize_gradients": normalize_gradients,
        **(config or {})}
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last_path = best_path = None
    arrays = meta = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last_path, best_path = ckpt_dir / "last.npz", ckpt_dir / "best.npz"
        if resume and last_path.exists():
            arrays, meta = load_checkpoint(last_path, backend="numpyro")
        elif resume and legacy_checkpoints(ckpt_dir):
            raise CheckpointError(
                f"{legacy_checkpoints(ckpt_dir)[0]} is a checkpoint of ppl_vae 0.1, a pickle, "
                "which is never loaded (unpickling can run code). Train again (without "
                "resume, or in another checkpoint_dir).")
        elif resume and main:
            warnings.warn(f"resume=True but {last_path} does not exist; starting from "
                          "scratch.", stacklevel=2)
    key_init, key_perm, key_valid = random.split(rng_key, 3)
    batch_size = min(batch_size, num_train)  # above N: one batch of all N per epoch

    svi = SVI(model, guide, optax_to_numpyro(_adam(learning_rate, normalize_gradients)), elbo)
    # One trace registers every parameter (networks, pseudo-inputs, ...).
    svi_state = jax.jit(svi.init)(key_init, head[:batch_size], one)
    # The initial parameters are the networks' own arrays (eqx_module's init values): copy
    # them, since the epoch donates the state's buffers.
    svi_state = jax.tree_util.tree_map(jnp.copy, svi_state)
    get_params = jax.jit(svi.get_params)
    state_def = jax.tree_util.tree_structure(svi_state)
    params_def = jax.tree_util.tree_structure(get_params(svi_state))
    params_init = _host_params(get_params(svi_state))
    param_names = list(params_init)
    signature = param_signature(params_init)

    history, start_epoch = [], 0
    best = {"epoch": -1, "valid_elbo": -math.inf, "params": None, "bad_epochs": 0}
    if meta is not None:
        check_resumable(last_path, meta, run_config, signature)
        leaves = [arrays[f"state/{i}"] for i in range(meta["num_state_leaves"])]
        svi_state = _unflatten(state_def, leaves, "an SVI state", last_path)
        history, start_epoch = meta["history"], meta["epoch"]
        best_params = {k[len("best/"):]: v for k, v in arrays.items() if k.startswith("best/")}
        best = dict(meta["best"], params=best_params or None)
    if mesh is not None:
        _check_same_start(start_epoch, last_path)
        svi_state, train_data, valid_data = _dist.replicate((svi_state, train_data, valid_data),
                                                            mesh)

    good = {"epoch": start_epoch, "params": params_init if meta is None
            else _host_params(get_params(svi_state))}
    epoch_fn = _epoch_fn(svi, num_train, batch_size, EXPLODED_NATS_PER_DIM * num_features,
                         bool(dynamic_binarization), mesh)
    valid_fn = (_elbo_sum_fn(model, guide, elbo, 1000, len(valid_data), mesh)
                if valid_data is not None else None)
    num_batches = math.ceil(num_train / batch_size)

    stopped_early = False
    bar = tqdm(range(start_epoch, num_epochs), desc=description, disable=not progress or not main,
               initial=start_epoch, total=num_epochs, unit="epoch", dynamic_ncols=True)

    def diverged(reason, epoch, step=None):
        bar.close()
        where = (f"; the last good checkpoint is {last_path}" if last_path is not None
                 and last_path.exists() else "")
        at = f"epoch {epoch}" + (f", step {step} of {num_batches}" if step else "")
        restored = (f"the parameters of epoch {good['epoch']}" if good["epoch"]
                    else "the initial parameters")
        params = _params_tree(params_def, param_names, good["params"], last_path)
        return TrainingDivergedError(
            f"training diverged in {at}: {reason}. Stopped; {restored} are in this error's "
            f".params{where}. Try a smaller learning_rate (now {learning_rate:g}).",
            params=params, epoch=epoch, step=step)

    def lost(error, epoch):
        bar.close()
        where = (f"the last good checkpoint is {last_path} (epoch {good['epoch']}): resume "
                 "from it with resume=True, on any number of devices"
                 if last_path is not None and good["epoch"] else "no checkpoint was written")
        return _dist.DistributedError(
            f"process {jax.process_index()} of {jax.process_count()}: epoch {epoch} failed: "
            f"another host died or stopped answering ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:200]}). Stopped; {where}.", epoch=epoch,
            checkpoint=last_path if last_path is not None and good["epoch"] else None)

    for epoch in bar:
        t0 = time.perf_counter()
        beta = warmup_beta(epoch, warmup_epochs)
        try:
            svi_state, total, bad, bad_loss = epoch_fn(
                svi_state, random.fold_in(key_perm, epoch), jnp.asarray(beta, train_data.dtype),
                train_data)
            bad = int(bad)  # one host sync per epoch
        except jax.errors.JaxRuntimeError as e:
            if jax.process_count() == 1:
                raise
            raise lost(e, epoch + 1) from e
        if bad >= 0:
            size = batch_size if bad < num_train // batch_size else num_train % batch_size
            value = float(bad_loss)
            reason = (f"the loss or a gradient became non-finite (loss {value})"
                      if not math.isfinite(value) else exploded_reason(value / size))
            raise diverged(reason, epoch + 1, bad + 1)
        train_loss = float(total) / num_train
        record = {"epoch": epoch + 1, "beta": beta, "learning_rate": learning_rate,
                  "train_loss": train_loss, "valid_elbo": None, "seconds": None}
        params = get_params(svi_state)
        if valid_data is not None:
            try:
                loss = valid_fn(random.fold_in(key_valid, epoch), params, valid_data)
                record["valid_elbo"] = -float(loss) / len(valid_data)
            except jax.errors.JaxRuntimeError as e:
                if jax.process_count() == 1:
                    raise
                raise lost(e, epoch + 1) from e
            problem = valid_elbo_problem(record["valid_elbo"], best["valid_elbo"],
                                         best["epoch"], num_features)
            if problem:
                raise diverged(problem, epoch + 1)
        record["seconds"] = time.perf_counter() - t0
        history.append(record)

        params_now = _host_params(params)
        score = record["valid_elbo"] if valid_data is not None else -train_loss
        if score > best["valid_elbo"] or valid_data is None:
            best.update(epoch=epoch + 1, valid_elbo=score, params=params_now, bad_epochs=0)
            if ckpt_dir is not None and main:
                save_checkpoint(best_path, {f"params/{k}": v for k, v in params_now.items()}, {
                    "backend": "numpyro", "kind": "best", "epoch": epoch + 1,
                    "valid_elbo": record["valid_elbo"], "config": run_config,
                    "signature": signature})
        elif epoch + 1 > warmup_epochs:
            best["bad_epochs"] += 1
        if ckpt_dir is not None and main:
            leaves = _leaves(svi_state)
            arrays = {f"params/{k}": v for k, v in params_now.items()}
            arrays.update({f"best/{k}": v for k, v in best["params"].items()})
            arrays.update({f"state/{i}": leaf for i, leaf in enumerate(leaves)})
            save_checkpoint(last_path, arrays, {
                "backend": "numpyro", "kind": "last", "epoch": epoch + 1, "config": run_config,
                "signature": signature, "num_state_leaves": len(leaves), "history": history,
                "best": {k: v for k, v in best.items() if k != "params"},
                "num_devices": 1 if mesh is None else mesh.size,
                "versions": {"jax": jax.__version__, "numpyro": _numpyro_version()}})
        if ckpt_dir is not None and mesh is not None:
            _dist.barrier(f"ppl_vae checkpoint {epoch + 1}")  # no host runs ahead of process 0
        good = {"epoch": epoch + 1, "params": params_now}
        bar.set_postfix(loss=f"{train_loss:.2f}", valid=(
            f"{record['valid_elbo']:.2f}" if record["valid_elbo"] is not None else "-"),
            beta=f"{beta:.2f}")
        if early_stopping is not None and best["bad_epochs"] >= early_stopping:
            stopped_early = True
            break
    bar.close()
    best_params = (None if best["params"] is None else
                   _params_tree(params_def, param_names, best["params"], best_path))
    return FitResult(history, best["epoch"],
                     best["valid_elbo"] if valid_data is not None else None,
                     stopped_early, ckpt_dir, best_params, run_config)


def _numpyro_version():
    import numpyro

    return numpyro.__version__


def _check_same_start(start_epoch, last_path):
    """Every host must resume from the same epoch (a checkpoint_dir that one host cannot see
    would silently split the run)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    epochs = np.asarray(multihost_utils.process_allgather(np.int32(start_epoch)))
    if len(set(epochs.tolist())) > 1:
        raise CheckpointError(
            f"the hosts would resume from different epochs ({sorted(set(epochs.tolist()))}): "
            f"{last_path} must be visible to every host (a shared file system), or copied to "
            "each.")
