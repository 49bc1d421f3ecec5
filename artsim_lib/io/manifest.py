"""Data sources: SynthArt, the Kaggle WikiArt layout and ``huggan/wikiart``, as one manifest.

>>> from artsim_lib.config import load_params
>>> df = load_manifest(load_params("smoke"))  # doctest: +SKIP
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from artsim_lib.io import paths
from artsim_lib.io.datasets import MANIFEST_COLUMNS, load_huggan, load_kaggle, parse_styles
from artsim_lib.io.synthart import defects, generate

__all__ = [
    "MANIFEST_COLUMNS",
    "defects",
    "generate",
    "load_huggan",
    "load_kaggle",
    "load_manifest",
    "parse_styles",
    "read_manifest",
]
_KEY = b"artsim.data"  # parquet schema metadata: the data params that made the file


def _source_key(P) -> str:
    """What the raw manifest depends on; a cached file made from other params is rebuilt."""
    return json.dumps(P.data.model_dump(mode="json"), sort_keys=True)


def read_manifest(path) -> pd.DataFrame:
    """A manifest parquet as the loaders return it (``styles`` cells back to lists)."""
    df = pd.read_parquet(path)
    if "styles" in df:  # a table written by hand (tests, tools) may have no multi-style column
        df["styles"] = pd.Series(
            [list(s) if s is not None else None for s in df["styles"]], index=df.index, dtype=object
        )
    return df


def _cached(P, target, stamp) -> bool:
    import pyarrow.parquet as pq

    if not target.exists() or (stamp is not None and target.stat().st_mtime <= stamp.stat().st_mtime):
        return False
    meta = pq.read_schema(target).metadata or {}
    return meta.get(_KEY, b"").decode() == _source_key(P)


def _write(df: pd.DataFrame, target, key: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _KEY: key.encode()})
    with paths.atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def _stamp(P):
    """The file a Kaggle-layout source's raw manifest must be newer than: its ``classes.csv``."""
    if P.data.source in ("synthart", "kaggle"):
        return P.path(P.data.root) / "classes.csv"
    return None


def raw_is_current(P) -> bool:
    """True when ``P.run.raw_manifest`` was made from ``P``'s data params (and, for a Kaggle-layout
    source, after its ``classes.csv`` last changed)."""
    stamp = _stamp(P)
    return _cached(P, P.run.raw_manifest, stamp if stamp is not None and stamp.exists() else None)


def load_manifest(P) -> pd.DataFrame:
    """The raw manifest for params ``P`` (generating SynthArt first when it is the source),
    limited to ``P.data.limit`` rows and saved to ``P.run.raw_manifest``. A saved manifest
    made with the same data params, newer than ``classes.csv``, is read instead."""
    target, source = P.run.raw_manifest, P.data.source
    root = P.path(P.data.root)
    if source in ("synthart", "kaggle"):
        if source == "synthart":
            s = P.data.synthart
            generate(
                root,
                num_images=s.num_images,
                seed=s.seed,
                max_side=s.max_side,
                series=s.series,
                series_size=s.series_size,
            )
    if raw_is_current(P):
        return read_manifest(target)
    if source == "huggan":
        df = load_huggan(P.ref(P.data.hf_dataset), P.data.hf_split, image_dir=P.run.sub("raw", "huggan"))
    else:
        df = load_kaggle(root)
    if P.data.limit is not None:
        df = df.head(P.data.limit).reset_index(drop=True)
    if P.data.sample is not None:
        df = spread_sample(df, P.data.sample, P.seed)
    _write(df, target, _source_key(P))
    return df


def spread_sample(df: pd.DataFrame, n: int, seed: int, by: str = "style", per_value: int = 4) -> pd.DataFrame:
    """A seeded sample of ``n`` rows over ``n // per_value`` values of ``by`` (seeded, those with
    enough rows first), one of each in turn: a pilot of 24 WikiArt paintings holds 6 styles of 4,
    so each style can be in train, val and test, rather than the first folder's 24 or 24 styles
    of one. Rows keep their original order."""
    if n >= len(df):
        return df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    key = df[by].astype("string").fillna("") if by in df else pd.Series("", index=df.index)
    groups = sorted(df.groupby(key).indices.items())
    order = rng.permutation(len(groups))
    order = sorted(order, key=lambda i: len(groups[i][1]) < per_value)  # stable: full groups first
    chosen = [groups[i] for i in order[: max(1, n // per_value)]]
    queues = [list(rng.permutation(idx)) for _, idx in sorted(chosen)]
    picked: list[int] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(int(q.pop()))
    return df.iloc[sorted(picked)].reset_index(drop=True)
