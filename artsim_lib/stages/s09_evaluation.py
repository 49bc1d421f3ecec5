"""Stage 09: every similarity measure of the study on the held-out test split, side by side.

    check_inputs(P)          # what 09 reads from stages 02-08; StageNotRunError names the stage to run
    result = run(P)          # check the inputs, load every measure, score, write evaluation/*
    load(P)                  # the written metrics back (StageNotRunError: run stage 09 first)
    result.metrics           # long: measure, metric, subset, value, lo, hi, n, note
    result.table(["auc"], "subset")  # 'value [lo, hi]' cells, one row per measure
    result.headline()        # one row per measure (and 'chance'), the study's table
    result.paired, result.best()   # paired differences; 'best' only where they exclude 0

Only test originals, their derivatives and the test triplets are scored, plus, for the
copy-detection protocol only, distractors from the other splits (:mod:`artsim_lib.measures.scoring`).
Metrics (:mod:`artsim_lib.core.metrics`; a tie never helps a measure, a NaN ranks last):

* copy detection (DISC21-like): µAP and recall at 90% precision over one global ranking of the
  copy queries against a gallery of every original of every split, other originals' derivatives,
  with a share of the queries' originals absent (their confident matches are false alarms);
* the seed's metrics: triplet accuracy per kind of negative, anchored on the original (the seed's)
  and on the query; retrieval of each derivative's original among the test originals (R@k, median
  rank, mAP), also without phash near-duplicates ('dedup') and within the query's aspect-ratio
  bucket ('aspect'); ROC-AUC; Spearman of similarity and strength pooled and within each original
  (and family); moderate above radical; monotonicity per family on the augment set;
* MSE/MAE against the reference (the descriptor similarity) beside the best constant, the MSE after
  an affine calibration and the rank agreement with the reference: MSE alone measures the mapping.

Intervals resample whole test originals (BCa by default); a proportion's interval is at least the
exact Clopper–Pearson interval at n = independent originals. Paired differences use the same draws.

Nothing here trains or rebuilds an earlier stage: a missing input of the study stops with the stage to
run (:func:`check_inputs`), a measure that cannot load is skipped with its reason. The one analysis that
trains (in memory, nothing written) is :func:`leave_one_family_out`: stage 08's CLIP head refitted
without each transformation family.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from artsim_lib import config
from artsim_lib.core import metrics
from artsim_lib.io import paths
from artsim_lib.io.artifacts import StageNotRunError, read_current
from artsim_lib.io.workers import worker_count
from artsim_lib.measures.base import Measure
from artsim_lib.measures.scoring import (
    EvalSet,
    Scores,
    load_measures,
    score_all,
    test_set,
)
from artsim_lib.stages import s02_preprocess, s05_generation

HARD_KINDS = ("same_style", "same_artist")


# -- per-row tables ------------------------------------------------------------------------------------
def derivative_table(es: EvalSet, sc: Scores, name: str) -> pd.DataFrame:
    """One row per test derivative: its score against its own original."""
    d = es.derivatives
    i = sc.index(d["orig"], d["img"])
    cols = [
        c
        for c in (
            "pair_id",
            "original_id",
            "level",
            "family",
            "op",
            "strength",
            "backend",
            "style",
            "artist",
            "prompt",
            "path",
        )
        if c in d
    ]
    return d[cols].assign(raw=sc.raw[name][i], s01=sc.s01[name][i])


def triplet_table(es: EvalSet, sc: Scores, name: str) -> pd.DataFrame:
    """One row per test triplet: raw s(anchor, positive) and s(anchor, negative), and the
    verification negative s(negative original, positive)."""
    t = es.triplets
    ip, ineg, iver = sc.index(t["a"], t["p"]), sc.index(t["a"], t["n"]), sc.index(t["n"], t["p"])
    return t.drop(columns=["a", "p", "n"]).assign(
        s_pos=sc.raw[name][ip],
        s_neg=sc.raw[name][ineg],
        s_ver=sc.raw[name][iver],
        s_pos01=sc.s01[name][ip],
        s_neg01=sc.s01[name][ineg],
    )


def retrieval_matrix(es: EvalSet, sc: Scores, name: str) -> np.ndarray:
    """Raw similarity of each query derivative to each gallery original. # [Q, G]"""
    q_img = es.derivatives["img"].to_numpy()[es.queries]
    a, b = np.broadcast_arrays(es.gallery[None, :], q_img[:, None])
    return sc.raw[name][sc.index(a.ravel(), b.ravel())].reshape(a.shape)


def copy_ranking(es: EvalSet, sc: Scores, name: str, topk: int) -> dict:
    """The copy-detection protocol of one measure: each copy query's raw similarity to every
    copy-gallery image, the top ``topk`` per query in one global ranking (:class:`metrics.RankedPairs`),
    and each query's original as its group."""
    d = es.derivatives
    q_img = d["img"].to_numpy()[es.copy_queries]
    a, b = np.broadcast_arrays(es.copy_gallery[None, :], q_img[:, None])
    sim = sc.raw[name][sc.index(a.ravel(), b.ravel())].reshape(a.shape) if a.size else np.zeros(a.shape)  # [Qc, C]
    scores, labels, q = metrics.top_candidates(sim, es.copy_truth, topk) if a.size else (np.zeros(0),) * 3
    return {
        "ranking": metrics.RankedPairs(scores, labels, q, es.copy_truth >= 0),
        "has_truth": es.copy_truth >= 0,
        "groups": d["original_id"].to_numpy()[es.copy_queries],
        "sim": sim,
    }


def per_query(sim: np.ndarray, truth: np.ndarray, ks, exclude=None) -> pd.DataFrame:
    """R@k, rank and reciprocal rank of each query (their means are :func:`metrics.retrieval_metrics`)."""
    rows = [
        metrics.retrieval_metrics(sim[q : q + 1], truth[q : q + 1], ks, None if exclude is None else exclude[q : q + 1])
        for q in range(len(sim))
    ]
    return pd.DataFrame(rows, columns=[f"R@{k}" for k in ks] + ["median_rank", "mAP"]).rename(
        columns={"median_rank": "rank", "mAP": "rr"}
    )


def verification_table(trip: pd.DataFrame, der: pd.DataFrame) -> pd.DataFrame:
    """(derivative, its original) as positives and (derivative, the triplet's negative original)
    as negatives, with the negative's kind and the original that groups them."""
    pos = der[["original_id", "style", "raw"]].assign(label=True, kind="positive")
    neg = (
        trip[["anchor_id", "style", "s_ver", "negative_kind"]]
        .set_axis(["original_id", "style", "raw", "kind"], axis=1)
        .assign(label=False)
    )
    return pd.concat([pos, neg], ignore_index=True)


# -- metrics with intervals ------------------------------------------------------------------------------
PROPORTIONS = {"triplet_acc", "triplet_acc_query", "moderate_above_radical"}  # and every R@k


def _adder(rows: list, name: str, cfg, seed: int, stats: dict | None = None):
    """A function appending one metric row to ``rows``: the value, a grouped bootstrap interval
    (``cfg.interval``, resampling whole originals) and ``n`` = the independent originals. A
    proportion's interval is widened to at least the exact Clopper–Pearson interval at n originals,
    which holds near 0 and 1 where the bootstrap collapses to a point. ``stats`` keeps each
    statistic, so that two measures can be compared on the same resampled originals."""

    def add(metric, subset, stat, groups, note=""):
        groups = np.asarray(groups)
        out = metrics.grouped_bootstrap(stat, groups, cfg.n_boot, cfg.ci, seed, cfg.interval)
        value, lo, hi, n = out["value"], out["lo"], out["hi"], out["n"]
        if (
            (metric in PROPORTIONS or metric.startswith("R@"))
            and n
            and np.isfinite(value)
            and cfg.n_boot > 0
            and 0 <= value <= 1
        ):
            cp_lo, cp_hi = metrics.clopper_pearson(value * n, n, 1 - cfg.ci)
            lo, hi = (min(cp_lo, lo) if np.isfinite(lo) else cp_lo), (max(cp_hi, hi) if np.isfinite(hi) else cp_hi)
            note = note or "bootstrap widened to the exact interval at n originals"
        rows.append(dict(measure=name, metric=metric, subset=subset, value=value, lo=lo, hi=hi, n=n, note=note))
        if stats is not None:
            stats[(metric, subset)] = (stat, groups)

    return add


def reference_metrics(
    name: str, sc: Scores, ref: str | None, pair_orig, is_pos, cfg, seed: int = 0, in_test=None
) -> list[dict]:
    """MSE and MAE of the [0, 1] scores against the reference measure's, over every scored pair of a
    test original ('all', ``in_test``) and over (original, own derivative) pairs ('positive'), grouped
    by the pair's original; the MSE after an affine calibration (cross-fitted over originals) and the
    rank agreement with the reference (Spearman, Kendall): MSE alone measures the [0, 1] mapping."""
    rows: list[dict] = []
    if ref is None or name == ref:
        note = "reference" if name == ref else "reference unavailable"
        return [
            dict(measure=name, metric=m, subset=s, value=np.nan, lo=np.nan, hi=np.nan, n=0, note=note)
            for m, s in [(m, s) for m in ("mse", "mae") for s in ("all", "positive")]
            + [("mse_affine", "all"), ("spearman_ref", "all"), ("kendall_ref", "all")]
        ]
    in_test = np.ones(len(is_pos), bool) if in_test is None else np.asarray(in_test, bool)
    add = _adder(rows, name, cfg, seed)
    for subset, keep in (("all", in_test), ("positive", is_pos & in_test)):
        s, r, g = sc.s01[name][keep], sc.s01[ref][keep], pair_orig[keep]
        add("mse", subset, lambda i: metrics.mse(s[i], r[i]), g)
        add("mae", subset, lambda i: metrics.mae(s[i], r[i]), g)
    s, r, g = sc.s01[name][in_test], sc.s01[ref][in_test], pair_orig[in_test]
    cal = affine_cross_fit(sc.raw[name][in_test], r, g, seed)
    add("mse_affine", "all", lambda i: metrics.mse(cal[i], r[i]), g, "affine fit on the other half of the originals")
    ok = np.isfinite(s) & np.isfinite(r)
    from scipy import stats as sstats

    rows.append(
        dict(
            measure=name,
            metric="spearman_ref",
            subset="all",
            value=metrics.rank_correlation(s[ok], r[ok]),
            lo=np.nan,
            hi=np.nan,
            n=len(np.unique(g)),
            note="no interval",
        )
    )
    tau = sstats.kendalltau(s[ok], r[ok]).statistic if ok.sum() > 1 else np.nan
    rows.append(
        dict(
            measure=name,
            metric="kendall_ref",
            subset="all",
            value=float(tau),
            lo=np.nan,
            hi=np.nan,
            n=len(np.unique(g)),
            note="no interval",
        )
    )
    return rows


def affine_cross_fit(x, y, groups, seed: int = 0) -> np.ndarray:
    """``a·x + b`` fitted by least squares to ``y`` on one half of the groups (originals) and
    applied to the other, both ways: MSE after it says how well the measure agrees with the
    reference once the arbitrary [0, 1] mapping is taken out, without fitting on what it scores. # [P]"""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ug = np.unique(groups)
    fold = np.isin(groups, np.random.default_rng(seed).permutation(ug)[: len(ug) // 2])
    out = np.full(len(x), float(np.nanmean(y)) if len(y) else np.nan)
    for test in (fold, ~fold):
        train = ~test & np.isfinite(x) & np.isfinite(y)
        if train.sum() >= 2 and np.ptp(x[train]) > 0:
            a, b = np.polyfit(x[train], y[train], 1)
            out[test] = a * x[test] + b
        elif train.any():
            out[test] = y[train].mean()
    return out


def measure_metrics(
    name: str, der, trip, ver, ranks: dict, cfg, seed: int = 0, copy=None, stats: dict | None = None
) -> list[dict]:
    """Every metric of one measure but MSE/MAE, as rows (metric, subset, value, lo, hi, n, note);
    ``copy`` (:func:`copy_ranking`) adds the copy-detection metrics, ``stats`` keeps the statistics."""
    rows: list[dict] = []
    add = _adder(rows, name, cfg, seed, stats)
    for kind in ("random", *HARD_KINDS):
        t = trip[trip["negative_kind"] == kind]
        sp, sn, sv = t["s_pos"].to_numpy(), t["s_neg"].to_numpy(), t["s_ver"].to_numpy()
        add("triplet_acc", kind, lambda r: metrics.triplet_accuracy(sp[r], sn[r]), t["anchor_id"])
        # anchored on the query: s(derivative, original) vs s(derivative, negative original)
        add("triplet_acc_query", kind, lambda r: metrics.query_anchored_accuracy(sp[r], sv[r]), t["anchor_id"])
    for subset, q in ranks.items():
        for col, metric in [(c, c) for c in q.columns if c.startswith("R@")] + [("rank", "median_rank"), ("rr", "mAP")]:
            v = q[col].to_numpy()
            add(
                metric,
                subset,
                (lambda r, v=v: np.median(v[r])) if col == "rank" else (lambda r, v=v: v[r].mean()),
                q["original_id"],
            )
    for subset, kinds in (("hard", HARD_KINDS), ("random", ("random",))):
        v = ver[ver["label"] | ver["kind"].isin(kinds)]
        s, lab = v["raw"].to_numpy(), v["label"].to_numpy()
        add("auc", subset, lambda r: metrics.roc_auc(s[r], lab[r]), v["original_id"])
    st, s = der["strength"].to_numpy(float), der["raw"].to_numpy()
    add("spearman_strength", "all", lambda r: metrics.rank_correlation(st[r], s[r]), der["original_id"])
    for subset, by in (("original", ["original_id"]), ("original_family", ["original_id", "family"])):
        keys = der.groupby(by, sort=True).size().index
        rho = metrics.per_group_spearman(der.assign(raw=np.nan_to_num(der["raw"], nan=-np.inf)), "strength", "raw", by)
        owner = keys.get_level_values(0).to_numpy()
        add(
            "spearman_within",
            subset,
            lambda r: float(np.nanmean(rho[r])) if np.isfinite(rho[r]).any() else np.nan,
            owner,
            "ρ(strength, score) within each group, averaged (all-tied scores: 0)",
        )
    if copy is not None and len(copy["has_truth"]):
        rp, groups = copy["ranking"], copy["groups"]
        add("µAP", "copy", lambda r: rp.micro_ap(r), groups, f"top {cfg.copy_topk} per query, absent originals")
        add(
            "recall_at_precision",
            "copy",
            lambda r: rp.recall_at_precision(cfg.precision_target, r),
            groups,
            f"recall at precision {cfg.precision_target:g}",
        )
    mar = metrics.moderate_above_radical_per_original(der, score="raw")
    add("moderate_above_radical", "all", lambda r: float(np.mean(mar.to_numpy()[r])), mar.index.to_numpy())
    if (der["backend"] == "augment").any():
        cal = der[der["backend"] == "augment"]
        mono = metrics.monotonicity(cal, score="raw").set_index("family")
        for fam, g in cal.groupby("family", sort=True):
            fs, fv = g["strength"].to_numpy(float), g["raw"].to_numpy()
            add("monotonicity_spearman", fam, lambda r: metrics.rank_correlation(fs[r], fv[r]), g["original_id"])
            rows.append(
                dict(
                    measure=name,
                    metric="falling_steps",
                    subset=fam,
                    value=mono.loc[fam, "falling_steps"],
                    lo=np.nan,
                    hi=np.nan,
                    n=int(mono.loc[fam, "levels"]),
                    note="no interval",
                )
            )
    return rows


def style_breakdown(name: str, der, trip, ver, q_all) -> pd.DataFrame:
    """Point values per style of the original (no intervals: a style holds few test originals)."""
    rows = []
    for style, d in der.groupby("style", sort=True):
        t, v, q = trip[trip["style"] == style], ver[ver["style"] == style], q_all[q_all["style"] == style]
        hard, vh = t[t["negative_kind"].isin(HARD_KINDS)], v[v["label"] | v["kind"].isin(HARD_KINDS)]
        # hard_triplets: a style whose test originals have no same-style/artist negative has an easier mix
        rows.append(
            dict(
                measure=name,
                style=style,
                originals=d["original_id"].nunique(),
                derivatives=len(d),
                triplets=len(t),
                hard_triplets=len(hard),
                triplet_acc=metrics.triplet_accuracy(t["s_pos"], t["s_neg"]),
                triplet_acc_hard=metrics.triplet_accuracy(hard["s_pos"], hard["s_neg"]),
                **{"R@1": q["R@1"].mean() if len(q) else np.nan, "mAP": q["rr"].mean() if len(q) else np.nan},
                auc_hard=metrics.roc_auc(vh["raw"], vh["label"]),
                positive_s01=d["s01"].mean(),
            )
        )
    return pd.DataFrame(rows)


# -- the seed's text-image accuracies ------------------------------------------------------------------------
def text_image_binary(es: EvalSet, embed_images, embed_texts, captions: pd.DataFrame) -> pd.DataFrame:
    """The seed's i2t and t2i on the test triplets whose derivative was made from a prompt (SDXL),
    as stage 08 computes them (:func:`artsim_lib.stages.s08_siamese.seed_text_image_table`, over all
    test triplets): per triplet a binary choice, chance 0.5. ``embed_images(paths)`` and
    ``embed_texts(texts)`` give ``[N, D]`` embeddings in one space (CLIP). One row per kind of
    negative and 'all'; empty when no test derivative has a prompt (the ``augment`` backend has none)."""
    from artsim_lib.stages.s08_siamese import seed_text_image_table

    d = es.derivatives.set_index("pair_id")
    prompts = d["prompt"] if "prompt" in d else pd.Series(dtype=object)
    path = es.originals["path"].to_numpy()

    def images(t: pd.DataFrame):
        return embed_images(list(path[t["a"]])), embed_images(list(path[t["n"]]))

    return seed_text_image_table(es.triplets, prompts, captions, images, embed_texts, by_split=False)


def seed_text_image(P, result: EvalResult) -> pd.DataFrame:
    """:func:`text_image_binary` of a run's test set with its CLIP (the raw ``clip`` measure's model
    and embedding cache; stage 03's captions); empty when the ``clip`` measure did not run."""
    from artsim_lib.measures import embeddings
    from artsim_lib.stages import s03_captioning
    from artsim_lib.stages.s08_siamese import clip_text_embedder

    if "clip" not in result.measures:
        return pd.DataFrame()
    clip = embeddings.load_clip_measure(P.run.root)
    return text_image_binary(result.es, clip.embed, clip_text_embedder(clip.encoder), s03_captioning.load(P))


# -- the whole evaluation ----------------------------------------------------------------------------------
HEADLINE = [
    ("µAP", "copy", "µAP copy"),
    ("recall_at_precision", "copy", "R@P90 copy"),
    ("triplet_acc", "random", "acc random"),
    ("triplet_acc", "same_style", "acc same style"),
    ("triplet_acc", "same_artist", "acc same artist"),
    ("triplet_acc_query", "same_artist", "acc same artist (query)"),
    ("R@k", "all", "R@k"),
    ("median_rank", "all", "median rank"),
    ("mAP", "all", "mAP"),
    ("R@1", "dedup", "R@1 dedup"),
    ("R@1", "aspect", "R@1 same aspect"),
    ("auc", "hard", "AUC hard"),
    ("spearman_within", "original_family", "ρ within original×family"),
    ("spearman_strength", "all", "Spearman strength"),
    ("moderate_above_radical", "all", "moderate > radical"),
    ("mse", "all", "MSE"),
    ("mse_affine", "all", "MSE affine"),
    ("mae", "all", "MAE"),
    ("spearman_ref", "all", "ρ vs reference"),
]
LOWER_IS_BETTER = {"median rank", "MSE", "MSE affine", "MAE", "Spearman strength", "ρ within original×family"}
MEASURE_INFO = {
    "ssim": "SSIM of grayscale thumbnails",
    "colour": "colour descriptors",
    "texture": "texture descriptors",
    "edges": "edge descriptors",
    "shape": "shape descriptors",
    "descriptor": "weighted descriptor similarity (the study's, and the reference)",
    "descriptor_fitted": "descriptor similarity, weights fitted on train",
    "clip": "raw CLIP cosine",
    "resnet": "ResNet-50 cosine before fine-tuning",
    "resnet_finetuned": "ResNet-50 cosine after fine-tuning",
    "clip_siamese": "CLIP siamese head",
    "resnet_siamese": "ResNet-50 siamese (triplet)",
    "resnet_regression": "ResNet-50 siamese (regression score; trained on 0/1 labels, so its MSE to a continuous "
    "reference means little)",
    # issue 11: the pretrained EfficientNet-Lite0 and what stages 07/08 train on it (the smoke profile)
    "effnet_lite0": "EfficientNet-Lite0 (ImageNet) cosine, no training",
    "effnet_lite0_finetuned": "EfficientNet-Lite0 cosine after fine-tuning",
    "effnet_lite0_siamese": "EfficientNet-Lite0 siamese (triplet)",
    "effnet_lite0_regression": "EfficientNet-Lite0 siamese (regression score)",
    "dinov2": "DINOv2 cosine of the pooled CLS feature (Somepalli et al.'s replication detector)",
    "sscd": "SSCD copy-detection descriptor (DISC21), cosine",
    "geometry": "content-free baseline: aspect ratio and content box only",
}


@dataclass
class EvalResult:
    """Everything stage 09 computed, in memory (the notebook's figures read it)."""

    es: EvalSet
    scores: Scores
    metrics: pd.DataFrame  # long: measure, metric, subset, value, lo, hi, n, note
    per_style: pd.DataFrame
    skipped: pd.DataFrame  # measure, reason
    cfg: config.EvaluationParams
    tables: dict = field(default_factory=dict)  # measure -> {derivatives, triplets, verification, queries, retrieval}
    measures: dict = field(default_factory=dict)  # name -> Measure (the figures reuse them)
    seconds: float = 0.0
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)  # label, leader, other, diff, lo, hi, excludes_0
    inputs: pd.DataFrame = field(default_factory=pd.DataFrame)  # input, status, path (:func:`check_inputs`)

    def best(self) -> dict[str, list[str]]:
        """Per headline label: the measure called best, only where its paired difference to every
        other measure on the same originals excludes 0 (empty otherwise)."""
        out = {}
        for lab, g in self.paired.groupby("label", sort=False) if len(self.paired) else []:
            out[lab] = [g["leader"].iloc[0]] if g["excludes_0"].all() else []
        return out

    def columns(self) -> list[tuple[str, str, str]]:
        """(metric, subset, label) of the headline table, R@k expanded."""
        return [
            c
            for m, s, lab in HEADLINE
            for c in ([(f"R@{k}", s, f"R@{k}") for k in self.cfg.ks] if m == "R@k" else [(m, s, lab)])
        ]

    def chance(self) -> dict[str, float]:
        """What a constant measure scores on this test set (ties count at their expected value)."""
        es, q = self.es, len(self.es.queries)
        out = {
            "acc random": 0.5,
            "acc same style": 0.5,
            "acc same artist": 0.5,
            "acc same artist (query)": 0.5,
            "AUC hard": 0.5,
            "Spearman strength": 0.0,
            "moderate > radical": 0.5,
            "ρ within original×family": 0.0,
            "ρ vs reference": 0.0,
        }
        for subset, excl in (("", None), (" dedup", es.exclude()), (" same aspect", es.same_bucket_exclude())):
            if subset == " same aspect" and excl is None:
                continue
            r = metrics.retrieval_metrics(np.zeros((q, len(es.gallery))), es.truth, self.cfg.ks, excl) if q else {}
            out.update({(k if k != "median_rank" else "median rank") + subset: v for k, v in r.items()})
        if len(es.copy_queries):  # a constant measure: every pair tied in the global ranking
            n_pairs, n_true = len(es.copy_queries) * len(es.copy_gallery), int((es.copy_truth >= 0).sum())
            out["µAP copy"] = metrics._ap_of_blocks([n_pairs], [n_true], n_true)
            out["R@P90 copy"] = metrics._recall_of_blocks([n_pairs], [n_true], n_true, self.cfg.precision_target)
        ref = self.cfg.reference
        if ref in self.scores.s01:  # the best constant: the reference's own mean
            r = self.scores.s01[ref]
            out["MSE"] = out["MSE affine"] = metrics.mse(np.full(len(r), np.nanmean(r)), r)
            out["MAE"] = metrics.mae(np.full(len(r), np.nanmedian(r)), r)
        return out

    def headline(self, text: bool = True) -> pd.DataFrame:
        """One row per measure (and 'chance'): 'value [lo, hi]' strings, or the values."""
        m = self.metrics.set_index(["measure", "metric", "subset"])
        rows = {}
        for name in self.metrics["measure"].unique():
            rows[name] = {
                lab: _cell(m.loc[(name, met, sub)] if (name, met, sub) in m.index else None, text)
                for met, sub, lab in self.columns()
            }
        chance = self.chance()
        rows["chance"] = {
            lab: _num(chance.get(lab)) if text else chance.get(lab, np.nan) for _, _, lab in self.columns()
        }
        return pd.DataFrame.from_dict(rows, orient="index")

    def table(self, metrics: list[str], columns: str | list[str] = ("metric", "subset")) -> pd.DataFrame:
        """The rows of :attr:`metrics` whose metric is one of ``metrics``, one row per measure (in the
        order they were scored) and one column per ``columns`` ('metric', 'subset', or both in the order
        given), each cell 'value [lo, hi]' to three decimals (the interval where there is one; the
        reference's own MSE/MAE cells say 'reference'). The notebook's per-protocol tables."""
        m = self.metrics[self.metrics["metric"].isin(list(metrics))]
        cells = m.assign(cell=[ci_text(r.value, r.lo, r.hi, r.note) for r in m.itertuples()])
        return cells.pivot(
            index="measure", columns=columns if isinstance(columns, str) else list(columns), values="cell"
        ).reindex(list(self.measures))


def ci_text(value: float, lo: float, hi: float, note: str = "") -> str:
    """'value [lo, hi]' to three decimals, the interval only where it is finite; the note instead
    for the reference measure's own rows ('reference', 'reference unavailable')."""
    if note in ("reference", "reference unavailable"):
        return note
    return f"{value:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else "")


def _num(v) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


def _cell(row, text: bool):
    if row is None:
        return "—" if text else np.nan
    if row["note"] == "reference":
        return "reference" if text else np.nan
    if not text:
        return row["value"]
    ci = f" [{_num(row['lo'])}, {_num(row['hi'])}]" if np.isfinite(row["lo"]) else ""
    return _num(row["value"]) + ci


def evaluate_set(
    es: EvalSet, measures: dict[str, Measure], cfg=None, seed: int = 0, skipped=None, cache_root=None, workers: int = 1
) -> EvalResult:
    """Score ``es`` with every measure and compute every metric (no files written)."""
    cfg, t0 = cfg or config.EvaluationParams(), time.perf_counter()
    sc = score_all(es, measures, cache_root, workers)
    ref = cfg.reference if cfg.reference in measures else None
    n_orig = len(es.originals)
    in_test = sc.pairs[:, 0] < n_orig  # copy-detection pairs start at a distractor
    pair_orig = es.originals["id"].to_numpy()[np.minimum(sc.pairs[:, 0], max(n_orig - 1, 0))]
    is_pos = np.isin(
        sc.pairs[:, 0] * sc.n_images + sc.pairs[:, 1],
        es.derivatives["orig"].to_numpy() * sc.n_images + es.derivatives["img"].to_numpy(),
    )
    rows, styles, tables, stats = [], [], {}, {}
    q_orig = es.derivatives.iloc[es.queries]
    subsets = [("all", None), ("dedup", es.exclude())]
    if es.same_bucket_exclude() is not None:
        subsets.append(("aspect", es.same_bucket_exclude()))
    for name in measures:
        der, trip = derivative_table(es, sc, name), triplet_table(es, sc, name)
        ver = verification_table(trip, der)
        sim = retrieval_matrix(es, sc, name)
        ranks = {
            s: per_query(sim, es.truth, cfg.ks, ex).assign(
                original_id=q_orig["original_id"].to_numpy(), style=q_orig["style"].to_numpy()
            )
            for s, ex in subsets
        }
        copy = copy_ranking(es, sc, name, cfg.copy_topk)
        stats[name] = {}
        rows += reference_metrics(name, sc, ref, pair_orig, is_pos, cfg, seed, in_test)
        rows += measure_metrics(name, der, trip, ver, ranks, cfg, seed, copy, stats[name])
        rows.append(
            dict(
                measure=name,
                metric="nan_scores",
                subset="all",
                value=float(metrics.count_nan(sc.raw[name])),
                lo=np.nan,
                hi=np.nan,
                n=len(sc.pairs),
                note="NaN scores of all scored pairs, ranked last",
            )
        )
        styles.append(style_breakdown(name, der, trip, ver, ranks["all"]))
        tables[name] = {
            "derivatives": der,
            "triplets": trip,
            "verification": ver,
            "queries": ranks["all"],
            "retrieval": sim,
            "copy": copy["sim"],
        }
    cols = ["measure", "metric", "subset", "value", "lo", "hi", "n", "note"]
    skipped = skipped if skipped is not None else pd.DataFrame(columns=["measure", "reason"])
    result = EvalResult(
        es,
        sc,
        pd.DataFrame(rows, columns=cols),
        pd.concat(styles, ignore_index=True) if styles else pd.DataFrame(),
        skipped,
        cfg,
        tables,
        dict(measures),
    )
    result.paired = paired_table(result, stats, cfg, seed)
    result.seconds = time.perf_counter() - t0
    return result


def paired_table(result: EvalResult, stats: dict, cfg, seed: int = 0) -> pd.DataFrame:
    """For each label of ``cfg.paired_metrics``: the leading measure (best point value) against every
    other measure, the difference on the same resampled test originals with its interval. A leader
    is 'best' only where every difference excludes 0."""
    rows = []
    by_label = {lab: (m, s) for m, s, lab in result.columns()}
    for lab in cfg.paired_metrics:
        if lab not in by_label or cfg.n_boot == 0:
            continue
        key = by_label[lab]
        have = {
            n: st[key] for n, st in stats.items() if key in st and np.isfinite(st[key][0](np.arange(len(st[key][1]))))
        }
        if len(have) < 2:
            continue
        lower = lab in LOWER_IS_BETTER
        point = {n: float(f(np.arange(len(g)))) for n, (f, g) in have.items()}
        leader = (min if lower else max)(point, key=point.get)
        f_lead, groups = have[leader]
        for other, (f_other, g_other) in have.items():
            if other == leader or len(g_other) != len(groups) or not np.array_equal(g_other, groups):
                continue
            sign = -1.0 if lower else 1.0
            d = metrics.paired_difference(
                lambda r, a=f_lead: sign * a(r),
                lambda r, b=f_other: sign * b(r),
                groups,
                cfg.n_boot,
                cfg.ci,
                seed,
                cfg.interval,
            )
            rows.append(
                dict(
                    label=lab,
                    metric=key[0],
                    subset=key[1],
                    leader=leader,
                    other=other,
                    diff=sign * d["value"],
                    lo=sign * (d["hi"] if lower else d["lo"]),
                    hi=sign * (d["lo"] if lower else d["hi"]),
                    n=d["n"],
                    excludes_0=d["excludes_0"],
                )
            )
    return pd.DataFrame(
        rows, columns=["label", "metric", "subset", "leader", "other", "diff", "lo", "hi", "n", "excludes_0"]
    )


# -- leave one transformation family out ---------------------------------------------------------------------
# Has a trained head learnt *these transformations*, or similarity?
# On the ``augment`` set every derivative belongs to one of four families (photometric, degradation,
# geometric, stylistic). A head trained on all four and tested on the same four can score well by
# recognising the transformations it was shown. Here the CLIP siamese head is trained again on the
# train/val triplets of three families only and tested on the test triplets of the fourth, beside a
# head trained (the same way, same seed) on all four: the drop on the held-out family is what
# "learnt this transformation" was worth. Nothing is written; the heads live in memory.
def head_scores(model, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosines of the refined embeddings: s(anchor, positive), s(anchor, negative) and
    s(positive, negative) of every triplet of ``data``
    (:class:`artsim_lib.stages.s08_siamese.TripletTensors`). # [T] x 3"""
    import torch

    with torch.no_grad():
        z = torch.nn.functional.normalize(model.eval().embed(data.emb), dim=-1).numpy()  # [M, d]
    a, p, n = (t.numpy() for t in (data.a, data.p, data.n))
    return (np.einsum("td,td->t", z[a], z[p]), np.einsum("td,td->t", z[a], z[n]), np.einsum("td,td->t", z[p], z[n]))


def family_table(held: str, test: pd.DataFrame, s_pos, s_neg, s_qneg) -> list[dict]:
    """Triplet accuracies (the seed's and the query-anchored) per family of the test triplets."""
    rows = []
    for fam, idx in test.groupby("family", sort=True).indices.items():
        hard = test["negative_kind"].to_numpy()[idx] != "random"
        rows.append(
            dict(
                trained_without=held,
                family=fam,
                triplets=len(idx),
                originals=test["anchor_id"].iloc[idx].nunique(),
                acc=metrics.triplet_accuracy(s_pos[idx], s_neg[idx]),
                acc_query=metrics.query_anchored_accuracy(s_pos[idx], s_qneg[idx]),
                acc_query_hard=metrics.query_anchored_accuracy(s_pos[idx][hard], s_qneg[idx][hard]),
            )
        )
    return rows


def leave_one_family_out(
    P, triplets: pd.DataFrame, table: pd.DataFrame, manifest: pd.DataFrame, families: list[str] | None = None
) -> pd.DataFrame:
    """CLIP siamese heads trained without each family (and one with all, ``trained_without='none'``),
    each scored on the test triplets per family. ``table``: stage 08's cached CLIP embeddings
    (id, embedding). Rows: trained_without, family, triplets, originals, acc, acc_query,
    acc_query_hard, held_out (the family was not in training)."""
    from artsim_lib.io import shards
    from artsim_lib.stages.s08_siamese import (
        fit_head,
        head_config,
        split_triplets,
        triplet_tensors,
    )

    trip = triplets[triplets["backend"] == "augment"] if "backend" in triplets else triplets
    families = families or sorted(trip["family"].dropna().unique())
    test = trip[trip["split"] == "test"].reset_index(drop=True)
    if len(families) < 2 or test.empty:
        return pd.DataFrame()
    test_data = triplet_tensors(test, table)
    share, rows, scores = P.siamese.train_splits[0], [], {}
    for held in ["none", *families]:
        part = trip[(trip["split"] != "test") & (trip["family"] != held)]
        split = split_triplets(part, manifest, share, P.seed)
        data = triplet_tensors(split, table)
        cfg = head_config(P.siamese, data.emb.shape[1])
        tr, va = (np.flatnonzero(split["split"].to_numpy() == s) for s in ("train", "val"))
        fit = fit_head(data, tr, va, cfg, P.siamese, shards.item_seed(P.seed, "lofo", "siamese"), P.device)
        scores[held] = head_scores(fit.model, test_data)
        rows += family_table(held, test, *scores[held])
    out = pd.DataFrame(rows)
    out["held_out"] = out["trained_without"] == out["family"]
    out.attrs["drops"] = paired_drops(test, scores, P.evaluation.n_boot, P.evaluation.ci, P.seed)
    return out


def leave_one_family_out_for_run(P, result: EvalResult) -> pd.DataFrame | None:
    """:func:`leave_one_family_out` on a run: its triplets, manifest and stage 08's cached CLIP
    embeddings (:func:`artsim_lib.measures.embeddings.extract_embeddings`: read from the cache).
    ``None`` where it does not apply: without the ``clip_siamese`` measure or the ``augment`` backend."""
    from artsim_lib.measures import embeddings

    if "clip_siamese" not in result.measures or not (result.es.derivatives["backend"] == "augment").any():
        return None
    manifest, triplets = s02_preprocess.load(P), s05_generation.load_triplets(P)
    cached = embeddings.extract_embeddings(P, embeddings.stage_images(manifest, triplets))
    return leave_one_family_out(P, triplets, cached.table, manifest)


def paired_drops(test: pd.DataFrame, scores: dict, n_boot: int, ci: float, seed: int = 0) -> pd.DataFrame:
    """Per family: query-anchored accuracy of the head trained on all families minus that of the head
    that never saw the family, on the same test triplets, with a bootstrap interval resampling whole
    test originals (positive: the family was worth something in training)."""
    rows = []
    for fam, idx in test.groupby("family", sort=True).indices.items():
        if fam not in scores:
            continue
        (ap, _, aq), (hp, _, hq) = scores["none"], scores[fam]
        d = metrics.paired_difference(
            lambda r: metrics.query_anchored_accuracy(ap[idx][r], aq[idx][r]),
            lambda r: metrics.query_anchored_accuracy(hp[idx][r], hq[idx][r]),
            test["anchor_id"].to_numpy()[idx],
            n_boot,
            ci,
            seed,
        )
        rows.append(dict(family=fam, drop=d["value"], lo=d["lo"], hi=d["hi"], n=d["n"], excludes_0=d["excludes_0"]))
    return pd.DataFrame(rows, columns=["family", "drop", "lo", "hi", "n", "excludes_0"])


def held_out_drop(table: pd.DataFrame, metric: str = "acc_query") -> pd.DataFrame:
    """Per family: ``metric`` of the head trained on all families, of the head that never saw the
    family, and the drop between them (with its paired interval when the table carries it)."""
    if table.empty:
        return table
    full = table[table["trained_without"] == "none"].set_index("family")[metric]
    held = table[table["held_out"]].set_index("family")[metric]
    out = pd.DataFrame({"trained on all": full, "family held out": held, "drop": full - held}).dropna()
    drops = table.attrs.get("drops")
    if metric == "acc_query" and drops is not None and len(drops):
        out = out.join(drops.set_index("family")[["lo", "hi", "n", "excludes_0"]])
    return out


# -- stage 09 on a run -------------------------------------------------------------------------------------
def evaluation_meta(P) -> dict:
    """What the evaluation files depend on: the evaluation params (not batch size or workers,
    which only schedule the work) and the seed."""
    cfg = P.evaluation.model_dump(mode="json", exclude={"batch_size", "workers"})
    return paths.json_roundtrip({"evaluation": cfg, "seed": P.seed})


def check_inputs(P) -> pd.DataFrame:
    """What stage 09 reads from earlier stages, checked by those stages' own ``load`` (so the same
    rules: missing, incomplete or made with other params) without building or training anything: one
    row per input (input, status, path). Errors (:class:`StageNotRunError`, naming the stage to run):
    the test set's tables (02's manifest, 05's derivatives and triplets), and the models this study
    trains for the measures asked for -- 06's pair table and fitted weights ('descriptor_fitted'),
    07's fine-tuned ``finetune.backbone`` (any fine-tuned or CNN siamese measure), 08's CLIP heads
    and CNN siamese ('clip_siamese', the siamese variants on ``finetune.backbone``). Everything else
    is a skip, not an error: a measure whose model cannot be loaded (pretrained weights offline, a
    backbone stage 07 did not train, an SSCD file) is listed with its reason in
    :attr:`EvalResult.skipped`, as the registry's loaders say (``MeasureUnavailableError``)."""
    from artsim_lib import models
    from artsim_lib.measures import trained
    from artsim_lib.models.heads import VARIANTS
    from artsim_lib.stages import s06_descriptors, s07_finetune, s08_siamese

    names, rows, missing, covered = list(P.evaluation.measures), [], [], set()

    def need(stage: str, what: str, load, path, used_by=()) -> bool:
        covered.update(used_by)
        status = "found"
        try:
            load(P)
        except StageNotRunError as err:  # err names the stage to run (an earlier one if its input is missing)
            status, path = ("made with other params" if err.stale else "missing"), err.path
            missing.append(err)
        label = f"{stage} {what}" + (f" ({', '.join(used_by)})" if used_by else "")
        rows.append({"input": label, "status": status, "path": str(path)})
        return status == "found"

    need("02", "manifest", s02_preprocess.load, P.run.manifest)
    need("05", "derivatives (pairs)", s05_generation.load, s05_generation.pairs_path(P))
    have_trip = need("05", "triplets", s05_generation.load_triplets, s05_generation.triplets_path(P))
    if "descriptor_fitted" in names and have_trip:  # stage 06's pair table: its feature cache and fitted weights
        need(
            "06",
            "descriptor pair table + fitted weights",
            s06_descriptors.load,
            s06_descriptors.pair_similarity_path(P),
            ["descriptor_fitted"],
        )
    kind = P.finetune.backbone  # stage 08's CNN siamese trains on stage 07's backbone
    cnn_trained = {trained.measure_name(k, v) for k in models.BACKBONE_KINDS for v in VARIANTS}
    cnn_trained |= {f"{k}_finetuned" for k in models.BACKBONE_KINDS}  # issue 11: one name per backbone
    if uses := [n for n in names if n in cnn_trained]:
        need("07", f"fine-tuned {kind}", s07_finetune.load, trained.finetuned_dir(P.run.root), uses)
    siamese = {"clip_siamese"} | {trained.measure_name(kind, v) for v in VARIANTS}
    if uses := [n for n in names if n in siamese]:
        need("08", f"CLIP siamese heads and {kind} siamese", s08_siamese.load, P.run.root / "siamese", uses)
    if rest := [n for n in names if n not in covered]:
        rows.append(
            {
                "input": f"no stage's model ({', '.join(rest)})",
                "status": "loaded by stage 09; skipped with the reason when unavailable",
                "path": "",
            }
        )
    if missing:
        raise missing[0]  # the earliest stage: running it (and what follows) makes the rest
    return pd.DataFrame(rows, columns=["input", "status", "path"])


def run(P, measures: dict[str, Measure] | None = None) -> EvalResult:
    """Stage 09 on params ``P``: the test set, every available measure (skipped ones listed), every
    metric; writes ``evaluation/metrics.parquet``, ``metrics.json``, ``per_style.parquet`` and
    ``scores.parquet`` (each test derivative's score per measure) under the run directory. Without
    ``measures`` the study's (``evaluation.measures``) are loaded, after :func:`check_inputs`
    (raises :class:`StageNotRunError` when an earlier stage's output is missing; trains nothing)."""
    from artsim_lib import models

    inputs, skipped = pd.DataFrame(columns=["input", "status", "path"]), None
    if measures is None:
        inputs = check_inputs(P)
        raw = set(P.evaluation.measures) & {"clip", "clip_siamese", "resnet"}
        if kinds := sorted({"clip" if "clip" in n else "resnet" for n in raw}):
            models.ensure_tiny_checkpoints(P, kinds)  # pretrained stand-ins (only with models.build_tiny)
    manifest, pairs, trip = s02_preprocess.load(P), s05_generation.load(P), s05_generation.load_triplets(P)
    es = test_set(manifest, pairs, trip, P.evaluation, P.seed, P.triplets.drop_flagged)
    if measures is None:
        measures, skipped = load_measures(P.evaluation.measures, P.run.root)
    result = evaluate_set(
        es,
        measures,
        P.evaluation,
        P.seed,
        skipped,
        P.run.root / "descriptors" / "cache",
        worker_count(P.evaluation.workers),
    )  # never more than the allocation
    result.inputs = inputs
    write_outputs(result, P)
    return result


def metrics_path(P):
    """``<run>/evaluation/metrics.parquet``, stage 09's main artifact."""
    return P.run.root / "evaluation" / "metrics.parquet"


def load(P) -> pd.DataFrame:
    """Stage 09's metrics (long: measure, metric, subset, value, lo, hi, n, note) as written for
    params ``P``; :class:`StageNotRunError` when missing or made with other evaluation params."""
    return read_current(metrics_path(P), evaluation_meta(P), "09", "evaluation metrics")


def write_outputs(result: EvalResult, P) -> dict:
    """Write the evaluation files (atomically); returns their paths by name."""
    from artsim_lib.io.provenance import provenance
    from artsim_lib.measures.base import measure_weights

    out, meta = P.run.sub("evaluation"), evaluation_meta(P)
    files = {
        "metrics": metrics_path(P),
        "per_style": out / "per_style.parquet",
        "scores": out / "scores.parquet",
        "paired": out / "paired.parquet",
        "json": out / "metrics.json",
    }
    paths.write_parquet(result.metrics, files["metrics"], meta)
    paths.write_parquet(result.paired, files["paired"], meta)
    paths.write_parquet(result.per_style, files["per_style"], meta)
    scores = pd.concat([t["derivatives"].assign(measure=n) for n, t in result.tables.items()], ignore_index=True)
    paths.write_parquet(scores.drop(columns=["path", "prompt"], errors="ignore"), files["scores"], meta)
    values, text = result.headline(text=False), result.headline(text=True)
    cells = result.metrics.set_index(["measure", "metric", "subset"])
    headline = {
        "columns": [lab for _, _, lab in result.columns()],
        "rows": [
            {
                "measure": name,
                "weights": measure_weights(name, P),  # issue 11: real-pretrained / tiny-random / trained-here
                "description": f"{MEASURE_INFO.get(name, '')} [{measure_weights(name, P)}]",
                "text": text.loc[name].to_dict(),
                "cells": {
                    lab: (
                        cells.loc[(name, m, s)][["value", "lo", "hi", "n", "note"]].to_dict()
                        if (name, m, s) in cells.index
                        else None
                    )
                    for m, s, lab in result.columns()
                },
            }
            for name in values.index
            if name != "chance"
        ],
        "chance": text.loc["chance"].to_dict(),
        # 'best' only where the paired difference to every other measure excludes 0; never by MSE/MAE
        "best": result.best(),
        "lower_is_better": sorted(LOWER_IS_BETTER),
    }
    es = result.es
    nan = result.metrics[result.metrics["metric"] == "nan_scores"].set_index("measure")["value"]
    doc = {
        "stage": "09-evaluation",
        "split": "test",
        "reference": P.evaluation.reference,
        "headline": headline,
        "skipped": result.skipped.to_dict(orient="records"),
        "test_set": {
            "originals": len(es.originals),
            "derivatives": len(es.derivatives),
            "triplets": len(es.triplets),
            "gallery": len(es.gallery),
            "queries": len(es.queries),
            "scored_pairs": len(result.scores.pairs),
            "artists": int(es.originals["artist"].nunique()) if "artist" in es.originals else None,
            "copy_gallery": len(es.copy_gallery),
            "copy_queries": len(es.copy_queries),
            "copy_queries_absent": int((es.copy_truth < 0).sum()),
            "copy_distractors": es.extra["kind"].value_counts().to_dict() if len(es.extra) else {},
        },
        "nan_scores": nan.to_dict(),
        "paired": result.paired.to_dict(orient="records"),
        "seconds": {"total": round(result.seconds, 3), **{k: round(v, 3) for k, v in result.scores.seconds.items()}},
        "params": P.evaluation.model_dump(mode="json"),
        "provenance": provenance(P),
    }
    paths.atomic_write_text(files["json"], json.dumps(_finite(doc), indent=1, default=str))
    return files


def _finite(obj):
    """``obj`` with NaN and infinities as None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
