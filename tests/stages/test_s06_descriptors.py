"""Stage 06: the runner over a run directory -- the pair table and the fitted weights it writes,
streamed in parts, read back by load (or "run stage 06 first"). The similarity functions themselves
are tested in tests/test_descriptors.py."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from artsim_lib import config
from artsim_lib.core import descriptor_similarity as dsim
from artsim_lib.core import descriptors as features
from artsim_lib.io import paths
from artsim_lib.io.artifacts import StageNotRunError
from artsim_lib.stages import s05_generation as generation
from artsim_lib.stages import s06_descriptors as descriptors

CFG = config.DescriptorParams()


def test_stage_writes_the_pair_table_and_the_fitted_weights(tiny_triplets, run_dir):
    P = config.load_params("smoke", ["descriptors.workers=1"])
    trip = tiny_triplets
    res = descriptors.run(P, trip, progress=False)
    pairs = res.pairs
    assert len(pairs) == 2 * len(trip) and res.n_images == 6 + 12 and res.n_cached == 0
    assert pairs.groupby("triplet_id")["role"].agg(lambda r: sorted(r) == ["negative", "positive"]).all()
    assert set(pairs["group"]) == {"moderate", "radical", "negative: random", "negative: same_style"}
    np.testing.assert_allclose(pairs["descriptor"], dsim.combine(pairs, P.descriptors.weights))
    for m in dsim.MEASURES:
        assert pairs[m].between(0, 1).all()
    # The same image pair scores the same in every triplet that holds it.
    assert (pairs.groupby(["anchor_path", "other_path"])["descriptor"].nunique() == 1).all()
    fitted = json.loads(descriptors.fitted_weights_path(P.run.root).read_text())
    assert fitted["fit_split"] == "train" and fitted["n_pairs"] == 2 * (trip["split"] == "train").sum()
    assert sum(fitted["weights"].values()) == pytest.approx(1.0)
    assert fitted["param_weights"] == dsim.normalise_weights(P.descriptors.weights)
    assert list(res.accuracy.index) == ["test", "train", "all"]
    # Written with its params: a re-run is all cache hits; other weights make the table stale.
    target = descriptors.pair_similarity_path(P)
    assert paths.is_current(target, descriptors.stage_meta(P, trip))
    P2 = config.load_params("smoke", ["descriptors.workers=1", "descriptors.weights.colour=1.0"])
    assert not paths.is_current(target, descriptors.stage_meta(P2, trip))
    assert descriptors.run(P, trip, progress=False).n_cached == 18


def test_without_a_train_split_the_stage_refuses_to_fit_on_the_rest(tiny_triplets, run_dir):
    P = config.load_params("smoke", ["descriptors.workers=1"])
    trip = tiny_triplets.assign(split=lambda t: t["split"].replace({"train": "val"}))
    with pytest.raises(ValueError, match=r"no 'train' split \(splits: test, val\)") as err:
        descriptors.run(P, trip, progress=False)
    assert "\n" not in str(err.value)
    # It fails before any work: no pair table, no fitted weights, no feature cache.
    assert not descriptors.fitted_weights_path(P.run.root).exists()
    assert not (P.run.root / "descriptors" / "pair_similarity.parquet").exists()
    assert not (P.run.root / "descriptors" / "cache").exists()


def test_streamed_parts_score_as_all_features_in_memory(tiny_triplets, tmp_path, run_dir, monkeypatch):
    trip = tiny_triplets
    table = dsim.pair_rows(trip)
    unique = dsim.unique_pairs(table)
    images = sorted(set(unique["anchor_path"]) | set(unique["other_path"]))
    feats, _ = features.extract_many(images, CFG, None, workers=1)
    whole = dsim.score_pairs(table, dict(zip(images, feats)), CFG.weights, progress=False)
    # Parts of at most 4 images (an anchor, its 2 derivatives, its negatives: 4-5 each).
    sizes = []
    real = features.extract_many
    monkeypatch.setattr(features, "extract_many", lambda imgs, *a, **k: sizes.append(len(imgs)) or real(imgs, *a, **k))
    parts = dsim.pair_parts(unique, max_images=4)
    assert len(parts) > 3 and sorted(np.concatenate(parts).tolist()) == list(range(len(unique)))
    streamed = dsim.stream_pair_scores(unique, CFG, tmp_path / "cache", workers=1, max_images=4, progress=False)
    assert len(sizes) == len(parts) and max(sizes) <= 5  # never all 18 images at once
    assert streamed.n_images == len(images) and streamed.n_cached == 0
    pd.testing.assert_frame_equal(dsim.with_scores(table, streamed.scored, CFG.weights), whole)
    # The stage itself, streamed in small parts, writes the same table as in one part.
    P = config.load_params("smoke", ["descriptors.workers=1"])
    one = descriptors.run(P, trip, progress=False)
    monkeypatch.setattr(dsim, "PART_IMAGES", 4)
    shutil.rmtree(P.run.root / "descriptors")
    many = descriptors.run(P, trip, progress=False)
    assert many.n_cached == 0 and many.n_images == one.n_images == 18
    pd.testing.assert_frame_equal(many.pairs, one.pairs)
    assert many.fitted == one.fitted


def test_load_reads_the_current_table_and_never_recomputes(tiny_triplets, run_dir):
    P = config.load_params("smoke", ["descriptors.workers=1"])
    with pytest.raises(StageNotRunError, match="the triplets .* run stage 05 first"):
        descriptors.load(P)  # no triplets: stage 05 is named, nothing is built
    trip = tiny_triplets  # written as stage 05 writes them, so that run() and load() read them from the run
    paths.write_parquet(trip, generation.triplets_path(P), generation.triplet_meta(P))
    with pytest.raises(StageNotRunError, match="the descriptor pair table .* is missing: run stage 06 first"):
        descriptors.load(P)
    made = descriptors.run(P, progress=False)
    assert len(made.pairs) == 2 * len(trip)
    pd.testing.assert_frame_equal(descriptors.load(P).reset_index(drop=True), made.pairs.reset_index(drop=True))
    assert descriptors.load_fitted_weights(P.run.root) == json.loads(
        descriptors.fitted_weights_path(P.run.root).read_text()
    )
    # Other triplets (one dropped): the table on disk is stale, and load says so instead of recomputing.
    paths.write_parquet(trip.iloc[1:], generation.triplets_path(P), generation.triplet_meta(P))
    with pytest.raises(StageNotRunError, match="made with other params: run stage 06 first"):
        descriptors.load(P)
    # Other descriptor params: stale as well.
    with pytest.raises(StageNotRunError, match="run stage 06 first"):
        descriptors.load(config.load_params("smoke", ["descriptors.workers=1", "descriptors.weights.colour=1.0"]))


def test_load_fitted_weights_names_the_missing_file(run_dir):
    with pytest.raises(FileNotFoundError, match="fitted_weights.json: no fitted descriptor weights"):
        descriptors.load_fitted_weights(run_dir)
