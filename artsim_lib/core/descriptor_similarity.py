"""Per-family similarities in [0, 1] of two images' descriptors, their weighted total, fitted weights,
and the pair table's scores and triplet accuracies (arrays and tables in, numbers out; stage 06's
runner, which reads and writes the run directory, is :mod:`artsim_lib.stages.s06_descriptors`).

Each family's similarity is the mean of its components, each already in [0, 1]:

* ``colour``  -- HSV and Lab histogram intersection (Σ min(p, q) of histograms summing to 1);
  moments: ``exp(-‖Δ‖ / 25)`` with Δ the 9 Lab moments (25 ≈ a clearly different colour in ΔE);
  palette: ``exp(-d / 25)``, d the share-weighted mean ΔE from each dominant colour to the
  nearest one of the other image, averaged over both directions.
* ``texture`` -- LBP: ``1 - χ²`` with χ² = ½ Σ (p - q)² / (p + q) ∈ [0, 1] per radius; GLCM and
  Gabor: ``1 - mean |a - b| / (|a| + |b|)`` (Canberra, scale-free per property).
* ``edges``   -- Canny density: Canberra; HOG: cosine (non-negative vectors, so ∈ [0, 1]);
  orientation histogram: intersection.
* ``shape``   -- Hu moments: Canberra on ``-log10 |h|``; mask: weighted Jaccard Σ min / Σ max;
  largest region's properties: Canberra.
* ``ssim``    -- ``structural_similarity`` of the grayscale thumbnails, clipped at 0 (negative
  SSIM, i.e. anti-correlated structure, counts as no similarity).

The study's *descriptor similarity* is ``Σ w_f s_f / Σ w_f`` with the weights of
``DescriptorParams.weights``. :func:`fit_weights` fits a logistic regression of "is this the
derivative?" on the five similarities of the train split's anchor-positive and anchor-negative
pairs, for weights learnt from data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from skimage.metrics import structural_similarity
from tqdm import tqdm

from artsim_lib.core.descriptors import FAMILIES
from artsim_lib.core.metrics import triplet_accuracy

DELTA_E_SCALE = 25.0
# What each family compares and how it lands in [0, 1] (for tables and the notebook).
FAMILY_MAPPINGS = {
    "colour": (
        "HSV + Lab histograms, Lab moments, k-means palette",
        "intersection; exp(-ΔE/25) for moments and palette; mean",
    ),
    "texture": (
        "uniform LBP, GLCM properties, Gabor energies",
        "1 - χ² for LBP; 1 - Canberra for GLCM and Gabor; mean",
    ),
    "edges": (
        "Canny density and map, HOG, orientation histogram (on HSV value)",
        "1 - Canberra; weighted Jaccard; cosine; intersection; mean",
    ),
    "shape": (
        "Otsu foreground: Hu moments, 32² mask, largest region",
        "1 - Canberra on -log|Hu|; weighted Jaccard; 1 - Canberra; mean",
    ),
    "ssim": ("SSIM of the grayscale thumbnails", "max(SSIM, 0)"),
}


def intersection(p: np.ndarray, q: np.ndarray) -> float:
    """Histogram intersection of two histograms summing to 1. ∈ [0, 1]"""
    return float(np.minimum(p, q).sum())


def chi2_similarity(p: np.ndarray, q: np.ndarray) -> float:
    """``1 - ½ Σ (p - q)² / (p + q)`` for histograms summing to 1. ∈ [0, 1]"""
    s = p + q
    nz = s > 0
    return float(1.0 - 0.5 * ((p[nz] - q[nz]) ** 2 / s[nz]).sum())


def canberra_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - mean |a - b| / (|a| + |b|)`` (a pair of zeros counts as equal). ∈ [0, 1]"""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    den = np.abs(a) + np.abs(b)
    ratio = np.divide(np.abs(a - b), den, out=np.zeros_like(den), where=den > 0)
    return float(1.0 - ratio.mean())


def cosine01(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two non-negative vectors (∈ [0, 1]); two zero vectors count as equal."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float(na == nb)
    return float(np.dot(a, b) / (na * nb))


def palette_similarity(ca, wa, cb, wb, scale: float = DELTA_E_SCALE) -> float:
    """``exp(-d / scale)``, d the share-weighted mean ΔE (CIE76) from each dominant colour of
    one palette to the nearest colour of the other, averaged over both directions. ∈ (0, 1]"""
    dist = np.linalg.norm(np.asarray(ca, np.float64)[:, None] - np.asarray(cb, np.float64)[None], axis=-1)
    d = 0.5 * (np.dot(wa, dist.min(1)) / max(np.sum(wa), 1e-12) + np.dot(wb, dist.min(0)) / max(np.sum(wb), 1e-12))
    return float(np.exp(-d / scale))


def weighted_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """``Σ min(a, b) / Σ max(a, b)`` of two non-negative maps (both empty: 1). ∈ [0, 1]"""
    hi = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / hi) if hi > 0 else 1.0


def _log_hu(hu: np.ndarray) -> np.ndarray:
    return -np.log10(np.abs(np.asarray(hu, np.float64)) + 1e-30)


def ssim(gray_a: np.ndarray, gray_b: np.ndarray) -> float:
    """Raw SSIM of two grayscale images in [0, 1] (same shape). ∈ [-1, 1]"""
    return float(structural_similarity(np.asarray(gray_a, np.float64), np.asarray(gray_b, np.float64), data_range=1.0))


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def family_similarity(fa: Mapping[str, np.ndarray], fb: Mapping[str, np.ndarray], family: str) -> float:
    """One family's similarity of two images' features (see the module docstring). ∈ [0, 1]"""
    if family == "colour":
        parts = [
            intersection(fa["colour.hsv"], fb["colour.hsv"]),
            intersection(fa["colour.lab"], fb["colour.lab"]),
            np.exp(-np.linalg.norm(fa["colour.moments"].astype(np.float64) - fb["colour.moments"]) / DELTA_E_SCALE),
            palette_similarity(
                fa["colour.palette"], fa["colour.palette_w"], fb["colour.palette"], fb["colour.palette_w"]
            ),
        ]
    elif family == "texture":
        lbp = [
            chi2_similarity(fa[k].astype(np.float64), fb[k].astype(np.float64))
            for k in sorted(fa)
            if k.startswith("texture.lbp")
        ]
        parts = [
            float(np.mean(lbp)),
            canberra_similarity(fa["texture.glcm"], fb["texture.glcm"]),
            canberra_similarity(fa["texture.gabor"], fb["texture.gabor"]),
        ]
    elif family == "edges":
        parts = [
            canberra_similarity(fa["edges.density"], fb["edges.density"]),
            weighted_jaccard(fa["edges.map"], fb["edges.map"]),
            cosine01(fa["edges.hog"], fb["edges.hog"]),
            intersection(fa["edges.orient"], fb["edges.orient"]),
        ]
    elif family == "shape":
        parts = [
            canberra_similarity(_log_hu(fa["shape.hu"]), _log_hu(fb["shape.hu"])),
            weighted_jaccard(fa["shape.mask"], fb["shape.mask"]),
            canberra_similarity(fa["shape.region"], fb["shape.region"]),
        ]
    elif family == "ssim":
        return _clip01(ssim(fa["ssim.gray"], fb["ssim.gray"]))
    else:
        raise KeyError(f"unknown descriptor family {family!r} (known: {', '.join(FAMILIES)})")
    return _clip01(float(np.mean(parts)))


def similarities(fa: Mapping[str, np.ndarray], fb: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Every family's similarity of two images' features, ``{family: s ∈ [0, 1]}``."""
    return {f: family_similarity(fa, fb, f) for f in FAMILIES}


def normalise_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights scaled to sum 1 (zero weights dropped); unknown families and negatives are errors."""
    unknown = set(weights) - set(FAMILIES)
    if unknown:
        raise KeyError(f"unknown descriptor famil(ies) {sorted(unknown)} (known: {', '.join(FAMILIES)})")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"descriptor weights must be >= 0 with a positive sum, got {dict(weights)}")
    total = float(sum(weights.values()))
    return {f: float(w) / total for f, w in weights.items() if w > 0}


def combine(sims, weights: Mapping[str, float]):
    """The weighted descriptor similarity ``Σ w_f s_f / Σ w_f`` of a dict of family similarities
    (returns a float) or of a table with one column per family (returns a Series)."""
    w = normalise_weights(weights)
    if isinstance(sims, pd.DataFrame):
        return sum(sims[f].astype(float) * v for f, v in w.items())
    return float(sum(sims[f] * v for f, v in w.items()))


# -- fitted weights ----------------------------------------------------------------
def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 0.01, iters: int = 100) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method (IRLS), the intercept unpenalised.
    ``X`` [N, D], ``y`` [N] in {0, 1}; returns (coefficients [D], intercept). Deterministic."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    A = np.hstack([X, np.ones((len(X), 1))])  # [N, D+1]
    penalty = np.full(A.shape[1], l2 * len(X))
    penalty[-1] = 0.0
    beta = np.zeros(A.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ beta, -30, 30)))  # [N]
        grad = A.T @ (p - y) + penalty * beta
        hess = (A * (p * (1 - p))[:, None]).T @ A + np.diag(penalty) + 1e-9 * np.eye(A.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta[:-1], float(beta[-1])


def fit_weights(table: pd.DataFrame, l2: float = 0.01, families=FAMILIES) -> dict:
    """Fit the logistic regression on a pair table's rows (label: ``role == 'positive'``).

    Returns the coefficients, the intercept and ``weights``: the positive coefficients scaled to
    sum 1 (a negative coefficient means that family separates nothing on its own and gets 0),
    usable as ``DescriptorParams.weights``.
    """
    X = table[list(families)].to_numpy(np.float64)
    y = (table["role"] == "positive").to_numpy(np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("fit_weights needs both positive and negative pairs")
    coef, intercept = fit_logistic(X, y, l2)
    pos = np.clip(coef, 0, None)
    weights = (
        {f: float(c) / float(pos.sum()) for f, c in zip(families, pos)}
        if pos.sum() > 0
        else {f: 1.0 / len(families) for f in families}
    )
    return {
        "coef": {f: float(c) for f, c in zip(families, coef)},
        "intercept": intercept,
        "weights": weights,
        "l2": l2,
        "n_pairs": int(len(y)),
        "n_positive": int(y.sum()),
    }


# -- the pair table (stage 06 writes it: artsim_lib.stages.s06_descriptors) -------------
MEASURES = FAMILIES + ("descriptor",)  # the pair table's similarity columns (= measure names)
PAIR_KEYS = [
    "triplet_id",
    "anchor_id",
    "anchor_path",
    "level",
    "family",
    "strength",
    "backend",
    "negative_kind",
    "split",
    "style",
    "artist",
]


def pair_rows(triplets: pd.DataFrame) -> pd.DataFrame:
    """Two rows per triplet, ``role`` 'positive' (anchor vs derivative) and 'negative' (anchor vs
    another original), with ``other_id``/``other_path`` and ``group``: the positive's level, or
    ``negative: <kind>``. ``negative_kind`` describes the triplet, so both rows carry it."""
    base = triplets[PAIR_KEYS]
    pos = base.assign(
        role="positive", other_id=triplets["positive_id"].to_numpy(), other_path=triplets["positive_path"].to_numpy()
    )
    neg = base.assign(
        role="negative", other_id=triplets["negative_id"].to_numpy(), other_path=triplets["negative_path"].to_numpy()
    )
    out = pd.concat([pos, neg], ignore_index=True)
    out["group"] = np.where(out["role"] == "positive", out["level"], "negative: " + out["negative_kind"].astype(str))
    return out.sort_values(["triplet_id", "role"], ascending=[True, False], kind="stable").reset_index(drop=True)


def score_pairs(
    pairs: pd.DataFrame, features: Mapping[str, Mapping], weights: Mapping[str, float], progress: bool = True
) -> pd.DataFrame:
    """``pairs`` with one column per family and ``descriptor`` (the weighted total); each
    distinct (anchor, other) image pair is scored once. ``features`` maps path -> features."""
    unique = unique_pairs(pairs)
    return with_scores(pairs, _score_unique(unique, features, progress), weights)


def unique_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The distinct (anchor_path, other_path) image pairs of a pair table, in order of appearance."""
    return pairs[["anchor_path", "other_path"]].drop_duplicates().reset_index(drop=True)


def _score_unique(unique: pd.DataFrame, features: Mapping[str, Mapping], progress: bool = False) -> pd.DataFrame:
    rows = [
        similarities(features[a], features[b])
        for a, b in tqdm(
            list(zip(unique["anchor_path"], unique["other_path"])), desc="pair similarities", disable=not progress
        )
    ]
    return pd.concat([unique.reset_index(drop=True), pd.DataFrame(rows, columns=list(FAMILIES))], axis=1)


def with_scores(pairs: pd.DataFrame, scored: pd.DataFrame, weights: Mapping[str, float]) -> pd.DataFrame:
    out = pairs.drop(columns=[c for c in MEASURES if c in pairs], errors="ignore")
    out = out.merge(scored, on=["anchor_path", "other_path"], how="left", validate="many_to_one")
    out["descriptor"] = combine(out, weights)
    return out


# Distinct images whose features stage 06 holds at once (~30-90 kB each at the full profile's
# sizes): the pairs are scored in parts, so memory stays bounded however many images there are.
PART_IMAGES = 2048


def pair_parts(unique: pd.DataFrame, max_images: int | None = None) -> list[np.ndarray]:
    """Row numbers of ``unique`` (anchor_path, other_path) cut into parts that each need at most
    ``max_images`` distinct images (an anchor's pairs stay in one part, so one anchor with more
    pairs than that makes a larger part; default :data:`PART_IMAGES`). Every row is in exactly
    one part."""
    max_images = max_images or PART_IMAGES
    parts, current, images = [], [], set()
    groups = unique.groupby("anchor_path", sort=True).indices  # anchor -> row numbers
    for anchor, rows in groups.items():
        need = {anchor, *unique["other_path"].to_numpy()[rows]}
        if current and len(images | need) > max_images:
            parts.append(np.sort(np.concatenate(current)))
            current, images = [], set()
        current.append(rows)
        images |= need
    if current:
        parts.append(np.sort(np.concatenate(current)))
    return parts


@dataclass
class StreamedScores:
    """What :func:`stream_pair_scores` produced."""

    scored: pd.DataFrame  # the unique pairs with one column per family
    n_images: int
    n_cached: int  # images whose features came from the cache when first needed
    extract_seconds: float
    pair_seconds: float


def stream_pair_scores(
    unique: pd.DataFrame, cfg, cache_root, workers: int = 1, max_images: int | None = None, progress: bool = True
) -> StreamedScores:
    """Score the image pairs of ``unique`` part by part (:func:`pair_parts`): each part's
    features are extracted (or read from the per-image cache under ``cache_root``), its pairs
    scored, and the features dropped before the next part. The numbers are those of scoring all
    pairs with all features in memory; an image needed by several parts is computed once and
    then read from the cache."""
    from artsim_lib.core.descriptors import extract_many

    seen: set[str] = set()
    n_cached, t_extract, t_pairs, scored = 0, 0.0, 0.0, []
    parts = pair_parts(unique, max_images)
    for rows in tqdm(parts, desc="descriptor parts", disable=not progress or len(parts) < 2):
        part = unique.iloc[rows]
        images = sorted(set(part["anchor_path"]) | set(part["other_path"]))
        t0 = time.perf_counter()
        feats, hits = extract_many(images, cfg, cache_root, workers, "descriptors")
        first = np.array([p not in seen for p in images], dtype=bool)
        n_cached += int((hits & first).sum())
        seen.update(images)
        t1 = time.perf_counter()
        scored.append(_score_unique(part, dict(zip(images, feats)), progress and len(parts) < 2))
        del feats  # this part's features: gone before the next part's are read
        t_extract, t_pairs = t_extract + t1 - t0, t_pairs + time.perf_counter() - t1
    out = (
        pd.concat(scored, ignore_index=True)
        if scored
        else pd.DataFrame(columns=["anchor_path", "other_path", *FAMILIES])
    )
    return StreamedScores(out, len(seen), n_cached, t_extract, t_pairs)


def triplet_scores(pairs: pd.DataFrame, measure: str) -> pd.DataFrame:
    """One row per triplet: ``s_pos`` and ``s_neg`` of ``measure`` and the triplet's columns."""
    wide = pairs.pivot(index="triplet_id", columns="role", values=measure).reindex(columns=["positive", "negative"])
    meta = pairs[pairs["role"] == "positive"].set_index("triplet_id")[["anchor_id", "split", "level", "negative_kind"]]
    return meta.join(wide.rename(columns={"positive": "s_pos", "negative": "s_neg"}))


def _float32(x: float) -> float:
    """``x`` rounded to float32: the precision stage 06's accuracies had when torch computed them
    (a float32 mean in torch, before :func:`artsim_lib.core.metrics.triplet_accuracy` replaced it), so
    ``fitted_weights.json`` keeps its numbers."""
    return float(np.float32(x))


TRIPLET_CHANCE = 0.5  # a binary choice, ties counted half: a constant or random measure scores this


def accuracy_table(pairs: pd.DataFrame, measures, by: str = "split", chance: bool = False) -> pd.DataFrame:
    """Triplet accuracy (:func:`artsim_lib.core.metrics.triplet_accuracy`: share with s+ > s-, a
    tie counting half) per value of ``by`` (rows, plus 'all') and measure (columns). With
    ``chance``, the columns ``triplets`` (count) and ``chance`` (:data:`TRIPLET_CHANCE`) come
    first, for tables that are shown."""
    out, count = {}, {}
    for m in measures:
        t = triplet_scores(pairs, m)
        groups = [(k, g) for k, g in t.groupby(by, sort=True)] + [("all", t)]
        out[m] = {k: _float32(triplet_accuracy(g["s_pos"].to_numpy(), g["s_neg"].to_numpy())) for k, g in groups}
        count = {k: len(g) for k, g in groups}
    table = pd.DataFrame(out)
    if chance:
        table.insert(0, "chance", TRIPLET_CHANCE)
        table.insert(0, "triplets", pd.Series(count))
    return table
