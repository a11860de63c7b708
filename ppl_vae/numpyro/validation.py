"""Checks that run a model/guide pair once on a few examples before the real work (NumPyro).

Mirror of :mod:`ppl_vae.pyro.validation`; the messages come from :mod:`ppl_vae._checks`,
so they read the same in both backends. This matters more here than in Pyro: inside
``jit`` NumPyro's distributions cannot raise, so non-binary data under a Bernoulli
likelihood would surface as a NaN loss ("diverged") or a log-likelihood of ``-inf``.

:func:`check_model_on_data` traces the guide and the model (replayed on the guide) on the
first two rows of the data, eagerly:

- an exception there (a width that does not match D, a prior of the wrong size, a program
  that takes other arguments) becomes a ``ValueError`` that says which program raised it on
  which data, with the program's own exception as its cause (shown first in a traceback);
- every observed site whose value is the data is checked against the support of its
  distribution, on **all** rows.
"""

import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro import handlers
from numpyro.distributions import constraints

from ppl_vae._checks import raised_by as _raised_by
from ppl_vae._checks import support_error

__all__ = ["check_model_on_data", "support_kind"]


def _base(constraint):
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def support_kind(constraint):
    """``"binary"``, ``"unit_interval"`` or the constraint's own name."""
    base = _base(constraint)
    if base is constraints.boolean or type(base).__name__ == "_Boolean":
        return "binary"
    if isinstance(base, constraints.interval) and (float(base.lower_bound),
                                                   float(base.upper_bound)) == (0.0, 1.0):
        return "unit_interval"
    return type(base).__name__.lstrip("_")


def check_model_on_data(model, guide, data, name, *args, params=None, **kwargs):
    """Run ``guide`` and ``model`` on ``data[:2]`` and check ``data`` against the support of
    each observed site whose value is the data.

    :param data: ``(N, D)`` array, already validated by :func:`ppl_vae._checks.check_data`.
    :param str name: the argument's name for messages (``train_data``, ``data``, ...).
    :param args: the programs' other arguments.
    :param dict params: parameter values to substitute (None: the networks' initial ones).
    :raises ValueError: the pair cannot run on the data's shape, or the data lie outside a
        likelihood's support.
    """
    head = jnp.asarray(data[:2])
    with handlers.substitute(data=params or {}):
        with _raised_by("guide", name, data):
            guide_trace = handlers.trace(handlers.seed(guide, random.PRNGKey(0))).get_trace(
                head, *args, **kwargs)
        with _raised_by("model", name, data):
            model_trace = handlers.trace(handlers.replay(
                handlers.seed(model, random.PRNGKey(1)), trace=guide_trace)).get_trace(
                head, *args, **kwargs)
    for site in model_trace.values():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        value = site["value"]
        if jnp.shape(value) != head.shape or not bool(jnp.array_equal(value, head)):
            continue  # an observation derived from the data: its support is the model's own
        support = site["fn"].support
        ok = np.asarray(_base(support)(jnp.asarray(data)))
        if ok.ndim == np.ndim(data) and not ok.all():
            row, col = (int(i) for i in np.argwhere(~ok)[0])
            raise support_error(name, site["name"], support_kind(support), row, col,
                                float(np.asarray(data)[row, col]))
