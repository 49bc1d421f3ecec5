"""The descriptors and their similarities (core) on SynthArt paintings and simple PIL edits: every
family's invariants, the weighted total, the cache, parallel extraction, the weight fit and the
triplet accuracy. Stage 06's runner is tested in tests/stages/test_s06_descriptors.py."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter
from skimage import color, filters

from artsim_lib import config
from artsim_lib.core import descriptor_similarity as dsim
from artsim_lib.core import descriptors

CFG = config.compare_descriptor_params()  # 128 px (the schema defaults: the full study's 256)


def hue_shift(img: Image.Image, shift: float = 0.33) -> Image.Image:
    hsv = color.rgb2hsv(np.asarray(img))
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return Image.fromarray((color.hsv2rgb(hsv) * 255).round().astype(np.uint8))


def blur(img: Image.Image) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(2))


def sims(a, b, cfg=CFG) -> dict:
    return dsim.similarities(descriptors.extract(a, cfg), descriptors.extract(b, cfg))


# -- families ---------------------------------------------------------------------------
def test_identical_images_score_one_in_every_family(paintings):
    for p in paintings[:4]:
        s = sims(p, Image.open(p))  # a file and the same pixels in memory
        assert set(s) == set(descriptors.FAMILIES)
        assert all(v == pytest.approx(1.0, abs=1e-6) for v in s.values()), s
        assert dsim.combine(s, CFG.weights) == pytest.approx(1.0, abs=1e-6)


def test_similarities_are_symmetric_and_in_unit_interval(paintings):
    imgs = [Image.open(p) for p in paintings[:5]]
    imgs += [hue_shift(imgs[0]), blur(imgs[1]), imgs[2].transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    feats = [descriptors.extract(i, CFG) for i in imgs]
    for i in range(len(feats)):
        for j in range(i + 1, len(feats)):
            ab, ba = dsim.similarities(feats[i], feats[j]), dsim.similarities(feats[j], feats[i])
            for f in descriptors.FAMILIES:
                assert ab[f] == pytest.approx(ba[f], abs=1e-9)
                assert 0.0 <= ab[f] <= 1.0
            assert 0.0 <= dsim.combine(ab, CFG.weights) <= 1.0


def test_hue_shift_lowers_colour_but_not_edges(paintings):
    for p in paintings:
        img = Image.open(p)
        s = sims(img, hue_shift(img))
        assert s["edges"] > 0.97, (p.name, s)  # edges use the HSV value: unchanged
        assert s["colour"] < 0.6, (p.name, s)
        assert s["edges"] - s["colour"] > 0.35


def test_blur_lowers_texture_and_edges_more_than_colour(paintings):
    drops = pd.DataFrame([{f: 1 - v for f, v in sims(Image.open(p), blur(Image.open(p))).items()} for p in paintings])
    mean = drops.mean()
    assert mean["texture"] > mean["colour"] + 0.05, mean
    assert mean["edges"] > mean["colour"] + 0.05, mean
    assert (drops["texture"] > drops["colour"]).mean() >= 0.75


def test_weighted_total_equals_the_hand_combination(paintings):
    s = sims(paintings[0], paintings[1])
    w = {"colour": 2.0, "texture": 1.0, "edges": 0.0, "shape": 0.5, "ssim": 0.5}
    by_hand = (2 * s["colour"] + s["texture"] + 0.5 * s["shape"] + 0.5 * s["ssim"]) / 4.0
    assert dsim.combine(s, w) == pytest.approx(by_hand, abs=1e-12)
    table = pd.DataFrame([s, sims(paintings[2], paintings[3])])
    assert dsim.combine(table, w).iloc[0] == pytest.approx(by_hand, abs=1e-12)
    assert sum(dsim.normalise_weights(w).values()) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="unknown"):
        dsim.normalise_weights({"color": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        dsim.normalise_weights({"colour": -1.0, "edges": 2.0})


def test_component_measures_on_hand_computed_cases():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])
    assert dsim.intersection(p, q) == pytest.approx(0.5)
    # chi2 = ½ (0.25²/0.75 + 0.25²/0.75 + 0.5²/0.5) = ½ (1/6 + 1/2) = 1/3
    assert dsim.chi2_similarity(p, q) == pytest.approx(2 / 3)
    assert dsim.canberra_similarity([1.0, 0.0], [3.0, 0.0]) == pytest.approx(1 - 0.5 / 2)
    assert dsim.weighted_jaccard(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(0.5 / 1.5)
    # One colour each, 10 ΔE apart: exp(-10 / 25).
    assert dsim.palette_similarity([[50, 0, 0]], [1.0], [[60, 0, 0]], [1.0]) == pytest.approx(np.exp(-0.4))


def test_gabor_response_equals_skimage_gabor():
    img = np.random.default_rng(0).random((40, 40))
    for f, theta in ((0.15, 0.0), (0.3, 1.1)):
        real, imag = filters.gabor(img, frequency=f, theta=theta)
        ours = descriptors.gabor_response(img, f, theta)
        np.testing.assert_allclose(ours.real, real, atol=1e-10)
        np.testing.assert_allclose(ours.imag, imag, atol=1e-10)


def test_kmeans_finds_three_blobs_with_their_shares():
    rng = np.random.default_rng(1)
    centres = np.array([[20.0, 0, 0], [50, 40, -40], [80, -30, 30]])
    counts = [100, 300, 200]
    blobs = [c + rng.normal(0, 1, (n, 3)) for c, n in zip(centres, counts)]
    found, shares = descriptors.kmeans(np.concatenate(blobs), 3)
    np.testing.assert_allclose(shares, [0.5, 1 / 3, 1 / 6])  # largest first
    # Well-separated blobs: the converged centres are exactly the blob means.
    np.testing.assert_allclose(found, [blobs[k].mean(0) for k in (1, 2, 0)], atol=1e-9)


# -- reading, cache, parallel -------------------------------------------------------------
def test_unreadable_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    for path, reason in ((bad, "cannot read"), (tmp_path / "absent.png", "no such file")):
        with pytest.raises(descriptors.ImageReadError, match=reason) as err:
            descriptors.extract(path, CFG)
        assert str(path) in str(err.value)


def test_cache_hits_misses_and_invalidation(paintings, tmp_path, monkeypatch):
    calls = []
    real = descriptors.extract
    monkeypatch.setattr(descriptors, "extract", lambda src, cfg: calls.append(src) or real(src, cfg))
    imgs = []
    for p in paintings[:3]:
        imgs.append(tmp_path / p.name)
        imgs[-1].write_bytes(p.read_bytes())
    cache = tmp_path / "cache"
    first, hits = descriptors.extract_many(imgs, CFG, cache, workers=1)
    assert len(calls) == 3 and not hits.any()
    files = sorted(cache.rglob("*.npz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert len(files) == 3
    again, hits = descriptors.extract_many(imgs, CFG, cache, workers=1)
    assert len(calls) == 3 and hits.all()  # nothing recomputed, nothing rewritten
    assert [f.stat().st_mtime_ns for f in files] == stamps
    for a, b in zip(first, again):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    # Weights do not shape features: still hits.
    _, hits = descriptors.extract_many(imgs, CFG.model_copy(update={"weights": {"colour": 1.0}}), cache)
    assert hits.all() and len(calls) == 3
    # A feature param changes: another cache folder, every image recomputed.
    other = CFG.model_copy(update={"glcm_levels": 16})
    _, hits = descriptors.extract_many(imgs, other, cache, workers=1)
    assert not hits.any() and len(calls) == 6
    assert descriptors.cache_dir_for(cache, other) != descriptors.cache_dir_for(cache, CFG)
    # One image's content changes: that one only is recomputed.
    hue_shift(Image.open(imgs[1])).save(imgs[1])
    feats, hits = descriptors.extract_many(imgs, CFG, cache, workers=1)
    assert hits.tolist() == [True, False, True] and len(calls) == 7
    assert not np.array_equal(feats[1]["colour.hsv"], first[1]["colour.hsv"])


def test_parallel_extraction_equals_sequential(paintings, tmp_path):
    seq, _ = descriptors.extract_many(paintings[:10], CFG, None, workers=1)
    par, _ = descriptors.extract_many(paintings[:10], CFG, tmp_path / "cache", workers=2)
    assert len(seq) == len(par) == 10
    for a, b in zip(seq, par):
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a)


# -- the weight fit ------------------------------------------------------------------------
def test_logistic_fit_recovers_the_informative_family():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    table = pd.DataFrame({f: rng.uniform(0, 1, n) for f in descriptors.FAMILIES})
    table["edges"] = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.1, n), 0, 1)  # only edges knows y
    table["role"] = np.where(y == 1, "positive", "negative")
    fit = dsim.fit_weights(table, l2=1e-3)
    assert max(fit["weights"], key=fit["weights"].get) == "edges"
    assert fit["weights"]["edges"] > 0.8 and sum(fit["weights"].values()) == pytest.approx(1.0)
    # At the optimum the penalised gradient vanishes.
    X = table[list(descriptors.FAMILIES)].to_numpy()
    beta = np.array([fit["coef"][f] for f in descriptors.FAMILIES])
    p = 1 / (1 + np.exp(-(X @ beta + fit["intercept"])))
    grad = X.T @ (p - y) + 1e-3 * n * beta
    assert np.abs(grad).max() < 1e-6 and abs((p - y).sum()) < 1e-6


# -- the pair table's accuracies ----------------------------------------------------------
def test_accuracy_table_by_hand_with_its_chance():
    # Three triplets: s+ above s- (1), a tie (1/2), s+ below s- (0); the first two in train.
    s_pos, s_neg, split = [0.9, 0.5, 0.2], [0.1, 0.5, 0.7], ["train", "train", "test"]
    rows = [
        dict(
            triplet_id=f"t{i}",
            role=role,
            descriptor=v,
            anchor_id=f"o{i}",
            split=split[i],
            level="moderate",
            negative_kind="random",
        )
        for i in range(3)
        for role, v in (("positive", s_pos[i]), ("negative", s_neg[i]))
    ]
    pairs = pd.DataFrame(rows)
    plain = dsim.accuracy_table(pairs, ["descriptor"])
    assert list(plain.columns) == ["descriptor"]  # what stage 06 stores in fitted_weights.json
    shown = dsim.accuracy_table(pairs, ["descriptor"], chance=True)
    assert list(shown.columns) == ["triplets", "chance", "descriptor"] and list(shown.index) == ["test", "train", "all"]
    assert shown["descriptor"].tolist() == pytest.approx([0.0, 0.75, 0.5])
    assert shown["triplets"].tolist() == [1, 2, 3] and (shown["chance"] == 0.5).all()
