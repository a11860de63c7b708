"""Train VAEs with different priors (MNIST by default, or any dataset of the paper) and report
their test log-likelihood.

Run (offline, ~2 minutes on a 2-core CPU, the embedded 5,000-digit MNIST sample):

    python examples/vamp_mnist.py
    python examples/vamp_mnist.py --help          # every flag, with its default

The paper's experiment (static binarized MNIST; its recipe is the default there: up to 2000
epochs, KL warm-up over 100, early stopping after 50, 5000 importance samples):

    python examples/vamp_mnist.py --dataset static-mnist --data-dir ../shared/data
    python examples/vamp_mnist.py --dataset static-mnist --data-dir ../shared/data --model hvae

The paper's other datasets (``--dataset`` dynamic-mnist, fashion-mnist, omniglot, caltech101,
freyfaces, histopathology) read their canonical files from ``--data-dir``, your own data come
from ``--dataset npz --data-path my.npz``; each dataset sets the likelihood and the
pseudo-input initialisation unless ``--likelihood`` / ``--pseudo-init`` say otherwise
(docs/datasets.md):

    python examples/vamp_mnist.py --dataset freyfaces --data-dir ../shared/data/freyfaces

It prints a table (prior, test ELBO, test log-likelihood, k-hat, active units, seconds) and
writes to ``--out``: ``metrics.json`` (one record per prior), ``elbo_curves.png``, per prior
``samples_<prior>.png``, ``reconstructions_<prior>.png`` and, for the VampPriors,
``pseudo_inputs_<prior>.png``; ``inference_data.nc`` (ArviZ: per-image held-out
log-likelihood and Pareto k-hat, training history, one model per prior); checkpoints go to
``<out>/checkpoints/<prior>/`` (``last.npz`` every epoch, ``best.npz`` at the best validation
ELBO). Exit codes: 2 for a bad flag or file (before any training), 3 when a prior's training
diverged, 4 when a rank of a ``--distributed`` run was lost, 130 on Ctrl-C (continue with the
same flags and ``--resume``).

The program is three library calls, so the same run works from Python, without flags, and
from an installed wheel as ``python -m ppl_vae``:

    from ppl_vae.experiment import ExperimentConfig, load_run, run

    report = run(ExperimentConfig(prior=("standard", "vamp"), epochs=20))
    print(report.table())
    trained = load_run("out/vamp_mnist/checkpoints/vamp/best.npz")   # model, guide, prior
"""

from ppl_vae import cli


def main(argv=None):
    # 1. flags -> one ExperimentConfig (ppl_vae.experiment): every flag is a field, the ones
    #    left unset take the dataset's presets; a bad flag exits 2 here, naming it
    config = cli.parse_config(argv, prog="vamp_mnist.py")
    # 2. the experiment (ppl_vae.experiment.run): load and check the data, then for each
    #    prior build the networks and the model/guide pair (Pyro or NumPyro), fit by SVI with
    #    KL warm-up and early stopping, estimate log p(x) of every test image by importance
    #    sampling (and AIS with --eval ais), draw the figures and write the record;
    # 3. the table on stdout, and an exit code for what went wrong
    return cli.run(config)


if __name__ == "__main__":
    main()
