"""Stage 05: the three backends, flags, determinism, sharding and resumption; the triplets: every
original of a triplet in one split, negatives of the kind they claim."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artsim_lib import config
from artsim_lib.io import paths, shards
from artsim_lib.io.artifacts import StageNotRunError
from artsim_lib.stages import s01_eda, s02_preprocess
from artsim_lib.stages import s04_prompting as prompting
from artsim_lib.stages import s05_generation as generation

# Stage 05 starts from stage 02's manifest: made on demand for these tests' bare run directories.
pytestmark = pytest.mark.usefixtures("upstream_on_demand")
LOAD, LOAD_TRIPLETS = generation.load, generation.load_triplets  # the library's own, never on demand

FIXTURE = Path(__file__).parents[1] / "fixtures" / "precomputed"
SMALL = [
    "data.synthart.num_images=16",
    "data.synthart.max_side=96",
    "preprocess.size=32",
    "preprocess.workers=1",
    "generation.backend=augment",
    "generation.augment_families=[photometric,geometric]",
    "generation.augment_strengths=[0.5,1.0]",
    "generation.batch_size=5",
]


def _params(*extra):
    return config.load_params("smoke", SMALL + list(extra))


def _image_hashes(pairs):
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in pairs["path"]]


def _table_hash(pairs):
    """content_hash of pairs from another run directory: image paths by their name only, and no
    fingerprints (another batch size may move a pixel by one level: compared separately)."""
    return shards.content_hash(pairs.assign(path=[Path(p).name for p in pairs["path"]]).drop(columns="sha256"))


# -- flags ------------------------------------------------------------------------------------


def test_flags_on_hand_made_arrays():
    bright = np.full((4, 4, 3), 0.6, np.float32)
    assert generation.image_flags(bright) == (False, False)
    assert generation.image_flags(np.zeros((4, 4, 3), np.float32)) == (False, True)
    assert generation.image_flags(np.full((4, 4, 3), np.nan, np.float32)) == (True, True)  # NaNs save as black
    one_nan = bright.copy()
    one_nan[1, 2, 0] = np.nan
    assert generation.image_flags(one_nan) == (True, False)
    near_black = np.zeros((4, 4, 3), np.uint8)
    near_black[0, 0] = 4  # 4/255 = 0.016 <= 0.02
    assert generation.image_flags(near_black, black_max=0.02) == (False, True)
    assert generation.image_flags(near_black, black_max=0.01) == (False, False)
    assert generation.image_flags(np.full((2, 2, 3), np.inf, np.float32)) == (True, False)


def test_to_uint8_by_hand():
    a = np.array([[[0.0, 0.5, 1.0], [np.nan, 1.7, -0.2]]], np.float32)
    assert generation.to_uint8(a).tolist() == [[[0, 128, 255], [0, 255, 0]]]


# -- precomputed ------------------------------------------------------------------------------


def _fixture_manifest(tmp_path, size=32):
    names = [
        "Cubism/anna-kovac_broken-still-life-1912.jpg",
        "Impressionism/claude-monet_water-lilies-1916.jpg",
        "Baroque/pieter-claesz_vanitas-1630.jpg",
        "Realism/ilya-repin_no-derivative-1880.jpg",
    ]
    rows = []
    for k, name in enumerate(names):
        path = tmp_path / f"orig{k}.png"
        Image.new("RGB", (size, size), (k * 40, 100, 100)).save(path)
        style = name.split("/")[0]
        rows.append(
            {
                "id": name.lower().replace("/", "__")[:-4],
                "path": str(path),
                "filename": name,
                "style": style,
                "artist": name.split("/")[1].split("_")[0],
                "split": ["train", "val", "test", "train"][k],
            }
        )
    return pd.DataFrame(rows)


def test_parse_generated_names():
    assert generation.parse_generated("images/Cubism/a-b_c-1912_resize768_generated.jpg") == ("cubism", "a-b_c-1912")
    assert generation.parse_generated("Pop_Art/x_generated.png") == ("pop_art", "x")
    assert generation.parse_generated("images/Cubism/x.jpg") is None
    assert generation.parse_generated("x_resize768_generated.jpg") is None  # no style folder


def test_match_precomputed_fixture(tmp_path):
    manifest = _fixture_manifest(tmp_path)
    with pytest.warns(UserWarning, match="3 of 5 row"):
        jobs, unmatched = generation.match_precomputed(FIXTURE, manifest, {"moderate": 0.35, "radical": 0.65})
    assert sorted(jobs["pair_id"]) == [
        "cubism__anna-kovac_broken-still-life-1912:moderate",
        "impressionism__claude-monet_water-lilies-1916:moderate",
    ]
    assert set(jobs["level"]) == {"moderate"} and set(jobs["strength"]) == {0.35}
    assert (
        jobs.set_index("original_id").loc["cubism__anna-kovac_broken-still-life-1912", "prompt"]
        == "a cubist still life, in warm evening light"
    )
    reasons = dict(zip(unmatched["generated_image"], unmatched["reason"]))
    assert reasons["images/Baroque/pieter-claesz_vanitas-1630_resize768_generated.jpg"] == "file missing"
    assert reasons["images/Cubism/nobody_no-such-painting_resize768_generated.jpg"].startswith("no original")
    assert reasons["stray-file.jpg"].startswith("name not in the layout")


def test_precomputed_level_column_and_duplicates(tmp_path):
    folder = tmp_path / "published"
    shutil.copytree(FIXTURE, folder)
    table = pd.read_csv(folder / "data.csv")
    first = table.iloc[0].copy()
    table = pd.concat([table, first.to_frame().T], ignore_index=True)  # the same image twice
    table["level"] = ["radical", "", "moderate", "moderate", "moderate", "radical"]
    table.to_csv(folder / "data.csv", index=False)
    with pytest.warns(UserWarning):
        jobs, _ = generation.match_precomputed(folder, _fixture_manifest(tmp_path), {"moderate": 0.3, "radical": 0.7})
    cub = "cubism__anna-kovac_broken-still-life-1912"
    assert sorted(jobs["pair_id"]) == sorted(
        [f"{cub}:radical", f"{cub}:radical:1", "impressionism__claude-monet_water-lilies-1916:moderate"]
    )
    assert jobs.set_index("pair_id").loc[f"{cub}:radical", "strength"] == 0.7


def test_precomputed_backend_end_to_end(run_dir, tmp_path, monkeypatch):
    manifest = _fixture_manifest(tmp_path)
    monkeypatch.setattr(s02_preprocess, "load", lambda P: manifest)
    P = _params("generation.backend=precomputed", f"generation.precomputed={FIXTURE}")
    with pytest.warns(UserWarning):
        run = generation.run(P)
    pairs = run.pairs
    assert list(pairs.columns) == generation.COLUMNS and len(pairs) == 2 and len(run.unmatched) == 3
    assert (P.run.root / "generation" / "unmatched.csv").exists()
    assert set(pairs["backend"]) == {"precomputed"} and pairs["seed"].isna().all()
    for r in pairs.itertuples():
        with Image.open(r.path) as im:  # 24 px source -> the originals' 32 px, colour kept
            assert im.size == (32, 32) and im.mode == "RGB"
            corner = np.asarray(im)[:4, :4].reshape(-1, 3).mean(0)
        want = (200, 40, 40) if r.original_id.startswith("cubism") else (40, 60, 200)
        assert np.abs(corner - want).max() < 20
    assert pairs.set_index("original_id").loc["impressionism__claude-monet_water-lilies-1916", "split"] == "val"


# -- augment: contract, determinism, shards, resumption ----------------------------------------


def test_augment_pairs_follow_the_contract(run_dir):
    P = _params()
    pairs = generation.run(P).pairs
    manifest = s02_preprocess.load(P)
    assert list(pairs.columns) == generation.COLUMNS
    assert len(pairs) == len(manifest) * 2 * 2 and pairs["pair_id"].is_unique
    assert set(pairs["family"]) == {"photometric", "geometric"} and set(pairs["strength"]) == {0.5, 1.0}
    assert (pairs["level"] == np.where(pairs["strength"] <= 0.5, "moderate", "radical")).all()
    assert pairs["prompt"].isna().all() and not pairs["nan_flag"].any() and not pairs["black_flag"].any()
    info = manifest.set_index("id")
    for col in ("split", "style", "artist"):
        assert (pairs[col].to_numpy() == info.loc[pairs["original_id"], col].to_numpy()).all()
    # One seed (and so one op) per (original, family), whatever the strength.
    assert (pairs.groupby(["original_id", "family"])[["seed", "op"]].nunique() == 1).all().all()
    for r in pairs.sample(6, random_state=0).itertuples():
        with Image.open(r.path) as im:
            assert im.size == (32, 32) and im.mode == "RGB" and Path(r.path).is_absolute()
    assert paths.is_current(generation.pairs_path(P), generation.generation_meta(P))
    assert shards.content_hash(generation.load(P)) == shards.content_hash(pairs)  # read back, not rerun


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted, unsharded run in its own run directory: (pairs, image hashes)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARTSIM_RUN_DIR", str(tmp_path_factory.mktemp("reference")))
        P = _params()
        s01_eda.run(P)
        s02_preprocess.run(P)
        pairs = generation.run(P).pairs
        return pairs, _image_hashes(pairs)


def test_sharded_run_equals_unsharded(run_dir, reference):
    P = _params("generation.batch_size=3")
    with pytest.raises(RuntimeError, match="cannot merge"):
        generation.run(P, 3, -1)
    for k in range(3):
        run = generation.run(P, 3, k)
        assert (run.pairs is None) == (k < 2) and run.made > 0
        if k < 2:
            assert run.pending and k not in run.pending
    pairs = run.pairs
    assert _table_hash(pairs) == _table_hash(reference[0])
    assert _image_hashes(pairs) == reference[1]
    assert shards.content_hash(generation.run(P, 3, -1).pairs) == shards.content_hash(pairs)


def test_killed_then_resumed_run_equals_uninterrupted(run_dir, reference, monkeypatch):
    P = _params()
    real_append, calls = shards.ShardStore.append, []

    def dying_append(self, records):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real_append(self, records)

    monkeypatch.setattr(shards.ShardStore, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        generation.run(P)
    monkeypatch.setattr(shards.ShardStore, "append", real_append)
    root = generation.work_dir(P)
    assert len(list(root.glob("shard-*/part-*.parquet"))) == 2 and not generation.pairs_path(P).exists()
    assert not list(root.rglob("*.tmp*"))  # nothing half-written
    run = generation.run(P)
    assert run.made == len(reference[0]) - 2 * 5  # two batches of 5 were kept
    assert _table_hash(run.pairs) == _table_hash(reference[0])
    assert _image_hashes(run.pairs) == reference[1]


def test_other_params_get_a_fresh_work_dir(run_dir):
    a, b = _params(), _params("generation.augment_strengths=[0.25,1.0]")
    c = _params("generation.batch_size=9")  # batch size never changes an output
    assert generation.work_dir(a) != generation.work_dir(b)
    assert generation.work_dir(a) == generation.work_dir(c)


# -- sdxl (the tiny pipeline) -----------------------------------------------------------------


@pytest.fixture
def tiny_sdxl(tiny_models):
    return tiny_models("sdxl_refiner")


def _sdxl_params(tiny_sdxl, *extra):
    return _params(
        "generation.backend=sdxl",
        f"models.sdxl_refiner={tiny_sdxl}",
        "generation.steps=2",
        "generation.strength={moderate: 0.5, radical: 1.0}",
        "generation.size=64",
        *extra,
    )


def test_the_generation_key_names_what_was_made_not_where(tiny_sdxl, run_dir):
    """GPU shard jobs in float16 and a CPU merge job in float32 must find the same work folder,
    and so must later CPU stages: device, dtype and batch size are not part of the key."""
    ref = _sdxl_params(tiny_sdxl)
    for other in (["dtype=float16"], ["dtype=bfloat16", "device=cpu"], ["generation.batch_size=7"], ["num_workers=8"]):
        Q = _sdxl_params(tiny_sdxl, *other)
        assert generation.generation_meta(Q) == generation.generation_meta(ref), other
        assert generation.work_dir(Q) == generation.work_dir(ref)
    assert generation.work_dir(_sdxl_params(tiny_sdxl, "generation.steps=3")) != generation.work_dir(ref)


def _prompts(manifest, n=2):
    """Prompts for ``n`` originals: the last one from shard 1 of 2, the others from shard 0."""
    ids = sorted(manifest["id"], key=lambda i: (shards.shard_of(i, 2), i))
    ids = sorted(ids[: n - 1] + ids[-1:])
    return pd.DataFrame(
        [
            {"prompt_id": f"{i}:{lv}", "id": i, "level": lv, "family": fam, "prompt": f"{lv} {i}"}
            for i in ids
            for lv, fam in (("moderate", "colour"), ("radical", "surreal"))
        ]
    )


def test_sdxl_seeds_are_per_item(tiny_sdxl, run_dir):
    P = _sdxl_params(tiny_sdxl)
    pipe = generation.load_sdxl(P)
    images = [Image.new("RGB", (32, 32), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    batch = generation.sdxl_images(pipe, images, ["a", "b", "c"], [11, 22, 33], 0.5, P.generation)
    assert batch.shape == (3, 32, 32, 3) and np.isfinite(batch).all()
    # Another batch size, another position: item 'c' keeps its noise; item 'a' with another seed does not.
    other = generation.sdxl_images(pipe, [images[2], images[0]], ["c", "a"], [33, 12], 0.5, P.generation)
    assert np.abs(other[0] - batch[2]).max() < 1e-3
    assert np.abs(other[1] - batch[0]).max() > 0.05
    with pytest.raises(ValueError, match="no denoising step"):
        generation.sdxl_images(pipe, images[:1], ["a"], [11], 0.3, P.generation)  # int(2 * 0.3) = 0


def test_sdxl_backend_end_to_end(tiny_sdxl, run_dir, tmp_path, monkeypatch):
    P = _sdxl_params(tiny_sdxl, "generation.batch_size=4")
    prompts = _prompts(s02_preprocess.load(P), n=2)
    monkeypatch.setattr(prompting, "load", lambda P: prompts)
    pairs = generation.run(P).pairs
    assert list(pairs["pair_id"]) == sorted(prompts["prompt_id"])
    assert (pairs["strength"] == pairs["level"].map({"moderate": 0.5, "radical": 1.0})).all()
    assert (pairs["prompt"].to_numpy() == prompts.set_index("prompt_id").loc[pairs["pair_id"], "prompt"]).all()
    assert set(pairs["family"]) == {"colour", "surreal"} and not pairs["nan_flag"].any()
    with Image.open(pairs["path"].iloc[0]) as im:
        assert im.size == (32, 32)  # made at generation.size=64, saved at the originals' size
    from artsim_lib.io import paths

    assert list(pairs["sha256"]) == [paths.file_sha256(p) for p in pairs["path"]]  # recorded when written
    assert set(pairs["dtype"]) == {"float32"} and set(pairs["device"]) == {"cpu"}  # provenance, per image
    # Two shards, batches of 1, another run directory: the same table, images to within 1/255.
    monkeypatch.setenv("ARTSIM_RUN_DIR", str(tmp_path / "sharded"))
    Q = _sdxl_params(tiny_sdxl, "generation.batch_size=1")
    assert generation.run(Q, 2, 0).pairs is None
    sharded = generation.run(Q, 2, 1).pairs
    assert _table_hash(sharded) == _table_hash(pairs)
    for a, b in zip(pairs["path"], sharded["path"]):
        assert np.abs(np.asarray(Image.open(a), int) - np.asarray(Image.open(b), int)).max() <= 1


def test_sdxl_nan_output_is_flagged_and_saved_black(tiny_sdxl, run_dir, monkeypatch):
    P = _sdxl_params(tiny_sdxl, "generation.size=null")
    prompts = _prompts(s02_preprocess.load(P), n=2)
    monkeypatch.setattr(prompting, "load", lambda P: prompts)

    def fp16_overflow(pipe, images, prompts, seeds, strength, g):  # what the stock VAE does in float16
        out = np.full((len(images), 32, 32, 3), 0.5, np.float32)
        out[0] = np.nan
        return out

    monkeypatch.setattr(generation, "sdxl_images", fp16_overflow)
    pairs = generation.run(P).pairs
    flagged = pairs[pairs["nan_flag"]]
    assert len(flagged) == 2  # the first of each (one-strength) batch
    assert flagged["black_flag"].all() and not pairs.loc[~pairs["nan_flag"], "black_flag"].any()
    with Image.open(flagged["path"].iloc[0]) as im:
        assert np.asarray(im).max() == 0


# -- triplets ---------------------------------------------------------------------------------


def _manifest():
    """Originals by split, style and artist, built so that some kinds run out of candidates:
    in val, artist 'solo' has one painting; in test, every painting is in style A."""
    rows = [  # id, split, style, artist
        ("t1", "train", "A", "ann"),
        ("t2", "train", "A", "ann"),
        ("t3", "train", "A", "bob"),
        ("t4", "train", "B", "bob"),
        ("t5", "train", "B", "cy"),
        ("t6", "train", "C", "ann"),
        ("v1", "val", "A", "solo"),
        ("v2", "val", "B", "dee"),
        ("v3", "val", "B", "dee"),
        ("s1", "test", "A", "eve"),
        ("s2", "test", "A", "eve"),
    ]
    m = pd.DataFrame(rows, columns=["id", "split", "style", "artist"])
    return m.assign(path=[f"/orig/{i}.png" for i in m["id"]])


def _pairs(manifest, flag=()):
    rows = []
    for r in manifest.itertuples():
        for level, s in (("moderate", 0.35), ("radical", 0.65)):
            pid = f"{r.id}:{level}"
            rows.append(
                {
                    "pair_id": pid,
                    "original_id": r.id,
                    "level": level,
                    "family": "colour",
                    "strength": s,
                    "path": f"/gen/{r.id}-{level}.png",
                    "nan_flag": False,
                    "black_flag": pid in flag,
                    "backend": "sdxl",
                    "split": r.split,
                    "style": r.style,
                    "artist": r.artist,
                }
            )
    return pd.DataFrame(rows)


def test_negatives_are_of_their_kind_and_never_leak():
    m = _manifest()
    out = generation.build_triplets(_pairs(m), m, seed=3).triplets
    assert list(out.columns) == generation.TRIPLET_COLUMNS and out["triplet_id"].is_unique
    assert generation.leaks(out, m).empty
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
    out = generation.build_triplets(_pairs(m), m, seed=0).triplets
    bad = out.copy()
    bad.loc[0, "negative_id"] = "v2" if out.loc[0, "split"] != "val" else "t1"
    assert list(generation.leaks(bad, m).index) == [0]


def test_missing_candidates_are_skipped_and_counted():
    m = _manifest()
    result = generation.build_triplets(_pairs(m), m, per_kind=1, seed=0)
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
    result = generation.build_triplets(_pairs(m, flag={"t1:radical"}), m, kinds=("random",), per_kind=3, seed=1)
    out = result.triplets
    assert result.dropped_flagged == 1 and "t1:radical" not in set(out["positive_id"])
    per = out.groupby("positive_id")["negative_id"]
    assert (per.nunique() == per.size()).all()  # without replacement
    assert per.size()["t1:moderate"] == 3  # train: 3 originals of other styles exist
    assert per.size()["v1:moderate"] == 2  # val: only v2 and v3 are not style A
    kept = generation.build_triplets(_pairs(m, flag={"t1:radical"}), m, kinds=("random",), seed=1, drop_flagged=False)
    assert kept.dropped_flagged == 0 and "t1:radical" in set(kept.triplets["positive_id"])


def test_draws_are_seeded():
    m = pd.DataFrame(
        {
            "id": [f"o{i}" for i in range(60)],
            "split": "train",
            "style": ["A", "B", "C"] * 20,
            "artist": [f"a{i % 7}" for i in range(60)],
        }
    ).assign(path="/x.png")
    pairs = _pairs(m)
    a = generation.build_triplets(pairs, m, seed=5).triplets
    assert shards.content_hash(a) == shards.content_hash(generation.build_triplets(pairs, m, seed=5).triplets)
    b = generation.build_triplets(pairs, m, seed=6).triplets
    assert (a["negative_id"] != b["negative_id"]).mean() > 0.5
    with pytest.raises(ValueError, match="not in the manifest"):
        generation.build_triplets(pairs, m.iloc[1:], seed=5)


def test_the_stage_writes_pairs_and_triplets_and_load_reads_them_back(run_dir):
    params = [
        "data.synthart.num_images=40",
        "data.synthart.max_side=96",
        "preprocess.size=32",
        "preprocess.workers=1",
        "generation.augment_families=[degradation]",
        "generation.augment_strengths=[0.5,1.0]",
    ]
    P = config.load_params("smoke", params)
    with pytest.raises(StageNotRunError, match="the generated pairs .* is missing: run stage 05 first"):
        LOAD(P)  # nothing is made behind a getter
    with pytest.raises(StageNotRunError, match="the triplets .* is missing: run stage 05 first"):
        LOAD_TRIPLETS(P)
    out = generation.run(P).triplets.triplets
    manifest, pairs = s02_preprocess.load(P), generation.load(P)
    assert set(out["split"]) == {"train", "val", "test"}
    assert generation.leaks(out, manifest).empty
    assert set(out["positive_id"]) == set(pairs["pair_id"])
    assert paths.is_current(generation.triplets_path(P), generation.triplet_meta(P))
    assert (P.run.root / "triplets" / "shortfall.csv").exists()
    again = generation.load_triplets(P)  # read back: the same table
    assert shards.content_hash(again) == shards.content_hash(out)
    # run_triplets alone draws them again from the current pairs: the same table.
    assert shards.content_hash(generation.run_triplets(P).triplets) == shards.content_hash(out)
    # Other triplet params: the table on disk is stale, and load says so instead of drawing anew.
    with pytest.raises(StageNotRunError, match="made with other params: run stage 05 first"):
        LOAD_TRIPLETS(config.load_params("smoke", params + ["triplets.per_kind=2"]))
