"""Stage 09 through its own functions on small studies built by hand: perfect, constant, random and
tied measures against hand-computed values, the test split and nothing else, skipped measures, files."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artsim_lib import config
from artsim_lib.core import metrics
from artsim_lib.measures import registry, scoring
from artsim_lib.measures.base import (
    DescriptorMeasure,
    EmbeddingMeasure,
    MeasureUnavailableError,
)
from artsim_lib.stages import s09_evaluation as evaluation
from artsim_lib.stages.s05_generation import build_triplets
from helpers import Table, hand_study

FAMILIES = ("photometric", "geometric")
STRENGTHS = (0.25, 1.0)


class _AnyName(set):
    def __contains__(self, name):
        return True


@pytest.fixture(autouse=True)
def _test_measures(monkeypatch):
    """These tests hand stage 09 in-memory measures under made-up names, as a library user with a
    registered measure would: accept any name here (name checks at load are test_config's)."""
    from artsim_lib.config import schema as params_schema

    monkeypatch.setattr(params_schema, "EXTRA_MEASURES", _AnyName())


def study(n_test=6, n_other=4, styles=2, seed=0):
    """Manifest, pairs and triplets frames: ``n_test`` test originals and ``n_other`` each in train and val,
    with one derivative per (family, strength). Paths are names only: these measures never open a file."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "id": f"{split}-{i:02d}",
            "path": f"/img/{split}-{i:02d}.png",
            "style": f"S{i % styles}",
            "artist": f"A{i % (styles + 1)}",
            "phash": f"{int(rng.integers(1 << 62)):016x}",
            "split": split,
        }
        for split, n in (("test", n_test), ("train", n_other), ("val", n_other))
        for i in range(n)
    ]
    manifest = pd.DataFrame(rows)
    pairs = pd.DataFrame(
        [
            {
                "pair_id": f"{o.id}:{f}:{s}",
                "original_id": o.id,
                "family": f,
                "strength": s,
                "level": "moderate" if s <= 0.5 else "radical",
                "path": f"/img/{o.id}-{f}-{s}.png",
                "prompt": None,
                "nan_flag": False,
                "black_flag": False,
                "backend": "augment",
                "split": o.split,
                "style": o.style,
                "artist": o.artist,
            }
            for o in manifest.itertuples()
            for f in FAMILIES
            for s in STRENGTHS
        ]
    )
    return manifest, pairs, build_triplets(pairs, manifest, seed=seed).triplets


def params(n_boot=50, **kw):
    return config.EvaluationParams(n_boot=n_boot, measures=["m"], reference="m", **kw)


def evaluate(es, measures, cfg=None):
    cfg = cfg or config.EvaluationParams(n_boot=50, measures=list(measures), reference=list(measures)[0])
    return evaluation.evaluate_set(es, measures, cfg, seed=0)


def value(result, measure, metric, subset):
    row = result.metrics.set_index(["measure", "metric", "subset"]).loc[(measure, metric, subset)]
    return row["value"]


def original_of(es):
    """image path -> the id of its original (itself for an original)."""
    out = dict(zip(es.originals["path"], es.originals["id"]))
    out.update(zip(es.derivatives["path"], es.derivatives["original_id"]))
    out.update(zip(es.extra["path"], es.extra["original_id"]))  # copy-detection distractors
    return out


def one_hot_oracle(es):
    """Every image embeds as the one-hot vector of its original: derivative == its original exactly."""
    ids = {o: i for i, o in enumerate(sorted(set(original_of(es).values())))}
    orig = original_of(es)
    return EmbeddingMeasure("oracle", lambda imgs: np.eye(len(ids))[[ids[orig[p]] for p in imgs]], pass_sources=True)


def random_measure(dim=64):
    def embed(imgs):
        return np.stack(
            [np.random.default_rng(int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)).normal(size=dim) for p in imgs]
        )

    return EmbeddingMeasure("random", embed, pass_sources=True)


# -- perfect, constant, random ---------------------------------------------------------------------------
def test_perfect_measure_scores_one_everywhere():
    es = evaluation.test_set(*study())
    r = evaluate(es, {"oracle": one_hot_oracle(es)})
    n = es.originals["id"].nunique()
    for metric, subset in [
        ("triplet_acc", "random"),
        ("triplet_acc", "same_style"),
        ("triplet_acc", "same_artist"),
        ("triplet_acc_query", "same_artist"),
        ("R@1", "all"),
        ("R@1", "dedup"),
        ("mAP", "all"),
        ("auc", "hard"),
        ("auc", "random"),
        ("µAP", "copy"),
        ("recall_at_precision", "copy"),
    ]:
        row = r.metrics.set_index(["metric", "subset"]).loc[(metric, subset)]
        assert (row["value"], row["hi"]) == (1, 1), (metric, subset)
        if metric.startswith(("triplet", "R@")):  # a proportion: at least the exact interval at n originals
            assert row["lo"] <= metrics.clopper_pearson(row["n"], row["n"])[0] + 1e-12 and row["n"] <= n
        else:
            assert row["lo"] == 1
    assert value(r, "oracle", "median_rank", "all") == 1


def test_constant_measure_scores_exactly_chance():
    es = evaluation.test_set(*study(n_test=8))
    n = len(es.gallery)
    r = evaluate(es, {"const": EmbeddingMeasure("const", lambda imgs: np.ones((len(imgs), 3)), pass_sources=True)})
    assert value(r, "const", "R@1", "all") == pytest.approx(1 / n)
    assert value(r, "const", "R@5", "all") == pytest.approx(5 / n)
    assert value(r, "const", "median_rank", "all") == pytest.approx((n + 1) / 2)
    assert value(r, "const", "mAP", "all") == pytest.approx(np.mean(1 / np.arange(1, n + 1)))
    for kind in ("random", "same_style", "same_artist"):
        assert value(r, "const", "triplet_acc", kind) == 0.5
    assert value(r, "const", "auc", "hard") == 0.5
    assert value(r, "const", "moderate_above_radical", "all") == 0.5
    assert np.isnan(value(r, "const", "spearman_strength", "all"))
    assert value(r, "const", "spearman_within", "original_family") == 0  # all tied: the expected ρ, 0
    chance = r.chance()
    assert chance["R@1"] == pytest.approx(1 / n) and chance["mAP"] == pytest.approx(value(r, "const", "mAP", "all"))


def test_random_measure_is_near_chance():
    es = evaluation.test_set(*study(n_test=30, styles=5))
    r = evaluate(es, {"random": random_measure()})
    assert abs(value(r, "random", "R@1", "all") - 1 / 30) < 0.06
    assert abs(value(r, "random", "triplet_acc", "random") - 0.5) < 0.12
    assert abs(value(r, "random", "auc", "hard") - 0.5) < 0.12
    lo, hi = r.metrics.set_index(["metric", "subset"]).loc[("triplet_acc", "random"), ["lo", "hi"]]
    assert lo < 0.5 + 0.12 and hi > 0.5 - 0.12 and lo < hi


def test_ties_and_every_metric_by_hand():
    es, table = hand_study()
    cfg = config.EvaluationParams(n_boot=0, measures=["table", "half"], reference="half", ks=[1, 2])
    r = evaluation.evaluate_set(es, {"table": Table(table), "half": Table(default=0.5, name="half")}, cfg)
    # A' ties with B (rank 1.5), B' loses to A (rank 2), C' first (rank 1)
    assert value(r, "table", "R@1", "all") == pytest.approx((0.5 + 0 + 1) / 3)
    assert value(r, "table", "R@2", "all") == pytest.approx(1)
    assert value(r, "table", "mAP", "all") == pytest.approx(((1 + 1 / 2) / 2 + 1 / 2 + 1) / 3)
    assert value(r, "table", "median_rank", "all") == 1.5
    # same-style triplets: 0.9 vs s(A, B) = 0.9 is a tie (half), 0.5 vs 0.9 is wrong; random: 0.7 > 0.3
    assert value(r, "table", "triplet_acc", "same_style") == pytest.approx(0.25)
    assert value(r, "table", "triplet_acc", "random") == 1
    # anchored on the query: s(A', A) = .9 vs s(A', B) = .9 ties, s(B', B) = .5 < s(B', A) = .8, s(C', C) = .7 > .1
    assert value(r, "table", "triplet_acc_query", "same_style") == pytest.approx(0.25)
    assert value(r, "table", "triplet_acc_query", "random") == 1
    # verification: positives .9 .5 .7 against hard negatives s(B, A') = .9 and s(A, B') = .8
    assert value(r, "table", "auc", "hard") == pytest.approx(1.5 / 6)
    # MSE / MAE against a constant 0.5 over the 12 scored pairs: 9 (original, derivative) + 3 (original, original)
    scored = [0.9, 0.9, 0.1, 0.8, 0.5, 0.2, 0.1, 0.1, 0.7, 0.9, 0.9, 0.3]
    assert value(r, "table", "mse", "all") == pytest.approx(np.mean((np.array(scored) - 0.5) ** 2))
    assert value(r, "table", "mae", "all") == pytest.approx(np.mean(np.abs(np.array(scored) - 0.5)))
    assert value(r, "table", "mse", "positive") == pytest.approx((0.4**2 + 0 + 0.2**2) / 3)
    ref = r.metrics[(r.metrics["measure"] == "half") & (r.metrics["metric"] == "mse")]
    assert ref["value"].isna().all() and (ref["note"] == "reference").all()  # not a meaningless 0
    assert r.headline().loc["half", "MSE"] == "reference"
    # ordering: strength .25 -> .9, .5 -> .7, 1.0 -> .5
    assert value(r, "table", "spearman_strength", "all") == pytest.approx(-1)


def test_ordering_metrics_by_hand():
    es = evaluation.test_set(*study(n_test=4))
    weaker = {p: 1 - s / 2 for p, s in zip(es.derivatives["path"], es.derivatives["strength"])}
    owner = dict(zip(es.derivatives["path"], es.originals.set_index("id").loc[es.derivatives["original_id"], "path"]))

    class Fading(Table):
        def raw_from_features(self, fa, fb):  # own original: 1 - strength/2; anything else 0
            return weaker[fb] if owner.get(fb) == fa else 0.0

    r = evaluate(es, {"fading": Fading()})
    assert value(r, "fading", "spearman_strength", "all") == pytest.approx(-1)
    assert value(r, "fading", "spearman_within", "original") == pytest.approx(-1)
    assert value(r, "fading", "spearman_within", "original_family") == pytest.approx(-1)
    assert value(r, "fading", "moderate_above_radical", "all") == 1
    for fam in FAMILIES:
        assert value(r, "fading", "monotonicity_spearman", fam) == pytest.approx(-1)
        assert value(r, "fading", "falling_steps", fam) == 1


def test_near_duplicates_are_left_out_of_dedup_retrieval():
    es, table = hand_study()
    es.near_dup[:] = scoring.hamming(["0000", "0001", "ffff"]) <= 1  # A and B near-copies
    r = evaluation.evaluate_set(
        es, {"table": Table(table)}, config.EvaluationParams(n_boot=0, measures=["table"], reference="table", ks=[1])
    )
    assert value(r, "table", "R@1", "all") == pytest.approx(0.5)
    assert value(r, "table", "R@1", "dedup") == pytest.approx(1)  # without each other, A' and B' find their own


def test_hamming_by_hand():
    d = scoring.hamming(["00", "01", "ff", "f0"])
    assert d.tolist() == [[0, 1, 8, 4], [1, 0, 7, 5], [8, 7, 0, 4], [4, 5, 4, 0]]


# -- only the test split; features once -----------------------------------------------------------------------
def test_only_test_images_are_scored_and_each_described_once():
    manifest, pairs, trip = study()
    es = evaluation.test_set(manifest, pairs, trip)
    rec = Table()
    evaluate(es, {"rec": rec})
    test_ids = set(manifest.loc[manifest["split"] == "test", "id"])
    allowed = set(manifest.loc[manifest["split"] == "test", "path"]) | set(
        pairs.loc[pairs["original_id"].isin(test_ids), "path"]
    )
    distractors = set(es.extra["path"])  # other splits: copy-detection gallery items, nothing else
    assert set(rec.seen) == allowed | distractors and not (allowed & distractors)
    assert len(rec.seen) == len(set(rec.seen))  # each image's features once
    r = evaluate(es, {"rec": Table()})
    n_img = len(es.originals) + len(es.derivatives)
    touched = r.scores.pairs[(r.scores.pairs >= n_img).any(1)]
    assert (touched[:, 1] < n_img).all() and set(touched[:, 1]) <= set(es.derivatives["img"].iloc[es.copy_queries])
    assert not set(es.extra["original_id"]) & test_ids  # no test original or derivative is a distractor


def test_a_triplet_reaching_outside_test_is_an_error():
    manifest, pairs, trip = study()
    bad = trip.copy()
    i = bad.index[bad["split"] == "test"][0]
    bad.loc[i, "negative_id"] = manifest.loc[manifest["split"] == "train", "id"].iloc[0]
    with pytest.raises(ValueError, match="outside the test split"):
        evaluation.test_set(manifest, pairs, bad)


def test_flagged_derivatives_are_left_out():
    manifest, pairs, trip = study()
    pairs.loc[0, "black_flag"] = True
    es = evaluation.test_set(manifest, pairs, trip)
    assert pairs.loc[0, "pair_id"] not in set(es.derivatives["pair_id"])
    assert pairs.loc[0, "pair_id"] not in set(es.triplets["positive_id"])


def test_retrieval_gallery_sample_is_seeded_and_consistent():
    manifest, pairs, trip = study(n_test=10)
    cfg = config.EvaluationParams(retrieval_originals=4)
    a, b = (evaluation.test_set(manifest, pairs, trip, cfg, seed=3) for _ in range(2))
    assert len(a.gallery) == 4 and np.array_equal(a.gallery, b.gallery)
    owners = a.derivatives["orig"].to_numpy()[a.queries]
    assert np.array_equal(a.gallery[a.truth], owners)  # each query's answer is its own original


# -- the pieces ---------------------------------------------------------------------------------------------
def test_pair_head_measure_scores_in_batches_as_one_by_one():
    import torch

    emb = {f"i{k}": np.random.default_rng(k).normal(size=4) for k in range(5)}
    m = scoring.PairHeadMeasure(
        "ph", lambda imgs: np.stack([emb[i] for i in imgs]), lambda a, b: torch.sigmoid((a * b).sum(-1)), chunk=3
    )
    f = m.features(list(emb))
    a, b = np.array([0, 1, 2, 3, 4, 0]), np.array([1, 2, 3, 4, 0, 0])
    batch = m.raw_pairs(np.stack(f)[a], np.stack(f)[b])
    assert batch == pytest.approx([m.raw_from_features(f[i], f[j]) for i, j in zip(a, b)], abs=1e-6)
    assert ((batch > 0) & (batch < 1)).all()


@pytest.fixture(scope="module")
def image_study(tmp_path_factory):
    """Three test originals as real 40x40 images, a noisy and a shifted derivative of each."""
    d = tmp_path_factory.mktemp("eval-images")
    rng = np.random.default_rng(0)
    manifest, pairs, _ = study(n_test=3, n_other=0)
    for p in list(manifest["path"]):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / p.split("/")[-1])
    for row in pairs.itertuples():
        src = np.asarray(Image.open(d / f"{row.original_id}.png"), np.int16)
        noisy = src + rng.integers(-30, 30, src.shape)
        out = np.roll(src, int(row.strength * 8), 1) if row.family == "geometric" else noisy
        Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).save(d / row.path.split("/")[-1])
    manifest["path"] = [str(d / p.split("/")[-1]) for p in manifest["path"]]
    pairs["path"] = [str(d / p.split("/")[-1]) for p in pairs["path"]]
    return evaluation.test_set(manifest, pairs, build_triplets(pairs, manifest).triplets)


def test_shared_descriptor_pass_equals_each_measure_alone(image_study, monkeypatch):
    cfg = config.DescriptorParams(size=32, thumb_size=16, hog_cell=8, workers=1)
    group = {f: DescriptorMeasure(f, cfg, f) for f in ("colour", "ssim", "shape")}
    group["descriptor"] = DescriptorMeasure("descriptor", cfg)
    sc = scoring.score_all(image_study, group)
    imgs = image_study.images
    for k in (0, len(sc.pairs) // 2, len(sc.pairs) - 1):
        a, b = sc.pairs[k]
        for name, m in group.items():
            raw, s01 = m.scores(imgs[a], imgs[b])
            assert sc.raw[name][k] == pytest.approx(raw, abs=1e-9) and sc.s01[name][k] == pytest.approx(s01, abs=1e-9)
    monkeypatch.setattr(scoring, "PARALLEL_MIN_PAIRS", 1)  # worker processes: the same numbers
    par = scoring.score_all(image_study, group, workers=2)
    for name in group:
        assert np.allclose(par.raw[name], sc.raw[name])


# -- a run: skipped measures, registered loaders, files -----------------------------------------------------------
def test_unavailable_measures_are_skipped_and_listed(run_dir):
    loaded, skipped = scoring.load_measures(
        [
            "descriptor",
            "descriptor_fitted",
            "clip",
            "clip_siamese",
            "resnet",
            "resnet_finetuned",
            "resnet_siamese",
            "resnet_regression",
        ],
        run_dir,
    )
    assert list(loaded) == ["descriptor"]
    assert list(skipped["measure"]) == [
        "descriptor_fitted",
        "clip",
        "clip_siamese",
        "resnet",
        "resnet_finetuned",
        "resnet_siamese",
        "resnet_regression",
    ]
    assert skipped["reason"].str.len().gt(10).all()
    with pytest.raises(MeasureUnavailableError):
        registry.load_measure("resnet_finetuned", run_dir)


def test_resnet_measures_from_a_run(run_dir, image_study):
    import torch

    from artsim_lib import models
    from artsim_lib.measures import trained
    from artsim_lib.models import heads

    P = config.load_params("smoke", ["evaluation.batch_size=2"])
    P.run.root.mkdir(parents=True, exist_ok=True)
    P.run.params_file.write_text(P.to_yaml())
    with pytest.raises(MeasureUnavailableError, match="resnet"):
        registry.load_measure("resnet", run_dir)  # the tiny checkpoint is not built yet
    models.ensure_tiny_checkpoints(P, ["resnet"])
    imgs = image_study.images[:3]
    before = registry.load_measure("resnet", run_dir)
    emb = before.embed(imgs + imgs[:1])  # [4, D]
    assert np.allclose(np.linalg.norm(emb, axis=1), 1) and emb[0] @ emb[3] == pytest.approx(1)
    clf, proc = models.load_resnet(P.model_ref("resnet"))
    trained.save_checkpoint(clf, proc, P.run.root / "finetune" / "best", {"complete": True})
    after = registry.load_measure("resnet_finetuned", run_dir)
    assert np.allclose(after.embed(imgs), heads.resnet_embed(clf, proc, imgs).numpy(), atol=1e-5)
    for variant, name in (("regression", "resnet_regression"), ("triplet", "resnet_siamese")):
        torch.manual_seed(0)
        model = heads.ResNetSiamese(clf.resnet, [8], 4, 0.0, variant)
        model.processor = proc
        trained.save_resnet_siamese(
            model,
            P.run.root / "siamese" / f"resnet-{variant}",
            {"variant": variant, "hidden": [8], "out_dim": 4, "dropout": 0.0, "tau": 0.07, "learn_tau": False},
        )
        m = registry.load_measure(name, run_dir)
        direct = model.eval().similarity(imgs, imgs[::-1]).numpy()
        fa, fb = m.features(imgs), m.features(imgs[::-1])
        assert [m.raw_from_features(a, b) for a, b in zip(fa, fb)] == pytest.approx(direct, abs=1e-5)


def test_outputs_have_the_promised_columns(run_dir):
    P = config.load_params("smoke", ["evaluation.n_boot=20"])
    es, table = hand_study()
    r = evaluation.evaluate_set(
        es,
        {"descriptor": Table(default=0.5, name="d"), "table": Table(table)},
        P.evaluation.model_copy(update={"measures": ["descriptor", "table"]}),
        P.seed,
        skipped=pd.DataFrame({"measure": ["clip"], "reason": ["no model"]}),
    )
    files = evaluation.write_outputs(r, P)
    long = pd.read_parquet(files["metrics"])
    assert {"measure", "metric", "value", "lo", "hi", "n", "subset"} <= set(long.columns)
    assert set(long["measure"]) == {"descriptor", "table"}
    per_style = pd.read_parquet(files["per_style"])
    assert {"measure", "style", "triplet_acc", "R@1"} <= set(per_style.columns)
    assert set(per_style["style"]) == {"s1", "s2"}
    doc = json.loads(files["json"].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert doc["skipped"] == [{"measure": "clip", "reason": "no model"}]
    assert [row["measure"] for row in doc["headline"]["rows"]] == ["descriptor", "table"]
    assert doc["headline"]["rows"][0]["text"]["MSE"] == "reference"
    assert doc["provenance"]["seed"] == P.seed and "git_commit" in doc["provenance"] and doc["provenance"]["packages"]
    assert doc["params"]["n_boot"] == 20 and doc["test_set"]["originals"] == 3


def test_figures_draw_and_show_the_worst_retrievals():
    import matplotlib.pyplot as plt

    from artsim_lib.plots import evaluation as eplots

    es, table = hand_study()
    cfg = config.EvaluationParams(n_boot=10, measures=["table", "half"], reference="half", ks=[1, 2])
    r = evaluation.evaluate_set(es, {"table": Table(table), "half": Table(default=0.5, name="half")}, cfg)
    cases = eplots.retrieval_cases(r, "table", n_worst=1)
    assert list(cases["rank"]) == [1, 2]  # a success (C'), then the worst query (B', beaten by A)
    assert es.derivatives["pair_id"].iloc[es.queries[cases["q"].iloc[1]]] == "B'"
    groups = eplots.pair_groups(r, "table")
    assert sorted(set(groups["group"])) == ["moderate", "negative: random", "negative: same_style", "radical"]
    figs = [
        eplots.forest(r),
        eplots.score_distributions(r),
        eplots.similarity_heatmaps(r, ["table"], 2),
        eplots.retrieval_examples(r, "table", 1, top=2),
        eplots.example_pairs(r, ["A'", "B'"]),
        eplots.style_bars(r),
        eplots.strength_curves(r),
    ]  # images that do not exist show as red tiles
    assert all(isinstance(f, plt.Figure) for f in figs)
    plt.close("all")


# -- geometry: what padding alone gives away ----------------------------------------------------------------
def geometry_study(tmp_path, mode):
    """Eight test originals of different aspect ratios written by stage 02's ``fit`` in ``mode``,
    each with two derivatives that keep its frame (noise on the picture, as img2img keeps the bars)."""
    from artsim_lib.stages import s02_preprocess as pp

    manifest, pairs, trip = study(n_test=8, n_other=0)
    rng = np.random.default_rng(0)
    sides = {o: (int(w), 60) for o, w in zip(manifest["id"], np.linspace(30, 140, len(manifest)))}
    paths = {}
    for oid, (w, h) in sides.items():
        src = Image.fromarray(rng.integers(20, 255, (h, w, 3), dtype=np.uint8))
        paths[oid] = tmp_path / f"{oid}.png"
        pp.fit(src, 48, mode).save(paths[oid])
        for row in pairs[pairs["original_id"] == oid].itertuples():
            noisy = np.asarray(pp.fit(Image.fromarray(rng.integers(20, 255, (h, w, 3), dtype=np.uint8)), 48, mode))
            Image.fromarray(noisy).save(tmp_path / f"{row.pair_id.replace(':', '_')}.png")
    manifest["path"] = [str(paths[i]) for i in manifest["id"]]
    pairs["path"] = [str(tmp_path / f"{p.replace(':', '_')}.png") for p in pairs["pair_id"]]
    return evaluation.test_set(manifest, pairs, trip, config.EvaluationParams(n_boot=0, copy_absent_share=0))


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_geometry_alone_wins_with_padding_and_is_chance_without(tmp_path, mode):
    from artsim_lib.measures.base import GeometryMeasure

    es = geometry_study(tmp_path, mode)
    cfg = config.EvaluationParams(n_boot=0, measures=["geometry"], reference="geometry", copy_absent_share=0)
    r = evaluation.evaluate_set(es, {"geometry": GeometryMeasure()}, cfg)
    r1, chance = value(r, "geometry", "R@1", "all"), 1 / len(es.gallery)
    if mode == "letterbox":  # the pictures are noise: only the bars can tell the originals apart
        assert r1 == 1
    else:  # no bars: every image has the same geometry, a constant measure
        assert r1 == pytest.approx(chance)
        assert value(r, "geometry", "triplet_acc", "random") == 0.5


def test_copy_detection_constant_is_chance_and_paired_marks_need_a_real_difference():
    es = evaluation.test_set(*study(n_test=12, styles=3), config.EvaluationParams(copy_absent_share=0.25))
    absent = es.derivatives["original_id"].to_numpy()[es.copy_queries][es.copy_truth < 0]
    assert len(set(absent)) == 3 and len(es.extra) > 0
    const = EmbeddingMeasure("const", lambda imgs: np.ones((len(imgs), 3)), pass_sources=True)
    ms = {"oracle": one_hot_oracle(es), "const": const, "twin": one_hot_oracle(es)}
    cfg = config.EvaluationParams(n_boot=60, measures=list(ms), reference="oracle", copy_absent_share=0.25)
    r = evaluation.evaluate_set(es, ms, cfg)
    assert value(r, "const", "µAP", "copy") == pytest.approx(r.chance()["µAP copy"])
    assert value(r, "const", "recall_at_precision", "copy") == r.chance()["R@P90 copy"] == 0
    assert value(r, "oracle", "µAP", "copy") == 1  # absent queries' best matches are distractors, all below
    n = r.metrics.set_index(["measure", "metric", "subset"])["n"]
    assert len(es.queries) == 48 and n[("oracle", "R@1", "all")] == 12  # independent originals, not queries
    assert n[("oracle", "µAP", "copy")] == 12  # absent originals' queries count too
    # oracle and twin are equal: no 'best' although both beat const everywhere
    assert all(v == [] for v in r.best().values())
    r2 = evaluation.evaluate_set(
        es, {"oracle": ms["oracle"], "const": const}, cfg.model_copy(update={"measures": ["oracle", "const"]})
    )
    assert r2.best()["µAP copy"] == ["oracle"] and r2.best()["R@1"] == ["oracle"]
    assert r2.paired["excludes_0"].all() and (r2.paired["diff"] > 0).all()


def test_copy_detection_uses_only_the_sampled_test_originals():
    manifest, pairs, trip = study(n_test=10)
    cfg = config.EvaluationParams(retrieval_originals=4, copy_absent_share=0.25, copy_queries_per_original=1)
    es = evaluation.test_set(manifest, pairs, trip, cfg, seed=3)
    owners = es.derivatives["orig"].to_numpy()[es.copy_queries]
    assert set(owners) == set(es.gallery) and len(es.copy_queries) == 4  # one query per sampled original
    assert (es.copy_truth < 0).sum() == 1  # a quarter of 4 left absent
    present = es.copy_gallery[es.copy_gallery < len(es.originals)]
    assert set(present) < set(es.gallery) and len(present) == 3


def test_nan_scores_are_counted_and_never_win():
    es, table = hand_study()
    table = dict(table)
    table[frozenset(("B", "B'"))] = float("nan")  # B' against its own original: NaN
    cfg = config.EvaluationParams(n_boot=0, measures=["table"], reference="table", ks=[1])
    r = evaluation.evaluate_set(es, {"table": Table(table)}, cfg)
    assert value(r, "table", "nan_scores", "all") == 1
    q = r.tables["table"]["queries"]
    assert q["rank"].iloc[1] == 3  # B' ranks its NaN original last, never first


def test_seed_text_image_accuracy_on_prompted_derivatives_only():
    es, _ = hand_study()
    es.derivatives.loc[es.derivatives["pair_id"] == "A'", "prompt"] = "a red sky"
    captions = pd.DataFrame({"id": ["A", "B", "C"], "caption": ["sky", "sea", "tree"]})
    # one-hot spaces: originals A, B, C and the texts; "a red sky" sits with A, "sea" with B
    img = {"A": [1, 0, 0], "B": [0, 1, 0], "C": [0, 0, 1]}
    txt = {"a red sky": [1, 0, 0], "sea": [0, 1, 0], "tree": [0, 0, 1], "sky": [1, 0, 0]}
    out = evaluation.text_image_binary(es, lambda ps: [img[p] for p in ps], lambda ts: [txt[x] for x in ts], captions)
    # only t1 (A, A' prompted "a red sky", negative B captioned "sea"): i2t and t2i both right
    assert out.set_index("negative_kind").loc["all", ["triplets", "i2t", "t2i", "chance"]].tolist() == [1, 1, 1, 0.5]
    es.derivatives["prompt"] = None
    assert evaluation.text_image_binary(es, None, None, captions).empty  # augment: no prompts


def test_the_run_level_text_image_and_family_helpers_say_when_they_do_not_apply():
    from types import SimpleNamespace

    es, _ = hand_study()
    result = SimpleNamespace(es=es, measures={"table": None})  # neither clip nor clip_siamese ran
    assert evaluation.seed_text_image(None, result).empty
    assert evaluation.leave_one_family_out_for_run(None, result) is None


def test_notebook_08_heatmaps_show_one_test_original_per_style_then_its_own_derivatives():
    from artsim_lib.plots import evaluation as eplots

    rows = [
        (split, o, style, f"{o}:{lev}", lev, fam)
        for split, o, style in [
            ("test", "o0", "Cubism"),
            ("test", "o1", "Cubism"),
            ("test", "o2", "Baroque_long"),
            ("train", "o3", "Ukiyo_e"),
        ]
        for lev, fam in [("moderate", "photometric"), ("radical", "geometric")]
    ]
    trip = pd.DataFrame(rows, columns=["split", "anchor_id", "style", "positive_id", "level", "family"])
    trip = trip.assign(anchor_path=trip["anchor_id"] + ".png", positive_path=trip["positive_id"] + ".png")
    paths, labels = eplots.pick_triplet_heatmap_images(trip, 4, seed=3)
    assert len(paths) == len(labels) == 6  # two test styles: two originals, each with two derivatives
    assert labels[0].startswith("A original (") and labels[1:3] == ["A moderate photometric", "A radical geometric"]
    assert labels[3] in ("B original (Cubism)", "B original (Baroque_long)") and labels[0] != labels[3]
    for k in (0, 3):
        assert paths[k + 1 : k + 3] == [paths[k].replace(".png", f":{lev}.png") for lev in ("moderate", "radical")]
    assert (paths, labels) == eplots.pick_triplet_heatmap_images(trip, 4, seed=3)  # seeded


# -- leave one family out: on synthetic embeddings, a family whose derivatives only a head trained on it
# can recognise shows a drop once held out; the others do not ------------------------------------------------
def lofo_study(n_orig=80, dim=8, seed=0):
    """Originals as random vectors; 'easy' derivatives are noisy copies; 'hidden' derivatives have
    half their coordinates sign-flipped (a head has to learn to look past them)."""
    rng = np.random.default_rng(seed)
    rot = np.diag([1.0] * (dim // 2) + [-1.0] * (dim - dim // 2))
    ids, emb, man, trip = [], [], [], []
    split = np.array(["train"] * (n_orig // 2) + ["val"] * (n_orig // 4) + ["test"] * (n_orig - n_orig * 3 // 4))
    base = rng.normal(size=(n_orig, dim))
    for i in range(n_orig):
        oid = f"o{i:02d}"
        ids.append(oid)
        emb.append(base[i])
        man.append(dict(id=oid, style=f"s{i % 2}", artist=f"a{i % 5}", split=split[i], path=oid))
    for i in range(n_orig):
        for fam in ("easy", "hidden"):
            pid = f"o{i:02d}:{fam}"
            v = base[i] + rng.normal(0, 0.3, dim) if fam == "easy" else rot @ base[i]
            ids.append(pid)
            emb.append(v)
            same = [j for j in range(n_orig) if split[j] == split[i] and j != i]
            j = same[rng.integers(len(same))]
            trip.append(
                dict(
                    triplet_id=f"t{i}{fam}",
                    anchor_id=f"o{i:02d}",
                    positive_id=pid,
                    negative_id=f"o{j:02d}",
                    negative_kind="random",
                    family=fam,
                    backend="augment",
                    split=split[i],
                    style=f"s{i % 2}",
                    artist=f"a{i % 5}",
                    negative_path=f"o{j:02d}",
                )
            )
    table = pd.DataFrame({"id": ids, "embedding": [np.asarray(e, np.float32) for e in emb]})
    return pd.DataFrame(trip), table, pd.DataFrame(man)


def test_a_family_only_training_can_teach_drops_when_held_out():
    import torch

    trip, table, manifest = lofo_study()
    P = config.load_params(
        "smoke",
        [
            "siamese.epochs=40",
            "siamese.hidden=[32]",
            "siamese.out_dim=8",
            "siamese.dropout=0.0",
            "evaluation.n_boot=100",
            "siamese.patience=40",
        ],
    )
    torch.manual_seed(0)
    tab = evaluation.leave_one_family_out(P, trip, table, manifest)
    assert set(tab["trained_without"]) == {"none", "easy", "hidden"} and tab["held_out"].sum() == 2
    drop = evaluation.held_out_drop(tab)
    assert drop.loc["hidden", "drop"] > 0.1 and drop.loc["hidden", "excludes_0"]  # learnt, not seen
    assert drop.loc["hidden", "drop"] > drop.loc["easy", "drop"]
    assert {"lo", "hi", "n"} <= set(drop.columns) and (drop["n"] == 20).all()  # 20 test originals


# -- the stage on a run: its inputs are checked, never made; load reads the metrics back --------------------
def test_check_inputs_names_the_stage_to_run_and_trains_nothing(run_dir):
    from artsim_lib.io import paths
    from artsim_lib.io.artifacts import StageNotRunError
    from artsim_lib.measures import trained
    from artsim_lib.stages import s02_preprocess, s05_generation, s06_descriptors, s07_finetune

    measures = [
        "descriptor",
        "descriptor_fitted",
        "effnet_lite0_finetuned",
        "clip_siamese",
        "effnet_lite0_siamese",
        "resnet_regression",
        "sscd",
    ]
    P = config.load_params("smoke", [f"evaluation.measures={json.dumps(measures)}", "finetune.backbone=effnet_lite0"])

    def stage_asked():
        with pytest.raises(StageNotRunError) as err:
            evaluation.check_inputs(P)
        return err.value.stage

    assert stage_asked() == "02"
    manifest, pairs, trip = study()
    paths.write_parquet(manifest, P.run.manifest, s02_preprocess.manifest_key(P))
    assert stage_asked() == "05"
    paths.write_parquet(pairs, s05_generation.pairs_path(P), s05_generation.generation_meta(P))
    paths.write_parquet(trip, s05_generation.triplets_path(P), {"made with": "other params"})
    with pytest.raises(StageNotRunError, match="made with other params: run stage 05 first"):
        evaluation.check_inputs(P)
    paths.write_parquet(trip, s05_generation.triplets_path(P), s05_generation.triplet_meta(P))
    assert stage_asked() == "06"  # descriptor_fitted: stage 06's pair table
    paths.write_parquet(
        pd.DataFrame({"x": [1]}),
        P.run.root / "descriptors" / "pair_similarity.parquet",
        s06_descriptors.stage_meta(P, trip),
    )
    assert stage_asked() == "07"  # the fine-tuned and siamese CNN rows
    info = trained.finetuned_dir(P.run.root) / trained.FINETUNE_INFO
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"complete": True, "key": {"other": "params"}}))
    with pytest.raises(StageNotRunError, match="made with other params: run stage 07"):
        evaluation.check_inputs(P)
    info.write_text(json.dumps({"complete": True, "key": s07_finetune.finetune_key(P)}, default=str))
    assert stage_asked() == "08"  # the CLIP heads and the CNN siamese, as stage 08's load checks them
    from artsim_lib.io.paths import json_roundtrip
    from artsim_lib.models.heads import VARIANTS, head_config

    for share in P.siamese.train_splits:
        head = trained.clip_head_dir(P.run.root, trained.split_name(share))
        head.mkdir(parents=True)
        (head / "config.json").write_text(json.dumps(json_roundtrip(head_config(P.siamese, 512))))
    assert stage_asked() == "08"  # the CNN siamese on stage 07's backbone is still missing
    for variant in VARIANTS:
        saved = trained.siamese_dir(P.run.root, "effnet_lite0", variant)
        saved.mkdir(parents=True)
        info = {"siamese_params": P.siamese.model_dump(mode="json"), "seed": P.seed + 1}
        (saved / trained.SIAMESE_CONFIG).write_text(json.dumps(info))
    with pytest.raises(StageNotRunError, match="made with other params: run stage 08"):
        evaluation.check_inputs(P)  # another seed
    for variant in VARIANTS:
        info = {"siamese_params": P.siamese.model_dump(mode="json"), "seed": P.seed}
        (trained.siamese_dir(P.run.root, "effnet_lite0", variant) / trained.SIAMESE_CONFIG).write_text(json.dumps(info))
    table = evaluation.check_inputs(P)
    assert list(table.columns) == ["input", "status", "path"] and (table["status"].iloc[:-1] == "found").all()
    # resnet_regression (another backbone) and sscd are no stage's model here: skipped when they cannot load
    assert table["input"].iloc[-1] == "no stage's model (descriptor, sscd)"
    stage07 = table.loc[table["input"].str.startswith("07"), "input"].item()
    assert "resnet_regression" in stage07  # reads stage 07, as before; skipped at load
    assert not (P.run.root / "models").exists()  # nothing was built or trained


def test_load_reads_the_written_metrics_or_says_run_09(run_dir):
    from artsim_lib.io.artifacts import StageNotRunError

    P = config.load_params("smoke", ["evaluation.n_boot=5"])
    with pytest.raises(StageNotRunError, match="run stage 09 first"):
        evaluation.load(P)
    es, table = hand_study()
    r = evaluation.evaluate_set(
        es,
        {"descriptor": Table(default=0.5, name="d"), "table": Table(table)},
        P.evaluation.model_copy(update={"measures": ["descriptor", "table"]}),
        P.seed,
    )
    evaluation.write_outputs(r, P)
    pd.testing.assert_frame_equal(evaluation.load(P), r.metrics)
    other = config.load_params("smoke", ["evaluation.n_boot=6"])
    with pytest.raises(StageNotRunError, match="made with other params"):
        evaluation.load(other)


def test_table_cells_read_value_and_interval():
    es, table = hand_study()
    cfg = config.EvaluationParams(n_boot=20, measures=["table", "half"], reference="half", ks=[1, 2])
    r = evaluation.evaluate_set(es, {"table": Table(table), "half": Table(default=0.5, name="half")}, cfg)
    auc = r.table(["auc"], "subset")
    assert list(auc.index) == ["table", "half"] and list(auc.columns) == ["hard", "random"]
    row = r.metrics.set_index(["measure", "metric", "subset"]).loc[("table", "auc", "hard")]
    assert auc.loc["table", "hard"] == f"{row['value']:.3f} [{row['lo']:.3f}, {row['hi']:.3f}]"
    err = r.table(["mse", "mae"])
    assert (err.loc["half"] == "reference").all() and err.columns.names == ["metric", "subset"]
    assert evaluation.ci_text(0.5, float("nan"), float("nan")) == "0.500"  # no interval drawn: the value alone
