"""Stage 08: the CLIP siamese (shared weights, frozen CLIP, the head, τ, training, splits, retrieval, saving),
the CNN siamese on tiny colour triplets (what trains, both variants, save/load) and the stage's run/load."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from artsim_lib import config
from artsim_lib.config import load_params
from artsim_lib.core import losses, metrics
from artsim_lib.io.artifacts import StageNotRunError
from artsim_lib.measures import embeddings, registry, trained
from artsim_lib.models import heads, load_resnet
from artsim_lib.stages import s08_siamese as siamese
from helpers import colour_image

STYLES, ARTISTS = ["Cubism", "Baroque", "Ukiyo_e"], ["ann", "bob", "cyd", "dee"]


def cfg(**kw):
    base = {
        "kind": "mlp",
        "in_dim": 16,
        "hidden": [32],
        "out_dim": 8,
        "dropout": 0.0,
        "tokens": 4,
        "layers": 1,
        "heads": 2,
        "tau": 0.1,
        "learn_tau": False,
        "tau_min": 0.01,
        "tau_max": 1.0,
    }
    return {**base, **kw}


def params(**kw):
    S = load_params("smoke").siamese
    return S.model_copy(update={"epochs": 60, "batch_size": 16, "lr": 1e-2, "patience": 60, **kw})


# -- a tiny study: originals on disk, PIL derivatives, triplets with the stage-06 contract ------------


def make_manifest(n=40, seed=0, root=None):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "id": [f"o{i:03d}" for i in range(n)],
            "style": [STYLES[i % 3] for i in range(n)],
            "artist": [ARTISTS[i % 4] for i in range(n)],
            "split": rng.choice(["train", "val", "test"], n, p=[0.7, 0.15, 0.15]),
        }
    )
    df["path"] = [str(root / f"{i}.png") if root else f"/x/{i}.png" for i in df["id"]]
    if root:
        for i, p in enumerate(df["path"]):
            blocks = np.random.default_rng(i).integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(blocks).resize((48, 48), Image.Resampling.NEAREST).save(p)
    return df


def make_triplets(manifest, seed=0):
    """Two derivatives per original, one negative of each kind from the anchor's split."""
    rng, rows = np.random.default_rng(seed), []
    for o in manifest.itertuples():
        same = manifest[(manifest["split"] == o.split) & (manifest["id"] != o.id)]
        pools = {
            "random": same[same["style"] != o.style],
            "same_style": same[same["style"] == o.style],
            "same_artist": same[same["artist"] == o.artist],
        }
        for d in range(2):
            pid = f"{o.id}:{d}"
            for kind, pool in pools.items():
                if len(pool):
                    neg = pool.iloc[rng.integers(len(pool))]
                    rows.append(
                        {
                            "triplet_id": f"{pid}:{kind}",
                            "anchor_id": o.id,
                            "anchor_path": o.path,
                            "positive_id": pid,
                            "positive_path": o.path.replace(".png", f"-{d}.png"),
                            "negative_id": neg["id"],
                            "negative_path": neg["path"],
                            "negative_kind": kind,
                            "level": "moderate",
                            "family": "photometric",
                            "strength": 0.25,
                            "backend": "augment",
                            "split": o.split,
                            "style": o.style,
                            "artist": o.artist,
                        }
                    )
    return pd.DataFrame(rows)


def write_derivatives(triplets):
    ops = [lambda im: ImageEnhance.Brightness(im).enhance(1.3), lambda im: im.filter(ImageFilter.GaussianBlur(1))]
    for t in triplets.drop_duplicates("positive_id").itertuples():
        ops[int(t.positive_id[-1])](Image.open(t.anchor_path).convert("RGB")).save(t.positive_path)


# -- weight sharing, frozen CLIP, the head, τ --------------------------------------------------------------


def test_the_three_branches_share_one_head_and_its_gradients_add_up():
    torch.manual_seed(0)
    model = heads.Siamese(heads.build_head(cfg()), heads.Temperature(0.1)).eval()
    a, p, n = torch.randn(3, 5, 16).unbind(0)
    loss, _, _ = losses.triplet_loss(*model(a, p, n), 0.1)
    loss.backward()
    together = [q.grad.clone() for q in model.head.parameters()]
    assert len(together) == len(list(model.parameters())) - 1  # the head's and τ's, nothing else

    def branch_grads(i):  # the same loss with only branch i differentiable
        model.zero_grad()
        z = [model.embed(x) if j == i else model.embed(x).detach() for j, x in enumerate((a, p, n))]
        losses.triplet_loss(*z, 0.1)[0].backward()
        return [q.grad.clone() for q in model.head.parameters()]

    per_branch = [branch_grads(i) for i in range(3)]
    for g, g0, g1, g2 in zip(together, *per_branch):
        assert torch.allclose(g, g0 + g1 + g2, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in per_branch[2])  # the negative's branch counts too


def test_clip_stays_frozen_while_the_head_trains_through_it(tiny_models):
    enc = embeddings.open_encoder(tiny_models("clip"))
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    head = heads.build_head(cfg(in_dim=enc.dim))
    head_before = [q.clone() for q in head.parameters()]
    model = heads.Siamese(head, heads.Temperature(0.1), embeddings.ClipEncoder(enc.model))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    x = torch.randn(3, 4, 3, 64, 64)
    model.train()
    for _ in range(3):
        loss, _, _ = losses.triplet_loss(*model(*x), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not any(q.requires_grad for q in enc.model.parameters())
    assert not enc.model.training  # model.train() does not reach into CLIP (dropout stays off)
    after = enc.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # byte-identical
    assert any(not torch.equal(b, q) for b, q in zip(head_before, head.parameters()))


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_the_head_outputs_unit_vectors_of_out_dim(kind):
    torch.manual_seed(0)
    head = heads.build_head(cfg(kind=kind, hidden=[8], out_dim=6)).eval()
    z = head(torch.randn(7, 16))
    assert z.shape == (7, 6)
    assert torch.allclose(z.norm(dim=1), torch.ones(7), atol=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        heads.build_head(cfg(kind="transformer", tokens=5))


def test_a_learnt_tau_moves_and_stays_positive_within_its_bounds():
    fixed = heads.Temperature(0.07)
    assert not fixed.log_tau.requires_grad and fixed().item() == pytest.approx(0.07)
    tau = heads.Temperature(0.07, learn=True, tau_min=0.05, tau_max=0.5)
    opt = torch.optim.SGD(tau.parameters(), lr=5.0)
    s_pos, s_neg = torch.tensor([0.2, -0.1]), torch.tensor([0.3, 0.4])  # wrong order: a larger τ helps
    seen = []
    for _ in range(20):
        opt.zero_grad()
        losses.infonce_triplet_loss(s_pos, s_neg, tau()).backward()
        opt.step()
        tau.clamp_()
        seen.append(tau().item())
    assert seen[0] > 0.07 and all(0.05 <= t <= 0.5 for t in seen) and seen[-1] == pytest.approx(0.5)


def separable(n=120, seed=0):
    """Triplets a raw cosine gets wrong: the negative shares the anchor's loud 'distractor'
    dimensions, the positive only its quiet 'signal' dimensions."""
    g = torch.Generator().manual_seed(seed)
    sig, dis = torch.randn(n, 4, generator=g), 3 * torch.randn(n, 12, generator=g)
    noise = lambda s: 0.05 * torch.randn(n, s, generator=g)  # noqa: E731
    anchor = torch.cat([sig, dis], 1)
    positive = torch.cat([sig + noise(4), 3 * torch.randn(n, 12, generator=g)], 1)
    negative = torch.cat([torch.randn(n, 4, generator=g), dis + noise(12)], 1)
    emb = torch.nn.functional.normalize(torch.cat([anchor, positive, negative]), dim=1)
    r = torch.arange(n)
    return siamese.TripletTensors(emb, r, r + n, r + 2 * n, r % 2 == 0, r)


def test_training_on_a_separable_set_raises_triplet_accuracy():
    data = separable()
    raw = metrics.triplet_accuracy(*losses.triplet_similarities(data.emb[data.a], data.emb[data.p], data.emb[data.n]))
    assert raw < 0.2
    train, val = np.arange(0, 90), np.arange(90, 120)
    fit = siamese.fit_head(data, train, val, cfg(learn_tau=True), params(in_batch_negatives=True), seed=0)
    h = fit.history
    assert list(h.columns[:5]) == ["epoch", "split", "loss", "acc_random", "acc_hard"]
    val_h = h[h["split"] == "val"]
    first, best = val_h.iloc[0], val_h[val_h["epoch"] == fit.best_epoch].iloc[0]
    assert best["acc_random"] >= 0.9 and best["acc_hard"] >= 0.9
    assert best["loss"] < first["loss"]
    assert fit.best_epoch == val_h.loc[val_h["loss"].idxmin(), "epoch"]  # the kept weights are the best
    assert siamese.evaluate(fit.model, data, val)["loss"] == pytest.approx(best["loss"], rel=1e-5)
    assert h["tau"].iloc[-1] != pytest.approx(0.1) and (h["tau"] > 0).all()


def test_training_is_reproducible_with_a_seed():
    data, S = separable(seed=2), params(epochs=5, in_batch_negatives=True)
    runs = [
        siamese.fit_head(data, np.arange(90), np.arange(90, 120), cfg(learn_tau=True), S, seed=s) for s in (3, 3, 4)
    ]
    same = [r.history.drop(columns="seconds") for r in runs]
    pd.testing.assert_frame_equal(same[0], same[1])
    assert not same[0].equals(same[2])


def test_early_stopping_ends_training_before_the_last_epoch():
    data = separable(seed=1)
    fit = siamese.fit_head(data, np.arange(90), np.arange(90, 120), cfg(), params(epochs=200, patience=2, lr=0.05), 0)
    assert fit.history["epoch"].max() < 200
    assert fit.history["epoch"].max() == fit.best_epoch + 2


def test_in_batch_negatives_of_the_same_painting_are_masked():
    za = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    zp, zn = za.clone(), -za
    base, _, _ = losses.triplet_loss(za, zp, zn, 0.1)
    # Every positive is its own anchor's and all four anchors are one painting: nothing to add.
    masked, _, _ = losses.triplet_loss(za, zp, zn, 0.1, torch.zeros(4, dtype=torch.long), in_batch=True)
    assert masked.item() == pytest.approx(base.item(), rel=1e-6)
    unmasked, _, _ = losses.triplet_loss(za, zp, zn, 0.1, torch.arange(4), in_batch=True)
    assert unmasked.item() > base.item()


# -- retrieval -------------------------------------------------------------------------------------------------


def test_text_image_accuracy_on_hand_made_cases():
    eye = np.eye(6)
    assert metrics.retrieval_accuracy(eye, eye) == (1.0, 1.0)
    shifted = np.roll(eye, 1, axis=0)  # every caption belongs to the next image
    assert metrics.retrieval_accuracy(eye, shifted) == (0.0, 0.0)
    flat = np.ones((6, 4))  # every similarity ties: exactly chance
    assert metrics.retrieval_accuracy(flat, flat) == pytest.approx((1 / 6, 1 / 6))
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((4000, 16))
    out = metrics.batched_retrieval(noise, rng.standard_normal((4000, 16)), n=8)
    assert out["chance"] == pytest.approx(1 / 8) and out["pairs"] == 4000
    assert out["i2t"] == pytest.approx(1 / 8, abs=0.02) and out["t2i"] == pytest.approx(1 / 8, abs=0.02)
    assert metrics.batched_retrieval(eye, eye, n=4) == {"pairs": 6, "N": 4, "i2t": 1.0, "t2i": 1.0, "chance": 1 / 6}


def seed_ti_case():
    r = 2**-0.5
    table = pd.DataFrame(
        {
            "id": ["o0", "o1", "o2", "o3"],
            "embedding": [np.array([1.0, 0]), np.array([0, 1.0]), np.array([r, r]), np.array([1.0, 0])],
        }
    )
    texts = {"pa": [1.0, 0], "pb": [1.0, 0], "pc": [0, 1.0], "c0": [1.0, 0], "c1": [0, 1.0]}
    captions = pd.DataFrame({"id": ["o0", "o1", "o2"], "caption": ["c0", "c1", "c2"]})  # o3 has none
    rows = [
        ("o0", "o1", "train", "random", "d0"),
        ("o1", "o0", "train", "same_style", "d1"),
        ("o2", "o0", "val", "random", "d2"),
        ("o2", "o3", "val", "same_artist", "d3"),
        ("o2", "o1", "val", "random", "d4"),
    ]
    triplets = pd.DataFrame(rows, columns=["anchor_id", "negative_id", "split", "negative_kind", "positive_id"])
    prompts = pd.Series({"d0": "pa", "d1": "pb", "d2": None, "d3": "pc", "d4": "pc"})
    return table, triplets, prompts, captions, (lambda ts: np.array([texts[t] for t in ts]).reshape(-1, 2))


def test_seed_binary_text_image_accuracy_by_hand():
    table, triplets, prompts, captions, embed = seed_ti_case()
    out = siamese.seed_text_image_accuracy(embed, table, triplets, prompts, captions)
    # d2 has no prompt (augment), d3's negative no caption: both left out. By hand, with ties at 1/2:
    # d0: i2t cos(o0,pa)=1 > cos(o0,c1)=0, t2i cos(pa,o0)=1 > cos(pa,o1)=0      -> 1, 1
    # d1: i2t cos(o1,pb)=0 = cos(o1,c0)=0,  t2i cos(pb,o1)=0 < cos(pb,o0)=1      -> 1/2, 0
    # d4: i2t cos(o2,pc)=.71 = cos(o2,c1),  t2i cos(pc,o2)=.71 < cos(pc,o1)=1    -> 1/2, 0
    assert list(zip(out["split"], out["negative_kind"])) == [
        ("train", "all"),
        ("train", "random"),
        ("train", "same_style"),
        ("val", "all"),
        ("val", "random"),
    ]
    assert list(out["triplets"]) == [2, 1, 1, 1, 1] and list(out["originals"]) == [2, 1, 1, 1, 1]
    assert out["i2t"].tolist() == pytest.approx([0.75, 1, 0.5, 0.5, 0.5])
    assert out["t2i"].tolist() == pytest.approx([0.5, 1, 0, 0, 0])
    assert (out["chance"] == 0.5).all()
    none = siamese.seed_text_image_accuracy(embed, table, triplets, pd.Series(dtype=object), captions)
    assert none.empty and list(none.columns) == siamese.SEED_TI_COLUMNS  # augment: no prompts
    with pytest.raises(KeyError, match="no cached CLIP embedding"):
        siamese.seed_text_image_accuracy(embed, table[table["id"] != "o1"], triplets, prompts, captions)


def test_text_image_table_shows_both_forms_with_their_chance():
    table, triplets, prompts, captions, embed = seed_ti_case()
    binary = siamese.seed_text_image_accuracy(embed, table, triplets, prompts, captions)
    eye = np.eye(6)
    nway = pd.DataFrame([{"split": "train", **metrics.batched_retrieval(eye, eye, n=3)}])
    out = siamese.text_image_table(nway, binary)
    assert list(out["split"]) == ["train", "val", "train"]
    assert out["chance"].tolist() == pytest.approx([0.5, 0.5, 1 / 3])
    assert out["n"].tolist() == [2, 1, 6] and out["i2t"].tolist() == pytest.approx([0.75, 0.5, 1.0])
    assert out["form"].str.startswith("seed: binary").sum() == 2 and out["form"].iloc[2] == "N-way retrieval (N = 3)"
    only = siamese.text_image_table(nway, binary.iloc[:0])
    assert len(only) == 1 and only["chance"].iloc[0] == pytest.approx(1 / 3)


def test_the_notebook_tables_read_the_kept_epoch_and_the_extraction_that_ran(tmp_path):
    from artsim_lib.models.training import TrainResult

    hist = pd.DataFrame(
        {
            "epoch": [1, 1, 2, 2],
            "split": ["train", "val"] * 2,
            "loss": [0.9, 0.8, 0.5, 0.6],
            "acc_random": [0.5, 0.6, 0.7, 0.65],
            "acc_hard": [0.5, 0.5, 0.6, 0.55],
            "tau": [0.1] * 4,
        }
    )
    trip = pd.DataFrame({"split": ["train", "train", "val"], "anchor_id": ["o0", "o0", "o1"]})
    clip = siamese.SiameseResult(None, hist, 1, 4.0, "80-20", None, trip)
    cnn = TrainResult(hist, 2, tmp_path, "triplet", {"seconds": 3.0})
    assert siamese.kept_epoch(clip)["loss"] == 0.8 and siamese.kept_epoch(cnn)["loss"] == 0.6  # val, kept epoch
    row = siamese.clip_runs_table({"80-20": clip}).iloc[0]
    counts = ["train originals", "val originals", "train triplets", "val triplets", "epochs run", "best epoch"]
    assert row[counts].tolist() == [1, 1, 2, 1, 2, 1] and row["val loss"] == 0.8 and row["s / epoch"] == 2.0
    ext = embeddings.ExtractResult("k", tmp_path, tmp_path / "images.parquet", 5, 2, 3, 1.5, True)
    models = siamese.models_table(siamese.SiameseStageResult(ext, True, {"80-20": clip}, {"triplet": cnn}), "CNN")
    assert list(models["model"]) == ["CLIP siamese 80-20", "CNN siamese triplet"]
    assert models["loss"].tolist() == [0.8, 0.6] and models["train s"].tolist() == [4.0, 3.0]
    cache = siamese.extraction_table(ext)  # the call that ran, and a second call: every image cached
    assert cache[["images", "cache hits", "misses (embedded now)"]].values.tolist() == [[5, 2, 3], [5, 5, 0]]
    assert cache["wall s"].iloc[0] == 1.5 and cache["images/s"].iloc[0] == 2.0


# -- the seed's 80/20 and 40/60 splits ---------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.8, 0.4])
def test_resplitting_keeps_proportions_per_original_and_nothing_leaks(share):
    manifest = make_manifest(90, seed=3)
    trip = siamese.split_triplets(make_triplets(manifest), manifest, share, seed=7)
    labels = siamese.resplit_originals(manifest, share, 7)
    tv = labels[labels.isin(["train", "val"])]
    assert (labels[manifest.set_index("id")["split"].eq("test")] == "test").all()
    assert (tv == "train").mean() == pytest.approx(share, abs=0.05)
    assert set(trip["split"]) == {"train", "val"}
    side = {
        s: set(trip.loc[trip["split"] == s, ["anchor_id", "negative_id"]].to_numpy().ravel()) for s in ("train", "val")
    }
    assert not side["train"] & side["val"]  # no original is seen on both sides, as anchor or negative
    assert not set(trip["anchor_id"]) & set(manifest.loc[manifest["split"] == "test", "id"])
    assert (trip["split"] == trip["anchor_id"].map(labels)).all()
    m = manifest.set_index("id")
    neg = trip.join(m[["style", "artist"]], on="negative_id", rsuffix="_neg")
    kind = neg["negative_kind"]
    assert (neg["style_neg"] == neg["style"])[kind == "same_style"].all()
    assert (neg["artist_neg"] == neg["artist"])[kind == "same_artist"].all()
    assert (neg["style_neg"] != neg["style"])[kind == "random"].all()
    assert (neg["negative_path"] == neg["negative_id"].map(m["path"])).all()
    again = siamese.split_triplets(make_triplets(manifest), manifest, share, seed=7)
    pd.testing.assert_frame_equal(trip, again)


def test_the_two_splits_differ():
    manifest = make_manifest(90, seed=3)
    a, b = (siamese.resplit_originals(manifest, s, 7) for s in (0.8, 0.4))
    assert [siamese.split_name(x) for x in (0.8, 0.4)] == ["80-20", "40-60"]
    assert (a == "val").sum() < (b == "val").sum()


# -- end to end: cache -> training -> saved head -> measure -----------------------------------------------------


def test_train_save_and_load_the_clip_siamese(run_dir):
    from artsim_lib.io import provenance

    P = load_params(
        "smoke",
        [
            "siamese.hidden=[16]",
            "siamese.out_dim=8",
            "siamese.epochs=3",
            "siamese.batch_size=8",
            "siamese.embed_batch_size=8",
        ],
    )
    provenance.start_stage("08-siamese", P)  # writes params.resolved.yaml, which the loader reads
    (run_dir / "img").mkdir()
    manifest = make_manifest(24, seed=1, root=run_dir / "img")
    triplets = make_triplets(manifest)
    write_derivatives(triplets)
    ext = embeddings.extract_embeddings(P, embeddings.stage_images(manifest, triplets))
    assert ext.complete and ext.misses == len(manifest) + triplets["positive_id"].nunique()
    res = siamese.train_clip_siamese(P, triplets, ext.table, 0.8, ext.key, manifest=manifest)
    assert res.model_dir == run_dir / "siamese" / "clip-head-80-20"
    assert {"head.safetensors", "config.json", "history.csv"} <= {p.name for p in res.model_dir.iterdir()}
    head, conf = trained.load_head(res.model_dir)
    x = torch.randn(5, 32)
    assert torch.allclose(head.embed(x), res.model.eval().embed(x), atol=1e-6)
    assert conf["clip_key"] == ext.key and conf["best_epoch"] == res.best_epoch

    measure = trained.load_clip_siamese(run_dir)
    a, b = manifest["path"].iloc[:2]
    assert measure.name == "clip_siamese" and measure.embed([a, b]).shape == (2, 8)
    assert measure.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= measure.similarity01(a, b) <= 1
    raw = embeddings.load_clip_measure(run_dir)
    assert raw.embed(a).shape == (1, 32) and raw.name == "clip"
    with pytest.raises(FileNotFoundError, match="no trained"):
        trained.load_clip_siamese(run_dir, split="50-50")
    words = np.array(["red", "boat", "sea", "old", "man", "tree", "sky", "dog"])
    rng = np.random.default_rng(0)
    captions = pd.DataFrame({"id": manifest["id"], "caption": [" ".join(rng.choice(words, 5)) for _ in manifest["id"]]})
    acc = siamese.text_image_accuracy(embeddings.load_encoder(P), ext.table, manifest, captions, n=4)
    assert list(acc["split"]) == [s for s in ("train", "val", "test") if (manifest["split"] == s).any()]
    assert list(acc["pairs"]) == [int((manifest["split"] == s).sum()) for s in acc["split"]]
    assert ((acc[["i2t", "t2i"]] >= 0) & (acc[["i2t", "t2i"]] <= 1)).all().all()
    arr = np.asarray(Image.open(a).convert("RGB"))
    assert measure.similarity(arr, a) == pytest.approx(1.0, abs=1e-5)  # an array is an image too
    via = registry.load_measure("clip_siamese", run_dir)
    assert via.similarity(a, b) == pytest.approx(measure.similarity(a, b), abs=1e-5)


def test_compare_finds_both_clip_measures(run_dir):
    assert {"clip", "clip_siamese"} <= set(registry.available_measures())
    with pytest.raises(registry.MeasureUnavailableError):
        registry.load_measure("clip_siamese", run_dir)  # nothing trained in an empty run


# -- the CNN siamese on tiny colour triplets ---------------------------------------------------------------

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 220, 40)]


@pytest.fixture(scope="module")
def backbone_dir(tiny_models):
    return tiny_models("resnet")


@pytest.fixture(scope="module")
def cnn_triplets(tmp_path_factory):
    """Separable cnn_triplets: the positive has the anchor's colour (other noise), the negative another colour."""
    d = tmp_path_factory.mktemp("triplet-images")
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 6), ("val", 2)):
        for k, colour in enumerate(COLOURS):
            for i in range(n):
                a, p = d / f"{split}-{k}-{i}-a.png", d / f"{split}-{k}-{i}-p.png"
                colour_image(colour, rng.integers(1 << 30), sigma=30).save(a)
                colour_image(colour, rng.integers(1 << 30), sigma=30).save(p)
                for kind in ("random", "same_style"):
                    other = (k + 1 + int(rng.integers(len(COLOURS) - 1))) % len(COLOURS)
                    neg = d / f"{split}-{other}-{i}-{kind}-n.png"
                    colour_image(COLOURS[other], rng.integers(1 << 30), sigma=30).save(neg)
                    rows.append(
                        {
                            "triplet_id": f"{a.stem}:{kind}",
                            "anchor_id": a.stem,
                            "anchor_path": str(a),
                            "positive_id": p.stem,
                            "positive_path": str(p),
                            "negative_id": neg.stem,
                            "negative_path": str(neg),
                            "negative_kind": kind,
                            "split": split,
                        }
                    )
    return pd.DataFrame(rows)


def _cnn_params(overrides=()):
    return config.load_params(
        "smoke",
        [
            "siamese.hidden=[16]",
            "siamese.out_dim=8",
            "siamese.batch_size=16",
            "siamese.lr=0.01",
            "siamese.dropout=0.0",
            "siamese.resnet_epochs=4",
            "siamese.patience=4",
            "siamese.resnet_backbone_lr=0.01",
            *overrides,
        ],
    )


def _cnn_model(backbone_dir, variant="triplet", dropout=0.0):
    clf, proc = load_resnet(backbone_dir)
    torch.manual_seed(0)
    model = heads.ResNetSiamese(clf.resnet, [16], 8, dropout, variant)
    model.processor = proc
    return model


def test_the_three_branches_are_one_module(backbone_dir):
    model = _cnn_model(backbone_dir).set_unfreeze("all").eval()  # eval: batch norm uses fixed statistics
    n_params = sum(p.numel() for p in model.parameters())
    assert (
        n_params
        == sum(p.numel() for p in model.backbone.parameters()) + sum(p.numel() for p in model.head.parameters()) + 1
    )  # + log_tau: no per-branch copies
    torch.manual_seed(1)
    x = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    w = model.head[0].weight

    def head_grad(live):
        """d loss / d w with only the branches in ``live`` carrying gradient."""
        model.zero_grad()
        e = [y if i in live else y.detach() for i, y in enumerate(model(*x))]
        loss, _, _ = siamese.batch_loss(model, *e)
        loss.backward()
        return w.grad.clone()

    full, parts = head_grad({0, 1, 2}), [head_grad({i}) for i in range(3)]
    assert all(g.abs().sum() > 0 for g in parts)  # gradient flows from each branch
    assert torch.allclose(full, sum(parts), atol=1e-6)  # and they add up in the one shared weight


def test_set_unfreeze_marks_the_right_parameters(backbone_dir):
    model = _cnn_model(backbone_dir)
    trainable = lambda m: {n for n, p in m.backbone.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable(model.set_unfreeze("none")) == set()
    layer4 = trainable(model.set_unfreeze("layer4"))
    assert layer4 and all(n.startswith("net.encoder.stages.3.") for n in layer4)
    assert trainable(model.set_unfreeze("all")) == {n for n, _ in model.backbone.named_parameters()}
    assert all(p.requires_grad for p in model.head.parameters()) and not model.log_tau.requires_grad


def _backbone_state(path):
    clf, _ = load_resnet(path)
    return {f"net.{k}": v.clone() for k, v in clf.resnet.state_dict().items()}  # as wrapped by ResNetBackbone


def test_frozen_backbone_is_unchanged_and_training_lowers_the_loss(run_dir, backbone_dir, cnn_triplets):
    P = _cnn_params(["siamese.resnet_unfreeze=none", "siamese.resnet_epochs=6", "siamese.patience=6"])
    result = siamese.train_resnet_siamese(P, cnn_triplets, backbone_dir=backbone_dir, variant="triplet", progress=False)
    h = result.history
    assert list(h.columns[:5]) == ["epoch", "split", "loss", "acc_random", "acc_hard"]
    train = h[h["split"] == "train"]["loss"].to_numpy()
    assert train[-1] < 0.8 * train[0] and result.metrics["cached_features"]
    assert result.model_dir == P.run.root / "siamese" / "resnet-triplet"
    model = trained.load_resnet_siamese(P.run.root, "triplet")
    before = _backbone_state(backbone_dir)
    after = model.backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    val = cnn_triplets[cnn_triplets["split"] == "val"]
    s_pos = model.similarity(list(val["anchor_path"]), list(val["positive_path"]))
    s_neg = model.similarity(list(val["anchor_path"]), list(val["negative_path"]))
    assert s_pos.shape == (len(val),) and metrics.triplet_accuracy(s_pos, s_neg) >= 0.9


def test_layer4_unfreeze_changes_only_layer4(run_dir, backbone_dir, cnn_triplets):
    # in-batch negatives on: the training loop's per-batch original groups take that path too
    P = _cnn_params(["siamese.resnet_unfreeze=layer4", "siamese.resnet_epochs=2", "siamese.in_batch_negatives=true"])
    siamese.train_resnet_siamese(P, cnn_triplets, backbone_dir=backbone_dir, variant="triplet", progress=False)
    before, after = (
        _backbone_state(backbone_dir),
        trained.load_resnet_siamese(P.run.root, "triplet").backbone.state_dict(),
    )
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("net.encoder.stages.3.") for k in changed)  # batch-norm stats included
    assert any(k.endswith("running_mean") for k in changed)  # layer 4 did train (its statistics moved)


def test_regression_variant_scores_in_unit_interval(run_dir, backbone_dir, cnn_triplets):
    P = _cnn_params(["siamese.resnet_epochs=6", "siamese.patience=6"])
    result = siamese.train_resnet_siamese(
        P, cnn_triplets, backbone_dir=backbone_dir, variant="regression", progress=False
    )
    train = result.history[result.history["split"] == "train"]["loss"].to_numpy()
    assert train[-1] < train[0]
    model = trained.load_resnet_siamese(result.model_dir, "regression")
    torch.manual_seed(0)
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 50, 3), dtype=np.uint8)) for i in range(6)]
    s = model.similarity(imgs[:3], imgs[3:])
    assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all()
    val = cnn_triplets[cnn_triplets["split"] == "val"]
    s_pos = model.similarity(list(val["anchor_path"]), list(val["positive_path"]))
    s_neg = model.similarity(list(val["anchor_path"]), list(val["negative_path"]))
    assert (s_pos.mean() > s_neg.mean()).item()


def test_in_batch_negatives_skip_derivatives_of_the_same_original(backbone_dir):
    model = _cnn_model(backbone_dir)  # triplet variant
    torch.manual_seed(3)
    ea, ep, en = (torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) for _ in range(3))
    groups = torch.tensor([0, 0, 1, 1])  # two originals, two cnn_triplets each
    loss, s_pos, s_neg = siamese.batch_loss(model, ea, ep, en, in_batch=True, groups=groups)
    tau, sim = model.tau.item(), (ea @ ep.T).numpy()  # [B, B] cosines (unit rows)
    by_hand = []
    for i in range(4):  # the own negative, and the positives of the *other* original only
        negs = [float(s_neg[i])] + [sim[i, j] for j in range(4) if groups[j] != groups[i]]
        logits = np.array([float(s_pos[i])] + negs) / tau
        by_hand.append(np.log(np.exp(logits).sum()) - logits[0])
    assert loss.item() == pytest.approx(np.mean(by_hand), rel=1e-5)
    unmasked, _, _ = siamese.batch_loss(model, ea, ep, en, in_batch=True)
    assert unmasked.item() > loss.item()  # the derivatives of one's own painting counted as negatives
    one, _, _ = siamese.batch_loss(model, ea, ep, en, in_batch=True, groups=torch.zeros(4, dtype=torch.long))
    plain, _, _ = siamese.batch_loss(model, ea, ep, en)
    assert one.item() == pytest.approx(plain.item(), rel=1e-6)  # one painting: no in-batch negative left
    part = pd.DataFrame({"anchor_id": ["x", "y", "x"], "negative_kind": ["random"] * 3})
    assert siamese._split_data(part, np.zeros((3, 3), int), None, True)["group"].tolist() == [0, 1, 0]


def test_regression_targets_come_from_columns(backbone_dir):
    model = _cnn_model(backbone_dir, "regression")
    e = [torch.nn.functional.normalize(torch.randn(5, 8), dim=-1) for _ in range(3)]
    part = pd.DataFrame({"target": [0.3] * 5})
    t_pos, t_neg = siamese._targets(part)
    assert t_pos.tolist() == pytest.approx([0.3] * 5) and t_neg.tolist() == [0.0] * 5
    loss, s_pos, _ = siamese.batch_loss(model, *e, t_pos, t_neg, regression_loss="mse")
    expect = torch.cat([(s_pos - 0.3) ** 2, torch.sigmoid(model.pair_logit(e[0], e[2])) ** 2]).mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


def test_loaded_model_matches_the_trained_one(run_dir, backbone_dir, cnn_triplets):
    P = _cnn_params(["siamese.resnet_epochs=1"])
    result = siamese.train_resnet_siamese(P, cnn_triplets, backbone_dir=backbone_dir, progress=False)
    a = trained.load_resnet_siamese(P.run.root, "triplet")
    b = trained.load_resnet_siamese(result.model_dir)
    imgs = list(cnn_triplets["anchor_path"][:3]), list(cnn_triplets["negative_path"][:3])
    assert torch.equal(a.similarity(*imgs), b.similarity(*imgs))
    assert torch.allclose(a.similarity(imgs[0], imgs[0]), torch.ones(3), atol=1e-5)  # cosine with itself


def test_missing_split_is_an_error(run_dir, backbone_dir, cnn_triplets):
    with pytest.raises(ValueError, match="val"):
        siamese.train_resnet_siamese(
            _cnn_params(), cnn_triplets[cnn_triplets["split"] == "train"], backbone_dir=backbone_dir
        )


# -- the same siamese on stage 07's EfficientNet-Lite0 (the smoke profile's backbone) ---------------------


@pytest.fixture(scope="module")
def effnet_dir(tmp_path_factory):
    """A stage-07-style checkpoint: the pretrained EfficientNet-Lite0 + a 4-class head, 32² input."""
    from artsim_lib.models import load_backbone

    backbone, proc = load_backbone("effnet_lite0", image_size=32)
    model = heads.CNNClassifier(backbone, ["a", "b", "c", "d"], seed=0)
    target = tmp_path_factory.mktemp("ft") / "best"
    return trained.save_checkpoint(model, proc, target, {"backbone": "effnet_lite0", "complete": True})


def test_effnet_siamese_trains_its_last_stage_and_is_named_after_it(run_dir, effnet_dir, cnn_triplets):
    from artsim_lib.models import load_backbone

    P = _cnn_params(
        [
            "finetune.backbone=effnet_lite0",
            "siamese.resnet_unfreeze=layer4",
            "siamese.resnet_epochs=1",
            "evaluation.batch_size=4",
        ]
    )
    result = siamese.train_resnet_siamese(P, cnn_triplets, backbone_dir=effnet_dir, variant="triplet", progress=False)
    assert result.model_dir == P.run.root / "siamese" / "effnet_lite0-triplet"
    assert result.metrics["backbone"] == "effnet_lite0"
    model = trained.load_resnet_siamese(P.run.root, "triplet", kind="effnet_lite0")
    before = load_backbone("effnet_lite0")[0].state_dict()  # what stage 07 saved: the pretrained weights
    after = model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    last = model.backbone.unfreeze_prefixes("layer4")
    assert changed and all(k.startswith(last) for k in changed)  # only the last block and the head conv
    P.run.params_file.write_text(P.to_yaml())
    m = registry.load_measure("effnet_lite0_siamese", P.run.root)
    imgs = list(cnn_triplets["anchor_path"][:3])
    assert [m.raw_from_features(a, b) for a, b in zip(m.features(imgs), m.features(imgs))] == pytest.approx(
        [1.0] * 3, abs=1e-5
    )
    with pytest.raises(registry.MeasureUnavailableError, match="resnet_siamese"):
        registry.load_measure("resnet_siamese", P.run.root)  # this run has no ResNet siamese


def test_the_second_variant_reuses_the_frozen_features(run_dir, backbone_dir, cnn_triplets, monkeypatch):
    calls = []
    real = siamese._backbone_features
    monkeypatch.setattr(siamese, "_backbone_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    siamese._FEATURES.clear()
    P = _cnn_params(["siamese.resnet_unfreeze=none", "siamese.resnet_epochs=1"])
    first = siamese.train_resnet_siamese(
        P, cnn_triplets, backbone_dir=backbone_dir, variant="regression", progress=False
    )
    again = siamese.train_resnet_siamese(
        P, cnn_triplets, backbone_dir=backbone_dir, variant="regression", progress=False
    )
    siamese.train_resnet_siamese(P, cnn_triplets, backbone_dir=backbone_dir, variant="triplet", progress=False)
    assert len(calls) == 1  # one extraction for three trainings on the same frozen backbone and images
    assert first.history["loss"].tolist() == again.history["loss"].tolist()  # the cache changes nothing
    siamese._FEATURES.clear()
    fresh = siamese.train_resnet_siamese(
        P, cnn_triplets, backbone_dir=backbone_dir, variant="regression", progress=False
    )
    assert len(calls) == 2 and fresh.history["loss"].tolist() == pytest.approx(first.history["loss"].tolist())


# -- the stage: run(P) does what notebook 08 does, load(P) finds its models ----------------------------------


def test_run_needs_stage_07_then_trains_every_model_and_load_finds_them(run_dir, effnet_dir):
    import json
    import shutil

    from artsim_lib.stages import s07_finetune

    overrides = [
        "siamese.hidden=[16]",
        "siamese.out_dim=8",
        "siamese.epochs=2",
        "siamese.batch_size=8",
        "siamese.embed_batch_size=8",
        "siamese.resnet_epochs=1",
        "siamese.train_splits=[0.8,0.4]",
        "finetune.backbone=effnet_lite0",
        "siamese.resnet_unfreeze=none",
    ]
    P = load_params("smoke", overrides)
    (run_dir / "img").mkdir(parents=True)
    manifest = make_manifest(30, seed=2, root=run_dir / "img")
    triplets = make_triplets(manifest)
    write_derivatives(triplets)
    with pytest.raises(StageNotRunError, match="run stage 08 first"):
        siamese.load(P)
    with pytest.raises(StageNotRunError, match="run stage 07 first"):  # stage 08 never fine-tunes behind it
        siamese.run(P, manifest, triplets, progress=False)
    best = shutil.copytree(effnet_dir, P.run.root / "finetune" / "best")
    info = json.loads((best / trained.FINETUNE_INFO).read_text())
    (best / trained.FINETUNE_INFO).write_text(json.dumps({**info, "key": s07_finetune.finetune_key(P)}))
    assert s07_finetune.load(P) == best

    result = siamese.run(P, manifest, triplets, progress=False)
    assert result.ready and result.extraction.complete and result.extraction.misses == 0  # cached by the first call
    assert set(result.clip) == {"80-20", "40-60"} and set(result.cnn) == set(heads.VARIANTS)
    found = siamese.load(P)
    assert found.clip == {n: r.model_dir for n, r in result.clip.items()}
    assert found.cnn == {v: r.model_dir for v, r in result.cnn.items()}
    assert found.cnn["regression"] == P.run.root / "siamese" / "effnet_lite0-regression"
    with pytest.raises(StageNotRunError, match="other params: run stage 08 first"):
        siamese.load(load_params("smoke", [*overrides, "siamese.out_dim=4"]))
    shard = siamese.run(P, manifest, triplets, num_shards=2, shard_index=0, progress=False)
    assert not shard.ready and not shard.clip and not shard.cnn  # a shard job only embeds
