"""The README's programs shaped like Pyro's and NumPyro's own VAE examples run as they are
written there, with a VampPrior, through ``fit`` (KL warm-up as a handler) and the
importance-sampled evaluation; only the sizes shrink (one epoch, 5 pseudo-inputs, 20
samples, 64 random images), so that they run in seconds."""

import re
from pathlib import Path

import numpy as np
import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = "### Your program as Pyro's and NumPyro's own VAE examples write it"
SHRINK = {r"num_epochs=100": "num_epochs=1", r"num_pseudo=500": "num_pseudo=5",
          r"num_samples=5000": "num_samples=20", r"warmup_epochs=10": "warmup_epochs=1"}


def snippets():
    """The section's two ```python blocks: Pyro's, then NumPyro's."""
    start = README.index(SECTION)
    end = README.index("\n## ", start)
    blocks = re.findall(r"```python\n(.*?)```", README[start:end], flags=re.S)
    assert len(blocks) == 2, "the section should hold the Pyro and the NumPyro program"
    return dict(zip(("pyro", "numpyro"), blocks))


def shrunk(code):
    for pattern, small in SHRINK.items():
        assert re.search(pattern, code), pattern  # the README still says what it did
        code = re.sub(pattern, small, code)
    return code


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_readme_program_shaped_like_the_backends_example(backend):
    pytest.importorskip(backend)
    rng = np.random.default_rng(0)
    x_train, x_valid, x_test = ((rng.random((n, 784)) < 0.3).astype(np.float32)
                                for n in (64, 16, 8))
    if backend == "pyro":
        import pyro
        import torch

        pyro.clear_param_store()
        torch.manual_seed(0)
        x_train, x_valid, x_test = map(torch.as_tensor, (x_train, x_valid, x_test))
    scope = {"x_train": x_train, "x_valid": x_valid, "x_test": x_test}
    exec(compile(shrunk(snippets()[backend]), f"README ({backend})", "exec"), scope)
    result, log_px = scope["result"], scope["log_px"]
    assert [h["beta"] for h in result.history] == [1.0]
    assert np.isfinite(result.history[0]["train_loss"])
    assert log_px.shape == (8,) and np.all(np.isfinite(log_px))
    # a density of 784 binary pixels: below 0, above a uniform model's 784 log(1/2) - slack
    assert np.all(log_px < 0) and np.all(log_px > -784 * 4), log_px
    # the prior shares the guide's encoder: one set of weights, under the guide's name
    if backend == "pyro":
        names = {name.split("$$$")[0] for name in pyro.get_param_store()}
        assert names == {"encoder", "decoder", "pseudo_inputs"}, names
    else:
        assert set(result.params) == {"encoder$params", "decoder$params", "pseudo_inputs$params"}
