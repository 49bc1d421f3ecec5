"""Stage 07 on tiny images: head swap, class weights, metrics, the loop, the checkpoint round trip."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from artsim_lib import config
from artsim_lib.io.artifacts import StageNotRunError
from artsim_lib.measures import trained
from artsim_lib.models import load_resnet, training
from artsim_lib.models.heads import CNNClassifier, resnet_embed
from artsim_lib.models.image_batches import ImageTransform, make_loader
from artsim_lib.stages import s07_finetune as finetune
from helpers import colour_image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]


@pytest.fixture(scope="module")
def tiny_resnet(tiny_models):
    return tiny_models("resnet")


def tiny_manifest(folder, per_class=(8, 3, 3)) -> pd.DataFrame:
    """Three colour 'styles'; two artists per style; ``per_class`` images per train/val/test split."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, colour in enumerate(COLOURS):
        for split, n in zip(("train", "val", "test"), per_class):
            for i in range(n):
                path = folder / f"s{k}-{split}-{i}.png"
                colour_image(colour, seed=100 * k + 10 * len(rows) + i, sigma=25).save(path)
                rows.append(
                    {
                        "id": path.stem,
                        "path": str(path),
                        "split": split,
                        "style": f"style_{k}",
                        "artist": f"artist_{k}_{i % 2}",
                        "genre": None,
                    }
                )
    return pd.DataFrame(rows)


def _params(overrides=()):
    return config.load_params(
        "smoke",
        ["finetune.image_size=32", "finetune.batch_size=8", "finetune.lr=0.01", "finetune.epochs=3", *overrides],
    )


# -- labels, head, weights, metrics ---------------------------------------------------------------------


def test_label_frame_classes_come_from_train(tmp_path):
    m = tiny_manifest(tmp_path)
    df, classes = finetune.label_frame(m, "style")
    assert classes == ["style_0", "style_1", "style_2"] and len(df) == len(m)
    assert (df["label"] == df["style"].str[-1].astype(int)).all()
    m.loc[m["split"] == "test", "style"] = "unseen"  # a class train never saw cannot be predicted
    m.loc[0, "style"] = None
    df, _ = finetune.label_frame(m, "style")
    assert "unseen" not in set(df["style"]) and len(df) == len(m) - 9 - 1


def test_label_column_changes_num_labels(tmp_path, tiny_resnet):
    m = tiny_manifest(tmp_path)
    _, by_style = finetune.label_frame(m, "style")
    _, by_artist = finetune.label_frame(m, "artist")
    assert (len(by_style), len(by_artist)) == (3, 6)
    with pytest.raises(ValueError, match="class"):
        finetune.label_frame(m, "genre")  # all missing, as in the Kaggle layout
    model, _ = load_resnet(tiny_resnet)
    finetune.replace_head(model, by_artist)
    assert model(pixel_values=torch.zeros(2, 3, 32, 32)).logits.shape == (2, 6)


def test_replace_head_sets_labels(tiny_resnet):
    model, _ = load_resnet(tiny_resnet)
    assert model.config.num_labels == 10
    finetune.replace_head(model, ["a", "b", "c"], seed=1)
    assert model.classifier[-1].out_features == 3 and model.num_labels == 3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.label2id["c"] == 2
    w1 = model.classifier[-1].weight.clone()
    finetune.replace_head(model, ["a", "b", "c"], seed=1)
    assert torch.equal(w1, model.classifier[-1].weight)  # the new head is seeded


def test_class_weights_hand_case():
    # 4 labels over 3 classes: N / (K n_c) = 4/9, 4/3, and 0 for the absent class.
    w = finetune.class_weights([0, 0, 0, 1], 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
    assert finetune.class_weights([0, 1, 2, 0, 1, 2], 3).tolist() == pytest.approx([1, 1, 1])


def test_topk_hand_case():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    targets = torch.tensor([2, 0, 0, 1])
    # top-1 hits: row 1 only; top-2 adds row 0 (0.4 is second) and row 3 (0.3 is second).
    assert finetune.topk_accuracy(logits, targets, 1) == pytest.approx(0.25)
    assert finetune.topk_accuracy(logits, targets, 2) == pytest.approx(0.75)
    assert finetune.topk_accuracy(logits, targets, 5) == pytest.approx(1.0)


def test_confusion_and_f1_hand_case():
    cm = finetune.confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 1], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    # class 0: P=1, R=1/2 -> 2/3; class 1: P=2/4, R=1 -> 2/3; class 2: never predicted -> 0.
    assert finetune.per_class_f1(cm).tolist() == pytest.approx([2 / 3, 2 / 3, 0.0])
    m = finetune.split_metrics(torch.eye(3)[[0, 1, 1, 1, 1]], torch.tensor([0, 0, 1, 1, 2]), ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx(4 / 9) and m["top5"] is None and m["n"] == 5
    assert m["top1_chance"] == pytest.approx(1 / 3) and m["top5_chance"] is None


def test_topk_chance_and_the_results_table_show_chance_beside_accuracy():
    assert finetune.topk_chance(5, 8) == 0.625 and finetune.topk_chance(1, 8) == 0.125
    assert finetune.topk_chance(5, 3) == 1.0  # k >= K: every class is in the top k
    logits = torch.eye(8)[[0, 1, 2, 3]]  # 4 test images of 8 classes, two right at top-1
    m = finetune.split_metrics(logits, torch.tensor([0, 1, 5, 6]), list("abcdefgh"))
    assert m["top5_chance"] == 0.625 and m["top1_chance"] == 0.125
    table = finetune.results_table({"num_labels": 8, "val": None, "test": m})
    assert list(table["split"]) == ["test"] and table["images"].iloc[0] == 4
    assert table[["top-1", "top-1 chance", "top-5 chance"]].iloc[0].tolist() == pytest.approx([0.5, 0.125, 0.625])
    three = finetune.split_metrics(torch.eye(3)[[0, 1]], torch.tensor([0, 2]), ["a", "b", "c"])
    t3 = finetune.results_table({"num_labels": 3, "val": three, "test": three})
    assert list(t3["split"]) == ["val", "test"] and t3["top-1 chance"].tolist() == pytest.approx([1 / 3, 1 / 3])
    assert t3["top-5"].isna().all() and t3["top-5 chance"].isna().all()  # no top-5 below five classes


# -- training -------------------------------------------------------------------------------------------


def test_a_few_steps_reduce_the_training_loss(tmp_path, tiny_resnet):
    torch.manual_seed(0)
    m = tiny_manifest(tmp_path)
    df, classes = finetune.label_frame(m[m["split"] == "train"], "style")
    model, proc = load_resnet(tiny_resnet)
    finetune.replace_head(model, classes)
    training.set_trainable(model, True)
    setup = training.setup("cpu", "float32")
    opt = training.adamw(model, lr=0.01)
    weight = finetune.class_weights(df["label"], 3)
    tf = ImageTransform(proc, 32)
    loader = lambda: make_loader(df["path"], df["label"], tf, batch_size=24)  # noqa: E731
    first = finetune._run_epoch(model, loader(), setup, weight)["loss"]
    for _ in range(8):
        finetune._run_epoch(model, loader(), setup, weight, optimizer=opt)
    after = finetune._run_epoch(model, loader(), setup, weight)["loss"]
    assert after < 0.7 * first


def test_cnn_classifier_round_trip_predicts_the_same_logits(tmp_path):
    from artsim_lib.models import load_backbone

    backbone, proc = load_backbone("effnet_lite0", image_size=32)
    model = CNNClassifier(backbone, ["a", "b", "c"], seed=3).eval()
    target = trained.save_checkpoint(model, proc, tmp_path / "best", {"classes": ["a", "b", "c"]})
    again, proc2 = trained.load_classifier(target)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=x).logits, again(pixel_values=x).logits, atol=1e-6)
    assert again.classes == ["a", "b", "c"] and proc2.crop_size == proc.crop_size


def test_checkpoint_round_trip_predicts_the_same_logits(tmp_path, tiny_resnet):
    from transformers import ResNetForImageClassification

    model, proc = load_resnet(tiny_resnet)
    finetune.replace_head(model, ["a", "b", "c", "d"], seed=3)
    target = trained.save_checkpoint(model, proc, tmp_path / "best", {"classes": ["a", "b", "c", "d"]})
    again = ResNetForImageClassification.from_pretrained(target).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(pixel_values=x).logits, again(pixel_values=x).logits, atol=1e-6)
    assert again.config.id2label[3] == "d" and json.loads((target / trained.FINETUNE_INFO).read_text())["classes"]


@pytest.mark.parametrize("backbone", ["effnet_lite0", "resnet"])
def test_finetune_end_to_end(run_dir, backbone):
    P = _params([f"finetune.backbone={backbone}"])
    m = tiny_manifest(run_dir / "images")
    result = finetune.run(P, manifest=m, progress=False)
    hist = pd.read_parquet(P.run.root / "finetune" / "history.parquet")
    assert set(hist["split"]) == {"train", "val"} and hist["epoch"].max() == result.metrics["epochs_run"]
    metrics = json.loads((P.run.root / "finetune" / "metrics.json").read_text())
    assert metrics["num_labels"] == 3 and metrics["test"]["top5"] is None and metrics["test"]["n"] == 9
    assert set(metrics["test"]["per_class_f1"]) == set(result.classes) and 0 <= metrics["test"]["macro_f1"] <= 1
    assert result.confusion.sum() == 9 and len(result.predictions) == 9
    val = hist[hist["split"] == "val"]
    assert metrics["best_epoch"] == int(val.loc[val["loss"].idxmin(), "epoch"])
    model, proc = trained.load_finetuned(P.run.root)
    assert isinstance(model, CNNClassifier) and model.backbone.kind == backbone
    assert model.classes == result.classes and len(model.classes) == 3 and not model.training
    assert metrics["backbone"] == backbone == trained.finetuned_backbone(P.run.root)
    emb = resnet_embed(model, proc, list(m["path"][:5]), batch_size=2)
    assert emb.shape == (5, {"resnet": 64, "effnet_lite0": 1280}[backbone])
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)
    # The test split was scored with the saved checkpoint: re-scoring it gives the same top-1.
    test = m[m["split"] == "test"]
    tf = ImageTransform(proc)
    with torch.no_grad():
        logits = model(pixel_values=torch.stack([tf(p) for p in test["path"]])).logits
    labels = torch.tensor([result.classes.index(s) for s in test["style"]])
    assert finetune.topk_accuracy(logits, labels, 1) == pytest.approx(metrics["test"]["top1"])
    # The measure is named after the backbone it fine-tuned; the other backbone's name is unavailable.
    from artsim_lib.measures import registry

    P.run.params_file.write_text(P.to_yaml())
    measure = registry.load_measure(f"{backbone}_finetuned", P.run.root)
    assert np.allclose(measure.embed(list(m["path"][:5])), emb.numpy(), atol=1e-5)
    other = {"resnet": "effnet_lite0", "effnet_lite0": "resnet"}[backbone]
    with pytest.raises(registry.MeasureUnavailableError, match=f"fine-tuned '{backbone}'"):
        registry.load_measure(f"{other}_finetuned", P.run.root)
    # load() gives back the complete checkpoint made with the same params, and trains nothing.
    stamp = (result.best_dir / trained.CLASSIFIER_WEIGHTS).stat().st_mtime_ns
    assert finetune.load(P) == result.best_dir
    assert (result.best_dir / trained.CLASSIFIER_WEIGHTS).stat().st_mtime_ns == stamp


def test_load_says_run_stage_07_first(run_dir):
    P = _params()
    with pytest.raises(StageNotRunError, match="is missing: run stage 07 first"):
        finetune.load(P)  # nothing trained
    best = P.run.root / "finetune" / "best"
    best.mkdir(parents=True)
    info = {"key": finetune.finetune_key(P), "complete": False}
    (best / trained.FINETUNE_INFO).write_text(json.dumps(info))
    with pytest.raises(StageNotRunError, match="is missing: run stage 07 first"):
        finetune.load(P)  # an interrupted run: the checkpoint was never marked complete
    (best / trained.FINETUNE_INFO).write_text(json.dumps({**info, "complete": True}))
    assert finetune.load(P) == best
    with pytest.raises(StageNotRunError, match="made with other params: run stage 07 first"):
        finetune.load(_params(["finetune.lr=0.02"]))


def test_finetune_stops_early_on_a_scripted_val_loss(run_dir, monkeypatch):
    script = iter([1.0, 0.7, 0.8, 0.75, 0.9, 0.1, 0.1, 0.1])  # best at epoch 2; 3 bad epochs follow
    real = finetune._run_epoch

    def scripted(model, loader, setup, weight, optimizer=None, scheduler=None, bar=None):
        r = real(model, loader, setup, weight, optimizer, scheduler, bar)
        if optimizer is None:  # an evaluation pass: the loop's val pass gets the scripted loss
            r["loss"] = next(script, r["loss"])
        return r

    monkeypatch.setattr(finetune, "_run_epoch", scripted)
    P = _params(["finetune.epochs=8", "finetune.patience=3"])
    result = finetune.run(P, manifest=tiny_manifest(run_dir / "images", (4, 1, 1)), progress=False)
    val = result.history[result.history["split"] == "val"]
    assert val["loss"].tolist() == [1.0, 0.7, 0.8, 0.75, 0.9]
    assert result.metrics["epochs_run"] == 5 and result.metrics["stopped_early"]
    assert result.metrics["best_epoch"] == 2
    assert json.loads((result.best_dir / trained.FINETUNE_INFO).read_text())["epoch"] == 2


def test_layer4_unfreeze_trains_only_the_last_stage_and_the_head(tmp_path):
    from artsim_lib.models import load_backbone

    m = tiny_manifest(tmp_path)
    df, classes = finetune.label_frame(m[m["split"] == "train"], "style")
    backbone, proc = load_backbone("effnet_lite0", image_size=32)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = CNNClassifier(backbone, classes, seed=0).set_unfreeze("layer4")
    model.train()
    assert not model.backbone.net._bn0.training and all(mod.training for mod in model.backbone.last_stage())
    setup = training.setup("cpu", "float32")
    opt = training.adamw(model, lr=0.01)
    loader = make_loader(df["path"], df["label"], ImageTransform(proc, 32), batch_size=12)
    finetune._run_epoch(model, loader, setup, finetune.class_weights(df["label"], 3), optimizer=opt)
    after = model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(backbone.unfreeze_prefixes("layer4")) for k in changed)  # BN stats too
