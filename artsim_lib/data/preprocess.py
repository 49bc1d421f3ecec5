"""Stage 02: clean the manifest, normalise every image to RGB at the target size, split.

The order follows the original study: drop rows missing artist/style/subset (reported per
column), de-duplicate by perceptual hash, convert and resize each image (EXIF orientation
applied, Lanczos, letterbox or centre crop), then a stratified train/val/test split.
Unreadable, corrupt or oversized images are skipped with their reason; the run goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps
from tqdm import tqdm

from .. import paths

# A truncated file must fail loudly here, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


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


def find_duplicates(df: pd.DataFrame, max_distance: int = 0) -> pd.DataFrame:
    """Pairs (id, duplicate_of) whose phashes differ by at most ``max_distance`` bits.

    The first row in ``df`` order is kept; later rows point to it.
    """
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


def to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL mode to RGB: transparency is composited on ``background``, CMYK/L/P converted."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, tuple(background))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB") if img.mode != "RGB" else img


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
    """Normalise one image to ``dst``. Never raises for a bad image: returns its reason."""
    out = {"src": src, "status": "ok", "reason": "", "orig_mode": None}
    if os.path.exists(dst):
        out["status"] = "cached"
        return out
    try:
        with Image.open(src) as img:
            out["orig_mode"] = img.mode
            if img.width * img.height > max_pixels:
                return {**out, "status": "skipped", "reason": f"oversized: {img.width}x{img.height} px"}
            img.load()  # decode now: truncated files fail here
            img = to_rgb(ImageOps.exif_transpose(img))  # rotate first: conversion may drop EXIF
            result = fit(img, size, mode, pad_color)
    except FileNotFoundError:
        return {**out, "status": "skipped", "reason": "missing file"}
    except Image.DecompressionBombError as err:
        return {**out, "status": "skipped", "reason": f"oversized: {err}"}
    except (OSError, SyntaxError, ValueError) as err:
        return {**out, "status": "skipped", "reason": f"unreadable: {type(err).__name__}: {err}"}
    with paths.atomic_path(dst) as tmp:
        result.save(tmp, format="PNG" if dst.endswith(".png") else "JPEG", quality=95)
    return out


def image_params_key(size: int, mode: str, pad_color, fmt: str) -> str:
    """A short hash of what shapes the output images: a change gives a fresh folder."""
    blob = json.dumps([size, mode, list(pad_color), fmt]).encode()
    return f"{size}px-{mode}-{hashlib.sha1(blob).hexdigest()[:8]}"


def parallel_map(fn, jobs: list[tuple], workers: int, desc: str) -> list:
    """``[fn(*job) for job in jobs]`` over ``workers`` processes, in order, with a progress bar."""
    if workers <= 1 or len(jobs) < 8:
        return [fn(*j) for j in tqdm(jobs, desc=desc)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunks = max(1, len(jobs) // (workers * 8))
        return list(tqdm(pool.map(fn, *zip(*jobs), chunksize=chunks), total=len(jobs), desc=desc))


def probe_file(path: str) -> dict:
    """Format, colour mode, EXIF orientation and whether the image decodes completely."""
    out = {"path": path, "format": None, "mode": None, "exif_orientation": None, "readable": False, "error": ""}
    try:
        with Image.open(path) as img:
            out.update(format=img.format, mode=img.mode,
                       exif_orientation=img.getexif().get(0x0112))
            img.load()
        out["readable"] = True
    except Exception as err:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        out["error"] = f"{type(err).__name__}: {err}"
    return out


def probe_files(paths, workers: int = 1) -> pd.DataFrame:
    """:func:`probe_file` for every path, as a table."""
    return pd.DataFrame(parallel_map(probe_file, [(str(p),) for p in paths], workers, "probe files"))


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
    skipped = df.loc[~ok, ["id", "filename"]].copy()
    skipped["reason"] = status.loc[~ok, "reason"]
    return kept, skipped.reset_index(drop=True)


def stratified_split(df: pd.DataFrame, fractions: dict[str, float], by: str | None, seed: int) -> pd.Series:
    """A seeded train/val/test label per row, stratified by column ``by`` (or none).

    Every group with at least one row keeps one in train; rounding follows largest remainders
    so the shares stay close to ``fractions`` in small groups too.
    """
    rng = np.random.default_rng(seed)
    names = list(fractions)
    split = pd.Series(index=df.index, dtype="object")
    groups = df.groupby(df[by].fillna("<none>") if by else np.zeros(len(df)), sort=True)
    for _, grp in groups:
        n = len(grp)
        raw = np.array([fractions[k] * n for k in names])
        counts = np.floor(raw).astype(int)
        for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
            counts[i] += 1
        if counts[0] == 0:  # names[0] is train: never leave a class out of training
            counts[np.argmax(counts)] -= 1
            counts[0] += 1
        order = rng.permutation(grp.index.to_numpy())
        split.loc[order] = np.repeat(names, counts)
    return split


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
                                     cfg.image_format, cfg.max_pixels, cfg.workers)
    kept = add_content_boxes(kept, cfg.size, cfg.resize_mode, cfg.workers)
    fractions = {"train": cfg.split.train, "val": cfg.split.val, "test": cfg.split.test}
    by = None if cfg.split.stratify == "none" else cfg.split.stratify
    if cfg.split.group == "artist":
        kept["split"] = grouped_split(kept, fractions, "artist", P.seed, by)
    else:
        kept["split"] = stratified_split(kept, fractions, by, P.seed)
    cross = cross_split_duplicates(kept, cfg.split.cross_split_phash)
    kept = kept[~kept["id"].isin(cross["id"])].reset_index(drop=True)
    out = P.run.sub("preprocess")
    for name, table in (("missing", missing), ("dropped", dropped), ("duplicates", dups), ("skipped", skipped),
                        ("cross_split_duplicates", cross)):
        with paths.atomic_path(out / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    paths.write_parquet(kept, P.run.manifest, manifest_key(P))
    return PreprocessResult(kept, missing, dropped, dups, skipped, image_dir, cross)


# -- splits by artist, and near-copies across splits ----------------------------------------------------
def grouped_split(df: pd.DataFrame, fractions: dict[str, float], group: str, seed: int,
                  by: str | None = None) -> pd.Series:
    """A seeded split label per row that keeps every ``group`` (e.g. artist) whole: groups in a
    seeded order, largest first, each to the split furthest below its share of rows. A row without
    a group value is its own group. With ``by`` (e.g. style), each class first gets one group in
    train, so that no class is left out of training."""
    names = list(fractions)
    keys = df[group].astype("string").fillna("").to_numpy(object)
    keys = np.where(keys == "", "<row " + df.index.astype(str).to_numpy(object) + ">", keys)
    sizes = pd.Series(keys).value_counts()
    rng = np.random.default_rng(seed)
    order = sizes.index.to_numpy(object)[rng.permutation(len(sizes))]
    order = sorted(order, key=lambda k: -sizes[k])                    # stable: ties keep the seeded order
    target = np.array([fractions[k] for k in names]) * len(df)
    have = np.zeros(len(names))
    label = {}
    if by is not None:  # one group per class into train first (the class's largest, seeded ties)
        cls = pd.Series(df[by].astype("string").fillna("<none>").to_numpy(object), index=keys)
        classes_of = cls.groupby(level=0).agg(set)                     # group -> its classes
        for c in sorted(set(cls)):
            if any(c in classes_of[k] for k, v in label.items() if v == names[0]):
                continue
            k = next(k for k in order if c in classes_of[k])
            label[k] = names[0]
            have[0] += sizes[k]
    for k in order:
        if k in label:
            continue
        i = int(np.argmax((target - have) / np.maximum(target, 1e-9)))  # the most under-filled split
        label[k] = names[i]
        have[i] += sizes[k]
    return pd.Series([label[k] for k in keys], index=df.index, dtype="object")


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


def manifest_key(P) -> dict:
    """What the split manifest depends on: a manifest made from other params is stale."""
    return {"seed": P.seed, "data": P.data.model_dump(mode="json"),
            "preprocess": P.preprocess.model_dump(mode="json")}
