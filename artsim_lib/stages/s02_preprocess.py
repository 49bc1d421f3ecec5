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

from artsim_lib.core.cleaning import (  # noqa: F401  (used here, and part of this stage's API)
    cross_split_duplicates,
    drop_missing,
    find_duplicates,
    find_duplicates_naive,
    null_table,
)
from artsim_lib.core.splits import grouped_split, stratified_split  # noqa: F401  (part of this stage's API)
from artsim_lib.io import manifest as source
from artsim_lib.io import paths
from artsim_lib.io.artifacts import StageNotRunError
from artsim_lib.io.images import (
    ImageReadError,
    OversizedImageError,
    image_mode,
    open_rgb,
    probe_file,  # noqa: F401  (this stage's API)
    probe_files,  # noqa: F401
)
from artsim_lib.io.workers import parallel_map, worker_count
from artsim_lib.stages import s01_eda


@dataclass
class PreprocessResult:
    """What stage 02 produced: the split manifest and the reasons rows were left out."""

    manifest: pd.DataFrame
    missing: pd.DataFrame  # column, missing (rows dropped for that column)
    dropped: pd.DataFrame  # the rows dropped for a missing value
    duplicates: pd.DataFrame  # id, duplicate_of, phash, distance
    skipped: pd.DataFrame  # id, filename, reason
    image_dir: Path
    cross_split: pd.DataFrame | None = None  # val/test near-copies of another split's row, removed


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


def normalise_images(
    df: pd.DataFrame,
    out_dir: Path,
    size: int,
    mode: str = "letterbox",
    pad_color=(0, 0, 0),
    fmt: str = "png",
    max_pixels: int = 178_956_970,
    workers: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
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
    kept, skipped = normalise_images(
        kept,
        image_dir,
        cfg.size,
        cfg.resize_mode,
        cfg.pad_color,
        cfg.image_format,
        cfg.max_pixels,
        worker_count(cfg.workers),
    )  # never more than the allocation
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
    for name, table in (
        ("missing", missing),
        ("dropped", dropped),
        ("duplicates", dups),
        ("skipped", skipped),
        ("cross_split_duplicates", cross),
    ):
        with paths.atomic_path(out / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    paths.write_parquet(kept, P.run.manifest, manifest_key(P))
    return PreprocessResult(kept, missing, dropped, dups, skipped, image_dir, cross)


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
    geo = pd.DataFrame(
        parallel_map(source_geometry, jobs, workers, "content boxes"), index=kept.index, columns=CONTENT_COLUMNS
    )
    return kept.drop(columns=[c for c in CONTENT_COLUMNS if c in kept]).join(geo)


def _decisions_as_skipped(P) -> pd.DataFrame:
    """The loader's decisions (files not in classes.csv, repeated rows) as skipped rows."""
    from artsim_lib.io.datasets import source_decisions

    decisions = source_decisions(P)
    return pd.DataFrame(
        {
            "id": pd.Series([None] * len(decisions), dtype="string"),
            "filename": decisions["filename"],
            "reason": decisions["issue"] + ": " + decisions["action"],
        }
    )


def manifest_key(P) -> dict:
    """What the split manifest depends on: a manifest made from other params is stale."""
    # workers only schedule the work: not part of the key (provenance records them)
    return {
        "seed": P.seed,
        "data": P.data.model_dump(mode="json"),
        "preprocess": P.preprocess.model_dump(mode="json", exclude={"workers"}),
    }


def run(P, raw: pd.DataFrame | None = None) -> PreprocessResult:
    """Stage 02 for ``P``: stage 01's raw manifest (or ``raw``) cleaned, its images normalised and
    split; written under ``<run>/manifest/`` and ``<run>/preprocess/``."""
    return preprocess(P, s01_eda.load(P) if raw is None else raw)


def load(P) -> pd.DataFrame:
    """The split manifest stage 02 wrote for ``P``; StageNotRunError ("run stage 02 first") when it
    is missing or was made with other params."""
    target = P.run.manifest
    if paths.is_current(target, manifest_key(P)):
        return source.read_manifest(target)
    raise StageNotRunError("02", "the split manifest", target, stale=target.exists())
