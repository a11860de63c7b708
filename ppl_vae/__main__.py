"""``python -m ppl_vae``: the VampPrior experiment from an installed package, the same program
as the repository's ``examples/vamp_mnist.py`` (same flags, outputs and exit codes;
``python -m ppl_vae --help``). See :mod:`ppl_vae.cli` and :mod:`ppl_vae.experiment`."""

from ppl_vae.cli import main

if __name__ == "__main__":
    main(prog="python -m ppl_vae")
