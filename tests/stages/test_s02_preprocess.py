"""Stage 02 on hand-made images: every defect case, the resize modes, the split, resumption."""

import io
import os

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artsim_lib import config
from artsim_lib.core import cleaning
from artsim_lib.stages import s01_eda as eda
from artsim_lib.stages import s02_preprocess as pp


def _painting(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(arr).resize((w, h), Image.Resampling.NEAREST)
    return img.convert(mode) if mode != "RGB" else img


@pytest.fixture
def files(tmp_path):
    """One file per defect case; returns {case: path}."""
    d = tmp_path / "raw"
    d.mkdir()
    out = {}
    out["rgb"] = d / "rgb.jpg"
    _painting(300, 150, 1).save(out["rgb"])
    out["gray"] = d / "gray.jpg"
    _painting(120, 160, 2, "L").save(out["gray"])
    out["cmyk"] = d / "cmyk.jpg"
    _painting(200, 200, 3, "CMYK").save(out["cmyk"])
    out["rgba"] = d / "rgba.jpg"  # PNG bytes behind a .jpg name, as scraped files often are
    rgba = _painting(100, 100, 4, "RGBA")
    rgba.putalpha(0)
    rgba.save(out["rgba"], format="PNG")
    out["exif"] = d / "exif.jpg"  # stored 200x100, displayed 100x200 (rotate 90°)
    exif = Image.Exif()
    exif[0x0112] = 6
    _painting(200, 100, 5).save(out["exif"], exif=exif)
    out["truncated"] = d / "truncated.jpg"
    buf = io.BytesIO()
    _painting(400, 400, 6).save(buf, format="JPEG")
    out["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["missing"] = d / "does-not-exist.jpg"
    return out


def _run(src, tmp_path, size=64, mode="letterbox", pad=(0, 0, 0), max_pixels=10**9):
    dst = tmp_path / "out" / (src.stem + ".png")
    dst.parent.mkdir(exist_ok=True)
    return pp.process_image(str(src), str(dst), size, mode, pad, max_pixels), dst


@pytest.mark.parametrize("case,mode", [("rgb", "RGB"), ("gray", "L"), ("cmyk", "CMYK"), ("rgba", "RGBA")])
def test_every_mode_becomes_rgb_at_target_size(files, tmp_path, case, mode):
    status, dst = _run(files[case], tmp_path)
    assert status["status"] == "ok" and status["orig_mode"] == mode
    with Image.open(dst) as out:
        assert out.mode == "RGB" and out.size == (64, 64)


def test_transparent_pixels_are_composited_on_white(files, tmp_path):
    _, dst = _run(files["rgba"], tmp_path)
    assert np.asarray(Image.open(dst)).min() == 255  # fully transparent input -> white


def test_exif_orientation_is_applied(files, tmp_path):
    # After rotation the picture is portrait, so letterboxing pads left and right, not top and bottom.
    _, dst = _run(files["exif"], tmp_path, pad=(255, 0, 0))
    arr = np.asarray(Image.open(dst))
    assert (arr[:, 0] == [255, 0, 0]).all()  # left column is padding
    assert not (arr[0, 32] == [255, 0, 0]).all()  # top centre is picture


@pytest.mark.parametrize("case,reason", [("truncated", "unreadable"), ("missing", "missing file")])
def test_bad_files_are_skipped_with_a_reason(files, tmp_path, case, reason):
    status, dst = _run(files[case], tmp_path)
    assert status["status"] == "skipped" and reason in status["reason"]
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.endswith(".tmp.png")]  # nothing half-written


def test_oversized_images_are_skipped(files, tmp_path):
    status, _ = _run(files["rgb"], tmp_path, max_pixels=1000)
    assert status["status"] == "skipped" and status["reason"].startswith("oversized")


def test_letterbox_keeps_the_whole_picture_and_crop_fills_the_square():
    img = Image.new("RGB", (200, 100), (0, 255, 0))
    boxed = np.asarray(pp.fit(img, 50, "letterbox", (9, 9, 9)))
    cropped = np.asarray(pp.fit(img, 50, "crop"))
    assert (boxed[0, 25] == 9).all() and (boxed[25, 25] == [0, 255, 0]).all()
    assert (cropped == [0, 255, 0]).all()


def test_existing_outputs_are_reused(files, tmp_path):
    first, dst = _run(files["rgb"], tmp_path)
    mtime = os.stat(dst).st_mtime_ns
    second, _ = _run(files["rgb"], tmp_path)
    assert (first["status"], second["status"]) == ("ok", "cached")
    assert os.stat(dst).st_mtime_ns == mtime


def test_drop_missing_counts_per_column_and_drops_once():
    df = pd.DataFrame(
        {
            "id": list("abcd"),
            "artist": ["x", None, "", "y"],
            "style": ["s", None, "s", "s"],
            "subset": ["train", "train", "test", None],
        }
    )
    kept, counts, dropped = pp.drop_missing(df, ["artist", "style", "subset"])
    assert list(kept["id"]) == ["a"]
    assert dict(zip(counts["column"], counts["missing"])) == {"artist": 2, "style": 1, "subset": 1}
    assert sorted(dropped["id"]) == ["b", "c", "d"]
    with pytest.raises(KeyError, match="drop_missing"):
        pp.drop_missing(df, ["genre"])


def test_find_duplicates_by_phash_distance():
    a, b = _painting(64, 64, 1), _painting(64, 64, 2)
    ha, hb = imagehash.phash(a), imagehash.phash(b)
    h_resized = imagehash.phash(a.resize((80, 80)))
    df = pd.DataFrame({"id": ["1", "2", "3", "4"], "phash": [str(ha), str(hb), str(h_resized), None]})
    exact = pp.find_duplicates(df, max_distance=0)
    loose = pp.find_duplicates(df, max_distance=64)
    assert set(loose["id"]) == {"2", "3"} and set(loose["duplicate_of"]) == {"1"}
    assert set(exact["id"]) == ({"3"} if ha == h_resized else set())
    assert (ha - h_resized) <= 4  # rescaling hardly moves a perceptual hash


def _random_hashes(n, seed, bits=64, exact=0.15, near=0.2):
    """``n`` hex hashes: fresh random ones, exact repeats and copies a few bits away."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        r = rng.random()
        if vals and r < exact:
            vals.append(vals[rng.integers(len(vals))])
        elif vals and r < exact + near:
            v = vals[rng.integers(len(vals))]
            for b in rng.integers(0, bits, rng.integers(1, 7)):
                v ^= 1 << int(b)
            vals.append(v)
        else:
            vals.append(int.from_bytes(rng.bytes(bits // 8), "little"))
    return [format(v, f"0{bits // 4}x") for v in vals]


@pytest.mark.parametrize("bits", [64, 256])
def test_find_duplicates_matches_the_brute_force_reference(monkeypatch, bits):
    # Small blocks and chunks: the hashes span many of both, as 81k hashes would.
    monkeypatch.setattr(cleaning, "_BLOCK", 37)
    monkeypatch.setattr(cleaning, "_CHUNK", 23)
    hashes = _random_hashes(400, seed=bits, bits=bits)
    hashes[5], hashes[17] = None, "not-hex"  # unparsable rows are neither kept nor matched
    df = pd.DataFrame({"id": [f"r{i:03d}" for i in range(len(hashes))], "phash": hashes})
    for d in (-1, 0, 1, 3, 6, 12, bits // 2, bits):
        fast, slow = pp.find_duplicates(df, d), pp.find_duplicates_naive(df, d)
        pd.testing.assert_frame_equal(fast, slow)
    assert len(pp.find_duplicates(df, 0)) > 0 and len(pp.find_duplicates(df, 6)) > len(pp.find_duplicates(df, 0))
    assert {"r005", "r017"}.isdisjoint(set(pp.find_duplicates(df, bits)["id"]))


def test_find_duplicates_points_to_the_first_kept_row_not_the_nearest():
    # b is 4 bits from a (both kept); c is 1 bit from b but 3 from a: it points to a, kept first.
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "phash": ["00", "0f", "07", "07"]})
    out = pp.find_duplicates(df, max_distance=3)
    assert out[["id", "duplicate_of", "distance"]].values.tolist() == [["c", "a", 3], ["d", "a", 3]]
    assert pp.find_duplicates(df, max_distance=0)[["id", "duplicate_of"]].values.tolist() == [["d", "c"]]


def test_stratified_split_is_seeded_and_keeps_every_class_in_train():
    df = pd.DataFrame({"style": ["a"] * 40 + ["b"] * 20 + ["c"] * 2 + ["d"]})
    fr = {"train": 0.7, "val": 0.15, "test": 0.15}
    s1, s2 = pp.stratified_split(df, fr, "style", 1), pp.stratified_split(df, fr, "style", 1)
    s3 = pp.stratified_split(df, fr, "style", 2)
    assert s1.equals(s2) and not s1.equals(s3)
    table = pd.crosstab(df["style"], s1)
    assert (table["train"] >= 1).all()
    assert table.loc["a"].to_dict() == {"train": 28, "val": 6, "test": 6}
    assert table.loc["b"].sum() == 20 and abs(table.loc["b", "train"] - 14) <= 1


def test_preprocess_end_to_end(files, run_dir, tmp_path):
    cases = ["rgb", "gray", "cmyk", "rgba", "exif", "truncated"]
    raw = pd.DataFrame(
        {
            "id": cases,
            "path": [str(files[c]) for c in cases],
            "filename": [f"S/{c}.jpg" for c in cases],
            "artist": ["a", "b", None, "d", "e", "f"],
            "style": ["S", "S", "S", "T", "T", "T"],
            "subset": ["train"] * 6,
            "phash": [None] * 6,
        }
    )
    P = config.load_params("smoke", ["preprocess.size=32", "preprocess.workers=1", "preprocess.resize_mode=letterbox"])
    res = pp.preprocess(P, raw)
    assert sorted(res.manifest["id"]) == ["exif", "gray", "rgb", "rgba"]
    assert list(res.skipped["id"]) == ["truncated"] and list(res.dropped["id"]) == ["cmyk"]
    saved = pd.read_parquet(P.run.manifest)
    assert set(saved["split"]) <= {"train", "val", "test"} and saved["path"].map(os.path.exists).all()
    assert (P.run.root / "preprocess" / "skipped.csv").exists()
    rgb = saved.set_index("id").loc["rgb"]  # every row records its painting's box in the square
    assert (rgb["src_width"], rgb["src_height"]) == (300, 150)  # 300x150 into 32: 32x16, 8 px bars
    assert tuple(rgb[["content_x0", "content_y0", "content_x1", "content_y1"]]) == (0, 8, 32, 24)
    # each written image's fingerprint is in the manifest, computed from the bytes it wrote
    from artsim_lib.io import paths

    assert list(saved["sha256"]) == [paths.file_sha256(p) for p in saved["path"]]
    again = pp.preprocess(P, raw)  # images reused: the fingerprints of the files on disk
    assert list(again.manifest["sha256"]) == list(res.manifest["sha256"])


def test_a_pilot_over_many_styles_still_gets_val_and_test():
    """24 paintings over 27 styles: per-style rounding alone puts all of them in train."""
    df = pd.DataFrame({"style": [f"s{i:02d}" for i in range(24)]})
    split = pp.stratified_split(df, {"train": 0.8, "val": 0.1, "test": 0.1}, "style", seed=0)
    assert split.value_counts().to_dict() == {"train": 20, "val": 2, "test": 2}
    assert split.equals(pp.stratified_split(df, {"train": 0.8, "val": 0.1, "test": 0.1}, "style", seed=0))
    # groups large enough for their own shares are left as per-group rounding made them
    big = pd.DataFrame({"style": [f"s{i % 4}" for i in range(80)]})
    counts = pp.stratified_split(big, {"train": 0.7, "val": 0.15, "test": 0.15}, "style", seed=0).value_counts()
    assert counts.to_dict() == {"train": 56, "val": 12, "test": 12}  # 4 x (14, 3, 3)


def test_the_manifest_key_leaves_out_how_the_work_was_scheduled():
    one = config.load_params("smoke", ["preprocess.workers=1"])
    eight = config.load_params("smoke", ["preprocess.workers=8"])
    assert pp.manifest_key(one) == pp.manifest_key(eight)
    assert pp.manifest_key(one) != pp.manifest_key(config.load_params("smoke", ["preprocess.size=96"]))


def test_load_reads_a_current_manifest_and_refuses_a_stale_one(run_dir):
    from artsim_lib.io.artifacts import StageNotRunError

    P = config.load_params("smoke", ["data.synthart.num_images=16", "preprocess.size=24"])
    with pytest.raises(StageNotRunError, match="is missing: run stage 02 first"):
        pp.load(P)
    with pytest.raises(StageNotRunError, match="the raw manifest .* run stage 01 first"):
        pp.run(P)  # stage 02 reads stage 01's raw manifest, it never makes it
    eda.run(P)
    first = pp.run(P).manifest
    mtime = P.run.manifest.stat().st_mtime_ns
    again = pp.load(P)
    assert P.run.manifest.stat().st_mtime_ns == mtime and again["id"].equals(first["id"])
    assert isinstance(again["styles"].iloc[0], list)  # read back as the loaders return it
    P2 = config.load_params("smoke", ["data.synthart.num_images=16", "preprocess.size=20"])
    with pytest.raises(StageNotRunError, match="made with other params: run stage 02 first"):
        pp.load(P2)
    eda.run(P2)
    rebuilt = pp.run(P2).manifest
    assert P.run.manifest.stat().st_mtime_ns != mtime
    from PIL import Image

    assert Image.open(rebuilt["path"].iloc[0]).size == (20, 20)


def test_a_rerun_on_cached_images_writes_the_same_manifest_byte_for_byte(run_dir):
    """A rerun reuses every normalised image; it used to write orig_mode None for them."""
    from artsim_lib.io import manifest

    P = config.load_params("smoke", ["data.synthart.num_images=16", "preprocess.size=24", "preprocess.workers=1"])
    first = pp.preprocess(P, manifest.load_manifest(P))
    out = P.run.root / "preprocess"
    files = [P.run.manifest] + [out / f"{n}.csv" for n in ("missing", "dropped", "duplicates", "skipped")]
    before = {f: f.read_bytes() for f in files}
    again = pp.preprocess(P, manifest.load_manifest(P))
    assert first.manifest["orig_mode"].notna().all() and again.manifest["orig_mode"].notna().all()
    assert {f: f.read_bytes() for f in files} == before


@pytest.mark.parametrize("w,h,size", [(200, 100, 50), (100, 301, 64), (333, 250, 128), (12, 1000, 64), (90, 90, 32)])
def test_content_box_is_where_fit_puts_the_picture(w, h, size):
    arr = np.asarray(pp.fit(Image.new("RGB", (w, h), (255, 255, 255)), size, "letterbox", (0, 0, 0)))
    ys, xs = np.nonzero(arr.max(-1) > 0)
    assert pp.content_box(w, h, size, "letterbox") == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert pp.content_box(w, h, size, "crop") == pp.content_box(w, h, size, "stretch") == (0, 0, size, size)


def test_stretch_fills_the_square_without_padding():
    out = np.asarray(pp.fit(Image.new("RGB", (200, 50), (0, 255, 0)), 40, "stretch", (9, 9, 9)))
    assert out.shape == (40, 40, 3) and (out == [0, 255, 0]).all()


def test_source_geometry_reads_the_rotated_sides(files):
    geo = pp.source_geometry(str(files["exif"]), 64, "letterbox")  # 200x100 stored, EXIF-rotated to portrait
    assert (geo["src_width"], geo["src_height"]) == (100, 200)
    assert (geo["content_x0"], geo["content_x1"], geo["content_y0"], geo["content_y1"]) == (16, 48, 0, 64)
    assert np.isnan(pp.source_geometry(str(files["missing"]), 64, "letterbox")["src_width"])


def test_grouped_split_keeps_every_artist_in_one_split():
    df = pd.DataFrame({"artist": [f"a{i % 12}" for i in range(120)] + [None, ""], "style": "s"})
    split = pp.grouped_split(df, {"train": 0.7, "val": 0.15, "test": 0.15}, "artist", seed=3)
    per_artist = pd.crosstab(df["artist"], split)
    assert ((per_artist > 0).sum(1) == 1).all()  # one split per artist
    shares = split.value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.1 and shares["test"] > 0 and shares["val"] > 0
    assert split.equals(pp.grouped_split(df, {"train": 0.7, "val": 0.15, "test": 0.15}, "artist", seed=3))
    styled = df.assign(style=[f"s{i % 12 // 3}" for i in range(120)] + ["s0", "s0"])  # 3 artists per style
    for seed in range(5):
        split = pp.grouped_split(styled, {"train": 0.4, "val": 0.3, "test": 0.3}, "artist", seed, by="style")
        assert (pd.crosstab(styled["style"], split)["train"] > 0).all()  # every style keeps a train artist


def test_near_copies_across_splits_leave_val_and_test():
    df = pd.DataFrame(
        {
            "id": list("abcde"),
            "split": ["train", "test", "val", "test", "train"],
            "phash": [
                "0000000000000000",
                "0000000000000007",  # b: 3 bits from a (train)
                "ffffffffffffffff",
                "fffffffffffffff0",  # d: 4 bits from c (val)
                "00000000ffffffff",
            ],
        }
    )  # e: far from all
    cross = pp.cross_split_duplicates(df, 4)
    assert cross[["id", "duplicate_of", "distance"]].values.tolist() == [["b", "a", 3], ["d", "c", 4]]
    assert pp.cross_split_duplicates(df, 3)["id"].tolist() == ["b"]
    assert pp.cross_split_duplicates(df, None).empty
    same = df.assign(split="test")  # within one split: not this check
    assert pp.cross_split_duplicates(same, 8).empty
