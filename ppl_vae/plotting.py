"""Figures shared by both backends (matplotlib and NumPy only, no torch or jax).

Every function takes NumPy arrays and writes a PNG, so the examples draw the same figures
whatever backend trained the model.
"""

import math

import numpy as np

__all__ = ["image_grid", "save_image_grid", "save_elbo_curves"]


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


def save_image_grid(path, images, title, image_shape=(28, 28), ncols=10):
    """Write a grid of images to ``path`` (PNG)."""
    plt = _pyplot()
    grid = image_grid(images, image_shape, ncols)
    fig, ax = plt.subplots(figsize=(ncols * 0.6, grid.shape[0] / grid.shape[1] * ncols * 0.6 + 0.5))
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
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
