"""The seed report's Table 1 on every dataset with local data, at a stated CPU budget.

Runs ``examples/vamp_mnist.py`` once per dataset (standard, VampPrior and VampPrior-data
priors, one process at a time, checkpoints under ``--out``), then writes the table beside the
seed report's and the paper's numbers to ``<out>/table1.md`` and ``<out>/table1.json``::

    python benchmarks/table1.py --data-dir ../shared/data                 # the default budget
    python benchmarks/table1.py --data-dir ../shared/data --only freyfaces --resume

The budget per dataset is in ``BUDGETS`` (epochs, warm-up, test images, importance samples):
the small datasets (Frey Faces, Caltech 101) train for hundreds of epochs; the 50,000-image
ones for a few dozen on a 2-core CPU. An interrupted run continues with ``--resume``.

``--table-only`` trains nothing and writes the table of what ``--out`` holds (and
``<dataset>_curves.png``, every run's ELBO per epoch). ``--models`` runs
other models at the same budget, each in its own folder
(``<out>/<dataset>/<model>``; the one-layer VAE stays at ``<out>/<dataset>``), e.g. the
paper's convolutional models beside the MLP HVAE (issue 24)::

    python benchmarks/table1.py --only freyfaces --models hvae convhvae pixelhvae \
        --priors standard vamp --backend pyro --out out/conv --resume

``--epochs N`` trains for N epochs instead of the dataset's budget (e.g. a copy of a finished
300-epoch folder resumed to 600: only epochs, early stopping and the learning rate may change on
resume); the table's budget column is each run's own.
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# dataset: (epochs, warm-up, max test images or None for all, importance samples)
BUDGETS = {
    "freyfaces": (300, 100, None, 5000),
    "caltech101": (300, 100, None, 5000),
    "fashion-mnist": (20, 5, 2000, 5000),
    "dynamic-mnist": (20, 5, 2000, 5000),
    "static-mnist": (20, 5, 2000, 5000),
}
SEED_REPORT = {  # 1000 epochs, 500 IS samples (REFERENCE.md section 1)
    "static-mnist": (-93.08, -88.72, -90.85),
    "fashion-mnist": (-235.32, -231.94, -232.79),
    "freyfaces": (-2281.16, -2257.76, -2286.52),
    "caltech101": (-137.32, -135.15, -142.02),
}
PAPER = {  # (dataset, model): (standard, VampPrior); REFERENCE.md sections 1 and 8, approximate
    # where noted there; None: not on record
    ("static-mnist", "vae"): (-88.56, -85.57),
    ("static-mnist", "hvae"): (-86.05, -83.19),
    ("static-mnist", "convhvae"): (None, -81.09),
    ("static-mnist", "pixelhvae"): (None, -79.78),
    ("dynamic-mnist", "vae"): (-84.50, -82.38),
    ("dynamic-mnist", "hvae"): (-82.42, -81.24),
    ("caltech101", "vae"): (-123.43, -114.55),
    ("caltech101", "hvae"): (-112.08, -108.28),
    ("freyfaces", "vae"): (4.63, 4.57),  # bits per dimension
    ("freyfaces", "hvae"): (4.61, 4.51),
}
PRIORS = ("standard", "vamp", "vamp-data")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default="out/table1")
    p.add_argument("--backend", default="numpyro", choices=["pyro", "numpyro"])
    p.add_argument("--only", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--models", nargs="+", default=["vae"],
                   choices=["vae", "hvae", "convhvae", "pixelhvae"],
                   help="models to run at each dataset's budget (default: the one-layer VAE)")
    p.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="train for N epochs instead of each dataset's budget in BUDGETS "
                        "(with --resume, a finished run continues to N)")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: write the table of the runs already in --out (each "
                        "model's metrics.json keeps every prior run into its folder)")
    args = p.parse_args(argv)
    out = Path(args.out)
    results = {}
    for dataset in args.only:
        epochs, warmup, max_test, samples = BUDGETS[dataset]
        if args.epochs is not None:
            if args.epochs < 1:
                p.error(f"--epochs must be a positive number of epochs; got {args.epochs}.")
            epochs = args.epochs
        for model in args.models:
            run_dir = out / dataset if model == "vae" else out / dataset / model
            cmd = [sys.executable, str(ROOT / "examples" / "vamp_mnist.py"), "--backend",
                   args.backend, "--model", model, "--dataset", dataset, "--data-dir",
                   args.data_dir, "--prior", *args.priors, "--epochs", str(epochs),
                   "--warmup", str(warmup), "--early-stopping", "0", "--eval-samples",
                   str(samples), "--no-progress", "--out", str(run_dir)]
            if max_test:
                cmd += ["--max-test", str(max_test)]
            if args.resume:
                cmd.append("--resume")
            if not args.table_only:
                print(" ".join(cmd), flush=True)
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=ROOT)
                print(f"{dataset} {model}: exit {proc.returncode} after "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
            metrics = run_dir / "metrics.json"
            if metrics.exists():
                results.setdefault(dataset, []).extend(
                    r for r in json.loads(metrics.read_text()) if r["prior"] in args.priors)
    write_table(out, results)


def per_image(record):
    """The per-image log p(x) of a run (``evaluation.npz`` beside its checkpoints), or None."""
    from ppl_vae.checkpoint import load_checkpoint

    path = ROOT / record.get("checkpoint_dir", "-") / "evaluation.npz"
    if not path.exists():
        return None
    arrays, _ = load_checkpoint(path)
    return arrays["log_px"] if len(arrays["log_px"]) == record.get("num_test") else None


def paired_difference(record, baseline):
    """Mean and standard error of ``record``'s per-image log p(x) minus ``baseline``'s on the
    same test images (the images' own spread cancels), or None without both."""
    a, b = per_image(record), per_image(baseline)
    if a is None or b is None or len(a) != len(b):
        return None
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def save_curves(path, records, dataset):
    """Training and validation ELBO per epoch of every run of ``dataset`` (from the
    histories in their last checkpoints), one line per model and prior."""
    from ppl_vae.checkpoint import load_checkpoint
    from ppl_vae.plotting import save_elbo_curves

    histories = {}
    for r in records:
        last = ROOT / r.get("checkpoint_dir", "-") / "last.npz"
        if last.exists():
            histories[f"{r.get('model', 'vae')} {r['prior']}"] = load_checkpoint(last)[1]["history"]
    if histories:
        save_elbo_curves(path, histories, title=f"{dataset}: every model at the same budget")


def write_table(out, results):
    """``table1.md``: each run beside the seed report and the paper (their numbers are for the
    same model), and every other model's paired difference from the MLP HVAE with the same
    prior (``vs hvae``)."""
    rows = ["| dataset | budget | model | prior | test LL (ours) | ± | vs hvae (paired) "
            "| seed report | paper | k-hat > 0.7 | train s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset, records in results.items():
        hvae = {r["prior"]: r for r in records if r.get("model") == "hvae"}
        for r in records:
            i, model = PRIORS.index(r["prior"]), r.get("model", "vae")
            seed = SEED_REPORT.get(dataset, (None,) * 3)[i] if model == "vae" else None
            paper = PAPER.get((dataset, model), (None, None))[i] if i < 2 else None
            ll = r.get("test_log_likelihood")
            if ll is not None and dataset == "freyfaces":
                bpd = -ll / (560 * math.log(2))  # nats per image -> bits per dimension
                ll_text = f"{ll:.2f} ({bpd:.2f} bpd)"
            else:
                ll_text = "diverged" if ll is None else f"{ll:.2f}"
            diff = (paired_difference(r, hvae[r["prior"]])
                    if model != "hvae" and r["prior"] in hvae else None)
            khat = r.get("khat_above_0_7")
            budget = (f"{r.get('max_epochs')} ep ({r.get('warmup')} warm-up), "
                      f"{r.get('eval_samples')} IS, {r.get('num_test')} test")
            rows.append(
                f"| {dataset} | {budget} | {model} | {r['prior']} | {ll_text} | "
                f"{r.get('test_log_likelihood_sem') or 0:.2f} | "
                f"{'-' if diff is None else f'{diff[0]:+.2f} ± {diff[1]:.2f}'} | "
                f"{'-' if seed is None else seed} | {'-' if paper is None else paper} | "
                f"{'-' if khat is None else f'{100 * khat:.1f}%'} | "
                f"{r.get('train_seconds', 0):.0f} |")
    out.mkdir(parents=True, exist_ok=True)
    for dataset, records in results.items():
        save_curves(out / f"{dataset}_curves.png", records, dataset)
    (out / "table1.md").write_text("\n".join(rows) + "\n")
    (out / "table1.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
