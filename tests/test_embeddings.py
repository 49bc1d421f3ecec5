"""The CLIP embedding cache: hits, misses, invalidation, sharding and resumption."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from artsim_lib.io import shards
from artsim_lib.measures import embeddings
from artsim_lib.models import build_tiny, clip_image_embeddings

BATCH = 4  # 10 images: two full batches and a padded one


def paint(path, seed, size=48):
    """A seeded random picture (blocks of colour, so that it survives resizing)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(blocks).resize((size, size), Image.Resampling.NEAREST).save(path)
    return str(path)


@pytest.fixture(scope="module")
def encoder(tiny_models):
    return embeddings.open_encoder(tiny_models("clip"))


@pytest.fixture
def images(tmp_path):
    (tmp_path / "img").mkdir()
    return pd.DataFrame(
        {
            "id": [f"im{i:02d}" for i in range(10)],
            "path": [paint(tmp_path / "img" / f"im{i:02d}.png", i) for i in range(10)],
        }
    )


def run(encoder, images, root, num_shards=1, shard_index=0):
    return embeddings.extract(encoder, images, root, num_shards, shard_index, batch_size=BATCH)


def test_a_second_call_hits_and_an_edited_image_misses(encoder, images, tmp_path):
    first = run(encoder, images, tmp_path / "cache")
    assert (first.items, first.hits, first.misses, first.complete) == (10, 0, 10, True)
    emb = embeddings.embedding_matrix(first.table)
    assert emb.shape == (10, encoder.dim) == (10, 32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert list(first.table["id"]) == sorted(images["id"])

    second = run(encoder, images, tmp_path / "cache")
    assert (second.hits, second.misses) == (10, 0)
    assert np.array_equal(embeddings.embedding_matrix(second.table), emb)

    paint(images.at[3, "path"], seed=99)  # new content under the same name
    third = run(encoder, images, tmp_path / "cache")
    assert (third.hits, third.misses) == (9, 1)
    changed = ~np.all(embeddings.embedding_matrix(third.table) == emb, axis=1)
    assert list(np.flatnonzero(changed)) == [3]


def test_identical_content_is_embedded_once(encoder, images, tmp_path):
    dup = pd.concat([images, pd.DataFrame({"id": ["copy"], "path": [images.at[0, "path"]]})])
    res = run(encoder, dup, tmp_path / "cache")
    assert (res.items, res.misses, len(res.table)) == (10, 10, 11)
    t = res.table.set_index("id")
    assert np.array_equal(t.at["copy", "embedding"], t.at["im00", "embedding"])


def test_the_cache_holds_what_clip_computes(encoder, images, tmp_path):
    res = run(encoder, images, tmp_path / "cache")
    pil = [Image.open(p).convert("RGB") for p in res.table["path"]]
    direct = clip_image_embeddings(encoder.model, encoder.processor, pil).numpy()
    assert np.allclose(embeddings.embedding_matrix(res.table), direct, atol=1e-5)


def test_padding_makes_an_embedding_independent_of_its_batch(encoder):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 64, 64)
    full = embeddings.embed_pixels(encoder.model, x, batch_size=8)
    part = embeddings.embed_pixels(encoder.model, torch.cat([x[5:8], x[:2]]), batch_size=8)
    assert part.shape == (5, 32)
    assert np.array_equal(part[:3], full[5:8]) and np.array_equal(part[3:], full[:2])


def test_the_model_key_changes_with_the_weights_not_the_dtype(tmp_path):
    path = build_tiny("clip", tmp_path / "clip", seed=0)
    key0 = embeddings.model_key(embeddings.model_identity(str(path)))
    assert key0 == embeddings.model_key(embeddings.model_identity(str(path)))  # stable
    assert key0.startswith("clip-")
    # where a job ran does not name the cache: a GPU job's float16 rows are the CPU job's cache too
    half = embeddings.model_identity(str(path), torch.float16)
    assert half["dtype"] == "float16" and embeddings.model_key(half) == key0
    build_tiny("clip", path, seed=1)  # other weights at the same place
    assert key0 != embeddings.model_key(embeddings.model_identity(str(path)))


def test_a_cache_made_in_another_dtype_is_read_as_it_is(tiny_models, images, tmp_path, monkeypatch):
    """A shard job in bfloat16 (a GPU node) fills the cache; a float32 job (a CPU node) reads it
    back cast to float32 and computes nothing; each row says which dtype made it."""
    path = tiny_models("clip")
    gpu_like = embeddings.open_encoder(str(path), "cpu", "bfloat16")
    cpu_like = embeddings.open_encoder(str(path), "cpu", "float32")
    assert gpu_like.key == cpu_like.key
    made = run(gpu_like, images, tmp_path / "cache" / gpu_like.key)
    assert made.misses == 10 and set(made.table["dtype"]) == {"bfloat16"}
    monkeypatch.setattr(embeddings, "embed_pixels", lambda *a, **k: pytest.fail("recomputed"))
    read = run(cpu_like, images, tmp_path / "cache" / cpu_like.key)
    assert (read.hits, read.misses) == (10, 0)
    emb = embeddings.embedding_matrix(read.table)
    assert emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=2e-2)
    measure = embeddings.ClipMeasure(cpu_like, cache_root=tmp_path / "cache" / cpu_like.key, batch_size=BATCH)
    assert measure.embed(list(images["path"][:3])).dtype == np.float32  # from the cache, no forward


def test_recorded_fingerprints_are_used_and_a_moved_cache_still_hits(encoder, images, tmp_path, monkeypatch):
    """Stage 08 reads each image's SHA-256 from the manifests instead of re-reading the file; a
    copied run directory (other absolute paths) finds every embedding."""
    import shutil

    hashed = images.assign(hash=[embeddings.file_hash(p) for p in images["path"]])
    monkeypatch.setattr(embeddings, "hash_files", lambda paths, workers=1: pytest.fail(f"re-hashed {paths}"))
    first = run(encoder, hashed, tmp_path / "run" / "cache")
    assert first.misses == 10 and list(first.table["hash"]) == list(hashed.sort_values("id")["hash"])
    monkeypatch.undo()
    shutil.copytree(tmp_path / "run", tmp_path / "moved")
    (tmp_path / "img").rename(tmp_path / "img-moved")
    moved = images.assign(path=[p.replace("/img/", "/img-moved/") for p in images["path"]])
    again = run(encoder, moved, tmp_path / "moved" / "cache")
    assert (again.hits, again.misses) == (10, 0)
    assert list(again.table["path"]) == list(moved.sort_values("id")["path"])


def test_another_model_finds_a_cold_cache(run_dir, images, monkeypatch):
    from artsim_lib.config import load_params

    P = load_params("smoke")
    first = embeddings.extract_embeddings(P, images)
    assert (first.misses, first.hits) == (10, 0)
    assert (embeddings.extract_embeddings(P, images).hits) == 10
    build_tiny("clip", P.model_ref("clip"), seed=1)  # the checkpoint changes under the same ref
    monkeypatch.setattr(embeddings.models, "ensure_tiny_checkpoints", lambda *a, **k: {})  # keep it
    after = embeddings.extract_embeddings(P, images)
    assert after.key != first.key and (after.misses, after.hits) == (10, 0)
    assert (run_dir / "embeddings" / first.key / "model.json").exists()


def test_sharded_extraction_equals_unsharded(encoder, images, tmp_path):
    one = run(encoder, images, tmp_path / "one")
    root = tmp_path / "three"
    for k in range(2):
        assert not run(encoder, images, root, 3, k).complete
    with pytest.raises(RuntimeError, match="run every shard"):
        run(encoder, images, root, 3, -1)
    last = run(encoder, images, root, 3, 2)
    assert last.complete and last.misses < 10
    merged = run(encoder, images, root, 3, -1)  # merge only: nothing computed
    assert merged.misses == 0
    assert shards.content_hash(merged.table) == shards.content_hash(one.table)


def test_an_interrupted_extraction_resumes_to_the_same_result(encoder, images, tmp_path, monkeypatch):
    ref = run(encoder, images, tmp_path / "ref")
    real, calls = embeddings.embed_pixels, []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(embeddings, "embed_pixels", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run(encoder, images, tmp_path / "cut")
    assert len(embeddings.cached_hashes(tmp_path / "cut")) == 2 * BATCH
    assert not list((tmp_path / "cut").rglob("*.tmp*"))
    resumed = run(encoder, images, tmp_path / "cut")
    assert (resumed.hits, resumed.misses) == (2 * BATCH, 10 - 2 * BATCH)
    assert shards.content_hash(resumed.table) == shards.content_hash(ref.table)


def test_the_clip_measure_reads_the_cache_and_agrees_with_itself(encoder, images, tmp_path, monkeypatch):
    run(encoder, images, tmp_path / "cache")
    measure = embeddings.ClipMeasure(encoder, cache_root=tmp_path / "cache", batch_size=BATCH)
    a, b = images.at[0, "path"], images.at[1, "path"]
    fresh = embeddings.ClipMeasure(encoder, batch_size=BATCH).embed([a, b])
    with monkeypatch.context() as m:
        m.setattr(embeddings, "embed_pixels", lambda *x, **k: pytest.fail("not cached"))
        assert np.allclose(measure.embed([a, b]), fresh, atol=1e-6)
    assert measure.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    s = measure.similarity(a, b)
    assert -1 <= s < 1 and measure.similarity01(a, b) == pytest.approx((s + 1) / 2)
    pil = Image.open(b).convert("RGB")
    assert measure.similarity(a, pil) == pytest.approx(s, abs=1e-5)  # a PIL image = its file
    pairwise = measure.similarity([a, b, a], [b, b, a])
    assert pairwise.shape == (3,) and pairwise[1] == pytest.approx(1.0, abs=1e-5)


def test_dataloader_workers_give_the_same_embeddings(encoder, images, tmp_path):
    inline = run(encoder, images, tmp_path / "inline")
    workers = embeddings.extract(encoder, images, tmp_path / "workers", batch_size=BATCH, workers=2)
    assert workers.misses == 10
    assert shards.content_hash(workers.table) == shards.content_hash(inline.table)


def test_both_decoding_paths_give_the_same_pixel_batches(encoder, images):
    data = embeddings._Images(list(images["path"]), encoder.processor.image_processor)
    threads = list(embeddings._batches(data, 4, 2, torch.device("cpu")))  # the CPU path: a thread pool
    loader = list(embeddings._batches(data, 4, 2, torch.device("meta")))  # the GPU path: DataLoader workers
    assert [len(b) for b in threads] == [4, 4, 2] == [len(b) for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(threads, loader))
    assert threads[0].shape == (4, 3, 64, 64)


@pytest.mark.parametrize("size", [(48, 48), (90, 40), (33, 70)])
def test_the_fast_preprocessing_equals_the_processor(encoder, size):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    proc = encoder.processor.image_processor
    ref = proc(images=img, return_tensors="np")["pixel_values"][0]
    fast = embeddings.clip_pixels(img, proc)
    assert fast.shape == ref.shape == (3, 64, 64) and fast.dtype == np.float32
    assert np.abs(fast - ref).max() < 1e-5
