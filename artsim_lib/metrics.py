"""The numbers stage 09 reports. Every function takes plain arrays, so each can be checked by hand.

Ties are never resolved in a measure's favour: ranks, recalls and reciprocal ranks are the
*expected* values under a random ordering of tied scores, so a constant measure scores exactly
what chance does, never a perfect 1.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats


def mse(a, b) -> float:
    """Mean squared error between two arrays of similarities in [0, 1]."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.mean((a - b) ** 2))


def mae(a, b) -> float:
    """Mean absolute error between two arrays of similarities in [0, 1]."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.mean(np.abs(a - b)))


def triplet_accuracy(s_pos, s_neg) -> float:
    """Share of triplets whose positive scores strictly above the negative (a tie counts half)."""
    s_pos, s_neg = np.asarray(s_pos, float), np.asarray(s_neg, float)
    return float(np.mean((s_pos > s_neg) + 0.5 * (s_pos == s_neg))) if len(s_pos) else float("nan")


def _greater_and_ties(sim: np.ndarray, true_idx: np.ndarray, exclude: np.ndarray | None):
    """Per query: how many candidates score strictly above the true one, and how many tie with it."""
    sim = np.asarray(sim, float)
    q = np.arange(len(sim))
    true_score = sim[q, true_idx][:, None]                       # [Q, 1]
    valid = np.ones_like(sim, bool) if exclude is None else ~np.asarray(exclude, bool)
    valid[q, true_idx] = True                                    # never exclude the answer itself
    greater = ((sim > true_score) & valid).sum(1)                # [Q]
    ties = ((sim == true_score) & valid).sum(1) - 1              # [Q], the answer itself left out
    return greater, ties


def expected_ranks(sim, true_idx, exclude=None) -> np.ndarray:
    """1-based rank of each query's true item, averaged over random orderings of ties. # [Q]"""
    greater, ties = _greater_and_ties(sim, np.asarray(true_idx), exclude)
    return 1 + greater + ties / 2


def recall_at_k(sim, true_idx, k: int, exclude=None) -> float:
    """Expected share of queries whose true item is within the top ``k``."""
    greater, ties = _greater_and_ties(sim, np.asarray(true_idx), exclude)
    hit = np.clip((k - greater) / (ties + 1), 0, 1)              # chance the answer lands in the top k
    return float(hit.mean())


def mean_reciprocal_rank(sim, true_idx, exclude=None) -> float:
    """Expected 1/rank averaged over queries; with one relevant item this is also mAP."""
    greater, ties = _greater_and_ties(sim, np.asarray(true_idx), exclude)
    rr = [np.mean(1.0 / (g + np.arange(1, t + 2))) for g, t in zip(greater, ties)]
    return float(np.mean(rr))


def retrieval_metrics(sim, true_idx, ks: Sequence[int] = (1, 5, 10), exclude=None) -> dict:
    """R@k, median rank and mAP (= MRR, one relevant item per query) in one dict."""
    out = {f"R@{k}": recall_at_k(sim, true_idx, k, exclude) for k in ks}
    out["median_rank"] = float(np.median(expected_ranks(sim, true_idx, exclude)))
    out["mAP"] = mean_reciprocal_rank(sim, true_idx, exclude)
    return out


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (Mann–Whitney U with tied scores counted half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)                               # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(x, y) -> float:
    """Spearman rank correlation (nan when either side is constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def moderate_above_radical(df: pd.DataFrame, score: str = "score", by: str = "original_id") -> float:
    """Share of originals whose moderate derivative scores above their radical one (ties half)."""
    wide = df.pivot_table(index=by, columns="level", values=score, aggfunc="mean")
    if not {"moderate", "radical"} <= set(wide.columns):
        return float("nan")
    wide = wide.dropna(subset=["moderate", "radical"])
    if wide.empty:
        return float("nan")
    return triplet_accuracy(wide["moderate"], wide["radical"])


def monotonicity(df: pd.DataFrame, score: str = "score", family: str = "family",
                 strength: str = "strength") -> pd.DataFrame:
    """Per transformation family: Spearman(similarity, strength) — negative is right, a
    stronger change should look less similar — and the share of consecutive strength
    steps where the mean similarity falls."""
    rows = []
    for fam, grp in df.groupby(family, sort=True):
        means = grp.groupby(strength)[score].mean().sort_index().to_numpy()
        steps = np.diff(means)
        rows.append({family: fam, "spearman": spearman(grp[strength], grp[score]),
                     "falling_steps": float(np.mean(steps < 0)) if len(steps) else float("nan"),
                     "levels": len(means), "pairs": len(grp)})
    return pd.DataFrame(rows)


def bootstrap_ci(fn: Callable[[pd.DataFrame], float], df: pd.DataFrame, groups: str | None = None,
                 n: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """``fn(df)`` with a percentile bootstrap (1-alpha) interval. With ``groups`` the resampling
    draws whole groups (e.g. every pair of one original), since those rows are not independent."""
    point = fn(df)
    rng = np.random.default_rng(seed)
    if groups is None:
        draws = (df.iloc[rng.integers(0, len(df), len(df))] for _ in range(n))
    else:
        parts = [g for _, g in df.groupby(groups, sort=True)]
        draws = (pd.concat([parts[i] for i in rng.integers(0, len(parts), len(parts))]) for _ in range(n))
    values = np.array([fn(d) for d in draws], float)
    values = values[np.isfinite(values)]
    if not len(values):
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)
