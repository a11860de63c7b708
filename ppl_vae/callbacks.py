"""Per-epoch callbacks for ``fit`` (both backends): log training to TensorBoard or MLflow.

``fit(..., callbacks=[...])`` calls each callback after every epoch (on rank 0 only, under
``distributed=True``) with that epoch's history record, a dict::

    {"epoch": 3, "beta": 0.3, "learning_rate": 0.0005, "train_loss": 151.2,
     "valid_elbo": -148.9, "seconds": 2.1}

Any callable works (``callbacks=[print]``, ``callbacks=history.append``). The two loggers
below import their library only when built, so neither is a dependency of ppl_vae::

    from ppl_vae.callbacks import TensorBoardLogger, MLflowLogger

    result = fit(model, guide, x_train, x_valid, num_epochs=100, warmup_epochs=10,
                 callbacks=[TensorBoardLogger("runs/vamp")])   # pip install tensorboard
    # then: tensorboard --logdir runs

    import mlflow                                              # pip install mlflow
    with mlflow.start_run():
        result = fit(..., callbacks=[MLflowLogger()])

Each scalar of the record but ``epoch`` is logged as ``<prefix>/<key>`` at step ``epoch``
(``valid_elbo`` only when there are validation data).
"""

__all__ = ["TensorBoardLogger", "MLflowLogger", "scalars"]


def scalars(record, prefix="train"):
    """The record's numbers as ``{"<prefix>/<key>": value}``, without ``epoch`` and the
    ``None`` ones."""
    return {f"{prefix}/{k}": float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLogger:
    """Write every epoch's record to TensorBoard event files in ``log_dir``, through
    ``torch.utils.tensorboard.SummaryWriter`` (which needs the ``tensorboard`` package), or
    the ``writer`` given (anything with ``add_scalar(tag, value, step)``: tensorboardX,
    ``flax.metrics.tensorboard``).

    :param log_dir: the directory of the event files (``tensorboard --logdir`` its parent).
    :param writer: an existing writer instead.
    :param str prefix: the tags' prefix.
    """

    def __init__(self, log_dir=None, writer=None, prefix="train"):
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("TensorBoardLogger needs torch and tensorboard (pip install "
                                  "tensorboard), or a writer= with add_scalar(tag, value, "
                                  f"step): {e}") from None
            writer = SummaryWriter(log_dir)
        if not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer must have add_scalar(tag, value, step); got "
                            f"{type(writer).__name__}.")
        self.writer, self.prefix = writer, prefix

    def __call__(self, record):
        for tag, value in scalars(record, self.prefix).items():
            self.writer.add_scalar(tag, value, record["epoch"])
        if hasattr(self.writer, "flush"):
            self.writer.flush()


class MLflowLogger:
    """Log every epoch's record to the active MLflow run (``mlflow.log_metrics`` at step
    ``epoch``; keys with ``/`` replaced by ``_`` when ``prefix`` is set, as MLflow prefers).

    :param mlflow: the ``mlflow`` module (default: imported), or anything with
        ``log_metrics(dict, step=)``.
    :param str prefix: the metrics' prefix.
    """

    def __init__(self, mlflow=None, prefix="train"):
        if mlflow is None:
            try:
                import mlflow
            except ImportError as e:
                raise ImportError(f"MLflowLogger needs mlflow (pip install mlflow): {e}") from None
        if not callable(getattr(mlflow, "log_metrics", None)):
            raise TypeError(f"mlflow must have log_metrics(metrics, step=); got "
                            f"{type(mlflow).__name__}.")
        self.mlflow, self.prefix = mlflow, prefix

    def __call__(self, record):
        metrics = {k.replace("/", "_"): v for k, v in scalars(record, self.prefix).items()}
        self.mlflow.log_metrics(metrics, step=record["epoch"])
