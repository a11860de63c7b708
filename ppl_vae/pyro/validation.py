"""Checks that run a model/guide pair once on a few examples before the real work (Pyro).

Mirror of :mod:`ppl_vae.numpyro.validation`; the messages come from :mod:`ppl_vae._checks`,
so they read the same in both backends.

:func:`check_model_on_data` traces the guide and the model (replayed on the guide) on the
first two rows of the data, with Pyro's distribution validation off so that our message,
not torch's, explains a problem, and on forked random generators so that it changes nothing
the caller draws next:

- an exception there (a width that does not match D, a prior of the wrong size, a program
  that takes other arguments) becomes a ``ValueError`` that says which program raised it on
  which data, with the program's own exception as its cause (shown first in a traceback);
- every observed site whose value is the data is checked against the support of its
  distribution, on **all** rows: binary data for a Bernoulli likelihood, [0, 1] for the
  discretised logistic. Non-binary data under a Bernoulli likelihood is an input error,
  not a divergence.
"""

import pyro
import torch
from pyro import poutine
from torch.distributions import constraints

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


def _first_bad(mask):
    row, col = (int(i) for i in torch.nonzero(~mask)[0])
    return row, col


def check_model_on_data(model, guide, data, name, *args, **kwargs):
    """Run ``guide`` and ``model`` on ``data[:2]`` and check ``data`` against the support of
    each observed site whose value is the data.

    :param data: ``(N, D)`` tensor, already validated by :func:`ppl_vae._checks.check_data`.
    :param str name: the argument's name for messages (``train_data``, ``data``, ...).
    :param args: the programs' other arguments.
    :raises ValueError: the pair cannot run on the data's shape, or the data lie outside a
        likelihood's support.
    """
    head = data[:2]
    forked = [data.device] if data.is_cuda else []
    # forked generators: the check draws nothing from the caller's random streams
    with pyro.validation_enabled(False), torch.no_grad(), torch.random.fork_rng(forked):
        with _raised_by("guide", name, data):
            guide_trace = poutine.trace(guide).get_trace(head, *args, **kwargs)
        with _raised_by("model", name, data):
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                head, *args, **kwargs)
    for site in model_trace.nodes.values():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        value = site["value"]
        if value.shape != head.shape or not torch.equal(value, head):
            continue  # an observation derived from the data: its support is the model's own
        support = site["fn"].support
        base = _base(support)
        ok = base.check(data)
        if ok.dim() == data.dim() and not bool(ok.all()):
            row, col = _first_bad(ok)
            raise support_error(name, site["name"], support_kind(support), row, col,
                                float(data[row, col]))
