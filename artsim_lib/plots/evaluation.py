"""Stage 09's figures, from an :class:`artsim_lib.stages.s09_evaluation.EvalResult`. Each returns its Figure.
Also the images of notebook 08's heatmaps (:func:`pick_triplet_heatmap_images`)."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from artsim_lib.plots.common import thumbnail
from artsim_lib.plots.descriptors import GROUP_COLOURS, GROUP_ORDER

KIND_STYLE = {
    "random": ("o", "#937860"),
    "same_style": ("s", "#4C72B0"),
    "same_artist": ("D", "#8172B3"),
    "all": ("o", "#4C72B0"),
    "dedup": ("s", "#DD8452"),
    "hard": ("D", "#8172B3"),
    "aspect": ("^", "#55A868"),
    "copy": ("o", "#C44E52"),
}


def _grid(n: int, ncols: int, w: float, h: float, **kw):
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, **kw)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def forest(result, panels=None):
    """Point estimates and 95% intervals of the main metrics, one row per measure, chance dashed."""
    panels = panels or [
        ("µAP", ("copy",), "copy detection µAP (global ranking)", "µAP copy"),
        ("triplet_acc", ("random", "same_style", "same_artist"), "triplet accuracy", "acc random"),
        (
            "triplet_acc_query",
            ("random", "same_style", "same_artist"),
            "triplet accuracy, query-anchored",
            "acc random",
        ),
        ("R@1", ("all", "dedup", "aspect"), "retrieval R@1", "R@1"),
        ("auc", ("hard",), "verification ROC-AUC, hard negatives", "AUC hard"),
    ]
    m = result.metrics
    names = list(dict.fromkeys(m["measure"]))[::-1]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 0.36 * len(names) + 1.6), sharey=True)
    for ax, (metric, subsets, title, chance_col) in zip(np.atleast_1d(axes), panels):
        for k, subset in enumerate(subsets):
            rows = m[(m["metric"] == metric) & (m["subset"] == subset)].set_index("measure").reindex(names)
            y = np.arange(len(names)) + (k - (len(subsets) - 1) / 2) * 0.22
            marker, colour = KIND_STYLE.get(subset, ("o", "k"))
            err = np.abs(np.vstack([rows["value"] - rows["lo"], rows["hi"] - rows["value"]]))
            ax.errorbar(
                rows["value"],
                y,
                xerr=np.nan_to_num(err),
                fmt=marker,
                color=colour,
                ms=4,
                lw=1,
                capsize=2,
                label=subset.replace("_", " "),
            )
        chance = result.chance().get(chance_col, np.nan)
        if chance is not None and np.isfinite(chance):
            ax.axvline(chance, ls="--", c="k", lw=0.8)
        ax.set(title=title, xlim=(-0.02, 1.02))
        ax.grid(axis="x", alpha=0.3)
        if len(subsets) > 1:
            ax.legend(fontsize=7, loc="lower left")
    np.atleast_1d(axes)[0].set_yticks(range(len(names)), names, fontsize=8)
    fig.suptitle(
        f"Test split: {len(result.es.originals)} originals, {len(result.es.derivatives)} derivatives "
        f"(95% intervals resample originals; dashed: chance)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def pair_groups(result, name: str) -> pd.DataFrame:
    """Distinct scored pairs of the test triplets: group (moderate / radical / negative: kind) and s01."""
    t = result.tables[name]["triplets"]
    pos = t.drop_duplicates("positive_id").assign(group=lambda d: d["level"], s01=lambda d: d["s_pos01"])
    neg = t.drop_duplicates(["anchor_id", "negative_id", "negative_kind"]).assign(
        group=lambda d: "negative: " + d["negative_kind"], s01=lambda d: d["s_neg01"]
    )
    return pd.concat([pos, neg], ignore_index=True)[["group", "s01", "style"]]


def score_distributions(result, ncols: int = 4):
    """Small multiples: each measure's [0, 1] scores per pair type (derivatives by level, negatives by kind)."""
    names = list(result.tables)
    fig, axes = _grid(len(names), ncols, 3.6, 2.9, sharey=True)
    for ax, name in zip(axes, names):
        data = pair_groups(result, name)
        groups = [g for g in GROUP_ORDER if g in set(data["group"])]
        values = [data.loc[data["group"] == g, "s01"].to_numpy() for g in groups]
        box = ax.boxplot(values, positions=range(len(groups)), widths=0.6, patch_artist=True, showfliers=False)
        for patch, g in zip(box["boxes"], groups):
            patch.set(facecolor=GROUP_COLOURS.get(g, "#999"), alpha=0.7)
        for i, v in enumerate(values):  # every pair as a dot: the test split is small
            ax.scatter(i + np.random.default_rng(i).uniform(-0.2, 0.2, len(v)), v, s=3, c="k", alpha=0.35)
        ax.set_xticks(
            range(len(groups)),
            [g.replace("negative: ", "neg ").replace("_", " ") for g in groups],
            rotation=35,
            ha="right",
            fontsize=7,
        )
        ax.set(title=name, ylim=(-0.03, 1.03))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _originals_and_derivatives(chosen, path: str = "path") -> tuple[list[str], list[str]]:
    """Image paths and labels of the heatmaps: each of ``chosen`` (the original's path, its label,
    its derivatives' rows: ``level``, ``family``, ``path``), lettered A, B, ..., followed by its first
    moderate and its first radical derivative."""
    paths, labels = [], []
    for letter, (orig_path, label, mine) in zip("ABCDEFGHIJ", chosen):
        paths.append(orig_path)
        labels.append(f"{letter} {label}")
        for level in ("moderate", "radical"):
            d = mine[mine["level"] == level].head(1)
            paths += list(d[path])
            labels += [f"{letter} {level} {f}" for f in d["family"]]
    return paths, labels


def pick_heatmap_images(result, n_originals: int = 3, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n_originals`` test originals of different styles, each followed by a moderate and a radical
    derivative (seeded): image paths and labels."""
    es = result.es
    seed = seed % 2**32
    orig = es.originals.drop_duplicates("style").sample(frac=1, random_state=seed).head(n_originals)
    chosen = (
        (o.path, "original", es.derivatives[es.derivatives["original_id"] == o.id].sample(frac=1, random_state=seed))
        for o in orig.itertuples()
    )
    return _originals_and_derivatives(chosen)


def pick_triplet_heatmap_images(
    triplets: pd.DataFrame, n_originals: int = 4, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Notebook 08's heatmap images, from stage 05's triplets: ``n_originals`` test originals of
    different styles in a seeded mix of derivatives, each followed by a moderate and a radical
    derivative of its own: image paths and labels (the original's label names its style)."""
    test_pairs = (
        triplets[triplets["split"] == "test"].drop_duplicates("positive_id").sample(frac=1, random_state=seed)
    )  # a seeded mix of derivative families
    chosen = test_pairs.drop_duplicates("style")["anchor_id"].head(n_originals)
    mine = (test_pairs[test_pairs["anchor_id"] == oid] for oid in chosen)
    return _originals_and_derivatives(
        ((m["anchor_path"].iloc[0], f"original ({m['style'].iloc[0][:12]})", m) for m in mine), "positive_path"
    )


def similarity_heatmaps(result, names, n_originals: int = 3, seed: int = 0):
    """The [0, 1] similarity of a few test originals and their derivatives, one panel per measure."""
    paths, labels = pick_heatmap_images(result, n_originals, seed)
    names = [n for n in names if n in result.measures]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names) + 1, 5.2), squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names):
        sim = result.measures[name].matrix(paths, normalised=True)  # [n, n], a handful of images
        im = ax.imshow(sim, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(sim):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5.5, color="w" if v < 0.6 else "k")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels if ax is axes[0, 0] else [""] * len(labels), fontsize=6)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02, label="similarity [0, 1]")
    return fig


def retrieval_cases(result, name: str, n_worst: int = 3) -> pd.DataFrame:
    """A query ranked first (a success, when there is one) and the ``n_worst`` worst-ranked queries of ``name``."""
    q = result.tables[name]["queries"].assign(q=np.arange(len(result.es.queries)))
    worst = q.sort_values(["rank", "q"], ascending=[False, True]).head(n_worst)
    typical = q[q["rank"] == q["rank"].min()].head(1)
    return pd.concat([typical, worst]).drop_duplicates("q")


def retrieval_examples(result, name: str, n_worst: int = 3, top: int = 5, thumb: int = 96):
    """Each row: the query derivative, the ``top`` gallery originals under ``name`` (the true one framed
    green) and the true original with its rank. Ties are shown in gallery order."""
    es, sim = result.es, result.tables[name]["retrieval"]
    cases = retrieval_cases(result, name, n_worst)
    fig, axes = plt.subplots(len(cases), top + 2, figsize=(1.45 * (top + 2), 1.75 * len(cases)), squeeze=False)
    gallery = es.originals.iloc[es.gallery].reset_index(drop=True)
    for row, case in zip(axes, cases.itertuples()):
        d = es.derivatives.iloc[es.queries[case.q]]
        order = np.argsort(-sim[case.q], kind="stable")[:top]
        tiles = [(d.path, f"query · {d.level}\n{d.family} {d.strength:g}", "k")]
        tiles += [
            (gallery.path[j], f"#{k + 1} · {sim[case.q, j]:.2f}", "#2CA02C" if j == es.truth[case.q] else "k")
            for k, j in enumerate(order)
        ]
        tiles.append((gallery.path[es.truth[case.q]], f"true · rank {case.rank:g}", "#2CA02C"))
        for ax, (path, label, colour) in zip(row, tiles):
            ax.imshow(thumbnail(path, thumb))
            ax.set_title(label, fontsize=6.5, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set(color=colour, linewidth=2.5 if colour != "k" else 0.5)
    fig.suptitle(f"{name}: each derivative queries the {len(es.gallery)} test originals", fontsize=9)
    fig.tight_layout()
    return fig


def example_pairs(result, pair_ids, captions: pd.DataFrame | None = None, thumb: int = 150):
    """Slides like the original study's: original | derivative, the caption and prompt, every measure's score."""
    der = result.es.derivatives.set_index("pair_id")
    orig = result.es.originals.set_index("id")
    caption = captions.set_index("id")["caption"] if captions is not None else pd.Series(dtype=str)
    fig, axes = plt.subplots(
        len(pair_ids), 3, figsize=(11, 2.6 * len(pair_ids)), squeeze=False, gridspec_kw={"width_ratios": [1, 1, 2.2]}
    )
    for row, pid in zip(axes, pair_ids):
        d = der.loc[pid]
        row[0].imshow(thumbnail(orig.loc[d.original_id, "path"], thumb))
        row[0].set_title(textwrap.fill(f"original · {d.style}", 30), fontsize=7)
        row[1].imshow(thumbnail(d.path, thumb))
        row[1].set_title(f"derivative · {d.level} · {d.family} {d.strength:g}", fontsize=7)
        scores = {n: float(t["derivatives"].set_index("pair_id").loc[pid, "s01"]) for n, t in result.tables.items()}
        prompt = d.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            prompt = f"(no prompt: {d.backend} {d.get('op', d.family)} at strength {d.strength:g})"
        text = (
            f"caption: {textwrap.fill(str(caption.get(d.original_id, '—')), 70)}\n"
            f"prompt: {textwrap.fill(str(prompt), 70)}\n\n"
            + "\n".join(f"{n:<18} {v:5.3f}  {'█' * int(round(v * 20))}" for n, v in scores.items())
        )
        row[2].text(0, 1, text, va="top", ha="left", family="monospace", fontsize=6.5, transform=row[2].transAxes)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig


def style_bars(result, metric: str = "triplet_acc", ncols: int = 4):
    """Small multiples: ``metric`` per style for each measure; dashed: the measure over all styles."""
    ps = result.per_style
    names = list(dict.fromkeys(ps["measure"]))
    styles = sorted(ps["style"].unique())
    fig, axes = _grid(len(names), ncols, 3.4, 0.22 * len(styles) + 1.2, sharex=True, sharey=True)
    for ax, name in zip(axes, names):
        part = ps[ps["measure"] == name].set_index("style").reindex(styles)
        ax.barh(range(len(styles)), part[metric], color="#4C72B0")
        overall = result.tables[name]["triplets"]
        if metric.startswith("triplet_acc"):
            t = overall if metric == "triplet_acc" else overall[overall["negative_kind"] != "random"]
            acc = np.mean((t["s_pos"] > t["s_neg"]) + 0.5 * (t["s_pos"] == t["s_neg"]))  # ties count half
            ax.axvline(float(acc), ls="--", c="k", lw=0.8)
        ax.set_yticks(range(len(styles)), [textwrap.shorten(s.replace("_", " "), 20) for s in styles], fontsize=6.5)
        ax.set(title=name, xlim=(0, 1.02))
        ax.title.set_fontsize(8)
    fig.supxlabel(f"{metric.replace('_', ' ')} per style of the original", fontsize=9)
    fig.tight_layout()
    return fig


def strength_curves(result, names=None):
    """The ``augment`` calibration set: mean [0, 1] score against strength, per family (panels) and measure."""
    names = names or list(result.tables)
    der = pd.concat([t["derivatives"].assign(measure=n) for n, t in result.tables.items() if n in names])
    der = der[der["backend"] == "augment"]
    families = sorted(der["family"].unique())
    fig, axes = _grid(len(families), len(families), 3.6, 3.3, sharey=True)
    cmap = plt.get_cmap("tab10")
    for ax, fam in zip(axes, families):
        curves = der[der["family"] == fam].groupby(["measure", "strength"])["s01"].mean().unstack(0)
        for i, n in enumerate(names):
            if n in curves:
                ax.plot(curves.index, curves[n], marker="o", ms=3, color=cmap(i % 10), label=n)
        ax.set(title=fam, xlabel="strength", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean similarity [0, 1]")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(names), 7), fontsize=7)
    return fig
