"""Seeded train/val/test splits: stratified by a column, or grouped (every artist in one split)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def stratified_split(df: pd.DataFrame, fractions: dict[str, float], by: str | None, seed: int) -> pd.Series:
    """A seeded train/val/test label per row, stratified by column ``by`` (or none).

    Every group with at least one row keeps one in train; rounding follows largest remainders
    so the shares stay close to ``fractions`` in small groups too.
    """
    rng = np.random.default_rng(seed)
    names = list(fractions)
    split = pd.Series(index=df.index, dtype="object")
    groups = df.groupby(df[by].fillna("<none>") if by else np.zeros(len(df)), sort=True)
    for _, grp in groups:
        n = len(grp)
        raw = np.array([fractions[k] * n for k in names])
        counts = np.floor(raw).astype(int)
        for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
            counts[i] += 1
        if counts[0] == 0:  # names[0] is train: never leave a class out of training
            counts[np.argmax(counts)] -= 1
            counts[0] += 1
        order = rng.permutation(grp.index.to_numpy())
        split.loc[order] = np.repeat(names, counts)
    keys = df[by].fillna("<none>") if by else pd.Series(0, index=df.index)
    return _fill_starved_splits(split, keys, fractions, rng)


def _fill_starved_splits(
    split: pd.Series, keys: pd.Series, fractions: dict[str, float], rng: np.random.Generator
) -> pd.Series:
    """Per-group rounding starves val and test when most groups are tiny (a pilot of 24 paintings
    over 27 styles puts every one in train). A split under half its overall share (rounded down,
    at least 1) gets rows moved from train until it has that share: from the groups with the most
    training rows first, a seeded pick among them. Larger data never meets this."""
    names = list(fractions)
    for name in names[1:]:
        if fractions[name] <= 0:
            continue
        want = max(1, int(np.floor(fractions[name] * len(split))))
        if (split == name).sum() * 2 >= want:
            continue
        while (split == name).sum() < want:
            train = split.index[split == names[0]]
            if len(train) <= 1:
                break
            per_group = keys[train].map(keys[train].value_counts()).to_numpy()
            # the groups with the most training rows first: a group keeps a training row if it can
            split[rng.choice(train[per_group == per_group.max()])] = name
    return split


# -- splits by artist, and near-copies across splits ----------------------------------------------------
def grouped_split(
    df: pd.DataFrame, fractions: dict[str, float], group: str, seed: int, by: str | None = None
) -> pd.Series:
    """A seeded split label per row that keeps every ``group`` (e.g. artist) whole: groups in a
    seeded order, largest first, each to the split furthest below its share of rows. A row without
    a group value is its own group. With ``by`` (e.g. style), each class first gets one group in
    train, so that no class is left out of training."""
    names = list(fractions)
    keys = df[group].astype("string").fillna("").to_numpy(object)
    keys = np.where(keys == "", "<row " + df.index.astype(str).to_numpy(object) + ">", keys)
    sizes = pd.Series(keys).value_counts()
    rng = np.random.default_rng(seed)
    order = sizes.index.to_numpy(object)[rng.permutation(len(sizes))]
    order = sorted(order, key=lambda k: -sizes[k])  # stable: ties keep the seeded order
    target = np.array([fractions[k] for k in names]) * len(df)
    have = np.zeros(len(names))
    label = {}
    if by is not None:  # one group per class into train first (the class's largest, seeded ties)
        cls = pd.Series(df[by].astype("string").fillna("<none>").to_numpy(object), index=keys)
        classes_of = cls.groupby(level=0).agg(set)  # group -> its classes
        for c in sorted(set(cls)):
            if any(c in classes_of[k] for k, v in label.items() if v == names[0]):
                continue
            k = next(k for k in order if c in classes_of[k])
            label[k] = names[0]
            have[0] += sizes[k]
    for k in order:
        if k in label:
            continue
        i = int(np.argmax((target - have) / np.maximum(target, 1e-9)))  # the most under-filled split
        label[k] = names[i]
        have[i] += sizes[k]
    return pd.Series([label[k] for k in keys], index=df.index, dtype="object")
