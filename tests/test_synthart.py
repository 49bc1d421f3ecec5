"""SynthArt: determinism, Kaggle layout, variety, and every recorded defect really present."""

import ast
import json

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from artsim_lib.io import synthart

KAGGLE_COLUMNS = ["filename", "artist", "genre", "description", "phash", "width", "height", "genre_count", "subset"]


@pytest.fixture(scope="module")
def sa(tmp_path_factory):
    """One 48-image SynthArt folder shared by the read-only tests of this module."""
    root = tmp_path_factory.mktemp("synthart") / "wikiart"
    csv = synthart.generate(root, num_images=48, seed=7, max_side=1200)
    return root, pd.read_csv(csv), synthart.defects(root)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synthart.generate(tmp_path / "a", num_images=16, seed=3, max_side=300).parent
    b = synthart.generate(tmp_path / "b", num_images=16, seed=3, max_side=300).parent
    c = synthart.generate(tmp_path / "c", num_images=16, seed=4, max_side=300).parent
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa["classes.csv"] != fc["classes.csv"]
    shared = set(fa) & set(fc)
    assert all(fa[k] != fc[k] for k in shared if k.endswith(".jpg"))


def test_layout_and_columns(sa):
    root, df, _ = sa
    assert list(df.columns) == KAGGLE_COLUMNS
    assert df["filename"].is_unique
    for fn in df["filename"]:
        style, name = fn.split("/")
        assert (root / fn).is_file()
        assert name.endswith(".jpg") and "_" in name
    # every file on disk is listed, and only the csv and the sidecar sit beside the folders
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    assert on_disk == set(df["filename"])
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["classes.csv", synthart.DEFECTS_FILE]
    listed = df["genre"].dropna().map(ast.literal_eval)
    assert all(isinstance(v, list) and v for v in listed)
    assert (listed.map(len) == df.loc[listed.index, "genre_count"]).all()
    folder = df.loc[listed.index, "filename"].str.split("/").str[0]
    assert (listed.str[0] == folder).all()
    assert set(df["subset"].dropna()) == {"train", "test", "uncertain artist"}
    named = df.dropna(subset=["artist"])
    slug = named["filename"].str.split("/").str[1].str.split("_").str[0]
    assert (slug == named["artist"].str.replace(" ", "-")).all()


def test_styles_and_artists(sa):
    _, df, _ = sa
    style = df["filename"].str.split("/").str[0]
    assert style.nunique() >= 8
    assert set(style) <= set(synthart.STYLES)
    slug = df["filename"].str.split("/").str[1].str.split("_").str[0]
    per_style = slug.groupby(style).nunique()
    assert (per_style >= 3).all(), per_style


def test_styles_and_artists_look_different(sa):
    """Colour statistics: style centroids are apart, and so are artists within a style."""
    root, df, d = sa
    bad = set(
        sum((d[k] for k in ("grayscale", "rgba_png", "cmyk", "truncated", "exif_rotated", "phash_duplicate")), [])
    )
    feats = {}
    for fn in df["filename"]:
        if fn not in bad:
            with Image.open(root / fn) as im:
                arr = np.asarray(im.convert("RGB").resize((32, 32)), float) / 255
            feats[fn] = np.r_[arr.mean((0, 1)), arr.std((0, 1))]
    f = pd.DataFrame(feats).T
    style = f.index.str.split("/").str[0]
    artist = f.index.str.split("/").str[1].str.split("_").str[0]

    def min_dist(centroids):
        dist = np.linalg.norm(centroids.values[:, None] - centroids.values[None], axis=2)
        return dist[np.triu_indices(len(centroids), 1)].min()

    assert min_dist(f.groupby(style).mean()) > 0.05
    by_artist = f.groupby([style, artist]).mean()
    for name, group in by_artist.groupby(level=0):
        assert len(group) >= 2 and min_dist(group) > 0.03, name  # defects may hide an artist


def test_size_variety(sa):
    _, df, _ = sa
    long = df[["width", "height"]].max(axis=1)
    assert (long > 1024).any() and (long < 100).any() and long.max() <= 1200
    assert (df["width"] > df["height"]).any() and (df["width"] < df["height"]).any()
    ratio = df["width"] / df["height"]
    assert ratio.between(0.45, 2.1).all()


def test_csv_phash_matches_files(sa):
    root, df, d = sa
    for row in df.dropna(subset=["phash"]).head(12).itertuples():
        with Image.open(root / row.filename) as im:
            assert str(imagehash.phash(im)) == row.phash
            assert im.size == (row.width, row.height)


def test_defects_recorded_once_each(sa):
    _, df, d = sa
    for name in synthart.DEFECTS + ("phash_duplicate", "phash_original"):
        assert len(d[name]) == 1, name
    assert len(d["multi_style"]) == 2
    singles = [d[k][0] for k in synthart.DEFECTS + ("phash_duplicate", "phash_original")]
    assert len(set(singles)) == len(singles)  # each defect on its own file
    assert set(singles) | set(d["multi_style"]) <= set(df["filename"])


def test_missing_cells(sa):
    _, df, d = sa
    row = df.set_index("filename")
    for name, col in [("missing_artist", "artist"), ("missing_genre", "genre"), ("missing_subset", "subset")]:
        assert pd.isna(row.loc[d[name][0], col])
        assert row[col].isna().sum() == 1
    assert pd.isna(row.loc[d["truncated"][0], "phash"])


def test_image_format_defects(sa):
    root, _, d = sa
    with Image.open(root / d["grayscale"][0]) as im:
        assert (im.format, im.mode) == ("JPEG", "L")
    with Image.open(root / d["cmyk"][0]) as im:
        assert (im.format, im.mode) == ("JPEG", "CMYK")
    rgba = root / d["rgba_png"][0]
    assert rgba.suffix == ".jpg"
    with Image.open(rgba) as im:
        assert (im.format, im.mode) == ("PNG", "RGBA")
        assert im.getchannel("A").getextrema()[0] < 255  # really transparent somewhere
    with Image.open(root / d["exif_rotated"][0]) as im:
        assert im.getexif().get(0x0112) == 6
        assert ImageOps.exif_transpose(im).size == im.size[::-1]
    with Image.open(root / d["truncated"][0]) as im, pytest.raises(OSError):
        im.load()
    normal = set(sum(d.values(), []))
    for fn in sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))[:40]:
        if fn not in normal:
            with Image.open(root / fn) as im:
                assert (im.format, im.mode) == ("JPEG", "RGB")


def test_phash_duplicate(sa):
    root, df, d = sa
    dup, orig = d["phash_duplicate"][0], d["phash_original"][0]
    assert dup != orig and dup.split("/")[0] == orig.split("/")[0]
    with Image.open(root / dup) as a, Image.open(root / orig) as b:
        assert imagehash.phash(a) - imagehash.phash(b) == 0
        assert a.size != b.size  # rescaled, not a byte copy
    row = df.set_index("filename")
    assert row.loc[dup, "phash"] == row.loc[orig, "phash"]
    assert row.loc[dup, "artist"] != row.loc[orig, "artist"]
    assert df["phash"].dropna().duplicated().sum() == 1


def test_multi_style_and_no_year(sa):
    _, df, d = sa
    row = df.set_index("filename")
    for fn in d["multi_style"]:
        styles = ast.literal_eval(row.loc[fn, "genre"])
        assert len(styles) == 2 and row.loc[fn, "genre_count"] == 2 and styles[0] == fn.split("/")[0]
    assert (df["genre_count"] == 2).sum() == 2
    for fn in d.get("no_year", []):
        assert not fn[-8:-4].isdigit()


def test_existing_is_reused_and_crash_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "sa"
    csv = synthart.generate(root, num_images=16, seed=1, max_side=200)
    before = csv.stat().st_mtime_ns
    assert synthart.generate(root, num_images=16, seed=2, max_side=200) == csv
    assert csv.stat().st_mtime_ns == before

    def boom(*args):
        raise RuntimeError("crash while painting")

    monkeypatch.setitem(synthart.STYLES, "Cubism", (boom,) + synthart.STYLES["Cubism"][1:])
    with pytest.raises(RuntimeError):
        synthart.generate(tmp_path / "crash", num_images=16, seed=1, max_side=200)
    assert not (tmp_path / "crash").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sa"]  # no temp folder left behind


def test_refuses_foreign_folder_and_bad_args(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        synthart.generate(tmp_path / "x", num_images=16)
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError):
        synthart.generate(tmp_path / "y", num_images=8)
    with pytest.raises(FileNotFoundError, match="synthart_defects.json"):
        synthart.defects(tmp_path / "x")


def test_sidecar_is_json(sa):
    root, _, d = sa
    assert json.loads((root / synthart.DEFECTS_FILE).read_text()) == d


def test_series_share_an_artist_a_composition_and_a_size_but_not_the_palette(tmp_path):
    root = tmp_path / "series"
    df = pd.read_csv(synthart.generate(root, num_images=100, seed=0, max_side=300, series=4)).set_index("filename")
    side, groups = synthart.defects(root), json.loads((root / synthart.SERIES_FILE).read_text())
    assert len(groups) == 4 and all(len(g) == 3 for g in groups)
    assert len(side["series"]) == 12 and len(side["series_member"]) == 8

    def grad(f):  # where the strokes are, whatever their colours: [64*64]
        a = np.asarray(Image.open(root / f).convert("L").resize((64, 64)), float)
        return np.hypot(*np.gradient(a)).ravel()

    within, across = [], []
    for g in groups:
        assert df.loc[g, "artist"].nunique() == 1
        assert df.loc[g, ["width", "height"]].drop_duplicates().shape[0] == 1
        rgb = [np.asarray(Image.open(root / f).convert("RGB"), float) for f in g]
        assert np.abs(rgb[0] - rgb[1]).mean() > 10  # other palettes
        others = [f for f in df.index[df["artist"] == df.loc[g[0], "artist"]] if f not in g]
        within += [np.corrcoef(grad(g[0]), grad(f))[0, 1] for f in g[1:]]
        across += [np.corrcoef(grad(g[0]), grad(f))[0, 1] for f in others]
    assert np.mean(within) > np.mean(across) + 0.2  # the same composition
