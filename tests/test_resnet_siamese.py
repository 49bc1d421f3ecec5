"""The ResNet siamese on tiny colour triplets: shared weights, what trains, both variants, save/load."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from artsim_lib import config
from artsim_lib.core import losses
from artsim_lib.stages import s08_resnet_siamese as rs
from artsim_lib.models import build_tiny, load_resnet

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 220, 40)]


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    return build_tiny("resnet", tmp_path_factory.mktemp("models") / "tiny-resnet")


def _image(colour, seed, size=40):
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def triplets(tmp_path_factory):
    """Separable triplets: the positive has the anchor's colour (other noise), the negative another colour."""
    d = tmp_path_factory.mktemp("triplet-images")
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 6), ("val", 2)):
        for k, colour in enumerate(COLOURS):
            for i in range(n):
                a, p = d / f"{split}-{k}-{i}-a.png", d / f"{split}-{k}-{i}-p.png"
                _image(colour, rng.integers(1 << 30)).save(a)
                _image(colour, rng.integers(1 << 30)).save(p)
                for kind in ("random", "same_style"):
                    other = (k + 1 + int(rng.integers(len(COLOURS) - 1))) % len(COLOURS)
                    neg = d / f"{split}-{other}-{i}-{kind}-n.png"
                    _image(COLOURS[other], rng.integers(1 << 30)).save(neg)
                    rows.append({"triplet_id": f"{a.stem}:{kind}", "anchor_id": a.stem, "anchor_path": str(a),
                                 "positive_id": p.stem, "positive_path": str(p), "negative_id": neg.stem,
                                 "negative_path": str(neg), "negative_kind": kind, "split": split})
    return pd.DataFrame(rows)


def _params(overrides=()):
    return config.load_params("smoke", ["siamese.hidden=[16]", "siamese.out_dim=8", "siamese.batch_size=16",
                                        "siamese.lr=0.01", "siamese.dropout=0.0", "siamese.resnet_epochs=4",
                                        "siamese.patience=4", "siamese.resnet_backbone_lr=0.01", *overrides])


def _model(backbone_dir, variant="triplet", dropout=0.0):
    clf, proc = load_resnet(backbone_dir)
    torch.manual_seed(0)
    model = rs.ResNetSiamese(clf.resnet, [16], 8, dropout, variant)
    model.processor = proc
    return model


def test_the_three_branches_are_one_module(backbone_dir):
    model = _model(backbone_dir).set_unfreeze("all").eval()  # eval: batch norm uses fixed statistics
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in model.backbone.parameters()) + \
        sum(p.numel() for p in model.head.parameters()) + 1  # + log_tau: no per-branch copies
    torch.manual_seed(1)
    x = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    w = model.head[0].weight

    def head_grad(live):
        """d loss / d w with only the branches in ``live`` carrying gradient."""
        model.zero_grad()
        e = [y if i in live else y.detach() for i, y in enumerate(model(*x))]
        loss, _, _ = rs.batch_loss(model, *e)
        loss.backward()
        return w.grad.clone()

    full, parts = head_grad({0, 1, 2}), [head_grad({i}) for i in range(3)]
    assert all(g.abs().sum() > 0 for g in parts)  # gradient flows from each branch
    assert torch.allclose(full, sum(parts), atol=1e-6)  # and they add up in the one shared weight


def test_set_unfreeze_marks_the_right_parameters(backbone_dir):
    model = _model(backbone_dir)
    trainable = lambda m: {n for n, p in m.backbone.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable(model.set_unfreeze("none")) == set()
    layer4 = trainable(model.set_unfreeze("layer4"))
    assert layer4 and all(n.startswith("net.encoder.stages.3.") for n in layer4)
    assert trainable(model.set_unfreeze("all")) == {n for n, _ in model.backbone.named_parameters()}
    assert all(p.requires_grad for p in model.head.parameters()) and not model.log_tau.requires_grad


def _backbone_state(path):
    clf, _ = load_resnet(path)
    return {f"net.{k}": v.clone() for k, v in clf.resnet.state_dict().items()}  # as wrapped by ResNetBackbone


def test_frozen_backbone_is_unchanged_and_training_lowers_the_loss(run_dir, backbone_dir, triplets):
    P = _params(["siamese.resnet_unfreeze=none", "siamese.resnet_epochs=6", "siamese.patience=6"])
    result = rs.train_resnet_siamese(P, triplets, backbone_dir=backbone_dir, variant="triplet", progress=False)
    h = result.history
    assert list(h.columns[:5]) == ["epoch", "split", "loss", "acc_random", "acc_hard"]
    train = h[h["split"] == "train"]["loss"].to_numpy()
    assert train[-1] < 0.8 * train[0] and result.metrics["cached_features"]
    assert result.model_dir == P.run.root / "siamese" / "resnet-triplet"
    model = rs.load_resnet_siamese(P.run.root, "triplet")
    before = _backbone_state(backbone_dir)
    after = model.backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    val = triplets[triplets["split"] == "val"]
    s_pos = model.similarity(list(val["anchor_path"]), list(val["positive_path"]))
    s_neg = model.similarity(list(val["anchor_path"]), list(val["negative_path"]))
    assert s_pos.shape == (len(val),) and losses.triplet_accuracy(s_pos, s_neg) >= 0.9


def test_layer4_unfreeze_changes_only_layer4(run_dir, backbone_dir, triplets):
    # in-batch negatives on: the training loop's per-batch original groups take that path too
    P = _params(["siamese.resnet_unfreeze=layer4", "siamese.resnet_epochs=2", "siamese.in_batch_negatives=true"])
    rs.train_resnet_siamese(P, triplets, backbone_dir=backbone_dir, variant="triplet", progress=False)
    before, after = _backbone_state(backbone_dir), rs.load_resnet_siamese(P.run.root, "triplet").backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("net.encoder.stages.3.") for k in changed)  # batch-norm stats included
    assert any(k.endswith("running_mean") for k in changed)  # layer 4 did train (its statistics moved)


def test_regression_variant_scores_in_unit_interval(run_dir, backbone_dir, triplets):
    P = _params(["siamese.resnet_epochs=6", "siamese.patience=6"])
    result = rs.train_resnet_siamese(P, triplets, backbone_dir=backbone_dir, variant="regression", progress=False)
    train = result.history[result.history["split"] == "train"]["loss"].to_numpy()
    assert train[-1] < train[0]
    model = rs.load_resnet_siamese(result.model_dir, "regression")
    torch.manual_seed(0)
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 50, 3), dtype=np.uint8)) for i in range(6)]
    s = model.similarity(imgs[:3], imgs[3:])
    assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all()
    val = triplets[triplets["split"] == "val"]
    s_pos = model.similarity(list(val["anchor_path"]), list(val["positive_path"]))
    s_neg = model.similarity(list(val["anchor_path"]), list(val["negative_path"]))
    assert (s_pos.mean() > s_neg.mean()).item()


def test_in_batch_negatives_skip_derivatives_of_the_same_original(backbone_dir):
    model = _model(backbone_dir)  # triplet variant
    torch.manual_seed(3)
    ea, ep, en = (torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) for _ in range(3))
    groups = torch.tensor([0, 0, 1, 1])  # two originals, two triplets each
    loss, s_pos, s_neg = rs.batch_loss(model, ea, ep, en, in_batch=True, groups=groups)
    tau, sim = model.tau.item(), (ea @ ep.T).numpy()  # [B, B] cosines (unit rows)
    by_hand = []
    for i in range(4):  # the own negative, and the positives of the *other* original only
        negs = [float(s_neg[i])] + [sim[i, j] for j in range(4) if groups[j] != groups[i]]
        logits = np.array([float(s_pos[i])] + negs) / tau
        by_hand.append(np.log(np.exp(logits).sum()) - logits[0])
    assert loss.item() == pytest.approx(np.mean(by_hand), rel=1e-5)
    unmasked, _, _ = rs.batch_loss(model, ea, ep, en, in_batch=True)
    assert unmasked.item() > loss.item()  # the derivatives of one's own painting counted as negatives
    one, _, _ = rs.batch_loss(model, ea, ep, en, in_batch=True, groups=torch.zeros(4, dtype=torch.long))
    plain, _, _ = rs.batch_loss(model, ea, ep, en)
    assert one.item() == pytest.approx(plain.item(), rel=1e-6)  # one painting: no in-batch negative left
    part = pd.DataFrame({"anchor_id": ["x", "y", "x"], "negative_kind": ["random"] * 3})
    assert rs._split_data(part, np.zeros((3, 3), int), None, True)["group"].tolist() == [0, 1, 0]


def test_regression_targets_come_from_columns(backbone_dir):
    model = _model(backbone_dir, "regression")
    e = [torch.nn.functional.normalize(torch.randn(5, 8), dim=-1) for _ in range(3)]
    part = pd.DataFrame({"target": [0.3] * 5})
    t_pos, t_neg = rs._targets(part)
    assert t_pos.tolist() == pytest.approx([0.3] * 5) and t_neg.tolist() == [0.0] * 5
    loss, s_pos, _ = rs.batch_loss(model, *e, t_pos, t_neg, regression_loss="mse")
    expect = torch.cat([(s_pos - 0.3) ** 2, torch.sigmoid(model.pair_logit(e[0], e[2])) ** 2]).mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


def test_loaded_model_matches_the_trained_one(run_dir, backbone_dir, triplets):
    P = _params(["siamese.resnet_epochs=1"])
    result = rs.train_resnet_siamese(P, triplets, backbone_dir=backbone_dir, progress=False)
    a = rs.load_resnet_siamese(P.run.root, "triplet")
    b = rs.load_resnet_siamese(result.model_dir)
    imgs = list(triplets["anchor_path"][:3]), list(triplets["negative_path"][:3])
    assert torch.equal(a.similarity(*imgs), b.similarity(*imgs))
    assert torch.allclose(a.similarity(imgs[0], imgs[0]), torch.ones(3), atol=1e-5)  # cosine with itself


def test_missing_split_is_an_error(run_dir, backbone_dir, triplets):
    with pytest.raises(ValueError, match="val"):
        rs.train_resnet_siamese(_params(), triplets[triplets["split"] == "train"], backbone_dir=backbone_dir)


# -- the same siamese on stage 07's EfficientNet-Lite0 (the smoke profile's backbone) ---------------------


@pytest.fixture(scope="module")
def effnet_dir(tmp_path_factory):
    """A stage-07-style checkpoint: the pretrained EfficientNet-Lite0 + a 4-class head, 32² input."""
    from artsim_lib.stages import s07_finetune as finetune
    from artsim_lib.models import load_backbone

    backbone, proc = load_backbone("effnet_lite0", image_size=32)
    model = finetune.CNNClassifier(backbone, ["a", "b", "c", "d"], seed=0)
    target = tmp_path_factory.mktemp("ft") / "best"
    return finetune.save_checkpoint(model, proc, target, {"backbone": "effnet_lite0", "complete": True})


def test_effnet_siamese_trains_its_last_stage_and_is_named_after_it(run_dir, effnet_dir, triplets):
    from artsim_lib.measures import registry as compare
    from artsim_lib.models import load_backbone

    P = _params(["finetune.backbone=effnet_lite0", "siamese.resnet_unfreeze=layer4", "siamese.resnet_epochs=1",
                 "evaluation.batch_size=4"])
    result = rs.train_resnet_siamese(P, triplets, backbone_dir=effnet_dir, variant="triplet", progress=False)
    assert result.model_dir == P.run.root / "siamese" / "effnet_lite0-triplet"
    assert result.metrics["backbone"] == "effnet_lite0"
    model = rs.load_resnet_siamese(P.run.root, "triplet", kind="effnet_lite0")
    before = load_backbone("effnet_lite0")[0].state_dict()  # what stage 07 saved: the pretrained weights
    after = model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    last = model.backbone.unfreeze_prefixes("layer4")
    assert changed and all(k.startswith(last) for k in changed)  # only the last block and the head conv
    P.run.params_file.write_text(P.to_yaml())
    m = compare.load_measure("effnet_lite0_siamese", P.run.root)
    imgs = list(triplets["anchor_path"][:3])
    assert [m.raw_from_features(a, b) for a, b in zip(m.features(imgs), m.features(imgs))] == \
        pytest.approx([1.0] * 3, abs=1e-5)
    with pytest.raises(compare.MeasureUnavailableError, match="resnet_siamese"):
        compare.load_measure("resnet_siamese", P.run.root)  # this run has no ResNet siamese


def test_the_second_variant_reuses_the_frozen_features(run_dir, backbone_dir, triplets, monkeypatch):
    calls = []
    real = rs._backbone_features
    monkeypatch.setattr(rs, "_backbone_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    rs._FEATURES.clear()
    P = _params(["siamese.resnet_unfreeze=none", "siamese.resnet_epochs=1"])
    first = rs.train_resnet_siamese(P, triplets, backbone_dir=backbone_dir, variant="regression", progress=False)
    again = rs.train_resnet_siamese(P, triplets, backbone_dir=backbone_dir, variant="regression", progress=False)
    rs.train_resnet_siamese(P, triplets, backbone_dir=backbone_dir, variant="triplet", progress=False)
    assert len(calls) == 1  # one extraction for three trainings on the same frozen backbone and images
    assert first.history["loss"].tolist() == again.history["loss"].tolist()  # the cache changes nothing
    rs._FEATURES.clear()
    fresh = rs.train_resnet_siamese(P, triplets, backbone_dir=backbone_dir, variant="regression", progress=False)
    assert len(calls) == 2 and fresh.history["loss"].tolist() == pytest.approx(first.history["loss"].tolist())
