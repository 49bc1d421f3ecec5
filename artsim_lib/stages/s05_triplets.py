"""Triplets for metric learning: (anchor original, positive derivative, negative original).

Each derivative of ``pairs.parquet`` is a positive for its own original (the anchor), with
``triplets.per_kind`` negatives of each kind in ``triplets.negatives``:

* ``random``: an original of another style;
* ``same_style``: another original of the anchor's style;
* ``same_artist``: another original by the anchor's artist (the hard case).

Negatives come from the anchor's split only, so every original of a triplet -- anchor,
the positive's source and the negative -- lies in one split: nothing leaks from train into
val or test. Draws are seeded per (positive, kind). A kind with too few candidates (an artist
with one painting in the split, say) yields fewer negatives; the shortfall is counted, not an
error. Derivatives flagged NaN or all-black are left out when ``triplets.drop_flagged``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from artsim_lib.io import manifest as data, paths, shards

COLUMNS = ["triplet_id", "anchor_id", "anchor_path", "positive_id", "positive_path", "negative_id", "negative_path",
           "anchor_sha256", "positive_sha256", "negative_sha256", "negative_kind", "level", "family", "strength", "backend", "split", "style", "artist"]
KINDS = ("random", "same_style", "same_artist")
SALT = "triplets"


def triplets_path(P) -> Path:
    """``<run>/triplets/triplets.parquet``."""
    return P.run.root / "triplets" / "triplets.parquet"


def triplet_meta(P) -> dict:
    """What ``triplets.parquet`` depends on: the pairs and the triplet params."""
    from artsim_lib.stages.s05_generation import generation_meta

    return {"stage": "triplets", "seed": P.seed, "pairs": generation_meta(P),
            "triplets": P.triplets.model_dump(mode="json")}


@dataclass
class TripletResult:
    """The triplets and what could not be drawn."""

    triplets: pd.DataFrame
    shortfall: pd.DataFrame  # split, kind, wanted, drawn, skipped (negatives short of per_kind)
    dropped_flagged: int     # positives left out for a NaN/black flag


class _Candidates:
    """Row numbers of the manifest by split, (split, style) and (split, artist)."""

    def __init__(self, manifest: pd.DataFrame):
        self.m = manifest.reset_index(drop=True)
        self.split = self.m["split"].astype(str).to_numpy()
        # Missing values as None: it compares unequal to any name (and _group never pairs Nones).
        self.style = self.m["style"].astype(object).where(self.m["style"].notna(), None).to_numpy()
        self.artist = self.m["artist"].astype(object).where(self.m["artist"].notna(), None).to_numpy()
        self.row = {i: k for k, i in enumerate(self.m["id"].astype(str))}
        self._cache: dict = {}

    def _group(self, column: str, split: str, value) -> np.ndarray:
        key = (column, split, value)
        if key not in self._cache:
            values = getattr(self, column)
            self._cache[key] = np.flatnonzero((self.split == split) & (values == value)) if value is not None \
                else np.array([], dtype=int)
        return self._cache[key]

    def of(self, kind: str, anchor: int) -> np.ndarray:
        """Candidate rows of ``kind`` for the anchor row (never the anchor itself)."""
        split = self.split[anchor]
        if kind == "same_style":
            rows = self._group("style", split, self.style[anchor])
        elif kind == "same_artist":
            rows = self._group("artist", split, self.artist[anchor])
        elif kind == "random":
            key = ("random", split, self.style[anchor])
            if key not in self._cache:
                self._cache[key] = np.flatnonzero((self.split == split) & (self.style != self.style[anchor]))
            rows = self._cache[key]
        else:
            raise ValueError(f"unknown negative kind {kind!r} (known: {', '.join(KINDS)})")
        return rows[rows != anchor]


def build_triplets(pairs: pd.DataFrame, manifest: pd.DataFrame, kinds=KINDS, per_kind: int = 1, seed: int = 0,
                   drop_flagged: bool = True) -> TripletResult:
    """Triplets for every pair (see the module docstring); deterministic given ``seed``."""
    flagged = pairs["nan_flag"].astype(bool) | pairs["black_flag"].astype(bool)
    positives = pairs[~flagged] if drop_flagged else pairs
    cand = _Candidates(manifest)
    unknown = set(positives["original_id"].astype(str)) - set(cand.row)
    if unknown:
        raise ValueError(f"{len(unknown)} original(s) of the pairs are not in the manifest, e.g. {sorted(unknown)[:3]}")
    rows, short = [], []
    for p in positives.sort_values("pair_id", kind="stable").itertuples():
        a = cand.row[str(p.original_id)]
        for kind in kinds:
            options = cand.of(kind, a)
            rng = np.random.default_rng(shards.item_seed(seed, f"{p.pair_id}:{kind}", SALT))
            picks = options[rng.choice(len(options), size=min(per_kind, len(options)), replace=False)]
            short.append((cand.split[a], kind, per_kind, len(picks)))
            for k, n in enumerate(picks):
                rows.append((f"{p.pair_id}|{kind}|{k}", p.original_id, a, p.pair_id, p.path,
                             getattr(p, "sha256", None), n, kind, p.level, p.family, p.strength, p.backend))
    out = _frame(rows, cand)
    shortfall = pd.DataFrame(short, columns=["split", "kind", "wanted", "drawn"]).groupby(
        ["split", "kind"], as_index=False)[["wanted", "drawn"]].sum()
    shortfall["skipped"] = shortfall["wanted"] - shortfall["drawn"]
    return TripletResult(out, shortfall, int(flagged.sum()) if drop_flagged else 0)


def _frame(rows: list[tuple], cand: _Candidates) -> pd.DataFrame:
    cols = ["triplet_id", "anchor_id", "_a", "positive_id", "positive_path", "positive_sha256", "_n", "negative_kind",
            "level", "family", "strength", "backend"]
    t = pd.DataFrame(rows, columns=cols)
    m = cand.m
    a, n = t.pop("_a").to_numpy(dtype=int), t.pop("_n").to_numpy(dtype=int)
    t["anchor_path"] = m["path"].astype(str).to_numpy()[a]
    t["negative_id"] = m["id"].astype(str).to_numpy()[n]
    t["negative_path"] = m["path"].astype(str).to_numpy()[n]
    # Fingerprints travel with the paths (stage 02 and 05 wrote them), so stage 08 reads no image twice.
    sha = m["sha256"].to_numpy(dtype=object) if "sha256" in m else np.full(len(m), None, dtype=object)
    t["anchor_sha256"], t["negative_sha256"] = sha[a], sha[n]
    t["split"], t["style"], t["artist"] = cand.split[a], cand.style[a], cand.artist[a]
    return t[COLUMNS].sort_values("triplet_id", kind="stable").reset_index(drop=True)


def run_triplets(P, pairs: pd.DataFrame | None = None) -> TripletResult:
    """Build and write ``triplets.parquet`` for ``P`` (the pairs made first when needed)."""
    from artsim_lib.stages.s05_generation import require_pairs

    pairs = require_pairs(P) if pairs is None else pairs
    t = P.triplets
    result = build_triplets(pairs, data.require_manifest(P), t.negatives, t.per_kind, P.seed, t.drop_flagged)
    paths.write_parquet(result.triplets, triplets_path(P), triplet_meta(P))
    with paths.atomic_path(P.run.sub("triplets") / "shortfall.csv") as tmp:
        result.shortfall.to_csv(tmp, index=False)
    return result


def require_triplets(P) -> pd.DataFrame:
    """``triplets.parquet`` for ``P``; builds it (and what it needs) when missing or stale."""
    target = triplets_path(P)
    if paths.is_current(target, triplet_meta(P)):
        return pd.read_parquet(target)
    return run_triplets(P).triplets


def leaks(triplets: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Triplets whose anchor, positive source or negative is not in the triplet's split
    (empty when the split holds)."""
    split = manifest.set_index(manifest["id"].astype(str))["split"].astype(str)
    source = triplets["positive_id"].astype(str).str.split(":").str[0]
    ok = (triplets["anchor_id"].astype(str).map(split).eq(triplets["split"])
          & triplets["negative_id"].astype(str).map(split).eq(triplets["split"])
          & source.map(split).eq(triplets["split"]))
    return triplets[~ok.to_numpy()]


def examples(triplets: pd.DataFrame, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(paths, labels)`` of one triplet per kind, as rows of anchor | positive | negative."""
    picks = triplets.groupby("negative_kind", sort=True).sample(1, random_state=seed % 2**32)
    out_paths, labels = [], []
    for r in picks.itertuples():
        out_paths += [r.anchor_path, r.positive_path, r.negative_path]
        labels += [f"anchor · {r.style} · {r.artist}", f"positive · {r.level} · {r.family} · s={r.strength:g}",
                   f"negative · {r.negative_kind} · {r.negative_id.split('__')[-1]}"]
    return out_paths, labels
