"""Stage 03 on a dozen SynthArt paintings with the tiny BLIP-2: the artifact, sharding, resumption,
seeded sampling, the query-token check and the 'existing' backend."""

import json
import shutil

import pandas as pd
import pytest

from artsim_lib import config
from artsim_lib.io import paths, shards
from artsim_lib.io.artifacts import StageNotRunError
from artsim_lib.stages import s01_eda, s02_preprocess
from artsim_lib.stages import s03_captioning as captioning
from artsim_lib.stages.s03_captioning import MissingCaptionsError

SMALL = [
    "data.synthart.num_images=16",
    "data.synthart.max_side=160",
    "preprocess.size=32",
    "captioning.batch_size=3",
    "captioning.max_new_tokens=5",
]


def _params(*overrides):
    return config.load_params("smoke", SMALL + list(overrides))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A run directory with the manifest and the tiny BLIP-2 built once; tests copy it."""
    root = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARTSIM_RUN_DIR", str(root))
        P = _params()
        s01_eda.run(P)
        manifest = s02_preprocess.run(P).manifest
        from artsim_lib import models

        models.ensure_tiny_checkpoints(P, ["blip2"])
    return root, manifest


@pytest.fixture
def run(base, run_dir):
    """A fresh run directory holding a copy of ``base``."""
    shutil.copytree(base[0], run_dir)
    return run_dir


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """The captions of an uninterrupted, unsharded run (batch size 3)."""
    root = tmp_path_factory.mktemp("reference")
    shutil.copytree(base[0], root, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARTSIM_RUN_DIR", str(root))
        return captioning.run(_params()).captions


def test_one_caption_per_image_as_the_contract_says(base, reference, run, monkeypatch):
    manifest = base[1]
    assert list(reference.columns) == captioning.COLUMNS
    assert list(reference["id"]) == sorted(manifest["id"])
    assert reference["caption"].str.len().gt(0).all()
    assert set(reference["backend"]) == {"blip2"} and (reference["seconds"] > 0).all()
    # The tiny model writes max_new_tokens words, and its captions differ from image to image.
    assert (captioning.lengths(reference["caption"]) == 5).all()
    assert reference["caption"].nunique() > len(reference) // 2
    P = _params()
    with pytest.raises(StageNotRunError, match="run stage 03 first"):
        captioning.load(P)  # nothing captioned in this run directory yet: load never captions
    captioning.run(P)
    again = captioning.load(P)
    assert shards.content_hash(again) == shards.content_hash(reference)
    assert paths.is_current(captioning.captions_path(P), captioning.caption_meta(P))
    with pytest.raises(StageNotRunError, match="made with other params: run stage 03 first"):
        captioning.load(_params("captioning.max_new_tokens=4"))


def test_sharded_run_equals_unsharded_and_merges_only_when_complete(reference, run):
    P = _params("captioning.batch_size=5")  # another batch size too: captions must not change
    with pytest.raises(RuntimeError, match="not captioned yet"):
        captioning.run(P, 3, -1)
    first = captioning.run(P, 3, 0)
    assert first.captions is None and 0 not in first.pending and set(first.pending) == {1, 2}
    assert not captioning.captions_path(P).exists()
    assert captioning.run(P, 3, 2).captions is None
    last = captioning.run(P, 3, 1)
    assert last.pending == {} and last.captioned + first.captioned < len(reference)
    assert shards.content_hash(last.captions) == shards.content_hash(reference)
    merged = captioning.run(P, 3, -1)  # merge only: nothing captioned
    assert merged.captioned == 0 and shards.content_hash(merged.captions) == shards.content_hash(reference)


def test_killed_run_resumes_to_the_same_captions(reference, run, monkeypatch):
    assert len(reference) > 8  # SynthArt's defects leave fewer than 16 images
    P = _params()
    real, calls = captioning.caption_images, []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill in the middle of the third batch
        return real(*args, **kwargs)

    monkeypatch.setattr(captioning, "caption_images", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        captioning.run(P)
    assert len(captioning.partial_captions(P)) == 6  # two whole batches of 3 survived
    assert not list(run.rglob("*.tmp*")) and not captioning.captions_path(P).exists()
    monkeypatch.setattr(captioning, "caption_images", real)
    resumed = captioning.run(P)
    assert resumed.captioned == len(reference) - 6  # only what was missing
    assert shards.content_hash(resumed.captions) == shards.content_hash(reference)


def test_a_run_resumed_with_another_shard_count_redoes_nothing(reference, run, monkeypatch):
    P = _params()
    real = captioning.caption_images

    def dies_after_one_batch(*args, **kwargs):
        if len(captioning.partial_captions(P)) >= 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(captioning, "caption_images", dies_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        captioning.run(P)  # one shard; killed after its first batch of 3
    monkeypatch.setattr(captioning, "caption_images", real)
    runs = [captioning.run(P, 2, k) for k in (0, 1)]
    assert sum(r.captioned for r in runs) == len(reference) - 3
    assert shards.content_hash(runs[1].captions) == shards.content_hash(reference)


def test_sampled_captions_depend_on_the_seed_not_the_batch(run):
    a = captioning.run(_params("captioning.do_sample=true", "captioning.batch_size=2")).captions
    b = captioning.run(_params("captioning.do_sample=true", "captioning.batch_size=7")).captions
    reseeded = _params("captioning.do_sample=true", "seed=99")
    s02_preprocess.run(
        reseeded, s01_eda.load(_params())
    )  # the same raw manifest  # the seed is part of the manifest's key (its split)
    c = captioning.run(reseeded).captions
    assert shards.content_hash(a) == shards.content_hash(b)
    assert (a["caption"] != c["caption"]).sum() > 8


def test_a_prompt_prefix_starts_every_caption(run):
    caps = captioning.run(_params("captioning.prompt=a painting of")).captions
    assert caps["caption"].str.startswith("a painting of ").all()


@pytest.mark.parametrize("prompt", [None, "a painting of"])
def test_prefetching_workers_change_no_caption(run, monkeypatch, prompt):
    from artsim_lib.io import workers

    extra = [f"captioning.prompt={prompt}"] if prompt else []
    counts, captions = [], []
    for n in (0, 1, 3):  # 0: decoded in line, as before the prefetch
        monkeypatch.setattr(workers, "worker_count", lambda requested=None, n=n: counts.append(n) or n)
        shutil.rmtree(run / "captioning", ignore_errors=True)  # caption everything again
        captions.append(captioning.run(_params(*extra)).captions)
    assert counts == [0, 1, 3]
    assert captions[0]["caption"].tolist() == captions[1]["caption"].tolist() == captions[2]["caption"].tolist()
    assert captions[0]["caption"].nunique() > 1


def test_an_unreadable_image_is_named(run):
    P = _params()
    manifest = s02_preprocess.load(P)
    bad = manifest["path"].iloc[4]
    with open(bad, "wb") as fh:
        fh.write(b"not an image")
    with pytest.raises(ValueError, match=f"{bad}: cannot read image"):
        captioning.run(P)
    assert len(captioning.partial_captions(P)) == 3  # the batch before the bad one is kept


def test_processor_and_model_must_agree_on_query_tokens(run):
    P = _params()
    cfg_file = P.path(P.models.blip2) / "processor_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["num_query_tokens"] = 3  # the tiny model has 8
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="num_query_tokens"):
        captioning.run(P)


def _existing_table(manifest, key, skip=2):
    rows = manifest.sort_values("id").iloc[skip:]
    return pd.DataFrame(
        {
            key: rows["id"] if key == "id" else rows["filename"],
            "text": [f"existing caption {i}" for i in range(len(rows))],
        }
    ), rows


def test_existing_captions_by_id_with_each_missing_policy(base, run):
    manifest = base[1]
    table, rows = _existing_table(manifest, "id")
    table.to_csv(run / "captions.csv", index=False)
    opts = [
        f"captioning.existing={run / 'captions.csv'}",
        "captioning.backend=existing",
        "captioning.existing_column=text",
    ]
    missing = sorted(manifest["id"])[:2]
    with pytest.raises(MissingCaptionsError, match=f"2 of {len(manifest)} images") as err:
        captioning.run(_params(*opts))
    assert missing[0] in str(err.value)
    dropped = captioning.run(_params(*opts, "captioning.existing_missing=drop"))
    assert list(dropped.captions["id"]) == sorted(rows["id"]) and dropped.missing_existing == missing
    assert dict(zip(dropped.captions["id"], dropped.captions["caption"])) == dict(zip(table["id"], table["text"]))
    assert dropped.captioned == 0 and set(dropped.captions["backend"]) == {"existing"}
    filled = captioning.run(_params(*opts, "captioning.existing_missing=blip2")).captions
    assert len(filled) == len(manifest) and sorted(filled.loc[filled["backend"] == "blip2", "id"]) == missing


def test_existing_captions_by_filename_and_by_bare_file_name(base, run):
    manifest = base[1]
    table, rows = _existing_table(manifest, "filename", skip=0)
    table["filename"] = "wikiart/" + table["filename"]  # any prefix: matched on Style/file
    table.to_parquet(run / "captions.parquet")
    P = _params(
        f"captioning.existing={run / 'captions.parquet'}",
        "captioning.backend=existing",
        "captioning.existing_column=text",
    )
    caps = captioning.run(P).captions
    assert dict(zip(caps["id"], caps["caption"])) == dict(zip(rows["id"], table["text"]))
    bare = pd.DataFrame({"file_name": ["x.jpg", manifest["filename"].iloc[0].split("/")[-1]], "caption": ["a", "b"]})
    found, how = captioning.match_existing(manifest, bare)
    assert how == "file_name" and found.iloc[0] == "b" and found.iloc[1:].isna().all()
