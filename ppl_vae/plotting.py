"""Figures shared by both backends (matplotlib and NumPy only, no torch or jax).

Every function takes NumPy arrays and writes a PNG, so the examples draw the same figures
whatever backend trained the model.
"""

import math

import numpy as np

__all__ = ["image_grid", "save_image_grid", "save_elbo_curves", "save_latent_figure",
           "save_is_vs_ais"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def image_grid(images, image_shape=(28, 28), ncols=10, pad=1):
    """Tile ``images`` ``(N, H*W)`` with values in [0, 1] into one ``(rows*(H+pad), ...)`` array."""
    images = np.asarray(images, dtype=np.float32).reshape(-1, *image_shape)
    n = len(images)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    h, w = image_shape
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return grid


def save_image_grid(path, images, title, image_shape=(28, 28), ncols=10, cmap="gray_r"):
    """Write a grid of images to ``path`` (PNG).

    :param cmap: ``"gray_r"`` (default) draws 1 black on white, like ink strokes and
        silhouettes; use ``"gray"`` for grey-level photographs (faces, tissue), which would
        otherwise come out as negatives.
    """
    plt = _pyplot()
    grid = image_grid(images, image_shape, ncols)
    fig, ax = plt.subplots(figsize=(ncols * 0.6, grid.shape[0] / grid.shape[1] * ncols * 0.6 + 0.5))
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_elbo_curves(path, histories, title="Training curves"):
    """``histories``: ``{label: history}`` with ``fit``'s per-epoch dicts. Left: training
    loss (negative beta-ELBO per example); right: validation ELBO (nats per example)."""
    plt = _pyplot()
    fig, (ax_train, ax_valid) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, history in histories.items():
        epochs = [h["epoch"] for h in history]
        ax_train.plot(epochs, [-h["train_loss"] for h in history], label=label)
        valid = [(h["epoch"], h["valid_elbo"]) for h in history if h["valid_elbo"] is not None]
        if valid:
            ax_valid.plot(*zip(*valid), label=label)
    ax_train.set(xlabel="epoch", ylabel="training objective (beta-ELBO, nats)",
                 title="train (with KL warm-up)")
    ax_valid.set(xlabel="epoch", ylabel="ELBO (nats per image)", title="validation ELBO")
    for ax in (ax_train, ax_valid):
        ax.grid(alpha=0.3)
        ax.legend()
        lo = [line.get_ydata() for line in ax.get_lines()]
        if lo:
            # The first epochs are far below the rest; zoom on the informative range.
            finals = np.concatenate([np.asarray(y)[len(y) // 5:] for y in lo])
            if finals.size:
                ax.set_ylim(finals.min() - 5, finals.max() + 5)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_latent_figure(path, codes, clusters, labels=None, prior_locs=None, cluster_means=None,
                       title="latent means"):
    """Latent means ``codes`` (N, L) projected on their first two principal axes: coloured by
    digit label (left, when ``labels`` are known) and by mixture cluster (right), with the
    prior's components (``prior_locs`` (K, L), e.g. the VampPrior's encoded pseudo-inputs)
    and the fitted clusters' means (``cluster_means``) in the same projection."""
    plt = _pyplot()
    codes = np.asarray(codes, dtype=np.float64)
    centre = codes.mean(0)
    _, _, vt = np.linalg.svd(codes - centre, full_matrices=False)
    project = lambda a: (np.asarray(a, dtype=np.float64) - centre) @ vt[:2].T  # noqa: E731
    xy = project(codes)
    panels = ([("digit label", labels)] if labels is not None else []) + [("GMM cluster", clusters)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (name, colour) in zip(axes[0], panels):
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="tab10", s=6, alpha=0.7)
        if prior_locs is not None:
            pl = project(prior_locs)
            ax.scatter(pl[:, 0], pl[:, 1], marker="x", c="k", s=12, linewidths=0.7,
                       alpha=0.5, label="prior components")
        if cluster_means is not None and name == "GMM cluster":
            cm = project(cluster_means)
            ax.scatter(cm[:, 0], cm[:, 1], marker="*", c="red", s=120, edgecolors="k",
                       label="GMM means")
        ax.set(title=f"coloured by {name}", xlabel="PC 1", ylabel="PC 2")
        fig.colorbar(sc, ax=ax, fraction=0.046)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_is_vs_ais(path, log_px, ais_log_px, khat, title):
    """Per test image, the AIS estimate of log p(x) against the importance-sampling one,
    coloured by the Pareto k-hat of the IS weights (left), and their difference against k-hat
    (right; above 0: AIS found probability mass that IS missed)."""
    plt = _pyplot()
    log_px, ais_log_px, khat = (np.asarray(a, dtype=np.float64)
                                for a in (log_px, ais_log_px, khat))
    gap = ais_log_px - log_px
    finite = np.isfinite(khat)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    points = left.scatter(log_px, ais_log_px, c=np.where(finite, khat, np.nan), s=10,
                          cmap="viridis", vmin=0.0, vmax=max(1.0, np.nanmax(khat[finite]))
                          if finite.any() else 1.0)
    low, high = np.min([log_px, ais_log_px]), np.max([log_px, ais_log_px])
    left.plot([low, high], [low, high], color="k", lw=0.8, label="AIS = IS")
    left.set(xlabel="log p(x), importance sampling", ylabel="log p(x), AIS")
    left.legend(loc="upper left")
    fig.colorbar(points, ax=left, label="k-hat of the IS weights")
    right.scatter(khat, gap, s=10, color="tab:blue")
    right.axhline(0.0, color="k", lw=0.8)
    right.axvline(0.7, color="tab:red", lw=0.8, ls="--", label="k-hat = 0.7")
    right.set(xlabel="k-hat of the IS weights", ylabel="AIS - IS (nats)")
    right.legend(loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
