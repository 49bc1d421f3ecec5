"""Images to normalised tensors with a model's image processor, and light augmentation.

Evaluation uses the processor itself (resize, centre crop, rescale, normalise: exactly the
preprocessing the checkpoint ships). Training crops, flips and colour-jitters the PIL image
first (PIL and numpy only; there is no torchvision) and then normalises with the processor's
mean and std. Augmentation is seeded per item, so an epoch is the same with or without
DataLoader workers::

    tf = ImageTransform(processor, size=224, augment=Augment())
    loader = make_loader(paths, labels, tf, batch_size=32, shuffle=True, seed=epoch_seed)
    for pixels, labels in loader: ...            # [B, 3, 224, 224], [B]
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

from artsim_lib.core.augment import rotate_hue
from artsim_lib.io import images
from artsim_lib.models.training import batch_indices


def open_rgb(image) -> Image.Image:
    """A PIL RGB image from a path or a PIL image, read as every stage reads images
    (:func:`artsim_lib.io.images.open_rgb`: EXIF orientation, alpha on white, 16-bit scaled)."""
    if isinstance(image, Image.Image):
        return images.to_rgb(image)
    return images.open_rgb(os.fspath(image))


def _entry(size, key: str):
    """``size[key]`` of a processor's size (a dict, or transformers 5's SizeDict), or None."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def processor_size(processor) -> int:
    """The square side the processor outputs (its crop size, else its size)."""
    for attr in ("crop_size", "size"):
        s = getattr(processor, attr, None)
        side = _entry(s, "height") or _entry(s, "shortest_edge")
        if side:
            return int(side)
    raise ValueError(f"cannot tell the output size of {type(processor).__name__}")


def sized_processor(processor, size: int):
    """A copy of ``processor`` that outputs ``size``×``size`` (its resize rule kept: a ConvNeXt/ResNet
    processor resizes the short side to ``size / crop_pct`` and centre-crops; CLIP's resizes and crops)."""
    proc = copy.deepcopy(processor)
    if getattr(proc, "crop_size", None) is not None:
        proc.crop_size = {"height": size, "width": size}
    by_short_side = _entry(getattr(proc, "size", None), "shortest_edge") is not None
    proc.size = {"shortest_edge": size} if by_short_side else {"height": size, "width": size}
    return proc


@torch.no_grad()
def pixel_batch(processor, images: Sequence) -> torch.Tensor:
    """Evaluation pixels of PIL images or paths through the processor. # [B, 3, S, S] float32"""
    pil = [open_rgb(x) for x in images]
    return processor(images=pil, return_tensors="pt")["pixel_values"].float()


# -- augmentation (PIL) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Light augmentation: random resized crop (area share ``scale``, aspect ``ratio``),
    horizontal flip, and colour jitter (factors drawn from ``1 ± x``; hue as a fraction of a turn)."""

    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02


def random_resized_crop(
    img: Image.Image, size: int, rng: np.random.Generator, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)
) -> Image.Image:
    """A random box covering ``scale`` of the area with aspect in ``ratio``, resized to ``size``²
    (the Inception crop; falls back to the largest centred square after 10 failed draws)."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:
        cw = ch = min(w, h)
        x, y = (w - cw) // 2, (h - ch) // 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))


def shift_hue(img: Image.Image, turn: float) -> Image.Image:
    """Rotate every pixel's hue by ``turn`` (a fraction of the colour circle)."""
    return img if turn == 0 else rotate_hue(img, int(round(turn * 255)))


def color_jitter(
    img: Image.Image, rng: np.random.Generator, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0
) -> Image.Image:
    """Brightness, contrast, saturation and hue changes in a random order."""
    ops = []
    for factor, enhancer in (
        (brightness, ImageEnhance.Brightness),
        (contrast, ImageEnhance.Contrast),
        (saturation, ImageEnhance.Color),
    ):
        if factor > 0:
            f = rng.uniform(max(0.0, 1 - factor), 1 + factor)
            ops.append(lambda im, e=enhancer, f=f: e(im).enhance(f))
    if hue > 0:
        t = rng.uniform(-hue, hue)
        ops.append(lambda im, t=t: shift_hue(im, t))
    for i in rng.permutation(len(ops)):
        img = ops[i](img)
    return img


def augment_image(img: Image.Image, size: int, rng: np.random.Generator, aug: Augment) -> Image.Image:
    """Crop, flip and jitter one image to ``size``×``size``."""
    img = random_resized_crop(img, size, rng, aug.scale, aug.ratio)
    if rng.random() < aug.hflip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return color_jitter(img, rng, aug.brightness, aug.contrast, aug.saturation, aug.hue)


def normalise(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A PIL RGB image as a normalised tensor. # [3, H, W] float32"""
    arr = np.asarray(img, dtype=np.float32) / 255.0  # [H, W, 3]
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class ImageTransform:
    """One image (path or PIL) -> ``[3, size, size]``: the processor's own preprocessing, or,
    with ``augment`` and a ``seed``, augmentation followed by its normalisation."""

    def __init__(self, processor, size: int | None = None, augment: Augment | None = None):
        self.size = size or processor_size(processor)
        self.processor = sized_processor(processor, self.size)
        self.augment = augment
        self.mean, self.std = list(processor.image_mean), list(processor.image_std)

    def __call__(self, image, seed: int | None = None) -> torch.Tensor:
        img = open_rgb(image)
        if self.augment is None or seed is None:
            return pixel_batch(self.processor, [img])[0]
        rng = np.random.default_rng(seed)
        return normalise(augment_image(img, self.size, rng, self.augment), self.mean, self.std)


# -- datasets and loaders -------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """Items ``(pixels [3, S, S], label)`` (label -1 when there are none). Index with an int,
    or with ``(index, seed)`` to get that item's seeded augmentation."""

    def __init__(self, images: Sequence, labels: Sequence[int] | None, transform: ImageTransform):
        self.images, self.transform = list(images), transform
        self.labels = list(labels) if labels is not None else [-1] * len(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        return self.transform(self.images[i], seed), int(self.labels[i])


MIN_BATCHES_FOR_WORKERS = 8


def item_seeds(n: int, seed: int) -> np.ndarray:
    """One augmentation seed per item, from a run/epoch seed."""
    return np.random.default_rng(seed).integers(0, 2**31 - 1, size=n)


def make_loader(
    images: Sequence,
    labels: Sequence[int] | None,
    transform: ImageTransform,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``images`` whose order (when shuffled) and augmentation depend only on ``seed``."""
    n = len(images)
    seeds = item_seeds(n, seed)
    batches = [
        [(int(i), int(seeds[i])) for i in idx]
        for idx in batch_indices(n, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    ]
    # Starting worker processes costs more than it saves for a handful of batches (smoke runs).
    workers = num_workers if len(batches) >= MIN_BATCHES_FOR_WORKERS else 0
    return torch.utils.data.DataLoader(
        ImageDataset(images, labels, transform),
        batch_sampler=batches,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
