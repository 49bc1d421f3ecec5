"""Figures the notebooks show. Each function returns the matplotlib Figure it drew."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from artsim_lib.io.images import DEFAULT_MAX_PIXELS, ImageReadError, open_rgb


def bar_counts(values: pd.Series, title: str, top: int | None = 30, ax=None, color="#4C72B0"):
    """A horizontal bar chart of value counts (missing values shown as '<missing>')."""
    counts = values.fillna("<missing>").astype(str).value_counts()
    if top:
        counts = counts.head(top)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(counts) + 1.2))
    ax.barh(counts.index[::-1], counts.to_numpy()[::-1], color=color)
    ax.set_title(title)
    ax.set_xlabel("images")
    for y, v in enumerate(counts.to_numpy()[::-1]):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    return fig or ax.figure


def size_distributions(df: pd.DataFrame, target: int | None = None):
    """Width/height scatter (log scale), the long-side histogram and the aspect ratios."""
    w = pd.to_numeric(df["width"], errors="coerce")
    h = pd.to_numeric(df["height"], errors="coerce")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].scatter(w, h, s=12, alpha=0.7)
    axes[0].set(xscale="log", yscale="log", xlabel="width (px)", ylabel="height (px)", title="Image sizes")
    axes[1].hist(np.maximum(w, h).dropna(), bins=30, color="#55A868")
    axes[1].set(xlabel="longest side (px)", ylabel="images", title="Longest side")
    axes[2].hist((w / h).dropna(), bins=30, color="#C44E52")
    axes[2].set(xlabel="aspect ratio (width / height)", ylabel="images", title="Aspect ratio")
    if target:
        for ax in axes[:1]:
            ax.axvline(target, ls="--", c="k", lw=1)
            ax.axhline(target, ls="--", c="k", lw=1)
        axes[1].axvline(target, ls="--", c="k", lw=1, label=f"target {target}px")
        axes[1].legend()
    fig.tight_layout()
    return fig


BROKEN_TILE = (200, 0, 0)


def thumbnail(path: str, size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB thumbnail no larger than ``size``, read as every stage reads images
    (:func:`artsim_lib.io.images.open_rgb`). A file that cannot be read (corrupt, missing, over
    ``max_pixels``) gets a red tile, so the grid shows what is broken instead of failing."""
    try:
        im = open_rgb(path, max_pixels)
    except ImageReadError:
        return Image.new("RGB", (size, size), BROKEN_TILE)
    im.thumbnail((size, size))
    return im


def image_grid(
    image_paths: Sequence[str],
    labels: Sequence[str] = (),
    ncols: int = 6,
    thumb: int = 160,
    title: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
):
    """A grid of thumbnails with a caption under each (unreadable files: a red tile)."""
    n = len(image_paths)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, path) in enumerate(zip(axes.flat, image_paths)):
        ax.imshow(thumbnail(path, thumb, max_pixels))
        if i < len(labels):
            ax.set_title(textwrap.fill(str(labels[i]), 24), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def before_after(
    pairs: Sequence[tuple[str, str]],
    labels: Sequence[str] = (),
    thumb: int = 200,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
):
    """Original (top) and its preprocessed version (bottom), column by column."""
    fig, axes = plt.subplots(2, len(pairs), figsize=(2.4 * len(pairs), 5), squeeze=False)
    for j, (src, dst) in enumerate(pairs):
        for i, p in enumerate((src, dst)):
            axes[i, j].imshow(thumbnail(p, thumb, max_pixels))
            axes[i, j].axis("off")
        if j < len(labels):
            axes[0, j].set_title(textwrap.fill(str(labels[j]), 24), fontsize=7)
    axes[0, 0].text(-0.1, 0.5, "original", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "preprocessed", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    return fig


def split_counts(manifest: pd.DataFrame, by: str = "style"):
    """Stacked bars: images per class and split."""
    table = manifest.groupby([by, "split"]).size().unstack(fill_value=0)
    table = table[[c for c in ("train", "val", "test") if c in table.columns]]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(table) + 1.5))
    table.plot.barh(stacked=True, ax=ax, color=["#4C72B0", "#DD8452", "#55A868"][: table.shape[1]])
    ax.set(xlabel="images", ylabel=by, title=f"Train/val/test split per {by}")
    fig.tight_layout()
    return fig
