"""Fixtures of the stage tests (tests/stages/): tiny triplets, and the earlier stages made on demand."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter
from skimage import color


def _hue_shift(img: Image.Image, shift: float = 0.33) -> Image.Image:
    hsv = color.rgb2hsv(np.asarray(img))
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return Image.fromarray((color.hsv2rgb(hsv) * 255).round().astype(np.uint8))


@pytest.fixture
def tiny_triplets(paintings, tmp_path) -> pd.DataFrame:
    """Six originals (train/test), derivatives by PIL edits, negatives from the same split: a
    stand-in for stage 05's triplets table."""
    edits = {
        "moderate": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
        "radical": lambda im: _hue_shift(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    }
    origs = paintings[:6]
    split = ["train"] * 4 + ["test"] * 2
    rows = []
    for i, p in enumerate(origs):
        for level, edit in edits.items():
            d = tmp_path / f"{p.stem}-{level}.png"
            edit(Image.open(p)).save(d)
            mates = [j for j in range(6) if j != i and split[j] == split[i]]
            for kind, j in zip(("random", "same_style"), (mates[0], mates[-1])):
                rows.append(
                    dict(
                        triplet_id=f"{p.stem}:{level}:{kind}",
                        anchor_id=p.stem,
                        anchor_path=str(p),
                        positive_id=f"{p.stem}:{level}",
                        positive_path=str(d),
                        negative_id=origs[j].stem,
                        negative_path=str(origs[j]),
                        negative_kind=kind,
                        level=level,
                        family="test",
                        strength=0.3 if level == "moderate" else 0.8,
                        backend="augment",
                        split=split[i],
                        style="S",
                        artist="A",
                    )
                )
    return pd.DataFrame(rows)


@pytest.fixture
def upstream_on_demand(monkeypatch):
    """For tests of one stage that start from a bare run directory: the earlier stages' ``load``
    runs that stage when its output is missing (the library's ``load`` never does; its own tests,
    which do not use this fixture, check that it raises StageNotRunError)."""
    from artsim_lib.io.artifacts import StageNotRunError
    from artsim_lib.stages import s01_eda, s02_preprocess, s03_captioning, s04_prompting, s05_generation

    def on_demand(load, make):
        def patched(P):
            try:
                return load(P)
            except StageNotRunError:
                make(P)
                return load(P)

        return patched

    monkeypatch.setattr(s01_eda, "load", on_demand(s01_eda.load, s01_eda.run))
    monkeypatch.setattr(s02_preprocess, "load", on_demand(s02_preprocess.load, s02_preprocess.run))
    monkeypatch.setattr(s03_captioning, "load", on_demand(s03_captioning.load, s03_captioning.run))
    monkeypatch.setattr(s04_prompting, "load", on_demand(s04_prompting.load, s04_prompting.run))
    monkeypatch.setattr(s05_generation, "load", on_demand(s05_generation.load, s05_generation.run))
    monkeypatch.setattr(s05_generation, "load_triplets", on_demand(s05_generation.load_triplets, s05_generation.run))
