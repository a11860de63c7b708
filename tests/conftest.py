"""Shared test set-up: every test is seeded, starts from an empty Pyro param store and runs
with distribution validation on (warnings are errors: see pyproject.toml)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

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
    yield


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
