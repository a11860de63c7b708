"""ppl_vae.callbacks: the TensorBoard and MLflow loggers write each epoch's record of fit."""

import importlib.util
from functools import partial

import numpy as np
import pytest

from ppl_vae.callbacks import MLflowLogger, TensorBoardLogger, scalars


class Writer:  # what TensorBoardLogger needs of a SummaryWriter
    def __init__(self):
        self.calls, self.flushed = [], 0

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))

    def flush(self):
        self.flushed += 1


class MLflow:  # what MLflowLogger needs of the mlflow module
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((metrics, step))


def test_loggers_write_every_number_of_the_record_at_its_epoch():
    record = {"epoch": 3, "beta": 0.5, "learning_rate": 5e-4, "train_loss": 151.25,
              "valid_elbo": None, "seconds": 2.0}
    assert scalars(record) == {"train/beta": 0.5, "train/learning_rate": 5e-4,
                               "train/train_loss": 151.25, "train/seconds": 2.0}
    writer, mlflow = Writer(), MLflow()
    TensorBoardLogger(writer=writer)(record)
    MLflowLogger(mlflow)(record)
    assert sorted(writer.calls) == sorted((k, v, 3) for k, v in scalars(record).items())
    assert writer.flushed == 1
    assert mlflow.calls == [({"train_beta": 0.5, "train_learning_rate": 5e-4,
                              "train_train_loss": 151.25, "train_seconds": 2.0}, 3)]
    with pytest.raises(TypeError, match="add_scalar"):
        TensorBoardLogger(writer=object())


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None,
                    reason="tensorboard is installed")
def test_without_tensorboard_the_logger_says_what_to_install():
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger("runs/x")


def test_fit_calls_the_loggers_with_its_history():
    import ppl_vae.pyro as pv
    from ppl_vae.guides.vae_pyro import vae_guide
    from ppl_vae.models.vae_pyro import vae_model

    rng = np.random.default_rng(0)
    x = (rng.random((60, 12)) < 0.3).astype(np.float32)
    encoder, decoder = pv.Encoder(12, 2, (8,)), pv.Decoder(2, 12, (8,))
    writer, seen = Writer(), []
    result = pv.fit(partial(vae_model, decoder=decoder, prior=pv.StandardNormalPrior(2)),
                    partial(vae_guide, encoder=encoder), x, x[:20], num_epochs=3,
                    batch_size=20, warmup_epochs=2, progress=False,
                    callbacks=[TensorBoardLogger(writer=writer), seen.append])
    assert seen == result.history
    losses = [(step, value) for tag, value, step in writer.calls if tag == "train/train_loss"]
    assert losses == [(h["epoch"], h["train_loss"]) for h in result.history]
    betas = [value for tag, value, _ in writer.calls if tag == "train/beta"]
    assert betas == [0.5, 1.0, 1.0]
