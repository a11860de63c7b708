"""The two backends behind one interface, so that a property that holds for both is one test.

Pyro's ``tests/distributions/conftest.py`` keeps a catalogue of fixtures that generic tests run
over; here the catalogue has two entries, :data:`PYRO` and :data:`NUMPYRO`. Each builds its
backend's models (the library's VAE and HVAE, and small programs written once), data and fit,
calls the evaluation functions (Pyro's global seed or NumPyro's ``rng_key``, behind one
``seed=``) and converts results to NumPy. A test takes the ``backend`` fixture
(``tests/conftest.py``), which runs it once per backend; what only one backend has (Pyro's
param store, NumPyro's compile-once) stays in a test of its own.

Programs are written once against what the two PPLs share: ``b.ppl`` is ``pyro`` or
``numpyro`` (``sample``, ``param``, ``plate``, ``factor``), ``b.dist`` their distributions,
``b.xp`` ``torch`` or ``jax.numpy``.
"""

import contextlib
import functools
import importlib.util
from functools import partial

import numpy as np
from scipy import stats

__all__ = ["get", "BACKENDS", "FAST_COMPILE", "patterns", "prototypes", "ppca_params",
           "ppca_log_px", "linear_hvae_params", "linear_hvae_log_px", "pyro_example_vae",
           "numpyro_example_vae", "F32_EPS", "U32", "SIGMA"]

#: XLA's backend optimisations off: the tests' programs are small, and compiling them is most
#: of the NumPyro tests' time (a third less this way). ``conftest.py`` sets it for the test
#: process (and so for the runs it launches); every program compared is compiled the same way.
FAST_COMPILE = "--xla_backend_optimization_level=0"

BACKENDS = ("pyro", "numpyro")
F32_EPS = float(np.finfo(np.float32).eps)  # 2^-23
U32 = 2.0**-24  # float32 unit round-off
SIGMA = 0.5  # the observation noise of the linear-Gaussian models below


# ---------------------------------------------------------------------------------- data
def prototypes(n, d=30, num_prototypes=4, flip=0.05, seed=0):
    """``(n, d)`` float32 binary data: noisy copies of a few random binary prototypes."""
    rng = np.random.default_rng(seed)
    proto = rng.random((num_prototypes, d)) < 0.3
    x = proto[rng.integers(num_prototypes, size=n)]
    return np.where(rng.random((n, d)) < flip, ~x, x).astype(np.float32)


def patterns(n, d=12, seed=0):
    """Binary images: one of three prototypes with 10% of the pixels flipped."""
    rng = np.random.default_rng(seed)
    protos = rng.random((3, d)) < 0.5
    return (protos[rng.integers(0, 3, n)] ^ (rng.random((n, d)) < 0.1)).astype(np.float32)


# --------------------------------------------------------- closed forms (NumPy, float64)
def ppca_params(seed=0, d=5, latent=2):
    """Probabilistic PCA z ~ N(0, I_L), x | z ~ N(W z + b, s^2 I_D): ``(W, b)``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((d, latent)), rng.standard_normal(d)


def ppca_data(W, b, n, seed=1):
    rng = np.random.default_rng(seed)
    latent = W.shape[1]
    return rng.standard_normal((n, latent)) @ W.T + b + SIGMA * rng.standard_normal((n, len(b)))


def ppca_log_px(x, W, b):
    """log p(x) = log N(x; b, W W^T + s^2 I)."""
    return stats.multivariate_normal(b, W @ W.T + SIGMA**2 * np.eye(len(b))).logpdf(x)


def linear_hvae_params(seed=0, d=6, l1=2, l2=2, s1=0.7):
    """The two-layer linear HVAE z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2 I),
    x | z1, z2 ~ N(W1 z1 + W2 z2 + b, s^2 I), and its exact posterior: the joint of
    (z1, z2) is Gaussian, so is x, and so is (z1, z2) given x."""
    rng = np.random.default_rng(seed)
    A, a = rng.standard_normal((l1, l2)), rng.standard_normal(l1)
    W1, W2, b = rng.standard_normal((d, l1)), rng.standard_normal((d, l2)), rng.standard_normal(d)
    mean_z = np.concatenate([a, np.zeros(l2)])
    cov_z = np.block([[A @ A.T + s1**2 * np.eye(l1), A], [A.T, np.eye(l2)]])
    M = np.hstack([W1, W2])
    P = np.linalg.inv(np.linalg.inv(cov_z) + M.T @ M / SIGMA**2)  # posterior covariance
    K = P[:l1, l1:] @ np.linalg.inv(P[l1:, l1:])
    return dict(A=A, a=a, W1=W1, W2=W2, b=b, s1=s1, M=M, G=np.linalg.inv(cov_z) @ mean_z, P=P,
                K=K, chol2=np.linalg.cholesky(P[l1:, l1:]),
                chol1=np.linalg.cholesky(P[:l1, :l1] - K @ P[l1:, :l1]),
                mean_x=M @ mean_z + b, cov_x=M @ cov_z @ M.T + SIGMA**2 * np.eye(d))


def linear_hvae_log_px(x, p):
    return stats.multivariate_normal(p["mean_x"], p["cov_x"]).logpdf(x)


def _inverse_2x2(xp, m):
    """The inverse of a 2 x 2 matrix in closed form: AIS runs the guide at every leapfrog
    step, and a LAPACK call on a 2 x 2 matrix costs milliseconds in torch on a busy CPU."""
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    return xp.stack([xp.stack([m[1, 1], -m[0, 1]]), xp.stack([-m[1, 0], m[0, 0]])]) / det


def _cholesky_2x2(xp, m):
    """The lower Cholesky factor of a 2 x 2 covariance matrix in closed form."""
    l11 = xp.sqrt(m[0, 0])
    l21 = m[1, 0] / l11
    l22 = xp.sqrt(m[1, 1] - l21**2)
    return xp.stack([xp.stack([l11, xp.zeros_like(l11)]), xp.stack([l21, l22])])


# ----------------------------------------------------- the backends' own example programs
def pyro_example_vae(num_features, hidden_dim, z_dim):
    """The VAE of Pyro's examples/vae/vae.py, as written there: an nn.Module with model(x)
    and guide(x) methods (smaller)."""
    import pyro
    import pyro.distributions as dist
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(num_features, hidden_dim)
            self.fc21 = nn.Linear(hidden_dim, z_dim)
            self.fc22 = nn.Linear(hidden_dim, z_dim)
            self.softplus = nn.Softplus()

        def forward(self, x):
            hidden = self.softplus(self.fc1(x))
            return self.fc21(hidden), torch.exp(self.fc22(hidden))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(z_dim, hidden_dim)
            self.fc21 = nn.Linear(hidden_dim, num_features)
            self.softplus, self.sigmoid = nn.Softplus(), nn.Sigmoid()

        def forward(self, z):
            return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = Encoder(), Decoder()

        def model(self, x):
            pyro.module("decoder", self.decoder)
            with pyro.plate("data", x.shape[0]):
                z_loc = torch.zeros(x.shape[0], z_dim, dtype=x.dtype)
                z_scale = torch.ones(x.shape[0], z_dim, dtype=x.dtype)
                z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
                loc_img = self.decoder(z)
                pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                            obs=x.reshape(-1, num_features))
                return loc_img

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                z_loc, z_scale = self.encoder(x)
                pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE()
    return vae.model, vae.guide, (), {}


def numpyro_example_vae(num_features, hidden_dim, z_dim):
    """The VAE of NumPyro's examples/vae.py, as written there: plain functions of
    (batch, hidden_dim, z_dim) with stax networks, registered by ``numpyro.module``."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from jax.example_libraries import stax

    def encoder(hidden_dim, z_dim):
        return stax.serial(
            stax.Dense(hidden_dim, W_init=stax.randn()), stax.Softplus, stax.FanOut(2),
            stax.parallel(stax.Dense(z_dim, W_init=stax.randn()),
                          stax.serial(stax.Dense(z_dim, W_init=stax.randn()), stax.Exp)))

    def decoder(hidden_dim, out_dim):
        return stax.serial(stax.Dense(hidden_dim, W_init=stax.randn()), stax.Softplus,
                           stax.Dense(out_dim, W_init=stax.randn()), stax.Sigmoid)

    def model(batch, hidden_dim=400, z_dim=100):
        batch = jnp.reshape(batch, (batch.shape[0], -1))
        batch_dim, out_dim = jnp.shape(batch)
        decode = numpyro.module("decoder", decoder(hidden_dim, out_dim), (batch_dim, z_dim))
        with numpyro.plate("batch", batch_dim):
            z = numpyro.sample("z", dist.Normal(0, 1).expand([z_dim]).to_event(1))
            img_loc = decode(z)
            return numpyro.sample("obs", dist.Bernoulli(img_loc).to_event(1), obs=batch)

    def guide(batch, hidden_dim=400, z_dim=100):
        batch = jnp.reshape(batch, (batch.shape[0], -1))
        batch_dim, out_dim = jnp.shape(batch)
        encode = numpyro.module("encoder", encoder(hidden_dim, z_dim), (batch_dim, out_dim))
        z_loc, z_std = encode(batch)
        with numpyro.plate("batch", batch_dim):
            return numpyro.sample("z", dist.Normal(z_loc, z_std).to_event(1))

    return model, guide, (hidden_dim,), {"z_dim": z_dim}


# ------------------------------------------------------------------------------ backends
class _Backend:
    """What the two backends share; subclasses fill in the differences."""

    name = None
    evaluations = ("importance_log_likelihood", "importance_log_weights", "log_weight_chunks",
                   "ais_log_likelihood", "bdmc_bounds", "elbo_per_example")

    def __repr__(self):
        return self.name

    def __getattr__(self, name):
        # the evaluation functions, with the backend's randomness behind seed=
        if name in type(self).evaluations:
            return partial(self._evaluate, getattr(self.lib, name))
        raise AttributeError(name)

    # ------------------------------------------------------------------ programs, once
    @functools.cached_property
    def ppca(self):
        """``(model, guide)`` of probabilistic PCA with ``W`` and ``b`` as arguments; the
        guide is the exact posterior, or ``guide(..., exact=False, shift, widen)`` a
        diagonal Gaussian shifted by ``shift`` and ``widen`` times as wide. Built once per
        backend, so that NumPyro compiles each evaluation chunk once for all tests."""
        ppl, dist, xp = self.ppl, self.dist, self.xp

        def model(x, W, b):
            with ppl.plate("data", x.shape[0]):
                z = ppl.sample("z", dist.Normal(xp.zeros(W.shape[1], dtype=x.dtype), 1.0)
                               .to_event(1))
                ppl.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)

        def guide(x, W, b, exact=True, shift=0.0, widen=1.0):
            cov = _inverse_2x2(xp, xp.eye(2, dtype=x.dtype) + W.T @ W / SIGMA**2)
            loc = (x - b) @ W @ cov / SIGMA**2
            with ppl.plate("data", x.shape[0]):
                if exact:
                    ppl.sample("z", dist.MultivariateNormal(loc, scale_tril=_cholesky_2x2(
                        xp, cov)))
                else:
                    scale = widen * xp.sqrt(xp.diagonal(cov))
                    ppl.sample("z", dist.Normal(loc + shift, scale).to_event(1))

        return model, guide

    @functools.cached_property
    def ppca_guides(self):
        """The inexact guides the tests share (one object each: compiled once)."""
        guide = self.ppca[1]
        return {"wide": partial(guide, exact=False, shift=1.0, widen=2.0),
                "light": partial(guide, exact=False, shift=0.5, widen=1.5),
                "narrow": partial(guide, exact=False, shift=0.5, widen=0.5),
                "near": partial(guide, exact=False, shift=0.1, widen=1.3)}

    @functools.cached_property
    def linear_hvae(self):
        """``(model, guide)`` of the two-layer linear HVAE (:func:`linear_hvae_params`, as
        backend arrays): the guide is the exact posterior q(z2 | x) q(z1 | x, z2) (full
        covariances), or diagonal, shifted and narrowed with ``exact=False``."""
        ppl, dist, xp = self.ppl, self.dist, self.xp

        def model(x, p):
            l1, l2 = p["A"].shape
            with ppl.plate("data", x.shape[0]):
                z2 = ppl.sample("z2", dist.Normal(xp.zeros(l2, dtype=x.dtype), 1.0).to_event(1))
                z1 = ppl.sample("z1", dist.Normal(z2 @ p["A"].T + p["a"], p["s1"]).to_event(1))
                ppl.sample("x", dist.Normal(z1 @ p["W1"].T + z2 @ p["W2"].T + p["b"], SIGMA)
                           .to_event(1), obs=x)

        def guide(x, p, exact=True, shift=0.3, widen=0.7):
            l1 = p["A"].shape[0]
            mu = ((x - p["b"]) @ p["M"] / SIGMA**2 + p["G"]) @ p["P"]
            mu1, mu2 = mu[:, :l1], mu[:, l1:]
            with ppl.plate("data", x.shape[0]):
                if exact:
                    z2 = ppl.sample("z2", dist.MultivariateNormal(mu2, scale_tril=p["chol2"]))
                    ppl.sample("z1", dist.MultivariateNormal(mu1 + (z2 - mu2) @ p["K"].T,
                                                             scale_tril=p["chol1"]))
                else:
                    P = p["P"]
                    z2 = ppl.sample("z2", dist.Normal(mu2 + shift, widen * xp.sqrt(
                        xp.diagonal(P)[l1:])).to_event(1))
                    cond = xp.diagonal(p["chol1"] @ p["chol1"].T)
                    ppl.sample("z1", dist.Normal(mu1 + (z2 - mu2) @ p["K"].T,
                                                 widen * xp.sqrt(cond)).to_event(1))

        return model, guide

    def tree(self, params):
        """NumPy ``{name: array}`` as backend arrays of the default float dtype."""
        return {k: self.array(v) for k, v in params.items()}

    # ------------------------------------------------------------------------ the VAEs
    def vae(self, prior="vamp", num_features=30, latent_dim=3, hidden=(32,), num_pseudo=10,
            seed=0, gated=False, **model_kwargs):
        """The library's VAE: ``(model, guide)``, ``functools.partial`` of ``vae_model`` and
        ``vae_guide`` (their ``.keywords`` hold the networks and the prior); a new model, as
        in a new process (Pyro: an empty param store). ReLU layers by default: gated layers
        double the program NumPyro compiles for every fit, and fit does not care."""
        encoder = self.net("Encoder", num_features, latent_dim, hidden, gated, seed=seed)
        decoder = self.net("Decoder", latent_dim, num_features, hidden, gated, seed=seed + 1)
        if prior == "vamp":
            p_z = self.net("LearnedVampPrior", encoder, num_pseudo, seed=seed + 2)
        elif prior == "mog":
            p_z = self.net("MixtureOfGaussiansPrior", latent_dim, num_pseudo, seed=seed + 2)
        else:
            p_z = self.lib.StandardNormalPrior(latent_dim)
        models = importlib.import_module(f"ppl_vae.models.vae_{self.name}")
        guides = importlib.import_module(f"ppl_vae.guides.vae_{self.name}")
        return (partial(models.vae_model, decoder=decoder, prior=p_z, **model_kwargs),
                partial(guides.vae_guide, encoder=encoder))

    def hvae(self, prior=None, l1=3, l2=4, hidden=(8, 7), num_features=12, num_pseudo=5,
             seed=0, gated=False):
        """The library's HVAE: ``(model, guide)`` partials; ``prior`` None for a learned
        VampPrior on z2. ReLU layers by default (gated ones double what NumPyro compiles)."""
        encoder = self.net("ConditionalGaussian", num_features, l2, hidden, gated, seed=seed)
        z1_encoder = self.net("ConditionalGaussian", (num_features, l2), l1, hidden, gated,
                              seed=seed + 1)
        z1_prior = self.net("ConditionalGaussian", l2, l1, hidden, gated, seed=seed + 2)
        decoder = self.net("MultiInputDecoder", (l1, l2), num_features, hidden, gated,
                           seed=seed + 3)
        if prior is None:
            prior = self.net("LearnedVampPrior", encoder, num_pseudo, seed=seed + 4)
        models = importlib.import_module(f"ppl_vae.models.hvae_{self.name}")
        guides = importlib.import_module(f"ppl_vae.guides.hvae_{self.name}")
        return (partial(models.hvae_model, decoder=decoder, z1_prior=z1_prior, prior=prior),
                partial(guides.hvae_guide, encoder=encoder, z1_encoder=z1_encoder))

    # --------------------------------------------------------------------- results
    def checkpoint_params(self, path):
        """``{name: array}`` of a checkpoint's ``params/``."""
        from ppl_vae.checkpoint import load_checkpoint

        arrays, _ = load_checkpoint(path, backend=self.name)
        return {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}

    def example_vae(self, num_features, hidden_dim, z_dim):
        """The VAE of the backend's own example (Pyro's ``examples/vae/vae.py``, NumPyro's
        ``examples/vae.py``), as written there: ``(model, guide, model_args,
        model_kwargs)`` for fit; new networks each call."""
        make = pyro_example_vae if self.name == "pyro" else numpyro_example_vae
        return make(num_features, hidden_dim, z_dim)

    def sample_sites(self, trace):
        """Names of the sample sites of a trace (``traces``), in order, plates excluded."""
        return [name for name, site in trace.items()
                if site["type"] == "sample" and name != "data"]


class PyroBackend(_Backend):
    name = "pyro"
    #: the dtypes the exactness tests run in (float64: the default dtype switched)
    precisions = ("float32", "float64")

    def __init__(self):
        import pyro
        import pyro.distributions
        import pyro.infer
        import torch

        import ppl_vae.pyro

        self.ppl, self.dist, self.xp, self.infer = pyro, pyro.distributions, torch, pyro.infer
        self.lib = ppl_vae.pyro
        self.elbos = {"trace": pyro.infer.Trace_ELBO, "meanfield": pyro.infer.TraceMeanField_ELBO,
                      "renyi": pyro.infer.RenyiELBO}

    def array(self, x, dtype=None):
        x = x if self.xp.is_tensor(x) else self.xp.as_tensor(np.asarray(x))
        return x.to(dtype or self.xp.get_default_dtype())

    def numpy(self, x):
        return x.detach().cpu().numpy() if self.xp.is_tensor(x) else np.asarray(x)

    def zeros(self, shape):
        return self.xp.zeros(shape)

    @contextlib.contextmanager
    def float64(self):
        previous = self.xp.get_default_dtype()
        self.xp.set_default_dtype(self.xp.float64)
        try:
            yield
        finally:
            self.xp.set_default_dtype(previous)

    def net(self, cls, *args, seed=0, **kwargs):
        self.xp.manual_seed(seed)
        if cls == "LearnedVampPrior":
            kwargs.setdefault("generator", self.xp.Generator().manual_seed(seed))
        elif cls == "MixtureOfGaussiansPrior":
            kwargs.setdefault("generator", self.xp.Generator().manual_seed(seed))
        return getattr(self.lib, cls)(*args, **kwargs)

    def vae(self, *args, **kwargs):
        self.ppl.clear_param_store()  # a new model, as in a new process
        return super().vae(*args, **kwargs)

    def hvae(self, *args, **kwargs):
        self.ppl.clear_param_store()
        return super().hvae(*args, **kwargs)

    def fit(self, model, guide, train, valid=None, *, seed=0, **kwargs):
        kwargs.setdefault("progress", False)
        return self.lib.fit(model, guide, train, valid, seed=seed, **kwargs)

    def _evaluate(self, fn, *args, seed=0, **kwargs):
        self.ppl.set_rng_seed(seed)
        return fn(*args, **kwargs)

    def posterior_means(self, encoder, z1_encoder, x, *, seed=0, params=None, **kwargs):
        assert params is None  # Pyro's trained parameters are in the networks
        return self.lib.hvae_posterior_means(
            encoder, z1_encoder, x, generator=self.xp.Generator().manual_seed(seed), **kwargs)

    def loss(self, elbo, model, guide, x, *args, seed=0, scale=None):
        """``elbo``'s loss (a float) of the pair on ``x``; with ``scale``, of the pair under
        ``latent_scale(., scale)``."""
        if scale is not None:
            model, guide = (self.lib.latent_scale(fn, scale=scale) for fn in (model, guide))
        self.ppl.set_rng_seed(seed)
        return float(elbo.loss(model, guide, x, *args))

    def traces(self, model, guide, x, *args, seed=0, **kwargs):
        """``(model trace, guide trace)``: ``{name: site}``, the model replayed on the guide."""
        from pyro import poutine

        self.ppl.set_rng_seed(seed)
        guide_tr = poutine.trace(guide).get_trace(x, *args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, *args,
                                                                                  **kwargs)
        return model_tr.nodes, guide_tr.nodes

    def leaves(self, params):
        return {k: self.numpy(v) for k, v in params.items()}

    def restored_params(self, result):
        """What the caller holds after ``fit`` returned or raised: the param store."""
        return {k: self.numpy(v) for k, v in self.ppl.get_param_store().named_parameters()}

    def params_kw(self, result):
        """How evaluation functions get trained parameters: from the param store (Pyro)."""
        return {}

    def param_names(self, trace=None):
        """The registered parameters' prefixes (``"encoder"``, ``"decoder"``, ...)."""
        return {k.split("$$$")[0] for k in self.ppl.get_param_store().keys()}


class NumPyroBackend(_Backend):
    name = "numpyro"
    #: the dtypes the exactness tests run in (x64 mode compiles every program again)
    precisions = ("float32",)

    def __init__(self):
        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions
        import numpyro.infer

        import ppl_vae.numpyro

        self.jax = jax
        self.ppl, self.dist, self.xp, self.infer = numpyro, numpyro.distributions, jnp, numpyro.infer
        self.lib = ppl_vae.numpyro
        self.elbos = {"trace": numpyro.infer.Trace_ELBO,
                      "meanfield": numpyro.infer.TraceMeanField_ELBO,
                      "renyi": numpyro.infer.RenyiELBO}

    def key(self, seed):
        return self.jax.random.PRNGKey(seed)

    def array(self, x, dtype=None):
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        return self.xp.asarray(np.asarray(x), dtype=dtype or self.xp.result_type(float))

    def numpy(self, x):
        return np.asarray(x)

    def zeros(self, shape):
        return self.xp.zeros(shape)

    def float64(self):
        return self.jax.enable_x64(True)

    def net(self, cls, *args, seed=0, **kwargs):
        if cls != "StandardNormalPrior":
            kwargs.setdefault("rng_key", self.key(seed))
        return getattr(self.lib, cls)(*args, **kwargs)

    def fit(self, model, guide, train, valid=None, *, seed=0, **kwargs):
        kwargs.setdefault("progress", False)
        return self.lib.fit(self.key(seed), model, guide, train, valid, **kwargs)

    def _evaluate(self, fn, *args, seed=0, **kwargs):
        return fn(self.key(seed), *args, **kwargs)

    def posterior_means(self, encoder, z1_encoder, x, *, seed=0, **kwargs):
        return self.lib.hvae_posterior_means(self.key(seed), encoder, z1_encoder, x, **kwargs)

    def loss(self, elbo, model, guide, x, *args, seed=0, scale=None):
        # one compiled program rather than each operation compiled on its own; the scale an
        # argument of it (the same program for every scale)
        key, scaled = self.key(seed), self.lib.latent_scale

        def loss(scale):
            pair = (model, guide) if scale is None else (scaled(model, scale=scale),
                                                        scaled(guide, scale=scale))
            return elbo.loss(key, {}, *pair, x, *args)

        return float(self.jax.jit(loss)(scale))

    def traces(self, model, guide, x, *args, seed=0, **kwargs):
        from numpyro import handlers

        guide_tr = handlers.trace(handlers.seed(guide, seed)).get_trace(x, *args, **kwargs)
        model_tr = handlers.trace(handlers.replay(handlers.seed(model, seed + 1), guide_tr)
                                  ).get_trace(x, *args, **kwargs)
        return model_tr, guide_tr

    def leaves(self, params):
        flat, _ = self.jax.tree_util.tree_flatten_with_path(self.jax.device_get(params))
        return {self.jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}

    def restored_params(self, result):
        """What the caller holds after ``fit`` returned or raised: its ``.params``."""
        return self.leaves(result.params)

    def params_kw(self, result):
        """How evaluation functions get trained parameters: ``params=`` (NumPyro)."""
        return {"params": result.params}

    def param_names(self, trace):
        return {name.split("$")[0] for tr in trace for name, site in tr.items()
                if site["type"] == "param"}


_BACKENDS = {"pyro": (PyroBackend, "pyro"), "numpyro": (NumPyroBackend, "numpyro")}


@functools.cache
def get(name):
    """The backend ``name`` (one object per session), or None where it is not installed."""
    cls, module = _BACKENDS[name]
    if importlib.util.find_spec(module) is None:
        return None
    return cls()
