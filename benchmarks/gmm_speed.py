"""Variational EM speed: ppl_vae's BayesianGaussianMixture against scikit-learn's.

Run:

    python benchmarks/gmm_speed.py                      # 100,000 x 10, K = 10, 5 repeats
    python benchmarks/gmm_speed.py --repeats 3 --json out/gmm_speed.json

Both fits use a plain Dirichlet weight prior, the same tolerance, the same iteration cap and
the same k-means initialisation (same ``random_state``: both start from the identical
partition and follow the same path, which the script checks by comparing iteration counts
and means). Runs are interleaved (ours, sklearn, ours, sklearn, ...) so that drifts in
machine load hit both; the figures are medians of wall-clock ``fit`` times.
"""

import argparse
import json
import os
import time

import numpy as np
from sklearn.mixture import BayesianGaussianMixture as SkBayesianGaussianMixture

from ppl_vae.mixture import BayesianGaussianMixture

# ----------------------------------------------------------------------------- defaults
num_samples = 100_000
num_features = 10
num_components = 10
tol = 1e-3
max_iter = 100
repeats = 5
seed = 0
# --------------------------------------------------------------------------------------


def make_data(num_samples, num_features, num_components, seed):
    """Overlapping Gaussian clusters with random full covariances; (N, D).

    The overlap makes variational EM iterate (about ten times) after its k-means start.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.5, size=(num_components, num_features))
    labels = rng.integers(num_components, size=num_samples)
    factors = rng.normal(scale=0.5, size=(num_components, num_features, num_features))
    noise = rng.normal(size=(num_samples, num_features))
    X = centers[labels] + np.einsum("nd,nde->ne", noise, factors[labels])
    return X + 0.1 * rng.normal(size=X.shape)


def timed_fit(estimator, X):
    start = time.perf_counter()
    estimator.fit(X)
    return time.perf_counter() - start, estimator


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=num_samples)
    parser.add_argument("--num-features", type=int, default=num_features)
    parser.add_argument("--num-components", type=int, default=num_components)
    parser.add_argument("--tol", type=float, default=tol)
    parser.add_argument("--max-iter", type=int, default=max_iter)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()

    X = make_data(args.num_samples, args.num_features, args.num_components, args.seed)
    kwargs = dict(n_components=args.num_components, tol=args.tol, max_iter=args.max_iter,
                  weight_concentration_prior_type="dirichlet_distribution",
                  init_params="kmeans", random_state=args.seed)
    # k-means initialisation is common to both and not what is compared: fit once to warm
    # caches and BLAS threads, then time
    timed_fit(BayesianGaussianMixture(**kwargs), X[:2000])
    timed_fit(SkBayesianGaussianMixture(**kwargs), X[:2000])

    ours_times, sk_times = [], []
    for _ in range(args.repeats):
        t_ours, ours = timed_fit(BayesianGaussianMixture(**kwargs), X)
        t_sk, ref = timed_fit(SkBayesianGaussianMixture(**kwargs), X)
        ours_times.append(t_ours)
        sk_times.append(t_sk)
        print(f"  ours {t_ours:7.3f} s ({ours.n_iter_} it)   sklearn {t_sk:7.3f} s "
              f"({ref.n_iter_} it)")

    same_path = bool(ours.n_iter_ == ref.n_iter_
                     and np.allclose(ours.means_, ref.means_, atol=1e-6))
    ours_median, sk_median = float(np.median(ours_times)), float(np.median(sk_times))
    ratio = sk_median / ours_median
    print(f"N = {args.num_samples}, D = {args.num_features}, K = {args.num_components}, "
          f"tol = {args.tol}, {args.repeats} interleaved repeats, same path: {same_path}")
    print(f"median fit time: ours {ours_median:.3f} s, sklearn {sk_median:.3f} s, "
          f"speed-up (sklearn / ours) = {ratio:.2f}x")

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({
                "num_samples": args.num_samples, "num_features": args.num_features,
                "num_components": args.num_components, "tol": args.tol,
                "repeats": args.repeats, "n_iter_ours": int(ours.n_iter_),
                "n_iter_sklearn": int(ref.n_iter_), "same_path": same_path,
                "ours_seconds": ours_times, "sklearn_seconds": sk_times,
                "ours_median_seconds": ours_median, "sklearn_median_seconds": sk_median,
                "speedup": ratio,
            }, f, indent=2)


if __name__ == "__main__":
    main()
