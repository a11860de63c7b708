"""Fit time of ppl_vae's mixtures against scikit-learn's, per covariance type.

Run:

    python benchmarks/gmm_speed.py                          # 3 data sets, 7 repeats
    python benchmarks/gmm_speed.py --repeats 5 --json out/gmm_speed.json
    python benchmarks/gmm_speed.py --latents out/latents.npy  # real VAE latent means
    python benchmarks/gmm_speed.py --threads 1                # a shared, loaded machine

For each data set, covariance type and algorithm (EM: ``GaussianMixture``; variational EM:
``BayesianGaussianMixture`` with a Dirichlet weight prior, whose ``fit`` also computes the
full ELBO at every iteration), both libraries fit the same data from the same k-means
start (same ``random_state``) with the same ``tol`` and ``max_iter``. Fits are interleaved
(ours, sklearn's, ours, ...) so that drifts in machine load hit both; the table gives the
fastest of the repeats' wall-clock ``fit`` times (the least disturbed by other jobs) and
their ratio ours / sklearn's (below 1: ours is faster). A fit includes the k-means start,
which is scikit-learn's KMeans in both and can dominate small fits; the
"iterations-only" ratio removes it (each library's fit less its own ``max_iter=0`` fit,
the start and one E-step). EM and full-covariance variational EM follow
scikit-learn's path exactly (the "same path" column: equal iteration counts and means);
tied, diag and spherical variational EM are different (exact) updates, so their iteration
counts differ and the per-iteration ratio is given too.

Data sets: the 13 standardised features of scikit-learn's wine data (178 points, K = 3); a
20-dimensional synthetic set of 10,000 points from 10 overlapping Gaussians with random
full covariances (K = 10); VAE latents: the means ``(N, L)`` of a ``.npy`` file given with
``--latents``, or else latent-like data generated here (5,000 x 40: ten clusters in an
8-dimensional active subspace, the other 32 coordinates collapsed near 0, as a VAE's
inactive units are; K = 10).

``--threads N`` caps the BLAS and OpenMP (k-means) threads of both libraries
(threadpoolctl). On a small machine shared with other jobs, two BLAS threads that wait for
each other make a 10 x 5,000 by 5,000 x 40 product take 10 ms instead of 0.2 ms, at random:
the timings then measure the machine's load rather than either library.
"""

import argparse
import json
import os
import time
import warnings

import numpy as np
from sklearn import mixture as sk_mixture
from sklearn.datasets import load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ppl_vae.mixture import BayesianGaussianMixture, GaussianMixture

# ----------------------------------------------------------------------------- defaults
repeats = 7
tol = 1e-3
max_iter = 100
seed = 0
covariance_types = ["full", "tied", "diag", "spherical"]
# --------------------------------------------------------------------------------------


def synthetic(num_samples=10_000, num_features=20, num_components=10, seed=0):
    """Overlapping Gaussian clusters with random full covariances; (N, D)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.5, size=(num_components, num_features))
    labels = rng.integers(num_components, size=num_samples)
    factors = rng.normal(scale=0.5, size=(num_components, num_features, num_features))
    noise = rng.normal(size=(num_samples, num_features))
    return centers[labels] + np.einsum("nd,nde->ne", noise, factors[labels])


def latent_like(num_samples=5_000, latent_dim=40, active=8, num_components=10, seed=0):
    """Latent means like a VAE's: clusters in ``active`` dims, the rest collapsed near 0."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.2, size=(num_components, active))
    labels = rng.integers(num_components, size=num_samples)
    scales = rng.uniform(0.3, 0.7, size=(num_components, active))
    codes = np.zeros((num_samples, latent_dim))
    codes[:, :active] = centers[labels] + scales[labels] * rng.normal(size=(num_samples, active))
    codes[:, active:] = 0.02 * rng.normal(size=(num_samples, latent_dim - active))
    return codes


def datasets(latents_path):
    wine = StandardScaler().fit_transform(load_wine().data)
    out = [("wine", wine, 3), ("synthetic 20-d", synthetic(), 10)]
    if latents_path:
        out.append(("VAE latents", np.load(latents_path), 10))
    else:
        out.append(("latent-like (generated)", latent_like(), 10))
    return out


def timed_fit(estimator, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        estimator.fit(X)
        return time.perf_counter() - start, estimator


def compare(ours_cls, sk_cls, X, kwargs, num_repeats):
    """Interleaved fits: whole fits, then fits with ``max_iter=0`` (the k-means start and
    one E-step), for both libraries; the fastest of each."""
    times = {"ours": [], "sklearn": [], "ours_start": [], "sklearn_start": []}
    start_kwargs = {**kwargs, "max_iter": 0}
    for _ in range(num_repeats):
        t, ours = timed_fit(ours_cls(**kwargs), X)
        times["ours"].append(t)
        t, ref = timed_fit(sk_cls(**kwargs), X)
        times["sklearn"].append(t)
        times["ours_start"].append(timed_fit(ours_cls(**start_kwargs), X)[0])
        times["sklearn_start"].append(timed_fit(sk_cls(**start_kwargs), X)[0])
    best = {k: min(v) for k, v in times.items()}
    # the iterations alone: a fit less its start (at least 1 ms: both are noisy)
    iters_ours = max(best["ours"] - best["ours_start"], 1e-3)
    iters_sk = max(best["sklearn"] - best["sklearn_start"], 1e-3)
    same_path = bool(ours.n_iter_ == ref.n_iter_
                     and np.allclose(ours.means_, ref.means_, rtol=1e-6, atol=1e-6))
    return {"ours_seconds": best["ours"], "sklearn_seconds": best["sklearn"],
            "ratio": best["ours"] / best["sklearn"],
            "median_ratio": float(np.median(times["ours"]) / np.median(times["sklearn"])),
            "start_seconds_ours": best["ours_start"],
            "start_seconds_sklearn": best["sklearn_start"],
            "iterations_ratio": iters_ours / iters_sk,
            "per_iteration_ratio": (iters_ours / max(ours.n_iter_, 1))
            / (iters_sk / max(ref.n_iter_, 1)),
            "n_iter_ours": int(ours.n_iter_), "n_iter_sklearn": int(ref.n_iter_),
            "same_path": same_path, "times": times}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--tol", type=float, default=tol)
    parser.add_argument("--max-iter", type=int, default=max_iter)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--covariance-types", nargs="+", default=covariance_types,
                        choices=covariance_types)
    parser.add_argument("--latents", metavar="FILE.npy",
                        help="VAE latent means (N, L); default: generated latent-like data")
    parser.add_argument("--threads", type=int, default=None,
                        help="cap the BLAS and OpenMP threads of both libraries (default: "
                             "no cap)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()
    with threadpool_limits(limits=args.threads):
        run(args)


def run(args):

    algorithms = [
        ("EM", GaussianMixture, sk_mixture.GaussianMixture, {}),
        ("VB", BayesianGaussianMixture, sk_mixture.BayesianGaussianMixture,
         {"weight_concentration_prior_type": "dirichlet_distribution"}),
    ]
    rows = []
    print("| data | N x D, K | type | algorithm | fit ours (s) | fit sklearn (s) | fit ratio | "
          "iterations-only ratio | per-iteration ratio | iterations ours / sklearn | "
          "same path |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, X, num_components in datasets(args.latents):
        # warm caches, BLAS threads and k-means once; not timed
        timed_fit(GaussianMixture(n_components=num_components, random_state=args.seed), X)
        timed_fit(sk_mixture.GaussianMixture(n_components=num_components,
                                             random_state=args.seed), X)
        for cov_type in args.covariance_types:
            for algo, ours_cls, sk_cls, extra in algorithms:
                kwargs = dict(n_components=num_components, covariance_type=cov_type,
                              tol=args.tol, max_iter=args.max_iter, init_params="kmeans",
                              random_state=args.seed, **extra)
                r = compare(ours_cls, sk_cls, X, kwargs, args.repeats)
                r.update(data=name, shape=list(X.shape), n_components=num_components,
                         covariance_type=cov_type, algorithm=algo)
                rows.append(r)
                print(f"| {name} | {X.shape[0]} x {X.shape[1]}, {num_components} | {cov_type} | "
                      f"{algo} | {r['ours_seconds']:.3f} | {r['sklearn_seconds']:.3f} | "
                      f"{r['ratio']:.2f} | {r['iterations_ratio']:.2f} | "
                      f"{r['per_iteration_ratio']:.2f} | "
                      f"{r['n_iter_ours']} / {r['n_iter_sklearn']} | "
                      f"{'yes' if r['same_path'] else 'no'} |", flush=True)
    worst = {algo: max(r["ratio"] for r in rows if r["algorithm"] == algo)
             for algo in ("EM", "VB")}
    worst_iter = {algo: max(r["iterations_ratio"] for r in rows if r["algorithm"] == algo)
                  for algo in ("EM", "VB")}
    print(f"\nworst fit ratio (ours / sklearn): EM {worst['EM']:.2f} (goal <= 1.2), "
          f"VB {worst['VB']:.2f} (goal <= 1.5); iterations only: EM {worst_iter['EM']:.2f}, "
          f"VB {worst_iter['VB']:.2f}; fastest of {args.repeats} interleaved repeats; "
          f"threads: {args.threads or 'not capped'}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"tol": args.tol, "max_iter": args.max_iter, "repeats": args.repeats,
                       "seed": args.seed, "threads": args.threads, "rows": rows,
                       "worst_ratio": worst, "worst_iterations_ratio": worst_iter}, f,
                      indent=2)


if __name__ == "__main__":
    main()
