"""Stage 07: fine-tune an ImageNet CNN to classify the paintings (by style, genre or artist).

The CNN is ``finetune.backbone`` (:mod:`artsim_lib.models.backbones`): ResNet-50 in the full
study, the real pretrained EfficientNet-Lite0 in the smoke profile, both through one interface
(``(model, preprocess)``, features ``[B, D]``). A fresh linear head for the study's classes goes
on top; the whole network (or, with ``finetune.unfreeze: layer4``, its last stage) trains with
AdamW, a warm-up + cosine (or linear) schedule, inverse-frequency class weights, light
augmentation and early stopping on the validation loss.
The best epoch is saved (weights as safetensors, the backbone's spec, its image processor and a
JSON of the params that made it) under ``<run>/finetune/best/``; the test split is scored only
once, with that checkpoint::

    result = finetune(P)                          # history, metrics, best_dir
    model, processor = load_finetuned(P.run.root)
    emb = resnet_embed(model, processor, images)  # [B, D], L2-normalised pooled features
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from artsim_lib import models
from artsim_lib.io import paths
from artsim_lib.models import training
from artsim_lib.io.workers import worker_count
from artsim_lib.models.image_batches import Augment, ImageTransform, make_loader, open_rgb, pixel_batch, sized_processor

INFO_FILE = "finetune_params.json"  # beside the weights in best/: the params and classes
WEIGHTS_FILE, SPEC_FILE = "classifier.safetensors", "backbone.json"  # a CNNClassifier checkpoint


class CNNClassifier(torch.nn.Module):
    """A :class:`~artsim_lib.models.backbones.Backbone` + a linear head over its pooled features.
    ``forward(pixel_values)`` returns an output with ``.logits`` ``[B, K]``, like transformers'."""

    def __init__(self, backbone, classes: Sequence[str], seed: int = 0, unfreeze: str = "all"):
        super().__init__()
        self.backbone, self.classes, self.unfreeze = backbone, list(classes), unfreeze
        self.classifier = _seeded_linear(backbone.dim, len(classes), seed)

    def set_unfreeze(self, unfreeze: str) -> "CNNClassifier":
        """``requires_grad`` on the head, and on the backbone per ``unfreeze`` (all | layer4)."""
        self.unfreeze = unfreeze
        training.set_trainable(self, True)
        training.set_trainable(self.backbone, self.backbone.unfreeze_prefixes(unfreeze))
        return self

    def train(self, mode: bool = True) -> "CNNClassifier":
        """Train mode for the head and the trained part of the backbone; a frozen part stays in eval
        mode, so its batch-norm statistics do not move."""
        super().train(mode)
        if mode and self.unfreeze != "all":
            self.backbone.eval()
            for module in self.backbone.last_stage():
                module.train()
        return self

    def forward(self, pixel_values: torch.Tensor):
        from transformers.modeling_outputs import ImageClassifierOutput

        return ImageClassifierOutput(logits=self.classifier(self.backbone(pixel_values)))  # [B, K]


def _seeded_linear(d_in: int, d_out: int, seed: int) -> torch.nn.Linear:
    """torch's Linear init, drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(d_in, d_out)
    with torch.no_grad():
        bound = 1.0 / d_in ** 0.5
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.uniform_(-bound, bound, generator=gen)
    return head


@dataclass
class FinetuneResult:
    """What stage 07 produced."""

    history: pd.DataFrame      # epoch, split, loss, acc, lr, seconds, images_per_s
    metrics: dict              # what metrics.json holds
    best_dir: Path
    classes: list[str]
    predictions: pd.DataFrame  # test rows: id, label, pred, p_pred
    confusion: np.ndarray      # [K, K], rows true, columns predicted


def finetune_key(P) -> dict:
    """What the fine-tuned checkpoint depends on; a checkpoint made from other params is stale."""
    from artsim_lib.stages.s02_preprocess import manifest_key

    return paths.json_roundtrip({"finetune": P.finetune.model_dump(mode="json"), "model": P.models.resnet,
                                 "seed": P.seed, "manifest": manifest_key(P)})


# -- labels, weights, head --------------------------------------------------------------------------


def label_frame(manifest: pd.DataFrame, column: str) -> tuple[pd.DataFrame, list[str]]:
    """Rows with a ``column`` value, and an int ``label``. Classes are the sorted values seen in
    train; val/test rows of a class train never saw are dropped (they could not be predicted)."""
    if column not in manifest.columns:
        raise KeyError(f"finetune.label: the manifest has no column {column!r}")
    has = manifest[column].notna() & manifest[column].astype("string").str.strip().ne("")
    df = manifest[has.fillna(False).to_numpy(bool)].copy()
    classes = sorted(df.loc[df["split"] == "train", column].astype(str).unique())
    if len(classes) < 2:
        raise ValueError(f"finetune.label={column!r}: {len(classes)} class(es) in the train split; need 2+ "
                         f"(the Kaggle layout has no genre, use style; huggan has genre)")
    index = {c: i for i, c in enumerate(classes)}
    df = df[df[column].astype(str).isin(index)].copy()
    df["label"] = df[column].astype(str).map(index).astype(int)
    return df.reset_index(drop=True), classes


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse class frequency ``N / (K · n_c)`` (1 for every class when balanced; 0 for an absent class). # [K]"""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def replace_head(model, classes: Sequence[str], seed: int = 0):
    """Swap the classifier for a freshly initialised ``Linear(D, len(classes))`` and set
    ``num_labels``/``id2label``/``label2id``, so ``save_pretrained`` round-trips it."""
    old = model.classifier[-1]
    head = _seeded_linear(old.in_features, len(classes), seed)
    model.classifier[-1] = head.to(old.weight.device, old.weight.dtype)
    model.num_labels = model.config.num_labels = len(classes)
    model.config.id2label = {i: c for i, c in enumerate(classes)}
    model.config.label2id = {c: i for i, c in enumerate(classes)}
    return model


# -- metrics ------------------------------------------------------------------------------------------


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Share of rows whose target is among the ``k`` highest logits."""
    if len(targets) == 0:
        return float("nan")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # [N, k]
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def topk_chance(k: int, num_classes: int) -> float:
    """Top-k accuracy of a uniformly random ranking of ``num_classes`` classes: k/K (8 classes:
    top-1 0.125, top-5 0.625), whatever the split's class balance."""
    return min(k, num_classes) / num_classes if num_classes else float("nan")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``. # [K, K]"""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 of each class from a confusion matrix (0 where a class is never predicted nor present). # [K]"""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)  # predicted + true = 2TP + FP + FN
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def split_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """top-1, top-5 (only with 5+ classes), each with its chance (:func:`topk_chance`), macro F1,
    per-class F1 and the confusion matrix."""
    cm = confusion_matrix(targets.numpy(), logits.argmax(1).numpy(), len(classes))
    f1 = per_class_f1(cm)
    present = cm.sum(1) > 0  # macro F1 over the classes the split holds
    return {
        "n": int(len(targets)),
        "top1": topk_accuracy(logits, targets, 1),
        "top5": topk_accuracy(logits, targets, 5) if len(classes) >= 5 else None,
        "top1_chance": topk_chance(1, len(classes)),
        "top5_chance": topk_chance(5, len(classes)) if len(classes) >= 5 else None,
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class_f1": {c: float(v) for c, v in zip(classes, f1)},
        "confusion": cm.tolist(),
    }


def results_table(metrics: dict) -> pd.DataFrame:
    """The val and test rows of ``metrics.json``: images, top-1 and top-5 each beside its chance
    (k/K of the ``num_labels`` classes; top-5 only with 5+ classes) and macro F1."""
    k = metrics["num_labels"]
    rows = []
    for s in ("val", "test"):
        m = metrics.get(s)
        if not m:
            continue
        five = m.get("top5") is not None
        rows.append({"split": s, "images": m["n"], "top-1": m["top1"], "top-1 chance": topk_chance(1, k),
                     "top-5": m["top5"] if five else None, "top-5 chance": topk_chance(5, k) if five else None,
                     "macro F1": m["macro_f1"]})
    return pd.DataFrame(rows, columns=["split", "images", "top-1", "top-1 chance", "top-5", "top-5 chance",
                                       "macro F1"])


# -- the loop -------------------------------------------------------------------------------------------


def _run_epoch(model, loader, setup: training.Setup, weight: torch.Tensor, optimizer=None,
               scheduler=None, bar=None) -> dict:
    """One pass; trains when an optimizer is given. Returns loss, acc, n, seconds, logits, targets."""
    train = optimizer is not None
    model.train(train)
    losses, sizes, all_logits, all_targets = [], [], [], []
    t0 = time.perf_counter()
    with torch.set_grad_enabled(train):
        for pixels, y in loader:
            pixels, y = pixels.to(setup.device, non_blocking=True), y.to(setup.device)
            with setup.autocast():
                logits = model(pixel_values=pixels).logits  # [B, K]
            loss = F.cross_entropy(logits.float(), y, weight=weight)
            if train:
                setup.step(loss, optimizer, scheduler)
            losses.append(loss.item())
            sizes.append(len(y))
            all_logits.append(logits.detach().float().cpu())
            all_targets.append(y.cpu())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    logits = torch.cat(all_logits) if all_logits else torch.empty(0, 0)
    targets = torch.cat(all_targets) if all_targets else torch.empty(0, dtype=torch.long)
    seconds = time.perf_counter() - t0
    return {"loss": training.mean_of(losses, sizes), "n": int(sum(sizes)), "seconds": seconds,
            "acc": topk_accuracy(logits, targets, 1) if len(targets) else float("nan"),
            "images_per_s": sum(sizes) / seconds if seconds > 0 else float("nan"),
            "logits": logits, "targets": targets}


def save_checkpoint(model, processor, target: Path, info: dict) -> Path:
    """Model + processor and ``info`` as JSON into ``target``, atomically: a :class:`CNNClassifier`
    as safetensors + its backbone spec, a transformers model with ``save_pretrained``."""
    from safetensors.torch import save_file

    with training.quiet_hf_progress(), paths.atomic_dir(target) as tmp:
        if isinstance(model, CNNClassifier):
            state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            spec = {**models.backbone_spec(model.backbone), "classes": model.classes}
            (tmp / SPEC_FILE).write_text(json.dumps(spec), encoding="utf-8")
        else:
            model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    return target


def load_classifier(directory, device="cpu"):
    """``(CNNClassifier, image processor)`` saved by :func:`save_checkpoint`, frozen, in eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    d = Path(directory)
    spec = json.loads((d / SPEC_FILE).read_text(encoding="utf-8"))
    model = CNNClassifier(models.backbone_from_spec(spec), spec["classes"])
    model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
    return models.freeze(model.to(models.pick_device(device))), AutoImageProcessor.from_pretrained(d)


def _loaders(df, tf_train, tf_eval, cfg, P, epoch):
    """The epoch's shuffled, augmented train loader and the fixed val/test loaders."""
    tr = df[df["split"] == "train"]
    kw = {"batch_size": cfg.batch_size, "num_workers": worker_count(P.num_workers)}
    out = {"train": make_loader(tr["path"], tr["label"], tf_train, shuffle=True,
                                seed=training.epoch_seed(P.seed, epoch), drop_last=len(tr) > cfg.batch_size, **kw)}
    for split in ("val", "test"):
        part = df[df["split"] == split]
        out[split] = make_loader(part["path"], part["label"], tf_eval, **kw)
    return out


def finetune(P, manifest: pd.DataFrame | None = None, progress: bool = True) -> FinetuneResult:
    """Run stage 07 for params ``P``: train, keep the best epoch by validation loss (train loss
    when there is no val split), score it on test, write history/metrics/checkpoint."""
    from artsim_lib.io.manifest import require_manifest

    cfg, out_dir = P.finetune, P.run.sub("finetune")
    manifest = require_manifest(P) if manifest is None else manifest
    df, classes = label_frame(manifest, cfg.label)
    setup = training.setup(P.device, P.dtype, cfg.mixed_precision)
    torch.manual_seed(P.seed)
    backbone, processor = _pretrained_backbone(P, setup.device)
    model = CNNClassifier(backbone, classes, seed=P.seed).to(setup.device).set_unfreeze(cfg.unfreeze)
    processor = sized_processor(processor, cfg.image_size)
    tf_eval = ImageTransform(processor, cfg.image_size)
    tf_train = ImageTransform(processor, cfg.image_size, Augment() if cfg.augment else None)
    n_train = int((df["split"] == "train").sum())
    weight = class_weights(df.loc[df["split"] == "train", "label"], len(classes)) if cfg.class_weights \
        else torch.ones(len(classes))
    weight = weight.to(setup.device)
    per_epoch = training.num_batches(n_train, cfg.batch_size, drop_last=n_train > cfg.batch_size)
    opt = training.adamw(model, cfg.lr, cfg.weight_decay)
    sched = training.warmup_schedule(opt, cfg.epochs * per_epoch, cfg.warmup_ratio, cfg.schedule)
    stopper, history = training.EarlyStopping(cfg.patience), training.History()
    best_dir, key = out_dir / "best", finetune_key(P)
    info = {"key": key, "label": cfg.label, "classes": classes, "image_size": cfg.image_size, "complete": False,
            "backbone": cfg.backbone, "backbone_label": backbone.label, "unfreeze": cfg.unfreeze}
    has_val = bool((df["split"] == "val").any())
    bar = tqdm(total=cfg.epochs * per_epoch, desc="fine-tune", disable=not progress)
    torch.manual_seed(P.seed)
    for epoch in range(1, cfg.epochs + 1):
        lr = opt.param_groups[0]["lr"]
        loaders = _loaders(df, tf_train, tf_eval, cfg, P, epoch)
        tr = _run_epoch(model, loaders["train"], setup, weight, opt, sched, bar)
        va = _run_epoch(model, loaders["val"], setup, weight) if has_val else tr
        for split, r in (("train", tr), ("val", va))[: 2 if has_val else 1]:
            history.log(epoch=epoch, split=split, loss=r["loss"], acc=r["acc"], lr=lr,
                        seconds=r["seconds"], images_per_s=r["images_per_s"])
        if stopper.step(va["loss"], epoch):
            save_checkpoint(model, processor, best_dir, {**info, "epoch": epoch, "val_loss": va["loss"]})
        if stopper.should_stop:
            break
    bar.close()
    return _finish(P, df, classes, history.frame(), stopper, epoch, best_dir, weight, setup, loaders, key)


def _pretrained_backbone(P, device):
    """Stage 07's starting point: ``finetune.backbone``, pretrained, with its processor."""
    kind = P.finetune.backbone
    if kind == "resnet":
        models.ensure_tiny_checkpoints(P, ["resnet"])
        return models.load_backbone("resnet", P.model_ref("resnet"), device)
    return models.load_backbone(kind, None, device)


def _finish(P, df, classes, hist, stopper, last_epoch, best_dir, weight, setup, loaders, key) -> FinetuneResult:
    """Score the best checkpoint on val and test; write history.parquet, metrics.json, mark complete."""
    model, _ = load_classifier(best_dir, setup.device)
    scored = {s: _run_epoch(model, loaders[s], setup, weight) for s in ("val", "test")}
    test = scored["test"]
    if test["n"] == 0:
        raise ValueError("finetune: the test split holds no painting of a class seen in train")
    metrics = {
        "label": P.finetune.label, "classes": classes, "num_labels": len(classes), "backbone": P.finetune.backbone,
        "best_epoch": stopper.best_epoch, "epochs_run": last_epoch,
        "stopped_early": last_epoch < P.finetune.epochs, "best_val_loss": stopper.best,
        "test": split_metrics(test["logits"], test["targets"], classes),
        "val": split_metrics(scored["val"]["logits"], scored["val"]["targets"], classes)
        if scored["val"]["n"] else None,
        "train_images_per_s": float(hist.loc[hist["split"] == "train", "images_per_s"].median()),
    }
    out_dir = best_dir.parent
    paths.write_parquet(hist, out_dir / "history.parquet", meta=key)
    paths.atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    info_path = best_dir / INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8"))
    paths.atomic_write_text(info_path, json.dumps({**info, "complete": True}, indent=1))
    rows = df[df["split"] == "test"].reset_index(drop=True)
    probs = test["logits"].softmax(1)  # [N_test, K], in the loader's (= the rows') order
    preds = pd.DataFrame({"id": rows["id"], "label": [classes[i] for i in rows["label"]],
                          "pred": [classes[i] for i in probs.argmax(1).tolist()],
                          "p_pred": probs.max(1).values.numpy()})
    return FinetuneResult(hist, metrics, best_dir, classes, preds, np.array(metrics["test"]["confusion"]))


# -- using the result -------------------------------------------------------------------------------------


def _best_dir(run_dir) -> Path:
    d = Path(run_dir)
    return d if (d / INFO_FILE).exists() else d / "finetune" / "best"


def finetuned_info(run_dir) -> dict | None:
    """The JSON saved beside the best checkpoint (a run dir or the checkpoint dir), or None."""
    f = _best_dir(run_dir) / INFO_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else None


def require_finetuned(P) -> Path:
    """The best checkpoint directory of stage 07 for ``P``, fine-tuning first when it is missing,
    incomplete or was made with other params."""
    info = finetuned_info(P.run.root)
    if info and info.get("complete") and info.get("key") == finetune_key(P):
        return _best_dir(P.run.root)
    return finetune(P).best_dir


def load_finetuned(run_dir, device="cpu", dtype=torch.float32):
    """``(CNNClassifier, image processor)`` of stage 07, frozen, in eval mode (a checkpoint saved
    with ``save_pretrained`` loads as ResNetForImageClassification). ``run_dir`` is a run
    directory (its ``finetune/best``) or the checkpoint directory itself."""
    d = _best_dir(run_dir)
    if not (d / INFO_FILE).exists():
        raise FileNotFoundError(f"{d}: no fine-tuned checkpoint (run stage 07, notebooks/07-finetune.ipynb)")
    if (d / SPEC_FILE).exists():
        model, processor = load_classifier(d, device)
        return model.to(dtype), processor
    return models.load_resnet(str(d), device, dtype)


def finetuned_backbone(run_dir) -> str | None:
    """The backbone kind stage 07 trained in ``run_dir`` (``resnet`` for a transformers checkpoint), or None."""
    info = finetuned_info(run_dir)
    return None if info is None else info.get("backbone", "resnet")


@torch.no_grad()
def resnet_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Pooled features of a CNNClassifier, a Backbone, a ResNetForImageClassification or a ResNetModel. # [B, D]"""
    if isinstance(model, CNNClassifier):
        return model.backbone(pixels)
    if isinstance(model, models.Backbone):
        return model(pixels)
    backbone = getattr(model, "resnet", model)
    return backbone(pixel_values=pixels).pooler_output.flatten(1)


cnn_features = resnet_features  # the name for any backbone


@torch.no_grad()
def resnet_embed(model, processor, images: Sequence, batch_size: int = 32) -> torch.Tensor:
    """L2-normalised pooled ResNet features of PIL images or paths, ``[B, D]`` float32 on the CPU."""
    model.eval()
    p = next(model.parameters())
    out = []
    for start in range(0, len(images), batch_size):
        pixels = pixel_batch(processor, [open_rgb(x) for x in images[start:start + batch_size]])
        out.append(resnet_features(model, pixels.to(p.device, p.dtype)).float().cpu())  # [b, D]
    if not out:
        return torch.empty(0, 0)
    return F.normalize(torch.cat(out), dim=-1)


# -- figures ------------------------------------------------------------------------------------------------


def plot_confusion(cm: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix (test)"):
    """Row-normalised confusion matrix with the counts written in the cells. Returns the Figure."""
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = 0.45 * len(classes) + 2.5
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, c="w" if share[i, j] > 0.5 else "k")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return fig


def plot_f1(per_class: dict[str, float], macro: float | None = None, title: str = "Per-class F1 (test)"):
    """Horizontal bars of per-class F1, the macro mean as a dashed line. Returns the Figure."""
    import matplotlib.pyplot as plt

    items = sorted(per_class.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(items) + 1.4))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4C72B0")
    if macro is not None:
        ax.axvline(macro, ls="--", c="k", lw=1, label=f"macro F1 {macro:.2f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(xlim=(0, 1), xlabel="F1", title=title)
    fig.tight_layout()
    return fig


def plot_augmentations(images: Sequence, size: int, n: int = 5, seed: int = 0):
    """Each image (row) beside ``n`` of its training augmentations at ``size``². Returns the Figure."""
    import matplotlib.pyplot as plt

    from artsim_lib.models.image_batches import augment_image

    fig, axes = plt.subplots(len(images), n + 1, figsize=(1.7 * (n + 1), 1.8 * len(images)), squeeze=False)
    for r, image in enumerate(images):
        img = open_rgb(image)
        rng = np.random.default_rng([seed, r])
        tiles = [img] + [augment_image(img, size, rng, Augment()) for _ in range(n)]
        for c, (ax, tile) in enumerate(zip(axes[r], tiles)):
            ax.imshow(tile)
            ax.axis("off")
            if r == 0:
                ax.set_title("input" if c == 0 else f"augmented {c}", fontsize=8)
    fig.tight_layout()
    return fig


def register_measures() -> None:
    """Register with :mod:`artsim_lib.measures.registry` the cosine of pooled ResNet features before fine-tuning
    ('resnet': the run's ``models.resnet`` at ``finetune.image_size``) and after it: '<backbone>_finetuned'
    for each backbone ('resnet_finetuned', 'effnet_lite0_finetuned'); each reads stage 07's checkpoint
    only when stage 07 trained that backbone, so a measure's name always says what it ran on."""
    from artsim_lib.measures import registry as compare
    from artsim_lib.measures.scoring import run_model_ref, run_params, unavailable_as_such

    def load(name: str, run_dir, ref, resize: bool):
        P = run_params(run_dir)
        model, processor = models.load_resnet(ref(P), models.pick_device(P.device), torch.float32)
        processor = sized_processor(processor, P.finetune.image_size) if resize else processor
        return compare.EmbeddingMeasure(name, lambda imgs: resnet_embed(model, processor, list(imgs)),
                                        P.evaluation.batch_size, pass_sources=True)

    def load_finetuned_measure(kind: str, run_dir):
        name = f"{kind}_finetuned"
        P = run_params(run_dir)
        best = compare.require_dir(_best_dir(run_dir), name, "07")
        trained = finetuned_backbone(run_dir)
        if trained != kind:
            raise compare.MeasureUnavailableError(
                f"measure {name!r}: stage 07 of {run_dir} fine-tuned {trained!r}, not {kind!r} "
                f"(use {trained}_finetuned, or set finetune.backbone={kind})")
        model, processor = load_finetuned(best, models.pick_device(P.device))
        return compare.EmbeddingMeasure(name, lambda imgs: resnet_embed(model, processor, list(imgs)),
                                        P.evaluation.batch_size, pass_sources=True)

    compare.register_measure("resnet", unavailable_as_such(
        lambda d: load("resnet", d, lambda P: run_model_ref(P, d, "resnet"), True)), replace=True)
    for kind in models.BACKBONE_KINDS:
        compare.register_measure(f"{kind}_finetuned", unavailable_as_such(
            lambda d, k=kind: load_finetuned_measure(k, d)), replace=True)
