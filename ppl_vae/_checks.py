"""Argument checks shared by both backends, so an error reads the same in Pyro and NumPyro.

Bools are rejected although ``isinstance(True, int)``: ``num_samples=True`` is a mistake.
(:mod:`ppl_vae.mixture` keeps scikit-learn's own wording for its estimators.)
"""

__all__ = ["check_int", "check_dims"]


def check_int(name, value, minimum=1, allow_none=False):
    """Return ``value`` if it is an int ``>= minimum`` (or None when ``allow_none``); else raise
    ``ValueError`` naming the argument, what was expected and what came."""
    if allow_none and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        if allow_none:
            expected += " or None"
        raise ValueError(f"{name} must be {expected}; got {value!r}.")
    return value


def check_dims(name, value):
    """Layer widths: an int or a non-empty sequence of positive ints, returned as a tuple."""
    if isinstance(value, int):
        value = (value,)
    value = tuple(value)
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                            for v in value):
        raise ValueError(f"{name} must be positive ints; got {value!r}.")
    return value
