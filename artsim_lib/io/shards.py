"""Sharded, resumable, order-independent stages (captioning, generation, embeddings).

Three rules make a sharded run equal to an unsharded one, and a resumed run equal to an
uninterrupted one:

* an item's shard is a hash of its id (not its position), see :func:`shard_of`;
* an item's random seed is a hash of the global seed and its id, see :func:`item_seed`;
* results are appended in small parquet parts, each written atomically, and merged sorted by id,
  see :class:`ShardStore` and :func:`merge`.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
from tqdm import tqdm

from artsim_lib.io import paths

_PART = re.compile(r"part-(\d+)\.parquet$")


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def item_seed(seed: int, item_id: str, salt: str = "") -> int:
    """A 63-bit seed for one item: the same whatever the batch size, shard count or order."""
    return _digest(f"{seed}\x1f{salt}\x1f{item_id}") & (2**63 - 1)


def shard_of(item_id: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) that owns ``item_id``."""
    return _digest(f"shard\x1f{item_id}") % num_shards


def check_shard(num_shards: int, shard_index: int) -> None:
    """Raise a clear error for an impossible shard index."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(
            f"shard_index must be in [0, num_shards) and num_shards >= 1, "
            f"got shard_index={shard_index}, num_shards={num_shards}"
        )


def select_shard(df: pd.DataFrame, num_shards: int, shard_index: int, key: str = "id") -> pd.DataFrame:
    """The rows of ``df`` that belong to shard ``shard_index`` of ``num_shards``."""
    check_shard(num_shards, shard_index)
    if num_shards == 1:
        return df
    mask = df[key].astype(str).map(lambda i: shard_of(i, num_shards) == shard_index)
    return df[mask.to_numpy()]


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


class ShardStore:
    """The results of one shard of one stage, as numbered parquet parts under
    ``<root>/shard-III-of-NNN/``. Parts are written atomically, so whatever is on disk is
    complete; :meth:`done` tells a resumed run what to skip."""

    def __init__(self, root: str | Path, num_shards: int = 1, shard_index: int = 0, key: str = "id"):
        check_shard(num_shards, shard_index)
        self.root = Path(root)
        self.key = key
        self.dir = self.root / f"shard-{shard_index:03d}-of-{num_shards:03d}"

    def parts(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("part-*.parquet") if _PART.search(p.name))

    def done(self) -> set[str]:
        """Keys already written by this shard."""
        return (
            set().union(*(set(pd.read_parquet(p, columns=[self.key])[self.key].astype(str)) for p in self.parts()))
            if self.parts()
            else set()
        )

    def append(self, records: Iterable[dict]) -> Path | None:
        """Write ``records`` as the next part (atomically); returns its path."""
        frame = pd.DataFrame(list(records))
        if frame.empty:
            return None
        last = max((int(_PART.search(p.name).group(1)) for p in self.parts()), default=-1)
        target = self.dir / f"part-{last + 1:06d}.parquet"
        with paths.atomic_path(target) as tmp:
            frame.to_parquet(tmp, index=False)
        return target


def merge(root: str | Path, key: str = "id", sort_by: Sequence[str] | None = None) -> pd.DataFrame:
    """Every part of every shard under ``root``, one row per key, sorted: the same table
    whatever the shard count, batch size or number of interruptions that produced it."""
    parts = sorted(Path(root).glob("shard-*-of-*/part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{root}: no shard results to merge (has the stage run?)")
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    frame = frame.drop_duplicates(subset=[key], keep="last")
    return frame.sort_values(list(sort_by or [key]), kind="stable").reset_index(drop=True)


def write_merged(frame: pd.DataFrame, target: str | Path) -> Path:
    """Write a merged table atomically as parquet."""
    with paths.atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(target)


def content_hash(frame: pd.DataFrame, ignore: Sequence[str] = ("seconds",)) -> str:
    """A hash of a table's content, leaving out columns that legitimately vary (timings)."""
    cols = [c for c in frame.columns if c not in set(ignore)]
    canon = frame[cols].reset_index(drop=True).to_json(orient="split", date_format="iso", double_precision=10)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def run_batches(
    batches: Iterable,
    work: Callable[[Any], Iterable[dict]],
    store: ShardStore,
    total: int,
    desc: str,
    unit: str = "img",
) -> int:
    """The one batch loop of the sharded stages (captions, derivatives, embeddings): ``work(batch)``
    gives the batch's rows, which are appended to ``store`` as one part with ``seconds``, the wall
    time per row since the previous part was stored (reading and waiting for the inputs included),
    under one progress bar of ``total`` items (on stderr: the terminal and the stage log). Returns
    how many rows were stored."""
    done, last = 0, time.perf_counter()
    with tqdm(total=total, desc=desc, unit=unit) as bar:
        for batch in batches:
            rows = list(work(batch))
            now = time.perf_counter()
            each, last = (now - last) / max(len(rows), 1), now
            store.append({**row, "seconds": each} for row in rows)
            done += len(rows)
            bar.update(len(rows))
    return done


def refuse_merge(stage: str, missing: str, num_shards: int, pending: dict) -> NoReturn:
    """The merge job's error while shards are not done: ``missing`` says what, in words
    ("3 image(s) not captioned yet"), ``pending`` how many per shard."""
    raise RuntimeError(
        f"{stage}: cannot merge, {missing} (per shard of {num_shards}: {pending}); run the missing shards first"
    )
