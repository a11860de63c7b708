"""fit, in both backends: KL warm-up as a handler (against hand computations), learning, the
history, callbacks, optimizers, early stopping, checkpoints, resume, divergence, bad input.

Every test but the few marked Pyro or NumPyro runs once per backend (the ``backend`` fixture,
``tests/backends.py``) on the same data and settings.
"""

import json
import math
import re
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
from backends import U32, get, prototypes

import ppl_vae.errors
from ppl_vae.checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from ppl_vae.errors import WarmupWarning

U64 = 2.0**-53  # float64 unit round-off
D, L = 30, 3
# 150 training and 50 validation rows; 3 minibatches an epoch
FIT = dict(batch_size=50, learning_rate=1e-3, warmup_epochs=2)
SEED = 2


def _data(n=200):
    x = prototypes(n, D)
    return x[:150], x[150:]


def _same(a, b):
    """Two ``{name: array}`` equal bit for bit."""
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _close(a, b, rtol=0.0, atol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=name)


def _max_gap(a, b):
    return max(float(np.abs(a[name] - b[name]).max()) for name in a)


@pytest.fixture(scope="module")
def full_run(backend, tmp_path_factory):
    """4 epochs with validation, checkpoints and a callback (shared: compiling a NumPyro
    fit costs seconds). ``held``: the parameters the caller holds on return (Pyro: the param
    store, read before the next test clears it)."""
    train, valid = _data()
    model, guide = backend.vae()
    records = []
    ckpt = tmp_path_factory.mktemp(f"full_{backend.name}")
    result = backend.fit(model, guide, train, valid, num_epochs=4, checkpoint_dir=ckpt,
                         seed=SEED, callbacks=[records.append], **FIT)
    return SimpleNamespace(result=result, records=records, checkpoint_dir=ckpt, model=model,
                           guide=guide, held=backend.restored_params(result))


# ----------------------------------------------------------------------- KL warm-up
def test_warmup_schedule_is_one_function_of_both_backends():
    from ppl_vae._training import warmup_beta

    assert [warmup_beta(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_beta(0, 0) == 1.0 and warmup_beta(0, 100) == 0.01
    for name in ("pyro", "numpyro"):
        if get(name) is not None:
            assert get(name).lib.warmup_beta is warmup_beta


def _tiny(backend, num_features=3, latent=2):
    """p(z) p(x | z) p(bonus), x | z ~ N(z W^T + c, s), and a guide that puts z at x A^T with a
    known log-density (a Delta): the one-sample ELBO is a deterministic function of x."""
    rng = np.random.default_rng(0)
    W, c, A = (rng.standard_normal((num_features, latent)), rng.standard_normal(num_features),
               rng.standard_normal((latent, num_features)))
    x = rng.standard_normal((4, num_features))
    log_q = rng.standard_normal(4)
    ppl, dist, xp = backend.ppl, backend.dist, backend.xp
    Wb, cb, Ab, log_qb = (backend.array(v) for v in (W, c, A, log_q))

    def model(x):
        with ppl.plate("data", x.shape[0]):
            z = ppl.sample("z", dist.Normal(xp.zeros(latent, dtype=x.dtype), 1.0).to_event(1))
            ppl.sample("x", dist.Normal(z @ Wb.T + cb, 0.5).to_event(1), obs=x)
        ppl.factor("bonus", 0.25 * x.sum())  # observed, as obs= sites are

    def guide(x):
        with ppl.plate("data", x.shape[0]):
            ppl.sample("z", dist.Delta(x @ Ab.T, log_density=log_qb, event_dim=1))

    def hand_elbo(beta):
        from scipy import stats

        z = x @ A.T
        log_lik = stats.norm(z @ W.T + c, 0.5).logpdf(x).sum()
        log_prior = stats.norm(0, 1).logpdf(z).sum()
        terms = [log_lik, beta * log_prior, -beta * log_q.sum(), 0.25 * x.sum()]
        return sum(terms), sum(abs(t) for t in terms)

    return model, guide, backend.array(x), hand_elbo


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_latent_scale_scales_the_latent_sites_and_not_the_observed_ones(backend, beta):
    """Under ``latent_scale(., beta)`` around model and guide, Trace_ELBO is
    log p(x | z) + beta (log p(z) - log q(z | x)) + the factor: checked against SciPy's
    densities at the guide's (deterministic) z, in float64: each site's log-density is a sum
    of a few dozen terms, so 64 units of round-off of the sum of their magnitudes."""
    scaled = backend.lib.latent_scale
    with backend.float64():
        model, guide, x, hand_elbo = _tiny(backend)
        loss = backend.loss(backend.elbos["trace"](), scaled(model, scale=beta),
                            scaled(guide, scale=beta), x)
        model_tr, guide_tr = backend.traces(scaled(model, scale=beta),
                                            scaled(guide, scale=beta), x)
    expected, magnitude = hand_elbo(beta)
    assert abs(-loss - expected) < 64 * U64 * magnitude, (loss, expected)
    assert float(model_tr["z"]["scale"]) == float(guide_tr["z"]["scale"]) == beta
    for name in ("x", "bonus"):  # observed: never scaled
        assert model_tr[name]["scale"] in (None, 1.0)


def test_meanfield_analytic_kl_is_scaled_by_beta_too(backend):
    """TraceMeanField_ELBO takes KL(q || p) in closed form where one is registered (two
    diagonal Normals): under latent_scale the KL is multiplied by beta too. The likelihood
    does not depend on z, so the loss is deterministic:
    -sum log N(x; c, s) + beta sum_n KL(N(m_n, sq^2) || N(0, 1))."""
    from scipy import stats

    rng = np.random.default_rng(1)
    x, A, c = (rng.standard_normal((5, 3)), rng.standard_normal((2, 3)),
               rng.standard_normal(3))
    ppl, dist, xp = backend.ppl, backend.dist, backend.xp

    def model(x):
        cb = backend.array(c)
        with ppl.plate("data", x.shape[0]):
            ppl.sample("z", dist.Normal(xp.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            ppl.sample("x", dist.Normal(cb, 0.5).to_event(1), obs=x)

    def guide(x):
        with ppl.plate("data", x.shape[0]):
            ppl.sample("z", dist.Normal(x @ backend.array(A).T, 0.3).to_event(1))

    m = x @ A.T
    kl = (np.log(1 / 0.3) + (0.3**2 + m**2) / 2 - 0.5).sum()
    log_lik = stats.norm(c, 0.5).logpdf(x).sum()
    for beta in (0.25, 1.0):
        scaled = backend.lib.latent_scale
        with backend.float64():
            loss = backend.loss(backend.elbos["meanfield"](), scaled(model, scale=beta),
                                scaled(guide, scale=beta), backend.array(x))
        expected = -log_lik + beta * kl
        assert abs(loss - expected) < 64 * U64 * (abs(log_lik) + kl), (beta, loss, expected)


def test_fit_trains_the_backends_own_example_vae_under_kl_warm_up(backend):
    """A program shaped like the backend's own VAE example trains as it is, and fit's warm-up
    reaches it: with one minibatch an epoch, epoch 1's loss is the loss at the initial
    parameters and the same draws whatever beta is, A + beta B (B the KL part), so the losses
    at beta = 1/4, 1/2 and 1 satisfy l(1) - l(1/2) = 2 (l(1/2) - l(1/4)). Those betas are
    powers of two, so beta B is exact and each loss is the same site sums added in float32:
    exact to a few units of round-off of |l| (32 u |l|)."""
    x = prototypes(64, D, seed=3)

    def run(**kwargs):
        model, guide, args, kw = backend.example_vae(D, 16, 3)  # new networks
        return backend.fit(model, guide, x, batch_size=64, learning_rate=2e-2, seed=1,
                           model_args=args, model_kwargs=kw, **kwargs)

    with pytest.warns(WarmupWarning, match=r"num_epochs 1 ends before the KL warm-up does "
                      r"\(warmup_epochs 4\): the last epoch trains at beta = 0.25"):
        quarter = run(num_epochs=1, warmup_epochs=4)
    half = run(num_epochs=8, warmup_epochs=2)  # 8 >= 2: no warning (warnings are errors)
    full = run(num_epochs=1)
    assert [h["beta"] for h in quarter.history] == [0.25]
    assert [h["beta"] for h in half.history] == [0.5] + [1.0] * 7
    assert [h["beta"] for h in full.history] == [1.0]
    l25, l50, l100 = (r.history[0]["train_loss"] for r in (quarter, half, full))
    tol = 32 * U32 * max(abs(l25), abs(l100))
    assert abs((l100 - l50) - 2 * (l50 - l25)) < tol, (l25, l50, l100)
    # the KL part is there, and scaled (small: both examples start with q(z | x) ~ p(z))
    assert abs(l100 - l50) > 10 * tol, (l25, l50, l100)
    losses = [h["train_loss"] for h in half.history]
    assert np.isfinite(losses).all() and losses[-1] < losses[1] - 1.0, losses


def _shifted(backend, seen):
    """``model(x, shift, *, scale)`` and its guide, which record the arguments they get in
    ``seen``: x ~ N(loc + shift + 0.1 z, scale), loc a parameter."""
    ppl, dist = backend.ppl, backend.dist

    def model(x, shift, *, scale):
        seen["model"].append((type(shift).__name__, scale))
        loc = ppl.param("loc", backend.zeros(x.shape[1]))
        with ppl.plate("data", x.shape[0]):
            z = ppl.sample("z", dist.Normal(0.0, 1.0))
            ppl.sample("x", dist.Normal(loc + shift + 0.1 * z[..., None], scale).to_event(1),
                       obs=x)

    def guide(x, shift, *, scale):
        seen["guide"].append((type(shift).__name__, scale))
        with ppl.plate("data", x.shape[0]):
            ppl.sample("z", dist.Normal(backend.xp.zeros(x.shape[0]), 1.0))

    return model, guide


def _fit_shifted(backend, model, guide, **kwargs):
    x = prototypes(40, 5)
    shift = backend.array(np.full(5, 3.0))
    return backend.fit(model, guide, x[:30], x[30:], num_epochs=2, warmup_epochs=2,
                       batch_size=10, learning_rate=0.1, model_args=(shift,),
                       model_kwargs={"scale": 0.75}, **kwargs), x, shift


def test_model_args_and_kwargs_reach_both_programs(backend):
    """model(x, *model_args, **model_kwargs) and guide(...) alike, in training and in the
    validation ELBO; the programs use them (a shift of the likelihood's mean)."""
    seen = {"model": [], "guide": []}
    model, guide = _shifted(backend, seen)
    result, x, shift = _fit_shifted(backend, model, guide)
    assert {s for _, s in seen["model"]} == {s for _, s in seen["guide"]} == {0.75}
    assert all(name != "NoneType" for name, _ in seen["model"] + seen["guide"])
    assert [h["beta"] for h in result.history] == [0.5, 1.0]
    elbo = backend.elbo_per_example(model, guide, backend.array(x[30:]), model_args=(shift,),
                                    model_kwargs={"scale": 0.75}, **backend.params_kw(result))
    # loc started at 0 and moves toward mean(x) - shift, about -2.7: the shift was applied
    assert np.isfinite(elbo)
    loc = backend.leaves(result.params)
    loc = next(v for k, v in loc.items() if "loc" in k)
    assert np.all(loc < -0.15), loc  # 2 epochs x 3 steps of Adam at 0.1 toward -2.7


# --------------------------------------------------------------------- learning, history
def test_fit_follows_warmup_learns_and_records_its_history(backend, full_run):
    result = full_run.result
    assert isinstance(result, backend.lib.FitResult)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert [h["beta"] for h in result.history] == [0.5, 1.0, 1.0, 1.0]
    assert set(result.history[0]) == {"epoch", "beta", "learning_rate", "train_loss",
                                      "valid_elbo", "seconds"}
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    # From the end of warm-up the KL weight is fixed, and the loss decreases every epoch.
    assert all(b < a for a, b in zip(losses[1:], losses[2:])), losses
    valid = [h["valid_elbo"] for h in result.history]
    assert result.best_valid_elbo == max(valid)
    assert result.best_epoch == 1 + int(np.argmax(valid))
    # the parameters returned are those the caller holds (Pyro: its param store)
    assert set(backend.leaves(result.params)) == set(full_run.held)
    assert {k.split("$")[0] for k in result.params} == {"decoder", "encoder", "pseudo_inputs"}
    # callbacks got every epoch's record, after it was complete
    assert full_run.records == result.history
    # The best parameters drive evaluation: the validation ELBO and a log-likelihood bound
    # computed with them agree with the history to Monte Carlo error. Both ELBOs are means of
    # one draw per example over M = 50 examples: 5 standard errors of that, from the spread of
    # 20 draws per example (single-draw ELBOs have heavy tails here: one bad draw moves the
    # mean by nats, so a relative tolerance does not hold).
    valid_x = backend.array(_data()[1])
    with_params = backend.params_kw(result)
    elbo = backend.elbo_per_example(full_run.model, full_run.guide, valid_x, seed=5,
                                    **with_params)
    ll, log_w = backend.importance_log_likelihood(
        full_run.model, full_run.guide, valid_x, num_samples=20, seed=6,
        return_log_weights=True, **with_params)
    tol = 5 * log_w.std() / math.sqrt(len(log_w))
    assert abs(elbo - log_w.mean()) < tol and abs(result.best_valid_elbo - log_w.mean()) < tol
    assert ll.shape == (50,) and np.all(np.isfinite(ll)) and np.all(ll >= log_w.mean(1))


@pytest.mark.parametrize("prior", ["standard", "mog", "vamp"])
def test_training_improves_the_validation_elbo(backend, prior):
    train, valid = _data()
    model, guide = backend.vae(prior)
    result = backend.fit(model, guide, train, valid, num_epochs=8, seed=SEED, **FIT)
    valid_elbo = [h["valid_elbo"] for h in result.history]
    assert len(result.history) == 8 and valid_elbo[-1] > valid_elbo[0] + 2, valid_elbo
    assert result.best_valid_elbo == max(valid_elbo)
    assert result.best_epoch == 1 + valid_elbo.index(max(valid_elbo))
    assert set(backend.leaves(result.params)) == set(backend.restored_params(result))


def test_callbacks_are_checked_before_any_work(backend):
    model, guide = backend.vae()
    with pytest.raises(ValueError, match="callbacks must be callables taking the epoch's "
                       "history record; got int"):
        backend.fit(model, guide, _data()[0], callbacks=[print, 3])


# ------------------------------------------------------------------ checkpoints, resume
def test_the_best_checkpoint_holds_the_returned_parameters(backend, full_run):
    result = full_run.result
    _, meta = load_checkpoint(full_run.checkpoint_dir / "best.npz", backend=backend.name)
    assert meta["epoch"] == result.best_epoch and meta["kind"] == "best"
    saved = backend.checkpoint_params(full_run.checkpoint_dir / "best.npz")
    # copies of the same arrays, in this process: bit for bit
    _same(backend.leaves(result.params), saved)
    _same(full_run.held, saved)


def test_resume_equals_an_uninterrupted_run(backend, full_run, tmp_path):
    """Same process, same programs, same inputs (the checkpoint holds the exact state): the
    same numbers, bit for bit."""
    train, valid = _data()
    model, guide = backend.vae()
    first = backend.fit(model, guide, train, valid, num_epochs=2, checkpoint_dir=tmp_path,
                        seed=SEED, **FIT)
    assert len(first.history) == 2
    model, guide = backend.vae()  # a new process: fresh networks, empty param store
    resumed = backend.fit(model, guide, train, valid, num_epochs=4, checkpoint_dir=tmp_path,
                          seed=SEED, resume=True, **FIT)

    def strip(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert strip(resumed.history) == strip(full_run.result.history)
    assert resumed.best_epoch == full_run.result.best_epoch
    _same(backend.leaves(resumed.params), backend.leaves(full_run.result.params))
    assert (tmp_path / "last.npz").exists() and (tmp_path / "best.npz").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_without_a_checkpoint_warns_and_starts_fresh(backend, tmp_path):
    train, _ = _data()
    model, guide = backend.vae()
    with pytest.warns(UserWarning, match="does not exist"):
        result = backend.fit(model, guide, train, num_epochs=2, checkpoint_dir=tmp_path,
                             resume=True, seed=SEED, **FIT)
    assert len(result.history) == 2 and result.best_valid_elbo is None


def _without(path, *keys):
    """Rewrite a checkpoint as ppl_vae versions before ``keys`` joined the configuration
    wrote it."""
    arrays, meta = load_checkpoint(path)
    for key in keys:
        del meta["config"][key]
    save_checkpoint(path, arrays, {k: v for k, v in meta.items()
                                   if k not in ("format", "version")})


def _custom_optimizers(backend):
    """``(optimizer, fit's other arguments, its record in the checkpoint)`` of the backend's
    own kinds. NumPyro's two are Adam at 1e-3, as the shared run's default optimizer, and
    fit's learning_rate (1.0) is not theirs."""
    if backend.name == "pyro":
        import pyro.optim
        import torch

        return [(torch.optim.SGD, dict(optimizer_args={"momentum": 0.9}, learning_rate=1e-4),
                 'torch.optim.SGD {"momentum": 0.9}'),
                (pyro.optim.ClippedAdam({"lr": 1e-3, "clip_norm": 5.0}), {},
                 'pyro.optim.clipped_adam.ClippedAdam {"clip_norm": 5.0}')]
    import numpyro.optim
    import optax

    return [(optax.adamw(1e-3, weight_decay=0.0), dict(learning_rate=1.0),
             "optax (ScaleByAdamState, EmptyState, EmptyState)"),
            (numpyro.optim.Adam(1e-3), dict(learning_rate=1.0), "numpyro.optim.Adam")]


def _stepping_optimizers():
    """Records which torch optimizer takes each step (torch's global step hook)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    stepped = []

    def hook(optimizer, args, kwargs):
        group = optimizer.param_groups[0]
        stepped.append((type(optimizer).__name__, group["lr"], group.get("momentum"),
                        group.get("clip_norm")))

    return stepped, register_optimizer_step_pre_hook(hook)


def test_a_custom_optimizer_trains_is_recorded_and_cannot_be_swapped_on_resume(
        backend, full_run, tmp_path):
    """The backend's own optimizers train; the one given is the one stepping (Pyro: torch's
    step hook sees it; NumPyro: they are Adam at 1e-3, so they end where the default Adam at
    learning_rate 1e-3 does, to float32 round-off of 12 steps, and not where Adam at fit's
    learning_rate 1.0 would); the checkpoint records it and a resume with another is
    refused, naming both."""
    train, valid = _data()
    fit_kwargs = {k: v for k, v in FIT.items() if k != "learning_rate"}
    for i, (optimizer, kwargs, record) in enumerate(_custom_optimizers(backend)):
        model, guide = backend.vae()
        if backend.name == "pyro":
            stepped, handle = _stepping_optimizers()
        try:
            result = backend.fit(model, guide, train, valid, num_epochs=4, seed=SEED,
                                 checkpoint_dir=tmp_path / str(i), optimizer=optimizer,
                                 **fit_kwargs, **kwargs)
        finally:
            if backend.name == "pyro":
                handle.remove()
        assert result.config["optimizer"] == record
        assert load_checkpoint(tmp_path / str(i) / "last.npz")[1]["config"]["optimizer"] == record
        valid_elbo = [h["valid_elbo"] for h in result.history]
        assert valid_elbo[-1] > valid_elbo[0], valid_elbo
        if backend.name == "pyro":
            expected = (("SGD", 1e-4, 0.9, None) if i == 0
                        else ("ClippedAdam", 1e-3, None, 5.0))
            assert len(stepped) == 12 and set(stepped) == {expected}, set(stepped)
            assert result.history[0]["learning_rate"] == expected[1]
        else:
            _close(backend.leaves(result.params), backend.leaves(full_run.result.params),
                   atol=1e-6)
        model, guide = backend.vae()
        with pytest.raises(CheckpointMismatchError, match=rf"optimizer: checkpoint "
                           rf'{re.escape(json.dumps(record))}, now "adam"'):
            backend.fit(model, guide, train, valid, num_epochs=5, seed=SEED, resume=True,
                        checkpoint_dir=tmp_path / str(i), **FIT)


def test_numpyro_a_resume_with_another_optax_transformation_is_refused(tmp_path):
    backend = get("numpyro")
    if backend is None:
        pytest.skip("numpyro is not installed")
    import optax

    train, valid = _data()
    fit_kwargs = {k: v for k, v in FIT.items() if k != "learning_rate"}
    model, guide = backend.vae()
    backend.fit(model, guide, train, valid, num_epochs=2, seed=SEED, checkpoint_dir=tmp_path,
                optimizer=optax.adamw(1e-3, weight_decay=0.0), **fit_kwargs)
    model, guide = backend.vae()
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            'optimizer: checkpoint "optax (ScaleByAdamState, EmptyState, EmptyState)", '
            'now "optax (EmptyState, EmptyState)"')):
        backend.fit(model, guide, train, valid, num_epochs=3, seed=SEED, resume=True,
                    checkpoint_dir=tmp_path, optimizer=optax.sgd(1e-3), **fit_kwargs)
    # the same kinds of state: the optimizer's hyperparameters may change, as
    # learning_rate may
    model, guide = backend.vae()
    result = backend.fit(model, guide, train, valid, num_epochs=3, seed=SEED, resume=True,
                         checkpoint_dir=tmp_path, optimizer=optax.adamw(1e-4, weight_decay=0.1),
                         **fit_kwargs)
    assert len(result.history) == 3


def test_a_checkpoint_from_before_the_optimizer_setting_still_resumes(backend, full_run,
                                                                      tmp_path):
    """ppl_vae.checkpoint.ADDED_SETTINGS: a checkpoint without "optimizer" (and without
    "normalize_gradients") trained with plain Adam, and resumes as such; with another
    optimizer it is refused."""
    import shutil

    shutil.copy(full_run.checkpoint_dir / "last.npz", tmp_path / "last.npz")
    _without(tmp_path / "last.npz", "optimizer", "normalize_gradients")
    train, valid = _data()
    optimizer, kwargs, record = _custom_optimizers(backend)[0]
    model, guide = backend.vae()
    with pytest.raises(CheckpointMismatchError, match=rf'optimizer: checkpoint "adam", now '
                       rf"{re.escape(json.dumps(record))}"):
        backend.fit(model, guide, train, valid, num_epochs=5, seed=SEED, resume=True,
                    checkpoint_dir=tmp_path, optimizer=optimizer,
                    **{**FIT, **kwargs})
    model, guide = backend.vae()
    resumed = backend.fit(model, guide, train, valid, num_epochs=5, seed=SEED, resume=True,
                          checkpoint_dir=tmp_path, **FIT)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.history[:4] == full_run.result.history
    assert resumed.config["optimizer"] == "adam"


class _AdamNormGrad:
    """The VampPrior reference's optimiser, restated: each gradient over its L2 norm + 1e-7,
    then Adam (Pyro: torch's for-loop Adam; NumPyro: written out with bias correction)."""

    @staticmethod
    def pyro():
        import torch

        class AdamNormGrad(torch.optim.Adam):
            def step(self, closure=None):
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.grad = p.grad / (p.grad.norm(2) + 1e-7)
                return super().step(closure)

        return AdamNormGrad

    @staticmethod
    def numpyro(lr=FIT["learning_rate"], b1=0.9, b2=0.999, eps=1e-8):
        import jax
        import jax.numpy as jnp
        import optax

        tree_map = jax.tree_util.tree_map

        def init(params):
            zeros = tree_map(jnp.zeros_like, params)
            return jnp.zeros((), jnp.int32), zeros, zeros

        def update(grads, state, params=None):
            t, m, v = state
            t = t + 1
            g = tree_map(lambda g: g / (jnp.sqrt(jnp.sum(g * g)) + 1e-7), grads)
            m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
            v = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
            step = tree_map(lambda m, v: -lr * (m / (1 - b1 ** t))
                            / (jnp.sqrt(v / (1 - b2 ** t)) + eps), m, v)
            return step, (t, m, v)

        return optax.GradientTransformation(init, update)


def test_normalize_gradients_is_the_reference_adam_norm_grad(backend, full_run, tmp_path):
    """fit(normalize_gradients=True) steps as the reference's AdamNormGrad: 4 epochs (12
    steps) equal an independent restatement, passed as fit's optimizer, to float32 rounding
    (atol 1e-6: a few ulp of the parameters' size per step), and end far from plain Adam's 4
    epochs (more than 1e-4). The setting is part of the checkpoint's configuration:
    resuming with the other one is refused."""
    train, valid = _data()
    model, guide = backend.vae()
    normalized = backend.fit(model, guide, train, valid, num_epochs=4, seed=SEED,
                             checkpoint_dir=tmp_path, normalize_gradients=True, **FIT)
    assert load_checkpoint(tmp_path / "last.npz")[1]["config"]["normalize_gradients"] is True
    normalized_params = backend.leaves(normalized.params)
    assert _max_gap(normalized_params, backend.leaves(full_run.result.params)) > 1e-4
    model, guide = backend.vae()
    reference = backend.fit(model, guide, train, valid, num_epochs=4, seed=SEED,
                            optimizer=getattr(_AdamNormGrad, backend.name)(), **FIT)
    _close(normalized_params, backend.leaves(reference.params), atol=1e-6)
    model, guide = backend.vae()
    with pytest.raises(CheckpointMismatchError, match="normalize_gradients"):
        backend.fit(model, guide, train, valid, num_epochs=5, seed=SEED, checkpoint_dir=tmp_path,
                    resume=True, **FIT)
    with pytest.raises(ValueError, match="normalize_gradients must be True or False; got 1"):
        backend.fit(model, guide, train, num_epochs=1, normalize_gradients=1)
    with pytest.raises(ValueError, match="normalize_gradients must be True or False; got 'yes'"):
        backend.fit(model, guide, train, num_epochs=1, normalize_gradients="yes")


def test_pyro_default_adam_is_the_fused_kernel_and_torchs_adam(tmp_path):
    """fit's default optimizer is torch's Adam with the fused kernel (one pass per parameter;
    issue 14). It is the same algorithm: 4 epochs of fit equal 4 epochs with
    optimizer=torch.optim.Adam (the for-loop kernel) to float32 rounding (the kernels order
    the same arithmetic differently: a few ulp of 6e-8 a step, 12 steps, so 1e-6), and a
    checkpoint written by the for-loop kernel before the optimizer was recorded (ppl_vae
    before issue 14) resumes with the fused kernel and its state."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    backend = get("pyro")
    train, valid = _data()
    fused_flags = []

    def hook(optimizer, args, kwargs):
        fused_flags.append((optimizer.param_groups[0]["fused"],
                            int(next(iter(optimizer.state.values()))["step"])
                            if optimizer.state else 0))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        model, guide = backend.vae()
        fused = backend.fit(model, guide, train, valid, num_epochs=4, seed=SEED, **FIT)
        assert {f for f, _ in fused_flags} == {True}
        fused_flags.clear()
        model, guide = backend.vae()
        loop = backend.fit(model, guide, train, valid, num_epochs=4, seed=SEED,
                           checkpoint_dir=tmp_path, optimizer=torch.optim.Adam, **FIT)
        assert {f for f, _ in fused_flags} == {None}  # torch's default: not fused
        _close(backend.leaves(fused.params), backend.leaves(loop.params), atol=1e-6)
        _without(tmp_path / "last.npz", "optimizer")
        fused_flags.clear()
        model, guide = backend.vae()
        backend.fit(model, guide, train, valid, num_epochs=5, seed=SEED,
                    checkpoint_dir=tmp_path, resume=True, **FIT)
    finally:
        handle.remove()
    assert {f for f, _ in fused_flags} == {True}
    assert fused_flags[0][1] == 12  # Adam's state of the 12 steps, loaded


def test_early_stopping_stops_and_keeps_the_best_epoch(backend):
    """A learning rate of ~0 leaves only Monte Carlo noise in the validation ELBO: the run
    stops once `early_stopping` epochs after warm-up bring no improvement."""
    train, valid = _data()
    model, guide = backend.vae()
    warmup, patience = 3, 2
    result = backend.fit(model, guide, train[:100], valid, num_epochs=30, batch_size=50,
                         learning_rate=1e-12, warmup_epochs=warmup, early_stopping=patience,
                         seed=1)
    assert result.stopped_early
    elbos = [h["valid_elbo"] for h in result.history]
    # Replay the rule on the history.
    best, bad = -math.inf, 0
    for epoch, v in enumerate(elbos, start=1):
        if v > best:
            best, bad = v, 0
        elif epoch > warmup:
            bad += 1
        stop = bad >= patience
        assert stop == (epoch == len(elbos))
    assert warmup < len(elbos) < 30 and result.best_valid_elbo == max(elbos)
    assert result.best_epoch == 1 + elbos.index(max(elbos))
    # stopped exactly `patience` epochs after the best (or after warm-up, if earlier)
    assert len(elbos) == max(result.best_epoch, warmup) + patience


# ------------------------------------------------------------------------- divergence
def _clocked(backend, model, poison_from_step, learning_rate):
    """``model`` and a parameter ``clock`` whose gradient is always -1: Adam moves it by
    ``learning_rate`` a step (its update is lr m^ / (sqrt(v^) + eps), m^ = g, v^ = g^2), so it
    counts the steps taken, and the log-density is NaN from step ``poison_from_step`` on."""
    ppl, xp = backend.ppl, backend.xp

    def clocked(x):
        clock = ppl.param("clock", backend.zeros(()))
        ppl.factor("tick", clock)
        late = clock > (poison_from_step - 1.5) * learning_rate
        ppl.factor("poison", xp.where(late, xp.nan, 0.0))
        model(x)

    return clocked


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro warns, then fit stops
def test_a_nan_stops_the_run_and_keeps_the_last_good_parameters(backend, tmp_path):
    """A NaN log-density in epoch 3 (step 11 of 5 an epoch) stops fit there, with one error
    class in both backends; the last good epoch's checkpoint is kept, and the parameters the
    caller holds (Pyro: restored into the param store; NumPyro: the error's .params) are
    those of the checkpoint, bit for bit (copies of the same arrays, in this process)."""
    x = prototypes(100, D)

    def attempt(checkpoint_dir):
        model, guide = backend.vae()
        model = _clocked(backend, model, poison_from_step=11, learning_rate=1e-3)
        with pytest.raises(ppl_vae.errors.TrainingDivergedError,
                           match=r"diverged in epoch 3, step 1 of 5") as info:
            backend.fit(model, guide, x, num_epochs=5, batch_size=20, learning_rate=1e-3,
                        checkpoint_dir=checkpoint_dir)
        return info.value

    error = attempt(tmp_path)
    assert (error.epoch, error.step) == (3, 1)
    _, meta = load_checkpoint(tmp_path / "last.npz", backend=backend.name)
    assert meta["epoch"] == 2 and len(meta["history"]) == 2  # epochs 1 and 2 completed
    good = backend.leaves(error.params)
    assert {k.split("$")[0] for k in error.params} == {"clock", "decoder", "encoder",
                                                       "pseudo_inputs"}
    assert all(np.isfinite(v).all() for v in good.values())
    _same(good, backend.checkpoint_params(tmp_path / "last.npz"))
    _same(backend.restored_params(error), good)
    # Without a checkpoint directory the error still carries the last good parameters.
    _close(backend.leaves(attempt(None).params), good, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------ the errors
def test_error_classes_are_one_object_in_both_backends():
    names = {"TrainingDivergedError", "DistributedError", "CheckpointError",
             "CheckpointMismatchError", "WarmupWarning"}
    for backend in filter(None, map(get, ("pyro", "numpyro"))):
        assert names <= set(backend.lib.__all__)
        for name in names:
            assert getattr(backend.lib, name) is getattr(ppl_vae.errors, name), name
    assert issubclass(ppl_vae.errors.CheckpointMismatchError, ppl_vae.errors.CheckpointError)


def test_a_program_that_raises_is_shown_first(backend):
    """What a program raises on the first rows is the cause of the ValueError, whose message
    says which program raised what on which data, and guesses at nothing."""
    model, guide = backend.vae()
    x = prototypes(20, D)

    def old_guide(x, beta):  # the shape fit took before warm-up was a handler
        return guide(x)

    with pytest.raises(ValueError) as info:
        backend.fit(model, old_guide, x, num_epochs=1)
    assert str(info.value).startswith("the guide raised TypeError: ")
    assert "missing 1 required positional argument: 'beta'" in str(info.value)
    assert str(info.value).endswith("(run on the first 2 rows of train_data, shape (20, 30), "
                                    "D = 30 values per example).")
    assert isinstance(info.value.__cause__, TypeError)
    raised, calls = KeyError("no such site"), []

    def broken_model(x):  # runs on train_data's rows, then raises on valid_data's
        calls.append(1)
        if len(calls) > 1:
            raise raised
        return model(x)

    with pytest.raises(ValueError, match=r"^the model raised KeyError: 'no such site' \(run on "
                       r"the first 2 rows of valid_data, shape \(5, 30\), D = 30 values per "
                       r"example\)\.$") as info:
        backend.fit(broken_model, guide, x, x[:5], num_epochs=1)
    assert info.value.__cause__ is raised


def test_bad_input_raises_clear_errors(backend):
    model, guide = backend.vae()
    train = prototypes(20, D)
    encoder = guide.keywords["encoder"]
    fit = partial(backend.fit, model, guide)
    with pytest.raises(ValueError, match=r"train_data must have shape \(N, D\).*\(30,\)"):
        fit(train[0])
    bad = train.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="train_data contains NaN"):
        fit(bad)
    bad[3, 4] = np.inf
    with pytest.raises(ValueError, match="valid_data contains NaN or infinite"):
        fit(train, bad)
    for kwargs, message in [
            ({"num_epochs": 0}, "num_epochs must be a positive int; got 0"),
            ({"batch_size": True}, "batch_size must be a positive int; got True"),
            ({"early_stopping": 0}, "early_stopping must be a positive int or None; got 0"),
            ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
            ({"resume": True}, "resume=True needs a checkpoint_dir")]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            fit(train, **kwargs)
    with pytest.raises(ValueError, match="num_pseudo must be a positive int; got 0"):
        backend.net("LearnedVampPrior", encoder, 0)
    with pytest.raises(ValueError, match="num_pseudo = 50 rows"):
        backend.net("vamp_data_prior", encoder, backend.array(train), 50)
    # Non-binary data under a Bernoulli likelihood: the support is named.
    with pytest.raises(ValueError, match="support"):
        fit(train * 0.5 + 0.2, num_epochs=1)
    # A prior whose event shape does not match the decoder's latent size.
    decoder = backend.net("Decoder", L, D, (8,), seed=5)
    wrong = partial(model.func, decoder=decoder, prior=backend.lib.StandardNormalPrior(L + 1))
    with pytest.raises(ValueError, match=r"prior must have batch_shape \(\) and event_shape "
                       r"\(3,\).*got batch_shape \(\) and event_shape \(4,\)"):
        backend.fit(wrong, guide, train, num_epochs=1)


# ----------------------------------------------------------- one backend's own properties
def test_numpyro_rng_keys_are_checked():
    backend = get("numpyro")
    if backend is None:
        pytest.skip("numpyro is not installed")
    model, guide = backend.vae()
    with pytest.raises(TypeError, match="rng_key must be a jax.random.PRNGKey; got int"):
        backend.lib.fit(0, model, guide, prototypes(20, D))
    with pytest.raises(TypeError, match="rng_key"):
        backend.lib.Encoder(D, L)


def test_numpyro_warm_up_compiles_the_epoch_once():
    """beta enters the jitted epoch as an array, so the epochs of a warm-up (beta 1/2, then
    1) run one compiled program: the model is traced by the checks, the initialisation and
    the epoch, and not again in epoch 2 (the callback sees the count after each epoch)."""
    backend = get("numpyro")
    if backend is None:
        pytest.skip("numpyro is not installed")
    seen = {"model": [], "guide": []}
    model, guide = _shifted(backend, seen)  # the program above: compiled once this session
    counts = []
    result, _, _ = _fit_shifted(backend, model, guide,
                                callbacks=lambda record: counts.append(len(seen["model"])))
    assert [h["beta"] for h in result.history] == [0.5, 1.0]
    assert counts[0] >= 1 and counts[1] == counts[0], counts
