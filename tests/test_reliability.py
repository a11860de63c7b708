"""Fail early, never silently (both backends): safe self-describing checkpoints, resume
checks, divergence at any step, one input contract, the same messages in Pyro and NumPyro."""

import os
import pickle
from functools import partial

import numpy as np
import pytest
from backends import get, prototypes

from ppl_vae.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    config_mismatches,
    load_checkpoint,
    save_checkpoint,
)
from ppl_vae.errors import TrainingDivergedError

D, L, K = 20, 3, 6


def _data(n=60, seed=0):
    return prototypes(n, D, num_prototypes=3, seed=seed)


def _vae(backend, num_pseudo=K, hidden=(16,)):
    """A new VampPrior VAE, as in a new process (Pyro: an empty param store)."""
    return backend.vae(num_features=D, latent_dim=L, hidden=hidden, num_pseudo=num_pseudo)


def _fit(backend, model, guide, train, valid=None, **kwargs):
    return backend.fit(model, guide, train, valid, **kwargs)


# ----------------------------------------------------------------------- the file format


def test_checkpoint_round_trip_and_refusals(tmp_path):
    arrays = {"params/a": np.arange(6.0).reshape(2, 3), "rng/key": np.array([0, 7], np.uint32)}
    path = save_checkpoint(tmp_path / "c.npz", arrays, {"backend": "pyro", "epoch": 3,
                                                        "best": {"valid_elbo": -np.inf}})
    back, meta = load_checkpoint(path, backend="pyro")
    assert meta["epoch"] == 3 and meta["best"]["valid_elbo"] == -np.inf
    assert meta["format"] == "ppl_vae-checkpoint" and meta["version"] == 1
    for key in arrays:
        np.testing.assert_array_equal(back[key], arrays[key])
        assert back[key].dtype == arrays[key].dtype
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    with pytest.raises(CheckpointError, match="written by the pyro backend"):
        load_checkpoint(path, backend="numpyro")
    with pytest.raises(TypeError, match="dtype object"):
        save_checkpoint(tmp_path / "o.npz", {"x": np.array([{"a": 1}], dtype=object)}, {})
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="plain.npz.*not a ppl_vae checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    with pytest.raises(CheckpointError, match="missing.npz does not exist"):
        load_checkpoint(tmp_path / "missing.npz")


def test_config_mismatches_ignore_resumable_settings():
    saved = {"num_pseudo": 500, "hidden": [300, 300], "num_epochs": 10, "learning_rate": 1e-3}
    now = {"num_pseudo": 100, "hidden": (300, 300), "num_epochs": 50, "learning_rate": 1e-4,
           "seed": 1}
    assert config_mismatches(saved, now) == [("num_pseudo", 500, 100), ("seed", None, 1)]


def test_a_setting_added_later_takes_its_default_in_older_checkpoints():
    """A checkpoint written before normalize_gradients existed trained with plain Adam: it
    compares equal to normalize_gradients=False and differs from True."""
    old = {"num_pseudo": 500}
    assert config_mismatches(old, {"num_pseudo": 500, "normalize_gradients": False}) == []
    assert config_mismatches(old, {"num_pseudo": 500, "normalize_gradients": True}) == [
        ("normalize_gradients", False, True)]


class _Planted:
    """Unpickling this runs ``os.system``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", ["last.npz", "last.pt", "last.pkl"])
def test_a_planted_pickle_checkpoint_is_refused_without_running(backend, name, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with open(ckpt / name, "wb") as f:
        pickle.dump(_Planted(marker), f)
    model, guide = _vae(backend)
    with pytest.raises(CheckpointError, match="pickle") as info:
        _fit(backend, model, guide, _data(), num_epochs=2, checkpoint_dir=ckpt, resume=True)
    assert name in str(info.value)
    assert not marker.exists()


def test_a_truncated_checkpoint_names_the_file(backend, tmp_path):
    model, guide = _vae(backend)
    _fit(backend, model, guide, _data(), num_epochs=1, checkpoint_dir=tmp_path)
    last = tmp_path / "last.npz"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    model, guide = _vae(backend)
    with pytest.raises(CheckpointError, match=r"last\.npz is not a readable ppl_vae checkpoint"):
        _fit(backend, model, guide, _data(), num_epochs=2, checkpoint_dir=tmp_path,
             resume=True)
    # the other checkpoint still loads
    _, meta = load_checkpoint(tmp_path / "best.npz", backend=backend.name)
    assert meta["epoch"] == 1


# --------------------------------------------------------------------------------- resume


def test_resume_refuses_other_settings_and_lists_them(backend, tmp_path):
    model, guide = _vae(backend)
    _fit(backend, model, guide, _data(), num_epochs=1, batch_size=20, checkpoint_dir=tmp_path,
         config={"prior": "vamp", "num_pseudo": K})
    model, guide = _vae(backend, num_pseudo=K + 2)
    with pytest.raises(CheckpointMismatchError) as info:
        _fit(backend, model, guide, _data(), num_epochs=3, batch_size=30,
             checkpoint_dir=tmp_path, resume=True, config={"prior": "vamp", "num_pseudo": K + 2})
    message = str(info.value)
    assert "num_pseudo: checkpoint 6, now 8" in message
    assert "batch_size: checkpoint 20, now 30" in message
    assert "pseudo_inputs" in message  # the parameter shapes differ too
    keys = {d[0] for d in info.value.differences}
    assert {"num_pseudo", "batch_size"} <= keys and "num_epochs" not in keys


def test_resume_with_a_new_learning_rate_uses_it(backend, tmp_path):
    model, guide = _vae(backend)
    _fit(backend, model, guide, _data(), num_epochs=1, learning_rate=1e-3,
         checkpoint_dir=tmp_path)
    model, guide = _vae(backend)
    result = _fit(backend, model, guide, _data(), num_epochs=2, learning_rate=0.5e-3,
                  checkpoint_dir=tmp_path, resume=True)
    assert [h["learning_rate"] for h in result.history] == [1e-3, 0.5e-3]
    assert result.config["learning_rate"] == 0.5e-3


def test_pyro_resume_lr_is_the_new_one_in_the_optimizer(tmp_path, monkeypatch):
    import torch

    seen = []
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    pyro = get("pyro")
    model, guide = _vae(pyro)
    pyro.fit(model, guide, _data(), num_epochs=1, learning_rate=1e-3, checkpoint_dir=tmp_path)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    model, guide = _vae(pyro)
    pyro.fit(model, guide, _data(), num_epochs=2, learning_rate=2e-4, checkpoint_dir=tmp_path,
             resume=True)
    assert seen and set(seen) == {2e-4}


# ----------------------------------------------------------------------------- divergence


# Pyro warns of an infinite log-density before fit stops (it filters only its NaN warning:
# reported); the divergence is what is tested here
@pytest.mark.filterwarnings("ignore:Encountered [+-]inf")
def test_an_exploding_loss_is_a_divergence(backend, tmp_path):
    model, guide = _vae(backend)
    with pytest.raises(TrainingDivergedError) as info:
        _fit(backend, model, guide, _data(), num_epochs=30, batch_size=10,
             learning_rate=1e6, checkpoint_dir=tmp_path)
    assert "diverged" in str(info.value) and info.value.step is not None
    assert "learning_rate" in str(info.value)
    # the restored parameters are finite and the last good checkpoint (if any) loads
    assert all(np.isfinite(v).all() for v in backend.leaves(info.value.params).values())
    if (tmp_path / "last.npz").exists():
        _, meta = load_checkpoint(tmp_path / "last.npz", backend=backend.name)
        assert meta["epoch"] == info.value.epoch - 1


def test_pyro_nan_inside_an_epoch_is_caught_at_that_step(tmp_path):
    import torch

    pyro = get("pyro")
    model, guide = _vae(pyro)
    real = model.keywords["decoder"]
    calls = {"n": 0}

    class Poisoned(torch.nn.Module):
        latent_dim = L

        def __init__(self):
            super().__init__()
            self.real = real

        def forward(self, z):
            calls["n"] += 1
            out = self.real(z)
            return out * float("nan") if calls["n"] == 10 else out

    model = partial(model.func, **{**model.keywords, "decoder": Poisoned()})
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 2 of 6") as info:
        # two calls before training (the check, the parameter trace), 6 steps an epoch:
        # call 10 is epoch 2's second step, not its last
        pyro.fit(model, guide, _data(), num_epochs=4, batch_size=10, checkpoint_dir=tmp_path)
    assert "restored the parameters of epoch 1" in str(info.value)
    arrays, meta = load_checkpoint(tmp_path / "last.npz", backend="pyro")
    assert meta["epoch"] == 1
    # the param store holds copies of the checkpoint's arrays, in this process: bit for bit
    for name, value in pyro.restored_params(None).items():
        np.testing.assert_array_equal(value, arrays[f"params/{name}"])
    # the last good checkpoint evaluates
    ll = pyro.importance_log_likelihood(model, guide, pyro.array(_data(8)), num_samples=30)
    assert np.isfinite(ll).all()


# ---------------------------------------------------------------------- the input contract


def _errors(fn_pyro, fn_numpyro):
    with pytest.raises(ValueError) as a:
        fn_pyro()
    with pytest.raises(ValueError) as b:
        fn_numpyro()
    return str(a.value), str(b.value)


def _both(method, *args, **kwargs):
    """``method`` of each backend, on its own VAE and the same arguments."""
    calls = []
    for backend in (get("pyro"), get("numpyro")):
        model, guide = _vae(backend)
        calls.append(partial(getattr(backend, method), model, guide, *args, **kwargs))
    return calls


def test_non_binary_data_under_a_bernoulli_gives_the_same_error_in_both():
    grey = _data() * 0.5
    a, b = _errors(*_both("fit", grey, num_epochs=1))
    assert a == b
    assert "train_data is outside the support of the model's likelihood at site 'x'" in a
    assert "binary values (0 or 1)" in a and "row 0" in a
    a, b = _errors(*_both("importance_log_likelihood", grey, num_samples=5))
    assert a == b and a.startswith("data is outside the support")


def test_a_width_that_does_not_match_d_fails_before_training():
    """The guide's network meets 24 columns where it expects 20: what it raised is the cause,
    and the message says which program raised it on which data."""
    wide = np.concatenate([_data(), _data()[:, :4]], axis=1)  # D + 4 columns
    for run in _both("fit", wide, num_epochs=1):
        with pytest.raises(ValueError) as info:
            run()
        message = str(info.value)
        assert message.startswith("the guide raised "), message
        assert message.endswith("(run on the first 2 rows of train_data, shape (60, 24), "
                                "D = 24 values per example).")
        assert info.value.__cause__ is not None


@pytest.mark.parametrize("bad, expected", [
    (np.zeros((0, D), np.float32), "train_data is empty"),
    (np.zeros(D, np.float32), r"train_data must have shape (N, D)"),
    (np.full((4, D), np.nan, np.float32), "train_data contains NaN or infinite values"),
])
def test_bad_data_gives_the_same_error_in_both(bad, expected):
    a, b = _errors(*_both("fit", bad, num_epochs=1))
    assert a == b and a.startswith(expected.replace("\\", ""))
    mismatched = _data()[:, :-1]
    a, b = _errors(*_both("fit", _data(), mismatched, num_epochs=1))
    assert a == b == "valid_data has D = 19 values per example; train_data has 20."


def test_numpy_ints_float64_tensors_and_big_batches_are_accepted(backend):
    import torch

    model, guide = _vae(backend)
    x64 = _data().astype(np.float64)
    result = _fit(backend, model, guide, torch.as_tensor(x64), x64[:10],
                  num_epochs=np.int64(2), batch_size=np.int32(1000),  # > N: one batch
                  warmup_epochs=np.int64(1))
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])


def test_bad_settings_name_the_argument(backend):
    model, guide = _vae(backend)
    for kwargs, expected in [
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0; got nan"),
        ({"learning_rate": -1}, "learning_rate must be a finite number > 0; got -1"),
        ({"batch_size": 2.5}, "batch_size must be a positive int; got 2.5"),
        ({"elbo": "trace"}, "elbo must be a"),
        ({"config": [1]}, "config must be a dict"),
    ]:
        with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
            _fit(backend, model, guide, _data(), num_epochs=1, **kwargs)


def test_load_params_refuses_another_model(backend, tmp_path):
    model, guide = _vae(backend)
    result = _fit(backend, model, guide, _data(), num_epochs=1, checkpoint_dir=tmp_path)
    model, guide = _vae(backend, num_pseudo=K + 2)
    with pytest.raises(CheckpointMismatchError, match=r"cannot load the parameters of .*"
                       r"best\.npz into this model(.|\n)*pseudo_inputs"):
        backend.lib.load_params(tmp_path / "best.npz", model, guide, _data())
    model, guide = _vae(backend)
    loaded = backend.lib.load_params(tmp_path / "best.npz", model, guide, _data())
    # copies of the same arrays, in this process: bit for bit
    if backend.name == "numpyro":
        params, meta = loaded
        loaded_params = backend.leaves(params)
    else:
        meta, loaded_params = loaded, backend.restored_params(None)
    expected = backend.leaves(result.params)
    assert loaded_params.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(loaded_params[name], expected[name])
    assert meta["kind"] == "best" and meta["epoch"] == 1
