"""Kate's wine bottles: Gaussian mixtures by EM and by variational EM on the UCI wine data.

Run (offline, about half a minute on a 2-core CPU; the data ships with scikit-learn):

    python examples/gmm_wine.py
    python examples/gmm_wine.py --out out/gmm_wine --seed 0 --max-components 6

The story (seed 001): a restaurant owner suspects her supplier mixes grape cultivars. She
measures malic acid and total phenols for 178 bottles and fits Gaussian mixtures:

1. EM (maximum likelihood) for K = 1..max and the four covariance types (full, tied,
   diag, spherical), with AIC and BIC;
2. variational EM (Bishop's Bayesian GMM) for the same K and types, with the *full* ELBO,
   which, unlike scikit-learn's lower bound, can be compared across K and across types;
3. ArviZ (``ppl_vae.diagnostics``): each variational posterior as InferenceData, PSIS-LOO
   compared across K and type (``az.compare``) next to BIC and the full ELBO, the pointwise
   LOO k-hats and the k-hat of the variational posterior itself (Yao et al. 2018);
4. the fitted ellipses of the four types side by side, each at the K its full ELBO picks;
5. the E-step for the two-cultivar hypothesis (full covariances, K = 2): each bottle's
   responsibility p(component | bottle), and "this bottle is 0.6 cultivar A -- how sure?":
   90% credible intervals of the membership probabilities from posterior draws;
6. the adjusted Rand index of each clustering against the true cultivar labels (3 cultivars).

It prints tables and writes to ``--out``: ``metrics.json``, ``model_selection.png`` (BIC
and full ELBO against K, one line per type), ``covariance_types.png`` (the four types'
ellipses), ``contours.png`` (K = 2, EM beside variational EM), ``responsibilities.png``,
``membership_intervals.png``, ``loo_compare.png`` (``az.plot_compare`` of the types, each at
its best K by LOO),
``forest.png`` (``az.plot_forest`` of the chosen full-covariance fit) and
``inference_data.nc`` (its InferenceData: posterior, log_likelihood, sample_stats,
observed_data).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_wine
from sklearn.metrics import adjusted_rand_score

from ppl_vae import diagnostics
from ppl_vae.mixture import BayesianGaussianMixture, GaussianMixture

# -----------------------------------------------------------------------------------------
# Defaults
DEFAULTS = dict(
    out="out/gmm_wine",
    seed=0,
    max_components=6,  # K = 1..max_components
    covariance_types=["full", "tied", "diag", "spherical"],
    story_components=2,  # the seed's two-cultivar hypothesis
    n_init=5,  # restarts (k-means starts), the best bound is kept
    prior_type="dirichlet_distribution",  # a plain Dirichlet: the ELBO compares K fairly
    num_posterior_samples=2000,  # draws for the membership intervals, LOO and k-hats
    credible_mass=0.9,
    num_bottles=5,  # bottles shown with their membership intervals
)
FEATURES = ["malic_acid", "total_phenols"]
# -----------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULTS["out"], help="output directory (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="random_state of every fit and of the posterior draws")
    p.add_argument("--max-components", type=int, default=DEFAULTS["max_components"],
                   help="fit K = 1..this (default %(default)s)")
    p.add_argument("--covariance-types", nargs="+", default=DEFAULTS["covariance_types"],
                   choices=DEFAULTS["covariance_types"],
                   help="covariance types to fit (default: all four; full is always fitted)")
    p.add_argument("--n-init", type=int, default=DEFAULTS["n_init"], help="restarts")
    p.add_argument("--prior-type", default=DEFAULTS["prior_type"],
                   choices=["dirichlet_distribution", "dirichlet_process"],
                   help="weight prior of the Bayesian mixture")
    p.add_argument("--num-posterior-samples", type=int,
                   default=DEFAULTS["num_posterior_samples"],
                   help="posterior draws for the membership intervals, PSIS-LOO and k-hats")
    args = p.parse_args(argv)
    if args.max_components < DEFAULTS["story_components"]:
        p.error(f"--max-components must be at least {DEFAULTS['story_components']}; "
                f"got {args.max_components}")
    for name in ("n_init", "num_posterior_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer; "
                    f"got {getattr(args, name)}")
    # the story (sections 5-6) uses the full-covariance fits
    args.covariance_types = ["full"] + [t for t in dict.fromkeys(args.covariance_types)
                                        if t != "full"]
    return args


def full_covariances(model):
    """``covariances_`` of any type as (K, D, D) matrices."""
    cov, (k, d) = model.covariances_, model.means_.shape
    return {"full": lambda: cov, "tied": lambda: np.broadcast_to(cov, (k, d, d)),
            "diag": lambda: cov[:, :, None] * np.eye(d),
            "spherical": lambda: cov[:, None, None] * np.eye(d)}[model.covariance_type]()


def plot_contours(ax, model, X, cultivar, title):
    """Bottles coloured by cultivar, with each component's 1 and 2 sd ellipses."""
    ax.scatter(X[:, 0], X[:, 1], c=cultivar, cmap="viridis", s=12, alpha=0.7)
    grid_x, grid_y = np.meshgrid(np.linspace(X[:, 0].min() - 0.5, X[:, 0].max() + 0.5, 200),
                                 np.linspace(X[:, 1].min() - 0.5, X[:, 1].max() + 0.5, 200))
    grid = np.column_stack([grid_x.ravel(), grid_y.ravel()])  # (G, 2)
    covariances = full_covariances(model)  # (K, 2, 2)
    for k in range(model.n_components):
        if model.weights_[k] < 0.01:  # an emptied component of the Bayesian fit
            continue
        diff = grid - model.means_[k]
        maha = np.einsum("gi,ij,gj->g", diff, np.linalg.inv(covariances[k]), diff)
        ax.contour(grid_x, grid_y, np.sqrt(maha).reshape(grid_x.shape), levels=[1.0, 2.0],
                   colors=f"C{k + 1}", linewidths=1.0)
        ax.annotate(f"{k} ({model.weights_[k]:.2f})", model.means_[k], color=f"C{k + 1}",
                    weight="bold")
    ax.set(title=title, xlabel=FEATURES[0], ylabel=FEATURES[1])


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    wine = load_wine()
    columns = [wine.feature_names.index(name) for name in FEATURES]
    X = wine.data[:, columns]  # (178, 2)
    cultivar = wine.target  # (178,), three cultivars
    print(f"wine: {X.shape[0]} bottles, features {FEATURES}, {len(np.unique(cultivar))} "
          "cultivars")

    # 1-2. EM and variational EM for each covariance type and K ------------------------------
    ks = list(range(1, args.max_components + 1))
    rows, em_models, vb_models = [], {}, {}
    for cov_type in args.covariance_types:
        for k in ks:
            em = GaussianMixture(k, covariance_type=cov_type, n_init=args.n_init,
                                 max_iter=500, random_state=args.seed).fit(X)
            vb = BayesianGaussianMixture(n_components=k, covariance_type=cov_type,
                                         n_init=args.n_init, max_iter=2000, tol=1e-6,
                                         random_state=args.seed,
                                         weight_concentration_prior_type=args.prior_type).fit(X)
            em_models[cov_type, k], vb_models[cov_type, k] = em, vb
            rows.append({
                "covariance_type": cov_type, "K": k,
                "log_likelihood": float(em.score(X) * X.shape[0]),
                "aic": float(em.aic(X)), "bic": float(em.bic(X)),
                "elbo": float(vb.lower_bound_),
                "vb_effective_components": int(np.sum(vb.weights_ > 0.02)),
                "ari_em": float(adjusted_rand_score(cultivar, em.predict(X))),
                "ari_vb": float(adjusted_rand_score(cultivar, vb.predict(X))),
                "em_iterations": int(em.n_iter_), "vb_iterations": int(vb.n_iter_),
            })
    full_rows = [r for r in rows if r["covariance_type"] == "full"]

    print("\nFull covariances:")
    print("| K | log-lik | AIC | BIC | full ELBO | ARI (EM) | ARI (VB) |")
    print("|---|---|---|---|---|---|---|")
    for r in full_rows:
        print(f"| {r['K']} | {r['log_likelihood']:.1f} | {r['aic']:.1f} | {r['bic']:.1f} | "
              f"{r['elbo']:.1f} | {r['ari_em']:.3f} | {r['ari_vb']:.3f} |")

    # 3. ArviZ: PSIS-LOO across K and type, pointwise and variational k-hats ------------------
    idatas = {}
    for r in rows:
        name = f"{r['covariance_type']} K={r['K']}"
        vb = vb_models[r["covariance_type"], r["K"]]
        idatas[name] = diagnostics.gmm_inference_data(
            vb, X, num_samples=args.num_posterior_samples, random_state=args.seed,
            feature_names=FEATURES)
        loo = diagnostics.loo(idatas[name])
        r["loo_max_khat"] = float(np.max(loo["pareto_k"]))  # over the 178 bottles
        # independent draws for q's own k-hat, so it is not tied to the LOO draws
        r["variational_khat"] = diagnostics.variational_khat(
            vb, X, num_samples=args.num_posterior_samples, random_state=args.seed + 1)
    table = diagnostics.compare(idatas)  # best first, indexed by name
    for r in rows:
        c = table.loc[f"{r['covariance_type']} K={r['K']}"]
        r.update(elpd_loo=float(c["elpd_loo"]), loo_se=float(c["se"]),
                 p_loo=float(c["p_loo"]), elpd_diff=float(c["elpd_diff"]),
                 loo_dse=float(c["dse"]), loo_rank=int(c["rank"]))

    print("\nThe four covariance types side by side: BIC (EM), full ELBO (variational EM) "
          "and PSIS-LOO (az.compare over every type and K, rank 0 best):")
    print("| type | K | BIC | full ELBO | elpd_loo | se | elpd_diff | dse | LOO rank | "
          "variational k-hat |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['covariance_type']} | {r['K']} | {r['bic']:.1f} | {r['elbo']:.1f} | "
              f"{r['elpd_loo']:.1f} | {r['loo_se']:.1f} | {r['elpd_diff']:.1f} | "
              f"{r['loo_dse']:.1f} | {r['loo_rank']} | {r['variational_khat']:.2f} |")
    best = {"bic": min(rows, key=lambda r: r["bic"]), "elbo": max(rows, key=lambda r: r["elbo"]),
            "loo": min(rows, key=lambda r: r["loo_rank"])}
    print("\nbest (type, K): " + ", ".join(f"{c.upper()} {r['covariance_type']} K = {r['K']}"
                                          for c, r in best.items()))
    best_by_type = {t: max((r for r in rows if r["covariance_type"] == t),
                           key=lambda r: r["elbo"])["K"] for t in args.covariance_types}
    loo_best_by_type = {t: "{} K={}".format(t, min(
        (r for r in rows if r["covariance_type"] == t), key=lambda r: r["loo_rank"])["K"])
        for t in args.covariance_types}

    # the full-covariance story of K (the earlier table), as in docs/mixture.md
    full_best = {"aic": min(full_rows, key=lambda r: r["aic"])["K"],
                 "bic": min(full_rows, key=lambda r: r["bic"])["K"],
                 "elbo": max(full_rows, key=lambda r: r["elbo"])["K"]}
    full_table = diagnostics.compare({r["K"]: idatas[f"full K={r['K']}"] for r in full_rows})
    full_best["loo"] = int(full_table.index[0])
    # LOO differences within ~2 standard errors are noise: take the smallest such K
    full_best["loo_parsimony"] = min(
        int(k) for k in full_table.index
        if full_table.loc[k, "elpd_diff"] <= 2 * full_table.loc[k, "dse"])
    k_chosen = full_best["loo_parsimony"]
    print("\nFull covariances, PSIS-LOO (az.compare, best first) next to AIC, BIC and the "
          "full ELBO:")
    print("| K | elpd_loo | se | p_loo | elpd_diff | dse | max LOO k | AIC | BIC | full ELBO "
          "| variational k-hat |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in full_table.index:
        r, c = full_rows[int(k) - 1], full_table.loc[k]
        print(f"| {r['K']} | {c['elpd_loo']:.1f} | {c['se']:.1f} | {c['p_loo']:.1f} | "
              f"{c['elpd_diff']:.1f} | {c['dse']:.1f} | {r['loo_max_khat']:.2f} | "
              f"{r['aic']:.1f} | {r['bic']:.1f} | {r['elbo']:.1f} | "
              f"{r['variational_khat']:.2f} |")
    print(f"\nfull covariances, best K: AIC {full_best['aic']}, BIC {full_best['bic']}, "
          f"ELBO {full_best['elbo']}, LOO {full_best['loo']}; smallest K within 2 dse of "
          f"the best LOO {k_chosen}")
    diagnostics.save(idatas[f"full K={k_chosen}"], out / "inference_data.nc")

    # 5. the E-step of the two-component story ---------------------------------------------
    k_story = DEFAULTS["story_components"]
    em2, vb2 = em_models["full", k_story], vb_models["full", k_story]
    resp = em2.predict_proba(X)  # (178, 2)
    # name the component with more phenols "traditional" (component A), as in the story
    a = int(np.argmax(em2.means_[:, 1]))
    print(f"\nK = {k_story} (EM, full): weights {np.round(em2.weights_, 3).tolist()}, means "
          f"{np.round(em2.means_, 2).tolist()}; component A (traditional, more phenols) = {a}")

    # membership credible intervals: "0.6 -- how sure?"
    # the Bayesian fit's components are identified; match them to EM's by their means
    a_vb = int(np.argmin(np.linalg.norm(vb2.means_ - em2.means_[a], axis=1)))
    intervals = vb2.membership_intervals(X, num_samples=args.num_posterior_samples,
                                         credible_mass=DEFAULTS["credible_mass"],
                                         random_state=args.seed)
    # bottles spread over the range of memberships, the one nearest 0.6 first
    targets = np.linspace(0.6, 0.98, DEFAULTS["num_bottles"])
    targets[1:] = np.linspace(0.1, 0.99, DEFAULTS["num_bottles"] - 1)
    bottles = []
    for t in targets:
        i = int(np.argmin(np.abs(resp[:, a] - t) + 1e3 * np.isin(np.arange(len(X)), bottles)))
        bottles.append(i)
    print(f"\n{int(100 * DEFAULTS['credible_mass'])}% credible intervals of p(component A | "
          "bottle) from posterior draws:")
    print("| bottle | malic acid | phenols | cultivar | EM resp. | VB mean | interval |")
    print("|---|---|---|---|---|---|---|")
    bottle_records = []
    for i in bottles:
        lo, hi = intervals["lower"][i, a_vb], intervals["upper"][i, a_vb]
        print(f"| {i} | {X[i, 0]:.2f} | {X[i, 1]:.2f} | {cultivar[i]} | {resp[i, a]:.3f} | "
              f"{intervals['mean'][i, a_vb]:.3f} | [{lo:.3f}, {hi:.3f}] |")
        bottle_records.append({"bottle": i, "malic_acid": float(X[i, 0]),
                               "total_phenols": float(X[i, 1]), "cultivar": int(cultivar[i]),
                               "em_responsibility": float(resp[i, a]),
                               "posterior_mean": float(intervals["mean"][i, a_vb]),
                               "lower": float(lo), "upper": float(hi)})

    # figures ------------------------------------------------------------------------------
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, cov_type in enumerate(args.covariance_types):
        type_rows = [r for r in rows if r["covariance_type"] == cov_type]
        axes[0].plot(ks, [r["bic"] for r in type_rows], "o-", color=f"C{i}", label=cov_type)
        axes[1].plot(ks, [r["elbo"] for r in type_rows], "o-", color=f"C{i}", label=cov_type)
    axes[0].set(xlabel="K", ylabel="BIC (lower is better)", title="EM")
    axes[1].set(xlabel="K", ylabel="full ELBO (nats, higher is better)",
                title="variational EM")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "model_selection.png", dpi=80)
    plt.close(fig)

    # 4. the four types' fitted ellipses, each at the K its full ELBO picks
    fig, axes = plt.subplots(1, len(args.covariance_types),
                             figsize=(3.6 * len(args.covariance_types), 3.6), squeeze=False)
    for ax, cov_type in zip(axes[0], args.covariance_types):
        k = best_by_type[cov_type]
        vb = vb_models[cov_type, k]
        plot_contours(ax, vb, X, cultivar,
                      f"{cov_type}, K = {k}: ELBO {vb.lower_bound_:.1f}")
    fig.tight_layout()
    fig.savefig(out / "covariance_types.png", dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    plot_contours(axes[0], em2, X, cultivar, f"EM, K = {k_story}")
    plot_contours(axes[1], vb2, X, cultivar, f"variational EM, K = {k_story}")
    fig.tight_layout()
    fig.savefig(out / "contours.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    sc = ax.scatter(X[:, 0], X[:, 1], c=resp[:, a], cmap="coolwarm", vmin=0, vmax=1, s=14)
    fig.colorbar(sc, ax=ax, label="p(component A | bottle)")
    for i in bottles:
        ax.annotate(str(i), X[i], fontsize=8)
    ax.set(title="E-step responsibilities (EM, K = 2)", xlabel=FEATURES[0],
           ylabel=FEATURES[1])
    fig.tight_layout()
    fig.savefig(out / "responsibilities.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    rec = sorted(bottle_records, key=lambda r: r["posterior_mean"])
    y = np.arange(len(rec))
    means = np.array([r["posterior_mean"] for r in rec])
    err = np.array([[m - r["lower"], r["upper"] - m] for m, r in zip(means, rec)]).T
    ax.errorbar(means, y, xerr=err, fmt="o", capsize=3, label="VB mean, 90% interval")
    ax.plot([r["em_responsibility"] for r in rec], y, "x", color="C3", label="EM responsibility")
    ax.set_yticks(y, [f"bottle {r['bottle']}" for r in rec])
    ax.set(xlim=(-0.02, 1.02), xlabel="p(component A | bottle)",
           title="how sure is a membership?")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "membership_intervals.png", dpi=80)
    plt.close(fig)

    # az.plot_compare of the four types, each at its best K by LOO (all 24 fits would not
    # fit one figure's labels)
    diagnostics.plot_compare(diagnostics.compare(
        {name: idatas[name] for name in loo_best_by_type.values()}), out / "loo_compare.png")
    diagnostics.plot_forest(idatas[f"full K={k_chosen}"], ["weights", "means"],
                            out / "forest.png", ci_prob=0.9,
                            title=f"variational posterior, full, K = {k_chosen} (90% interval)")

    metrics = {
        "features": FEATURES, "num_bottles": int(X.shape[0]), "seed": args.seed,
        "prior_type": args.prior_type, "n_init": args.n_init,
        "covariance_types": args.covariance_types,
        "table": full_rows, "best_k": full_best,  # full covariances, by K
        "types": rows,  # every type and K
        "best": {c: {"covariance_type": r["covariance_type"], "K": r["K"]}
                 for c, r in best.items()},
        "elbo_best_k_by_type": best_by_type,
        "story": {"K": k_story, "weights": em2.weights_.tolist(),
                  "means": em2.means_.tolist(), "component_a": a,
                  "credible_mass": DEFAULTS["credible_mass"], "bottles": bottle_records},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\nwrote {out}/metrics.json, inference_data.nc (full, K = {k_chosen}) and 8 figures")


if __name__ == "__main__":
    main()
