"""Reproduce the seed report's Table 1 (static MNIST) at a budget that fits a CPU session.

Trains the standard, VampPrior, VampPrior-data and MoG VAEs with the experiment that
``examples/vamp_mnist.py`` runs (:mod:`ppl_vae.experiment`, through the same flags), then
writes to ``--out``:

- ``table.md``: test log-likelihood per prior beside the paper and the seed report;
- ``loglik_histograms.png``: per-image test log-likelihood histograms (the report's Figure 6);
- ``loglik_vs_k.png`` and ``k_sweep.json``: test log-likelihood against K (its Figure 5), at a
  smaller budget (``--k-sweep``; skipped with ``--no-k-sweep``).

CPU budget (stated in the table; about 45 minutes on 2 cores)::

    python benchmarks/reproduce.py --data-dir ../shared/data --epochs 10 --max-test 1000

The full recipe (GPU; warm-up 100, early stopping 50, up to 2000 epochs, 5000 samples on the
whole test set)::

    python benchmarks/reproduce.py --data-dir ../shared/data --full --device cuda
"""

import argparse
import json
from pathlib import Path

import numpy as np

from ppl_vae import cli

ROOT = Path(__file__).resolve().parents[1]

PAPER = {"standard": -88.56, "vamp": -85.57, "vamp-data": None, "mog": None}
SEED_REPORT = {"standard": -93.08, "vamp": -88.72, "vamp-data": -90.85, "mog": None}


def run(flags):
    """The records of one run of the experiment with these command-line flags."""
    return cli.run(cli.parse_config(flags)).records


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default="out/reproduce")
    p.add_argument("--priors", nargs="+", default=["standard", "vamp", "vamp-data", "mog"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=None, help="default: epochs // 4")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=1000)
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--k-sweep", type=int, nargs="+", default=[50, 100, 250, 500, 1000])
    p.add_argument("--k-sweep-epochs", type=int, default=3)
    p.add_argument("--no-k-sweep", action="store_true")
    p.add_argument("--full", action="store_true",
                   help="the paper's recipe: up to 2000 epochs, warm-up 100, early stopping 50, "
                        "whole test set")
    p.add_argument("--backend", default="pyro")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    common = ["--dataset", "static-mnist", "--data-dir", args.data_dir, "--backend",
              args.backend, "--device", args.device, "--seed", str(args.seed), "--no-progress"]
    if args.full:
        budget = ["--eval-samples", "5000"]
        stated = "full recipe: up to 2000 epochs, warm-up 100, early stopping 50, 5000 IS, 10,000 test images"
    else:
        warmup = args.warmup if args.warmup is not None else max(1, args.epochs // 4)
        budget = ["--epochs", str(args.epochs), "--warmup", str(warmup), "--early-stopping", "0",
                  "--eval-samples", str(args.eval_samples), "--max-test", str(args.max_test)]
        if args.max_train:
            budget += ["--max-train", str(args.max_train)]
        stated = (f"{args.epochs} epochs (warm-up {warmup}), {args.eval_samples} IS samples, "
                  f"a fixed random {args.max_test} of the test images")
    records = run(common + budget + ["--prior", *args.priors, "--out", str(out / "table1")])

    lines = [f"Budget: {stated}; backend {args.backend}, device {args.device}.", "",
             "| prior | test LL (ours) | ± s.e. | k-hat > 0.7 | epochs | train s | paper | seed report |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        share = "-" if r["khat_above_0_7"] is None else f"{100 * r['khat_above_0_7']:.1f}%"
        lines.append(f"| {r['prior']} | {r['test_log_likelihood']:.2f} | "
                     f"{r['test_log_likelihood_sem']:.2f} | {share} | {r['epochs']} | "
                     f"{r['train_seconds']:.0f} | {fmt(PAPER.get(r['prior']))} | "
                     f"{fmt(SEED_REPORT.get(r['prior']))} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ppl_vae import diagnostics

    runs = diagnostics.load(out / "table1")  # {prior: its held-out evaluation}
    fig, ax = plt.subplots(figsize=(7, 4))
    for prior, idata in runs.items():
        ll = diagnostics.group(idata, "importance")["log_likelihood"].values
        ax.hist(ll, bins=60, histtype="step", label=f"{prior} (mean {ll.mean():.1f})")
    ax.set(xlabel="test log-likelihood per image (nats)", ylabel="images",
           title="Per-image test log-likelihood (cf. seed report, Figure 6)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loglik_histograms.png", dpi=110)
    plt.close(fig)

    if not args.no_k_sweep:
        sweep = {}
        for k in args.k_sweep:
            flags = ["--prior", "vamp", "--num-pseudo", str(k), "--epochs",
                     str(args.k_sweep_epochs), "--warmup", "1", "--early-stopping", "0",
                     "--eval-samples", str(min(1000, args.eval_samples)),
                     "--max-test", str(min(500, args.max_test)), "--out", str(out / f"k{k}")]
            if args.max_train:
                flags += ["--max-train", str(args.max_train)]
            rec = run(common + flags)[0]
            sweep[k] = dict(test_log_likelihood=rec["test_log_likelihood"],
                            sem=rec["test_log_likelihood_sem"],
                            train_seconds=rec["train_seconds"])
        (out / "k_sweep.json").write_text(json.dumps(sweep, indent=2))
        ks = np.array(list(sweep))
        fig, ax1 = plt.subplots(figsize=(6, 4))
        ax1.errorbar(ks, [sweep[k]["test_log_likelihood"] for k in ks],
                     yerr=[sweep[k]["sem"] for k in ks], marker="o")
        ax1.set(xscale="log", xlabel="K (pseudo-inputs)", ylabel="test log-likelihood (nats)",
                title=f"VampPrior vs K ({args.k_sweep_epochs} epochs; cf. report Figure 5)")
        ax2 = ax1.twinx()
        ax2.plot(ks, [sweep[k]["train_seconds"] for k in ks], "s--", color="gray")
        ax2.set_ylabel("training seconds", color="gray")
        fig.tight_layout()
        fig.savefig(out / "loglik_vs_k.png", dpi=110)
        plt.close(fig)
        print("K sweep:", {k: round(v["test_log_likelihood"], 2) for k, v in sweep.items()})


if __name__ == "__main__":
    main()
