"""Shared test set-up: every test is seeded, starts from an empty Pyro param store and runs
with distribution validation on in both backends (warnings are errors: see pyproject.toml).

``backend`` runs a test once per backend (``tests/backends.py``: the catalogue of what each
backend builds, fits and evaluates). It is module-scoped, so that the tests of a module run
backend by backend and module-scoped fixtures built on it (a trained model) are built once
per backend."""

import importlib.util
import os
import sys
from pathlib import Path

import backends
import numpy as np
import pytest

# backends.FAST_COMPILE before JAX starts (and for the runs the tests launch, which inherit
# it); a value the caller set is kept.
os.environ.setdefault("XLA_FLAGS", backends.FAST_COMPILE)

REPO = Path(__file__).resolve().parents[1]
STATIC_MNIST = REPO.parent / "shared" / "data" / "static_mnist.npz"


@pytest.fixture(autouse=True)
def _seed_and_validate():
    np.random.seed(0)
    if importlib.util.find_spec("pyro") is not None:
        import pyro

        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        pyro.enable_validation(True)
    if "numpyro" in sys.modules:  # imported by the tests that use it; no import here
        sys.modules["numpyro"].enable_validation(True)
    yield


@pytest.fixture(scope="module", params=backends.BACKENDS)
def backend(request):
    """The Pyro or the NumPyro half (:mod:`backends`); skipped where it is not installed."""
    found = backends.get(request.param)
    if found is None:
        pytest.skip(f"{request.param} is not installed")
    return found


@pytest.fixture
def static_mnist_dir():
    """Directory of the benchmark dataset; the test skips where it is absent (a fresh clone)."""
    if not STATIC_MNIST.exists():
        pytest.skip(f"static MNIST not found at {STATIC_MNIST}")
    return STATIC_MNIST.parent


@pytest.fixture
def float64():
    """Checks against closed forms in float64 (Pyro): data go to torch's default dtype, as
    NumPyro's go to JAX's, so it is float64 for the test, and restored after."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session", autouse=True)
def _jax_compilation_cache(tmp_path_factory):
    """One compilation per distinct program for the whole session: XLA's executables go to a
    cache on disk (JAX's persistent compilation cache), so that the many NumPyro fits and
    evaluations of the same model, each a new ``jax.jit``, compile once. A program found
    there is the executable compiled before: same code, same numbers."""
    if importlib.util.find_spec("jax") is None:
        yield
        return
    path = str(tmp_path_factory.mktemp("jax_cache"))
    settings = {"jax_compilation_cache_dir": path,
                "jax_persistent_cache_min_compile_time_secs": 0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    if "jax" in sys.modules:  # (imported while collecting the tests)
        import jax
        from jax.experimental.compilation_cache import compilation_cache

        previous = {name: getattr(jax.config, name) for name in settings}
        for name, value in settings.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()  # in effect even after an earlier compilation
        yield
        for name, value in previous.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
    else:  # read by JAX when it is imported
        saved = {name.upper(): os.environ.get(name.upper()) for name in settings}
        os.environ.update({name.upper(): str(value) for name, value in settings.items()})
        yield
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
