"""The numbers stage 09 reports. Every function takes plain arrays, so each can be checked by hand.

Ties are never resolved in a measure's favour: ranks, recalls and reciprocal ranks are the
*expected* values under a random ordering of tied scores, so a constant measure scores exactly
what chance does, never a perfect 1. A NaN score ranks below every number (a NaN answer is
ranked last, never first); :func:`count_nan` says how many there were.

Intervals: :func:`grouped_bootstrap` (percentile or BCa, resampling whole originals),
:func:`paired_difference` (two measures on the same resampled originals), and the exact
:func:`clopper_pearson` interval for proportions, which holds at small ``n`` and near 0 or 1
where a bootstrap collapses to a point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def _nan_last(x) -> np.ndarray:
    """``x`` as floats with NaN as -inf: it ranks below every number and ties only with NaN."""
    x = np.asarray(x, float)
    return np.where(np.isnan(x), -np.inf, x)


def count_nan(x) -> int:
    """How many scores are NaN (reported beside the metrics they were ranked last in)."""
    return int(np.isnan(np.asarray(x, float)).sum())


def triplet_accuracy(s_pos, s_neg) -> float:
    """Share of triplets whose positive scores strictly above the negative (a tie counts half;
    a NaN loses to any number and ties with NaN)."""
    s_pos, s_neg = _nan_last(s_pos), _nan_last(s_neg)
    return float(np.mean((s_pos > s_neg) + 0.5 * (s_pos == s_neg))) if len(s_pos) else float("nan")


def _greater_and_ties(sim: np.ndarray, true_idx: np.ndarray, exclude: np.ndarray | None):
    """Per query: how many candidates score strictly above the true one, and how many tie with it."""
    sim = _nan_last(sim)  # a NaN never outranks anything
    q = np.arange(len(sim))
    true_score = sim[q, true_idx][:, None]  # [Q, 1]
    valid = np.ones_like(sim, bool) if exclude is None else ~np.asarray(exclude, bool)
    valid[q, true_idx] = True  # never exclude the answer itself
    greater = ((sim > true_score) & valid).sum(1)  # [Q]
    ties = ((sim == true_score) & valid).sum(1) - 1  # [Q], the answer itself left out
    return greater, ties


def expected_ranks(sim, true_idx, exclude=None) -> np.ndarray:
    """1-based rank of each query's true item, averaged over random orderings of ties. # [Q]"""
    greater, ties = _greater_and_ties(sim, np.asarray(true_idx), exclude)
    return 1 + greater + ties / 2


def recall_at_k(sim, true_idx, k: int, exclude=None) -> float:
    """Expected share of queries whose true item is within the top ``k``."""
    greater, ties = _greater_and_ties(sim, np.asarray(true_idx), exclude)
    hit = np.clip((k - greater) / (ties + 1), 0, 1)  # chance the answer lands in the top k
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
    scores, labels = _nan_last(scores), np.asarray(labels, bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(x, y) -> float:
    """Spearman rank correlation (nan when either side is constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def rank_correlation(x, y) -> float:
    """Spearman's rho as :func:`spearman` computes it (Pearson of average ranks; nan for a constant
    side), without scipy's per-call overhead: the bootstrap calls it thousands of times."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1])


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties at their average, as ``scipy.stats.rankdata`` (without its overhead). # [N]"""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    block = np.cumsum(first) - 1
    counts = np.bincount(block)
    avg = np.cumsum(counts) - (counts - 1) / 2.0  # [B] average rank of each tie block
    out = np.empty(len(x))
    out[order] = avg[block]
    return out


def moderate_above_radical_per_original(df: pd.DataFrame, score: str = "score", by: str = "original_id") -> pd.Series:
    """Per original (``by``): 1 when its moderate derivatives score above its radical ones on average,
    0 below, ½ tied; originals without both levels are left out (empty: no such original)."""
    wide = df.pivot_table(index=by, columns="level", values=score, aggfunc="mean")
    if not {"moderate", "radical"} <= set(wide.columns):
        return pd.Series(dtype=float)
    wide = wide.dropna(subset=["moderate", "radical"])
    return (wide["moderate"] > wide["radical"]) + 0.5 * (wide["moderate"] == wide["radical"])


def moderate_above_radical(df: pd.DataFrame, score: str = "score", by: str = "original_id") -> float:
    """Share of originals whose moderate derivative scores above their radical one (ties half):
    the mean of :func:`moderate_above_radical_per_original` (nan without such an original)."""
    per = moderate_above_radical_per_original(df, score, by)
    return float(np.mean(per.to_numpy())) if len(per) else float("nan")


def monotonicity(
    df: pd.DataFrame, score: str = "score", family: str = "family", strength: str = "strength"
) -> pd.DataFrame:
    """Per transformation family: Spearman(similarity, strength) — negative is right, a
    stronger change should look less similar — and the share of consecutive strength
    steps where the mean similarity falls."""
    rows = []
    for fam, grp in df.groupby(family, sort=True):
        means = grp.groupby(strength)[score].mean().sort_index().to_numpy()
        steps = np.diff(means)
        rows.append(
            {
                family: fam,
                "spearman": spearman(grp[strength], grp[score]),
                "falling_steps": float(np.mean(steps < 0)) if len(steps) else float("nan"),
                "levels": len(means),
                "pairs": len(grp),
            }
        )
    return pd.DataFrame(rows)


# -- copy detection: one global ranking of every (query, candidate) pair ---------------------------------
def _ap_of_blocks(n, p, total) -> float:
    """µAP from tie blocks in rank order: ``n`` items and ``p`` true ones per block (weighted counts
    allowed), ``total`` true pairs in all. Within a block of n tied items holding p true ones, a true
    item at block rank r has on average (r-1)(p-1)/(n-1) true ones above it, so the expected sum of
    its precisions is closed-form with S = Σ_r 1/(k+r) = ψ(k+n+1) - ψ(k+1)."""
    from scipy.special import digamma

    n, p = np.asarray(n, float), np.asarray(p, float)
    keep = n > 0
    n, p = n[keep], p[keep]
    if total <= 0:
        return float("nan")
    k = np.cumsum(n) - n  # items above each block
    c = np.cumsum(p) - p  # true items above each block
    hit = p > 0  # only blocks with a true item add
    n, p, k, c = n[hit], p[hit], k[hit], c[hit]
    S = digamma(k + n + 1) - digamma(k + 1)
    inner = np.where(n > 1, (p - 1) / np.where(n > 1, n - 1, 1) * (n - (k + 1) * S), 0.0)
    return float(np.sum(p / n * ((c + 1) * S + inner)) / total)


def _recall_of_blocks(n, p, total, precision) -> float:
    """The largest recall of a cut between blocks whose precision is at least ``precision``."""
    if total <= 0:
        return float("nan")
    tp, kept = np.cumsum(p), np.cumsum(n)
    ok = (tp / np.maximum(kept, 1e-12) >= precision - 1e-12) & (kept > 0)
    return float(tp[ok].max() / total) if ok.any() else 0.0


def _tie_blocks(scores, labels):
    """Scores sorted high to low (NaN last) cut into blocks of equal score: per block its size and
    its positives. # [B], [B]"""
    s, lab = _nan_last(scores), np.asarray(labels, bool)
    order = np.argsort(-s, kind="stable")
    s, lab = s[order], lab[order]
    if not len(s):
        return np.zeros(0, int), np.zeros(0, int)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    sizes = np.diff(np.r_[starts, len(s)])
    return sizes, np.add.reduceat(lab.astype(int), starts)


def micro_ap(scores, labels, n_positives: int | None = None) -> float:
    """Micro-average precision over one global ranking of (query, candidate) pairs, as in DISC21:
    the sum over true pairs of the precision at their rank, divided by ``n_positives`` (default:
    the true pairs given; pass more when some ground truth was never scored). Pairs of a query
    whose original is absent are all false, so its confident matches are false alarms that lower
    every later precision. Exact expected value over random orderings of tied scores."""
    sizes, pos = _tie_blocks(scores, labels)
    return _ap_of_blocks(sizes, pos, int(pos.sum()) if n_positives is None else int(n_positives))


def recall_at_precision(scores, labels, precision: float = 0.9, n_positives: int | None = None) -> float:
    """The largest recall of any score threshold whose precision is at least ``precision``
    (thresholds fall between distinct scores: a tie is taken whole or not at all); 0 when no
    threshold is that precise."""
    sizes, pos = _tie_blocks(scores, labels)
    return _recall_of_blocks(sizes, pos, int(pos.sum()) if n_positives is None else int(n_positives), precision)


class RankedPairs:
    """One global ranking of (query, candidate) pairs, sorted once, scored for any resample of the
    queries (a query drawn m times counts m times): µAP and recall at precision in O(pairs)."""

    def __init__(self, scores, labels, query, has_truth):
        s = _nan_last(scores)
        order = np.argsort(-s, kind="stable")
        s = s[order]
        self.lab = np.asarray(labels, bool)[order]
        self.query = np.asarray(query, np.int64)[order]
        self.has_truth = np.asarray(has_truth, bool)  # [Q] the query's original is in the gallery
        self.block = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1 if len(s) else np.zeros(0, np.int64)
        self.n_blocks = int(self.block[-1]) + 1 if len(s) else 0

    def _blocks(self, rows=None):
        m = (
            np.ones(len(self.has_truth))
            if rows is None
            else np.bincount(np.asarray(rows, np.int64), minlength=len(self.has_truth)).astype(float)
        )
        w = m[self.query]
        n = np.bincount(self.block, weights=w, minlength=self.n_blocks)
        p = np.bincount(self.block, weights=w * self.lab, minlength=self.n_blocks)
        return n, p, float((m * self.has_truth).sum())

    def micro_ap(self, rows=None) -> float:
        """µAP of the queries ``rows`` (default: each once)."""
        return _ap_of_blocks(*self._blocks(rows))

    def recall_at_precision(self, precision: float = 0.9, rows=None) -> float:
        """Recall at ``precision`` of the queries ``rows`` (default: each once)."""
        n, p, total = self._blocks(rows)
        return _recall_of_blocks(n, p, total, precision)


def top_candidates(sim: np.ndarray, truth: np.ndarray, k: int):
    """Each query's ``k`` best candidates (all of those tied with the k-th: a cut never splits a
    tie) as flat pairs: (scores, labels, query). ``truth[q]`` is the true column or -1. A true
    candidate left out still counts as a true pair never found. # [P], [P], [P]"""
    sim = _nan_last(sim)
    if sim.shape[1] > k:
        kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1]  # [Q] the k-th best score
        keep = sim >= kth[:, None]
    else:
        keep = np.ones_like(sim, bool)
    q, c = np.nonzero(keep)
    return sim[q, c], c == np.asarray(truth)[q], q


def query_anchored_accuracy(s_query_pos, s_query_neg) -> float:
    """Triplet accuracy anchored on the query (the derivative): s(derivative, its original) against
    s(derivative, a negative original), the question retrieval and copy detection ask. The seed's
    form anchors on the untransformed original instead (:func:`triplet_accuracy` of
    s(original, derivative) against s(original, negative))."""
    return triplet_accuracy(s_query_pos, s_query_neg)


def spearman_within(df: pd.DataFrame, x: str, y: str, by) -> tuple[float, int]:
    """Spearman ρ of ``x`` (e.g. strength) and ``y`` (the score) within each group of ``by`` (e.g.
    ``original_id`` or ``["original_id", "family"]``), averaged over the groups; returns (mean ρ,
    groups averaged). Pooling across originals mixes their levels and dilutes ρ. A group whose
    scores are all tied counts 0 (the expected ρ of a random order of the ties, as everywhere in this
    module); a group whose ``x`` is constant has no order to agree with and is left out."""
    rhos = per_group_spearman(df, x, y, by)
    rhos = rhos[np.isfinite(rhos)]
    return (float(rhos.mean()) if len(rhos) else float("nan")), int(len(rhos))


def per_group_spearman(df: pd.DataFrame, x: str, y: str, by) -> np.ndarray:
    """ρ of each group of ``by``: 0 where its scores ``y`` are all tied, NaN where ``x`` is
    constant (or the group has one row). # [G]"""
    out = []
    for _, g in df.groupby(by, sort=True):
        xs, ys = g[x].to_numpy(float), g[y].to_numpy(float)
        if len(xs) < 2 or np.all(xs == xs[0]):
            out.append(np.nan)
        else:
            out.append(0.0 if np.all(ys == ys[0]) else spearman(xs, ys))
    return np.array(out, float)


# -- intervals -----------------------------------------------------------------------------------------
def clopper_pearson(k: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval of a proportion ``k / n``; ``k`` may be fractional (ties
    counted half). Never narrower than the truth allows: 13 of 13 gives [0.753, 1]."""
    if n <= 0:
        return float("nan"), float("nan")
    lo = 0.0 if k <= 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k >= n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _group_index(groups):
    """(row order grouped, group sizes, group starts) of a group label per row."""
    codes = pd.factorize(np.asarray(groups), sort=True)[0]
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes) if len(codes) else np.zeros(0, int)
    return order, counts, np.cumsum(counts) - counts


def _rows_of(drawn, order, counts, starts) -> np.ndarray:
    """Row indices of the drawn groups, each group's rows in their original order."""
    lens = counts[drawn]
    ends = np.cumsum(lens)
    return order[np.repeat(starts[drawn] - (ends - lens), lens) + np.arange(ends[-1] if len(ends) else 0)]


_DRAWS: dict = {}  # (groups' codes, n_boot, seed) -> (draws, jackknife rows): every measure reuses them
CACHE_MAX_ROWS = 20_000_000  # row indices kept per grouping; larger ones are drawn again on each use
MAX_JACKKNIFE = 200  # leave-one-out groups for BCa's acceleration (a seeded sample above this)


class _Resamples:
    """The bootstrap draws and the jackknife rows of one grouping, as row-index arrays: built once
    and kept when small, otherwise re-drawn (identically, from the seed) each time they are read."""

    def __init__(self, groups, n_boot: int, seed: int):
        self.order, self.counts, self.starts = _group_index(groups)
        self.n_boot, self.seed = n_boot, seed
        g = len(self.counts)
        self.jack_groups = (
            np.arange(g)
            if g <= MAX_JACKKNIFE
            else np.sort(np.random.default_rng([seed, 1]).choice(g, MAX_JACKKNIFE, replace=False))
        )
        self.jack_scale = float(np.sqrt(len(self.jack_groups) / g)) if g else 1.0  # a from a sample: see _bca
        small = len(self.order) * (n_boot + len(self.jack_groups)) <= CACHE_MAX_ROWS
        self._draws = list(self._make_draws()) if small else None
        self._jack = list(self._make_jack()) if small else None

    def _make_draws(self):
        rng, g = np.random.default_rng(self.seed), len(self.counts)
        for _ in range(self.n_boot):
            yield _rows_of(rng.integers(0, g, g), self.order, self.counts, self.starts)

    def _make_jack(self):
        if len(self.counts) < 2:
            return
        for k in self.jack_groups:
            yield _rows_of(np.delete(np.arange(len(self.counts)), k), self.order, self.counts, self.starts)

    def draws(self):
        return self._draws if self._draws is not None else self._make_draws()

    def jack(self):
        return self._jack if self._jack is not None else self._make_jack()


def _cached(groups, n_boot: int, seed: int) -> _Resamples:
    """The resamples of ``groups`` (once per distinct grouping: the evaluation asks for the same
    ones for every measure and metric)."""
    codes = pd.factorize(np.asarray(groups), sort=True)[0]
    key = (codes.tobytes(), len(codes), n_boot, seed)
    if key not in _DRAWS:
        if len(_DRAWS) > 32:
            _DRAWS.clear()
        _DRAWS[key] = _Resamples(groups, n_boot, seed)
    return _DRAWS[key]


def group_draws(groups, n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """``n_boot`` resamples of whole groups, each as row indices: the same draws for every measure
    scored on the same rows, so paired differences compare like with like."""
    return list(_cached(groups, n_boot, seed).draws())


def _bca(point: float, values: np.ndarray, jack: np.ndarray, alpha: float, scale: float = 1.0) -> tuple[float, float]:
    """BCa quantiles of bootstrap ``values`` with the acceleration from the jackknife ``jack``; a
    jackknife over m of n groups gives a about sqrt(n/m) times too large, so ``scale`` = sqrt(m/n)."""
    values, jack = values[np.isfinite(values)], jack[np.isfinite(jack)]
    if not len(values):
        return float("nan"), float("nan")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    prop = (np.sum(values < point) + 0.5 * np.sum(values == point)) / len(values)
    z0 = stats.norm.ppf(np.clip(prop, 1 / (2 * len(values)), 1 - 1 / (2 * len(values))))
    d = jack.mean() - jack if len(jack) > 1 else np.zeros(1)
    den = 6 * np.sum(d**2) ** 1.5
    a = scale * float(np.sum(d**3) / den) if den > 0 else 0.0
    z = stats.norm.ppf([alpha / 2, 1 - alpha / 2])
    q = stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.quantile(values, q)
    return float(lo), float(hi)


def grouped_bootstrap(
    stat: Callable[[np.ndarray], float],
    groups,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    method: str = "bca",
    draws: list[np.ndarray] | None = None,
) -> dict:
    """``stat(row indices)`` with a bootstrap interval that resamples whole groups (independent
    originals). ``method`` 'bca' (bias-corrected and accelerated, the jackknife leaving one group
    out) or 'percentile'. Returns value, lo, hi, n (groups) and the draws' values."""
    order, counts, starts = _group_index(groups)
    point = float(stat(np.arange(len(order)))) if len(order) else float("nan")
    out = {"value": point, "lo": float("nan"), "hi": float("nan"), "n": int(len(counts))}
    if not len(order) or (n_boot == 0 and draws is None):
        return {**out, "values": np.zeros(0)}
    res = _cached(groups, n_boot, seed)
    values = np.array([stat(r) for r in (draws if draws is not None else res.draws())], float)
    alpha = 1 - ci
    if method == "percentile":
        v = values[np.isfinite(values)]
        lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2]) if len(v) else (np.nan, np.nan)
    elif method == "bca":
        jack = np.array([stat(r) for r in res.jack()], float)
        lo, hi = _bca(point, values, jack, alpha, res.jack_scale) if np.isfinite(point) else (np.nan, np.nan)
    else:
        raise ValueError(f"grouped_bootstrap: unknown method {method!r} (bca or percentile)")
    return {**out, "lo": float(lo), "hi": float(hi), "values": values}


def paired_difference(
    stat_a: Callable, stat_b: Callable, groups, n_boot: int = 1000, ci: float = 0.95, seed: int = 0, method: str = "bca"
) -> dict:
    """``stat_a - stat_b`` on the same rows (two measures on the same test originals) with a grouped
    bootstrap interval of the difference: both statistics see the same resampled originals. The
    difference 'excludes 0' when the whole interval lies on one side of it."""
    out = grouped_bootstrap(lambda r: stat_a(r) - stat_b(r), groups, n_boot, ci, seed, method)
    out["excludes_0"] = bool(np.isfinite(out["lo"]) and (out["lo"] > 0 or out["hi"] < 0))
    return out


# -- the seed study's text-image accuracies --------------------------------------------------------------
def binary_text_image_accuracy(img_anchor, txt_pos, img_neg, txt_neg) -> dict:
    """i2t and t2i as the seed study defined them, per triplet a binary choice (chance 0.5):
    i2t: is cos(original, caption of its derivative) above cos(original, caption of the negative)?
    t2i: is cos(caption of the derivative, original) above cos(caption of the derivative, negative
    original)? Rows are L2-normalised embeddings ``[T, D]``; ties count half (:func:`triplet_accuracy`).
    Stage 08's N-way retrieval (chance 1/N) is another, harder question."""

    def unit(x):
        x = np.asarray(x, float)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n > 0, n, 1)

    a, tp, n_img, tn = unit(img_anchor), unit(txt_pos), unit(img_neg), unit(txt_neg)
    cos = lambda x, y: np.einsum("td,td->t", x, y)  # noqa: E731 - row-wise cosine [T]
    return {
        "i2t": triplet_accuracy(cos(a, tp), cos(a, tn)),
        "t2i": triplet_accuracy(cos(tp, a), cos(tp, n_img)),
        "chance": 0.5,
        "triplets": int(len(a)),
    }


def retrieval_accuracy(img: np.ndarray, txt: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy of N (image, caption) pairs: i2t = share of images whose own caption is the
    most similar of the N, t2i the converse. Ties count at their expected value (chance)."""
    sim = np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T  # [N, N]
    truth = np.arange(len(sim))
    return recall_at_k(sim, truth, 1), recall_at_k(sim.T, truth, 1)


def batched_retrieval(img: np.ndarray, txt: np.ndarray, n: int, seed: int = 0) -> dict:
    """:func:`retrieval_accuracy` over seeded batches of ``n`` pairs (the remainder joins the
    last batch), averaged by pairs; ``chance`` is the matching average of 1/N."""
    order = np.random.default_rng(seed).permutation(len(img))
    batches = [b for b in np.split(order, list(range(n, len(order) - n + 1, n))) if len(b) > 1]
    if not batches:
        return {"pairs": 0, "N": n, "i2t": float("nan"), "t2i": float("nan"), "chance": float("nan")}
    w = np.array([len(b) for b in batches])
    acc = np.array([retrieval_accuracy(img[b], txt[b]) for b in batches])  # [batches, 2]
    i2t, t2i = (acc * w[:, None]).sum(0) / w.sum()
    return {"pairs": int(w.sum()), "N": n, "i2t": float(i2t), "t2i": float(t2i), "chance": float(len(w) / w.sum())}


def topk_chance(k: int, num_classes: int) -> float:
    """Top-k accuracy of a uniformly random ranking of ``num_classes`` classes: k/K (8 classes:
    top-1 0.125, top-5 0.625), whatever the split's class balance."""
    return min(k, num_classes) / num_classes if num_classes else float("nan")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``. # [K, K]"""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 of each class from a confusion matrix (0 where a class is never predicted nor present). # [K]"""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)  # predicted + true = 2TP + FP + FN
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
