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
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax, random
from numpyro.infer import SVI, Trace_ELBO
from numpyro.optim import optax_to_numpyro
from tqdm.auto import tqdm

from ppl_vae._checks import check_int
from ppl_vae.numpyro.evaluation import _build_prior_cache
from ppl_vae.numpyro.priors import _cached_priors

__all__ = ["fit", "FitResult", "TrainingDivergedError", "elbo_per_example", "warmup_beta"]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite. ``.params`` holds the last good epoch's parameters
    (None if no epoch finished), and its checkpoints on disk are kept."""

    def __init__(self, message, params=None):
        super().__init__(message)
        self.params = params


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    :ivar list history: one dict per epoch: ``epoch``, ``beta``, ``train_loss`` (the scaled
        negative ELBO per example), ``valid_elbo`` (full ELBO per example, or None), ``seconds``.
    :ivar int best_epoch: the epoch whose parameters are in ``params``.
    :ivar float best_valid_elbo: its validation ELBO (None without validation data).
    :ivar bool stopped_early: True when early stopping ended the run.
    :ivar checkpoint_dir: where ``last.pkl`` and ``best.pkl`` were written (or None).
    :ivar dict params: the best epoch's parameters by NumPyro param name (constrained values,
        as ``svi.get_params`` returns them), for ``handlers.substitute`` or ``params=``.
    """

    history: list
    best_epoch: int
    best_valid_elbo: float
    stopped_early: bool
    checkpoint_dir: object
    params: dict


def warmup_beta(epoch, warmup_epochs):
    """KL weight for 0-based ``epoch``: ``min(1, (epoch + 1) / warmup_epochs)``, 1 without
    warm-up. Never 0 (``handlers.scale`` rejects a zero scale)."""
    if not warmup_epochs:
        return 1.0
    return min(1.0, (epoch + 1) / warmup_epochs)


def _as_array(name, data, device):
    # Validated here, eagerly: NumPyro's checks give NaN instead of an error inside jit.
    if data is None:
        return None
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N >= 1; got {tuple(data.shape)}.")
    data = data.astype(jnp.result_type(float), copy=False)
    if not np.isfinite(data).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return jax.device_put(data, device)


def _check_key(rng_key):
    if not isinstance(rng_key, (jax.Array, np.ndarray)):
        raise TypeError(f"rng_key must be a jax.random.PRNGKey; got {type(rng_key).__name__}.")


def _elbo_sum_fn(model, guide, elbo, batch_size, num_examples):
    """Jitted ``(rng_key, params, data) -> sum of -ELBO`` over ``data`` in chunks of
    ``batch_size``, with every prior built once (not per chunk)."""
    num_full, rem = divmod(num_examples, batch_size)

    def total_loss(rng_key, params, data):
        key_cache, key_full, key_rem = random.split(rng_key, 3)
        cache = _build_prior_cache(key_cache, model, params, data[:1], (None,), {})
        with _cached_priors(cache):
            total = jnp.zeros((), data.dtype)
            if num_full:
                chunks = data[:num_full * batch_size].reshape(num_full, batch_size, -1)
                losses = lax.map(
                    lambda a: elbo.loss(a[0], params, model, guide, a[1], None),
                    (random.split(key_full, num_full), chunks),
                )
                total = total + losses.sum()
            if rem:
                total = total + elbo.loss(key_rem, params, model, guide,
                                          data[num_full * batch_size:], None)
        return total

    return jax.jit(total_loss)


def elbo_per_example(rng_key, model, guide, data, elbo=None, batch_size=1000, *, params=None):
    """Mean single-sample ELBO per example of ``data`` (``model(x, None)``: full KL).

    :param dict params: parameter values by param name (e.g. ``FitResult.params``); None for
        the networks' initial weights or an already substituted model.
    """
    _check_key(rng_key)
    check_int("batch_size", batch_size)
    data = _as_array("data", data, None)
    elbo = elbo or Trace_ELBO()
    fn = _elbo_sum_fn(model, guide, elbo, batch_size, len(data))
    return -float(fn(rng_key, params or {}, data)) / len(data)


def _save(path, obj):
    # Write then rename: an interrupt mid-write never leaves a truncated checkpoint.
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _leaves(tree):
    """Host copies of a pytree's leaves: picklable, and safe from buffer donation."""
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _unflatten(treedef, leaves, what, path):
    if treedef.num_leaves != len(leaves):
        raise ValueError(
            f"{path} holds {what} with {len(leaves)} arrays; this model/guide has "
            f"{treedef.num_leaves}: it was written for a different model."
        )
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in leaves])


def _epoch_fn(svi, num_train, batch_size):
    """Jitted ``(svi_state, key, beta, data) -> (svi_state, summed loss)``: one epoch of
    minibatch ``svi.update`` steps over a permutation drawn from ``key``, inside the device
    (``lax.fori_loop``; the last, smaller minibatch has its own static shape)."""
    num_full, rem = divmod(num_train, batch_size)

    def run_epoch(svi_state, key, beta, data):
        perm = random.permutation(key, num_train)

        def step(i, carry):
            svi_state, total = carry
            x = data[lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)]
            svi_state, loss = svi.update(svi_state, x, beta)
            return svi_state, total + loss

        carry = (svi_state, jnp.zeros((), data.dtype))
        svi_state, total = lax.fori_loop(0, num_full, step, carry)
        if rem:
            svi_state, loss = svi.update(svi_state, data[perm[num_full * batch_size:]], beta)
            total = total + loss
        return svi_state, total

    # Donating the state lets XLA update parameters and Adam moments in place.
    return jax.jit(run_epoch, donate_argnums=0)


def fit(rng_key, model, guide, train_data, valid_data=None, *, num_epochs=100, batch_size=100,
        learning_rate=5e-4, elbo=None, warmup_epochs=0, early_stopping=None,
        checkpoint_dir=None, resume=False, device=None, progress=True, description="train"):
    """Train ``model``/``guide`` by SVI on ``train_data``; return a :class:`FitResult`.

    ``FitResult.params`` holds the parameters of the best epoch (highest validation ELBO; the
    last epoch without validation data).

    Example::

        model = partial(vae_model, decoder=decoder, prior=LearnedVampPrior(encoder, rng_key=k1))
        guide = partial(vae_guide, encoder=encoder)
        result = fit(random.PRNGKey(0), model, guide, x_train, x_valid, warmup_epochs=100)
        ll = importance_log_likelihood(random.PRNGKey(1), model, guide, x_test,
                                       params=result.params)

    :param rng_key: ``jax.random.PRNGKey``: initialisation, shuffling, ELBO samples.
    :param model: ``model(x, beta)``, e.g. a ``functools.partial`` of
        ``models.vae_numpyro.vae_model``.
    :param guide: ``guide(x, beta)``.
    :param train_data: ``(N, D)`` array.
    :param valid_data: optional ``(M, D)``; its full ELBO drives early stopping and the best
        checkpoint.
    :param elbo: a NumPyro ELBO instance (default ``Trace_ELBO()``); ``TraceMeanField_ELBO()``
        uses an analytic KL where one is registered.
    :param int warmup_epochs: KL warm-up length (0: none).
    :param int early_stopping: stop after this many epochs past warm-up without a better
        validation ELBO (None: never).
    :param checkpoint_dir: directory for ``last.pkl`` (every epoch: SVI state, key, history)
        and ``best.pkl`` (best parameters).
    :param bool resume: continue from ``checkpoint_dir/last.pkl``; the result is identical to
        an uninterrupted run (the checkpoint's key is used).
    :param device: a ``jax.Device`` for the data (default: JAX's default device).
    :raises TrainingDivergedError: if the loss turns NaN/inf; the error's ``.params`` are the
        last good epoch's and its checkpoints are kept.
    """
    _check_key(rng_key)
    check_int("num_epochs", num_epochs)
    check_int("batch_size", batch_size)
    check_int("warmup_epochs", warmup_epochs, 0)
    if early_stopping is not None:
        check_int("early_stopping", early_stopping)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate!r}.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from.")
    train_data = _as_array("train_data", train_data, device)
    valid_data = _as_array("valid_data", valid_data, device)
    elbo = elbo or Trace_ELBO()

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if (ckpt_dir / "last.pkl").exists():
                state = _load(ckpt_dir / "last.pkl")
                rng_key = jnp.asarray(state["rng_key"])  # continue the checkpoint's streams
            else:
                warnings.warn(f"resume=True but {ckpt_dir / 'last.pkl'} does not exist; "
                              "starting from scratch.", stacklevel=2)
    key_init, key_perm, key_valid = random.split(rng_key, 3)

    svi = SVI(model, guide, optax_to_numpyro(optax.adam(learning_rate)), elbo)
    # One trace registers every parameter (networks, pseudo-inputs, ...).
    svi_state = jax.jit(svi.init)(key_init, train_data[:batch_size], jnp.asarray(1.0))
    # The initial parameters are the networks' own arrays (eqx_module's init values): copy
    # them, since the epoch donates the state's buffers.
    svi_state = jax.tree_util.tree_map(jnp.copy, svi_state)
    get_params = jax.jit(svi.get_params)
    state_def = jax.tree_util.tree_structure(svi_state)
    params_def = jax.tree_util.tree_structure(get_params(svi_state))

    def params_of(leaves, path):
        return None if leaves is None else _unflatten(params_def, leaves, "parameters", path)

    history, start_epoch = [], 0
    best = {"epoch": -1, "valid_elbo": -math.inf, "params": None, "bad_epochs": 0}
    if state is not None:
        svi_state = _unflatten(state_def, state["svi_state"], "an SVI state", ckpt_dir / "last.pkl")
        history, start_epoch, best = state["history"], state["epoch"] + 1, state["best"]

    num_train = len(train_data)

    epoch_fn = _epoch_fn(svi, num_train, batch_size)
    valid_fn = (_elbo_sum_fn(model, guide, elbo, 1000, len(valid_data))
                if valid_data is not None else None)

    stopped_early = False
    bar = tqdm(range(start_epoch, num_epochs), desc=description, disable=not progress,
               initial=start_epoch, total=num_epochs, unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        beta = warmup_beta(epoch, warmup_epochs)
        svi_state, total = epoch_fn(svi_state, random.fold_in(key_perm, epoch),
                                    jnp.asarray(beta, train_data.dtype), train_data)
        train_loss = float(total) / num_train  # one host sync per epoch
        record = {"epoch": epoch + 1, "beta": beta, "train_loss": train_loss,
                  "valid_elbo": None, "seconds": None}
        if not math.isfinite(train_loss):
            good = best["params"] if ckpt_dir is None else None
            where = "no checkpoint was written yet"
            if ckpt_dir is not None and (ckpt_dir / "last.pkl").exists():
                good = _load(ckpt_dir / "last.pkl")["params"]
                where = f"the last good checkpoint is {ckpt_dir / 'last.pkl'}"
            bar.close()
            raise TrainingDivergedError(
                f"the training loss became {train_loss} in epoch {epoch + 1}; stopped. The last "
                f"good parameters are in this error's .params ({where}). Try a smaller "
                "learning_rate.",
                params=params_of(good, ckpt_dir),
            )
        params = get_params(svi_state)
        if valid_data is not None:
            loss = valid_fn(random.fold_in(key_valid, epoch), params, valid_data)
            record["valid_elbo"] = -float(loss) / len(valid_data)
        record["seconds"] = time.perf_counter() - t0
        history.append(record)

        score = record["valid_elbo"] if valid_data is not None else -train_loss
        if score > best["valid_elbo"] or valid_data is None:
            best.update(epoch=epoch + 1, valid_elbo=score, params=_leaves(params), bad_epochs=0)
            if ckpt_dir is not None:
                _save(ckpt_dir / "best.pkl", {"epoch": epoch + 1, "params": best["params"]})
        elif epoch + 1 > warmup_epochs:
            best["bad_epochs"] += 1
        if ckpt_dir is not None:
            _save(ckpt_dir / "last.pkl", {
                "epoch": epoch, "params": _leaves(params), "svi_state": _leaves(svi_state),
                "rng_key": np.asarray(rng_key), "history": history, "best": best,
            })
        bar.set_postfix(loss=f"{train_loss:.2f}", valid=(
            f"{record['valid_elbo']:.2f}" if record["valid_elbo"] is not None else "-"),
            beta=f"{beta:.2f}")
        if early_stopping is not None and best["bad_epochs"] >= early_stopping:
            stopped_early = True
            break
    bar.close()
    return FitResult(history, best["epoch"],
                     best["valid_elbo"] if valid_data is not None else None,
                     stopped_early, ckpt_dir, params_of(best["params"], ckpt_dir))
