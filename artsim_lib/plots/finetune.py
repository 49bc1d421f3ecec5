"""The figures of the training stages: the train/validation curves (07 and 08), and stage 07's
confusion matrix, per-class F1 and what its training augmentation does. Each function returns the
matplotlib Figure it drew."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from artsim_lib.models.image_batches import Augment, augment_image, open_rgb


def plot_history(
    history: pd.DataFrame,
    metrics: Iterable[str] = ("loss", "acc"),
    best_epoch: int | None = None,
    title: str | None = None,
):
    """Train and validation curves per epoch, one panel per metric (a column of ``history``);
    a dashed line marks ``best_epoch``. Returns the Figure."""
    metrics = [m for m in metrics if m in history.columns]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for split, part in history.groupby("split", sort=False):
            ax.plot(part["epoch"], part[metric], marker="o", ms=3, label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch, ls="--", c="k", lw=1, label=f"best (epoch {best_epoch})")
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(cm: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix (test)"):
    """Row-normalised confusion matrix with the counts written in the cells. Returns the Figure."""
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = 0.45 * len(classes) + 2.5
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, c="w" if share[i, j] > 0.5 else "k")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return fig


def plot_f1(per_class: dict[str, float], macro: float | None = None, title: str = "Per-class F1 (test)"):
    """Horizontal bars of per-class F1, the macro mean as a dashed line. Returns the Figure."""
    items = sorted(per_class.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(items) + 1.4))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4C72B0")
    if macro is not None:
        ax.axvline(macro, ls="--", c="k", lw=1, label=f"macro F1 {macro:.2f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(xlim=(0, 1), xlabel="F1", title=title)
    fig.tight_layout()
    return fig


def plot_augmentations(images: Sequence, size: int, n: int = 5, seed: int = 0):
    """Each image (row) beside ``n`` of its training augmentations at ``size``². Returns the Figure."""
    fig, axes = plt.subplots(len(images), n + 1, figsize=(1.7 * (n + 1), 1.8 * len(images)), squeeze=False)
    for r, image in enumerate(images):
        img = open_rgb(image)
        rng = np.random.default_rng([seed, r])
        tiles = [img] + [augment_image(img, size, rng, Augment()) for _ in range(n)]
        for c, (ax, tile) in enumerate(zip(axes[r], tiles)):
            ax.imshow(tile)
            ax.axis("off")
            if r == 0:
                ax.set_title("input" if c == 0 else f"augmented {c}", fontsize=8)
    fig.tight_layout()
    return fig
