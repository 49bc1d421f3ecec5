"""Stage 09: every similarity measure of the study on the held-out test split, side by side.

    result = run(P)          # require the inputs, load every measure, score, write evaluation/*
    result.metrics           # long: measure, metric, subset, value, lo, hi, n, note
    result.headline()        # one row per measure, the study's table

Only test originals, their derivatives and the test triplets are scored
(:mod:`artsim_lib.evaluation_scoring`). Metrics (:mod:`artsim_lib.metrics`; a tie never helps a
measure): MSE/MAE of the [0, 1] similarity against the reference measure's (the descriptor
similarity) over every scored pair; triplet accuracy per kind of negative; retrieval of each
derivative's original among the test originals (R@k, median rank, mAP = MRR with one relevant
item), also with the originals' phash near-duplicates left out ('dedup'); ROC-AUC of
(derivative, its original) against (derivative, a negative original); Spearman of similarity
and strength, the share of originals whose moderate derivatives score above the radical ones
and, on the ``augment`` calibration set, monotonicity per family; a breakdown per style.
Rank-based metrics use the raw score (SSIM's [0, 1] mapping clips negative values into ties).
Intervals are percentile bootstraps that resample whole test originals.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .workers import worker_count
from . import config, metrics, paths
from .evaluation_scoring import (EvalSet, PairHeadMeasure, Scores, load_measures, require_inputs,  # noqa: F401
                                 run_model_ref, run_params, score_all, test_set, unavailable_as_such)
from .measures import Measure

HARD_KINDS = ("same_style", "same_artist")


# -- per-row tables ------------------------------------------------------------------------------------
def derivative_table(es: EvalSet, sc: Scores, name: str) -> pd.DataFrame:
    """One row per test derivative: its score against its own original."""
    d = es.derivatives
    i = sc.index(d["orig"], d["img"])
    cols = [c for c in ("pair_id", "original_id", "level", "family", "op", "strength", "backend", "style",
                        "artist", "prompt", "path") if c in d]
    return d[cols].assign(raw=sc.raw[name][i], s01=sc.s01[name][i])


def triplet_table(es: EvalSet, sc: Scores, name: str) -> pd.DataFrame:
    """One row per test triplet: raw s(anchor, positive) and s(anchor, negative), and the
    verification negative s(negative original, positive)."""
    t = es.triplets
    ip, ineg, iver = sc.index(t["a"], t["p"]), sc.index(t["a"], t["n"]), sc.index(t["n"], t["p"])
    return t.drop(columns=["a", "p", "n"]).assign(
        s_pos=sc.raw[name][ip], s_neg=sc.raw[name][ineg], s_ver=sc.raw[name][iver],
        s_pos01=sc.s01[name][ip], s_neg01=sc.s01[name][ineg])


def retrieval_matrix(es: EvalSet, sc: Scores, name: str) -> np.ndarray:
    """Raw similarity of each query derivative to each gallery original. # [Q, G]"""
    q_img = es.derivatives["img"].to_numpy()[es.queries]
    a, b = np.broadcast_arrays(es.gallery[None, :], q_img[:, None])
    return sc.raw[name][sc.index(a.ravel(), b.ravel())].reshape(a.shape)


def per_query(sim: np.ndarray, truth: np.ndarray, ks, exclude=None) -> pd.DataFrame:
    """R@k, rank and reciprocal rank of each query (their means are :func:`metrics.retrieval_metrics`)."""
    rows = [metrics.retrieval_metrics(sim[q:q + 1], truth[q:q + 1], ks,
                                      None if exclude is None else exclude[q:q + 1]) for q in range(len(sim))]
    return pd.DataFrame(rows, columns=[f"R@{k}" for k in ks] + ["median_rank", "mAP"]).rename(
        columns={"median_rank": "rank", "mAP": "rr"})


def verification_table(trip: pd.DataFrame, der: pd.DataFrame) -> pd.DataFrame:
    """(derivative, its original) as positives and (derivative, the triplet's negative original)
    as negatives, with the negative's kind and the original that groups them."""
    pos = der[["original_id", "style", "raw"]].assign(label=True, kind="positive")
    neg = trip[["anchor_id", "style", "s_ver", "negative_kind"]].set_axis(
        ["original_id", "style", "raw", "kind"], axis=1).assign(label=False)
    return pd.concat([pos, neg], ignore_index=True)


# -- metrics with intervals ------------------------------------------------------------------------------
def grouped_ci(stat, groups, n_boot: int, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``stat(row indices)`` with a percentile bootstrap interval that resamples whole groups
    (originals): the same draws, row order and quantiles as ``metrics.bootstrap_ci(groups=...)`` with
    the same seed, without building a DataFrame per draw."""
    codes = pd.factorize(np.asarray(groups), sort=True)[0]
    if not len(codes):
        return float("nan"), float("nan"), float("nan")
    point = float(stat(np.arange(len(codes))))
    if n_boot == 0:
        return point, float("nan"), float("nan")
    order = np.argsort(codes, kind="stable")                   # rows grouped, original order within
    counts = np.bincount(codes)
    starts = np.cumsum(counts) - counts
    rng, values = np.random.default_rng(seed), np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(0, len(counts), len(counts))
        lens = counts[drawn]
        ends = np.cumsum(lens)
        values[b] = stat(order[np.repeat(starts[drawn] - (ends - lens), lens) + np.arange(ends[-1])])
    values = values[np.isfinite(values)]
    if not len(values):
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return point, float(lo), float(hi)


def rank_correlation(x, y) -> float:
    """Spearman's rho as :func:`metrics.spearman` computes it (Pearson of average ranks; nan for a
    constant side), without scipy's per-call overhead: the bootstrap calls it thousands of times."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def _mod_above_rad(der: pd.DataFrame) -> pd.Series:
    """Per original: 1 when its moderate derivatives score above its radical ones on average, 0 below, ½ tied."""
    wide = der.pivot_table(index="original_id", columns="level", values="raw", aggfunc="mean")
    if not {"moderate", "radical"} <= set(wide.columns):
        return pd.Series(dtype=float)
    wide = wide.dropna(subset=["moderate", "radical"])
    return (wide["moderate"] > wide["radical"]) + 0.5 * (wide["moderate"] == wide["radical"])


def _adder(rows: list, name: str, cfg, seed: int):
    """A function appending one metric row with its grouped bootstrap interval to ``rows``."""
    def add(metric, subset, stat, groups, note=""):
        value, lo, hi = grouped_ci(stat, groups, cfg.n_boot, cfg.ci, seed)
        rows.append(dict(measure=name, metric=metric, subset=subset, value=value, lo=lo, hi=hi,
                         n=len(groups), note=note))
    return add


def reference_metrics(name: str, sc: Scores, ref: str | None, pair_orig, is_pos, cfg, seed: int = 0) -> list[dict]:
    """MSE and MAE of the [0, 1] scores against the reference measure's, over every scored pair
    ('all') and over (original, own derivative) pairs ('positive'), grouped by the pair's original."""
    rows: list[dict] = []
    if ref is None or name == ref:
        note = "reference" if name == ref else "reference unavailable"
        return [dict(measure=name, metric=m, subset=s, value=np.nan, lo=np.nan, hi=np.nan, n=0, note=note)
                for m in ("mse", "mae") for s in ("all", "positive")]
    add = _adder(rows, name, cfg, seed)
    for subset, keep in (("all", np.ones(len(is_pos), bool)), ("positive", is_pos)):
        s, r, g = sc.s01[name][keep], sc.s01[ref][keep], pair_orig[keep]
        add("mse", subset, lambda i: metrics.mse(s[i], r[i]), g)
        add("mae", subset, lambda i: metrics.mae(s[i], r[i]), g)
    return rows


def measure_metrics(name: str, der, trip, ver, ranks: dict, cfg, seed: int = 0) -> list[dict]:
    """Every metric of one measure but MSE/MAE, as rows (metric, subset, value, lo, hi, n, note)."""
    rows: list[dict] = []
    add = _adder(rows, name, cfg, seed)
    for kind in ("random", *HARD_KINDS):
        t = trip[trip["negative_kind"] == kind]
        sp, sn = t["s_pos"].to_numpy(), t["s_neg"].to_numpy()
        add("triplet_acc", kind, lambda r: metrics.triplet_accuracy(sp[r], sn[r]), t["anchor_id"])
    for subset, q in ranks.items():
        for col, metric in [(c, c) for c in q.columns if c.startswith("R@")] + [("rank", "median_rank"), ("rr", "mAP")]:
            v = q[col].to_numpy()
            add(metric, subset, (lambda r, v=v: np.median(v[r])) if col == "rank" else (lambda r, v=v: v[r].mean()),
                q["original_id"])
    for subset, kinds in (("hard", HARD_KINDS), ("random", ("random",))):
        v = ver[ver["label"] | ver["kind"].isin(kinds)]
        s, lab = v["raw"].to_numpy(), v["label"].to_numpy()
        add("auc", subset, lambda r: metrics.roc_auc(s[r], lab[r]), v["original_id"])
    st, s = der["strength"].to_numpy(float), der["raw"].to_numpy()
    add("spearman_strength", "all", lambda r: rank_correlation(st[r], s[r]), der["original_id"])
    mar = _mod_above_rad(der)
    add("moderate_above_radical", "all", lambda r: float(np.mean(mar.to_numpy()[r])), mar.index.to_numpy())
    if (der["backend"] == "augment").any():
        cal = der[der["backend"] == "augment"]
        mono = metrics.monotonicity(cal, score="raw").set_index("family")
        for fam, g in cal.groupby("family", sort=True):
            fs, fv = g["strength"].to_numpy(float), g["raw"].to_numpy()
            add("monotonicity_spearman", fam, lambda r: rank_correlation(fs[r], fv[r]), g["original_id"])
            rows.append(dict(measure=name, metric="falling_steps", subset=fam, value=mono.loc[fam, "falling_steps"],
                             lo=np.nan, hi=np.nan, n=int(mono.loc[fam, "levels"]), note="no interval"))
    return rows


def style_breakdown(name: str, der, trip, ver, q_all) -> pd.DataFrame:
    """Point values per style of the original (no intervals: a style holds few test originals)."""
    rows = []
    for style, d in der.groupby("style", sort=True):
        t, v, q = trip[trip["style"] == style], ver[ver["style"] == style], q_all[q_all["style"] == style]
        hard, vh = t[t["negative_kind"].isin(HARD_KINDS)], v[v["label"] | v["kind"].isin(HARD_KINDS)]
        rows.append(dict(measure=name, style=style, originals=d["original_id"].nunique(), derivatives=len(d),
                         triplets=len(t), triplet_acc=metrics.triplet_accuracy(t["s_pos"], t["s_neg"]),
                         triplet_acc_hard=metrics.triplet_accuracy(hard["s_pos"], hard["s_neg"]),
                         **{"R@1": q["R@1"].mean() if len(q) else np.nan, "mAP": q["rr"].mean() if len(q) else np.nan},
                         auc_hard=metrics.roc_auc(vh["raw"], vh["label"]), positive_s01=d["s01"].mean()))
    return pd.DataFrame(rows)


# -- the whole evaluation ----------------------------------------------------------------------------------
HEADLINE = [("mse", "all", "MSE"), ("mae", "all", "MAE"), ("triplet_acc", "random", "acc random"),
            ("triplet_acc", "same_style", "acc same style"), ("triplet_acc", "same_artist", "acc same artist"),
            ("R@k", "all", "R@k"), ("median_rank", "all", "median rank"), ("mAP", "all", "mAP"),
            ("R@1", "dedup", "R@1 dedup"), ("mAP", "dedup", "mAP dedup"), ("auc", "hard", "AUC hard"),
            ("spearman_strength", "all", "Spearman strength"), ("moderate_above_radical", "all", "moderate > radical")]
MEASURE_INFO = {
    "ssim": "SSIM of grayscale thumbnails", "colour": "colour descriptors", "texture": "texture descriptors",
    "edges": "edge descriptors", "shape": "shape descriptors",
    "descriptor": "weighted descriptor similarity (the study's, and the reference)",
    "descriptor_fitted": "descriptor similarity, weights fitted on train", "clip": "raw CLIP cosine",
    "resnet": "ResNet-50 cosine before fine-tuning", "resnet_finetuned": "ResNet-50 cosine after fine-tuning",
    "clip_siamese": "CLIP siamese head", "resnet_siamese": "ResNet-50 siamese (triplet)",
    "resnet_regression": "ResNet-50 siamese (regression score)",
    # issue 11: the pretrained EfficientNet-Lite0 and what stages 07/08 train on it (the smoke profile)
    "effnet_lite0": "EfficientNet-Lite0 (ImageNet) cosine, no training",
    "effnet_lite0_finetuned": "EfficientNet-Lite0 cosine after fine-tuning",
    "effnet_lite0_siamese": "EfficientNet-Lite0 siamese (triplet)",
    "effnet_lite0_regression": "EfficientNet-Lite0 siamese (regression score)"}


@dataclass
class EvalResult:
    """Everything stage 09 computed, in memory (the notebook's figures read it)."""

    es: EvalSet
    scores: Scores
    metrics: pd.DataFrame                 # long: measure, metric, subset, value, lo, hi, n, note
    per_style: pd.DataFrame
    skipped: pd.DataFrame                 # measure, reason
    cfg: config.EvaluationParams
    tables: dict = field(default_factory=dict)  # measure -> {derivatives, triplets, verification, queries, retrieval}
    measures: dict = field(default_factory=dict)  # name -> Measure (the figures reuse them)
    seconds: float = 0.0

    def columns(self) -> list[tuple[str, str, str]]:
        """(metric, subset, label) of the headline table, R@k expanded."""
        return [c for m, s, lab in HEADLINE for c in
                ([(f"R@{k}", s, f"R@{k}") for k in self.cfg.ks] if m == "R@k" else [(m, s, lab)])]

    def chance(self) -> dict[str, float]:
        """What a constant measure scores on this test set (ties count at their expected value)."""
        es, q = self.es, len(self.es.queries)
        out = {"acc random": .5, "acc same style": .5, "acc same artist": .5, "AUC hard": .5,
               "Spearman strength": 0.0, "moderate > radical": .5}
        for subset, excl in (("", None), (" dedup", es.exclude())):
            r = metrics.retrieval_metrics(np.zeros((q, len(es.gallery))), es.truth, self.cfg.ks, excl) if q else {}
            out.update({(k if k != "median_rank" else "median rank") + subset: v for k, v in r.items()})
        return out

    def headline(self, text: bool = True) -> pd.DataFrame:
        """One row per measure (and 'chance'): 'value [lo, hi]' strings, or the values."""
        m = self.metrics.set_index(["measure", "metric", "subset"])
        rows = {}
        for name in self.metrics["measure"].unique():
            rows[name] = {lab: _cell(m.loc[(name, met, sub)] if (name, met, sub) in m.index else None, text)
                          for met, sub, lab in self.columns()}
        chance = self.chance()
        rows["chance"] = {lab: _num(chance.get(lab)) if text else chance.get(lab, np.nan)
                          for _, _, lab in self.columns()}
        return pd.DataFrame.from_dict(rows, orient="index")


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


def evaluate_set(es: EvalSet, measures: dict[str, Measure], cfg=None, seed: int = 0, skipped=None,
                 cache_root=None, workers: int = 1) -> EvalResult:
    """Score ``es`` with every measure and compute every metric (no files written)."""
    cfg, t0 = cfg or config.EvaluationParams(), time.perf_counter()
    sc = score_all(es, measures, cache_root, workers)
    ref = cfg.reference if cfg.reference in measures else None
    pair_orig = es.originals["id"].to_numpy()[sc.pairs[:, 0]]
    is_pos = np.isin(sc.pairs[:, 0] * sc.n_images + sc.pairs[:, 1],
                     es.derivatives["orig"].to_numpy() * sc.n_images + es.derivatives["img"].to_numpy())
    rows, styles, tables = [], [], {}
    q_orig = es.derivatives.iloc[es.queries]
    for name in measures:
        der, trip = derivative_table(es, sc, name), triplet_table(es, sc, name)
        ver = verification_table(trip, der)
        sim = retrieval_matrix(es, sc, name)
        ranks = {s: per_query(sim, es.truth, cfg.ks, ex).assign(original_id=q_orig["original_id"].to_numpy(),
                                                                  style=q_orig["style"].to_numpy())
                 for s, ex in (("all", None), ("dedup", es.exclude()))}
        rows += reference_metrics(name, sc, ref, pair_orig, is_pos, cfg, seed)
        rows += measure_metrics(name, der, trip, ver, ranks, cfg, seed)
        styles.append(style_breakdown(name, der, trip, ver, ranks["all"]))
        tables[name] = {"derivatives": der, "triplets": trip, "verification": ver, "queries": ranks["all"],
                        "retrieval": sim}
    cols = ["measure", "metric", "subset", "value", "lo", "hi", "n", "note"]
    skipped = skipped if skipped is not None else pd.DataFrame(columns=["measure", "reason"])
    return EvalResult(es, sc, pd.DataFrame(rows, columns=cols), pd.concat(styles, ignore_index=True)
                      if styles else pd.DataFrame(), skipped, cfg, tables, dict(measures), time.perf_counter() - t0)


# -- stage 09 on a run -------------------------------------------------------------------------------------
def evaluation_meta(P) -> dict:
    """What the evaluation files depend on: the evaluation params (not batch size or workers,
    which only schedule the work) and the seed."""
    cfg = P.evaluation.model_dump(mode="json", exclude={"batch_size", "workers"})
    return paths.json_roundtrip({"evaluation": cfg, "seed": P.seed})


def run(P, measures: dict[str, Measure] | None = None) -> EvalResult:
    """Stage 09 on params ``P``: the test set, every available measure (skipped ones listed), every
    metric; writes ``evaluation/metrics.parquet``, ``metrics.json``, ``per_style.parquet`` and
    ``scores.parquet`` (each test derivative's score per measure) under the run directory."""
    from .data import require_manifest
    from .generation import require_pairs
    from .triplets import require_triplets

    manifest, pairs, trip = require_manifest(P), require_pairs(P), require_triplets(P)
    es = test_set(manifest, pairs, trip, P.evaluation, P.seed, P.triplets.drop_flagged)
    skipped = None
    if measures is None:
        measures, skipped = load_measures(P.evaluation.measures, P.run.root)
    result = evaluate_set(es, measures, P.evaluation, P.seed, skipped, P.run.root / "descriptors" / "cache",
                          worker_count(P.evaluation.workers))  # never more than the allocation
    write_outputs(result, P)
    return result


def write_outputs(result: EvalResult, P) -> dict:
    """Write the evaluation files (atomically); returns their paths by name."""
    from .measures import measure_weights
    from .provenance import provenance

    out, meta = P.run.sub("evaluation"), evaluation_meta(P)
    files = {"metrics": out / "metrics.parquet", "per_style": out / "per_style.parquet",
             "scores": out / "scores.parquet", "json": out / "metrics.json"}
    paths.write_parquet(result.metrics, files["metrics"], meta)
    paths.write_parquet(result.per_style, files["per_style"], meta)
    scores = pd.concat([t["derivatives"].assign(measure=n) for n, t in result.tables.items()], ignore_index=True)
    paths.write_parquet(scores.drop(columns=["path", "prompt"], errors="ignore"), files["scores"], meta)
    values, text = result.headline(text=False), result.headline(text=True)
    cells = result.metrics.set_index(["measure", "metric", "subset"])
    headline = {"columns": [lab for _, _, lab in result.columns()], "rows": [
        {"measure": name, "weights": measure_weights(name, P),  # issue 11: real-pretrained / tiny-random / trained-here
         "description": f"{MEASURE_INFO.get(name, '')} [{measure_weights(name, P)}]", "text": text.loc[name].to_dict(),
         "cells": {lab: (cells.loc[(name, m, s)][["value", "lo", "hi", "n", "note"]].to_dict()
                         if (name, m, s) in cells.index else None) for m, s, lab in result.columns()}}
        for name in values.index if name != "chance"], "chance": text.loc["chance"].to_dict()}
    es = result.es
    doc = {"stage": "09-evaluation", "split": "test", "reference": P.evaluation.reference, "headline": headline,
           "skipped": result.skipped.to_dict(orient="records"),
           "test_set": {"originals": len(es.originals), "derivatives": len(es.derivatives),
                        "triplets": len(es.triplets), "gallery": len(es.gallery), "queries": len(es.queries),
                        "scored_pairs": len(result.scores.pairs)},
           "seconds": {"total": round(result.seconds, 3), **{k: round(v, 3) for k, v in result.scores.seconds.items()}},
           "params": P.evaluation.model_dump(mode="json"), "provenance": provenance(P)}
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
