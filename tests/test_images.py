"""The one image reader (artsim_lib.io.images.open_rgb) and the places that use it."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from artsim_lib.io import images
from artsim_lib.plots import common as plots
from artsim_lib.stages import s02_preprocess as pp


def _png16(path, arr):
    """A 16-bit PNG written by hand (Pillow cannot write 48-bit RGB): [H, W] gray or [H, W, 3] RGB."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def _bomb(path, side=30_000):
    """A PNG whose header claims side² pixels (900 M): Image.open reads only the header."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def gradient16():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, size=(40, 56)) * 257).astype(np.uint16)  # exact in 8 bits


def test_16bit_gray_is_scaled_not_clipped(tmp_path, gradient16):
    Image.fromarray(gradient16).save(tmp_path / "g16.png")
    Image.fromarray((gradient16 // 257).astype(np.uint8)).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    a = np.asarray(images.open_rgb(tmp_path / "g16.png"))
    b = np.asarray(images.open_rgb(tmp_path / "g8.png"))
    assert a.dtype == np.uint8 and a.shape == (40, 56, 3)
    assert np.array_equal(a, b)  # clipping made ~99% of these pixels white


def test_16bit_rgb_png_matches_its_8bit_copy(tmp_path, gradient16):
    rgb16 = np.stack([gradient16, gradient16[::-1], 65535 - gradient16], -1)
    _png16(tmp_path / "rgb16.png", rgb16)
    Image.fromarray((rgb16 // 257).astype(np.uint8)).save(tmp_path / "rgb8.png")
    a = np.asarray(images.open_rgb(tmp_path / "rgb16.png")).astype(int)
    b = np.asarray(images.open_rgb(tmp_path / "rgb8.png")).astype(int)
    assert np.abs(a - b).max() <= 1


def test_compare_of_a_16bit_png_and_its_8bit_copy_is_near_one(tmp_path, gradient16, capsys):
    from artsim_lib import cli

    big = np.kron(gradient16, np.ones((2, 2), np.uint16))
    Image.fromarray(big).save(tmp_path / "g16.png")
    Image.fromarray((big // 257).astype(np.uint8)).save(tmp_path / "g8.png")
    assert cli.compare_main([str(tmp_path / "g16.png"), str(tmp_path / "g8.png")]) == 0
    out = capsys.readouterr().out
    value = float(next(line.split()[-1] for line in out.splitlines() if line.startswith("[0,1]")))
    assert value > 0.99


def test_eight_bit_rgb_is_read_unchanged(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, size=(30, 20, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    assert np.array_equal(np.asarray(images.open_rgb(tmp_path / "x.png")), arr)


def test_palette_alpha_in_memory_is_composited_on_white():
    pa = Image.new("RGBA", (6, 6), (0, 0, 0, 0)).convert("PA")
    assert (np.asarray(images.to_rgb(pa)) == 255).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(tmp_path, mode):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0)).convert(mode)  # fully transparent black
    path = tmp_path / f"{mode}.png"
    img.save(path)
    assert (np.asarray(images.open_rgb(path)) == 255).all()


@pytest.mark.parametrize(
    "mode,ext",
    [("P", "png"), ("CMYK", "jpg"), ("1", "png"), ("L", "png"), ("YCbCr", "jpg"), ("I", "tif"), ("F", "tif")],
)
def test_every_mode_becomes_8bit_rgb(tmp_path, mode, ext):
    img = (
        Image.new("RGB", (12, 8), (200, 100, 50)).convert(mode)
        if mode not in ("I", "F")
        else Image.fromarray(np.full((8, 12), 0.5 if mode == "F" else 32896, np.float32 if mode == "F" else np.int32))
    )
    path = tmp_path / f"x.{ext}"
    img.save(path)
    out = images.open_rgb(path)
    assert out.mode == "RGB" and out.size == (12, 8)
    if mode in ("I", "F"):
        assert (np.asarray(out) == 128).all()  # mid-grey, not clipped to white


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    Image.new("RGB", (40, 20), (0, 0, 255)).save(tmp_path / "r.jpg", exif=exif)
    assert images.open_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_decompression_bombs_are_refused_with_the_reason(tmp_path):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    bomb = _bomb(tmp_path / "bomb.png")
    with pytest.raises(images.OversizedImageError, match=r"bomb\.png: oversized: 30000x30000.*max_pixels"):
        images.open_rgb(bomb)
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(images.OversizedImageError, match="10,000 px, more than the limit of 5,000"):
        images.open_rgb(small, max_pixels=5000)
    assert images.open_rgb(small, max_pixels=10_000).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's global limit is left as it was


def test_thumbnail_of_a_bomb_is_a_red_tile_not_a_crash(tmp_path):
    # Stage 01's sample grid opened the first images of each style: one bomb stopped the study.
    tile = plots.thumbnail(str(_bomb(tmp_path / "bomb.png")), 32)
    assert tile.size == (32, 32) and tile.getpixel((0, 0)) == plots.BROKEN_TILE


def test_stage01_probe_lists_bombs_and_corrupt_files(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    table = pp.probe_files([good, _bomb(tmp_path / "bomb.png"), corrupt, tmp_path / "absent.png"])
    assert table["readable"].tolist() == [True, False, False, False]
    errors = table["error"].tolist()
    assert errors[1].startswith("oversized: 30000x30000") and errors[3] == "no such file"
    assert "cannot read image" in errors[2]
    assert pp.probe_file(str(good), max_pixels=10)["error"].startswith("oversized")


def test_stage02_skips_a_bomb_as_oversized(tmp_path):
    status = pp.process_image(
        str(_bomb(tmp_path / "bomb.png")), str(tmp_path / "o.png"), 32, "letterbox", (0, 0, 0), 178_956_970
    )
    assert status["status"] == "skipped" and status["reason"].startswith("oversized: 30000x30000")
