"""Handcrafted descriptors of one image (the features of stage 06), cached by content.

Every image is resized to ``size``×``size`` (``DescriptorParams.size``) and described by four
families of scikit-image features, plus a grayscale thumbnail for the pairwise SSIM:

* ``colour``  -- joint HSV and Lab histograms, Lab colour moments (mean, std, cube root of the
  third central moment per channel) and a dominant-colour palette (k-means on Lab pixels), all
  on the ``thumb_size``² colour thumbnail;
* ``texture`` -- uniform LBP histograms (``local_binary_pattern``, P = 8·R per radius), GLCM
  properties (``graycomatrix``/``graycoprops``, averaged over four angles) and Gabor energies
  (skimage's ``gabor_kernel`` bank on the thumbnail);
* ``edges``   -- Canny edge density and layout (edge share per cell of a 32² grid), a spatial
  HOG and a global edge-orientation histogram (a HOG with one cell covering the whole image);
* ``shape``   -- Otsu foreground (the minority class): Hu moments, a 32² soft mask and
  ``regionprops`` of its largest region.

Texture and SSIM work on luminance; edges and shape on the HSV value ``max(R, G, B)``, which a
pure recolouring (a hue rotation) leaves unchanged, so they see the composition, not the palette.
* ``ssim``    -- the ``thumb_size``² grayscale image (SSIM is a pairwise measure, not a feature).

Features are stored as one ``.npz`` per image under ``<cache>/<params key>/<sha256>.npz``: the
key hashes the params that shape the features, the file name hashes the image bytes, so a
change of either is a miss. Pairwise similarities are in :mod:`artsim_lib.core.descriptor_similarity`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import color, feature, filters, measure, transform, util

from artsim_lib.io import paths
from artsim_lib.io.images import ImageReadError, open_rgb, to_rgb  # noqa: F401 (ImageReadError: this module's API)
from artsim_lib.io.workers import parallel_map

FEATURE_VERSION = 1  # bump when the code below changes what a feature means
FAMILIES = ("colour", "texture", "edges", "shape", "ssim")
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
LAB_RANGE = ((0.0, 100.0), (-90.0, 90.0), (-90.0, 90.0))  # L, a, b axes of the Lab histogram
PALETTE_SIDE = 24  # k-means runs on the pixels of a 24² Lab thumbnail (576 points)
MASK_SIDE = 32  # the shape mask is compared at 32²
KMEANS_ITERS = 25

ImageLike = str | os.PathLike | Image.Image | np.ndarray
# The params that shape a feature vector (weights, workers and fit_l2 do not).
FEATURE_PARAMS = (
    "size",
    "thumb_size",
    "hsv_bins",
    "lab_bins",
    "dominant_colours",
    "lbp_radii",
    "glcm_levels",
    "glcm_distances",
    "gabor_frequencies",
    "gabor_orientations",
    "hog_cell",
    "canny_sigma",
)


# -- reading -------------------------------------------------------------------
def _open(path: str | os.PathLike) -> Image.Image:
    return open_rgb(path)  # the study's one reader: EXIF, alpha, 16-bit, pixel limit


def as_rgb_image(src: ImageLike) -> Image.Image:
    """A path, PIL image or array (uint8, or floats in [0, 1]) as a PIL RGB image."""
    if isinstance(src, (str, os.PathLike)):
        return _open(src)
    if isinstance(src, Image.Image):
        return to_rgb(src)
    arr = np.asarray(src)
    if arr.dtype != np.uint8:  # floats are taken to be in [0, 1]
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return to_rgb(Image.fromarray(arr))


def load_rgb(src: ImageLike, size: int) -> np.ndarray:
    """An image (path, PIL image or array) as float RGB in [0, 1], resized (Lanczos, not
    cropped) to ``size``×``size``. Raises :class:`ImageReadError` naming a bad file. # [S, S, 3]"""
    img = as_rgb_image(src)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float64) / 255.0


def image_digest(src: ImageLike) -> str:
    """SHA-256 of a file's bytes, or of an in-memory image's pixels and shape."""
    if isinstance(src, (str, os.PathLike)):
        h = hashlib.sha256()
        try:
            with open(src, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except FileNotFoundError:
            raise ImageReadError(f"{src}: no such file") from None
        except OSError as err:
            raise ImageReadError(f"{src}: cannot read image ({type(err).__name__})") from None
        return h.hexdigest()
    arr = np.ascontiguousarray(np.asarray(src.convert("RGB") if isinstance(src, Image.Image) else src))
    return hashlib.sha256(str(arr.shape).encode() + str(arr.dtype).encode() + arr.tobytes()).hexdigest()


# -- the four families ---------------------------------------------------------
def kmeans(points: np.ndarray, k: int, iters: int = KMEANS_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with a deterministic start (points at evenly spaced quantiles of the
    first coordinate). Returns centres ``[k, D]`` and their shares ``[k]``, largest first."""
    order = np.argsort(points[:, 0], kind="stable")
    centres = points[order[((np.arange(k) + 0.5) * len(points) / k).astype(int)]].copy()
    for _ in range(iters):
        labels = ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)  # [N]
        new = np.stack([points[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    labels = ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    shares = np.bincount(labels, minlength=k) / len(points)
    top = np.argsort(-shares, kind="stable")
    return centres[top], shares[top]


def colour_features(rgb: np.ndarray, cfg) -> dict[str, np.ndarray]:
    """HSV and Lab histograms (sum 1), Lab moments ``[9]`` and the dominant Lab palette."""
    hsv = color.rgb2hsv(rgb).reshape(-1, 3)
    hsv_hist = np.histogramdd(hsv, bins=cfg.hsv_bins, range=[(0, 1)] * 3)[0].ravel()
    lab = color.rgb2lab(rgb).reshape(-1, 3)
    lo, hi = np.array(LAB_RANGE).T
    lab_hist = np.histogramdd(np.clip(lab, lo, hi), bins=cfg.lab_bins, range=LAB_RANGE)[0].ravel()
    mean = lab.mean(0)
    c = lab - mean
    c2 = c * c  # products, not ** 3: the float power is ~5x slower here
    moments = np.concatenate([mean, np.sqrt(c2.mean(0)), np.cbrt((c2 * c).mean(0))])
    small = transform.resize(rgb, (PALETTE_SIDE, PALETTE_SIDE), anti_aliasing=True)
    centres, shares = kmeans(color.rgb2lab(small).reshape(-1, 3), cfg.dominant_colours)
    return {
        "hsv": hsv_hist / hsv_hist.sum(),
        "lab": lab_hist / lab_hist.sum(),
        "moments": moments,
        "palette": centres,
        "palette_w": shares,
    }


def texture_features(gray: np.ndarray, thumb: np.ndarray, cfg) -> dict[str, np.ndarray]:
    """Uniform LBP histograms ``lbp<R>`` (sum 1), GLCM properties ``[6·D]`` and Gabor
    energies (mean and std of the response magnitude) ``[2·F·O]``."""
    g8 = util.img_as_ubyte(gray)
    out = {}
    for r in cfg.lbp_radii:
        codes = feature.local_binary_pattern(g8, 8 * r, r, method="uniform").astype(int)
        out[f"lbp{r}"] = np.bincount(codes.ravel(), minlength=8 * r + 2) / codes.size  # [8R+2]
    levels = cfg.glcm_levels
    quant = (g8.astype(np.int64) * levels // 256).astype(np.uint8)
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    glcm = feature.graycomatrix(quant, cfg.glcm_distances, angles, levels=levels, symmetric=True, normed=True)
    # Averaged over the angles: rotation-tolerant, one value per (property, distance).
    props = np.concatenate([feature.graycoprops(glcm, p).mean(1) for p in GLCM_PROPS])
    gabor = []
    for f in cfg.gabor_frequencies:
        for k in range(cfg.gabor_orientations):
            mag = np.abs(gabor_response(thumb, f, k * np.pi / cfg.gabor_orientations))
            gabor += [mag.mean(), mag.std()]
    return {**out, "glcm": props, "gabor": np.array(gabor)}


def gabor_response(image: np.ndarray, frequency: float, theta: float) -> np.ndarray:
    """``filters.gabor(image, frequency, theta)`` as one complex array, convolved by FFT with
    skimage's own kernel: the same numbers, ~10x faster for the low frequencies. # [H, W]"""
    from scipy.signal import fftconvolve  # imported here: scipy.signal alone takes ~0.5 s to import

    kernel = filters.gabor_kernel(frequency, theta=theta)
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(image, ((ph, ph), (pw, pw)), mode="symmetric")  # = ndimage's 'reflect'
    return fftconvolve(padded, kernel, mode="valid")


def edge_features(gray: np.ndarray, cfg) -> dict[str, np.ndarray]:
    """Canny density ``[1]`` and map (edge share per cell, 32²), a spatial HOG and a global
    12-bin orientation histogram (sum 1)."""
    edges = feature.canny(gray, sigma=cfg.canny_sigma)
    cells = transform.resize(edges.astype(float), (MASK_SIDE, MASK_SIDE), anti_aliasing=True)
    cell = cfg.hog_cell
    hog = feature.hog(gray, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2))
    side = gray.shape[0]
    orient = feature.hog(gray, orientations=12, pixels_per_cell=(side, side), cells_per_block=(1, 1), block_norm="L1")
    total = orient.sum()
    return {
        "density": np.array([edges.mean()]),
        "map": np.clip(cells, 0, None),
        "hog": hog,
        "orient": orient / total if total > 0 else np.full(12, 1 / 12),
    }


def shape_features(gray: np.ndarray) -> dict[str, np.ndarray]:
    """The Otsu foreground (minority class): Hu moments ``[7]``, a soft 32² mask and
    [area share, eccentricity, solidity, extent, region count] of its largest region."""
    mask = gray > filters.threshold_otsu(gray) if np.ptp(gray) > 0 else np.zeros_like(gray, bool)
    if mask.mean() > 0.5:
        mask = ~mask
    soft = transform.resize(mask.astype(float), (MASK_SIDE, MASK_SIDE), anti_aliasing=True)
    if not mask.any():
        return {"hu": np.zeros(7), "mask": soft, "region": np.zeros(5)}
    mu = measure.moments_central(mask.astype(float), order=3)
    hu = measure.moments_hu(measure.moments_normalized(mu, order=3))
    labels = measure.label(mask)
    areas = np.bincount(labels.ravel())[1:]  # [regions], label 0 is background
    count = int((areas >= 0.001 * mask.size).sum())
    big = measure.regionprops((labels == areas.argmax() + 1).astype(np.uint8))[0]
    region = np.array(
        [big.area / mask.size, big.eccentricity, big.solidity, big.extent, np.log1p(count) / np.log1p(mask.size)]
    )
    return {"hu": hu, "mask": soft, "region": region}


def extract(src: ImageLike, cfg) -> dict[str, np.ndarray]:
    """Every family's features of one image, as ``{"family.name": array}``."""
    rgb = load_rgb(src, cfg.size)  # [S, S, 3]
    gray = color.rgb2gray(rgb)  # [S, S] luminance
    value = rgb.max(-1)  # [S, S] HSV value
    thumb = transform.resize(gray, (cfg.thumb_size,) * 2, anti_aliasing=True)  # [T, T]
    # Colour statistics need no fine detail: the colour thumbnail makes them ~4x cheaper.
    rgb_thumb = transform.resize(rgb, (cfg.thumb_size, cfg.thumb_size, 3), anti_aliasing=True)  # [T, T, 3]
    out: dict[str, np.ndarray] = {}
    for family, feats in (
        ("colour", colour_features(rgb_thumb, cfg)),
        ("texture", texture_features(gray, thumb, cfg)),
        ("edges", edge_features(value, cfg)),
        ("shape", shape_features(value)),
        ("ssim", {"gray": thumb}),
    ):
        out.update({f"{family}.{k}": np.asarray(v, dtype=np.float32) for k, v in feats.items()})
    return out


def family_vector(features: dict[str, np.ndarray], family: str) -> np.ndarray:
    """One family's features flattened into one vector (what ``Measure.embed`` returns)."""
    keys = sorted(k for k in features if k.split(".", 1)[0] == family)
    return np.concatenate([features[k].ravel() for k in keys])


# -- cache and parallel extraction ------------------------------------------------
def params_key(cfg) -> str:
    """A short hash of the params and module constants that shape the features."""
    blob = {k: getattr(cfg, k) for k in FEATURE_PARAMS}
    blob.update(version=FEATURE_VERSION, palette_side=PALETTE_SIDE, mask_side=MASK_SIDE, kmeans_iters=KMEANS_ITERS)
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def cache_dir_for(root: str | os.PathLike, cfg) -> Path:
    """The cache folder for ``cfg`` under ``root``: other params, another folder."""
    return Path(root) / params_key(cfg)


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None  # unreadable cache entry: recompute it


def extract_cached(src: str, cfg, cache_dir: str | None) -> tuple[dict[str, np.ndarray], bool]:
    """Features of the image file ``src`` from ``cache_dir`` when there, else computed and
    stored (atomically). Returns (features, cache hit). ``cache_dir=None`` disables the cache."""
    if cache_dir is None:
        return extract(src, cfg), False
    target = Path(cache_dir) / f"{image_digest(src)}.npz"
    if target.exists():
        cached = _load_npz(target)
        if cached is not None:
            return cached, True
    feats = extract(src, cfg)
    buf = io.BytesIO()
    np.savez(buf, **feats)
    with paths.atomic_path(target) as tmp:
        tmp.write_bytes(buf.getvalue())
    return feats, False


def extract_many(
    sources: Sequence[str],
    cfg,
    cache_root: str | os.PathLike | None = None,
    workers: int = 1,
    desc: str = "descriptors",
) -> tuple[list[dict], np.ndarray]:
    """:func:`extract_cached` for every image file, in ``workers`` processes with a progress
    bar, in order. Returns (features per image, bool array of cache hits)."""
    cache = str(cache_dir_for(cache_root, cfg)) if cache_root is not None else None
    jobs = [(str(s), cfg, cache) for s in sources]
    results = parallel_map(extract_cached, jobs, workers, desc)
    return [r[0] for r in results], np.array([r[1] for r in results], dtype=bool)
