"""Data cleaning on tables: missing values per column, and perceptual-hash duplicates (within the
collection, and across the train/val/test splits)."""

from __future__ import annotations

import numpy as np
import pandas as pd

_BLOCK = 512  # hashes searched together
_CHUNK = 2048  # kept hashes compared with a block at once: [2048, 512] temporaries, ~8 MB
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def null_table(df: pd.DataFrame) -> pd.DataFrame:
    """Missing values per column, as a count and a share of rows."""
    nulls = df.isna() | df.astype("string").eq("")
    out = pd.DataFrame({"missing": nulls.sum(), "share": nulls.mean().round(4)})
    return out.sort_values("missing", ascending=False)


def drop_missing(df: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Drop rows missing any of ``columns``; return (kept, per-column counts, dropped rows).

    A row missing two columns is counted under both but dropped once, as in the study's table.
    """
    missing_cols = [c for c in columns if c not in df.columns]
    if missing_cols:
        raise KeyError(f"preprocess.drop_missing: the manifest has no column(s) {missing_cols}")
    is_missing = {c: df[c].isna() | df[c].astype("string").str.strip().eq("") for c in columns}
    counts = pd.DataFrame({"column": columns, "missing": [int(is_missing[c].sum()) for c in columns]})
    any_missing = (
        np.logical_or.reduce([m.to_numpy() for m in is_missing.values()]) if columns else np.zeros(len(df), bool)
    )
    return df[~any_missing].copy(), counts, df[any_missing].copy()


def _phash_int(h) -> int | None:
    try:
        return int(str(h), 16)
    except (TypeError, ValueError):
        return None


def find_duplicates_naive(df: pd.DataFrame, max_distance: int = 0) -> pd.DataFrame:
    """The quadratic reference of :func:`find_duplicates` (same result; kept for tests and
    ``make bench``): each row against every kept row, in Python."""
    rows = []
    kept: list[tuple[int, str]] = []
    for rid, h in zip(df["id"], df["phash"]):
        v = _phash_int(h)
        if v is None:
            continue
        match = next(
            ((kid, bin(v ^ kv).count("1")) for kv, kid in kept if bin(v ^ kv).count("1") <= max_distance), None
        )
        if match:
            rows.append({"id": rid, "duplicate_of": match[0], "phash": h, "distance": match[1]})
        else:
            kept.append((v, rid))
    return pd.DataFrame(rows, columns=["id", "duplicate_of", "phash", "distance"])


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array (same shape, uint8)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between packed hashes ``a`` [M, W] and ``b`` [N, W] (uint64 words) -> [M, N]."""
    out = _popcount(a[:, None, 0] ^ b[None, :, 0])
    if a.shape[1] > 1:
        out = out.astype(np.uint16)
        for w in range(1, a.shape[1]):
            out += _popcount(a[:, None, w] ^ b[None, :, w])
    return out


def _pack(values: list[int]) -> np.ndarray:
    """Non-negative ints as little-endian uint64 words [N, W], W enough for the longest."""
    words = max(1, -(-max(v.bit_length() for v in values) // 64))
    mask = (1 << 64) - 1
    return np.array([[(v >> (64 * w)) & mask for w in range(words)] for v in values], dtype=np.uint64)


def _first_kept_match(packed: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """The greedy pass of :func:`find_duplicates` over distinct hashes ``packed`` [N, W], in order:
    row i keeps itself unless an earlier kept row lies within ``max_distance`` bits, in which case
    it points to the first such row. Returns (match [N]: row index or -1 for kept, distance [N])."""
    n = len(packed)
    match = np.full(n, -1, dtype=np.int64)
    dist = np.zeros(n, dtype=np.int64)
    kept = np.empty(n, dtype=np.int64)  # row indices of kept hashes, in order; kept[:nk] valid
    nk = 0
    for start in range(0, n, _BLOCK):
        rows = np.arange(start, min(n, start + _BLOCK))
        pending = rows  # not matched yet
        for c0 in range(0, nk, _CHUNK):  # against every hash kept before this block
            if not len(pending):
                break
            cand = kept[c0 : min(nk, c0 + _CHUNK)]
            d = _hamming(packed[cand], packed[pending])  # [C, P]
            hit = d <= max_distance
            cols = np.flatnonzero(hit.any(0))
            if len(cols):
                first = hit[:, cols].argmax(0)
                match[pending[cols]] = cand[first]
                dist[pending[cols]] = d[first, cols]
                pending = np.delete(pending, cols)
        if len(pending):  # the rest against each other: a row may match one kept earlier in the block
            d = _hamming(packed[pending], packed[pending])  # [P, P]
            is_kept = np.zeros(len(pending), bool)
            for j in range(len(pending)):
                hit = np.flatnonzero(is_kept[:j] & (d[:j, j] <= max_distance))
                if len(hit):
                    match[pending[j]] = pending[hit[0]]
                    dist[pending[j]] = d[hit[0], j]
                else:
                    is_kept[j] = True
            new = pending[is_kept]
            kept[nk : nk + len(new)] = new
            nk += len(new)
    return match, dist


def find_duplicates(df: pd.DataFrame, max_distance: int = 0) -> pd.DataFrame:
    """Pairs (id, duplicate_of) whose phashes differ by at most ``max_distance`` bits.

    The first row in ``df`` order is kept; later rows point to the first kept row within
    ``max_distance`` (as :func:`find_duplicates_naive`, in a fraction of the time): repeated
    hashes are resolved by lookup, the distinct ones by a blocked popcount over packed words.
    """
    parsed = [(rid, h, _phash_int(h)) for rid, h in zip(df["id"], df["phash"])]
    parsed = [p for p in parsed if p[2] is not None]  # unparsable hashes are neither kept nor matched
    if any(v < 0 for _, _, v in parsed):  # int('-ff', 16) parses; keep the reference's meaning
        return find_duplicates_naive(df, max_distance)
    first_of: dict[int, int] = {}  # hash -> index among the distinct hashes
    for _, _, v in parsed:
        first_of.setdefault(v, len(first_of))
    distinct = list(first_of)
    if max_distance < 0:  # nothing is within a negative distance, not even an equal hash
        return pd.DataFrame(columns=["id", "duplicate_of", "phash", "distance"])
    if max_distance == 0 or not distinct:  # only equal hashes match, and those were merged above
        match, dist = np.full(len(distinct), -1), np.zeros(len(distinct), int)
    else:
        match, dist = _first_kept_match(_pack(distinct), max_distance)
    # The first row with a hash decides for every later row with it: a kept hash's later copies
    # point to that row (distance 0), a matched hash's copies to the same kept row.
    owner: dict[int, object] = {}  # distinct index -> id of its first row
    rows = []
    for rid, h, v in parsed:
        u = first_of[v]
        if match[u] >= 0:
            rows.append({"id": rid, "duplicate_of": owner[int(match[u])], "phash": h, "distance": int(dist[u])})
        elif u in owner:
            rows.append({"id": rid, "duplicate_of": owner[u], "phash": h, "distance": 0})
        owner.setdefault(u, rid)
    return pd.DataFrame(rows, columns=["id", "duplicate_of", "phash", "distance"])


def _phash_words(hashes) -> tuple[np.ndarray, np.ndarray]:
    """64-bit words of hex phashes (missing or unreadable: flagged). # [N, W] uint64, [N] bool"""
    ok = np.array([isinstance(h, str) and len(h) > 0 and _phash_int(h) is not None for h in hashes], bool)
    width = max((len(h) for h, k in zip(hashes, ok) if k), default=16)
    words = np.array(
        [
            [int(h.rjust(width, "0")[i : i + 16], 16) if k else 0 for i in range(0, width, 16)]
            for h, k in zip(hashes, ok)
        ],
        np.uint64,
    ).reshape(len(ok), -1)
    return words, ok


def cross_split_duplicates(df: pd.DataFrame, max_distance: int | None, block: int = 512) -> pd.DataFrame:
    """Rows of val/test within ``max_distance`` phash bits of a row in another split (id, split,
    duplicate_of, its split, distance): near-copies (re-encodings, crops of one painting) that would
    let a test query meet a painting seen in training. Train rows are kept; the val/test row goes.
    Compared in blocks of rows: the full profile's N x N matrix would not fit."""
    cols = ["id", "split", "duplicate_of", "duplicate_split", "distance"]
    if max_distance is None or "phash" not in df or not len(df):
        return pd.DataFrame(columns=cols)
    words, ok = _phash_words(list(df["phash"]))
    split = df["split"].to_numpy(object)
    rank = np.array([{"train": 0, "val": 1, "test": 2}.get(s, 3) for s in split])
    ids = df["id"].to_numpy(object)
    rows, removed = [], np.zeros(len(df), bool)
    for i0 in range(0, len(df), block):
        sl = slice(i0, min(i0 + block, len(df)))
        dist = np.bitwise_count(words[sl, None, :] ^ words[None, :, :]).sum(-1)  # [b, N]
        for a in range(sl.start, sl.stop):
            if not ok[a] or rank[a] == 0:
                continue
            # a partner in another split that is kept: a lower-ranked split (train first), or of the
            # same rank order but earlier, so that of two near-copies in val and test only one goes
            near = np.flatnonzero(
                (dist[a - sl.start] <= max_distance) & ok & (split != split[a]) & (rank < rank[a]) & ~removed
            )
            if len(near):
                b = near[np.argmin(dist[a - sl.start][near])]
                removed[a] = True
                rows.append(
                    dict(
                        id=ids[a],
                        split=split[a],
                        duplicate_of=ids[b],
                        duplicate_split=split[b],
                        distance=int(dist[a - sl.start][b]),
                    )
                )
    return pd.DataFrame(rows, columns=cols)
