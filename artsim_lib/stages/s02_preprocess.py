"""Stage 02: clean the manifest, normalise every image to RGB at the target size, split.

The order follows the original study: drop rows missing artist/style/subset (reported per
column), de-duplicate by perceptual hash, convert and resize each image (EXIF orientation
applied, Lanczos, letterbox or centre crop), then a stratified train/val/test split.
Unreadable, corrupt or oversized images are skipped with their reason; the run goes on.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from artsim_lib.core.splits import grouped_split, stratified_split  # noqa: F401  (part of this stage's API)
from artsim_lib.io import paths
from artsim_lib.io.images import (  # to_rgb: re-exported (part of this module's API)
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    OversizedImageError,
    image_mode,
    open_image,
    open_rgb,
)
from artsim_lib.io.workers import parallel_map, worker_count


@dataclass
class PreprocessResult:
    """What stage 02 produced: the split manifest and the reasons rows were left out."""

    manifest: pd.DataFrame
    missing: pd.DataFrame      # column, missing (rows dropped for that column)
    dropped: pd.DataFrame      # the rows dropped for a missing value
    duplicates: pd.DataFrame   # id, duplicate_of, phash, distance
    skipped: pd.DataFrame      # id, filename, reason
    image_dir: Path
    cross_split: pd.DataFrame | None = None  # val/test near-copies of another split's row, removed


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
    any_missing = np.logical_or.reduce([m.to_numpy() for m in is_missing.values()]) if columns else \
        np.zeros(len(df), bool)
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
        match = next(((kid, bin(v ^ kv).count("1")) for kv, kid in kept
                      if bin(v ^ kv).count("1") <= max_distance), None)
        if match:
            rows.append({"id": rid, "duplicate_of": match[0], "phash": h, "distance": match[1]})
        else:
            kept.append((v, rid))
    return pd.DataFrame(rows, columns=["id", "duplicate_of", "phash", "distance"])


_BLOCK = 512    # hashes searched together
_CHUNK = 2048   # kept hashes compared with a block at once: [2048, 512] temporaries, ~8 MB
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


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
            cand = kept[c0:min(nk, c0 + _CHUNK)]
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
            kept[nk:nk + len(new)] = new
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


def fit(img: Image.Image, size: int, mode: str, pad_color=(0, 0, 0)) -> Image.Image:
    """Resize to ``size``×``size`` with Lanczos: ``letterbox`` keeps the whole picture and pads,
    ``crop`` fills the square and cuts the centre, ``stretch`` (the seed study's own) scales each
    side to ``size``: no padding, the aspect ratio given up."""
    if mode == "stretch":
        return img.resize((size, size), Image.Resampling.LANCZOS)
    if mode == "crop":
        return ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS)
    inner = ImageOps.contain(img, (size, size), method=Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), tuple(pad_color))
    canvas.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
    return canvas


def process_image(src: str, dst: str, size: int, mode: str, pad_color, max_pixels: int) -> dict:
    """Normalise one image to ``dst``. Never raises for a bad image: returns its reason.
    A cached ``dst`` is reused; its source's mode is still recorded, so a rerun's manifest is
    the same as the first run's."""
    out = {"src": src, "status": "ok", "reason": "", "orig_mode": None, "sha256": None}
    if os.path.exists(dst):  # written by an earlier run: its fingerprint is read once, here
        return {**out, "status": "cached", "orig_mode": image_mode(src), "sha256": paths.file_sha256(dst)}
    try:
        out["orig_mode"] = image_mode(src)
        result = fit(open_rgb(src, max_pixels), size, mode, pad_color)
    except OversizedImageError as err:
        return {**out, "status": "skipped", "reason": f"oversized: {_reason(err, src)}"}
    except ImageReadError as err:
        why = _reason(err, src)
        if why == "no such file":
            return {**out, "status": "skipped", "reason": "missing file"}
        why = why.removeprefix("cannot read image (").removesuffix(")")
        return {**out, "status": "skipped", "reason": f"unreadable: {why}"}
    buf = io.BytesIO()
    result.save(buf, format="PNG" if dst.endswith(".png") else "JPEG", quality=95)
    # The content fingerprint later stages key their caches by, computed from the bytes written.
    out["sha256"] = paths.write_bytes_fingerprinted(dst, buf.getvalue())
    return out


def _reason(err: ImageReadError, src: str) -> str:
    """The error's message without the leading ``<src>: `` (the table names the file)."""
    return " ".join(str(err).split()).removeprefix(f"{src}: ").removeprefix("oversized: ")


def image_params_key(size: int, mode: str, pad_color, fmt: str) -> str:
    """A short hash of what shapes the output images: a change gives a fresh folder."""
    blob = json.dumps([size, mode, list(pad_color), fmt]).encode()
    return f"{size}px-{mode}-{hashlib.sha1(blob).hexdigest()[:8]}"


def probe_file(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict:
    """Format, colour mode, EXIF orientation and whether the image can be read the way every
    stage reads it (:func:`artsim_lib.io.images.open_rgb`); ``error`` says why not. Never raises."""
    out = {"path": path, "format": None, "mode": None, "exif_orientation": None, "readable": False, "error": ""}
    try:
        open_rgb(path, max_pixels)  # refuses a bomb before decoding it
        out["readable"] = True
    except ImageReadError as err:
        out["error"] = " ".join(str(err).split()).removeprefix(f"{path}: ")
    try:
        with open_image(path, None) as img:  # the header: format and mode even of a broken file
            out.update(format=img.format, mode=img.mode)
            if out["readable"]:  # PNG's EXIF may sit after the pixels
                out["exif_orientation"] = img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - not even a header: the error above says why
        pass
    return out


def probe_files(paths, workers: int = 1, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    """:func:`probe_file` for every path, as a table."""
    jobs = [(str(p), max_pixels) for p in paths]
    return pd.DataFrame(parallel_map(probe_file, jobs, workers, "probe files"))


def normalise_images(df: pd.DataFrame, out_dir: Path, size: int, mode: str = "letterbox",
                     pad_color=(0, 0, 0), fmt: str = "png", max_pixels: int = 178_956_970,
                     workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write every image of ``df`` to ``out_dir/<id>.<fmt>``; return (processed rows, skipped rows).

    Existing outputs are reused, so a re-run (or a resumed run) does only what is missing.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "png" if fmt == "png" else "jpg"
    dsts = [str(out_dir / f"{i}.{ext}") for i in df["id"]]
    jobs = [(src, dst, size, mode, tuple(pad_color), max_pixels) for src, dst in zip(df["path"], dsts)]
    results = parallel_map(process_image, jobs, workers, "preprocess images")
    status = pd.DataFrame(results, index=df.index)
    ok = status["status"].ne("skipped")
    kept = df[ok].copy()
    kept["src_path"] = kept["path"]
    kept["path"] = [d for d, good in zip(dsts, ok) if good]
    kept["orig_mode"] = status.loc[ok, "orig_mode"]
    kept["sha256"] = status.loc[ok, "sha256"]
    skipped = df.loc[~ok, ["id", "filename"]].copy()
    skipped["reason"] = status.loc[~ok, "reason"]
    return kept, skipped.reset_index(drop=True)


def preprocess(P, raw: pd.DataFrame) -> PreprocessResult:
    """Run stage 02 on the raw manifest with the params ``P``; write the split manifest and
    the lists of dropped, duplicate and skipped rows under ``<run>/preprocess/``."""
    cfg = P.preprocess
    raw = raw.sort_values("id").reset_index(drop=True)
    kept, missing, dropped = drop_missing(raw, list(cfg.drop_missing))
    dups = find_duplicates(kept, cfg.phash_max_distance) if cfg.dedupe_phash else find_duplicates(kept.iloc[:0])
    kept = kept[~kept["id"].isin(dups["id"])]
    image_dir = P.run.sub("preprocess", image_params_key(cfg.size, cfg.resize_mode, cfg.pad_color, cfg.image_format))
    kept, skipped = normalise_images(kept, image_dir, cfg.size, cfg.resize_mode, cfg.pad_color,
                                     cfg.image_format, cfg.max_pixels,
                                     worker_count(cfg.workers))  # never more than the allocation
    kept = add_content_boxes(kept, cfg.size, cfg.resize_mode, worker_count(cfg.workers))
    fractions = {"train": cfg.split.train, "val": cfg.split.val, "test": cfg.split.test}
    by = None if cfg.split.stratify == "none" else cfg.split.stratify
    if cfg.split.group == "artist":
        kept["split"] = grouped_split(kept, fractions, "artist", P.seed, by)
    else:
        kept["split"] = stratified_split(kept, fractions, by, P.seed)
    cross = cross_split_duplicates(kept, cfg.split.cross_split_phash)
    kept = kept[~kept["id"].isin(cross["id"])].reset_index(drop=True)
    skipped = pd.concat([skipped, _decisions_as_skipped(P)], ignore_index=True)
    out = P.run.sub("preprocess")
    for name, table in (("missing", missing), ("dropped", dropped), ("duplicates", dups), ("skipped", skipped),
                        ("cross_split_duplicates", cross)):
        with paths.atomic_path(out / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    paths.write_parquet(kept, P.run.manifest, manifest_key(P))
    return PreprocessResult(kept, missing, dropped, dups, skipped, image_dir, cross)


def _phash_words(hashes) -> tuple[np.ndarray, np.ndarray]:
    """64-bit words of hex phashes (missing or unreadable: flagged). # [N, W] uint64, [N] bool"""
    ok = np.array([isinstance(h, str) and len(h) > 0 and _phash_int(h) is not None for h in hashes], bool)
    width = max((len(h) for h, k in zip(hashes, ok) if k), default=16)
    words = np.array([[int(h.rjust(width, "0")[i:i + 16], 16) if k else 0 for i in range(0, width, 16)]
                      for h, k in zip(hashes, ok)], np.uint64).reshape(len(ok), -1)
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
        dist = np.bitwise_count(words[sl, None, :] ^ words[None, :, :]).sum(-1)        # [b, N]
        for a in range(sl.start, sl.stop):
            if not ok[a] or rank[a] == 0:
                continue
            # a partner in another split that is kept: a lower-ranked split (train first), or of the
            # same rank order but earlier, so that of two near-copies in val and test only one goes
            near = np.flatnonzero((dist[a - sl.start] <= max_distance) & ok & (split != split[a])
                                  & (rank < rank[a]) & ~removed)
            if len(near):
                b = near[np.argmin(dist[a - sl.start][near])]
                removed[a] = True
                rows.append(dict(id=ids[a], split=split[a], duplicate_of=ids[b], duplicate_split=split[b],
                                 distance=int(dist[a - sl.start][b])))
    return pd.DataFrame(rows, columns=cols)


# -- the content box: where the painting lies in the written square (the rest is padding) ---------------
CONTENT_COLUMNS = ["src_width", "src_height", "content_x0", "content_y0", "content_x1", "content_y1"]


def content_box(width: int, height: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), x1/y1 exclusive, of the picture inside the ``size`` square that
    :func:`fit` writes for a ``width``×``height`` source: the letterbox's inner image (the same
    rounding as ``ImageOps.contain``), the whole square for ``crop`` and ``stretch``."""
    if mode != "letterbox" or width == height or width <= 0 or height <= 0:
        return 0, 0, size, size
    if width > height:
        w, h = size, round(height / width * size)
    else:
        w, h = round(width / height * size), size
    x0, y0 = (size - w) // 2, (size - h) // 2
    return x0, y0, x0 + w, y0 + h


_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


def source_geometry(src: str, size: int, mode: str) -> dict:
    """The source's width and height after its EXIF rotation, and its content box in the output
    (header only: nothing is decoded). Unreadable: NaNs (the image was skipped anyway)."""
    try:
        with Image.open(src) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in _SWAPS_SIDES:
                w, h = h, w
    except (OSError, SyntaxError, ValueError):
        return dict.fromkeys(CONTENT_COLUMNS, np.nan)
    return dict(zip(CONTENT_COLUMNS, (w, h, *content_box(w, h, size, mode))))


def add_content_boxes(kept: pd.DataFrame, size: int, mode: str, workers: int = 1) -> pd.DataFrame:
    """``kept`` (rows with ``src_path``) with :data:`CONTENT_COLUMNS`: every measure and the
    ``geometry`` baseline of stage 09 can tell the painting from its padding."""
    jobs = [(str(src), size, mode) for src in kept["src_path"]]
    geo = pd.DataFrame(parallel_map(source_geometry, jobs, workers, "content boxes"), index=kept.index,
                       columns=CONTENT_COLUMNS)
    return kept.drop(columns=[c for c in CONTENT_COLUMNS if c in kept]).join(geo)


def _decisions_as_skipped(P) -> pd.DataFrame:
    """The loader's decisions (files not in classes.csv, repeated rows) as skipped rows."""
    from artsim_lib.io.datasets import source_decisions

    decisions = source_decisions(P)
    return pd.DataFrame({"id": pd.Series([None] * len(decisions), dtype="string"),
                         "filename": decisions["filename"],
                         "reason": decisions["issue"] + ": " + decisions["action"]})


def manifest_key(P) -> dict:
    """What the split manifest depends on: a manifest made from other params is stale."""
    # workers only schedule the work: not part of the key (provenance records them)
    return {"seed": P.seed, "data": P.data.model_dump(mode="json"),
            "preprocess": P.preprocess.model_dump(mode="json", exclude={"workers"})}
