"""The shared argument checks: one wording in both backends, bools are not ints."""

import pytest
from jax import random

import ppl_vae.numpyro as pn
import ppl_vae.pyro as pp
from ppl_vae._checks import check_dims, check_int


def test_check_int_names_argument_expectation_and_value():
    assert check_int("k", 3) == 3 and check_int("k", 0, minimum=0) == 0
    assert check_int("k", None, allow_none=True) is None
    with pytest.raises(ValueError, match=r"^k must be a positive int; got 0\.$"):
        check_int("k", 0)
    with pytest.raises(ValueError, match=r"^k must be an int >= 2; got 1\.$"):
        check_int("k", 1, minimum=2)
    with pytest.raises(ValueError, match=r"^k must be a positive int or None; got 'a'\.$"):
        check_int("k", "a", allow_none=True)
    with pytest.raises(ValueError, match="got True"):
        check_int("k", True)
    assert check_dims("h", 5) == (5,) and check_dims("h", [3, 4]) == (3, 4)
    for bad in ((), (3, 0), (2.0,), (True,)):
        with pytest.raises(ValueError, match="h must be positive ints"):
            check_dims("h", bad)


@pytest.mark.parametrize("bad", [(True,), (300, 0)])
def test_both_backends_reject_the_same_widths_with_the_same_message(bad):
    with pytest.raises(ValueError) as torch_err:
        pp.Encoder(784, 40, bad)
    with pytest.raises(ValueError) as jax_err:
        pn.Encoder(784, 40, bad, rng_key=random.PRNGKey(0))
    assert str(torch_err.value) == str(jax_err.value) == f"hidden_dims must be positive ints; got {bad!r}."


def test_elbo_per_example_checks_batch_size_in_both_backends():
    import numpy as np

    x = np.zeros((4, 784), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^batch_size must be a positive int; got 0\.$"):
        pp.elbo_per_example(None, None, x, batch_size=0)
    with pytest.raises(ValueError, match=r"^batch_size must be a positive int; got 0\.$"):
        pn.elbo_per_example(random.PRNGKey(0), None, None, x, batch_size=0)


def test_divergence_rules_of_both_backends():
    from ppl_vae._checks import exploded_reason, valid_elbo_problem

    # 2 nats per dimension below the best: with D = 10, -100 against -80.1 is fine
    assert valid_elbo_problem(-100.0, -80.1, 3, 10) is None
    assert valid_elbo_problem(-100.5, -80.0, 3, 10) == (
        "the validation ELBO collapsed to -100.50, more than 2 nats per dimension below the "
        "best (-80.00, epoch 3)")
    assert valid_elbo_problem(float("nan"), -80.0, 3, 10) == "the validation ELBO became nan"
    assert valid_elbo_problem(-5.0, float("-inf"), -1, 10) is None  # no best yet
    assert exploded_reason(6.14e8) == ("the loss exploded to 6.14e+08 nats per example (more "
                                       "than 1000 per dimension)")


def test_raised_by_shows_the_programs_own_exception_first():
    """A program's exception becomes the cause of a ValueError saying which program raised
    what on which data; nothing is guessed."""
    import numpy as np

    from ppl_vae._checks import raised_by

    error = TypeError("guide() takes 1 positional argument but 2 were given")
    with pytest.raises(ValueError, match=r"^the guide raised TypeError: guide\(\) takes 1 "
                       r"positional argument but 2 were given \(run on the first 2 rows of "
                       r"train_data, shape \(5, 3\), D = 3 values per example\)\.$") as info:
        with raised_by("guide", "train_data", np.zeros((5, 3))):
            raise error
    assert info.value.__cause__ is error
