"""Sharding, per-item seeds and resumption: the invariants every sharded stage relies on."""

import random

import pandas as pd
import pytest

from artsim_lib.io import shards


def _process(ids, seed):
    # Stand-in for a stage: a value that depends only on the item's own seed.
    return [
        {"id": i, "value": random.Random(shards.item_seed(seed, i)).random(), "seconds": random.random()} for i in ids
    ]


def _run(root, ids, num_shards, batch, seed=1, stop_after=None):
    written = 0
    for k in range(num_shards):
        store = shards.ShardStore(root, num_shards, k)
        todo = [i for i in shards.select_shard(pd.DataFrame({"id": ids}), num_shards, k)["id"] if i not in store.done()]
        for chunk in shards.batches(todo, batch):
            if stop_after is not None and written >= stop_after:
                return
            store.append(_process(chunk, seed))
            written += len(chunk)


IDS = [f"img-{i:03d}" for i in range(37)]


def test_item_seed_depends_on_seed_and_id_only():
    assert shards.item_seed(1, "a") == shards.item_seed(1, "a")
    assert len({shards.item_seed(1, "a"), shards.item_seed(2, "a"), shards.item_seed(1, "b")}) == 3
    assert 0 <= shards.item_seed(1, "a") < 2**63


def test_shards_partition_the_items():
    df = pd.DataFrame({"id": IDS})
    parts = [set(shards.select_shard(df, 3, k)["id"]) for k in range(3)]
    assert set().union(*parts) == set(IDS) and sum(map(len, parts)) == len(IDS)
    assert all(parts)  # 37 items over 3 shards: none empty
    with pytest.raises(ValueError, match="shard_index"):
        shards.select_shard(df, 3, 3)


@pytest.mark.parametrize("num_shards,batch", [(2, 4), (3, 7), (5, 1)])
def test_sharded_run_equals_unsharded(tmp_path, num_shards, batch):
    _run(tmp_path / "one", IDS, 1, 10)
    _run(tmp_path / "many", IDS, num_shards, batch)
    one, many = shards.merge(tmp_path / "one"), shards.merge(tmp_path / "many")
    assert list(one["id"]) == sorted(IDS)
    assert shards.content_hash(one) == shards.content_hash(many)
    assert shards.content_hash(one, ignore=()) != shards.content_hash(many, ignore=())  # timings differ


def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path):
    _run(tmp_path / "ref", IDS, 2, 5)
    _run(tmp_path / "cut", IDS, 2, 5, stop_after=10)
    partial = shards.merge(tmp_path / "cut")
    assert 0 < len(partial) < len(IDS)
    _run(tmp_path / "cut", IDS, 2, 5)  # resume: done items are skipped
    merged = shards.merge(tmp_path / "cut")
    assert len(merged) == len(IDS)
    assert shards.content_hash(merged) == shards.content_hash(shards.merge(tmp_path / "ref"))
    assert not list((tmp_path / "cut").rglob("*.tmp*"))


def test_merge_without_results_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard results"):
        shards.merge(tmp_path)
