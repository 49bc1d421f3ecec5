"""One way to read an image as 8-bit RGB, used by every stage and by ``artsim compare``/``matrix``.

>>> img = open_rgb("painting.tif", max_pixels=P.preprocess.max_pixels)  # doctest: +SKIP

What :func:`open_rgb` does, in this order:

* refuses an image with more than ``max_pixels`` pixels *before decoding it* (a decompression
  bomb), naming its size and the limit (``preprocess.max_pixels``);
* decodes it completely (a truncated file fails here instead of being padded with grey);
* applies the EXIF orientation;
* converts any mode to RGB (:func:`to_rgb`): transparency (RGBA, LA, PA, palette with a
  transparent colour) is composited on white, palette, CMYK, 1-bit and YCbCr are converted,
  16-bit and 32-bit grayscale (``I;16``, ``I``; Pillow's modes for 16-bit PNG/TIFF) are *scaled*
  to 8 bits (``v / 257``), not clipped at 255, floats (``F``) are taken to lie in [0, 1].

An 8-bit RGB image comes back pixel for pixel as it is stored. Every failure is an
:class:`ImageReadError` whose message starts with the file name and says why.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps

from artsim_lib.io.workers import parallel_map

# A truncated file must fail loudly, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: The default pixel limit (as ``preprocess.max_pixels``): Pillow's own decompression-bomb limit.
DEFAULT_MAX_PIXELS = 178_956_970
WHITE = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_pil_limit_lock = threading.Lock()

PathLike = str | os.PathLike


class ImageReadError(ValueError):
    """An image that cannot be opened or decoded; the message starts with the file name."""


class OversizedImageError(ImageReadError):
    """An image over the pixel limit (a possible decompression bomb), refused before decoding."""


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float grayscale image as 8-bit ``L``, scaled (not clipped)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
        scaled = np.clip(arr, 0.0, 1.0) * 255.0
    else:  # I;16*: 0..65535; I (Pillow's mode for 16-bit PNGs): taken as 16-bit too
        scaled = np.clip(arr.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")


def to_rgb(img: Image.Image, background=WHITE) -> Image.Image:
    """Any PIL mode as RGB: transparency composited on ``background``; palette, CMYK, 1-bit,
    YCbCr converted; 16-bit/32-bit/float grayscale scaled to 8 bits. RGB is returned as is."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        img = _scale_to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, tuple(background))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def open_image(path: PathLike, max_pixels: int | float | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``Image.open`` (the header only, nothing decoded) with this module's pixel limit instead of
    Pillow's global one: :class:`OversizedImageError` over ``max_pixels`` (None: no limit)."""
    max_pixels = float("inf") if max_pixels is None else max_pixels
    with _pil_limit_lock:  # Pillow's limit is a module global: lift it only around this call
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    pixels = img.width * img.height
    if pixels > max_pixels:
        img.close()
        raise OversizedImageError(
            f"{path}: oversized: {img.width}x{img.height} = {pixels:,} px, more than the limit of "
            f"{max_pixels:,} px (preprocess.max_pixels; refused before decoding: a possible "
            "decompression bomb)"
        )
    return img


def open_rgb(path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, background=WHITE) -> Image.Image:
    """The image at ``path`` as a decoded 8-bit RGB PIL image (see the module docstring).
    ``max_pixels=None`` means no limit. Raises :class:`ImageReadError` naming the file."""
    limit = max_pixels if max_pixels is not None else float("inf")
    try:
        with open_image(path, limit) as im:
            im.load()  # decode now: a truncated file fails here
            return to_rgb(ImageOps.exif_transpose(im), background)  # rotate first: conversion may drop EXIF
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory, not an image") from None
    except Image.DecompressionBombError as err:
        raise OversizedImageError(f"{path}: oversized: {err}") from None
    except (OSError, SyntaxError, ValueError, TypeError, MemoryError) as err:
        what = f"{type(err).__name__}: {' '.join(str(err).split())}"
        raise ImageReadError(f"{path}: cannot read image ({what})") from None


def image_mode(path: PathLike) -> str | None:
    """The stored colour mode of an image file (its header only), or None if unreadable."""
    try:
        with open_image(path, None) as im:
            return im.mode
    except Exception:  # noqa: BLE001 - an unreadable file simply has no mode
        return None


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
