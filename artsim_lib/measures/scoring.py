"""The evaluation protocol's test set and its scoring: every needed pair scored once by every measure.

:func:`load_measures` loads the measures a run can provide and lists the others with the reason
(a missing model is a skip, never a rebuild: :func:`artsim_lib.stages.s09_evaluation.check_inputs`
says which stage to run). :func:`test_set` keeps only test originals, their derivatives and the test
triplets (whose negatives are test originals), as index arrays into one image list, plus the
copy-detection distractors. :func:`score_all` computes each measure's features once per image -- the
descriptor measures share one feature set, read from stage 06's cache, and one pass over the pairs --
then scores every distinct (original, other image) pair the metrics of
:mod:`artsim_lib.stages.s09_evaluation` read: embeddings by dot products, a learnt pair head in
batches, anything else pair by pair. Nothing here reads a stage's artifacts or imports a stage.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from artsim_lib import config
from artsim_lib.core import descriptor_similarity as dsim
from artsim_lib.core import descriptors
from artsim_lib.measures.base import (
    DescriptorMeasure,
    EmbeddingMeasure,
    GeometryMeasure,
    Measure,
    MeasureUnavailableError,
    PairHeadMeasure,
)

PARALLEL_MIN_PAIRS = 20_000  # descriptor pair scores go to worker processes above this many pairs


# -- loading measures from a run -------------------------------------------------------------------
def load_measures(names, run_dir) -> tuple[dict[str, Measure], pd.DataFrame]:
    """``{name: Measure}`` of the measures a run can provide, and the skipped ones (measure, reason)."""
    from artsim_lib.measures import registry as compare

    loaded, skipped = {}, []
    for name in names:
        try:
            loaded[name] = compare.load_measure(name, run_dir)
        except MeasureUnavailableError as err:
            skipped.append({"measure": name, "reason": str(err)})
    return loaded, pd.DataFrame(skipped, columns=["measure", "reason"])


# -- the test set ----------------------------------------------------------------------------------
@dataclass
class EvalSet:
    """The test split as index arrays into one image list (originals first, then derivatives)."""

    originals: pd.DataFrame  # test originals, sorted by id (image index = row number)
    derivatives: pd.DataFrame  # their derivatives, sorted by pair_id; img = image index
    triplets: pd.DataFrame  # test triplets; a, p, n = image indices
    gallery: np.ndarray  # [G] original rows that are retrieval candidates
    queries: np.ndarray  # [Q] derivative rows whose original is in the gallery
    truth: np.ndarray  # [Q] column of each query's original in the gallery
    near_dup: np.ndarray  # [G, G] bool: phash Hamming distance <= the threshold
    # Copy detection: distractors from the other splits (never queries), after originals + derivatives.
    extra: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "original_id", "kind"]))
    copy_gallery: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [C] image indices
    copy_queries: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [Qc] derivative rows
    # [Qc] column in copy_gallery of each copy query's original, -1: absent
    copy_truth: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bucket: np.ndarray | None = None  # [len(originals)] aspect-ratio bucket of each test original (None: unknown)

    @property
    def images(self) -> list[str]:
        return list(self.originals["path"]) + list(self.derivatives["path"]) + list(self.extra["path"])

    def same_bucket_exclude(self) -> np.ndarray | None:
        """[Q, G] gallery originals outside the query's aspect-ratio bucket (None: no sides known)."""
        if self.bucket is None:
            return None
        b = self.bucket[self.gallery]
        return b[None, :] != b[self.truth][:, None]

    def exclude(self) -> np.ndarray:
        """[Q, G] the near-duplicates of each query's own original (itself is kept by metrics)."""
        return self.near_dup[self.truth]


def hamming(phashes, block: int = 1024) -> np.ndarray:
    """Pairwise Hamming distances of hex perceptual hashes of one length (in 64-bit words, a block
    of rows at a time); a missing hash is far from everything (distance 1000). # [N, N]"""
    ok = np.array([isinstance(h, str) and len(h) > 0 for h in phashes], bool)
    width = max((len(h) for h, k in zip(phashes, ok) if k), default=0)
    words = np.array(
        [
            [int(h.rjust(width, "0")[i : i + 16], 16) if k else 0 for i in range(0, width, 16)]
            for h, k in zip(phashes, ok)
        ],
        np.uint64,
    ).reshape(len(ok), -1)  # [N, W]
    dist = np.zeros((len(ok), len(ok)), np.int64)
    for i in range(0, len(ok), block):
        x = words[i : i + block, None, :] ^ words[None, :, :]  # [b, N, W]
        dist[i : i + block] = np.bitwise_count(x).sum(-1)
    far = ~(ok[:, None] & ok[None, :]) & ~np.eye(len(ok), dtype=bool)
    return np.where(far, 1000, dist)


def test_set(
    manifest: pd.DataFrame,
    pairs: pd.DataFrame,
    triplets: pd.DataFrame,
    cfg=None,
    seed: int = 0,
    drop_flagged: bool = True,
) -> EvalSet:
    """The test originals, their (unflagged) derivatives and the test triplets; raises when a test
    triplet or derivative reaches outside the test split."""
    cfg = cfg or config.EvaluationParams()
    orig = manifest[manifest["split"] == "test"].sort_values("id").reset_index(drop=True)
    row = pd.Series(np.arange(len(orig)), index=orig["id"])
    der = pairs[pairs["original_id"].isin(row.index)]
    if (der["split"] != "test").any():
        raise ValueError("evaluation: derivatives of test originals are marked with another split")
    if drop_flagged:
        der = der[~(der["nan_flag"].astype(bool) | der["black_flag"].astype(bool))]
    der = der.sort_values("pair_id").reset_index(drop=True)
    der["orig"] = row.loc[der["original_id"]].to_numpy()
    der["img"] = len(orig) + np.arange(len(der))
    trip = triplets[triplets["split"] == "test"].reset_index(drop=True)
    d_img = pd.Series(der["img"].to_numpy(), index=der["pair_id"])
    if not (trip["anchor_id"].isin(row.index) & trip["negative_id"].isin(row.index)).all():
        raise ValueError("evaluation: a test triplet uses an original outside the test split")
    trip = trip[trip["positive_id"].isin(d_img.index)].reset_index(drop=True)  # flagged positives out
    trip = trip.assign(
        a=row.loc[trip["anchor_id"]].to_numpy(),
        p=d_img.loc[trip["positive_id"]].to_numpy(),
        n=row.loc[trip["negative_id"]].to_numpy(),
    )
    gallery = np.arange(len(orig))
    if cfg.retrieval_originals is not None and cfg.retrieval_originals < len(orig):
        gallery = np.sort(np.random.default_rng(seed).choice(len(orig), cfg.retrieval_originals, replace=False))
    col = np.full(len(orig), -1)
    col[gallery] = np.arange(len(gallery))
    queries = np.flatnonzero(col[der["orig"].to_numpy()] >= 0)
    near = (
        hamming(list(orig["phash"].iloc[gallery]) if "phash" in orig else [None] * len(gallery))
        <= cfg.near_duplicate_phash
    )
    es = EvalSet(orig, der, trip, gallery, queries, col[der["orig"].to_numpy()[queries]], near)
    es.bucket = aspect_buckets(orig, cfg.aspect_bucket)
    return copy_detection_set(es, manifest, pairs, cfg, seed, drop_flagged)


def aspect_buckets(orig: pd.DataFrame, width: float) -> np.ndarray | None:
    """Bucket of each original's source aspect ratio, ``round(log2(w / h) / width)`` (None
    without the manifest's source sides); retrieval within a bucket cannot lean on the frame."""
    if not {"src_width", "src_height"} <= set(orig.columns):
        return None
    ratio = orig["src_width"].to_numpy(float) / orig["src_height"].to_numpy(float)
    if not np.isfinite(ratio).all():
        return None
    return np.round(np.log2(ratio) / width).astype(np.int64)


def copy_detection_set(
    es: EvalSet, manifest: pd.DataFrame, pairs: pd.DataFrame, cfg, seed: int, drop_flagged: bool = True
) -> EvalSet:
    """``es`` with the copy-detection protocol's gallery and queries: every original of the other
    splits (or a seeded sample) and a seeded sample of their derivatives as distractors, the test
    originals minus a seeded share left absent (their queries have no true match: a confident
    match is a false alarm), and a seeded sample of each test original's derivatives as queries.
    With ``retrieval_originals`` only the sampled test originals take part."""
    rng = np.random.default_rng([seed, 9])
    others = manifest[manifest["split"] != "test"].sort_values("id")
    if cfg.copy_distractor_originals is not None and cfg.copy_distractor_originals < len(others):
        others = others.iloc[np.sort(rng.choice(len(others), cfg.copy_distractor_originals, replace=False))]
    oder = pairs[pairs["original_id"].isin(set(manifest.loc[manifest["split"] != "test", "id"]))]
    if drop_flagged and len(oder):
        oder = oder[~(oder["nan_flag"].astype(bool) | oder["black_flag"].astype(bool))]
    oder = oder.sort_values("pair_id")
    if len(oder) > cfg.copy_distractor_derivatives:
        oder = oder.iloc[np.sort(rng.choice(len(oder), cfg.copy_distractor_derivatives, replace=False))]
    extra = pd.concat(
        [
            others[["path", "id"]].set_axis(["path", "original_id"], axis=1).assign(kind="original"),
            oder[["path", "original_id"]].assign(kind="derivative"),
        ],
        ignore_index=True,
    )
    n_orig = len(es.originals)
    used = np.zeros(n_orig, bool)
    used[es.gallery] = True  # the retrieval gallery's sample of test originals (all by default)
    absent = np.zeros(n_orig, bool)
    if len(es.gallery) > 1 and cfg.copy_absent_share > 0:
        absent[rng.choice(es.gallery, int(round(cfg.copy_absent_share * len(es.gallery))), replace=False)] = True
    present = np.flatnonzero(used & ~absent)
    base = n_orig + len(es.derivatives)
    gallery = np.concatenate([present, base + np.arange(len(extra))]).astype(np.int64)
    col = np.full(n_orig, -1)
    col[present] = np.arange(len(present))
    rows = []
    for orig, idx in es.derivatives.groupby("orig", sort=True).groups.items():
        if not used[orig]:
            continue
        idx = np.asarray(idx)
        k = cfg.copy_queries_per_original
        rows.append(np.sort(rng.choice(idx, k, replace=False)) if k is not None and len(idx) > k else idx)
    queries = np.sort(np.concatenate(rows)).astype(np.int64) if rows else np.zeros(0, np.int64)
    es.extra, es.copy_gallery, es.copy_queries = extra, gallery, queries
    es.copy_truth = col[es.derivatives["orig"].to_numpy()[queries]] if len(queries) else np.zeros(0, np.int64)
    return es


def needed_pairs(es: EvalSet) -> np.ndarray:
    """Every distinct (original image, other image) pair the metrics read. # [P, 2]"""
    d = es.derivatives
    t = es.triplets
    blocks = [
        np.stack([d["orig"], d["img"]], 1),  # derivative vs own
        np.stack([t["a"], t["n"]], 1),
        np.stack([t["n"], t["p"]], 1),  # triplet / verification
        np.stack(
            np.broadcast_arrays(
                es.gallery[None, :],  # retrieval block
                d["img"].to_numpy()[es.queries][:, None],
            ),
            -1,
        ).reshape(-1, 2),
        np.stack(
            np.broadcast_arrays(
                es.copy_gallery[None, :],  # copy-detection block
                d["img"].to_numpy()[es.copy_queries][:, None],
            ),
            -1,
        ).reshape(-1, 2),
    ]
    return np.unique(np.concatenate([b.astype(np.int64).reshape(-1, 2) for b in blocks]), axis=0)


# -- scoring ---------------------------------------------------------------------------------------------
_GROUP: dict = {}  # the descriptor features, inherited by forked workers


def _family_raw(idx_pairs: np.ndarray) -> np.ndarray:
    """Raw similarity of each family (ssim unclipped) for pairs of ``_GROUP['feats']``. # [P, 5]"""
    f = _GROUP["feats"]
    return np.array(
        [
            [
                dsim.ssim(f[a]["ssim.gray"], f[b]["ssim.gray"])
                if fam == "ssim"
                else dsim.family_similarity(f[a], f[b], fam)
                for fam in descriptors.FAMILIES
            ]
            for a, b in idx_pairs
        ],
        float,
    ).reshape(-1, len(descriptors.FAMILIES))


def _descriptor_scores(group: dict[str, DescriptorMeasure], images, pairs, cache_root, workers) -> dict:
    """Raw scores of every descriptor measure from one feature set and one pass over the pairs."""
    cfg = next(iter(group.values())).cfg
    feats, _ = descriptors.extract_many(images, cfg, cache_root, workers, "descriptors (test images)")
    _GROUP["feats"] = feats
    chunks = np.array_split(pairs, max(1, len(pairs) // 2000))
    if workers > 1 and len(pairs) >= PARALLEL_MIN_PAIRS and multiprocessing.get_start_method() == "fork":
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            fam = np.concatenate(list(pool.map(_family_raw, chunks)))
    else:
        fam = np.concatenate([_family_raw(c) for c in tqdm(chunks, desc="descriptor pairs")])
    _GROUP.clear()
    by_family = dict(zip(descriptors.FAMILIES, fam.T))
    clipped = {f: np.clip(v, 0, 1) for f, v in by_family.items()}
    return {
        name: by_family[m.family] if m.family else dsim.combine(pd.DataFrame(clipped), m.weights).to_numpy()
        for name, m in group.items()
    }


def _raw_scores(m: Measure, feats: list, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Raw scores of ``pairs`` (image indices) from per-image features. # [P]"""
    if isinstance(m, GeometryMeasure):  # 1 / (1 + L1) of five numbers per image, vectorised
        F = np.stack(feats) if feats else np.zeros((0, 5))
        return 1.0 / (1.0 + np.abs(F[pairs[:, 0]] - F[pairs[:, 1]]).sum(1))
    if isinstance(m, EmbeddingMeasure) or isinstance(m, PairHeadMeasure):
        F = np.stack(feats) if feats else np.zeros((0, 1))  # [M, D]
        if isinstance(m, PairHeadMeasure):
            return m.raw_pairs(F[pairs[:, 0]], F[pairs[:, 1]])
        out = [
            np.einsum("pd,pd->p", F[pairs[i : i + chunk, 0]], F[pairs[i : i + chunk, 1]])
            for i in range(0, len(pairs), chunk)
        ]
        return np.clip(np.concatenate(out), -1, 1) if out else np.zeros(0)
    return np.array([m.raw_from_features(feats[a], feats[b]) for a, b in pairs], float)


def to01(m: Measure, raw: np.ndarray) -> np.ndarray:
    """``m.to01`` of every raw score, vectorised for the measure kinds whose mapping is known."""
    if type(m).to01 is EmbeddingMeasure.to01:
        return (raw + 1.0) / 2.0
    if type(m).to01 in (DescriptorMeasure.to01, PairHeadMeasure.to01, GeometryMeasure.to01):
        return np.clip(raw, 0.0, 1.0)
    return np.array([m.to01(r) for r in raw], float)


@dataclass
class Scores:
    """Every measure's raw and [0, 1] score of the needed pairs, with a lookup by image indices."""

    pairs: np.ndarray  # [P, 2] sorted, unique
    raw: dict[str, np.ndarray]  # measure -> [P]
    s01: dict[str, np.ndarray]  # measure -> [P]
    seconds: dict[str, float] = field(default_factory=dict)  # features + pair scores per measure
    n_images: int = 0

    def index(self, a, b) -> np.ndarray:
        """Positions of the pairs (a, b) in :attr:`pairs` (raises if one was not scored)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        width = max(self.n_images, int(self.pairs.max()) + 1 if len(self.pairs) else 1)
        codes = self.pairs[:, 0] * width + self.pairs[:, 1]  # sorted, as pairs are
        pos = np.searchsorted(codes, a * width + b)
        if (
            np.any((b < 0) | (b >= width))
            or np.any(pos >= len(codes))
            or np.any(codes[np.minimum(pos, len(codes) - 1)] != a * width + b)
        ):
            raise KeyError("a pair was asked for that was not scored")
        return pos


def score_all(es: EvalSet, measures: dict[str, Measure], cache_root=None, workers: int = 1) -> Scores:
    """Score every needed pair with every measure; features once per image and measure."""
    pairs, images = needed_pairs(es), es.images
    out = Scores(pairs, {}, {}, n_images=len(images))
    group = {n: m for n, m in measures.items() if isinstance(m, DescriptorMeasure)}
    keys = {n: descriptors.params_key(m.cfg) for n, m in group.items()}
    for key in sorted(set(keys.values())):
        t0 = time.perf_counter()
        mine = {n: group[n] for n in group if keys[n] == key}
        out.raw.update(_descriptor_scores(mine, images, pairs, cache_root, workers))
        out.seconds.update({n: (time.perf_counter() - t0) / len(mine) for n in mine})
    for name, m in measures.items():
        if name not in group:
            t0 = time.perf_counter()
            out.raw[name] = _raw_scores(m, m.features(images), pairs)
            out.seconds[name] = time.perf_counter() - t0
    for name, m in measures.items():
        out.s01[name] = to01(m, out.raw[name])
    return out
