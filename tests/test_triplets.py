"""Triplets: every original of a triplet in one split, negatives of the kind they claim."""
import pandas as pd
import pytest

from artsim_lib import config
from artsim_lib.io import manifest as data, paths, shards
from artsim_lib.stages import s05_generation as generation, s05_triplets as triplets


def _manifest():
    """Originals by split, style and artist, built so that some kinds run out of candidates:
    in val, artist 'solo' has one painting; in test, every painting is in style A."""
    rows = [  # id, split, style, artist
        ("t1", "train", "A", "ann"), ("t2", "train", "A", "ann"), ("t3", "train", "A", "bob"),
        ("t4", "train", "B", "bob"), ("t5", "train", "B", "cy"), ("t6", "train", "C", "ann"),
        ("v1", "val", "A", "solo"), ("v2", "val", "B", "dee"), ("v3", "val", "B", "dee"),
        ("s1", "test", "A", "eve"), ("s2", "test", "A", "eve"),
    ]
    m = pd.DataFrame(rows, columns=["id", "split", "style", "artist"])
    return m.assign(path=[f"/orig/{i}.png" for i in m["id"]])


def _pairs(manifest, flag=()):
    rows = []
    for r in manifest.itertuples():
        for level, s in (("moderate", 0.35), ("radical", 0.65)):
            pid = f"{r.id}:{level}"
            rows.append({"pair_id": pid, "original_id": r.id, "level": level, "family": "colour", "strength": s,
                         "path": f"/gen/{r.id}-{level}.png", "nan_flag": False, "black_flag": pid in flag,
                         "backend": "sdxl", "split": r.split, "style": r.style, "artist": r.artist})
    return pd.DataFrame(rows)


def test_negatives_are_of_their_kind_and_never_leak():
    m = _manifest()
    out = triplets.build_triplets(_pairs(m), m, seed=3).triplets
    assert list(out.columns) == triplets.COLUMNS and out["triplet_id"].is_unique
    assert triplets.leaks(out, m).empty
    info = m.set_index("id")
    anchor, neg = info.loc[out["anchor_id"]].reset_index(), info.loc[out["negative_id"]].reset_index()
    assert (anchor["split"] == out["split"]).all() and (neg["split"] == out["split"]).all()
    assert (out["anchor_id"] != out["negative_id"]).all()
    assert (out["positive_id"].str.split(":").str[0] == out["anchor_id"]).all()
    kind = out["negative_kind"]
    assert (neg["style"] != anchor["style"])[kind.eq("random").to_numpy()].all()
    assert (neg["style"] == anchor["style"])[kind.eq("same_style").to_numpy()].all()
    assert (neg["artist"] == anchor["artist"])[kind.eq("same_artist").to_numpy()].all()
    assert (out["anchor_path"] == "/orig/" + out["anchor_id"] + ".png").all()
    assert (out["positive_path"] == "/gen/" + out["positive_id"].str.replace(":", "-") + ".png").all()


def test_leaks_finds_a_cross_split_negative():
    m = _manifest()
    out = triplets.build_triplets(_pairs(m), m, seed=0).triplets
    bad = out.copy()
    bad.loc[0, "negative_id"] = "v2" if out.loc[0, "split"] != "val" else "t1"
    assert list(triplets.leaks(bad, m).index) == [0]


def test_missing_candidates_are_skipped_and_counted():
    m = _manifest()
    result = triplets.build_triplets(_pairs(m), m, per_kind=1, seed=0)
    short = result.shortfall.set_index(["split", "kind"])["skipped"]
    # By hand, per original (x2 levels): val: v1 has no same-style (A) and no same-artist
    # partner; test: no other style at all. Train: t6 is alone in style C, t5 alone as 'cy'.
    assert short[("val", "same_style")] == 2 and short[("val", "same_artist")] == 2
    assert short[("test", "random")] == 4 and short[("test", "same_style")] == 0
    assert short[("train", "same_style")] == 2 and short[("train", "same_artist")] == 2
    assert short[("train", "random")] == 0
    counts = result.triplets.groupby(["split", "negative_kind"]).size()
    wanted = result.shortfall.set_index(["split", "kind"])
    for (split, kind), n in counts.items():
        assert n == wanted.loc[(split, kind), "drawn"]


def test_per_kind_draws_distinct_negatives_and_flagged_positives_are_dropped():
    m = _manifest()
    result = triplets.build_triplets(_pairs(m, flag={"t1:radical"}), m, kinds=("random",), per_kind=3, seed=1)
    out = result.triplets
    assert result.dropped_flagged == 1 and "t1:radical" not in set(out["positive_id"])
    per = out.groupby("positive_id")["negative_id"]
    assert (per.nunique() == per.size()).all()  # without replacement
    assert per.size()["t1:moderate"] == 3  # train: 3 originals of other styles exist
    assert per.size()["v1:moderate"] == 2  # val: only v2 and v3 are not style A
    kept = triplets.build_triplets(_pairs(m, flag={"t1:radical"}), m, kinds=("random",), seed=1, drop_flagged=False)
    assert kept.dropped_flagged == 0 and "t1:radical" in set(kept.triplets["positive_id"])


def test_draws_are_seeded():
    m = pd.DataFrame({"id": [f"o{i}" for i in range(60)], "split": "train", "style": ["A", "B", "C"] * 20,
                      "artist": [f"a{i % 7}" for i in range(60)]}).assign(path="/x.png")
    pairs = _pairs(m)
    a = triplets.build_triplets(pairs, m, seed=5).triplets
    assert shards.content_hash(a) == shards.content_hash(triplets.build_triplets(pairs, m, seed=5).triplets)
    b = triplets.build_triplets(pairs, m, seed=6).triplets
    assert (a["negative_id"] != b["negative_id"]).mean() > 0.5
    with pytest.raises(ValueError, match="not in the manifest"):
        triplets.build_triplets(pairs, m.iloc[1:], seed=5)


def test_require_triplets_end_to_end(run_dir):
    P = config.load_params("smoke", ["data.synthart.num_images=40", "data.synthart.max_side=96", "preprocess.size=32",
                                     "preprocess.workers=1", "generation.augment_families=[degradation]",
                                     "generation.augment_strengths=[0.5,1.0]"])
    out = triplets.require_triplets(P)
    manifest, pairs = data.require_manifest(P), generation.require_pairs(P)
    assert set(out["split"]) == {"train", "val", "test"}
    assert triplets.leaks(out, manifest).empty
    assert set(out["positive_id"]) == set(pairs["pair_id"])
    assert paths.is_current(triplets.triplets_path(P), triplets.triplet_meta(P))
    assert (P.run.root / "triplets" / "shortfall.csv").exists()
    again = triplets.require_triplets(P)  # read back: the same table
    assert shards.content_hash(again) == shards.content_hash(out)
