"""Checks and rules shared by both backends, so an error reads the same in Pyro and NumPyro.

Bools are rejected although ``isinstance(True, int)``: ``num_samples=True`` is a mistake.
NumPy integer scalars are accepted wherever an int is (``np.int64(100)`` from an array of
settings is a fine batch size). (:mod:`ppl_vae.mixture` keeps scikit-learn's own wording for
its estimators.)

The divergence rules of both training loops live here too:

- **non-finite**: a NaN or infinite loss or gradient at any step;
- **exploded**: a step whose loss per example exceeds ``EXPLODED_NATS_PER_DIM`` (1000) nats
  per data dimension. No likelihood here comes near it from a sane state: a Bernoulli pixel
  costs 0.69 nats at chance, a 256-bin grey pixel 5.5;
- **collapsed**: an epoch whose validation ELBO falls more than ``COLLAPSED_NATS_PER_DIM``
  (2) nats per dimension below the run's best (1568 nats on MNIST): a crash, not
  overfitting.
"""

import contextlib
import numbers

import numpy as np

__all__ = [
    "check_int",
    "check_dims",
    "check_positive_float",
    "check_bool",
    "check_data",
    "support_error",
    "raised_by",
    "exploded_reason",
    "valid_elbo_problem",
    "EXPLODED_NATS_PER_DIM",
    "COLLAPSED_NATS_PER_DIM",
]

EXPLODED_NATS_PER_DIM = 1000.0
COLLAPSED_NATS_PER_DIM = 2.0


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_int(name, value, minimum=1, allow_none=False):
    """Return ``value`` as an int if it is an integer ``>= minimum`` (or None when
    ``allow_none``); else raise ``ValueError`` naming the argument, what was expected and
    what came. NumPy integer scalars count as ints."""
    if allow_none and value is None:
        return value
    if not _is_int(value) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        if allow_none:
            expected += " or None"
        raise ValueError(f"{name} must be {expected}; got {value!r}.")
    return int(value)


def check_dims(name, value):
    """Layer widths: an int or a non-empty sequence of positive ints, returned as a tuple."""
    if _is_int(value):
        value = (value,)
    value = tuple(value)
    if not value or not all(_is_int(v) and v > 0 for v in value):
        raise ValueError(f"{name} must be positive ints; got {value!r}.")
    return tuple(int(v) for v in value)


def check_positive_float(name, value):
    """A finite number > 0 (e.g. a learning rate), returned as a float."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not np.isfinite(value) or not value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")
    return float(value)


def check_bool(name, value):
    """True or False (a NumPy bool too), returned as a bool: ``1`` or ``"yes"`` is refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}.")
    return bool(value)


def _host(data):
    """A NumPy view of an array, tensor (any device) or jax array, for checking."""
    if hasattr(data, "detach"):  # torch
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def check_data(name, data, num_features=None, other="train_data", matrix=True):
    """Data a model is trained or evaluated on: a non-empty 2-d numeric array (N, D) of finite
    values, with ``num_features`` columns when given (the width of ``other``). With
    ``matrix=False`` any (N, ...) array of at least 2 dimensions passes.

    :returns: the number of examples N.
    """
    try:
        array = _host(data)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be an array (N, D); got {type(data).__name__} "
                         f"({e}).") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers; got dtype {array.dtype}.")
    if array.ndim != 2 and (matrix or array.ndim < 2):
        shape = "(N, D), one example per row" if matrix else "(N, ...), one example per row"
        raise ValueError(f"{name} must have shape {shape}; got shape {tuple(array.shape)}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty: it must hold at least one example of at least one "
                         f"value; got shape {tuple(array.shape)}.")
    if num_features is not None and array.shape[1] != num_features:
        raise ValueError(f"{name} has D = {array.shape[1]} values per example; {other} has "
                         f"{num_features}.")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} contains NaN or infinite values (the first at index "
                             f"{where}: {array[where]}).")
    return int(array.shape[0])


def describe_support(kind):
    """Words for a likelihood's support, by kind: 'binary', 'unit_interval', or other."""
    return {"binary": "binary values (0 or 1)",
            "unit_interval": "values in [0, 1]"}.get(kind, kind)


def support_error(name, site, kind, row, col, value):
    """The ValueError for data outside the support of the likelihood at ``site``: the same
    words in both backends."""
    advice = (" Binarise the data (e.g. a dataset's static or dynamic binarisation), or use a "
              "grey-level likelihood (discretized_logistic)." if kind == "binary" else "")
    return ValueError(
        f"{name} is outside the support of the model's likelihood at site {site!r}: it needs "
        f"{describe_support(kind)}, and row {row}, column {col} is {value!r}.{advice}")


@contextlib.contextmanager
def raised_by(program, name, data):
    """Turn what ``program`` (``"model"`` or ``"guide"``) raises while it runs on the first
    rows of ``data`` into a ``ValueError`` that says which program raised what on which data,
    with the program's own exception as its cause, so a traceback shows that first. It
    guesses at no cause: the program's own message is the diagnosis."""
    try:
        yield
    except Exception as e:
        shape = tuple(np.shape(data))
        raise ValueError(
            f"the {program} raised {type(e).__name__}: {e} (run on the first 2 rows of {name}, "
            f"shape {shape}, D = {shape[-1]} values per example).") from e


def exploded_reason(loss_per_example):
    """Why a step whose loss per example exceeds the exploded rule diverged."""
    return (f"the loss exploded to {loss_per_example:.3g} nats per example (more than "
            f"{EXPLODED_NATS_PER_DIM:g} per dimension)")


def valid_elbo_problem(valid_elbo, best_valid_elbo, best_epoch, num_features):
    """The divergence reason for an epoch's validation ELBO (non-finite, or collapsed more
    than ``COLLAPSED_NATS_PER_DIM`` per dimension below the best), or None."""
    if not np.isfinite(valid_elbo):
        return f"the validation ELBO became {valid_elbo}"
    if valid_elbo < best_valid_elbo - COLLAPSED_NATS_PER_DIM * num_features:
        return (f"the validation ELBO collapsed to {valid_elbo:.2f}, more than "
                f"{COLLAPSED_NATS_PER_DIM:g} nats per dimension below the best "
                f"({best_valid_elbo:.2f}, epoch {best_epoch})")
    return None
