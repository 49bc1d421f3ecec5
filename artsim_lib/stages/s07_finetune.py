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

    result = run(P)                               # history, metrics, best_dir
    best = load(P)                                # the checkpoint, or StageNotRunError: run stage 07 first
    model, processor = trained.load_finetuned(best)
    emb = heads.resnet_embed(model, processor, images)  # [B, D], L2-normalised pooled features

The model is :class:`artsim_lib.models.heads.CNNClassifier`, its files are written and read by
:mod:`artsim_lib.measures.trained`, its figures are in :mod:`artsim_lib.plots.finetune`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from artsim_lib import models
from artsim_lib.core.metrics import confusion_matrix, per_class_f1, topk_chance  # noqa: F401  (this stage's API)
from artsim_lib.io import paths
from artsim_lib.io.artifacts import StageNotRunError
from artsim_lib.io.workers import worker_count
from artsim_lib.measures import trained
from artsim_lib.models import training
from artsim_lib.models.heads import CNNClassifier, seeded_linear
from artsim_lib.models.image_batches import Augment, ImageTransform, make_loader, sized_processor


@dataclass
class FinetuneResult:
    """What stage 07 produced."""

    history: pd.DataFrame  # epoch, split, loss, acc, lr, seconds, images_per_s
    metrics: dict  # what metrics.json holds
    best_dir: Path
    classes: list[str]
    predictions: pd.DataFrame  # test rows: id, label, pred, p_pred
    confusion: np.ndarray  # [K, K], rows true, columns predicted


def finetune_key(P) -> dict:
    """What the fine-tuned checkpoint depends on; a checkpoint made from other params is stale."""
    from artsim_lib.stages.s02_preprocess import manifest_key

    return paths.json_roundtrip(
        {
            "finetune": P.finetune.model_dump(mode="json"),
            "model": P.models.resnet,
            "seed": P.seed,
            "manifest": manifest_key(P),
        }
    )


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
        raise ValueError(
            f"finetune.label={column!r}: {len(classes)} class(es) in the train split; need 2+ "
            f"(the Kaggle layout has no genre, use style; huggan has genre)"
        )
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
    head = seeded_linear(old.in_features, len(classes), seed)
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
        rows.append(
            {
                "split": s,
                "images": m["n"],
                "top-1": m["top1"],
                "top-1 chance": topk_chance(1, k),
                "top-5": m["top5"] if five else None,
                "top-5 chance": topk_chance(5, k) if five else None,
                "macro F1": m["macro_f1"],
            }
        )
    return pd.DataFrame(rows, columns=["split", "images", "top-1", "top-1 chance", "top-5", "top-5 chance", "macro F1"])


# -- the loop -------------------------------------------------------------------------------------------


def _run_epoch(
    model, loader, setup: training.Setup, weight: torch.Tensor, optimizer=None, scheduler=None, bar=None
) -> dict:
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
    return {
        "loss": training.mean_of(losses, sizes),
        "n": int(sum(sizes)),
        "seconds": seconds,
        "acc": topk_accuracy(logits, targets, 1) if len(targets) else float("nan"),
        "images_per_s": sum(sizes) / seconds if seconds > 0 else float("nan"),
        "logits": logits,
        "targets": targets,
    }


@dataclass
class _Data:
    """One run's labelled rows and classes, and the loaders over them (train: shuffled and
    augmented per epoch; val/test: fixed)."""

    df: pd.DataFrame
    classes: list[str]
    tf_train: ImageTransform
    tf_eval: ImageTransform
    batch_size: int
    num_workers: int
    seed: int

    def split(self, name: str) -> pd.DataFrame:
        return self.df[self.df["split"] == name]

    def train_loader(self, epoch: int):
        tr = self.split("train")
        return make_loader(
            tr["path"],
            tr["label"],
            self.tf_train,
            shuffle=True,
            seed=training.epoch_seed(self.seed, epoch),
            drop_last=len(tr) > self.batch_size,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )

    def eval_loader(self, split: str):
        part = self.split(split)
        return make_loader(
            part["path"], part["label"], self.tf_eval, batch_size=self.batch_size, num_workers=self.num_workers
        )


@dataclass
class _Fit:
    """What the epoch loop leaves: the history, the early stopper (best epoch and loss), the last epoch."""

    history: pd.DataFrame
    stopper: training.EarlyStopping
    epochs_run: int


def run(P, manifest: pd.DataFrame | None = None, progress: bool = True) -> FinetuneResult:
    """Run stage 07 for params ``P``: train, keep the best epoch by validation loss (train loss
    when there is no val split), score it on test, write history/metrics/checkpoint."""
    from artsim_lib.stages import s02_preprocess

    cfg, out_dir = P.finetune, P.run.sub("finetune")
    manifest = s02_preprocess.load(P) if manifest is None else manifest
    df, classes = label_frame(manifest, cfg.label)
    setup = training.setup(P.device, P.dtype, cfg.mixed_precision)
    torch.manual_seed(P.seed)
    backbone, processor = _pretrained_backbone(P, setup.device)
    model = CNNClassifier(backbone, classes, seed=P.seed).to(setup.device).set_unfreeze(cfg.unfreeze)
    processor = sized_processor(processor, cfg.image_size)
    data = _Data(
        df,
        classes,
        ImageTransform(processor, cfg.image_size, Augment() if cfg.augment else None),
        ImageTransform(processor, cfg.image_size),
        cfg.batch_size,
        worker_count(P.num_workers),
        P.seed,
    )
    weight = (
        class_weights(data.split("train")["label"], len(classes)) if cfg.class_weights else torch.ones(len(classes))
    )
    weight = weight.to(setup.device)
    best_dir, key = out_dir / "best", finetune_key(P)
    info = {
        "key": key,
        "label": cfg.label,
        "classes": classes,
        "image_size": cfg.image_size,
        "complete": False,
        "backbone": cfg.backbone,
        "backbone_label": backbone.label,
        "unfreeze": cfg.unfreeze,
    }
    fit = _train(P, model, processor, data, weight, setup, best_dir, info, progress)
    scored = _score_best(best_dir, data, weight, setup)
    metrics = _metrics(P, classes, fit, scored)
    _write_results(out_dir, best_dir, fit.history, metrics, key)
    return FinetuneResult(
        fit.history,
        metrics,
        best_dir,
        classes,
        _predictions(data, scored["test"]),
        np.array(metrics["test"]["confusion"]),
    )


def _pretrained_backbone(P, device):
    """Stage 07's starting point: ``finetune.backbone``, pretrained, with its processor."""
    kind = P.finetune.backbone
    if kind == "resnet":
        models.ensure_tiny_checkpoints(P, ["resnet"])
        return models.load_backbone("resnet", P.model_ref("resnet"), device)
    return models.load_backbone(kind, None, device)


def _train(P, model, processor, data: _Data, weight, setup, best_dir: Path, info: dict, progress: bool) -> _Fit:
    """The epoch loop: AdamW with warm-up, early stopping on the validation loss; each new best
    epoch is saved to ``best_dir`` (incomplete until :func:`_write_results`)."""
    cfg = P.finetune
    n_train = len(data.split("train"))
    per_epoch = training.num_batches(n_train, cfg.batch_size, drop_last=n_train > cfg.batch_size)
    opt = training.adamw(model, cfg.lr, cfg.weight_decay)
    sched = training.warmup_schedule(opt, cfg.epochs * per_epoch, cfg.warmup_ratio, cfg.schedule)
    stopper, history = training.EarlyStopping(cfg.patience), training.History()
    has_val = not data.split("val").empty
    bar = tqdm(total=cfg.epochs * per_epoch, desc="fine-tune", disable=not progress)
    torch.manual_seed(P.seed)
    for epoch in range(1, cfg.epochs + 1):
        lr = opt.param_groups[0]["lr"]
        tr = _run_epoch(model, data.train_loader(epoch), setup, weight, opt, sched, bar)
        va = _run_epoch(model, data.eval_loader("val"), setup, weight) if has_val else tr
        for split, r in (("train", tr), ("val", va))[: 2 if has_val else 1]:
            history.log(
                epoch=epoch,
                split=split,
                loss=r["loss"],
                acc=r["acc"],
                lr=lr,
                seconds=r["seconds"],
                images_per_s=r["images_per_s"],
            )
        if stopper.step(va["loss"], epoch):
            trained.save_checkpoint(model, processor, best_dir, {**info, "epoch": epoch, "val_loss": va["loss"]})
        if stopper.should_stop:
            break
    bar.close()
    return _Fit(history.frame(), stopper, epoch)


def _score_best(best_dir: Path, data: _Data, weight, setup) -> dict:
    """The saved best checkpoint's pass over val and test (logits, targets, loss)."""
    model, _ = trained.load_classifier(best_dir, setup.device)
    scored = {s: _run_epoch(model, data.eval_loader(s), setup, weight) for s in ("val", "test")}
    if scored["test"]["n"] == 0:
        raise ValueError("finetune: the test split holds no painting of a class seen in train")
    return scored


def _metrics(P, classes: list[str], fit: _Fit, scored: dict) -> dict:
    """What metrics.json holds."""
    hist, test, val = fit.history, scored["test"], scored["val"]
    return {
        "label": P.finetune.label,
        "classes": classes,
        "num_labels": len(classes),
        "backbone": P.finetune.backbone,
        "best_epoch": fit.stopper.best_epoch,
        "epochs_run": fit.epochs_run,
        "stopped_early": fit.epochs_run < P.finetune.epochs,
        "best_val_loss": fit.stopper.best,
        "test": split_metrics(test["logits"], test["targets"], classes),
        "val": split_metrics(val["logits"], val["targets"], classes) if val["n"] else None,
        "train_images_per_s": float(hist.loc[hist["split"] == "train", "images_per_s"].median()),
    }


def _write_results(out_dir: Path, best_dir: Path, hist: pd.DataFrame, metrics: dict, key: dict) -> None:
    """history.parquet and metrics.json, then the checkpoint marked complete (what :func:`load` checks)."""
    paths.write_parquet(hist, out_dir / "history.parquet", meta=key)
    paths.atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    trained.mark_complete(best_dir)


def _predictions(data: _Data, test: dict) -> pd.DataFrame:
    """The test rows (id, label, pred, p_pred), in the loader's (= the rows') order."""
    rows = data.split("test").reset_index(drop=True)
    probs = test["logits"].softmax(1)  # [N_test, K]
    classes = data.classes
    return pd.DataFrame(
        {
            "id": rows["id"],
            "label": [classes[i] for i in rows["label"]],
            "pred": [classes[i] for i in probs.argmax(1).tolist()],
            "p_pred": probs.max(1).values.numpy(),
        }
    )


def load(P) -> Path:
    """The best checkpoint directory of stage 07 for ``P`` (read it with
    :func:`artsim_lib.measures.trained.load_finetuned`); :class:`StageNotRunError` when it is
    missing, incomplete or was made with other params."""
    best, info = trained.finetuned_dir(P.run.root), trained.finetuned_info(P.run.root)
    if info and info.get("complete") and info.get("key") == finetune_key(P):
        return best
    raise StageNotRunError("07", "the fine-tuned checkpoint", best, stale=bool(info and info.get("complete")))
