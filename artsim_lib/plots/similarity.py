"""The figure of a similarity table: every pair of a set of images as a heatmap (``artsim matrix``,
notebook 08). Returns the matplotlib Figure it drew."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_matrix(table: pd.DataFrame, title: str):
    """A heatmap of a similarity table (values annotated when there are few images)."""
    n = len(table)
    side = min(14.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(table.to_numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), table.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(n), table.index, fontsize=7)
    if n <= 16:
        for (i, j), v in np.ndenumerate(table.to_numpy()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    fig.colorbar(im, ax=ax, fraction=0.046, label="similarity [0, 1]")
    ax.set_title(title)
    fig.tight_layout()
    return fig
