"""SynthArt: seeded procedural paintings written in the Kaggle WikiArt layout.

``generate(root)`` writes ``<root>/<Style>/<artist-slug>_<title-slug>-<year>.jpg`` and
``<root>/classes.csv`` with the Kaggle columns ``filename, artist, genre, description, phash,
width, height, genre_count, subset`` (``genre`` holds the *style* list as a string, e.g.
``"['Cubism']"``). Eight styles (real Kaggle folder names) with three artists each; every
artist has its own palette and brush signature (stroke size, density, colour jitter, grain).
``width``/``height`` are the stored pixel size, ``phash`` is ``imagehash.phash`` of the file.

Defects, one distinct file each; their filenames are written to ``synthart_defects.json``
next to ``classes.csv`` (nothing extra goes into the csv) and returned by :func:`defects`:

- ``missing_artist``, ``missing_genre``, ``missing_subset``: that csv cell is empty.
- ``phash_duplicate``: the picture of ``phash_original`` saved again, slightly rescaled,
  under another artist and title (Realism or Action_painting); its phash equals the original's.
- ``grayscale``: a mode ``L`` JPEG.  ``cmyk``: a CMYK JPEG.
- ``rgba_png``: PNG bytes (mode RGBA, transparent corners) behind a ``.jpg`` name.
- ``exif_rotated``: stored turned 90 degrees with EXIF Orientation 6
  (``ImageOps.exif_transpose`` makes it upright; width/height are the stored size).
- ``truncated``: the first half of a JPEG (Pillow raises on load); its phash cell is empty.

Series (``series`` > 0): that many groups of ``series_size`` paintings by one artist with the
same composition in different palettes (the artist's palette rolled), the hard negatives of
stage 09: the sidecar lists every member under ``series`` and the non-first members under
``series_member``; ``synthart_series.json`` holds the groups (a list of filename lists).

Quirks, also in the sidecar: ``multi_style`` rows name two styles (``genre_count`` 2, file in
the first style's folder); ``no_year`` names lack the trailing ``-YYYY``. ~10 % of rows are in
the ``uncertain artist`` subset, ~10 % are tiny (40-90 px), ~15 % large (>1024 px up to
``max_side``); aspect ratios 0.5-2 in both orientations.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from artsim_lib.io import paths

COLUMNS = ["filename", "artist", "genre", "description", "phash", "width", "height", "genre_count", "subset"]
DEFECTS_FILE = "synthart_defects.json"
SERIES_FILE = "synthart_series.json"  # the series as lists of filenames (only with series > 0)
DEFECTS = (
    "missing_artist",
    "missing_genre",
    "missing_subset",
    "grayscale",
    "rgba_png",
    "cmyk",
    "exif_rotated",
    "truncated",
)
WORK = 384  # paintings are drawn at this long side, then resized: fast at any output size


@dataclass(frozen=True)
class Artist:
    """A fictional painter: a name, a palette and a brush signature."""

    name: str
    palette: np.ndarray  # (5, 3) floats in 0..255
    # The brush signature: stroke scale, stroke count factor, colour noise per stroke,
    # preferred stroke direction (radians), canvas noise amplitude.
    size: float
    density: float
    jitter: float
    angle: float
    grain: float
    years: tuple[int, int]


def _cols(rng, a: Artist, idx) -> np.ndarray:
    """Palette colours ``idx`` with the artist's jitter, as ints (n, 3)."""
    idx = np.atleast_1d(idx)
    c = a.palette[idx] + rng.normal(0, a.jitter, (len(idx), 3))
    return np.clip(c, 0, 255).astype(int)


def _col(rng, a: Artist, k=None) -> tuple:  # one colour (random palette entry if k is None)
    return tuple(_cols(rng, a, rng.integers(0, 5) if k is None else k)[0].tolist())


def _gradient(w, h, top, bottom) -> Image.Image:
    t = np.linspace(0, 1, h)[:, None, None]
    arr = np.asarray(top, float) * (1 - t) + np.asarray(bottom, float) * t
    return Image.fromarray(np.repeat(arr, w, axis=1).astype(np.uint8))


# -- painters: (rng, w, h, artist) -> RGB image of size (w, h) ---------------------------
def _cubism(rng, w, h, a):
    img = Image.new("RGB", (w, h), _col(rng, a, 0))
    d = ImageDraw.Draw(img)
    for _ in range(int(30 * a.density)):
        cx, cy, r = rng.random() * w, rng.random() * h, a.size * rng.uniform(20, 70)
        ang = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 7)))
        pts = [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in ang]
        d.polygon(pts, fill=_col(rng, a), outline=(30, 25, 20), width=max(1, int(2 * a.size)))
    return img


def _impressionism(rng, w, h, a):
    img = _gradient(w, h, _col(rng, a, 0), _col(rng, a, 4))
    d = ImageDraw.Draw(img)
    n = int(1500 * a.density)
    xs, ys = rng.random(n) * w, rng.random(n) * h
    # Dab colour follows height (sky above, ground below) so the scene has structure.
    cols = _cols(rng, a, np.clip(ys / h * 4 + rng.normal(0, 0.7, n), 0, 4).astype(int))
    ang, ln = rng.normal(a.angle, 0.4, n), a.size * rng.uniform(4, 10, n)
    wd = max(2, int(3 * a.size))
    for x, y, t, length, c in zip(xs, ys, ang, ln, cols.tolist()):
        d.line([(x, y), (x + length * math.cos(t), y + length * math.sin(t))], fill=tuple(c), width=wd)
    return img


def _pointillism(rng, w, h, a):
    img = Image.new("RGB", (w, h), (245, 240, 228))
    d = ImageDraw.Draw(img)
    n = int(3000 * a.density)
    xs, ys = rng.random(n) * w, rng.random(n) * h
    fx, fy = rng.uniform(1, 4, 2)
    field = np.sin(xs / w * fx * np.pi) + ys / h * 3 + rng.normal(0, 0.5, n)
    cols = _cols(rng, a, np.clip(field * 1.2, 0, 4).astype(int))
    rad = a.size * rng.uniform(1.2, 2.8, n)
    for x, y, r, c in zip(xs, ys, rad, cols.tolist()):
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(c))
    return img


def _color_field(rng, w, h, a):
    img = Image.new("RGB", (w, h), _col(rng, a, 0))
    d = ImageDraw.Draw(img)
    k = int(rng.integers(2, 4))
    m, top = w * rng.uniform(0.06, 0.12), h * 0.06
    for i in range(k):
        y0 = top + i * (h - 2 * top) / k
        d.rectangle([m, y0 + 4, w - m, y0 + (h - 2 * top) / k - 4], fill=_col(rng, a, i + 1))
    return img.filter(ImageFilter.GaussianBlur(3 * a.size))


def _action(rng, w, h, a):
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(215, 245, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(int(25 * a.density)):
        steps = rng.normal(0, 15 * a.size, (20, 2)).cumsum(axis=0) + (rng.random(2) * (w, h))
        c = _col(rng, a)
        d.line([tuple(p) for p in steps.tolist()], fill=c, width=int(rng.integers(1, 7) * a.size) + 1, joint="curve")
        for x, y in steps[rng.random(20) < 0.4 * a.density].tolist():
            r = rng.uniform(1, 4) * a.size
            d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    return img


def _realism(rng, w, h, a):
    img = _gradient(w, h, _col(rng, a, 0), (235, 225, 205))
    d = ImageDraw.Draw(img)
    horizon = h * rng.uniform(0.35, 0.65)
    xs = np.linspace(0, w, 64)
    for layer in range(3):  # far hills first: nearer ones are lower and darker
        amp, ph = h * rng.uniform(0.03, 0.1), rng.uniform(0, 6, 2)
        ys = horizon + layer * h * 0.1 - amp * (np.sin(xs / w * 5 + ph[0]) + 0.5 * np.sin(xs / w * 13 + ph[1]))
        c = tuple(int(v * (1 - 0.2 * layer)) for v in _col(rng, a, 2 + layer))
        d.polygon(list(zip(xs.tolist(), ys.tolist())) + [(w, h), (0, h)], fill=c)
    for _ in range(int(6 * a.density)):
        x, y, r = rng.random() * w, horizon + rng.random() * h * 0.3, a.size * rng.uniform(5, 14)
        d.ellipse([x - r, y - 2 * r, x + r, y], fill=(35, 50, 30))
    return img.filter(ImageFilter.GaussianBlur(0.8))


def _baroque(rng, w, h, a):
    img = _gradient(w, h, tuple(v * 0.3 for v in _col(rng, a, 0)), (8, 6, 5))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.5:  # a lit window or curtain behind the sitter: portraits differ in layout
        x0, y0 = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.4) * h
        d.rectangle(
            [x0, y0, x0 + rng.uniform(0.2, 0.4) * w, y0 + rng.uniform(0.3, 0.6) * h],
            fill=tuple(int(v * rng.uniform(0.4, 0.9)) for v in _col(rng, a, 3)),
        )
    cx, s = w * rng.uniform(0.3, 0.7), min(w, h)
    d.ellipse([cx - 0.45 * w, h * 0.62, cx + 0.45 * w, h * 1.3], fill=tuple(int(v * 0.6) for v in _col(rng, a, 1)))
    hx, hy, rx = cx + rng.normal(0, s * 0.04), h * rng.uniform(0.3, 0.45), s * rng.uniform(0.11, 0.2)
    skin = tuple(int(0.6 * v + 0.4 * u) for v, u in zip(_col(rng, a, 2), (225, 180, 150)))
    d.ellipse([hx - rx, hy - 1.3 * rx, hx + rx, hy + 1.3 * rx], fill=skin)
    lit = tuple(min(255, v + 35) for v in skin)  # light from the upper left, as in chiaroscuro
    d.ellipse([hx - 0.7 * rx, hy - rx, hx + 0.1 * rx, hy + 0.2 * rx], fill=lit)
    return img.filter(ImageFilter.GaussianBlur(1.5 * a.size))


def _pop_art(rng, w, h, a):
    bg = _col(rng, a, 0)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):
        x, y, r = rng.random() * w, rng.random() * h, min(w, h) * rng.uniform(0.12, 0.3)
        shape = d.ellipse if rng.random() < 0.5 else d.rectangle
        shape([x - r, y - r, x + r, y + r], fill=_col(rng, a), outline=(0, 0, 0), width=4)
    arr = np.array(img)
    # Halftone over the background only: dot radius follows a smooth shading field.
    cell = int(5 * a.size) + 4
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = (yy // cell + 0.5) * cell, (xx // cell + 0.5) * cell
    rad = cell * 0.5 * (0.5 + 0.5 * np.sin(cx / w * 3 + cy / h * 2 + a.angle))
    mask = (np.hypot(xx - cx, yy - cy) < rad) & np.all(arr == bg, axis=2)
    arr[mask] = _cols(rng, a, 4)[0]
    return Image.fromarray(arr)


STYLES = {  # Kaggle folder -> (painter, subject genres, years active)
    "Cubism": (_cubism, ("still life", "portrait", "cityscape"), (1907, 1925)),
    "Impressionism": (_impressionism, ("landscape", "cityscape", "portrait"), (1865, 1910)),
    "Pointillism": (_pointillism, ("landscape", "cityscape"), (1884, 1910)),
    "Color_Field_Painting": (_color_field, ("abstract",), (1950, 1975)),
    "Action_painting": (_action, ("abstract",), (1945, 1965)),
    "Realism": (_realism, ("landscape",), (1840, 1890)),
    "Baroque": (_baroque, ("portrait",), (1600, 1700)),
    "Pop_Art": (_pop_art, ("abstract", "portrait"), (1955, 1975)),
}
ARTISTS_PER_STYLE = 3
_FIRST = "anna boris clara diego elena felix greta hugo ines jonas katya luca mira nils olga pavel".split()
_LAST = (
    "kovac berg moreau silva novak lindqvist rossi dumont varga holm ortega petrov keller brandt costa weiss".split()
)
_TITLES = {  # subject genre -> (adjectives, nouns) for title slugs
    "landscape": (
        ("quiet", "autumn", "distant", "morning", "evening"),
        ("hills", "valley", "river", "field", "orchard"),
    ),
    "cityscape": (("rainy", "old", "busy", "winter", "sunlit"), ("street", "bridge", "square", "harbour", "rooftops")),
    "portrait": (("young", "old", "seated", "pensive", "noble"), ("woman", "man", "girl", "merchant", "musician")),
    "still life": (("broken", "green", "white", "small", "dark"), ("still-life", "bottle", "guitar", "jug", "fruit")),
    "abstract": (
        ("red", "blue", "silent", "vertical", "black"),
        ("composition", "rhythm", "tension", "space", "field"),
    ),
}


def _artists(rng) -> dict[str, list[Artist]]:
    """Three artists per style with distinct names, palettes and brush signatures."""
    combos = [f"{first} {last}" for first in _FIRST for last in _LAST]
    names = rng.choice(combos, len(STYLES) * ARTISTS_PER_STYLE, replace=False).tolist()
    out = {}
    for s, (style, (_, _, (y0, y1))) in enumerate(STYLES.items()):
        out[style] = []
        for k in range(ARTISTS_PER_STYLE):
            hue, sat, val = rng.random(), rng.uniform(0.45, 0.9), rng.uniform(0.55, 0.95)
            hues = hue + np.array([0, 0.08, -0.08, 0.5, 0.15]) * rng.uniform(0.5, 1.5)
            pal = [colorsys.hsv_to_rgb(x % 1, sat * rng.uniform(0.7, 1), val * rng.uniform(0.6, 1)) for x in hues]
            start = int(rng.integers(y0, y1 - 5))
            out[style].append(
                Artist(
                    names[s * ARTISTS_PER_STYLE + k],
                    np.array(pal) * 255,
                    rng.uniform(0.6, 1.6),
                    rng.uniform(0.6, 1.4),
                    rng.uniform(4, 28),
                    rng.uniform(-np.pi, np.pi),
                    rng.uniform(1, 6),
                    (start, min(y1, start + int(rng.integers(8, 30)))),
                )
            )
    return out


def _sizes(rng, n: int, max_side: int) -> list[tuple[int, int]]:
    """(width, height) per image: a few tiny, a few above 1024 px, both orientations."""
    n_tiny, n_large = max(2, n // 10), max(2, n * 3 // 20)
    big_lo = min(1025, max_side)
    longs = (
        [int(rng.integers(40, min(90, max_side) + 1)) for _ in range(n_tiny)]
        + [int(rng.integers(big_lo, max_side + 1)) for _ in range(n_large)]
        + [int(rng.integers(min(150, max_side), min(800, max_side) + 1)) for _ in range(n - n_tiny - n_large)]
    )
    out = []
    for i, long in enumerate(longs):
        r = math.exp(abs(rng.uniform(-math.log(2), math.log(2))))  # aspect in [1, 2]
        short = max(1, round(long / r))
        out.append((long, short) if i % 2 else (short, long))  # alternate orientation
    return [out[i] for i in rng.permutation(n)]


def _title(rng, a: Artist, style: str, taken: set) -> tuple[str, str, int | None]:
    """A filename not used yet, its title slug and year (~5 % of names carry no year)."""
    adjs, nouns = _TITLES[str(rng.choice(STYLES[style][1]))]
    for attempt in range(100):
        title = f"{rng.choice(adjs)}-{rng.choice(nouns)}" + (f"-no-{attempt}" if attempt > 50 else "")
        year = None if rng.random() < 0.05 else int(rng.integers(a.years[0], a.years[1] + 1))
        fname = f"{style}/{a.name.replace(' ', '-')}_{title}" + (f"-{year}" if year else "") + ".jpg"
        if fname not in taken:
            taken.add(fname)
            return fname, title, year
    raise RuntimeError(f"no free filename for {a.name}")


# WikiArt is long-tailed (Impressionism ~13k images, Action painting ~100): so is SynthArt.
STYLE_WEIGHTS = {
    "Impressionism": 3.0,
    "Realism": 2.4,
    "Baroque": 1.6,
    "Cubism": 1.2,
    "Pop_Art": 1.0,
    "Pointillism": 0.8,
    "Color_Field_Painting": 0.7,
    "Action_painting": 0.5,
}


def _style_sequence(n: int, styles: list[str]) -> list[str]:
    """The style of each of ``n`` rows: a floor per style (so every style can be split into
    train/val/test and keeps several artists), the rest in proportion to STYLE_WEIGHTS."""
    floor = max(2, min(6, n // len(styles)))
    w = np.array([STYLE_WEIGHTS.get(s, 1.0) for s in styles])
    extra = (n - floor * len(styles)) * w / w.sum()
    counts = floor + np.floor(extra).astype(int)
    for k in np.argsort(-(extra - np.floor(extra)))[: n - counts.sum()]:
        counts[k] += 1
    # Interleave so any prefix (data.limit) still mixes styles.
    order = np.argsort(np.concatenate([(np.arange(c) + 0.5) / c for c in counts]), kind="stable")
    return [str(s) for s in np.repeat(styles, counts)[order]]


def _plan(rng, n: int, max_side: int) -> list[dict]:
    """Every row's style, artist, name, size, subset and (at most one) defect."""
    artists, styles, taken = _artists(rng), list(STYLES), set()
    sizes = _sizes(rng, n, max_side)
    subsets = ["uncertain artist"] * max(1, n // 10) + ["test"] * (n // 5)
    subsets = [(subsets + ["train"] * n)[i] for i in rng.permutation(n)]
    rows, seen = [], {}
    for i, style in enumerate(_style_sequence(n, styles)):  # artists round-robin within a style
        a = artists[style][seen.get(style, 0) % ARTISTS_PER_STYLE]
        seen[style] = seen.get(style, 0) + 1
        fname, title, year = _title(rng, a, style, taken)
        rows.append(
            dict(
                filename=fname,
                style=style,
                styles=[style],
                artist=a,
                title=title,
                year=year,
                size=sizes[i],
                subset=subsets[i],
                defect=None,
                candidate=False,
            )
        )
    free = [int(i) for i in rng.permutation(n)]

    def take(ok) -> dict:  # the first free row (in shuffled order) that passes ``ok``
        free.remove(i := next(i for i in free if ok(rows[i])))
        return rows[i]

    # The duplicate lives in a textured style: flat colour fields flip phash bits on any rescale.
    dup = take(lambda r: r["style"] in ("Realism", "Action_painting"))
    dup["defect"] = "phash_duplicate"
    # Up to 4 originals (same style, other artist: n >= 16 gives each style 2 artists' rows).
    for i in [i for i in free if rows[i]["style"] == dup["style"] and rows[i]["artist"] is not dup["artist"]][:4]:
        free.remove(i)
        rows[i]["candidate"] = True
    for name in DEFECTS:  # a cut JPEG needs enough bytes that its header survives the cut
        take(lambda r: name != "truncated" or max(r["size"]) >= min(150, max_side))["defect"] = name
    for _ in range(2):
        row = take(lambda r: True)
        row["defect"] = "multi_style"
        row["styles"] = [row["style"], str(rng.choice([s for s in styles if s != row["style"]]))]
    return rows


def _series(rng, rows: list[dict], n_series: int, size: int) -> None:
    """Mark ``n_series`` groups of ``size`` defect-free rows by one artist as a series: every member
    after the first paints the first one's composition (``series_of``) with its artist's palette
    rolled by its place in the series (``palette_shift``), at the first one's size."""
    free = [i for i in rng.permutation(len(rows)) if rows[i]["defect"] is None and not rows[i]["candidate"]]
    made = 0
    while made < n_series:
        base = next((i for i in free if sum(rows[j]["artist"] is rows[i]["artist"] for j in free) >= size), None)
        if base is None:
            break
        members = [j for j in free if rows[j]["artist"] is rows[base]["artist"] and j != base][: size - 1]
        for k, j in enumerate(members, 1):
            rows[j].update(series_of=int(base), palette_shift=k, size=rows[base]["size"])
        rows[base]["series_of"] = int(base)
        free = [i for i in free if i != base and i not in members]
        made += 1


def _paint(row: dict, seed: int, i: int) -> tuple[Image.Image, int]:
    """Draw one row's painting at the work size and resize it; also return a JPEG quality."""
    # per image: one painting never shifts another; a series member repeats its first one's draws
    rng = np.random.default_rng([seed, row.get("series_of", i)])
    (tw, th), a = row["size"], row["artist"]
    if row.get("palette_shift"):
        a = replace(a, palette=np.roll(a.palette, row["palette_shift"], axis=0))
    ww, wh = (max(16, round(v * WORK / max(tw, th))) for v in (tw, th))
    img = STYLES[row["style"]][0](rng, ww, wh, a)
    arr = np.asarray(img, float) + rng.normal(0, a.grain, (wh, ww, 1))  # canvas grain
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img.resize((tw, th), Image.Resampling.LANCZOS), int(rng.integers(85, 96))


def _save(img: Image.Image, path: Path, defect: str | None, quality: int) -> None:
    """Write the file as a JPEG, with the row's format defect if it has one."""
    kw: dict = {"quality": quality}
    if defect in ("grayscale", "cmyk"):
        img = img.convert("L" if defect == "grayscale" else "CMYK")
    elif defect == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 CW to display
        img, kw["exif"] = img.transpose(Image.Transpose.ROTATE_90), exif.tobytes()
    elif defect == "rgba_png":  # PNG bytes behind a .jpg name, as in real scrapes
        yy, xx = np.mgrid[-1 : 1 : img.height * 1j, -1 : 1 : img.width * 1j]
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(np.clip((1.6 - np.hypot(xx, yy)) * 255, 0, 255).astype(np.uint8)))
        return img.save(path, "PNG")
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2] if defect == "truncated" else data)


def _duplicate(root: Path, rows: list[dict]) -> None:
    """Save a candidate original again, slightly rescaled, as the duplicate row's file: the
    first (candidate, scale) whose copy keeps the phash; marks that row ``phash_original``."""
    dst = root / next(r for r in rows if r["defect"] == "phash_duplicate")["filename"]
    cands = [r for r in rows if r["candidate"]]
    for row, scale in [(r, s) for r in cands for s in (0.93, 0.9, 0.96, 0.85, 0.8)]:
        with Image.open(root / row["filename"]) as im:
            orig, target = im.convert("RGB"), imagehash.phash(im)
        size = (max(8, round(orig.width * scale)), max(8, round(orig.height * scale)))
        orig.resize(size, Image.Resampling.LANCZOS).save(dst, "JPEG", quality=90)
        with Image.open(dst) as im:
            if imagehash.phash(im) == target:
                break
    else:  # no rescale kept the hash (rare; small runs have one candidate): the same bytes do
        row = cands[0]
        dst.write_bytes((root / row["filename"]).read_bytes())
    row["defect"] = "phash_original"


def _record(root: Path, row: dict) -> dict:
    """The classes.csv row, measured from the written file."""
    with Image.open(root / row["filename"]) as im:
        w, h, d = *im.size, row["defect"]
        phash = "" if d == "truncated" else str(imagehash.phash(im))
    return {
        "filename": row["filename"],
        "artist": "" if d == "missing_artist" else row["artist"].name,
        "genre": "" if d == "missing_genre" else str(row["styles"]),
        "description": row["title"],
        "phash": phash,
        "width": w,
        "height": h,
        "genre_count": len(row["styles"]),
        "subset": "" if d == "missing_subset" else row["subset"],
    }


def generate(
    root: str | Path, num_images: int = 100, seed: int = 0, max_side: int = 1400, series: int = 0, series_size: int = 3
) -> Path:
    """Write SynthArt under ``root`` atomically and return ``root/classes.csv``; does nothing
    when that exists already. The same arguments give the same bytes (``series=0``: the same as
    before series existed)."""
    root, csv_path = Path(root), Path(root) / "classes.csv"
    if csv_path.exists():
        return csv_path
    if num_images < 16 or max_side < 64:
        raise ValueError(f"SynthArt needs num_images >= 16 and max_side >= 64 (got {num_images}, {max_side})")
    if root.exists():
        if any(root.iterdir()):  # never delete someone's files to make room
            raise FileExistsError(f"{root}: exists and is not empty but has no classes.csv")
        root.rmdir()
    rows = _plan(np.random.default_rng([seed, 2**31]), num_images, max_side)
    if series:
        _series(np.random.default_rng([seed, 2**31 + 1]), rows, series, series_size)
    with paths.atomic_dir(root) as tmp:
        tmp.chmod(0o755)
        for i, row in enumerate(rows):
            (tmp / row["style"]).mkdir(exist_ok=True)
            if row["defect"] != "phash_duplicate":  # the duplicate is copied from its original below
                img, quality = _paint(row, seed, i)
                _save(img, tmp / row["filename"], row["defect"], quality)
        _duplicate(tmp, rows)
        rows = sorted(rows, key=lambda r: r["filename"])
        records = [_record(tmp, r) for r in rows]
        pd.DataFrame(records, columns=COLUMNS).to_csv(tmp / "classes.csv", index=False, lineterminator="\n")
        sidecar = {"no_year": [r["filename"] for r in rows if r["year"] is None]}
        for r in filter(lambda r: r["defect"], rows):
            sidecar.setdefault(r["defect"], []).append(r["filename"])
        if series:  # the sidecar stays {name: [filenames]}; the groups go to their own file
            groups: dict = {}
            for r in filter(lambda r: "series_of" in r, rows):
                groups.setdefault(r["series_of"], []).append(r["filename"])
            sidecar["series"] = sorted(f for g in groups.values() for f in g)
            sidecar["series_member"] = sorted(r["filename"] for r in rows if r.get("palette_shift"))
            (tmp / SERIES_FILE).write_text(json.dumps(sorted(sorted(g) for g in groups.values()), indent=1) + "\n")
        (tmp / DEFECTS_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return csv_path


def defects(root: str | Path) -> dict[str, list[str]]:
    """Which files carry which defect or quirk: ``{name: [relative filenames]}`` read from
    ``synthart_defects.json`` (see the module docstring for the names)."""
    path = Path(root) / DEFECTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no SynthArt defect list (was {root} made by synthart.generate?)")
    return json.loads(path.read_text(encoding="utf-8"))
