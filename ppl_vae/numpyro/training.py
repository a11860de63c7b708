"""Stochastic variational inference for model/guide pairs that follow the plate convention
(NumPyro).

Mirror of :mod:`ppl_vae.pyro.training`: :func:`fit` trains any NumPyro program whose first
argument is the data, ``model(x, *args, **kwargs)`` and ``guide(x, *args, **kwargs)`` (the
shape of NumPyro's own ``examples/vae.py``, or a ``functools.partial`` of
``ppl_vae.models.vae_numpyro.vae_model``): minibatch SVI with a NumPyro ELBO
(``Trace_ELBO``, ``TraceMeanField_ELBO``, ``RenyiELBO`` for the IWAE bound), any optax
transformation or ``numpyro.optim`` optimizer (Adam by default), KL warm-up, early stopping
on the validation ELBO, checkpoints on disk, ``resume``, per-epoch callbacks and a progress
bar.

**KL warm-up** is a handler, not an argument of the programs: in epoch ``e`` (1-based) fit
runs ``latent_scale(model, beta)`` and ``latent_scale(guide, beta)``
(:class:`~ppl_vae.numpyro.latent_scale`), which multiply the log-density of every latent
sample site by ``beta = min(1, e / warmup_epochs)``, a jnp scalar, so the epoch compiles
once; observed sites are not scaled, and ``TraceMeanField_ELBO``'s analytic KL is scaled
too. The validation ELBO is the full one.

This module is the engine: one jitted epoch, the parameters' host snapshot, the SVI state to
arrays and back. What is not a JAX call (the epochs, warm-up, the divergence rules, the
checkpoints, resume, early stopping, callbacks) is :func:`ppl_vae._training.drive`, shared
with the Pyro backend. A whole epoch is one jitted call: the training data sit on the
device, the epoch's permutation is drawn inside the function and ``lax.fori_loop`` runs
``svi.stable_update`` over the minibatches (the SVI state buffers are donated), so there is
one host synchronisation per epoch. The validation ELBO is one jitted call too, with every
prior built once (:func:`~ppl_vae.numpyro.prior_cache`).

Differences from the Pyro half, all because NumPyro has no global state: randomness comes
from the leading ``rng_key`` (no ``seed=``); there is no param store to load the best
parameters into, so they are returned in :class:`FitResult` ``.params`` (constrained values
by param name, ready for ``numpyro.handlers.substitute(model, data=params)`` or the
``params=`` argument of the evaluation functions), and
:class:`~ppl_vae.errors.TrainingDivergedError` carries the last good parameters as
``.params``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax, random
from jax.sharding import NamedSharding, PartitionSpec
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.elbo import ELBO
from numpyro.optim import _NumPyroOptim, optax_to_numpyro

from ppl_vae._checks import EXPLODED_NATS_PER_DIM, check_data, check_int, exploded_reason
from ppl_vae._training import (
    DEFAULT_OPTIMIZER,
    Diverged,
    FitResult,
    Lost,
    check_resume,
    check_settings,
    drive,
    run_config,
    warmup_beta,
)
from ppl_vae.checkpoint import check_signature, load_checkpoint, param_signature
from ppl_vae.errors import CheckpointError, TrainingDivergedError
from ppl_vae.numpyro import distributed as _dist
from ppl_vae.numpyro.evaluation import _build_prior_cache
from ppl_vae.numpyro.handlers import latent_scale
from ppl_vae.numpyro.priors import _cached_priors
from ppl_vae.numpyro.validation import check_model_on_data

__all__ = ["fit", "FitResult", "TrainingDivergedError", "elbo_per_example", "warmup_beta",
           "load_params"]


def _annealed(program):
    """``program`` under :class:`latent_scale` with the KL weight fit passes as the keyword
    ``_kl_weight`` (a traced jnp scalar); the program itself never sees it."""
    def annealed(x, *args, _kl_weight, **kwargs):
        with latent_scale(scale=_kl_weight):
            return program(x, *args, **kwargs)
    return annealed


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


def _elbo_sum_fn(model, guide, elbo, batch_size, num_examples, mesh=None, args=(),
                 kwargs=None):
    """Jitted ``(rng_key, params, data) -> sum of -ELBO`` over ``data`` in chunks of
    ``batch_size``, with every prior built once (not per chunk); with a ``mesh``, each
    chunk's rows are split over its devices."""
    num_full, rem = divmod(num_examples, batch_size)
    kwargs = kwargs or {}

    def shard(x):
        return x if mesh is None else lax.with_sharding_constraint(
            x, _dist.batch_sharding(mesh))

    def total_loss(rng_key, params, data):
        key_cache, key_full, key_rem = random.split(rng_key, 3)
        cache = _build_prior_cache(key_cache, model, params, data[:1], args, kwargs)
        with _cached_priors(cache):
            total = jnp.zeros((), data.dtype)
            if num_full:
                chunks = data[:num_full * batch_size].reshape(num_full, batch_size, -1)
                losses = lax.map(
                    lambda a: elbo.loss(a[0], params, model, guide, shard(a[1]), *args,
                                        **kwargs),
                    (random.split(key_full, num_full), chunks),
                )
                total = total + losses.sum()
            if rem:
                total = total + elbo.loss(key_rem, params, model, guide,
                                          shard(data[num_full * batch_size:]), *args, **kwargs)
        return total

    return jax.jit(total_loss)


def elbo_per_example(rng_key, model, guide, data, elbo=None, batch_size=1000, *, params=None,
                     distributed=False, model_args=(), model_kwargs=None):
    """Mean single-sample ELBO per example of ``data`` (the full ELBO: no warm-up).

    :param model: ``model(x, *model_args, **model_kwargs)``; ``guide`` likewise.
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
    fn = _elbo_sum_fn(model, guide, elbo, batch_size, len(data), mesh, tuple(model_args),
                      model_kwargs)
    return -float(fn(rng_key, params or {}, data)) / len(data)


def _leaves(tree):
    """Host copies of a pytree's leaves: safe from buffer donation."""
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _shape_signature(params):
    """:func:`~ppl_vae.checkpoint.param_signature` of parameters given as shapes
    (``jax.ShapeDtypeStruct`` leaves, by :func:`_host_params`'s paths)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(path): [list(leaf.shape), str(np.dtype(leaf.dtype))]
            for path, leaf in flat}


def _optax_record(optim_state):
    """How a checkpoint records an optax transformation: ``"optax"`` and the kinds of state
    it keeps (``optax (ScaleByAdamState, EmptyState)`` for ``optax.adam``), which is what a
    resume can restore. Its hyperparameters are inside its functions and not recorded: like
    ``learning_rate``, they may change on resume."""
    kinds = []

    def walk(node):
        if isinstance(node, (tuple, list)):
            if hasattr(node, "_fields"):
                kinds.append(type(node).__name__)
            for child in node:
                walk(child)
        elif isinstance(node, dict):
            for child in node.values():
                walk(child)

    walk(optim_state[1])  # (step, the optax state)
    return f"optax ({', '.join(kinds)})"


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


def load_params(path, model, guide, data, *args, **kwargs):
    """The parameters of a checkpoint (``best.npz`` or ``last.npz``) for the same model and
    guide, e.g. to evaluate a trained model without training; for ``params=`` of the
    evaluation functions or ``handlers.substitute``.

    :param model: the model the checkpoint was trained with (``model(x, *args, **kwargs)``).
    :param guide: its guide.
    :param data: a few rows ``(n, D)``: one trace of the pair gives the parameters' structure.
    :returns: ``(params, meta)``: the constrained parameter values by name and the
        checkpoint's metadata (``epoch``, ``config``, ...).
    :raises ~ppl_vae.errors.CheckpointError: unreadable, written by the Pyro backend, or for
        another model.
    """
    arrays, meta = load_checkpoint(path, backend="numpyro")
    svi = SVI(model, guide, optax_to_numpyro(optax.adam(1e-3)), Trace_ELBO())
    template = svi.get_params(svi.init(random.PRNGKey(0), jnp.asarray(data[:2]), *args,
                                       **kwargs))
    names = list(_host_params(template))
    flat = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    check_signature(path, meta, param_signature(_host_params(template)))
    return _params_tree(jax.tree_util.tree_structure(template), names, flat, path), meta


def _epoch_fn(svi, num_train, batch_size, exploded, dynamic_binarization, mesh=None,
              args=(), kwargs=None):
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
    kwargs = kwargs or {}

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
                bad < 0, lambda s: svi.stable_update(s, x, *args, _kl_weight=beta, **kwargs),
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


def _optimizer_spec(optimizer, learning_rate, normalize_gradients):
    """``(the NumPyro optimizer, the learning rate or None, the checkpoint's record)`` for
    fit's ``optimizer`` argument: None (``optax.adam(learning_rate)``), an optax
    ``GradientTransformation`` or a ``numpyro.optim`` optimizer; with ``normalize_gradients``
    each gradient is first scaled to unit L2 norm (an ``optax.chain``)."""
    if optimizer is None:
        transform, lr, record = optax.adam(learning_rate), learning_rate, DEFAULT_OPTIMIZER
    elif isinstance(optimizer, optax.GradientTransformation):
        # its learning rate is inside it: fit cannot read or change it
        transform, lr, record = optimizer, None, "optax"
    elif isinstance(optimizer, _NumPyroOptim):
        if normalize_gradients:
            raise ValueError("normalize_gradients=True chains an optax transformation before "
                             "the optimizer; pass an optax optimizer (e.g. optax.adam(1e-3)) "
                             f"instead of {type(optimizer).__name__}.")
        return optimizer, None, f"numpyro.optim.{type(optimizer).__name__}"
    else:
        raise ValueError(
            f"optimizer must be None (Adam at learning_rate), an optax GradientTransformation "
            f"such as optax.adamw(1e-3), or a numpyro.optim optimizer such as "
            f"numpyro.optim.Adam(1e-3); got {optimizer!r}.")
    if normalize_gradients:
        transform = optax.chain(optax.stateless(_unit_norm), transform)
    return optax_to_numpyro(transform), lr, record


class _Engine:
    """What :func:`ppl_vae._training.drive` needs from NumPyro: one jitted epoch, the
    validation ELBO, the parameters' host snapshot and the SVI state as arrays."""

    backend, peers, restores_params = "numpyro", "devices", False

    def __init__(self, *, svi, svi_state, key_perm, key_valid, model, guide, elbo, train_data,
                 valid_data, batch_size, dynamic_binarization, exploded, mesh, args, kwargs):
        self.svi, self.svi_state = svi, svi_state
        self.key_perm, self.key_valid = key_perm, key_valid
        self.train_data, self.valid_data, self.mesh = train_data, valid_data, mesh
        self.num_train = len(train_data)
        self.batch_size = batch_size
        self.num_batches = math.ceil(self.num_train / batch_size)
        self.is_main = mesh is None or _dist.is_main_process()
        self._get_params = jax.jit(svi.get_params)
        self.state_def = jax.tree_util.tree_structure(svi_state)
        template = self._get_params(svi_state)
        self.params_def = jax.tree_util.tree_structure(template)
        host = _host_params(template)
        self.param_names = list(host)
        self.signature = param_signature(host)
        self.epoch_fn = _epoch_fn(svi, self.num_train, batch_size, exploded,
                                  dynamic_binarization, mesh, args, kwargs)
        self.valid_fn = (None if valid_data is None else _elbo_sum_fn(
            model, guide, elbo, 1000, len(valid_data), mesh, args, kwargs))
        self._params = None  # get_params(svi_state), computed once per epoch
        self._path = None

    def _lost(self, error, what):
        if jax.process_count() == 1:
            raise error
        raise Lost(f"process {jax.process_index()} of {jax.process_count()}", what, "host",
                   error) from error

    def _current_params(self):
        if self._params is None:
            self._params = self._get_params(self.svi_state)
        return self._params

    def train_epoch(self, epoch, beta):
        try:
            self.svi_state, total, bad, bad_loss = self.epoch_fn(
                self.svi_state, random.fold_in(self.key_perm, epoch),
                jnp.asarray(beta, self.train_data.dtype), self.train_data)
            self._params = None
            bad = int(bad)  # one host sync per epoch
        except jax.errors.JaxRuntimeError as e:
            self._lost(e, "the jitted epoch")
        if bad >= 0:
            full = self.num_train // self.batch_size
            size = self.batch_size if bad < full else self.num_train % self.batch_size
            value = float(bad_loss)
            raise Diverged(f"the loss or a gradient became non-finite (loss {value})"
                           if not math.isfinite(value) else exploded_reason(value / size),
                           bad + 1)
        return float(total)

    def valid_elbo(self, epoch):
        try:
            loss = self.valid_fn(random.fold_in(self.key_valid, epoch), self._current_params(),
                                 self.valid_data)
            return -float(loss) / len(self.valid_data)
        except jax.errors.JaxRuntimeError as e:
            self._lost(e, "the validation ELBO")

    # ------------------------------------------------------------------- parameters
    def snapshot(self):
        return _host_params(self._current_params())

    def restore(self, snapshot):
        pass  # no global state: the result and the error carry the parameters

    def result_params(self, snapshot):
        return _params_tree(self.params_def, self.param_names, snapshot, self._path)

    def to_arrays(self, snapshot):
        return snapshot

    def from_arrays(self, arrays):
        return arrays

    def param_meta(self):
        return {}

    # -------------------------------------------------------------------- SVI state
    def state_arrays(self):
        return {f"state/{i}": leaf for i, leaf in enumerate(_leaves(self.svi_state))}

    def state_meta(self):
        return {"num_state_leaves": self.state_def.num_leaves,
                "num_devices": 1 if self.mesh is None else self.mesh.size,
                "versions": {"jax": jax.__version__, "numpyro": _numpyro_version()}}

    def load_state(self, arrays, meta, path):
        leaves = [arrays[f"state/{i}"] for i in range(meta["num_state_leaves"])]
        self.svi_state = _unflatten(self.state_def, leaves, "an SVI state", path)
        self._params = None

    # ------------------------------------------------------------ devices and hosts
    def start(self, start_epoch, last_path):
        self._path = last_path
        if self.mesh is not None:
            _check_same_start(start_epoch, last_path)
            self.svi_state, self.train_data, self.valid_data = _dist.replicate(
                (self.svi_state, self.train_data, self.valid_data), self.mesh)
            self._params = None

    def barrier(self, epoch):
        if self.mesh is not None:
            _dist.barrier(f"ppl_vae checkpoint {epoch}")  # no host runs ahead of process 0


def fit(rng_key, model, guide, train_data, valid_data=None, *, num_epochs=100, batch_size=100,
        learning_rate=5e-4, elbo=None, optimizer=None, warmup_epochs=0, early_stopping=None,
        checkpoint_dir=None, resume=False, device=None, progress=True, description="train",
        config=None, dynamic_binarization=False, distributed=False,
        normalize_gradients=False, callbacks=None, model_args=(), model_kwargs=None):
    """Train ``model``/``guide`` by SVI on ``train_data``; return a :class:`FitResult`.

    ``FitResult.params`` holds the parameters of the best epoch (highest validation ELBO; the
    last epoch without validation data).

    Everything is validated before the first step, as in the Pyro backend and with the same
    messages: the arguments, the data (shape, finite values, the same D in both splits, the
    support of the model's likelihood: binary data for a Bernoulli), and one eager run of
    the guide and the model on two rows (what either raises there is shown first, as the
    cause of a ``ValueError`` naming the data). A ``batch_size`` above N trains on one batch
    of all N examples per epoch.

    Example::

        model = partial(vae_model, decoder=decoder, prior=LearnedVampPrior(encoder, rng_key=k1))
        guide = partial(vae_guide, encoder=encoder)
        result = fit(random.PRNGKey(0), model, guide, x_train, x_valid, warmup_epochs=100)
        ll = importance_log_likelihood(random.PRNGKey(1), model, guide, x_test,
                                       params=result.params)

    :param rng_key: ``jax.random.PRNGKey``: initialisation, shuffling, ELBO samples.
    :param model: ``model(x, *model_args, **model_kwargs)``, ``x`` a minibatch ``(n, D)``;
        every sample site in the plate ``"data"`` (dim -1), e.g. a ``functools.partial`` of
        ``ppl_vae.models.vae_numpyro.vae_model``.
    :param guide: ``guide(x, *model_args, **model_kwargs)``.
    :param train_data: ``(N, D)`` array (any float or integer dtype, or a torch tensor).
    :param valid_data: optional ``(M, D)``; its full ELBO drives early stopping and the best
        checkpoint.
    :param elbo: a NumPyro ELBO instance (default ``Trace_ELBO()``); ``TraceMeanField_ELBO()``
        uses an analytic KL where one is registered; ``RenyiELBO(alpha=0,
        num_particles=k)`` is the IWAE bound.
    :param optimizer: None for ``optax.adam(learning_rate)``, an optax
        ``GradientTransformation`` (``optax.adamw(1e-3)``; its learning rate is its own,
        ``learning_rate`` is not used) or a ``numpyro.optim`` optimizer. Recorded in the
        checkpoints (an optax one by the kinds of state it keeps, e.g. ``optax
        (ScaleByAdamState, EmptyState)``): a resume with another is refused before
        compiling; its hyperparameters, like ``learning_rate``, may change.
    :param int warmup_epochs: KL warm-up length (0: none): epoch ``e`` trains with the latent
        sites scaled by ``min(1, e / warmup_epochs)`` (:class:`~ppl_vae.numpyro.latent_scale`).
        A run shorter than its warm-up warns (:class:`~ppl_vae.errors.WarmupWarning`).
    :param int early_stopping: stop after this many epochs past warm-up without a better
        validation ELBO (None: never).
    :param bool normalize_gradients: divide each parameter's gradient by its own L2 norm
        (plus 1e-7) before the optimizer, as the reference implementation of the VampPrior
        paper does (its ``AdamNormGrad``); default plain Adam.
    :param checkpoint_dir: directory for ``last.npz`` (every epoch: SVI state, key, history)
        and ``best.npz`` (best parameters), in :mod:`ppl_vae.checkpoint`'s format: arrays and
        JSON, never a pickle.
    :param bool resume: continue from ``checkpoint_dir/last.npz``; the result is identical to
        an uninterrupted run (the checkpoint's key is used). The checkpoint's configuration
        must match this run's, except ``num_epochs``, ``early_stopping`` and
        ``learning_rate`` (which then applies from the next step on); otherwise
        :class:`~ppl_vae.errors.CheckpointMismatchError` lists the differences.
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
    :param callbacks: a callable or a list of them, each called after every epoch (on
        process 0) with that epoch's history record (a dict: ``epoch``, ``beta``,
        ``learning_rate``, ``train_loss``, ``valid_elbo``, ``seconds``), e.g. to log to
        TensorBoard or MLflow (:mod:`ppl_vae.callbacks`).
    :param tuple model_args: further positional arguments of model and guide, after ``x``.
    :param dict model_kwargs: keyword arguments of model and guide.
    :raises ValueError: bad arguments or data, before any work.
    :raises ~ppl_vae.errors.TrainingDivergedError: the loss or a gradient turned NaN/inf at
        some step, the loss exploded, or the validation ELBO collapsed; the error's
        ``.params`` are the last good epoch's and its checkpoints are kept.
    :raises ~ppl_vae.errors.DistributedError: (``distributed=True`` over several hosts)
        another host died; its message names the last good checkpoint.
    """
    _check_key(rng_key)
    settings = check_settings(
        num_epochs=num_epochs, batch_size=batch_size, warmup_epochs=warmup_epochs,
        early_stopping=early_stopping, learning_rate=learning_rate,
        normalize_gradients=normalize_gradients, config=config, checkpoint_dir=checkpoint_dir,
        resume=resume, callbacks=callbacks)
    if elbo is not None and not isinstance(elbo, ELBO):
        raise ValueError(f"elbo must be a NumPyro ELBO instance such as Trace_ELBO(); got "
                         f"{type(elbo).__name__}.")
    numpyro_optimizer, lr, optimizer_record = _optimizer_spec(
        optimizer, settings["learning_rate"], settings["normalize_gradients"])
    model_args, model_kwargs = tuple(model_args), dict(model_kwargs or {})
    if distributed and device is not None:
        raise ValueError(f"distributed=True runs on every device, jax.devices(); got device="
                         f"{device!r} too. Leave device None.")
    mesh = None
    if distributed:
        _dist.initialize()
        mesh = _dist.mesh()
    train_data = _as_array("train_data", train_data, device)
    num_train, num_features = train_data.shape
    valid_data = _as_array("valid_data", valid_data, device, num_features)
    if dynamic_binarization and not bool(((train_data >= 0) & (train_data <= 1)).all()):
        raise ValueError("dynamic_binarization=True needs train_data in [0, 1] (the "
                         "probabilities each pixel is drawn with); got values in "
                         f"[{float(train_data.min())}, {float(train_data.max())}].")
    elbo = elbo or Trace_ELBO()
    head = (random.bernoulli(random.PRNGKey(0), train_data[:2]).astype(train_data.dtype)
            if dynamic_binarization else train_data)
    check_model_on_data(model, guide, head, "train_data", *model_args, **model_kwargs)
    if valid_data is not None:
        check_model_on_data(model, guide, valid_data, "valid_data", *model_args,
                            **model_kwargs)

    key_init, key_perm, key_valid = random.split(rng_key, 3)
    run_batch_size = min(settings["batch_size"], num_train)  # above N: one batch of all N
    annealed_model, annealed_guide = _annealed(model), _annealed(guide)
    svi = SVI(annealed_model, annealed_guide, numpyro_optimizer, elbo)
    one = jnp.asarray(1.0, train_data.dtype)

    def init(key, x):  # one trace registers every parameter (networks, pseudo-inputs, ...)
        return svi.init(key, x, *model_args, _kl_weight=one, **model_kwargs)

    # The parameters' and the optimizer state's shapes, traced without compiling: what a
    # resume is checked against before the (slow) compilation, and what an optax
    # optimizer is recorded by. (Not needed otherwise: the engine reads them off the state.)
    def shapes_of(key, x):
        state = init(key, x)
        return state.optim_state, svi.get_params(state)

    shapes = None
    if settings["resume"] or optimizer_record == "optax":
        shapes = jax.eval_shape(shapes_of, key_init, head[:run_batch_size])
    if optimizer_record == "optax":
        optimizer_record = _optax_record(shapes[0])
    config = run_config(
        "numpyro", elbo=elbo, seed=("rng_key", _key_data(rng_key)),
        batch_size=settings["batch_size"], warmup_epochs=settings["warmup_epochs"],
        num_train=num_train, num_valid=0 if valid_data is None else len(valid_data),
        num_features=num_features, dynamic_binarization=dynamic_binarization,
        num_epochs=settings["num_epochs"], early_stopping=settings["early_stopping"],
        learning_rate=lr, normalize_gradients=settings["normalize_gradients"],
        optimizer=optimizer_record, config=config)
    if settings["resume"]:  # an unreadable or mismatched checkpoint fails before compiling
        check_resume(checkpoint_dir, "numpyro", config, _shape_signature(shapes[1]))
    svi_state = jax.jit(init)(key_init, head[:run_batch_size])
    # The initial parameters are the networks' own arrays (eqx_module's init values): copy
    # them, since the epoch donates the state's buffers.
    svi_state = jax.tree_util.tree_map(jnp.copy, svi_state)
    engine = _Engine(
        svi=svi, svi_state=svi_state, key_perm=key_perm, key_valid=key_valid, model=model,
        guide=guide, elbo=elbo, train_data=train_data, valid_data=valid_data,
        batch_size=run_batch_size, dynamic_binarization=bool(dynamic_binarization),
        exploded=EXPLODED_NATS_PER_DIM * num_features, mesh=mesh, args=model_args,
        kwargs=model_kwargs)
    return drive(engine, config=config, num_epochs=settings["num_epochs"],
                 warmup_epochs=settings["warmup_epochs"],
                 early_stopping=settings["early_stopping"], learning_rate=lr,
                 checkpoint_dir=checkpoint_dir, resume=settings["resume"],
                 num_features=num_features, num_batches=engine.num_batches,
                 has_valid=valid_data is not None, progress=progress, description=description,
                 callbacks=settings["callbacks"])


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
