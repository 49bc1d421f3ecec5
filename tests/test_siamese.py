"""The CLIP siamese: shared weights, frozen CLIP, the head, τ, training, splits, retrieval, saving."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from artsim_lib.measures import embeddings
from artsim_lib.core import losses
from artsim_lib.stages import s08_siamese as siamese
from artsim_lib.config import load_params
from artsim_lib.models import build_tiny

STYLES, ARTISTS = ["Cubism", "Baroque", "Ukiyo_e"], ["ann", "bob", "cyd", "dee"]


def cfg(**kw):
    base = {"kind": "mlp", "in_dim": 16, "hidden": [32], "out_dim": 8, "dropout": 0.0, "tokens": 4,
            "layers": 1, "heads": 2, "tau": 0.1, "learn_tau": False, "tau_min": 0.01, "tau_max": 1.0}
    return {**base, **kw}


def params(**kw):
    S = load_params("smoke").siamese
    return S.model_copy(update={"epochs": 60, "batch_size": 16, "lr": 1e-2, "patience": 60, **kw})


# -- a tiny study: originals on disk, PIL derivatives, triplets with the stage-06 contract ------------

def make_manifest(n=40, seed=0, root=None):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"id": [f"o{i:03d}" for i in range(n)],
                       "style": [STYLES[i % 3] for i in range(n)],
                       "artist": [ARTISTS[i % 4] for i in range(n)],
                       "split": rng.choice(["train", "val", "test"], n, p=[0.7, 0.15, 0.15])})
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
        pools = {"random": same[same["style"] != o.style], "same_style": same[same["style"] == o.style],
                 "same_artist": same[same["artist"] == o.artist]}
        for d in range(2):
            pid = f"{o.id}:{d}"
            for kind, pool in pools.items():
                if len(pool):
                    neg = pool.iloc[rng.integers(len(pool))]
                    rows.append({"triplet_id": f"{pid}:{kind}", "anchor_id": o.id, "anchor_path": o.path,
                                 "positive_id": pid, "positive_path": o.path.replace(".png", f"-{d}.png"),
                                 "negative_id": neg["id"], "negative_path": neg["path"], "negative_kind": kind,
                                 "level": "moderate", "family": "photometric", "strength": 0.25,
                                 "backend": "augment", "split": o.split, "style": o.style, "artist": o.artist})
    return pd.DataFrame(rows)


def write_derivatives(triplets):
    ops = [lambda im: ImageEnhance.Brightness(im).enhance(1.3), lambda im: im.filter(ImageFilter.GaussianBlur(1))]
    for t in triplets.drop_duplicates("positive_id").itertuples():
        ops[int(t.positive_id[-1])](Image.open(t.anchor_path).convert("RGB")).save(t.positive_path)


# -- weight sharing, frozen CLIP, the head, τ --------------------------------------------------------------

def test_the_three_branches_share_one_head_and_its_gradients_add_up():
    torch.manual_seed(0)
    model = siamese.Siamese(siamese.build_head(cfg()), siamese.Temperature(0.1)).eval()
    a, p, n = torch.randn(3, 5, 16).unbind(0)
    loss, _, _ = siamese.triplet_loss(*model(a, p, n), 0.1)
    loss.backward()
    together = [q.grad.clone() for q in model.head.parameters()]
    assert len(together) == len(list(model.parameters())) - 1  # the head's and τ's, nothing else

    def branch_grads(i):  # the same loss with only branch i differentiable
        model.zero_grad()
        z = [model.embed(x) if j == i else model.embed(x).detach() for j, x in enumerate((a, p, n))]
        siamese.triplet_loss(*z, 0.1)[0].backward()
        return [q.grad.clone() for q in model.head.parameters()]

    per_branch = [branch_grads(i) for i in range(3)]
    for g, g0, g1, g2 in zip(together, *per_branch):
        assert torch.allclose(g, g0 + g1 + g2, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in per_branch[2])  # the negative's branch counts too


def test_clip_stays_frozen_while_the_head_trains_through_it(tmp_path):
    enc = embeddings.open_encoder(build_tiny("clip", tmp_path / "clip", seed=0))
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    head = siamese.build_head(cfg(in_dim=enc.dim))
    head_before = [q.clone() for q in head.parameters()]
    model = siamese.Siamese(head, siamese.Temperature(0.1), embeddings.ClipEncoder(enc.model))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    x = torch.randn(3, 4, 3, 64, 64)
    model.train()
    for _ in range(3):
        loss, _, _ = siamese.triplet_loss(*model(*x), 0.1)
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
    head = siamese.build_head(cfg(kind=kind, hidden=[8], out_dim=6)).eval()
    z = head(torch.randn(7, 16))
    assert z.shape == (7, 6)
    assert torch.allclose(z.norm(dim=1), torch.ones(7), atol=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        siamese.build_head(cfg(kind="transformer", tokens=5))


def test_a_learnt_tau_moves_and_stays_positive_within_its_bounds():
    fixed = siamese.Temperature(0.07)
    assert not fixed.log_tau.requires_grad and fixed().item() == pytest.approx(0.07)
    tau = siamese.Temperature(0.07, learn=True, tau_min=0.05, tau_max=0.5)
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
    raw = losses.triplet_accuracy(*losses.triplet_similarities(data.emb[data.a], data.emb[data.p], data.emb[data.n]))
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
    runs = [siamese.fit_head(data, np.arange(90), np.arange(90, 120), cfg(learn_tau=True), S, seed=s)
            for s in (3, 3, 4)]
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
    base, _, _ = siamese.triplet_loss(za, zp, zn, 0.1)
    # Every positive is its own anchor's and all four anchors are one painting: nothing to add.
    masked, _, _ = siamese.triplet_loss(za, zp, zn, 0.1, torch.zeros(4, dtype=torch.long), in_batch=True)
    assert masked.item() == pytest.approx(base.item(), rel=1e-6)
    unmasked, _, _ = siamese.triplet_loss(za, zp, zn, 0.1, torch.arange(4), in_batch=True)
    assert unmasked.item() > base.item()


# -- retrieval -------------------------------------------------------------------------------------------------

def test_text_image_accuracy_on_hand_made_cases():
    eye = np.eye(6)
    assert siamese.retrieval_accuracy(eye, eye) == (1.0, 1.0)
    shifted = np.roll(eye, 1, axis=0)  # every caption belongs to the next image
    assert siamese.retrieval_accuracy(eye, shifted) == (0.0, 0.0)
    flat = np.ones((6, 4))  # every similarity ties: exactly chance
    assert siamese.retrieval_accuracy(flat, flat) == pytest.approx((1 / 6, 1 / 6))
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((4000, 16))
    out = siamese.batched_retrieval(noise, rng.standard_normal((4000, 16)), n=8)
    assert out["chance"] == pytest.approx(1 / 8) and out["pairs"] == 4000
    assert out["i2t"] == pytest.approx(1 / 8, abs=0.02) and out["t2i"] == pytest.approx(1 / 8, abs=0.02)
    assert siamese.batched_retrieval(eye, eye, n=4) == {"pairs": 6, "N": 4, "i2t": 1.0, "t2i": 1.0, "chance": 1 / 6}


def seed_ti_case():
    r = 2 ** -0.5
    table = pd.DataFrame({"id": ["o0", "o1", "o2", "o3"],
                          "embedding": [np.array([1.0, 0]), np.array([0, 1.0]), np.array([r, r]), np.array([1.0, 0])]})
    texts = {"pa": [1.0, 0], "pb": [1.0, 0], "pc": [0, 1.0], "c0": [1.0, 0], "c1": [0, 1.0]}
    captions = pd.DataFrame({"id": ["o0", "o1", "o2"], "caption": ["c0", "c1", "c2"]})  # o3 has none
    rows = [("o0", "o1", "train", "random", "d0"), ("o1", "o0", "train", "same_style", "d1"),
            ("o2", "o0", "val", "random", "d2"), ("o2", "o3", "val", "same_artist", "d3"),
            ("o2", "o1", "val", "random", "d4")]
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
    assert list(zip(out["split"], out["negative_kind"])) == [("train", "all"), ("train", "random"),
                                                             ("train", "same_style"), ("val", "all"), ("val", "random")]
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
    nway = pd.DataFrame([{"split": "train", **siamese.batched_retrieval(eye, eye, n=3)}])
    out = siamese.text_image_table(nway, binary)
    assert list(out["split"]) == ["train", "val", "train"]
    assert out["chance"].tolist() == pytest.approx([0.5, 0.5, 1 / 3])
    assert out["n"].tolist() == [2, 1, 6] and out["i2t"].tolist() == pytest.approx([0.75, 0.5, 1.0])
    assert out["form"].str.startswith("seed: binary").sum() == 2 and out["form"].iloc[2] == "N-way retrieval (N = 3)"
    only = siamese.text_image_table(nway, binary.iloc[:0])
    assert len(only) == 1 and only["chance"].iloc[0] == pytest.approx(1 / 3)


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
    side = {s: set(trip.loc[trip["split"] == s, ["anchor_id", "negative_id"]].to_numpy().ravel()) for s in ("train", "val")}
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

    P = load_params("smoke", ["siamese.hidden=[16]", "siamese.out_dim=8", "siamese.epochs=3",
                              "siamese.batch_size=8", "siamese.embed_batch_size=8"])
    provenance.start_stage("08-siamese", P)  # writes params.resolved.yaml, which the loader reads
    (run_dir / "img").mkdir()
    manifest = make_manifest(24, seed=1, root=run_dir / "img")
    triplets = make_triplets(manifest)
    write_derivatives(triplets)
    ext = embeddings.require_embeddings(P, embeddings.stage_images(manifest, triplets))
    assert ext.complete and ext.misses == len(manifest) + triplets["positive_id"].nunique()
    res = siamese.train_clip_siamese(P, triplets, ext.table, 0.8, ext.key, manifest=manifest)
    assert res.model_dir == run_dir / "siamese" / "clip-head-80-20"
    assert {"head.safetensors", "config.json", "history.csv"} <= {p.name for p in res.model_dir.iterdir()}
    head, conf = siamese.load_head(res.model_dir)
    x = torch.randn(5, 32)
    assert torch.allclose(head.embed(x), res.model.eval().embed(x), atol=1e-6)
    assert conf["clip_key"] == ext.key and conf["best_epoch"] == res.best_epoch

    measure = siamese.load_clip_siamese(run_dir)
    a, b = manifest["path"].iloc[:2]
    assert measure.name == "clip_siamese" and measure.embed([a, b]).shape == (2, 8)
    assert measure.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= measure.similarity01(a, b) <= 1
    raw = embeddings.load_clip_measure(run_dir)
    assert raw.embed(a).shape == (1, 32) and raw.name == "clip"
    with pytest.raises(FileNotFoundError, match="no trained"):
        siamese.load_clip_siamese(run_dir, split="50-50")
    words = np.array(["red", "boat", "sea", "old", "man", "tree", "sky", "dog"])
    rng = np.random.default_rng(0)
    captions = pd.DataFrame({"id": manifest["id"], "caption": [" ".join(rng.choice(words, 5)) for _ in manifest["id"]]})
    acc = siamese.text_image_accuracy(embeddings.load_encoder(P), ext.table, manifest, captions, n=4)
    assert list(acc["split"]) == [s for s in ("train", "val", "test") if (manifest["split"] == s).any()]
    assert list(acc["pairs"]) == [int((manifest["split"] == s).sum()) for s in acc["split"]]
    assert ((acc[["i2t", "t2i"]] >= 0) & (acc[["i2t", "t2i"]] <= 1)).all().all()
    arr = np.asarray(Image.open(a).convert("RGB"))
    assert measure.similarity(arr, a) == pytest.approx(1.0, abs=1e-5)  # an array is an image too
    from artsim_lib.measures import registry as compare

    via = compare.load_measure("clip_siamese", run_dir)
    assert via.similarity(a, b) == pytest.approx(measure.similarity(a, b), abs=1e-5)


def test_compare_finds_both_clip_measures(run_dir):
    from artsim_lib.measures import registry as compare

    assert {"clip", "clip_siamese"} <= set(compare.available_measures())
    with pytest.raises(compare.MeasureUnavailableError):
        compare.load_measure("clip_siamese", run_dir)  # nothing trained in an empty run
