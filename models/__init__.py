"""Generative programs p(x | z) p(z), one module per backend (``*_pyro``, ``*_numpyro``)."""
