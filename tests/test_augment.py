"""The augment backend's transformations: graded, deterministic, size-preserving."""

import numpy as np
import pytest
from PIL import Image

from artsim_lib.core import augment

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _painting(seed, size=64, cells=8):
    """A colourful, painting-like image: random colour fields, smoothly blended."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC)


def _distance(a, b):
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


@pytest.mark.parametrize("op", sorted(augment.OPS))
def test_a_stronger_setting_moves_the_image_further(op):
    for seed in range(4):
        img = _painting(seed)
        d = [_distance(img, augment.transform(img, op, s, seed)) for s in STRENGTHS]
        assert d[0] == 0  # strength 0 is the identity
        assert all(b > a for a, b in zip(d, d[1:])), (op, seed, np.round(d, 2))


def test_pixelwise_ops_never_move_a_pixel_back():
    # Brightness, contrast, saturation, noise, posterise and edges scale one fixed change.
    img = _painting(7)
    x = np.asarray(img, int)
    for op in ("brightness", "contrast", "saturation", "noise", "posterize", "edges"):
        diffs = [np.abs(np.asarray(augment.transform(img, op, s, 3), int) - x) for s in STRENGTHS]
        assert all((b >= a).all() for a, b in zip(diffs, diffs[1:])), op


def test_posterize_and_hue_by_hand():
    px = Image.new("RGB", (4, 4), (183, 64, 7))  # 183 = 0b10110111
    assert augment.transform(px, "posterize", 1.0, 0).getpixel((0, 0)) == (128, 64, 0)  # 2 bits kept
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    hue = np.asarray(augment.transform(red, "hue", 1.0, 5).convert("HSV"))[..., 0]
    assert set(np.unique(hue)) <= {64, 192}  # a quarter of the circle, either way


def test_perspective_coefficients_by_hand():
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert np.allclose(augment.perspective_coeffs(square, square), [1, 0, 0, 0, 1, 0, 0, 0])
    half = [(0, 0), (5, 0), (5, 5), (0, 5)]  # output half the size -> input coordinates doubled
    assert np.allclose(augment.perspective_coeffs(half, square), [2, 0, 0, 0, 2, 0, 0, 0])


@pytest.mark.parametrize("op", sorted(augment.OPS))
def test_deterministic_rgb_and_same_size(op):
    img = _painting(1, size=48).resize((48, 30)).convert("L")  # any mode, not square
    a, b = augment.transform(img, op, 0.6, 11), augment.transform(img, op, 0.6, 11)
    assert a.mode == "RGB" and a.size == (48, 30)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_seed_picks_the_op_and_its_random_choices():
    for family, ops in augment.FAMILIES.items():
        assert {augment.choose_op(family, s) for s in range(200)} == set(ops)  # every op gets used
        assert augment.choose_op(family, 42) == augment.choose_op(family, 42)
    img = _painting(2)
    noisy = [np.asarray(augment.transform(img, "noise", 0.5, s)) for s in (1, 2)]
    assert not np.array_equal(*noisy)
    out, op = augment.apply(img, "degradation", 0.5, 9)
    assert op == augment.choose_op("degradation", 9)
    assert np.array_equal(np.asarray(out), np.asarray(augment.transform(img, op, 0.5, 9)))


def test_levels_and_bad_arguments():
    assert [augment.level_of(s) for s in (0.25, 0.5, 0.75, 1.0)] == ["moderate", "moderate", "radical", "radical"]
    img = _painting(0, size=16)
    with pytest.raises(ValueError, match="unknown augment op"):
        augment.transform(img, "melt", 0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        augment.transform(img, "blur", 1.5, 0)
    with pytest.raises(ValueError, match="unknown augment family"):
        augment.choose_op("sculptural", 0)
