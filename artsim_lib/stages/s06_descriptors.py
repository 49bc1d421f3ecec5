"""Stage 06: handcrafted descriptors of every image of the triplets and their similarities.

:func:`run` describes every distinct image of stage 05's triplets (:mod:`artsim_lib.core.descriptors`,
cached per image under ``descriptors/cache/`` in the run directory, in parallel, streamed in parts of
at most :data:`~artsim_lib.core.descriptor_similarity.PART_IMAGES` images), scores each triplet's
anchor-positive and anchor-negative pair per family (:mod:`artsim_lib.core.descriptor_similarity`),
fits the family weights on the train split and writes

* ``descriptors/pair_similarity.parquet``: the pair table (read back by :func:`load`);
* ``descriptors/fitted_weights.json``: the fitted weights and the triplet accuracies
  (:func:`load_fitted_weights`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from artsim_lib.core.descriptor_similarity import (
    MEASURES,
    accuracy_table,
    combine,
    fit_weights,
    normalise_weights,
    pair_rows,
    stream_pair_scores,
    unique_pairs,
    with_scores,
)
from artsim_lib.io import paths, workers
from artsim_lib.io.artifacts import read_current
from artsim_lib.measures.trained import fitted_weights_path, load_fitted_weights  # noqa: F401  (stage 06 writes them)
from artsim_lib.stages.s05_generation import load_triplets


@dataclass
class DescriptorResult:
    """What stage 06 produced: the pair table, the fitted weights and how long it took."""

    pairs: pd.DataFrame  # one row per (triplet, role): similarities per family + total
    fitted: dict  # fit_weights() of the train split, plus the param weights
    accuracy: pd.DataFrame  # triplet accuracy per split (rows) and measure (columns)
    n_images: int
    n_cached: int  # images whose features came from the cache
    extract_seconds: float
    pair_seconds: float


def pair_similarity_path(P) -> Path:
    """``<run>/descriptors/pair_similarity.parquet``."""
    return P.run.root / "descriptors" / "pair_similarity.parquet"


def stage_meta(P, triplets: pd.DataFrame) -> dict:
    """What the pair table depends on: the descriptor params, the feature key (params, version
    and module constants, see ``descriptors.params_key``) and the triplets."""
    from artsim_lib.core.descriptors import params_key
    from artsim_lib.io.shards import content_hash

    return {
        "descriptors": P.descriptors.model_dump(mode="json", exclude={"workers"}),
        "features": params_key(P.descriptors),
        "triplets": content_hash(triplets),
    }


def run(P, triplets: pd.DataFrame | None = None, progress: bool = True) -> DescriptorResult:
    """Stage 06 on ``triplets`` (by default stage 05's, :func:`load_triplets`): features of every image (cached, in
    parallel, streamed in parts), the per-pair similarities, weights fitted on the train split;
    writes ``descriptors/pair_similarity.parquet`` and ``descriptors/fitted_weights.json`` under
    the run directory."""
    triplets = load_triplets(P) if triplets is None else triplets
    if not (triplets["split"] == "train").any():  # before any work: descriptor_fitted never fits on val/test
        present = ", ".join(sorted(map(str, triplets["split"].unique()))) or "none"
        raise ValueError(
            f"descriptors: the triplets have no 'train' split (splits: {present}); descriptor_fitted "
            "is fitted on train only"
        )
    cfg, out_dir = P.descriptors, P.run.sub("descriptors")
    table = pair_rows(triplets)
    n_workers = workers.worker_count(cfg.workers)  # never more processes than the allocation has CPUs
    streamed = stream_pair_scores(unique_pairs(table), cfg, out_dir / "cache", n_workers, progress=progress)
    t1 = time.perf_counter()
    pairs = with_scores(table, streamed.scored, cfg.weights)
    train = pairs[pairs["split"] == "train"]
    fitted = fit_weights(train, cfg.fit_l2)
    fitted.update(fit_split="train", param_weights=normalise_weights(cfg.weights))
    pairs["descriptor_fitted"] = combine(pairs, fitted["weights"])
    accuracy = accuracy_table(pairs, MEASURES + ("descriptor_fitted",))
    fitted["accuracy"] = {
        m: {k: (None if np.isnan(v) else float(v)) for k, v in col.items()} for m, col in accuracy.items()
    }
    paths.atomic_write_text(fitted_weights_path(P.run.root), json.dumps(fitted, indent=2))
    paths.write_parquet(pairs, pair_similarity_path(P), stage_meta(P, triplets))
    return DescriptorResult(
        pairs,
        fitted,
        accuracy,
        streamed.n_images,
        streamed.n_cached,
        streamed.extract_seconds,
        streamed.pair_seconds + time.perf_counter() - t1,
    )


def load(P) -> pd.DataFrame:
    """The pair table of stage 06 for ``P`` (made from stage 05's current triplets with ``P``'s
    descriptor params), or :class:`~artsim_lib.io.artifacts.StageNotRunError`: "run stage 06
    first" (or stage 05, when the triplets themselves are missing or stale)."""
    return read_current(pair_similarity_path(P), stage_meta(P, load_triplets(P)), "06", "the descriptor pair table")
