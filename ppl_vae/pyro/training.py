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

import math
import os
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from tqdm.auto import tqdm

from ppl_vae._checks import check_int
from ppl_vae.pyro.priors import prior_cache

__all__ = ["fit", "FitResult", "TrainingDivergedError", "elbo_per_example", "warmup_beta"]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; parameters are rolled back to the last good epoch."""


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    :ivar list history: one dict per epoch: ``epoch``, ``beta``, ``train_loss`` (the scaled
        negative ELBO per example), ``valid_elbo`` (full ELBO per example, or None), ``seconds``.
    :ivar int best_epoch: the epoch whose parameters are loaded on return.
    :ivar float best_valid_elbo: its validation ELBO (None without validation data).
    :ivar bool stopped_early: True when early stopping ended the run.
    :ivar checkpoint_dir: where ``last.pt`` and ``best.pt`` were written (or None).
    :ivar dict params: the best epoch's parameters by param-store name (unconstrained).
    """

    history: list
    best_epoch: int
    best_valid_elbo: float
    stopped_early: bool
    checkpoint_dir: object
    params: dict


def warmup_beta(epoch, warmup_epochs):
    """KL weight for 0-based ``epoch``: ``min(1, (epoch + 1) / warmup_epochs)``, 1 without
    warm-up. Never 0 (``poutine.scale`` rejects a zero scale)."""
    if not warmup_epochs:
        return 1.0
    return min(1.0, (epoch + 1) / warmup_epochs)


def _as_tensor(name, data, device):
    if data is None:
        return None
    if not torch.is_tensor(data):
        data = torch.as_tensor(np.asarray(data), dtype=torch.get_default_dtype())
    if data.dim() != 2 or data.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N >= 1; got {tuple(data.shape)}.")
    if not torch.isfinite(data).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return data.to(device)


@torch.no_grad()
def elbo_per_example(model, guide, data, elbo=None, batch_size=1000):
    """Mean single-sample ELBO per example of ``data`` (``model(x, None)``: full KL)."""
    check_int("batch_size", batch_size)
    elbo = elbo or Trace_ELBO()
    total = 0.0
    with prior_cache():
        for start in range(0, len(data), batch_size):
            x = data[start:start + batch_size]
            total += float(elbo.differentiable_loss(model, guide, x, None))
    return -total / len(data)


def _param_state():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


@torch.no_grad()
def _load_param_state(state):
    store = pyro.get_param_store()
    for name, value in state.items():
        store.get_param(name).unconstrained().copy_(value)


def _save(path, obj):
    # Write then rename: an interrupt mid-write never leaves a truncated checkpoint.
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(model, guide, train_data, valid_data=None, *, num_epochs=100, batch_size=100,
        learning_rate=5e-4, elbo=None, warmup_epochs=0, early_stopping=None,
        checkpoint_dir=None, resume=False, seed=0, device=None, progress=True,
        description="train"):
    """Train ``model``/``guide`` by SVI on ``train_data``; return a :class:`FitResult`.

    On return the parameters of the best epoch (highest validation ELBO; the last epoch without
    validation data) are loaded into the param store and so into the networks.

    :param model: ``model(x, beta)``, e.g. a ``functools.partial`` of
        ``models.vae_pyro.vae_model``.
    :param guide: ``guide(x, beta)``.
    :param train_data: ``(N, D)`` tensor or array.
    :param valid_data: optional ``(M, D)``; its full ELBO drives early stopping and the best
        checkpoint.
    :param elbo: a Pyro ELBO instance (default ``Trace_ELBO()``); ``TraceMeanField_ELBO()`` uses
        an analytic KL where one is registered.
    :param int warmup_epochs: KL warm-up length (0: none).
    :param int early_stopping: stop after this many epochs past warm-up without a better
        validation ELBO (None: never).
    :param checkpoint_dir: directory for ``last.pt`` (every epoch) and ``best.pt``.
    :param bool resume: continue from ``checkpoint_dir/last.pt``; the result is identical to an
        uninterrupted run with the same seed.
    :raises TrainingDivergedError: if the loss turns NaN/inf; the last good epoch's parameters
        are restored and its checkpoints are kept.
    """
    check_int("num_epochs", num_epochs)
    check_int("batch_size", batch_size)
    check_int("warmup_epochs", warmup_epochs, 0)
    if early_stopping is not None:
        check_int("early_stopping", early_stopping)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate!r}.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from.")
    device = torch.device(device) if device is not None else torch.device("cpu")
    train_data = _as_tensor("train_data", train_data, device)
    valid_data = _as_tensor("valid_data", valid_data, device)
    elbo = elbo or Trace_ELBO()
    pyro.set_rng_seed(seed)

    # One trace registers every parameter (networks, pseudo-inputs, ...) in the param store.
    with poutine.trace(param_only=True) as param_capture:
        elbo.differentiable_loss(model, guide, train_data[:2], torch.tensor(1.0, device=device))
    params = [site["value"].unconstrained() for site in param_capture.trace.nodes.values()]
    optimizer = torch.optim.Adam(params, lr=learning_rate)

    history, start_epoch = [], 0
    best = {"epoch": -1, "valid_elbo": -math.inf, "params": None, "bad_epochs": 0}
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            last = ckpt_dir / "last.pt"
            if last.exists():
                state = torch.load(last, map_location=device, weights_only=False)
                _load_param_state(state["params"])
                optimizer.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["rng"])
                if device.type == "cuda" and state.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(state["cuda_rng"], device)
                history, start_epoch, best = state["history"], state["epoch"] + 1, state["best"]
            else:
                warnings.warn(f"resume=True but {last} does not exist; starting from scratch.", stacklevel=2)

    num_train = len(train_data)
    num_batches = math.ceil(num_train / batch_size)
    stopped_early = False
    bar = tqdm(range(start_epoch, num_epochs), desc=description, disable=not progress,
               initial=start_epoch, total=num_epochs, unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        beta = warmup_beta(epoch, warmup_epochs)
        beta_t = torch.tensor(beta, device=device)
        # The permutation comes from the CPU generator that the checkpoint saves, so a resumed
        # run shuffles exactly as an uninterrupted one.
        perm = torch.randperm(num_train).to(device)
        total = torch.zeros((), device=device)
        for i in range(num_batches):
            x = train_data[perm[i * batch_size:(i + 1) * batch_size]]
            loss = elbo.differentiable_loss(model, guide, x, beta_t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        train_loss = float(total) / num_train  # one host sync per epoch
        record = {"epoch": epoch + 1, "beta": beta, "train_loss": train_loss,
                  "valid_elbo": None, "seconds": None}
        if not math.isfinite(train_loss):
            good = best["params"] if ckpt_dir is None else None
            where = "no checkpoint was written yet"
            if ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
                good = torch.load(ckpt_dir / "last.pt", map_location=device,
                                  weights_only=False)["params"]
                where = f"the last good checkpoint is {ckpt_dir / 'last.pt'}"
            if good is not None:
                _load_param_state(good)
            bar.close()
            raise TrainingDivergedError(
                f"the training loss became {train_loss} in epoch {epoch + 1}; stopped and "
                f"restored the last good parameters ({where}). Try a smaller learning_rate."
            )
        if valid_data is not None:
            record["valid_elbo"] = elbo_per_example(model, guide, valid_data, elbo)
        record["seconds"] = time.perf_counter() - t0
        history.append(record)

        params = _param_state()  # one copy per epoch, shared by best and last
        score = record["valid_elbo"] if valid_data is not None else -train_loss
        if score > best["valid_elbo"] or valid_data is None:
            best.update(epoch=epoch + 1, valid_elbo=score, params=params, bad_epochs=0)
            if ckpt_dir is not None:
                _save(ckpt_dir / "best.pt", {"epoch": epoch + 1, "params": best["params"]})
        elif epoch + 1 > warmup_epochs:
            best["bad_epochs"] += 1
        if ckpt_dir is not None:
            _save(ckpt_dir / "last.pt", {
                "epoch": epoch, "params": params, "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "history": history, "best": best,
            })
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
                     stopped_early, ckpt_dir, best["params"])
