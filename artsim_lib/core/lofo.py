"""Leave one transformation family out: has a trained head learnt *these transformations*, or similarity?

On the ``augment`` set every derivative belongs to one of four families (photometric, degradation,
geometric, stylistic). A head trained on all four and tested on the same four can score well by
recognising the transformations it was shown. Here the CLIP siamese head is trained again on the
train/val triplets of three families only and tested on the test triplets of the fourth, beside a
head trained (the same way, same seed) on all four: the drop on the held-out family is what
"learnt this transformation" was worth. Nothing is written; the heads live in memory.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from artsim_lib.core import metrics


def head_scores(model, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosines of the refined embeddings: s(anchor, positive), s(anchor, negative) and
    s(positive, negative) of every triplet of ``data`` (:class:`siamese.TripletTensors`). # [T] x 3"""
    import torch

    with torch.no_grad():
        z = torch.nn.functional.normalize(model.eval().embed(data.emb), dim=-1).numpy()  # [M, d]
    a, p, n = (t.numpy() for t in (data.a, data.p, data.n))
    return (np.einsum("td,td->t", z[a], z[p]), np.einsum("td,td->t", z[a], z[n]),
            np.einsum("td,td->t", z[p], z[n]))


def family_table(held: str, test: pd.DataFrame, s_pos, s_neg, s_qneg) -> list[dict]:
    """Triplet accuracies (the seed's and the query-anchored) per family of the test triplets."""
    rows = []
    for fam, idx in test.groupby("family", sort=True).indices.items():
        hard = test["negative_kind"].to_numpy()[idx] != "random"
        rows.append(dict(trained_without=held, family=fam, triplets=len(idx),
                         originals=test["anchor_id"].iloc[idx].nunique(),
                         acc=metrics.triplet_accuracy(s_pos[idx], s_neg[idx]),
                         acc_query=metrics.query_anchored_accuracy(s_pos[idx], s_qneg[idx]),
                         acc_query_hard=metrics.query_anchored_accuracy(s_pos[idx][hard], s_qneg[idx][hard])))
    return rows


def leave_one_family_out(P, triplets: pd.DataFrame, table: pd.DataFrame, manifest: pd.DataFrame,
                         families: list[str] | None = None) -> pd.DataFrame:
    """CLIP siamese heads trained without each family (and one with all, ``trained_without='none'``),
    each scored on the test triplets per family. ``table``: stage 08's cached CLIP embeddings
    (id, embedding). Rows: trained_without, family, triplets, originals, acc, acc_query,
    acc_query_hard, held_out (the family was not in training)."""
    from artsim_lib.io import shards
    from artsim_lib.stages.s08_siamese import fit_head, head_config, split_triplets, triplet_tensors

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


def paired_drops(test: pd.DataFrame, scores: dict, n_boot: int, ci: float, seed: int = 0) -> pd.DataFrame:
    """Per family: query-anchored accuracy of the head trained on all families minus that of the head
    that never saw the family, on the same test triplets, with a bootstrap interval resampling whole
    test originals (positive: the family was worth something in training)."""
    rows = []
    for fam, idx in test.groupby("family", sort=True).indices.items():
        if fam not in scores:
            continue
        (ap, _, aq), (hp, _, hq) = scores["none"], scores[fam]
        d = metrics.paired_difference(lambda r: metrics.query_anchored_accuracy(ap[idx][r], aq[idx][r]),
                                      lambda r: metrics.query_anchored_accuracy(hp[idx][r], hq[idx][r]),
                                      test["anchor_id"].to_numpy()[idx], n_boot, ci, seed)
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
