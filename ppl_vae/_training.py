"""The training driver both backends share: everything in ``fit`` that is not a torch or JAX
call.

``ppl_vae.pyro.fit`` and ``ppl_vae.numpyro.fit`` check their arguments here
(:func:`check_settings`), build the run's configuration here (:func:`run_config`), then hand
an *engine* to :func:`drive`, which runs the epochs: KL warm-up (:func:`warmup_beta`), the
divergence rules and their messages (:mod:`ppl_vae._checks`), the history, the best and last
checkpoints (:mod:`ppl_vae.checkpoint`), resume, early stopping, the progress bar and the
per-epoch callbacks, and returns a :class:`FitResult`.

An engine is the small backend-specific part (``ppl_vae.pyro.training._Engine``,
``ppl_vae.numpyro.training._Engine``), with these members:

- ``backend`` (``"pyro"`` / ``"numpyro"``), ``signature`` (the parameters' shapes),
  ``is_main`` (writes checkpoints and shows progress), ``peers`` (``"ranks"`` /
  ``"devices"``: what a checkpoint resumes on), ``restores_params`` (a divergence restores
  the last good parameters in place: Pyro's param store);
- ``train_epoch(epoch, beta)`` -> the summed loss of one epoch at KL weight ``beta``; it
  raises :class:`Diverged` at a bad step, :class:`Lost` when another rank or host is gone;
- ``valid_elbo(epoch)`` -> the validation ELBO per example;
- ``snapshot()`` -> the current parameters (the engine's own format), ``to_arrays(snapshot)``
  / ``from_arrays(arrays)`` -> NumPy ``{name: array}`` and back, ``restore(snapshot)``,
  ``result_params(snapshot)`` -> what ``FitResult.params`` holds;
- ``state_arrays()`` / ``state_meta()`` -> the optimizer state and RNG for ``last.npz``,
  ``load_state(arrays, meta, path)`` -> resume from them (read from ``path``);
- ``start(start_epoch, last_path)`` (the ranks agree on the start) and ``barrier(epoch)``.
"""

import math
import time
import warnings
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from ppl_vae._checks import check_bool, check_int, check_positive_float, valid_elbo_problem
from ppl_vae.checkpoint import (
    check_resumable,
    legacy_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ppl_vae.errors import (
    CheckpointError,
    DistributedError,
    TrainingDivergedError,
    WarmupWarning,
)

__all__ = ["FitResult", "warmup_beta", "warmup_message", "check_settings", "run_config",
           "check_resume", "drive", "Diverged", "Lost", "DEFAULT_OPTIMIZER"]

#: how the checkpoints record the default optimizer (Adam at ``learning_rate``)
DEFAULT_OPTIMIZER = "adam"


class FitResult(NamedTuple):
    """What ``fit`` returns (both backends).

    :ivar list history: one dict per epoch: ``epoch``, ``beta`` (the KL weight),
        ``learning_rate``, ``train_loss`` (the scaled negative ELBO per example),
        ``valid_elbo`` (full ELBO per example, or None), ``seconds``.
    :ivar int best_epoch: the epoch whose parameters ``params`` holds (the highest validation
        ELBO; the last epoch without validation data).
    :ivar float best_valid_elbo: its validation ELBO (None without validation data).
    :ivar bool stopped_early: True when early stopping ended the run.
    :ivar checkpoint_dir: where ``last.npz`` and ``best.npz`` were written (or None).
    :ivar dict params: the best epoch's parameters: Pyro, unconstrained tensors by param-store
        name (they are also loaded into the param store); NumPyro, constrained values by
        param name, for ``handlers.substitute`` or the evaluation functions' ``params=``.
    :ivar dict config: the run's configuration, as stored in its checkpoints.
    """

    history: list
    best_epoch: int
    best_valid_elbo: float
    stopped_early: bool
    checkpoint_dir: object
    params: dict
    config: dict = None


class Diverged(Exception):
    """Raised by an engine at a bad step: ``reason`` in words, ``step`` 1-based."""

    def __init__(self, reason, step=None):
        super().__init__(reason)
        self.reason, self.step = reason, step


class Lost(Exception):
    """Raised by an engine when a collective failed: ``who`` (``"rank 0 of 2"``), ``what``
    failed (``"the all-reduce of the gradients"``), ``peer`` (``"rank"`` / ``"host"``), the
    backend's ``error`` and the 1-based ``step`` (None outside a step)."""

    def __init__(self, who, what, peer, error, step=None):
        super().__init__(what)
        self.who, self.what, self.peer, self.error, self.step = who, what, peer, error, step


def warmup_beta(epoch, warmup_epochs):
    """KL weight for 0-based ``epoch``: ``min(1, (epoch + 1) / warmup_epochs)``, 1 without
    warm-up; fixed within an epoch, as in the reference implementation. Never 0 (a zero
    scale is refused by both backends' scale handlers)."""
    if not warmup_epochs:
        return 1.0
    return min(1.0, (epoch + 1) / warmup_epochs)


def check_settings(*, num_epochs, batch_size, warmup_epochs, early_stopping, learning_rate,
                   normalize_gradients, config, checkpoint_dir, resume, callbacks):
    """Validate the arguments ``fit`` shares between backends, before any work; return them
    normalised (ints as ints, ``callbacks`` as a tuple). Warns with :class:`WarmupWarning`
    when the run would end before its KL warm-up does."""
    settings = dict(
        num_epochs=check_int("num_epochs", num_epochs),
        batch_size=check_int("batch_size", batch_size),
        warmup_epochs=check_int("warmup_epochs", warmup_epochs, 0),
        early_stopping=check_int("early_stopping", early_stopping, allow_none=True),
        learning_rate=check_positive_float("learning_rate", learning_rate),
        normalize_gradients=check_bool("normalize_gradients", normalize_gradients),
        resume=check_bool("resume", resume),
    )
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a dict of plain settings; got {type(config).__name__}.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from.")
    if callbacks is None:
        callbacks = ()
    elif callable(callbacks):
        callbacks = (callbacks,)
    callbacks = tuple(callbacks)
    for callback in callbacks:
        if not callable(callback):
            raise ValueError(f"callbacks must be callables taking the epoch's history record; "
                             f"got {type(callback).__name__}.")
    settings["callbacks"] = callbacks
    if settings["warmup_epochs"] > settings["num_epochs"]:
        warnings.warn(warmup_message(settings["num_epochs"], settings["warmup_epochs"]),
                      WarmupWarning, stacklevel=3)
    return settings


def warmup_message(num_epochs, warmup_epochs):
    """What a run of ``num_epochs`` shorter than its KL warm-up is told."""
    return (f"num_epochs {num_epochs} ends before the KL warm-up does (warmup_epochs "
            f"{warmup_epochs}): the last epoch trains at beta = "
            f"{warmup_beta(num_epochs - 1, warmup_epochs):.2f}, not on the full ELBO. Raise "
            "num_epochs or lower warmup_epochs.")


def run_config(backend, *, elbo, seed, batch_size, warmup_epochs, num_train, num_valid,
               num_features, dynamic_binarization, num_epochs, early_stopping, learning_rate,
               normalize_gradients, optimizer=DEFAULT_OPTIMIZER, config=None):
    """The run's configuration, as its checkpoints store it and a resume compares it: fit's
    own settings, then the caller's ``config`` (model, prior, sizes, dataset, ...). Built
    here only, so that ``fit`` and a caller's check before ``fit`` (:func:`check_resume`)
    compare the same keys.

    :param elbo: the backend's ELBO instance (its class name and ``num_particles`` are kept).
    :param seed: ``("seed", int)`` (Pyro) or ``("rng_key", list)`` (NumPyro).
    :param str optimizer: how the optimizer is recorded (:data:`DEFAULT_OPTIMIZER` for Adam).
    """
    seed_name, seed_value = seed
    return {
        "backend": backend, "elbo": type(elbo).__name__,
        "num_particles": getattr(elbo, "num_particles", 1), "batch_size": batch_size,
        "warmup_epochs": warmup_epochs, seed_name: seed_value, "num_train": num_train,
        "num_valid": num_valid, "num_features": num_features,
        "dynamic_binarization": bool(dynamic_binarization), "num_epochs": num_epochs,
        "early_stopping": early_stopping, "learning_rate": learning_rate,
        "normalize_gradients": normalize_gradients, "optimizer": optimizer, **(config or {})}


def check_resume(checkpoint_dir, backend, config, signature=None):
    """Refuse, before any work, to resume from ``checkpoint_dir/last.npz`` when it was
    written by a run whose configuration (:func:`run_config`) differs from ``config``, or by
    ppl_vae 0.1 (a pickle); the comparison ``fit`` makes on ``resume``, for a caller that
    checks several runs before training the first.

    :returns: ``(arrays, meta)`` of ``last.npz``, or None when there is none.
    :raises ~ppl_vae.errors.CheckpointError: unreadable, a pickle, or written by another
        backend; :class:`~ppl_vae.errors.CheckpointMismatchError` listing every difference.
    """
    last_path = Path(checkpoint_dir) / "last.npz"
    if last_path.exists():
        arrays, meta = load_checkpoint(last_path, backend=backend)
        if signature is None:
            check_resumable(last_path, meta, config, meta.get("signature", {}))
        else:
            check_resumable(last_path, meta, config, signature)
        return arrays, meta
    legacy = legacy_checkpoints(checkpoint_dir) if Path(checkpoint_dir).is_dir() else []
    if legacy:
        raise CheckpointError(
            f"{legacy[0]} is a checkpoint of ppl_vae 0.1, a pickle, which is never loaded "
            "(unpickling can run code). Train again (without resume, or in another "
            "checkpoint_dir).")
    return None


def _at(epoch, step, num_batches):
    return f"epoch {epoch}" + (f", step {step} of {num_batches}" if step else "")


def drive(engine, *, config, num_epochs, warmup_epochs, early_stopping, learning_rate,
          checkpoint_dir, resume, num_features, num_batches, has_valid, progress,
          description, callbacks):
    """Run the epochs of ``engine`` (see the module's docstring) and return a
    :class:`FitResult`.

    :param dict config: :func:`run_config` of this run, stored in the checkpoints.
    :param int num_features: D, for the divergence rules (nats per dimension).
    :param int num_batches: minibatches per epoch, for the messages.
    :raises TrainingDivergedError: at a bad step or a collapsed validation ELBO; the last good
        epoch's parameters are in its ``.params`` (and restored where the engine keeps them).
    :raises DistributedError: another rank or host was lost.
    """
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last_path = best_path = None
    history, start_epoch = [], 0
    best = {"epoch": -1, "valid_elbo": -math.inf, "params": None, "bad_epochs": 0}
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last_path, best_path = ckpt_dir / "last.npz", ckpt_dir / "best.npz"
        if resume:
            found = check_resume(ckpt_dir, engine.backend, config, engine.signature)
            if found is not None:
                arrays, meta = found
                engine.load_state(arrays, meta, last_path)
                history, start_epoch = meta["history"], meta["epoch"]
                best_params = {k[len("best/"):]: v for k, v in arrays.items()
                               if k.startswith("best/")}
                best = dict(meta["best"],
                            params=engine.from_arrays(best_params) if best_params else None)
            elif engine.is_main:
                warnings.warn(f"resume=True but {last_path} does not exist; starting from "
                              "scratch.", stacklevel=3)
    engine.start(start_epoch, last_path)
    good = {"epoch": start_epoch, "params": engine.snapshot()}  # what a divergence restores
    stopped_early = False
    bar = tqdm(range(start_epoch, num_epochs), desc=description,
               disable=not progress or not engine.is_main, initial=start_epoch,
               total=num_epochs, unit="epoch", dynamic_ncols=True)

    def diverged(reason, epoch, step=None):
        engine.restore(good["params"])
        bar.close()
        where = (f"; the last good checkpoint is {last_path}" if last_path is not None
                 and last_path.exists() else "")
        restored = (f"the parameters of epoch {good['epoch']}" if good["epoch"]
                    else "the initial parameters")
        kept = (f"Stopped and restored {restored}" if engine.restores_params
                else f"Stopped; {restored} are in this error's .params")
        advice = (f"Try a smaller learning_rate (now {learning_rate:g})."
                  if learning_rate is not None else "Try a smaller learning rate.")
        return TrainingDivergedError(
            f"training diverged in {_at(epoch, step, num_batches)}: {reason}. {kept}{where}. "
            f"{advice}",
            params=engine.result_params(good["params"]), epoch=epoch, step=step)

    def lost(error, epoch):
        engine.restore(good["params"])
        bar.close()
        written = last_path is not None and good["epoch"]
        where = (f"the last good checkpoint is {last_path} (epoch {good['epoch']}): resume "
                 f"from it with resume=True, on any number of {engine.peers}"
                 if written else "no checkpoint was written")
        detail = str(error.error).strip().splitlines()
        return DistributedError(
            f"{error.who}: {error.what} failed in {_at(epoch, error.step, num_batches)}: "
            f"another {error.peer} died or stopped answering ({type(error.error).__name__}: "
            f"{detail[0][:200] if detail else ''}). Stopped; {where}.", epoch=epoch,
            step=error.step, checkpoint=last_path if written else None)

    for epoch in bar:
        t0 = time.perf_counter()
        beta = warmup_beta(epoch, warmup_epochs)
        record = {"epoch": epoch + 1, "beta": beta, "learning_rate": learning_rate,
                  "train_loss": None, "valid_elbo": None, "seconds": None}
        try:
            record["train_loss"] = engine.train_epoch(epoch, beta) / engine.num_train
            if has_valid:
                record["valid_elbo"] = engine.valid_elbo(epoch)
        except Diverged as e:
            raise diverged(e.reason, epoch + 1, e.step) from None
        except Lost as e:
            raise lost(e, epoch + 1) from e.error
        if has_valid:
            problem = valid_elbo_problem(record["valid_elbo"], best["valid_elbo"],
                                         best["epoch"], num_features)
            if problem:
                raise diverged(problem, epoch + 1)
        record["seconds"] = time.perf_counter() - t0
        history.append(record)

        params_now = engine.snapshot()  # one copy per epoch, shared by best and last
        score = record["valid_elbo"] if has_valid else -record["train_loss"]
        meta = {"backend": engine.backend, "config": config, "signature": engine.signature,
                **engine.param_meta()}
        if score > best["valid_elbo"] or not has_valid:
            best.update(epoch=epoch + 1, valid_elbo=score, params=params_now, bad_epochs=0)
            if ckpt_dir is not None and engine.is_main:
                save_checkpoint(best_path, _prefixed("params", engine.to_arrays(params_now)),
                                {**meta, "kind": "best", "epoch": epoch + 1,
                                 "valid_elbo": record["valid_elbo"]})
        elif epoch + 1 > warmup_epochs:
            best["bad_epochs"] += 1
        if ckpt_dir is not None and engine.is_main:
            arrays = {**_prefixed("params", engine.to_arrays(params_now)),
                      **_prefixed("best", engine.to_arrays(best["params"])),
                      **engine.state_arrays()}
            save_checkpoint(last_path, arrays, {
                **meta, "kind": "last", "epoch": epoch + 1, "history": history,
                "best": {k: v for k, v in best.items() if k != "params"},
                **engine.state_meta()})
        if ckpt_dir is not None:
            try:
                engine.barrier(epoch + 1)  # no rank runs ahead of rank 0's files
            except Lost as e:
                raise lost(e, epoch + 1) from e.error
        good = {"epoch": epoch + 1, "params": params_now}
        bar.set_postfix(loss=f"{record['train_loss']:.2f}", valid=(
            f"{record['valid_elbo']:.2f}" if record["valid_elbo"] is not None else "-"),
            beta=f"{beta:.2f}")
        if engine.is_main:
            for callback in callbacks:
                callback(dict(record))
        if early_stopping is not None and best["bad_epochs"] >= early_stopping:
            stopped_early = True
            break
    bar.close()
    if best["params"] is not None:
        engine.restore(best["params"])
    return FitResult(history, best["epoch"], best["valid_elbo"] if has_valid else None,
                     stopped_early, ckpt_dir,
                     None if best["params"] is None else engine.result_params(best["params"]),
                     config)


def _prefixed(prefix, arrays):
    return {f"{prefix}/{k}": v for k, v in arrays.items()}
