"""Loaders: the Kaggle classes.csv quirks, huggan/wikiart from local folders, load_manifest."""

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artsim_lib.io import datasets as loaders
from artsim_lib.io.manifest import MANIFEST_COLUMNS, load_huggan, load_kaggle, load_manifest

HEADER = "filename,artist,genre,description,phash,width,height,genre_count,subset\n"
ROWS = """\
Cubism/anna-kovac_broken-still-life-1912.jpg,anna kovac,['Cubism'],broken-still-life,f3ce708116bed80e,640,480,1,train
Cubism/boris-berg_guitar-1913.jpg,boris berg,"['Cubism', 'Expressionism']",guitar,a4e9f392de48e40d,300,500,2,test
Realism/unknown_harbour.jpg,,['Realism'],harbour,,1024,768,1,uncertain artist
Baroque/clara-moreau_portrait-1650.jpg,clara moreau,"['Baroque'",portrait,,,,1,train
Pop_Art/diego-silva_soup-can-1962.jpg,diego silva,Pop_Art,,be1e9a172ce36162,200,200.0,,
Impressionism/élise dupont_étang-1880.jpg, élise dupont ,"['Impressionism']",,,12x,90,1,train
"""


@pytest.fixture
def kaggle_root(tmp_path):
    root = tmp_path / "wikiart"
    root.mkdir()
    (root / "classes.csv").write_text(HEADER + ROWS, encoding="utf-8")
    return root


@pytest.fixture
def kaggle(kaggle_root):
    return load_kaggle(kaggle_root).set_index("filename", drop=False)


def test_columns_and_types(kaggle, kaggle_root):
    assert list(kaggle.columns) == MANIFEST_COLUMNS
    assert len(kaggle) == 6
    assert kaggle["id"].is_unique
    assert (kaggle["source"] == "kaggle").all()
    assert kaggle["genre"].isna().all()  # the Kaggle csv has no subject genre
    for col in ("year", "width", "height", "genre_count"):
        assert str(kaggle[col].dtype) == "Int64"
    for p, f in zip(kaggle["path"], kaggle["filename"]):
        assert os.path.isabs(p) and p == str(kaggle_root.resolve() / f)


def test_ids_are_filesystem_safe(kaggle):
    row = kaggle.loc["Cubism/anna-kovac_broken-still-life-1912.jpg"]
    assert row["id"] == "cubism__anna-kovac_broken-still-life-1912"
    assert kaggle["id"].str.fullmatch(r"[a-z0-9._-]+(__[a-z0-9._-]+)*").all()


def test_style_lists(kaggle):
    one = kaggle.loc["Cubism/anna-kovac_broken-still-life-1912.jpg"]
    assert one["style"] == "Cubism" and one["styles"] == ["Cubism"]
    two = kaggle.loc["Cubism/boris-berg_guitar-1913.jpg"]
    assert two["styles"] == ["Cubism", "Expressionism"] and two["style"] == "Cubism"
    assert two["genre_count"] == 2
    bad = kaggle.loc["Baroque/clara-moreau_portrait-1650.jpg"]  # "['Baroque'" is malformed
    assert pd.isna(bad["style"]) and bad["styles"] is None
    bare = kaggle.loc["Pop_Art/diego-silva_soup-can-1962.jpg"]
    assert bare["styles"] == ["Pop_Art"] and bare["genre_count"] == 1  # count from the list


def test_missing_cells_and_subsets(kaggle):
    uncertain = kaggle.loc["Realism/unknown_harbour.jpg"]
    assert uncertain["subset"] == "uncertain artist"
    assert pd.isna(uncertain["artist"]) and pd.isna(uncertain["phash"])
    pop = kaggle.loc["Pop_Art/diego-silva_soup-can-1962.jpg"]
    assert pd.isna(pop["subset"])
    assert pop["height"] == 200  # "200.0" is still a whole number
    baroque = kaggle.loc["Baroque/clara-moreau_portrait-1650.jpg"]
    assert pd.isna(baroque["width"]) and pd.isna(baroque["height"])
    assert not (kaggle[["artist", "subset", "phash", "title"]] == "").any().any()


def test_titles_years_and_odd_names(kaggle):
    assert kaggle.loc["Cubism/boris-berg_guitar-1913.jpg", "title"] == "guitar"
    assert kaggle.loc["Cubism/boris-berg_guitar-1913.jpg", "year"] == 1913
    pop = kaggle.loc["Pop_Art/diego-silva_soup-can-1962.jpg"]
    assert pop["title"] == "soup-can"  # no description: taken from the filename
    odd = kaggle.loc["Impressionism/élise dupont_étang-1880.jpg"]
    assert odd["artist"] == "élise dupont" and odd["year"] == 1880
    assert pd.isna(odd["width"]) and odd["height"] == 90  # "12x" is not a number
    assert odd["id"].startswith("impressionism__") and " " not in odd["id"]


def test_year_parsing():
    assert loaders.year_of("Cubism/a_b-1912.jpg") == 1912
    assert loaders.year_of("Cubism/a_untitled.jpg") is None
    assert loaders.year_of("Cubism/a_train-000123.jpg") is None
    assert loaders.year_of("Cubism/a_composition-no-3.jpg") is None


def test_parse_styles_never_raises():
    assert loaders.parse_styles("['Cubism', 'Expressionism']") == ["Cubism", "Expressionism"]
    for bad in ("['Cubism'", "[1, 2]", "[]", "__import__('os')", "", None, float("nan"), "[" * 5000):
        assert loaders.parse_styles(bad) is None


def test_make_ids_unique():
    ids = loaders.make_ids(["A/x y.jpg", "A/x_y.jpg", "A/x_y.jpg", "B/z.png"])
    assert len(set(ids)) == 4
    assert ids[3] == "b__z"
    assert loaders.make_ids(["A/x y.jpg", "A/x_y.jpg"]) == ids[:2]  # stable, order-independent hashes


def test_missing_file_and_columns(tmp_path, kaggle_root):
    with pytest.raises(FileNotFoundError, match=r"nowhere.classes\.csv"):
        load_kaggle(tmp_path / "nowhere")
    csv = kaggle_root / "classes.csv"
    csv.write_text("filename,artist,genre\nCubism/a_b-1900.jpg,a,['Cubism']\n")
    with pytest.raises(ValueError, match="classes.csv.*missing column.*subset"):
        load_kaggle(kaggle_root)


# -- huggan/wikiart -----------------------------------------------------------------------------
def _jpeg_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def hf_folders(tmp_path, monkeypatch):
    """A 4-image dataset with huggan's features, saved as a parquet folder and with save_to_disk."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # not ~/.cache
    rng = np.random.default_rng(0)
    images = [Image.open(io.BytesIO(_jpeg_bytes((200, 30, 30))))]  # JPEG: its bytes are kept
    images += [Image.fromarray(rng.integers(0, 255, (20 + i, 25, 3), dtype=np.uint8)) for i in range(3)]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "artist": datasets.ClassLabel(names=["Unknown Artist", "claude-monet", "pablo-picasso"]),
            "genre": datasets.ClassLabel(names=["landscape", "portrait", "Unknown Genre"]),
            "style": datasets.ClassLabel(names=["Impressionism", "Cubism"]),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"image": images, "artist": [1, 2, 0, 1], "genre": [0, 1, 2, 0], "style": [0, 1, 1, 0]}, features=features
    )
    disk, pq = tmp_path / "disk", tmp_path / "pq"
    ds.save_to_disk(str(disk))
    (pq / "data").mkdir(parents=True)
    ds.to_parquet(str(pq / "data" / "train-00000-of-00001.parquet"))
    return {"disk": disk, "parquet": pq}


@pytest.mark.parametrize("form", ["disk", "parquet"])
def test_huggan_local(hf_folders, form, tmp_path):
    df = load_huggan(hf_folders[form], "train", image_dir=tmp_path / "img")
    assert list(df.columns) == MANIFEST_COLUMNS and len(df) == 4
    assert list(df["style"]) == ["Impressionism", "Cubism", "Cubism", "Impressionism"]
    assert list(df["styles"]) == [["Impressionism"], ["Cubism"], ["Cubism"], ["Impressionism"]]
    assert df["artist"].tolist()[:2] == ["claude-monet", "pablo-picasso"] and pd.isna(df["artist"][2])
    assert df["genre"].tolist()[:2] == ["landscape", "portrait"] and pd.isna(df["genre"][2])
    assert (df["source"] == "huggan").all() and (df["subset"] == "train").all()
    assert df["id"].is_unique and df["year"].isna().all()
    for row in df.itertuples():
        assert os.path.isfile(row.path) and row.path.endswith(row.filename)
        with Image.open(row.path) as im:
            assert im.size == (row.width, row.height)
    first = df.iloc[0]
    assert first["filename"] == "Impressionism/claude-monet_train-000000.jpg"
    assert open(first["path"], "rb").read() == _jpeg_bytes((200, 30, 30))  # written as is
    assert df["path"].iloc[1].endswith(".png") and df["phash"].notna().all()


def test_huggan_writes_images_once(hf_folders, tmp_path):
    a = load_huggan(hf_folders["disk"], image_dir=tmp_path / "img")
    stamps = [os.stat(p).st_mtime_ns for p in a["path"]]
    b = load_huggan(hf_folders["disk"], image_dir=tmp_path / "img")
    pd.testing.assert_frame_equal(a, b)
    assert [os.stat(p).st_mtime_ns for p in b["path"]] == stamps
    c = load_huggan(hf_folders["parquet"], image_dir=tmp_path / "img")
    assert not set(c["path"]) & set(a["path"])  # another dataset: its own image folder


def test_huggan_offline_error_says_how_to_download(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(RuntimeError, match=r"(?s)hf download --repo-type dataset .*huggingface-cli download"):
        load_huggan("artsim-test/not-a-cached-dataset", image_dir=tmp_path / "img")
    with pytest.raises(FileNotFoundError):
        load_huggan(str(tmp_path / "no-such-folder"), image_dir=tmp_path / "img")


# -- load_manifest ---------------------------------------------------------------------------------
SMALL = ("data.synthart.num_images=16", "data.synthart.max_side=160")


def test_load_manifest_synthart_and_cache(run_dir, smoke_params, monkeypatch):
    P = smoke_params(*SMALL)
    df = load_manifest(P)
    csv = run_dir / "raw" / "synthart" / "classes.csv"
    assert csv.exists() and P.run.raw_manifest == run_dir / "manifest" / "raw.parquet"
    assert P.run.raw_manifest.exists() and len(df) == 16
    assert list(df.columns) == MANIFEST_COLUMNS
    with monkeypatch.context() as m:  # not monkeypatch.undo(): that would also undo run_dir
        m.setattr("artsim_lib.io.manifest.load_kaggle", lambda root: pytest.fail("cache not used"))
        again = load_manifest(P)
    pd.testing.assert_frame_equal(df, again)
    assert isinstance(again["styles"][0], list)
    limited = load_manifest(smoke_params(*SMALL, "data.limit=5"))  # other data params: rebuilt, not reused
    assert len(limited) == 5 and len(pd.read_parquet(P.run.raw_manifest)) == 5
    pd.testing.assert_frame_equal(limited, df.head(5))
    os.utime(csv, ns=(P.run.raw_manifest.stat().st_mtime_ns + 10**9,) * 2)  # csv newer: rebuilt
    reloaded = []
    monkeypatch.setattr("artsim_lib.io.manifest.load_kaggle", lambda root: reloaded.append(root) or df)
    assert len(load_manifest(smoke_params(*SMALL, "data.limit=5"))) == 5 and len(reloaded) == 1
    assert [p.name for p in P.run.raw_manifest.parent.iterdir()] == ["raw.parquet"]  # no temp files


def test_load_manifest_huggan(run_dir, smoke_params, hf_folders):
    P = smoke_params(*SMALL, "data.source=huggan", f"data.hf_dataset={hf_folders['parquet']}")
    df = load_manifest(P)
    assert len(df) == 4 and (df["source"] == "huggan").all()
    assert all(p.startswith(str(run_dir / "raw" / "huggan")) for p in df["path"])


def test_a_pilot_sample_spreads_over_a_few_styles_with_enough_paintings():
    import pandas as pd

    from artsim_lib.io.manifest import spread_sample

    df = pd.DataFrame(
        {
            "id": [f"i{k:03d}" for k in range(300)],
            "style": [f"s{k % 27:02d}" for k in range(270)] + ["rare"] * 3 + ["s00"] * 27,
        }
    )
    pilot = spread_sample(df, 24, seed=0)
    counts = pilot["style"].value_counts()
    assert len(pilot) == 24 and len(counts) == 6 and set(counts) == {4} and "rare" not in counts
    assert pilot["id"].is_monotonic_increasing  # original order kept
    assert spread_sample(df, 24, seed=0).equals(pilot) and not spread_sample(df, 24, seed=1).equals(pilot)
    assert spread_sample(df, 500, seed=0).equals(df)


def test_repeated_filenames_are_dropped_and_listed(kaggle_root):
    again = "Cubism/anna-kovac_broken-still-life-1912.jpg,someone else,['Cubism'],,,640,480,1,test\n"
    (kaggle_root / "classes.csv").write_text(HEADER + ROWS + again, encoding="utf-8")
    with pytest.warns(UserWarning, match="1 repeated filename row"):
        df = load_kaggle(kaggle_root)
    assert len(df) == 6 and df["filename"].is_unique and not df["id"].str.endswith("-2").any()
    assert df.loc[df["filename"].str.startswith("Cubism/anna"), "artist"].item() == "anna kovac"
    decisions = loaders.kaggle_decisions(kaggle_root)
    row = decisions[decisions["issue"].str.startswith("listed again")].iloc[0]
    assert row["filename"] == "Cubism/anna-kovac_broken-still-life-1912.jpg"
    assert "line 8" in row["issue"] and "someone else" in row["issue"]
    assert row["action"] == "line 8 dropped, line 2 kept"


def test_files_not_in_classes_csv_are_listed(kaggle_root):
    (kaggle_root / "Cubism").mkdir()
    Image.new("RGB", (8, 8)).save(kaggle_root / "Cubism" / "stray.jpg")
    (kaggle_root / "notes.txt").write_text("not an image")
    decisions = loaders.kaggle_decisions(kaggle_root)
    assert decisions[["filename", "issue", "action"]].values.tolist() == [
        ["Cubism/stray.jpg", "on disk but not in classes.csv", "ignored"]
    ]


def test_stage02_skipped_list_includes_the_data_decisions(smoke_params):
    from artsim_lib.stages import s02_preprocess as pp

    P = smoke_params("data.synthart.num_images=16", "preprocess.size=24", "preprocess.workers=1")
    raw = load_manifest(P)
    root = P.path(P.data.root)
    Image.new("RGB", (8, 8)).save(root / raw["filename"][0].split("/")[0] / "stray.jpg")
    res = pp.preprocess(P, raw)
    stray = res.skipped[res.skipped["filename"].str.endswith("stray.jpg")]
    assert stray["reason"].tolist() == ["on disk but not in classes.csv: ignored"]
    saved = pd.read_csv(P.run.root / "preprocess" / "skipped.csv")
    assert saved["filename"].str.endswith("stray.jpg").sum() == 1
