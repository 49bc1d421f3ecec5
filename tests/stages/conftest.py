"""Shared builders of the stage tests (tests/stages/). To move into tests/conftest.py once that exists."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter
from skimage import color

from artsim_lib.io import synthart

SKIP = ("truncated", "grayscale", "phash_duplicate")  # unreadable, colourless, a copy


@pytest.fixture(scope="module")
def paintings(tmp_path_factory) -> list[Path]:
    """Twelve distinct colour SynthArt paintings as 128² PNGs (as in tests/test_descriptors.py)."""
    root = tmp_path_factory.mktemp("synthart")
    synthart.generate(root / "raw", num_images=20, seed=5, max_side=300)
    bad = {f for k in SKIP for f in synthart.defects(root / "raw")[k]}
    files = [p for p in sorted((root / "raw").rglob("*.jpg")) if p.relative_to(root / "raw").as_posix() not in bad]
    out = []
    for i, src in enumerate(files[:12]):
        dst = root / "img" / f"p{i:02d}.png"
        dst.parent.mkdir(exist_ok=True)
        Image.open(src).convert("RGB").resize((128, 128), Image.Resampling.LANCZOS).save(dst)
        out.append(dst)
    assert len(out) == 12
    return out


def _hue_shift(img: Image.Image, shift: float = 0.33) -> Image.Image:
    hsv = color.rgb2hsv(np.asarray(img))
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return Image.fromarray((color.hsv2rgb(hsv) * 255).round().astype(np.uint8))


@pytest.fixture
def tiny_triplets(paintings, tmp_path) -> pd.DataFrame:
    """Six originals (train/test), derivatives by PIL edits, negatives from the same split: a
    stand-in for stage 05's triplets table."""
    edits = {"moderate": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
             "radical": lambda im: _hue_shift(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))}
    origs = paintings[:6]
    split = ["train"] * 4 + ["test"] * 2
    rows = []
    for i, p in enumerate(origs):
        for level, edit in edits.items():
            d = tmp_path / f"{p.stem}-{level}.png"
            edit(Image.open(p)).save(d)
            mates = [j for j in range(6) if j != i and split[j] == split[i]]
            for kind, j in zip(("random", "same_style"), (mates[0], mates[-1])):
                rows.append(dict(triplet_id=f"{p.stem}:{level}:{kind}", anchor_id=p.stem, anchor_path=str(p),
                                 positive_id=f"{p.stem}:{level}", positive_path=str(d),
                                 negative_id=origs[j].stem, negative_path=str(origs[j]), negative_kind=kind,
                                 level=level, family="test", strength=0.3 if level == "moderate" else 0.8,
                                 backend="augment", split=split[i], style="S", artist="A"))
    return pd.DataFrame(rows)
