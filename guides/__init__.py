"""Amortised guides q(z | x), one module per backend (``*_pyro``, ``*_numpyro``)."""
