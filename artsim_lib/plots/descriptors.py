"""Stage 06's figures: similarity distributions per group, family correlations, example pairs,
param vs fitted weights. Each function returns the matplotlib Figure it drew."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from artsim_lib.plots.common import thumbnail

GROUP_ORDER = ["moderate", "radical", "negative: same_artist", "negative: same_style", "negative: random"]
GROUP_COLOURS = {
    "moderate": "#55A868",
    "radical": "#DD8452",
    "negative: same_artist": "#8172B3",
    "negative: same_style": "#4C72B0",
    "negative: random": "#937860",
}


def distinct_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (anchor, other, group): an anchor-positive pair is in every
    triplet of that positive, but should be counted once in a distribution."""
    return pairs.drop_duplicates(["anchor_path", "other_path", "group"])


def _groups(pairs: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(pairs["group"]))
    return [g for g in GROUP_ORDER if g in present] + [g for g in present if g not in GROUP_ORDER]


def family_distributions(pairs: pd.DataFrame, measures, ncols: int = 3):
    """A violin per group (moderate / radical derivatives, negatives by kind) for each measure."""
    data = distinct_pairs(pairs)
    groups = _groups(data)
    nrows = int(np.ceil(len(measures) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False, sharey=True)
    for ax in axes.flat[len(measures) :]:
        ax.axis("off")
    for ax, m in zip(axes.flat, measures):
        values = [data.loc[data["group"] == g, m].dropna().to_numpy() for g in groups]
        keep = [i for i, v in enumerate(values) if len(v)]
        parts = ax.violinplot([values[i] for i in keep], positions=keep, showmedians=True, widths=0.8)
        for body, i in zip(parts["bodies"], keep):
            body.set_facecolor(GROUP_COLOURS.get(groups[i], "#999999"))
            body.set_alpha(0.75)
        ax.set_xticks(
            range(len(groups)), [g.replace("negative: ", "neg: ") for g in groups], rotation=30, ha="right", fontsize=8
        )
        ax.set(title=m, ylim=(-0.02, 1.02))
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("similarity [0, 1]")
    fig.tight_layout()
    return fig


def family_correlation(pairs: pd.DataFrame, measures):
    """Spearman correlation between the measures over the distinct pairs, as a heatmap."""
    corr = distinct_pairs(pairs)[list(measures)].corr(method="spearman")
    fig, ax = plt.subplots(figsize=(1.0 * len(measures) + 2, 0.9 * len(measures) + 1.2))
    im = ax.imshow(corr.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(corr)), corr.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(corr)), corr.index)
    for (i, j), v in np.ndenumerate(corr.to_numpy()):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w" if abs(v) > 0.6 else "k")
    fig.colorbar(im, ax=ax, fraction=0.046, label="Spearman ρ")
    ax.set_title("How much the families agree")
    fig.tight_layout()
    return fig


def pick_example(pairs: pd.DataFrame, split: str = "test", measure: str = "descriptor") -> str:
    """The anchor of ``split`` (all splits when it has none) whose derivatives lose to a
    negative most often under ``measure``; ties go to the first id."""
    from artsim_lib.core.descriptor_similarity import triplet_scores

    part = pairs[pairs["split"] == split] if (pairs["split"] == split).any() else pairs
    t = triplet_scores(part, measure)
    errors = (t["s_pos"] <= t["s_neg"]).groupby(t["anchor_id"]).sum().sort_index()
    return str(errors.idxmax())


def example_panel(pairs: pd.DataFrame, anchor_id: str, families, total: str = "descriptor", thumb: int = 170):
    """An original beside its best and worst derivative of each level and its closest negative
    of each kind, sorted by ``total``; under each tile, every family's similarity."""
    rows = distinct_pairs(pairs[pairs["anchor_id"] == anchor_id]).sort_values(total, ascending=False)
    pos, neg = rows[rows["role"] == "positive"], rows[rows["role"] == "negative"]
    picks = pd.concat(
        [
            pos.groupby("level", sort=True).head(1),
            pos.groupby("level", sort=True).tail(1),
            neg.groupby("group", sort=True).head(1),
        ]
    )
    picks = picks.drop_duplicates("other_path").sort_values(total, ascending=False)
    n = len(picks) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 3.6), squeeze=False)
    axes[0, 0].imshow(thumbnail(rows["anchor_path"].iloc[0], thumb))
    axes[0, 0].set_title(textwrap.fill(f"original\n{anchor_id}", 24), fontsize=8)
    for ax, r in zip(axes[0, 1:], picks.itertuples()):
        ax.imshow(thumbnail(r.other_path, thumb))
        label = r.group if r.role == "negative" else f"{r.group} · {r.family} {r.strength:.2f}"
        scores = " ".join(f"{f[:3]} {getattr(r, f):.2f}" for f in families)
        ax.set_title(
            f"{textwrap.fill(label, 24)}\n{total} {getattr(r, total):.3f}",
            fontsize=8,
            color="#C44E52" if r.role == "negative" else "k",
        )
        ax.set_xlabel(textwrap.fill(scores, 24), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def weight_bars(param_weights: dict, fitted_weights: dict):
    """The param weights beside the weights fitted on the train split (both normalised)."""
    families = list(dict.fromkeys([*param_weights, *fitted_weights]))
    x = np.arange(len(families))
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.bar(x - 0.2, [param_weights.get(f, 0) for f in families], 0.4, label="params", color="#4C72B0")
    ax.bar(x + 0.2, [fitted_weights.get(f, 0) for f in families], 0.4, label="fitted (train)", color="#DD8452")
    ax.set_xticks(x, families)
    ax.set(ylabel="weight (sum 1)", title="Descriptor weights")
    ax.legend()
    fig.tight_layout()
    return fig
