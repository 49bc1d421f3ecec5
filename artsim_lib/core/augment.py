"""Classical, controlled transformations of a painting at graded strengths (the 'augment' backend).

Four families, each a set of operations whose magnitude is a monotone function of the strength
``s`` in [0, 1]:

=============  ==========================================================================
family         operations (magnitude at s = 1, for an image of side W)
=============  ==========================================================================
photometric    brightness ×(1 ± 0.6), contrast ×(1 ± 0.6), saturation ×(1 ± 0.8), hue ± 90°
degradation    Gaussian blur radius W/32, Gaussian noise σ = 0.25 (of full scale), JPEG q 5
geometric      rotation ± 20°, zoom out to ½ side, perspective (corners in by up to W/4)
stylistic      posterise to 2 bits, painterly mode filter (9 px at W = 128), 4-colour
               quantisation, edge enhancement (unsharp mask 400 %)
=============  ==========================================================================

Which operation an original gets in a family, and every random choice it makes (directions,
the noise field, the placement, the corner offsets), come from one seed per (original, family)
and are the same at every strength. A stronger setting is therefore the same transformation
pushed further, and each magnitude was chosen so that it also moves the image further from
the original in pixels (tested on several images): brightness, contrast, saturation, noise,
posterise and edge enhancement do so pixel by pixel, the geometric operations by revealing a
growing area of padding. That is why there is no left-right flip (it has no degree) and the
zoom zooms *out*: a zoom in saturates the pixel distance early, as every pixel soon faces an
unrelated one. Strength 0 is the identity. Deterministic: no global random state is used.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from artsim_lib.io.images import open_rgb, to_rgb

FAMILIES: dict[str, tuple[str, ...]] = {
    "photometric": ("brightness", "contrast", "saturation", "hue"),
    "degradation": ("blur", "noise", "jpeg"),
    "geometric": ("rotate", "zoom", "perspective"),
    "stylistic": ("posterize", "painterly", "quantize", "edges"),
}
FILL = (0, 0, 0)  # what geometric operations reveal: the letterbox padding colour


def level_of(strength: float) -> str:
    """The study's level for an augmentation strength: moderate up to 0.5, radical above."""
    return "moderate" if strength <= 0.5 else "radical"


def _sign(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else -1


# -- photometric ----------------------------------------------------------------------------
def _brightness(img, s, rng):
    return ImageEnhance.Brightness(img).enhance(1 + _sign(rng) * 0.6 * s)


def _contrast(img, s, rng):
    return ImageEnhance.Contrast(img).enhance(1 + _sign(rng) * 0.6 * s)


def _saturation(img, s, rng):
    return ImageEnhance.Color(img).enhance(1 + _sign(rng) * 0.8 * s)


def rotate_hue(img: Image.Image, shift: int) -> Image.Image:
    """Every pixel's hue turned by ``shift`` steps of 256 (the colour circle), as RGB."""
    hsv = np.asarray(img.convert("HSV")).copy()  # [H, W, 3] uint8, hue on 0..255
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _hue(img, s, rng):
    return rotate_hue(img, int(round(_sign(rng) * 64 * s)))  # up to a quarter of the hue circle (90°)


# -- degradation ----------------------------------------------------------------------------
def _blur(img, s, rng):
    return img.filter(ImageFilter.GaussianBlur(radius=s * img.width / 32))


def _noise(img, s, rng):
    x = np.asarray(img, dtype=np.float32)  # [H, W, 3]
    z = rng.standard_normal(x.shape, dtype=np.float32)  # the same field at every strength
    return Image.fromarray(np.clip(np.rint(x + 0.25 * 255 * s * z), 0, 255).astype(np.uint8))


def _jpeg(img, s, rng):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(round(95 - 90 * s)))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


# -- geometric ------------------------------------------------------------------------------
def _rotate(img, s, rng):
    return img.rotate(_sign(rng) * 20 * s, resample=Image.Resampling.BICUBIC, fillcolor=FILL)


def _zoom(img, s, rng):
    # Zoom out: the painting shrinks (to half its side at s = 1) into a frame of FILL, at a
    # seeded place. A zoom *in* saturates the pixel distance early (every pixel soon faces an
    # unrelated one), so its ordering by strength would not be known.
    w, h = img.size
    nw, nh = max(1, round(w / (1 + s))), max(1, round(h / (1 + s)))
    u, v = rng.uniform(0, 1, 2)  # where the picture sits in the free margin, the same at every s
    canvas = Image.new("RGB", (w, h), FILL)
    canvas.paste(img.resize((nw, nh), Image.Resampling.LANCZOS), (round((w - nw) * u), round((h - nh) * v)))
    return canvas


def perspective_coeffs(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> list[float]:
    """The 8 coefficients PIL's PERSPECTIVE transform needs to map points ``src`` (output)
    to points ``dst`` (input)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, float), np.array(rhs, float)).tolist()


def _perspective(img, s, rng):
    w, h = img.size
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    f = rng.uniform(0.5, 1.0, (4, 2)) * 0.25 * s  # each corner moves in by up to s * W/4
    quad = [(cx + dx * fx * w, cy + dy * fy * h) for (cx, cy), (dx, dy), (fx, fy) in zip(corners, inward, f)]
    coeffs = perspective_coeffs(quad, corners)  # output quad -> the whole input
    return img.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC, fillcolor=FILL)


# -- stylistic ------------------------------------------------------------------------------
def _posterize(img, s, rng):
    return ImageOps.posterize(img, max(1, 8 - int(round(6 * s))))


def _painterly(img, s, rng):
    # An oil-paint look: each pixel takes the most frequent value around it; the window grows
    # with s and with the image (3..9 px at 128 px, 9..33 px at 1024 px).
    size = 1 + 2 * math.ceil(4 * s * max(1.0, img.width / 256))
    return img.filter(ImageFilter.ModeFilter(size))


def _quantize(img, s, rng):
    colours = max(2, int(round(2 ** (8 - 6 * s))))
    return img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")


def _edges(img, s, rng):
    radius = 2 * max(1.0, img.width / 128)
    return img.filter(ImageFilter.UnsharpMask(radius=radius, percent=int(round(400 * s)), threshold=0))


OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": _saturation,
    "hue": _hue,
    "blur": _blur,
    "noise": _noise,
    "jpeg": _jpeg,
    "rotate": _rotate,
    "zoom": _zoom,
    "perspective": _perspective,
    "posterize": _posterize,
    "painterly": _painterly,
    "quantize": _quantize,
    "edges": _edges,
}


def choose_op(family: str, seed: int) -> str:
    """The operation an (original, family) seed picks."""
    if family not in FAMILIES:
        raise ValueError(f"unknown augment family {family!r} (known: {', '.join(FAMILIES)})")
    ops = FAMILIES[family]
    return ops[int(np.random.default_rng([seed, 0]).integers(len(ops)))]


def transform(img: Image.Image, op: str, strength: float, seed: int) -> Image.Image:
    """``op`` at ``strength`` on an image (returned as RGB, same size), its random choices
    drawn from ``seed``."""
    if op not in OPS:
        raise ValueError(f"unknown augment op {op!r} (known: {', '.join(OPS)})")
    if not 0 <= strength <= 1:
        raise ValueError(f"augment strength must be in [0, 1], got {strength}")
    img = img.convert("RGB")
    if strength == 0:
        return img.copy()
    return OPS[op](img, float(strength), np.random.default_rng([seed, 1]))


def apply(img: Image.Image, family: str, strength: float, seed: int) -> tuple[Image.Image, str]:
    """Transform ``img`` with the ``family`` operation its ``seed`` picks, at ``strength``;
    returns the image and the operation's name."""
    op = choose_op(family, seed)
    return transform(img, op, strength, seed), op


def _rgb(image) -> Image.Image:
    """A PIL image or a path as RGB, by the study's one reader and converter (``io.images``)."""
    return to_rgb(image) if isinstance(image, Image.Image) else open_rgb(image)


def pixel_distance(a, b) -> float:
    """Mean absolute difference of two images (paths or PIL images) in levels of 0..255, ``b``
    brought to ``a``'s size first: the calibration measure of the augment backend."""
    a, b = _rgb(a), _rgb(b)
    b = b.resize(a.size, Image.Resampling.BILINEAR) if b.size != a.size else b
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())
