"""VampPrior in both backends: the generic checks Pyro's ``tests/distributions`` and NumPyro's
``test/test_distributions.py`` run on every distribution, on a catalogue of VampPrior cases
(several K and L, batched parameters, expanded, ``to_event``, masked), with SciPy, closed forms
and float64 as the references; then the numerics of the matrix-product log-density, and each
backend's own machinery (plates and traces; jit, vmap, ``promote_batch_shape`` and ``scan``).
"""

import contextlib
import math
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

EPS32 = float(np.finfo(np.float32).eps)


# ---- the two backends behind one interface -------------------------------------------------
class PyroBackend:
    name = "pyro"

    def __init__(self):
        import pyro.distributions as dist
        import torch
        from pyro.distributions.testing.gof import auto_goodness_of_fit

        from ppl_vae.pyro import VampPrior, vamp_prior
        from ppl_vae.pyro._mixture_math import diag_normal_mixture_log_prob
        from ppl_vae.pyro.priors import DiagonalNormalMixture

        self.torch, self.dist = torch, dist
        self.VampPrior, self.vamp_prior = VampPrior, vamp_prior
        self.mixture_log_prob = diag_normal_mixture_log_prob
        self.DiagonalNormalMixture = DiagonalNormalMixture
        self.auto_goodness_of_fit = auto_goodness_of_fit

    def array(self, x, dtype=np.float64):
        return self.torch.as_tensor(np.asarray(x, dtype))

    def numpy(self, x):
        if self.torch.is_tensor(x):
            return x.detach().cpu().numpy().astype(np.float64)
        return np.array(x, np.float64)

    def x64(self):
        return contextlib.nullcontext()  # torch tensors carry their dtype

    def run(self, fn, *args):
        """``fn(*args, key)``: here directly, with torch's generator seeded."""
        self.torch.manual_seed(0)
        return fn(*args, None)

    def draw(self, d, sample_shape, key, i=0):
        """A sample inside :meth:`run` (the ``i``-th with that key)."""
        return d.sample(self.torch.Size(sample_shape))

    def sample(self, d, sample_shape=(), seed=0):
        self.torch.manual_seed(seed)
        return d.sample(self.torch.Size(sample_shape))

    def grads(self, fn, *args):
        """Gradients of ``fn(*args).sum()`` with respect to every argument."""
        args = [a.detach().clone().requires_grad_(True) for a in args]
        fn(*args).sum().backward()
        return [a.grad for a in args]

    def msf(self, loc, scale):
        """The same mixture as Pyro's own MixtureSameFamily (the reference)."""
        logits = self.torch.zeros(loc.shape[:-1], dtype=loc.dtype)
        return self.dist.MixtureSameFamily(self.dist.Categorical(logits=logits),
                                           self.dist.Normal(loc, scale).to_event(1))

    def in_support(self, d, x):
        return bool(d.support.check(x).all())

    def score_out_of_support(self, make, x, plain=True):
        with pytest.raises(ValueError, match="support"):  # validation raises
            make().log_prob(self.array(x))

    def validation(self, enabled):
        import pyro

        return pyro.validation_enabled(enabled)


class NumPyroBackend:
    name = "numpyro"

    def __init__(self):
        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from numpyro.distributions.gof import auto_goodness_of_fit

        from ppl_vae.numpyro import VampPrior, vamp_prior
        from ppl_vae.numpyro._mixture_math import diag_normal_mixture_log_prob
        from ppl_vae.numpyro.priors import DiagonalNormalMixture

        self.jax, self.jnp, self.numpyro, self.dist = jax, jnp, numpyro, dist
        self.VampPrior, self.vamp_prior = VampPrior, vamp_prior
        self.mixture_log_prob = diag_normal_mixture_log_prob
        self.DiagonalNormalMixture = DiagonalNormalMixture
        self.auto_goodness_of_fit = auto_goodness_of_fit

    def array(self, x, dtype=np.float64):
        # float64 needs jax_enable_x64: callers asking for it are inside x64().
        return self.jnp.asarray(np.asarray(x, dtype))

    def numpy(self, x):
        return np.array(x, np.float64)

    def x64(self):
        return self.jax.enable_x64(True)

    def key(self, seed=0):
        # XLA's RngBitGenerator: compiled in a tenth of the time of the default threefry,
        # which dominated these tests' running time.
        return self.jax.random.key(seed, impl="rbg")

    def run(self, fn, *args):
        """``fn(*args, key)`` as one jitted function: eager JAX compiles every primitive for
        every new shape (minutes over this catalogue); one compilation per check keeps it to
        seconds. The eager path is exercised by the NumPyro-only tests at the end."""
        return self.jax.jit(fn)(*args, self.key())

    def draw(self, d, sample_shape, key, i=0):
        return d.sample(self.jax.random.fold_in(key, i), tuple(sample_shape))

    def sample(self, d, sample_shape=(), seed=0):
        return self.jax.jit(lambda d, key: d.sample(key, tuple(sample_shape)))(d, self.key(seed))

    def grads(self, fn, *args):
        return self.jax.jit(self.jax.grad(lambda *a: fn(*a).sum(),
                                          argnums=tuple(range(len(args)))))(*args)

    def msf(self, loc, scale):
        logits = self.jnp.zeros(loc.shape[:-1], dtype=loc.dtype)
        return self.dist.MixtureSameFamily(self.dist.Categorical(logits=logits),
                                           self.dist.Normal(loc, scale).to_event(1))

    def in_support(self, d, x):
        return bool(d.support(x).all())

    def score_out_of_support(self, make, x, plain=True):
        if not plain:  # eagerly: under jit NumPyro checks only what it can
            with pytest.warns(UserWarning, match="Out-of-support"):
                make().log_prob(x)
        else:
            # As in NumPyro's suite: under jit, a distribution built there checks a NumPy
            # constant when traced (one passed in would have lost its default validate_args).
            with pytest.warns(UserWarning, match="Out-of-support"):
                self.jax.jit(lambda: make().log_prob(x))()

    def validation(self, enabled):
        return self.numpyro.validation_enabled(enabled)


_BACKENDS = {}  # one of each for the session


@pytest.fixture(params=["pyro", "numpyro"])
def backend(request):
    pytest.importorskip(request.param)
    if request.param == "numpyro":
        import numpyro

        numpyro.enable_validation(True)
    if request.param not in _BACKENDS:
        _BACKENDS[request.param] = (PyroBackend if request.param == "pyro" else NumPyroBackend)()
    return _BACKENDS[request.param]


def only(name):
    """Parametrise the ``backend`` fixture with one backend only."""
    return pytest.mark.parametrize("backend", [name], indirect=True)


def shape_of(x):
    return tuple(np.shape(x))


def vamp_log_prob(backend, loc, scale, z, dtype=np.float64):
    """``VampPrior(loc, scale).log_prob(z)`` in ``dtype`` (compiled once under NumPyro), as
    NumPy float64, and the dtype it was computed in."""
    with backend.x64() if dtype == np.float64 else contextlib.nullcontext():
        out = backend.run(lambda loc, scale, z, key: backend.VampPrior(loc, scale).log_prob(z),
                          *(backend.array(a, dtype) for a in (loc, scale, z)))
        return backend.numpy(out), str(out.dtype)


# ---- the catalogue --------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A VampPrior of K components in L dimensions with parameters of batch shape
    ``param_batch``, optionally expanded to ``expand``, masked along its batch (``mask``) and
    with its ``to_event`` rightmost batch dimensions made event dimensions."""

    num_components: int
    latent_dim: int
    param_batch: tuple = ()
    expand: tuple = None
    mask: tuple = None
    to_event: int = 0
    seed: int = 0

    def __str__(self):
        s = f"K{self.num_components}-L{self.latent_dim}"
        s += f"-params{self.param_batch}" if self.param_batch else ""
        s += f"-expand{self.expand}" if self.expand is not None else ""
        s += "-masked" if self.mask is not None else ""
        return s + (f"-to_event{self.to_event}" if self.to_event else "")

    @property
    def plain(self):
        """A bare VampPrior (no expand, mask or to_event)."""
        return self.expand is None and self.mask is None and not self.to_event

    @property
    def base_batch(self):  # before to_event
        return self.param_batch if self.expand is None else self.expand

    @property
    def batch_shape(self):
        return self.base_batch[: len(self.base_batch) - self.to_event]

    @property
    def event_shape(self):
        return self.base_batch[len(self.base_batch) - self.to_event:] + (self.latent_dim,)

    def params(self):
        """``(loc, scale)``, float64 NumPy, shape ``param_batch + (K, L)``."""
        rng = np.random.default_rng(self.seed)
        shape = self.param_batch + (self.num_components, self.latent_dim)
        return 2 * (2 * rng.random(shape) - 1), 0.3 + 0.7 * rng.random(shape)

    def build(self, backend, dtype=np.float64, loc=None, scale=None):
        default_loc, default_scale = self.params()
        loc = backend.array(default_loc, dtype) if loc is None else loc
        scale = backend.array(default_scale, dtype) if scale is None else scale
        d = backend.VampPrior(loc, scale)
        if self.expand is not None:
            d = d.expand(self.expand)
        if self.mask is not None:
            d = d.mask(backend.array(self.mask, np.bool_))
        return d.to_event(self.to_event) if self.to_event else d

    def reference_log_prob(self, value):
        """SciPy: ``value`` (``sample_shape + batch_shape + event_shape``) -> log-density."""
        loc, scale = self.params()
        batch = self.base_batch
        loc = np.broadcast_to(loc, batch + loc.shape[-2:])
        scale = np.broadcast_to(scale, batch + scale.shape[-2:])
        comp = stats.norm.logpdf(np.asarray(value, np.float64)[..., None, :], loc, scale).sum(-1)
        log_p = logsumexp(comp, -1) - math.log(self.num_components)
        if self.mask is not None:
            log_p = np.where(self.mask, log_p, 0.0)
        return log_p.sum(tuple(range(-self.to_event, 0))) if self.to_event else log_p


CASES = [
    Case(1, 1),
    Case(3, 2),
    Case(50, 5, expand=(4,), seed=2),
    Case(4, 3, expand=(2, 3), mask=((True, False, True), (True, True, False)), to_event=1,
         seed=3),
    Case(3, 2, param_batch=(3,), seed=4),
    Case(3, 2, param_batch=(2, 1), expand=(2, 4), seed=5),
]
PLAIN = [c for c in CASES if c.plain]


@pytest.fixture(params=CASES, ids=str)
def case(request):
    return request.param


@pytest.fixture(params=PLAIN, ids=str)
def plain_case(request):
    return request.param


SAMPLE_SHAPES = [(), (2,), (2, 3)]  # the suites' prepend / sample shapes
NUM_DRAWS = 20_000  # for moments and goodness of fit
CHAINS = [[(2, 1), (2, 3)], [(2, 1, 1), (2, 1, 3), (2, 5, 3)]]  # Pyro's subsequent expands

_RESULTS = {}  # (backend, case, what) -> NumPy results, computed once for all tests below


def _as_numpy(backend, tree):
    if isinstance(tree, (list, tuple)):
        return type(tree)(_as_numpy(backend, t) for t in tree)
    if isinstance(tree, dict):
        return {k: _as_numpy(backend, v) for k, v in tree.items()}
    return None if tree is None else backend.numpy(tree)


def draws(backend, case):
    """Samples of each of ``SAMPLE_SHAPES`` and their densities, ``NUM_DRAWS`` more, the
    moments, and the density at one value without batch dimensions, in float64: one compiled
    function per case for every check that reads them."""
    key = (backend.name, case, "draws")
    if key not in _RESULTS:
        z = np.linspace(-1, 1, case.latent_dim)

        def compute(d, z, key):
            xs = [backend.draw(d, s, key, i) for i, s in enumerate(SAMPLE_SHAPES)]
            many = backend.draw(d, (NUM_DRAWS,), key, len(xs))
            return {"x": xs, "log_p": [d.log_prob(x) for x in xs], "mean": d.mean,
                    "variance": d.variance, "many": many, "log_p_many": d.log_prob(many),
                    "log_p_z": None if case.to_event else d.log_prob(z)}

        with backend.x64():
            out = backend.run(compute, case.build(backend), backend.array(z))
            _RESULTS[key] = dict(_as_numpy(backend, out), z=z)
    return _RESULTS[key]


def _sub_sample(y, batch_shape, sub_batch_shape):
    """From a sample ``y`` of a batch ``batch_shape``, one of the broadcast-compatible batch
    ``sub_batch_shape`` (which ``batch_shape`` expands): the first element along each
    dimension that the expansion added or grew."""
    lead = len(batch_shape) - len(sub_batch_shape)
    index = [0] * lead + [slice(0, 1) if n == 1 else slice(None) for n in sub_batch_shape]
    return y[tuple(index)]


def expansions(backend, case):
    """Pyro's check_sample_shapes for every (small, large) pair of the expand checks below
    (``expand_by`` each sample shape; each step of each chain of ``CHAINS``): the two
    densities on a sample of small and on one of large, in one compiled function per case.
    Each group's samples are cut from one sample of its largest distribution."""
    key = (backend.name, case, "expansions")
    if key not in _RESULTS:
        with backend.x64():
            small = case.build(backend)
            groups = [[(small, small.expand_by(s))] for s in SAMPLE_SHAPES[1:]]
            for chain in CHAINS:
                d, group = small, []
                for shape in chain:
                    group.append((d, d.expand(shape + case.batch_shape)))
                    d = group[-1][1]
                groups.append(group)

            def compute(groups, key):
                out = []
                for g, group in enumerate(groups):
                    top = group[-1][1]
                    y_top = backend.draw(top, (), key, g)
                    for small, large in group:
                        x, y = (_sub_sample(y_top, tuple(top.batch_shape), tuple(e.batch_shape))
                                for e in (small, large))
                        out.append((small.log_prob(x), large.log_prob(x), small.log_prob(y),
                                    large.log_prob(y)))
                return out

            results = _as_numpy(backend, backend.run(compute, groups))
            larges = [tuple(large.batch_shape) for group in groups for _, large in group]
            _RESULTS[key] = list(zip(larges, results))
    return _RESULTS[key]


def check_sample_shapes(results):
    """Pyro's check_sample_shapes: small's and large's densities agree, on small's sample
    (broadcast to large's batch) and on large's."""
    for large_batch_shape, (small_x, large_x, small_y, large_y) in results:
        np.testing.assert_allclose(large_x, np.broadcast_to(small_x, large_batch_shape),
                                   rtol=1e-12)
        np.testing.assert_allclose(small_y, large_y, rtol=1e-12)


# ---- generic checks: shapes -------------------------------------------------------------------
def test_shapes(backend, case):
    with backend.x64():
        d = case.build(backend)
    assert tuple(d.batch_shape) == case.batch_shape
    assert tuple(d.event_shape) == case.event_shape
    out = draws(backend, case)
    for s, x, log_p in zip(SAMPLE_SHAPES, out["x"], out["log_p"]):
        assert x.shape == s + case.batch_shape + case.event_shape
        assert log_p.shape == s + case.batch_shape
    assert out["mean"].shape == out["variance"].shape == case.batch_shape + case.event_shape


def test_infer_shapes(backend, plain_case):
    loc, scale = plain_case.params()
    batch_shape, event_shape = backend.VampPrior.infer_shapes(loc.shape, scale.shape)
    assert tuple(batch_shape) == plain_case.batch_shape
    assert tuple(event_shape) == plain_case.event_shape
    named = backend.VampPrior.infer_shapes(component_loc=loc.shape, component_scale=scale.shape)
    assert tuple(map(tuple, named)) == (tuple(batch_shape), tuple(event_shape))
    with pytest.raises(ValueError, match=r"broadcastable batch shapes"):
        backend.VampPrior.infer_shapes((2, 3, 4), (3, 3, 4))


def test_independent_shapes(backend, case):
    # NumPyro's test_independent_shape: every split of the batch into batch and event dims.
    x = draws(backend, case)["x"][0]
    with backend.x64():
        d = case.build(backend)
        shape = case.batch_shape + case.event_shape
        splits = range(len(case.batch_shape) + 1)
        indeps = [d.to_event(i) if i else d for i in splits]
        for i, indep in zip(splits, indeps):
            cut = len(case.batch_shape) - i
            assert tuple(indep.batch_shape) == shape[:cut]
            assert tuple(indep.event_shape) == shape[cut:]
        log_ps = backend.run(lambda ds, x, key: [e.log_prob(x) for e in ds], indeps,
                             backend.array(x))
    for i, log_p in zip(splits, log_ps):
        assert shape_of(log_p) == shape[:len(case.batch_shape) - i]


# ---- generic checks: density ----------------------------------------------------------------
def test_log_prob_matches_scipy(backend, case):
    out = draws(backend, case)
    for x, log_p in zip(out["x"], out["log_p"]):
        np.testing.assert_allclose(log_p, case.reference_log_prob(x), rtol=1e-10, atol=1e-10)
    if not case.to_event:  # a value without the batch dimensions broadcasts against them
        z = np.broadcast_to(out["z"], case.batch_shape + case.event_shape)
        assert out["log_p_z"].shape == case.batch_shape
        np.testing.assert_allclose(out["log_p_z"], case.reference_log_prob(z), rtol=1e-10,
                                   atol=1e-10)


def test_log_prob_matches_scipy_float32(backend, case):
    d = case.build(backend, np.float32)
    shape = (50,) + case.batch_shape + case.event_shape
    x = 2 * np.random.default_rng(1).standard_normal(shape)
    actual = backend.run(lambda d, x, key: d.log_prob(x), d, backend.array(x, np.float32))
    # Terms of the expansion are at most ~ (|z| + |m|)^2 / s^2 ~ 10^2 (|z|, |m| ~ 2, s >= 0.3);
    # a few float32 roundings of that size.
    expected = case.reference_log_prob(x.astype(np.float32))
    np.testing.assert_allclose(backend.numpy(actual), expected, rtol=0, atol=100 * 16 * EPS32)


def test_mixture_same_family_agrees(backend, plain_case):
    # Each backend's own MixtureSameFamily, the reference both suites use for mixtures.
    out = draws(backend, plain_case)
    with backend.x64():
        ref = backend.msf(*(backend.array(a) for a in plain_case.params()))
        theirs = backend.run(lambda ref, x, key: ref.log_prob(x), ref, backend.array(out["x"][1]))
    np.testing.assert_allclose(out["log_p"][1], backend.numpy(theirs), rtol=1e-10, atol=1e-10)


def test_support_and_out_of_support_values(backend, case):
    x = draws(backend, case)["x"][1].copy()
    with backend.x64():
        assert backend.in_support(case.build(backend), backend.array(x))
        x[..., 0] = np.nan
        backend.score_out_of_support(lambda: case.build(backend), x, plain=case.plain)


def test_score_errors_on_wrong_shapes(backend, plain_case):
    # Pyro's test_score_errors_event_dim_mismatch / _non_broadcastable_data_shape.
    with backend.x64():
        d = plain_case.build(backend)
        shape = plain_case.batch_shape + plain_case.event_shape
        with pytest.raises((ValueError, RuntimeError)):  # an extra dimension, not of size L
            d.log_prob(backend.array(np.ones(shape + (plain_case.latent_dim + 1,))))
        with pytest.raises((ValueError, RuntimeError, TypeError)):
            d.log_prob(backend.array(np.ones((shape[0] + 1,) + shape[1:])))


def test_integrates_to_one_in_2d(backend):
    loc, scale = Case(5, 2).params()
    h = 0.02
    grid = np.arange(-8, 8, h) + h / 2
    zz = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    log_p, _ = vamp_log_prob(backend, loc, scale, zz)
    mass = float(np.exp(log_p).sum() * h * h)
    # Midpoint rule on Gaussians of scale >= 0.3 is accurate far beyond 1e-6 here; the tails
    # beyond +-8 hold < 1e-15.
    assert abs(mass - 1) < 1e-6


def test_log_prob_matches_scipy_multivariate_normal(backend):
    """The density as the mean of K scipy multivariate normal densities (float64)."""
    loc, scale = Case(7, 3).params()
    z = 2 * np.random.default_rng(1).standard_normal((50, 3))
    comps = [stats.multivariate_normal(m, np.diag(s**2)).logpdf(z) for m, s in zip(loc, scale)]
    expected = logsumexp(np.stack(comps, -1), axis=-1) - math.log(len(comps))
    actual, dtype = vamp_log_prob(backend, loc, scale, z)
    assert dtype.endswith("float64")
    np.testing.assert_allclose(actual, expected, rtol=1e-10)


# ---- generic checks: sampling ---------------------------------------------------------------
def test_mean_variance_closed_form_and_samples(backend, case):
    loc, scale = case.params()
    out = draws(backend, case)
    # Exact moments of a uniform mixture (law of total variance), per batch element.
    shape, full = case.batch_shape + case.event_shape, case.base_batch + (case.latent_dim,)
    mean = np.broadcast_to(loc.mean(-2), full).reshape(shape)
    var = np.broadcast_to((scale**2 + loc**2).mean(-2) - loc.mean(-2) ** 2, full).reshape(shape)
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(out["variance"], var, rtol=1e-12)
    # Mean: standard error sqrt(var / n). Variance: standard error sqrt(Var[(x-mu)^2] / n).
    x, n = out["many"], NUM_DRAWS
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
    centred_sq = (x - mean) ** 2
    assert np.all(np.abs(centred_sq.mean(0) - var) < 5 * np.sqrt(centred_sq.var(0) / n))


def test_sample_moments_match_mean_and_variance(backend):
    loc, scale = Case(4, 3).params()
    p = backend.VampPrior(backend.array(loc, np.float32), backend.array(scale, np.float32))
    n = 200_000
    x = backend.numpy(backend.sample(p, (n,)))
    assert x.shape == (n, 3)
    mean, var = backend.numpy(p.mean), backend.numpy(p.variance)
    # Exact moments of the mixture (law of total variance), independently of the class.
    np.testing.assert_allclose(mean, loc.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, (scale**2 + loc**2).mean(0) - loc.mean(0) ** 2, rtol=1e-5)
    # Mean: standard error sqrt(var / n). Variance: standard error sqrt(Var[(x-mu)^2] / n).
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
    centred_sq = (x - mean) ** 2
    assert np.all(np.abs(centred_sq.mean(0) - var) < 5 * np.sqrt(centred_sq.var(0) / n))


def test_goodness_of_fit(backend, plain_case):
    # Both suites' test_gof: samples against the density the distribution reports, per batch
    # element, with each project's own goodness-of-fit test and failure rate.
    out, n = draws(backend, plain_case), 10_000  # NumPyro's count (its test is sized for it)
    probs = np.exp(out["log_p_many"][:n]).reshape(n, -1)
    samples = out["many"][:n].reshape(probs.shape + plain_case.event_shape)
    for b in range(probs.shape[1]):
        if backend.name == "pyro":
            gof = backend.auto_goodness_of_fit(backend.array(samples[:, b]),
                                               backend.array(probs[:, b]))
        else:
            gof = backend.auto_goodness_of_fit(samples[:, b], probs[:, b])
        assert gof > 2e-5


def test_has_rsample_and_refuses_rsample(backend, plain_case):
    d = plain_case.build(backend, np.float32)
    assert not d.has_rsample
    assert d.mask(False).has_rsample == d.expand_by([2]).to_event(1).has_rsample == d.has_rsample
    with pytest.raises(NotImplementedError):
        d.rsample() if backend.name == "pyro" else d.rsample(backend.key())


# ---- generic checks: expand -----------------------------------------------------------------
def test_expand_by_and_new_dims(backend, case):
    with backend.x64():
        small = case.build(backend)
        for sample_shape in SAMPLE_SHAPES:
            for large in (small.expand_by(sample_shape),
                          small.expand(sample_shape + case.batch_shape)):
                assert tuple(large.batch_shape) == sample_shape + case.batch_shape
                if case.plain:  # a KL registered for VampPrior is still found
                    assert type(large) is backend.VampPrior
    check_sample_shapes(expansions(backend, case)[: len(SAMPLE_SHAPES) - 1])


def test_expand_existing_dims_of_size_one(backend):
    # Parameters with a batch dimension of size 1, expanded along it...
    case = Case(3, 2, param_batch=(2, 1), expand=(2, 4), seed=5)
    assert case in CASES
    with backend.x64():
        d = backend.VampPrior(*(backend.array(a) for a in case.params()))
        assert tuple(d.batch_shape) == (2, 1)
        assert tuple(d.expand((2, 5)).batch_shape) == (2, 5)
    # ...and the existing size-1 dimension of the first chain's first step, (2, 1), grown to 3.
    first_chain = expansions(backend, case)[len(SAMPLE_SHAPES) - 1:][:len(CHAINS[0])]
    assert [r[0] for r in first_chain] == [(2, 1) + case.batch_shape, (2, 3) + case.batch_shape]
    check_sample_shapes(first_chain)


@pytest.mark.parametrize("chain", range(len(CHAINS)), ids=lambda i: str(CHAINS[i]))
def test_subsequent_expands(backend, case, chain):
    with backend.x64():
        d = case.build(backend)
        for shape in CHAINS[chain]:
            d = d.expand(shape + case.batch_shape)
            assert tuple(d.batch_shape) == shape + case.batch_shape
    start = len(SAMPLE_SHAPES) - 1 + sum(len(c) for c in CHAINS[:chain])
    results = expansions(backend, case)[start:start + len(CHAINS[chain])]
    assert [r[0] for r in results] == [s + case.batch_shape for s in CHAINS[chain]]
    check_sample_shapes(results)


@pytest.mark.parametrize("initial, proposed", [[(2, 1), (4, 3)], [(2, 4), (2, 2, 1)],
                                               [(1, 2, 1), (2, 1)]], ids=str)
def test_expand_refuses_incompatible_shapes(backend, case, initial, proposed):
    d = case.build(backend, np.float32).expand(initial + case.batch_shape)
    with pytest.raises((ValueError, RuntimeError)):
        d.expand(proposed + case.batch_shape)


def test_expand_sample_and_log_prob_shapes(backend, case):
    # NumPyro's test_expand, its error message included.
    d = case.build(backend, np.float32)
    combos = [(p, s) for p in [(), (2, 3)] for s in [(), (4,)]]
    expanded = [d.expand(p + case.batch_shape) for p, _ in combos]

    def compute(ds, key):
        samples = [backend.draw(e, s, key, i) for i, (e, (_, s)) in enumerate(zip(ds, combos))]
        return samples, [e.log_prob(x) for e, x in zip(ds, samples)]

    samples, log_ps = backend.run(compute, expanded)
    for (prepend, sample_shape), e, x, log_p in zip(combos, expanded, samples, log_ps):
        new_batch_shape = prepend + case.batch_shape
        assert tuple(e.batch_shape) == new_batch_shape
        assert shape_of(x) == sample_shape + new_batch_shape + case.event_shape
        assert shape_of(log_p) == sample_shape + new_batch_shape
        assert tuple(e.expand((3,) + new_batch_shape).batch_shape) == (3,) + new_batch_shape
        if prepend and case.plain:
            with pytest.raises(ValueError, match="Cannot broadcast distribution of shape"):
                e.expand((3,) + case.batch_shape)


def test_expand_and_masked_log_prob(backend):
    # NumPyro's test_mask: masked entries score exactly 0, the others do not.
    mask = np.array([[True, False, True], [False, False, True]])
    z = np.random.default_rng(0).standard_normal((2, 3, 2))
    with backend.x64():
        d = Case(3, 2).build(backend).expand((2, 3)).mask(backend.array(mask, np.bool_))
        log_p = backend.run(lambda d, z, key: d.log_prob(z), d, backend.array(z))
    np.testing.assert_array_equal(backend.numpy(log_p) != 0, mask)


# ---- generic checks: gradients, validation, pickling -----------------------------------------
def test_log_prob_gradients_match_finite_differences(backend, case):
    """Gradients of the summed log-density with respect to loc, scale and the value against
    central differences along a random direction (float64: the difference errs by about
    h^2 |f'''| + eps |f| / h, below 1e-6 relative here)."""
    rng = np.random.default_rng(case.seed)
    loc, scale = case.params()
    args = [loc, scale, draws(backend, case)["x"][1]]
    directions = [rng.standard_normal(np.shape(a)) for a in args]
    h = 1e-5

    def f(loc, scale, value):
        return case.build(backend, loc=loc, scale=scale).log_prob(value)

    def grads_and_differences(loc, scale, value, *directions_and_key):
        arrays, directions = (loc, scale, value), directions_and_key[:-1]
        out = []
        for i, v in enumerate(directions):
            plus = [a + h * v if j == i else a for j, a in enumerate(arrays)]
            minus = [a - h * v if j == i else a for j, a in enumerate(arrays)]
            out.append((f(*plus).sum() - f(*minus).sum()) / (2 * h))
        return out

    with backend.x64():
        grads = backend.grads(f, *(backend.array(a) for a in args))
        expected = backend.run(grads_and_differences,
                               *(backend.array(a) for a in args + directions))
    for grad, v, e in zip(grads, directions, expected):
        actual = float((backend.numpy(grad) * v).sum())
        assert actual == pytest.approx(float(e), rel=1e-6, abs=1e-8)


def test_validate_args(backend, plain_case):
    loc, scale = plain_case.params()
    with backend.x64():
        for bad_loc, bad_scale in [(np.full_like(loc, np.nan), scale), (loc, -scale)]:
            with backend.validation(False):
                backend.VampPrior(backend.array(bad_loc), backend.array(bad_scale))
            with pytest.raises(ValueError, match="component_"):
                backend.VampPrior(backend.array(bad_loc), backend.array(bad_scale),
                                  validate_args=True)


def test_validation_rejects_non_positive_scale(backend):
    with pytest.raises(ValueError, match="component_scale"):
        backend.VampPrior(backend.array(np.zeros((3, 2)), np.float32),
                          -backend.array(np.ones((3, 2)), np.float32), validate_args=True)


def test_pickle_round_trip(backend, case):
    out = draws(backend, case)
    with backend.x64():
        d = case.build(backend)
        e = pickle.loads(pickle.dumps(d))
        assert type(e) is type(d) and tuple(e.batch_shape) == tuple(d.batch_shape)
        log_p = backend.run(lambda e, x, key: e.log_prob(x), e, backend.array(out["x"][1]))
    np.testing.assert_allclose(backend.numpy(log_p), out["log_p"][1], rtol=1e-12)


# ---- numerics of the matrix-product form ------------------------------------------------------
def _direct_log_prob(z, loc, scale):
    """The direct (N, K, L) form in float64 NumPy."""
    z, loc, scale = (np.asarray(a, np.float64) for a in (z, loc, scale))
    comp = (-0.5 * (((z[:, None, :] - loc) / scale) ** 2) - np.log(scale)
            - 0.5 * math.log(2 * math.pi)).sum(-1)
    return logsumexp(comp, axis=-1) - math.log(len(loc))


def _closed_form_grads(z, loc, scale):
    """Float64 gradients of sum_n log p(z_n) with respect to z, loc and scale: the
    responsibilities r_nk weight p_k (m_k - z_n) and its counterparts."""
    z, loc, scale = (np.asarray(a, np.float64) for a in (z, loc, scale))
    u = (z[:, None, :] - loc) / scale  # (N, K, L)
    comp = (-0.5 * u**2 - np.log(scale)).sum(-1)
    r = np.exp(comp - logsumexp(comp, -1, keepdims=True))[..., None]  # (N, K, 1)
    grad_z = -(r * u / scale).sum(1)
    grad_loc = (r * u / scale).sum(0)
    grad_scale = (r * (u**2 - 1) / scale).sum(0)
    return grad_z, grad_loc, grad_scale


def test_gradients_near_a_centre_match_float64(backend):
    """float32 gradients at 1e-3 component scales from a centre, at the VAE's shapes (K = 500,
    L = 40, scales down to the encoder's 0.05): at most 1e-3 relative error (norm-wise, per
    point for z) against float64 at the same inputs. The expanded square alone cancels there
    (up to 100% wrong); the dominant component's direct form is accurate to a few roundings."""
    rng = np.random.default_rng(0)
    K, L, N = 500, 40, 200
    loc = rng.standard_normal((K, L)).astype(np.float32)
    scale = np.exp(-3 * rng.random((K, L))).astype(np.float32)
    k = rng.integers(K, size=N)
    u = rng.standard_normal((N, L))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    z = (loc[k] + 1e-3 * scale[k] * u).astype(np.float32)
    expected = _closed_form_grads(z, loc, scale)
    actual = backend.grads(lambda z, loc, scale: backend.VampPrior(loc, scale).log_prob(z),
                           *(backend.array(a, np.float32) for a in (z, loc, scale)))
    actual = [backend.numpy(a) for a in actual]
    rel_z = np.linalg.norm(actual[0] - expected[0], axis=-1) / np.linalg.norm(expected[0], axis=-1)
    assert rel_z.max() <= 1e-3
    for a, e in zip(actual[1:], expected[1:]):
        assert np.linalg.norm(a - e) <= 1e-3 * np.linalg.norm(e)


def test_stable_far_from_every_component_and_large_k(backend):
    loc, scale = Case(3000, 10).params()
    z = np.array([[1e3] * 10, [-5e2] * 10])
    lp, _ = vamp_log_prob(backend, loc, scale, z)
    assert np.all(np.isfinite(lp))
    np.testing.assert_allclose(lp, _direct_log_prob(z, loc, scale), rtol=1e-9)
    # float32: far values stay finite and close to the float64 answer.
    lp32, _ = vamp_log_prob(backend, loc, scale, z, np.float32)
    np.testing.assert_allclose(lp32, lp, rtol=1e-4)


def test_stable_far_from_small_components_with_finite_gradients(backend):
    rng = np.random.default_rng(0)
    loc = 2 * (2 * rng.random((10, 4)) - 1)
    scale = 0.05 + 0.15 * rng.random((10, 4))
    z = np.full((3, 4), 1e3) * np.array([[1.0], [-1.0], [0.5]])
    actual, _ = vamp_log_prob(backend, loc, scale, z, np.float32)
    expected = _direct_log_prob(z, loc.astype(np.float32), scale.astype(np.float32))
    assert np.all(np.isfinite(actual)) and np.all(expected < -1e6)
    np.testing.assert_allclose(actual, expected, rtol=1e-5)
    # The gradient stays finite too (logsumexp, not log(sum(exp))).
    p = backend.VampPrior(backend.array(loc, np.float32), backend.array(scale, np.float32))
    (grad,) = backend.grads(p.log_prob, backend.array(z, np.float32))
    assert np.all(np.isfinite(backend.numpy(grad)))


def test_stable_with_many_components(backend):
    loc, scale = Case(3000, 8, seed=3).params()
    z = np.random.default_rng(4).standard_normal((64, 8)) * 3
    actual, _ = vamp_log_prob(backend, loc, scale, z, np.float32)
    expected = _direct_log_prob(z.astype(np.float32), loc.astype(np.float32),
                                scale.astype(np.float32))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-3)


def _near_components(K, L, seed, loc_scale, scale_range):
    rng = np.random.default_rng(seed)
    loc = loc_scale * (2 * rng.random((K, L)) - 1)
    lo, hi = scale_range
    return loc, lo + (hi - lo) * rng.random((K, L))


def test_matmul_form_float32_under_cancellation_agrees_with_direct_form(backend):
    """z at (and 0.01 from) a component's mean with the smallest scale the encoder allows
    (logvar = -6): the expanded quadratic cancels; the error must stay within its float32
    bound."""
    L, K = 40, 500
    loc64, scale64 = _near_components(K, L, 1, 3.0, (0.0498, 0.2))
    rng = np.random.default_rng(2)
    z64 = np.concatenate([loc64[:20], loc64[:20] + 0.01 * rng.standard_normal((20, L))])
    loc, scale, z = (a.astype(np.float32) for a in (loc64, scale64, z64))
    direct = _direct_log_prob(z, loc, scale) + math.log(K)  # float64 at float32 inputs
    fast = backend.numpy(backend.run(lambda *a: backend.mixture_log_prob(*a[:3]),
                                     *(backend.array(a, np.float32) for a in (z, loc, scale))))
    # Bound: a float32 dot product of 2L terms errs by at most ~2L * eps * sum|terms|; the
    # log-density carries half of the quadratic form's error.
    c = loc.astype(np.float64).mean(0)
    zc, mc = (z - c)[:, None], (loc - c)[None]
    prec = scale.astype(np.float64) ** -2
    terms = (zc**2 * prec + 2 * np.abs(zc * mc * prec) + mc**2 * prec).sum(-1)  # (N, K)
    own = terms[np.arange(len(z)), np.arange(len(z)) % 20]  # own component
    bound = 0.5 * 2 * L * EPS32 * own + 1e-4
    assert np.all(np.abs(fast - direct) <= bound)
    assert np.max(np.abs(fast - direct)) < 0.02  # nats: small beside any reported figure


def test_matmul_form_agrees_with_direct_form_at_the_peak(backend):
    """z exactly at a component with the smallest scale the encoder allows (exp(-3) ~ 0.05),
    far from the origin: the expansion's terms are large and cancel to 0."""
    L = 40
    loc, scale = _near_components(50, L, 5, 3.0, (0.0498, 0.06))
    loc32, scale32 = loc.astype(np.float32), scale.astype(np.float32)
    z = loc32[:5]  # at components 0..4
    actual = backend.numpy(backend.run(lambda *a: backend.mixture_log_prob(*a[:3]),
                                       *(backend.array(a, np.float32) for a in (z, loc32, scale32))))
    expected = _direct_log_prob(z, loc32, scale32) + math.log(len(loc))
    # Bound: each float32 rounding of the 2L-term dot product and of the bias errs by at most
    # (2L + 2) eps times the sum of the magnitudes of the terms, here computed per point for
    # the component it sits on (the one that dominates the logsumexp), after centring.
    c = loc32.mean(0)
    zc, mc = (z - c).astype(np.float64), (loc32[:5] - c).astype(np.float64)
    prec = 1.0 / scale32[:5].astype(np.float64) ** 2
    magnitude = 0.5 * (prec * (zc**2 + 2 * np.abs(zc * mc) + mc**2)).sum(-1)
    bound = (2 * L + 2) * EPS32 * (magnitude + np.abs(expected))
    assert np.all(np.abs(actual - expected) <= bound), (actual - expected, bound)
    # And one-sided at the peak: never above the exact maximum density.
    log_peak = -np.log(scale32[:5].astype(np.float64)).sum(-1) - 0.5 * L * math.log(2 * math.pi)
    assert np.all(actual <= log_peak + (2 * L + 2) * EPS32 * np.abs(log_peak))


@pytest.mark.parametrize("param_batch, value_shape", [
    ((3,), (3,)), ((3,), (4, 3)), ((3, 1), (2, 3, 5)), ((1, 4), (3, 1)), ((2, 1, 3), (3,)),
    ((1, 1), (7,)),
], ids=str)
def test_batched_components_broadcast_like_parameters(backend, param_batch, value_shape):
    """Components with batch dimensions: one mixture per batch element, broadcast against the
    points as a distribution's parameters are (sizes 1 on either side)."""
    loc, scale = Case(4, 2, param_batch=param_batch, seed=7).params()
    z = np.random.default_rng(8).standard_normal(value_shape + (2,))
    with backend.x64():
        actual = backend.numpy(backend.run(lambda z, loc, scale, key: backend.mixture_log_prob(
            z, loc, scale), *(backend.array(a) for a in (z, loc, scale))))
    comp = stats.norm.logpdf(z[..., None, :], loc, scale).sum(-1)
    expected = logsumexp(comp, -1)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


# ---- factory, errors, the mixture-of-Gaussians prior --------------------------------------------
def test_factory_builds_from_encoder_and_pseudo_inputs(backend):
    w = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    u = np.random.default_rng(1).random((4, 3)).astype(np.float32)

    def encoder(u):
        return u @ backend.array(w, np.float32), 0.5 * (u[:, :2] * 0 + 1)

    p = backend.vamp_prior(encoder, backend.array(u, np.float32))
    assert isinstance(p, backend.VampPrior) and p.num_components == 4
    assert tuple(p.event_shape) == (2,)
    np.testing.assert_allclose(backend.numpy(p.component_loc), u @ w, rtol=1e-6)
    with pytest.raises(ValueError, match=r"pseudo_inputs.*\(K, D\).*\(7,\)"):
        backend.vamp_prior(encoder, backend.array(np.zeros(7), np.float32))


def test_bad_shapes_and_parameters_raise_clear_errors(backend):
    def vp(loc, scale):
        return backend.VampPrior(backend.array(loc, np.float32), backend.array(scale, np.float32))

    with pytest.raises(ValueError, match=r"component_loc \(3, 2\) and component_scale \(3, 4\)"):
        vp(np.zeros((3, 2)), np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"shape \(K, L\).*\(6,\).*\(6,\)"):
        vp(np.zeros(6), np.ones(6))
    with pytest.raises(ValueError, match="K >= 1.*K = 0"):
        vp(np.zeros((0, 2)), np.ones((0, 2)))
    with pytest.raises(TypeError, match="list"):
        backend.VampPrior([[0.0, 0.0]], backend.array(np.ones((1, 2)), np.float32))
    # the value's shape and the event shape, both named (NumPyro's message, then torch's)
    shapes = r"\(2,\).*\(4, 5\)" if backend.name == "numpyro" else r"\[4, 5\].*\[2\]"
    with pytest.raises(ValueError, match=shapes):
        vp(np.zeros((3, 2)), np.ones((3, 2))).log_prob(backend.array(np.zeros((4, 5)), np.float32))


def test_mixture_of_gaussians_prior_log_prob_matches_mixture_same_family(backend):
    """The MoG prior's matmul log-density equals the backend's MixtureSameFamily, expanded too
    (float64: to rounding)."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(6)
    loc, scale = Case(6, 3, seed=3).params()
    z = 2 * rng.standard_normal((5, 4, 3))
    with backend.x64():
        logits_, loc_, scale_, z_ = (backend.array(a) for a in (logits, loc, scale, z))
        ours = backend.DiagonalNormalMixture(logits_, loc_, scale_)
        ref = backend.dist.MixtureSameFamily(backend.dist.Categorical(logits=logits_),
                                             backend.dist.Normal(loc_, scale_).to_event(1))
        expanded = ours.expand([4])
        if backend.name == "pyro":  # a KL registered for the class is still found
            assert type(expanded) is backend.DiagonalNormalMixture
        assert tuple(expanded.batch_shape) == (4,)
        # (NumPyro: under jit, the mixture being a pytree)
        densities = backend.run(lambda ds, z, key: [d.log_prob(z) for d in ds],
                                [ours, ref, expanded, ref.expand([4])], z_)
    ours_z, ref_z, expanded_z, ref_expanded_z = (backend.numpy(a) for a in densities)
    np.testing.assert_allclose(ours_z, ref_z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(expanded_z, ref_expanded_z, rtol=1e-12, atol=1e-12)


# ---- Pyro: plates and traces ----------------------------------------------------------------
@only("pyro")
def test_expand_and_plates_behave_like_pyro_distributions(backend):
    import pyro
    import torch

    loc, scale = Case(6, 4).params()
    p = backend.VampPrior(backend.array(loc, np.float32), backend.array(scale, np.float32))
    assert p.batch_shape == () and p.event_shape == (4,)
    e = p.expand([3, 2])
    assert type(e) is backend.VampPrior and e.batch_shape == (3, 2)
    assert e.sample().shape == (3, 2, 4) and e.sample((5,)).shape == (5, 3, 2, 4)
    assert e.log_prob(torch.zeros(3, 2, 4)).shape == (3, 2)
    assert e.mean.shape == (3, 2, 4) and e.variance.shape == (3, 2, 4)

    # In a plate, exactly like a Normal(...).to_event(1) of the same event shape.
    def model():
        with pyro.plate("data", 5):
            pyro.sample("z", p)
            pyro.sample("w", backend.dist.Normal(torch.zeros(4), 1.0).to_event(1))

    tr = pyro.poutine.trace(model).get_trace()
    tr.compute_log_prob()
    for name in ("z", "w"):
        assert tr.nodes[name]["value"].shape == (5, 4)
        assert tr.nodes[name]["log_prob"].shape == (5,)
    # A KL registered for VampPrior is still found after expand (not an ExpandedDistribution).
    assert isinstance(p.expand([5]), backend.VampPrior)


# ---- NumPyro: pytrees, jit, vmap, promote_batch_shape, scan -------------------------------------
@only("numpyro")
def test_jit_and_vmap(backend):
    jax, jnp = backend.jax, backend.jnp
    loc, scale = Case(6, 3).params()
    p = backend.VampPrior(backend.array(loc, np.float32), backend.array(scale, np.float32))
    z = jnp.asarray(np.random.default_rng(2).standard_normal((10, 3)), jnp.float32)
    eager = np.asarray(p.log_prob(z))
    np.testing.assert_allclose(jax.jit(lambda d, z: d.log_prob(z))(p, z), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(p.log_prob)(z), eager, rtol=1e-6)
    # A distribution returned from jit keeps its arrays and shapes.
    q = jax.jit(lambda loc, scale: backend.VampPrior(loc, scale))(p.component_loc,
                                                                  p.component_scale)
    assert isinstance(q, backend.VampPrior) and q.event_shape == (3,) and q.batch_shape == ()
    np.testing.assert_allclose(q.log_prob(z), eager, rtol=1e-6)
    # vmap over a stack of distributions (pytree leaves batched).
    p2 = backend.VampPrior(p.component_loc + 1.0, p.component_scale)
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), p, p2)
    both = jax.vmap(lambda d: d.log_prob(z))(stacked)
    np.testing.assert_allclose(both, np.stack([eager, p2.log_prob(z)]), rtol=1e-6)
    # Sampling under jit with the same key gives the same draws.
    key = jax.random.PRNGKey(3)
    np.testing.assert_allclose(jax.jit(lambda d, k: d.sample(k, (4,)))(p, key),
                               p.sample(key, (4,)), rtol=1e-6)


@only("numpyro")
def test_dist_pytree(backend, case):
    # NumPyro's test_dist_pytree: through jit (flatten/unflatten) and lax.map (scan), the same
    # parameters, draws and densities.
    jax = backend.jax

    def f(_):
        return case.build(backend, np.float32)

    expected, actual = f(0), jax.jit(f)(0)
    mapped = jax.lax.map(f, np.ones(3))
    assert actual.batch_shape == expected.batch_shape == mapped.batch_shape

    def draws(expected, actual, key):
        x, y = backend.draw(expected, (), key), backend.draw(actual, (), key)
        return x, y, expected.log_prob(x), actual.log_prob(y)

    x, y, log_px, log_py = backend.run(draws, expected, actual)
    np.testing.assert_allclose(y, x, rtol=1e-6)
    np.testing.assert_allclose(log_py, log_px, rtol=1e-5)


@only("numpyro")
def test_vmap_over_each_parameter(backend, plain_case):
    # NumPyro's test_vmap_dist: vmap over all parameters / one parameter, out axes for all
    # attributes or for that parameter (vmap_over), axis 0 and 1.
    from numpyro.distributions.batch_util import vmap_over

    jax, jnp = backend.jax, backend.jnp
    params = [jnp.asarray(a, jnp.float32) for a in plain_case.params()]
    d = backend.VampPrior(*params)
    names = ["component_loc", "component_scale"]
    cases = [((0, 0), 0)]
    cases += [(tuple(0 if j == i else None for j in range(2)), 0) for i in range(2)]
    cases += [(tuple(0 if j == i else None for j in range(2)), vmap_over(d, **{names[i]: 0}))
              for i in range(2)]
    cases += [(tuple(1 if j == i else None for j in range(2)), vmap_over(d, **{names[i]: 1}))
              for i in range(2)]
    for in_axes, out_axes in cases:
        batched = [jnp.expand_dims(p, ax) if isinstance(ax, int) else p
                   for p, ax in zip(params, in_axes)]
        batched_d = jax.vmap(backend.VampPrior, in_axes=in_axes, out_axes=out_axes)(*batched)
        same = jax.vmap(lambda x, y: jnp.all(jnp.stack([
            jnp.all(x.component_loc == y.component_loc),
            jnp.all(x.component_scale == y.component_scale)])), in_axes=(out_axes, None))(
            batched_d, d)
        assert bool(jnp.all(same))
        draws = jax.vmap(lambda d: d.sample(jax.random.PRNGKey(0)), in_axes=(out_axes,))(batched_d)
        assert draws.shape == (1,) + plain_case.batch_shape + plain_case.event_shape


_LOC = np.array([[0.0, 1.0], [2.0, -1.0], [-1.0, 0.5]], np.float32)
_SCALE = np.array([[1.0, 0.5], [0.7, 1.3], [0.4, 0.9]], np.float32)


@only("numpyro")
def test_promote_batch_shape_shares_data_and_preserves_input(backend):
    # NumPyro's test for Normal, on a VampPrior built inside vmap.
    from numpyro.distributions.batch_util import promote_batch_shape

    jax, jnp = backend.jax, backend.jnp
    locs = jnp.stack([_LOC, _LOC + 1.0])
    d = jax.vmap(lambda loc: backend.VampPrior(loc, jnp.asarray(_SCALE)))(locs)
    assert d.batch_shape == ()
    promoted = promote_batch_shape(d)
    assert promoted.batch_shape == (2,)
    assert promoted.component_loc is d.component_loc  # shared, not copied
    assert d.batch_shape == ()  # the input is not mutated
    z = jnp.asarray([[0.3, -0.2], [1.0, 0.5]])
    np.testing.assert_allclose(promoted.log_prob(z), backend.msf(locs, _SCALE).log_prob(z),
                               rtol=1e-5)


@only("numpyro")
def test_promote_batch_shape_expanded_preserves_input(backend):
    from numpyro.distributions.batch_util import promote_batch_shape

    jax, jnp = backend.jax, backend.jnp
    locs = jnp.stack([_LOC, _LOC + 1.0])
    d = jax.vmap(lambda loc: backend.VampPrior(loc, jnp.asarray(_SCALE)).expand((4,)))(locs)
    assert d.batch_shape == (4,)
    promoted = promote_batch_shape(d)
    assert promoted.batch_shape == (2, 4)
    z = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 2)), jnp.float32)
    assert promoted.log_prob(z).shape == (2, 4)
    np.testing.assert_allclose(promoted.log_prob(z),
                               backend.msf(locs[:, None], _SCALE).log_prob(z), rtol=1e-5)
    assert d.batch_shape == (4,)


def _unrolled_scan_reference(backend, z):
    """The joint density of the scan programs below without scan: MixtureSameFamily's, step
    by step."""
    jnp = backend.jnp
    return sum(backend.msf(jnp.asarray(_LOC) + 0.5 * t, jnp.asarray(_SCALE)).log_prob(z[t]).sum()
               for t in range(z.shape[0]))


@only("numpyro")
@pytest.mark.parametrize("observed, num_data", [(False, None), (False, 5), (True, 5)])
def test_sample_site_inside_scan(backend, observed, num_data):
    from numpyro.contrib.control_flow import scan
    from numpyro.infer.util import log_density

    jax, jnp, numpyro = backend.jax, backend.jnp, backend.numpyro
    data_shape = (4,) + ((num_data,) if num_data else ()) + (2,)
    ys = jax.random.normal(jax.random.PRNGKey(0), data_shape) if observed else None

    def model(ys):
        def step(carry, y):
            d = backend.VampPrior(jnp.asarray(_LOC) + carry, jnp.asarray(_SCALE))
            with numpyro.plate("data", num_data) if num_data else contextlib.nullcontext():
                z = numpyro.sample("z", d, obs=y)
            return carry + 0.5, z.sum()

        scan(step, 0.0, ys, length=4)

    if observed:
        z, params = ys, {}
    else:
        z = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(None)["z"]["value"]
        params = {"z": z}
    assert z.shape == data_shape
    log_joint, _ = log_density(model, (ys,), {}, params)
    np.testing.assert_allclose(log_joint, _unrolled_scan_reference(backend, z), rtol=1e-5)


@only("numpyro")
def test_expand_and_plates_behave_like_numpyro_distributions(backend):
    jax, jnp, numpyro = backend.jax, backend.jnp, backend.numpyro
    from numpyro import handlers

    L = 3
    loc, scale = Case(4, L).params()
    p = backend.VampPrior(jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32))
    ref = backend.dist.Normal(jnp.zeros(L), 1.0).to_event(1)
    e = p.expand((5,))
    assert type(e) is backend.VampPrior  # not an ExpandedDistribution: a registered KL is found
    assert e.batch_shape == (5,) and e.event_shape == (L,)
    assert p.expand_by((2,)).batch_shape == (2,)
    assert p.expand(()) is p
    key = jax.random.PRNGKey(0)
    assert e.sample(key, (2,)).shape == ref.expand((5,)).sample(key, (2,)).shape == (2, 5, L)
    assert e.mean.shape == e.variance.shape == (5, L)
    z = jnp.asarray(np.random.default_rng(0).standard_normal((5, L)), jnp.float32)
    np.testing.assert_allclose(e.log_prob(z), p.log_prob(z), rtol=1e-6)
    # An unbatched value broadcasts against the batch shape, as for NumPyro's own.
    assert e.log_prob(z[0]).shape == ref.expand((5,)).log_prob(z[0]).shape == (5,)
    # Expanded distributions stay pytrees with their batch shape.
    assert jax.jit(lambda d: d.log_prob(z))(e).shape == (5,)

    def program(d):
        with numpyro.plate("outer", 2, dim=-2), numpyro.plate("data", 5, dim=-1):
            return numpyro.sample("z", d)

    for d in (p, ref):
        tr = handlers.trace(handlers.seed(program, 0)).get_trace(d)
        site = tr["z"]
        assert site["value"].shape == (2, 5, L)
        assert site["fn"].batch_shape == (2, 5)
        assert site["fn"].log_prob(site["value"]).shape == (2, 5)
    tr = handlers.trace(handlers.seed(program, 0)).get_trace(p)
    assert type(tr["z"]["fn"]) is backend.VampPrior
