"""Stage 08: siamese networks -- when are two images "the same painting"?

Three steps, as notebook 08 runs them (:func:`run`):

1. **CLIP embeddings**, computed once per image and cached by content
   (:func:`artsim_lib.measures.embeddings.extract_embeddings`; sharded like stages 03 and 05).
2. **The CLIP siamese**: a trainable head (:mod:`artsim_lib.models.heads`) on the frozen CLIP
   embeddings. Anchor (an original), positive (its derivative) and negative (another original)
   go through the *same* head, trained with the study's InfoNCE triplet loss on the cached
   embeddings, never on pixels. The seed's 80/20 and 40/60 train/val splits
   (``siamese.train_splits: [0.8, 0.4]``, named '80-20' and '40-60') are re-drawn per original;
   test is left to stage 09. Saved under ``<run>/siamese/clip-head-<split>/``.
3. **The CNN siamese**: stage 07's fine-tuned backbone + a projection head, trained with the same
   loss (``variant='triplet'``; similarity = cosine of the projections) or with a pair head
   ``[|a-b|, a*b] -> MLP -> sigmoid`` that outputs the similarity directly, trained towards 1 for
   (anchor, positive) and 0 for (anchor, negative) (``variant='regression'``; a ``target`` /
   ``target_neg`` column overrides those targets). With ``siamese.resnet_unfreeze='none'`` the
   backbone is frozen, so its pooled features are computed once per image and only the head
   trains; ``'layer4'`` or ``'all'`` fine-tune it too (at ``resnet_backbone_lr``). Saved under
   ``<run>/siamese/<backbone>-<variant>/`` (``resnet-triplet``, ``effnet_lite0-regression``, ...).

Besides, CLIP's text <-> image accuracy of the captions and prompts (the seed's binary form and
the N-way retrieval form)::

    result = run(P)                     # extraction, both CLIP heads, both CNN variants
    models = load(P)                    # their folders, or StageNotRunError: run stage 08 first
    measure = trained.load_clip_siamese(P.run.root)   # .similarity(a, b), .embed(images)

The saved models are read back as measures by :mod:`artsim_lib.measures.trained`
(``clip_siamese``, ``<backbone>_siamese``, ``<backbone>_regression``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from artsim_lib import models
from artsim_lib.core import losses, metrics
from artsim_lib.core.splits import stratified_split
from artsim_lib.io import paths, shards
from artsim_lib.io.artifacts import StageNotRunError, expect_file
from artsim_lib.io.workers import worker_count
from artsim_lib.measures import embeddings, trained
from artsim_lib.measures.trained import split_name
from artsim_lib.models import heads, training
from artsim_lib.models.heads import VARIANTS, head_config
from artsim_lib.models.image_batches import ImageTransform, make_loader
from artsim_lib.models.training import TrainResult
from artsim_lib.stages import s02_preprocess, s05_generation, s07_finetune

HARD_KINDS = ("same_style", "same_artist")
UNFREEZE_LEVELS = ("none", "layer4", "all")  # layer4: the backbone's last stage (Backbone.unfreeze_prefixes)


# -- 2. the CLIP siamese: the train/val splits ------------------------------------------------------------


def resplit_originals(manifest: pd.DataFrame, share: float, seed: int) -> pd.Series:
    """A new train/val label for every train+val original (``share`` in train, stratified by
    style, seeded); test originals keep 'test'. Indexed by original id."""
    tv = manifest[manifest["split"].isin(["train", "val"])].sort_values("id").reset_index(drop=True)
    labels = stratified_split(tv, {"train": share, "val": 1 - share}, "style", seed)
    out = pd.Series(manifest["split"].to_numpy(), index=manifest["id"].to_numpy(), dtype=object)
    out.loc[tv["id"].to_numpy()] = labels.to_numpy()
    return out


def _pools(orig: pd.DataFrame) -> dict:  # candidate negatives by (kind, split, style or artist)
    pools: dict = {}
    for (split, style), g in orig.groupby(["split", "style"]):
        pools["same_style", split, style] = sorted(g["id"])
        pools["random", split, style] = sorted(orig.loc[(orig["split"] == split) & (orig["style"] != style), "id"])
    for (split, artist), g in orig.groupby(["split", "artist"]):
        pools["same_artist", split, artist] = sorted(g["id"])
    return pools


def split_triplets(triplets: pd.DataFrame, manifest: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """The train+val triplets under a fresh ``share`` split of the originals: ``split`` is the
    anchor's new split; a negative from the other side is re-drawn (seeded, same kind) from the
    anchor's side, or the triplet is dropped when there is none. Test triplets are left out."""
    labels = resplit_originals(manifest, share, seed)
    pools = _pools(manifest[["id", "style", "artist"]].assign(split=labels.loc[manifest["id"]].to_numpy()))
    out = triplets[triplets["anchor_id"].map(labels).isin(["train", "val"])].copy()
    out["split"] = out["anchor_id"].map(labels)
    neg, keep = out["negative_id"].to_numpy(object), np.ones(len(out), bool)
    for i in np.flatnonzero(out["negative_id"].map(labels).to_numpy() != out["split"].to_numpy()):
        row = out.iloc[i]
        by = row["artist"] if row["negative_kind"] == "same_artist" else row["style"]
        pool = [x for x in pools.get((row["negative_kind"], row["split"], by), []) if x != row["anchor_id"]]
        rng = np.random.default_rng(shards.item_seed(seed, row["triplet_id"], "resplit"))
        neg[i], keep[i] = (pool[rng.integers(len(pool))], True) if pool else (neg[i], False)
    out["negative_id"] = neg
    out["negative_path"] = out["negative_id"].map(manifest.set_index("id")["path"])
    return out[keep].reset_index(drop=True)


# -- 2. the CLIP siamese: training on cached embeddings ---------------------------------------------------


@dataclass
class TripletTensors:
    """Triplets as indices into one embedding matrix."""

    emb: torch.Tensor  # [M, D] the distinct images' CLIP embeddings
    a: torch.Tensor  # [T] anchor rows
    p: torch.Tensor  # [T] positive rows
    n: torch.Tensor  # [T] negative rows
    hard: torch.Tensor  # [T] bool: same_style / same_artist negative
    group: torch.Tensor  # [T] the anchor original (masks in-batch negatives of the same painting)


def triplet_tensors(triplets: pd.DataFrame, table: pd.DataFrame) -> TripletTensors:
    """Index ``triplets`` into the embedding table (id, embedding) of :mod:`embeddings`."""
    ids = pd.Index(table["id"])
    rows = [ids.get_indexer(triplets[f"{k}_id"]) for k in ("anchor", "positive", "negative")]
    if any((r < 0).any() for r in rows):
        raise KeyError("some triplet images have no cached embedding; run the extraction step first")
    hard = triplets["negative_kind"].isin(["same_style", "same_artist"]).to_numpy(bool, copy=True)
    as_long = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.long)  # noqa: E731
    return TripletTensors(
        torch.from_numpy(embeddings.embedding_matrix(table)),
        *map(as_long, rows),
        torch.from_numpy(hard),
        as_long(pd.factorize(triplets["anchor_id"])[0]),
    )


@torch.no_grad()
def evaluate(model: heads.Siamese, data: TripletTensors, idx: np.ndarray) -> dict:
    """Loss and triplet accuracy on random and on hard negatives, for the triplets ``idx``."""
    model.eval()
    i = torch.as_tensor(idx, dtype=torch.long, device=data.emb.device)
    z = model.embed(data.emb)  # [M, out_dim]: every image once
    s_pos, s_neg = losses.triplet_similarities(z[data.a[i]], z[data.p[i]], z[data.n[i]])
    hard = data.hard[i]
    loss = losses.infonce_triplet_loss(s_pos, s_neg, model.temperature()).item() if len(i) else math.nan
    return {
        "loss": loss,
        "acc_random": metrics.triplet_accuracy(s_pos[~hard].cpu().numpy(), s_neg[~hard].cpu().numpy()),
        "acc_hard": metrics.triplet_accuracy(s_pos[hard].cpu().numpy(), s_neg[hard].cpu().numpy()),
    }


@dataclass
class SiameseResult:
    """One trained CLIP siamese head."""

    model: heads.Siamese
    history: pd.DataFrame  # epoch, split, loss, acc_random, acc_hard, tau, seconds (of the epoch)
    best_epoch: int  # the epoch whose weights were kept
    seconds: float  # wall time of training, all epochs
    name: str = ""  # the split, '80-20'
    model_dir: Path | None = None  # where it was saved
    triplets: pd.DataFrame | None = None  # the train/val triplets it used (split re-drawn)


def fit_head(
    data: TripletTensors, train_idx: np.ndarray, val_idx: np.ndarray, cfg: dict, S, seed: int, device="cpu"
) -> SiameseResult:
    """Train a head on cached embeddings with early stopping on the validation loss (the
    training loss when there is no validation set); the best epoch's weights are kept."""
    setup = training.setup(device, "float32", mixed_precision=False)
    threads = torch.get_num_threads()  # on the CPU one: small matrices, more threads only add waiting
    torch.set_num_threads(1 if setup.device.type == "cpu" else threads)
    try:
        return _fit(data, train_idx, val_idx, cfg, S, seed, setup)
    finally:
        torch.set_num_threads(threads)


def _fit(data: TripletTensors, train_idx, val_idx, cfg: dict, S, seed: int, setup) -> SiameseResult:
    torch.manual_seed(seed)
    data = TripletTensors(*(t.to(setup.device) for t in vars(data).values()))
    model = heads.siamese_from_config(cfg).to(setup.device)
    opt = training.adamw(model, S.lr, S.weight_decay)
    sched = training.warmup_schedule(opt, S.epochs * training.num_batches(len(train_idx), S.batch_size), 0.0)
    stopper, history, best, t_start = training.EarlyStopping(S.patience), training.History(), None, time.perf_counter()
    for epoch in range(1, S.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for b in training.batch_indices(len(train_idx), S.batch_size, True, training.epoch_seed(seed, epoch)):
            j = torch.as_tensor(train_idx[b], device=setup.device)
            za, zp, zn = model(data.emb[data.a[j]], data.emb[data.p[j]], data.emb[data.n[j]])
            loss, _, _ = losses.triplet_loss(za, zp, zn, model.temperature(), data.group[j], S.in_batch_negatives)
            setup.step(loss, opt, sched)
            model.temperature.clamp_()
        seconds, tau = time.perf_counter() - t0, model.temperature().item()
        for split, idx in (("train", train_idx), ("val", val_idx)):
            if len(idx):
                history.log(epoch=epoch, split=split, **evaluate(model, data, idx), tau=tau, seconds=seconds)
        monitor = history.last("val" if len(val_idx) else "train")["loss"]
        if stopper.step(monitor, epoch):
            best = copy.deepcopy(model.state_dict())
        if stopper.should_stop:
            break
    if best is not None:
        model.load_state_dict(best)
    best_epoch = stopper.best_epoch or epoch
    return SiameseResult(model.eval().cpu(), history.frame(), best_epoch, time.perf_counter() - t_start)


def train_clip_siamese(
    P, triplets: pd.DataFrame, table: pd.DataFrame, share: float, clip_key: str, manifest: pd.DataFrame | None = None
) -> SiameseResult:
    """Train the CLIP siamese head on the ``share`` split and save it under
    ``<run>/siamese/clip-head-<split>/``. ``table`` holds the cached embeddings (id, embedding)
    of the CLIP model ``clip_key`` (:attr:`embeddings.ExtractResult.key`)."""
    manifest = s02_preprocess.load(P) if manifest is None else manifest
    name = split_name(share)
    trip = split_triplets(triplets, manifest, share, P.seed)
    tensors = triplet_tensors(trip, table)
    cfg = head_config(P.siamese, tensors.emb.shape[1])
    train_idx, val_idx = (np.flatnonzero(trip["split"].to_numpy() == s) for s in ("train", "val"))
    fit = fit_head(tensors, train_idx, val_idx, cfg, P.siamese, shards.item_seed(P.seed, name, "siamese"), P.device)
    cfg.update(
        clip=P.model_ref("clip"),
        clip_key=clip_key,
        split=name,
        share=share,
        best_epoch=fit.best_epoch,
        tau_final=fit.model.temperature().item(),
        triplets={"train": len(train_idx), "val": len(val_idx)},
    )
    fit.name, fit.triplets = name, trip
    fit.model_dir = trained.save_head(fit.model, cfg, fit.history, trained.clip_head_dir(P.run.root, name))
    return fit


# -- 3. the CNN siamese: data -----------------------------------------------------------------------------


def _image_table(triplets: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Unique image paths and the triplets' indices into them. # [N, 3] (anchor, positive, negative)"""
    cols = ["anchor_path", "positive_path", "negative_path"]
    flat = triplets[cols].astype(str).to_numpy().ravel()
    uniq, inv = np.unique(flat, return_inverse=True)
    return list(uniq), inv.reshape(-1, 3)


@torch.no_grad()
def _backbone_features(
    model: heads.ResNetSiamese, images: list[str], tf: ImageTransform, setup, batch_size: int, num_workers: int
) -> torch.Tensor:
    """Pooled features of every image, once (the frozen-backbone case). # [N, D] on the device"""
    model.backbone.eval()
    out = []
    for pixels, _ in make_loader(images, None, tf, batch_size, num_workers=num_workers):
        with setup.autocast():
            out.append(model.features(pixels.to(setup.device)).float())
    return torch.cat(out)


def _targets(part: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression targets of (anchor, positive) and (anchor, negative): columns or 1 and 0. # [T], [T]"""
    pos = part["target"].to_numpy(np.float32) if "target" in part else np.ones(len(part), np.float32)
    neg = part["target_neg"].to_numpy(np.float32) if "target_neg" in part else np.zeros(len(part), np.float32)
    return torch.from_numpy(pos), torch.from_numpy(neg)


# -- 3. the CNN siamese: loss and one epoch ---------------------------------------------------------------


def batch_loss(
    model: heads.ResNetSiamese,
    ea,
    ep,
    en,
    t_pos=None,
    t_neg=None,
    in_batch: bool = False,
    regression_loss: str = "bce",
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The variant's loss on one batch of embeddings, and the scores ``(s+, s-)`` it implies.
    ``groups`` ``[B]``: each item's original; in-batch negatives of the same original are masked."""
    if model.variant == "triplet":
        s_pos, s_neg = losses.triplet_similarities(ea, ep, en)  # [B], [B]
        negs = (
            torch.cat([s_neg[:, None], losses.in_batch_negatives(ea, ep, groups)], 1)
            if in_batch and len(ea) > 1
            else s_neg
        )
        return losses.infonce_triplet_loss(s_pos, negs, model.tau), s_pos, s_neg
    l_pos, l_neg = model.pair_logit(ea, ep).float(), model.pair_logit(ea, en).float()  # [B], [B]
    logits, target = torch.cat([l_pos, l_neg]), torch.cat([t_pos, t_neg]).to(l_pos.device)
    loss = (
        F.binary_cross_entropy_with_logits(logits, target)
        if regression_loss == "bce"
        else F.mse_loss(torch.sigmoid(logits), target)
    )
    return loss, torch.sigmoid(l_pos), torch.sigmoid(l_neg)


def _accuracies(s_pos: torch.Tensor, s_neg: torch.Tensor, kinds: np.ndarray) -> dict:
    hard = np.isin(kinds, HARD_KINDS)
    s_pos, s_neg = s_pos.detach().cpu().numpy(), s_neg.detach().cpu().numpy()
    rand = kinds == "random"
    return {
        "acc_random": metrics.triplet_accuracy(s_pos[rand], s_neg[rand]),
        "acc_hard": metrics.triplet_accuracy(s_pos[hard], s_neg[hard]),
    }


def _cnn_epoch(model, data: dict, setup, cfg, optimizer=None, scheduler=None, seed: int = 0) -> dict:
    """One pass over a split's triplets; trains when an optimizer is given."""
    train = optimizer is not None
    model.train_mode(cfg.resnet_unfreeze) if train else model.eval()
    n = len(data["index"])
    drop = train and n > cfg.batch_size and n % cfg.batch_size == 1  # batch norm cannot train on 1 item
    total, s_pos, s_neg, kinds = 0.0, [], [], []
    with torch.set_grad_enabled(train):
        for idx in training.batch_indices(n, cfg.batch_size, shuffle=train, seed=seed, drop_last=drop):
            trip = data["index"][idx]  # [B, 3] image indices
            branches = [data["source"](trip[:, k]) for k in range(3)]
            with setup.autocast():
                ea, ep, en = model(*branches, from_features=data["cached"])
                loss, sp, sn = batch_loss(
                    model,
                    ea,
                    ep,
                    en,
                    data["t_pos"][idx],
                    data["t_neg"][idx],
                    cfg.in_batch_negatives,
                    cfg.resnet_regression_loss,
                    data["group"][idx],
                )
            if train:
                setup.step(loss, optimizer, scheduler)
            total += loss.item() * len(idx)
            s_pos.append(sp.detach().float().cpu())
            s_neg.append(sn.detach().float().cpu())
            kinds.append(data["kinds"][idx])
    s_pos, s_neg = torch.cat(s_pos), torch.cat(s_neg)
    return {"loss": total / max(len(s_pos), 1), **_accuracies(s_pos, s_neg, np.concatenate(kinds))}


# -- 3. the CNN siamese: training -------------------------------------------------------------------------


def _split_data(part: pd.DataFrame, index: np.ndarray, source, cached: bool) -> dict:
    t_pos, t_neg = _targets(part)
    kinds = part["negative_kind"].astype(str).to_numpy() if "negative_kind" in part else np.full(len(part), "random")
    # the anchor's original: masks the in-batch negatives that are derivatives of the same painting
    group = torch.as_tensor(
        pd.factorize(part["anchor_id"].astype(str))[0] if "anchor_id" in part else np.arange(len(part)),
        dtype=torch.long,
    )
    return {
        "index": index,
        "source": source,
        "cached": cached,
        "t_pos": t_pos,
        "t_neg": t_neg,
        "kinds": kinds,
        "group": group,
    }


PIXEL_CACHE_BYTES = 2 * 1024**3  # keep every image's pixels in memory below this size


# The frozen backbone's features of the last image list, so that the second variant (triplet, then
# regression, in one process) does not compute them again: key -> [N, D] on the CPU. One entry only.
_FEATURES: dict[tuple, torch.Tensor] = {}


def _features_key(backbone_dir, images: list[str], tf: ImageTransform) -> tuple | None:
    """What the frozen features depend on: the checkpoint's files (path, size, mtime), the input side
    and the images. None when the checkpoint is not a directory (nothing to key on)."""
    d = Path(backbone_dir) if backbone_dir is not None else None
    if d is None or not d.is_dir():
        return None
    files = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in d.iterdir() if f.is_file()))
    return (str(d.resolve()), files, tf.size, tuple(images))


def _sources(model, images, tf, setup, cfg, P, key: tuple | None = None):
    """A function from image indices to branch inputs: cached features (frozen backbone), or
    pixels: all held in memory when they fit in PIXEL_CACHE_BYTES, else loaded per batch by threads."""
    if cfg.resnet_unfreeze == "none":
        if key is not None and key in _FEATURES:
            feats = _FEATURES[key].to(setup.device)
        else:
            feats = _backbone_features(model, images, tf, setup, cfg.batch_size, worker_count(P.num_workers))  # [N, D]
            _FEATURES.clear()
            if key is not None:
                _FEATURES[key] = feats.cpu()
        return (lambda ix: feats[torch.as_tensor(ix)]), True
    if len(images) * 3 * tf.size**2 * 4 <= PIXEL_CACHE_BYTES:
        pixels = torch.cat(
            [x for x, _ in make_loader(images, None, tf, cfg.batch_size, num_workers=worker_count(P.num_workers))]
        )  # [N, 3, S, S]
        return (lambda ix: pixels[torch.as_tensor(ix)].to(setup.device)), False
    pool = ThreadPoolExecutor(max_workers=worker_count(P.num_workers))  # PIL decodes and resizes without the GIL
    return (lambda ix: torch.stack(list(pool.map(tf, [images[i] for i in ix]))).to(setup.device)), False


def build_model(P, backbone_dir, variant: str, setup) -> heads.ResNetSiamese:
    """A fresh siamese on stage 07's backbone (seeded head), trainable parts set per ``resnet_unfreeze``.
    ``backbone_dir``: stage 07's checkpoint, or a transformers ResNet checkpoint directory."""
    cfg = P.siamese
    if (Path(backbone_dir) / trained.CLASSIFIER_SPEC).exists():
        clf, processor = trained.load_classifier(backbone_dir, setup.device)
        backbone = clf.backbone
    else:
        clf, processor = models.load_resnet(str(backbone_dir), setup.device, torch.float32)
        backbone = clf.resnet
    torch.manual_seed(P.seed)
    model = heads.ResNetSiamese(backbone, cfg.hidden, cfg.out_dim, cfg.dropout, variant, cfg.tau, cfg.learn_tau)
    model.processor = processor
    return model.to(setup.device).set_unfreeze(cfg.resnet_unfreeze)


def train_resnet_siamese(
    P,
    triplets: pd.DataFrame,
    backbone_dir=None,
    variant: str = "triplet",
    val_split: str = "val",
    progress: bool = True,
) -> TrainResult:
    """Train the ResNet siamese on the ``train`` rows of ``triplets`` (the triplets artifact's
    columns), early-stopping on the ``val_split`` rows' loss; save the best epoch to
    ``<run>/siamese/<backbone>-<variant>/``. ``backbone_dir``: a CNN checkpoint (default: stage 07's
    best, :func:`artsim_lib.stages.s07_finetune.load`: StageNotRunError when stage 07 has not run)."""
    cfg = P.siamese
    parts = {s: triplets[triplets["split"] == s].reset_index(drop=True) for s in ("train", val_split)}
    for s, part in parts.items():
        if part.empty:
            raise ValueError(f"train_resnet_siamese: no triplets with split == {s!r}")
    backbone_dir = Path(backbone_dir) if backbone_dir is not None else s07_finetune.load(P)
    setup = training.setup(P.device, P.dtype, mixed_precision=True)
    model = build_model(P, backbone_dir, variant, setup)
    tf = ImageTransform(model.processor)
    everything = pd.concat(parts.values(), ignore_index=True)
    images, index = _image_table(everything)
    source, cached = _sources(model, images, tf, setup, cfg, P, _features_key(backbone_dir, images, tf))
    n_train = len(parts["train"])
    data = {
        "train": _split_data(parts["train"], index[:n_train], source, cached),
        "val": _split_data(parts[val_split], index[n_train:], source, cached),
    }
    opt = training.adamw(model, cfg.lr, cfg.weight_decay, {"backbone.": cfg.resnet_backbone_lr})
    steps = cfg.resnet_epochs * training.num_batches(n_train, cfg.batch_size)
    sched = training.warmup_schedule(opt, steps, cfg.resnet_warmup_ratio, "cosine")
    stopper, history = training.EarlyStopping(cfg.patience), training.History()
    P.run.sub("siamese")
    out_dir = trained.siamese_dir(P.run.root, model.backbone.kind, variant)
    t0 = time.perf_counter()
    torch.manual_seed(P.seed)  # dropout draws do not depend on what ran before
    desc = f"{model.backbone.kind} siamese ({variant})"
    for epoch in tqdm(range(1, cfg.resnet_epochs + 1), desc=desc, disable=not progress):
        tr = _cnn_epoch(model, data["train"], setup, cfg, opt, sched, seed=training.epoch_seed(P.seed, epoch))
        with torch.no_grad():
            va = _cnn_epoch(model, data["val"], setup, cfg)
        history.log(epoch=epoch, split="train", **tr)
        history.log(epoch=epoch, split="val", **va)
        if stopper.step(va["loss"], epoch):
            trained.save_resnet_siamese(model, out_dir, _info(P, variant, backbone_dir, epoch, va, val_split))
        if stopper.should_stop:
            break
    hist = history.frame()
    if stopper.best_epoch is None:
        raise FloatingPointError("train_resnet_siamese: the validation loss was NaN in every epoch")
    paths.write_parquet(hist, out_dir / "history.parquet", meta={"variant": variant, "siamese": cfg.model_dump()})
    best = hist[(hist["epoch"] == stopper.best_epoch) & (hist["split"] == "val")].iloc[0].to_dict()
    metrics = {
        "best_val": best,
        "seconds": time.perf_counter() - t0,
        "train_triplets": n_train,
        "backbone": model.backbone.kind,
        "backbone_label": model.backbone.label,
        "val_triplets": len(parts[val_split]),
        "images": len(images),
        "cached_features": cached,
    }
    return TrainResult(hist, stopper.best_epoch, out_dir, variant, metrics)


def _info(P, variant, backbone_dir, epoch, val, val_split) -> dict:
    cfg = P.siamese
    return {
        "variant": variant,
        "hidden": list(cfg.hidden),
        "out_dim": cfg.out_dim,
        "dropout": cfg.dropout,
        "tau": cfg.tau,
        "learn_tau": cfg.learn_tau,
        "unfreeze": cfg.resnet_unfreeze,
        "backbone_dir": str(backbone_dir),
        "epoch": epoch,
        "val": val,
        "val_split": val_split,
        "siamese_params": cfg.model_dump(mode="json"),
        "seed": P.seed,
    }


# -- text <-> image accuracy with CLIP --------------------------------------------------------------------


def text_image_accuracy(
    encoder: embeddings.Encoder,
    table: pd.DataFrame,
    manifest: pd.DataFrame,
    captions: pd.DataFrame,
    n: int,
    seed: int = 0,
) -> pd.DataFrame:
    """CLIP N-way i2t/t2i accuracy of the originals and their captions, per split, in batches of
    ``n`` (chance 1/N). Not the seed's form: that is :func:`seed_text_image_accuracy`."""
    df = (
        manifest[["id", "split"]].merge(captions[["id", "caption"]], on="id").merge(table[["id", "embedding"]], on="id")
    )
    rows = []
    for split, part in ((s, df[df["split"] == s]) for s in ("train", "val", "test") if (df["split"] == s).any()):
        txt = np.concatenate(
            [
                models.clip_text_embeddings(encoder.model, encoder.processor, list(c)).numpy()
                for c in shards.batches(list(part["caption"]), 64)
            ]
        )  # [n, D]
        rows.append({"split": split, **metrics.batched_retrieval(embeddings.embedding_matrix(part), txt, n, seed)})
    return pd.DataFrame(rows)


def clip_text_embedder(encoder: embeddings.Encoder, batch: int = 64):
    """``texts -> [N, D]`` L2-normalised CLIP text embeddings, in batches."""

    def embed(texts):
        texts = list(texts)
        if not texts:
            return np.zeros((0, encoder.dim), np.float32)
        return np.concatenate(
            [
                models.clip_text_embeddings(encoder.model, encoder.processor, b).numpy()
                for b in shards.batches(texts, batch)
            ]
        )

    return embed


SEED_TI_COLUMNS = ["split", "negative_kind", "triplets", "originals", "i2t", "t2i", "chance"]


def seed_text_image_accuracy(
    embed_texts, table: pd.DataFrame, triplets: pd.DataFrame, prompts: pd.Series, captions: pd.DataFrame
) -> pd.DataFrame:
    """The seed's i2t/t2i per split and kind of negative ('all' first) of the original's cached CLIP
    image embedding (``table``; :func:`seed_text_image_table`). Triplets without a prompt (the
    ``augment`` backend) or without a negative caption are left out, so the result may be empty."""
    rows = pd.Index(table["id"])

    def images(t: pd.DataFrame):
        where = {k: rows.get_indexer(t[f"{k}_id"]) for k in ("anchor", "negative")}
        if any((w < 0).any() for w in where.values()):
            raise KeyError("some triplet originals have no cached CLIP embedding; run the extraction step first")
        emb = embeddings.embedding_matrix(table)  # [M, D]
        return emb[where["anchor"]], emb[where["negative"]]

    return seed_text_image_table(triplets, prompts, captions, images, embed_texts)


def seed_text_image_table(
    triplets: pd.DataFrame,
    prompts: pd.Series,
    captions: pd.DataFrame,
    embed_images,
    embed_texts,
    by_split: bool = True,
) -> pd.DataFrame:
    """The seed's i2t/t2i: per triplet a binary choice, chance 0.5
    (:func:`metrics.binary_text_image_accuracy`), of the original against its derivative's prompt
    and the negative's caption (i2t), and of the prompt against the original and the negative (t2i).
    One row per kind of negative ('all' first), per split (train, val, test) with ``by_split``, else
    over all the triplets (no ``split`` column). ``prompts`` maps a derivative (``positive_id``) to
    the prompt it was made from; ``embed_images(kept)`` gives the ``[T, D]`` embeddings of the kept
    triplets' originals and negatives, ``embed_texts(texts)`` ``[N, D]`` ones in the same space.
    Triplets without a prompt (the ``augment`` backend) or a negative caption are left out: the
    result may be empty (nothing is embedded then). Stage 08 and stage 09 both report this."""
    cols = SEED_TI_COLUMNS if by_split else SEED_TI_COLUMNS[1:]
    prompt = triplets["positive_id"].map(prompts)
    neg_caption = triplets["negative_id"].map(captions.set_index("id")["caption"])
    keep = (prompt.notna() & prompt.astype(str).str.strip().ne("") & neg_caption.notna()).to_numpy()
    if not keep.any():
        return pd.DataFrame(columns=cols)
    t = triplets[keep].reset_index(drop=True)
    img_a, img_n = (np.asarray(x) for x in embed_images(t))
    txt_p = np.asarray(embed_texts(list(prompt[keep].astype(str))))
    txt_n = np.asarray(embed_texts(list(neg_caption[keep].astype(str))))
    blocks = (
        [(s, (t["split"] == s).to_numpy()) for s in ("train", "val", "test") if (t["split"] == s).any()]
        if by_split
        else [(None, np.ones(len(t), bool))]
    )
    out = []
    for split, in_split in blocks:
        for kind in ["all", *sorted(t.loc[in_split, "negative_kind"].unique())]:
            sel = in_split & ((t["negative_kind"] == kind).to_numpy() if kind != "all" else True)
            r = metrics.binary_text_image_accuracy(img_a[sel], txt_p[sel], img_n[sel], txt_n[sel])
            out.append(
                {
                    **({"split": split} if by_split else {}),
                    "negative_kind": kind,
                    "triplets": r["triplets"],
                    "originals": t.loc[sel, "anchor_id"].nunique(),
                    "i2t": r["i2t"],
                    "t2i": r["t2i"],
                    "chance": r["chance"],
                }
            )
    return pd.DataFrame(out, columns=cols)


def text_image_table(nway: pd.DataFrame, binary: pd.DataFrame) -> pd.DataFrame:
    """Both forms side by side, each with its chance: the seed's binary one ('all' negatives) and
    the N-way retrieval of :func:`text_image_accuracy`. Columns: form, split, n, i2t, t2i, chance."""
    cols = ["form", "split", "n", "i2t", "t2i", "chance"]
    b = binary[binary["negative_kind"] == "all"] if len(binary) else binary
    parts = [
        pd.DataFrame(
            {
                "form": "seed: binary (original vs derivative's prompt / negative's caption)",
                "split": b["split"],
                "n": b["triplets"],
                "i2t": b["i2t"],
                "t2i": b["t2i"],
                "chance": b["chance"],
            }
        )
        if len(b)
        else None,
        pd.DataFrame(
            {
                "form": [f"N-way retrieval (N = {n})" for n in nway["N"]],
                "split": nway["split"],
                "n": nway["pairs"],
                "i2t": nway["i2t"],
                "t2i": nway["t2i"],
                "chance": nway["chance"],
            }
        )
        if len(nway)
        else None,
    ]
    parts = [x for x in parts if x is not None]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


# -- the stage --------------------------------------------------------------------------------------------


@dataclass
class SiameseStageResult:
    """What :func:`run` did. ``clip`` and ``cnn`` stay empty in a shard job (``num_shards > 1``,
    ``shard_index >= 0``) and while other shards are unfinished: then only embeddings were made."""

    extraction: embeddings.ExtractResult
    ready: bool  # embeddings complete, models trained
    clip: dict[str, SiameseResult] = field(default_factory=dict)  # '80-20' -> the CLIP head
    cnn: dict[str, TrainResult] = field(default_factory=dict)  # 'triplet' / 'regression' -> the CNN siamese


def run(
    P,
    manifest: pd.DataFrame | None = None,
    triplets: pd.DataFrame | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    encoder: embeddings.Encoder | None = None,
    progress: bool = True,
) -> SiameseStageResult:
    """Run stage 08 for params ``P``: embed the originals and the triplets' derivatives with CLIP
    (shard ``shard_index`` of ``num_shards``; -1 only merges), then, once every image is embedded
    and this is not a shard job, train the CLIP siamese on each of ``siamese.train_splits`` and the
    CNN siamese (stage 07's backbone) in both variants."""
    manifest = s02_preprocess.load(P) if manifest is None else manifest
    triplets = s05_generation.load_triplets(P) if triplets is None else triplets
    encoder = encoder or embeddings.load_encoder(P)
    ext = embeddings.extract_embeddings(
        P, embeddings.stage_images(manifest, triplets), num_shards, shard_index, encoder
    )
    result = SiameseStageResult(ext, ext.complete and not (num_shards > 1 and shard_index >= 0))
    if result.ready:
        for share in P.siamese.train_splits:
            res = train_clip_siamese(P, triplets, ext.table, share, ext.key, manifest)
            result.clip[res.name] = res
        for variant in VARIANTS:
            result.cnn[variant] = train_resnet_siamese(P, triplets, variant=variant, progress=progress)
    return result


@dataclass
class SiameseModels:
    """Stage 08's saved models: read them with :mod:`artsim_lib.measures.trained`."""

    clip: dict[str, Path]  # split name ('80-20') -> the CLIP head's folder
    cnn: dict[str, Path]  # variant -> the CNN siamese's folder (on stage 07's ``finetune.backbone``)


def load(P) -> SiameseModels:
    """The folders of stage 08's models for ``P``; :class:`StageNotRunError` when one is missing
    or was trained with another head architecture (CLIP) or other ``siamese`` params / seed (CNN)."""
    kind, root = P.finetune.backbone, P.run.root
    clip = {split_name(s): trained.clip_head_dir(root, split_name(s)) for s in P.siamese.train_splits}
    cnn = {v: trained.siamese_dir(root, kind, v) for v in VARIANTS}
    arch = {k: v for k, v in paths.json_roundtrip(head_config(P.siamese, 0)).items() if k != "in_dim"}
    for name, d in clip.items():
        f = expect_file(d / "config.json", "08", f"the CLIP siamese head {name}")
        cfg = json.loads(f.read_text(encoding="utf-8"))
        if {k: cfg.get(k) for k in arch} != arch:
            raise StageNotRunError("08", f"the CLIP siamese head {name}", d, stale=True)
    want = paths.json_roundtrip(P.siamese.model_dump(mode="json"))
    for variant, d in cnn.items():
        f = expect_file(d / trained.SIAMESE_CONFIG, "08", f"the {kind} siamese ({variant})")
        info = json.loads(f.read_text(encoding="utf-8"))
        if info.get("siamese_params") != want or info.get("seed") != P.seed:
            raise StageNotRunError("08", f"the {kind} siamese ({variant})", d, stale=True)
    return SiameseModels(clip, cnn)


# -- what notebook 08 shows -------------------------------------------------------------------------------


def extraction_table(ext: embeddings.ExtractResult) -> pd.DataFrame:
    """The extraction's cache figures: the call that ran (``ext``), and a second call's: that call
    embedded whatever of its images was missing, so a second one finds every image cached (all hits,
    nothing embedded). No second extraction runs, so its wall time is not shown."""
    cols = ["call", "images", "cache hits", "misses (embedded now)", "wall s", "images/s"]
    first = ["first", ext.items, ext.hits, ext.misses, round(ext.seconds, 2)]
    first.append(round(ext.items_per_s, 1) if ext.misses else None)
    return pd.DataFrame([first, ["second", ext.items, ext.items, 0, None, None]], columns=cols)


def kept_epoch(run: SiameseResult | TrainResult) -> pd.Series:
    """The validation row of the epoch whose weights were kept (a CLIP head's or a CNN siamese's)."""
    h = run.history
    return h[(h["epoch"] == run.best_epoch) & (h["split"] == "val")].iloc[0]


def clip_runs_table(runs: dict[str, SiameseResult]) -> pd.DataFrame:
    """One row per CLIP head (:attr:`SiameseStageResult.clip`): originals and triplets per side of its
    split, epochs run, the kept epoch and its validation figures, seconds per epoch."""
    return pd.DataFrame(
        [
            {
                "split": name,
                **{
                    f"{s} originals": r.triplets.loc[r.triplets["split"] == s, "anchor_id"].nunique()
                    for s in ("train", "val")
                },
                **{f"{s} triplets": int((r.triplets["split"] == s).sum()) for s in ("train", "val")},
                "epochs run": int(r.history["epoch"].max()),
                "best epoch": r.best_epoch,
                **{f"val {k}": kept_epoch(r)[k] for k in ("loss", "acc_random", "acc_hard", "tau")},
                "s / epoch": r.seconds / r.history["epoch"].max(),
            }
            for name, r in runs.items()
        ]
    )


def models_table(result: SiameseStageResult, cnn_label: str) -> pd.DataFrame:
    """Every trained model's validation loss and accuracies at its kept epoch, and its training
    seconds: the CLIP heads, then the CNN siamese variants (named ``<cnn_label> siamese <variant>``)."""
    cols = ["loss", "acc_random", "acc_hard"]
    return pd.DataFrame(
        [
            {
                "model": f"CLIP siamese {n}",
                "best epoch": r.best_epoch,
                **kept_epoch(r)[cols].to_dict(),
                "train s": r.seconds,
            }
            for n, r in result.clip.items()
        ]
        + [
            {
                "model": f"{cnn_label} siamese {v}",
                "best epoch": r.best_epoch,
                **kept_epoch(r)[cols].to_dict(),
                "train s": r.metrics.get("seconds"),
            }
            for v, r in result.cnn.items()
        ]
    )
