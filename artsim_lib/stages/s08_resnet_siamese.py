"""The CNN siamese network (stage 08): stage 07's fine-tuned backbone + a projection head.

The backbone is any :class:`~artsim_lib.models.backbones.Backbone` (features ``[B, D]``):
ResNet-50 in the full study, EfficientNet-Lite0 in the smoke profile (``finetune.backbone``).
Models are saved under ``<run>/siamese/<backbone>-<variant>/`` (``resnet-triplet``,
``effnet_lite0-regression``, ...) and their measures are named after the backbone
(``resnet_siamese``, ``effnet_lite0_regression``, ...).

One module embeds the anchor, the positive and the negative (shared weights), and is trained
with the study's InfoNCE triplet loss (``variant='triplet'``; similarity = cosine of the
projections), or with a pair head ``[|a-b|, a*b] -> MLP -> sigmoid`` that outputs the similarity
directly, trained towards 1 for (anchor, positive) and 0 for (anchor, negative)
(``variant='regression'``; a ``target`` / ``target_neg`` column overrides those targets).

With ``siamese.resnet_unfreeze='none'`` the backbone is frozen, so its pooled features are
computed once per image and only the head trains; ``'layer4'`` or ``'all'`` fine-tune it too
(at ``resnet_backbone_lr``)::

    result = train_resnet_siamese(P, triplets, variant="triplet")   # TrainResult
    model = load_resnet_siamese(P.run.root, "triplet")
    model.similarity(images_a, images_b)                            # [B] in [-1, 1] or [0, 1]
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from artsim_lib.core import losses
from artsim_lib import models
from artsim_lib.io import paths
from artsim_lib.models import training
from artsim_lib.io.workers import worker_count
from artsim_lib.models.image_batches import ImageTransform, make_loader, open_rgb, pixel_batch
from artsim_lib.models.training import TrainResult

VARIANTS = ("triplet", "regression")
HARD_KINDS = ("same_style", "same_artist")
UNFREEZE_LEVELS = ("none", "layer4", "all")  # layer4: the backbone's last stage (Backbone.unfreeze_prefixes)
CONFIG_FILE, WEIGHTS_FILE, BACKBONE_CONFIG = "siamese_config.json", "siamese.safetensors", "backbone_config.json"
__all__ = ["CNNSiamese", "ResNetSiamese", "TrainResult", "load_resnet_siamese", "siamese_dir", "train_resnet_siamese"]


def siamese_dir(run_root, kind: str, variant: str) -> Path:
    """``<run>/siamese/<backbone kind>-<variant>``."""
    return Path(run_root) / "siamese" / f"{kind}-{variant}"


def measure_name(kind: str, variant: str) -> str:
    """``resnet_siamese``, ``resnet_regression``, ``effnet_lite0_siamese``, ..."""
    return f"{kind}_{'siamese' if variant == 'triplet' else 'regression'}"


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear-ReLU-Dropout blocks through ``hidden``, then a final Linear to ``out_dim``."""
    layers, d = [], in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class ResNetSiamese(nn.Module):
    """Backbone (a :class:`~artsim_lib.models.backbones.Backbone`; a transformers ``ResNetModel`` is
    wrapped) + projection head, one set of weights for every branch."""

    def __init__(self, backbone: nn.Module, hidden: Sequence[int] = (512,), out_dim: int = 256,
                 dropout: float = 0.1, variant: str = "triplet", tau: float = 0.07, learn_tau: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.backbone = models.wrap_backbone(backbone)
        feat_dim = self.backbone.dim  # 2048 for ResNet-50, 1280 for EfficientNet-Lite0
        self.head = mlp(feat_dim, hidden, out_dim, dropout)
        # The pair head sees [|a-b|, a*b] of the two projections. # [B, 2*out_dim] -> [B, 1]
        self.pair_head = mlp(2 * out_dim, list(hidden[-1:]) or [out_dim], 1, dropout) \
            if variant == "regression" else None
        self.learn_tau = learn_tau
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau)), requires_grad=learn_tau)
        self.processor = None  # the backbone's image processor, for similarity() on images

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features. # [B, 3, S, S] -> [B, D]"""
        return self.backbone(pixels)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """L2-normalised projection of backbone features. # [B, D] -> [B, out_dim]"""
        return F.normalize(self.head(feats).float(), dim=-1)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels to the normalised embedding. # [B, 3, S, S] -> [B, out_dim]"""
        return self.project(self.features(pixels))

    def forward(self, anchor, positive, negative, from_features: bool = False):
        """The three branches: the same module applied to each input. Returns ``(ea, ep, en)``."""
        encode = self.project if from_features else self.embed
        return encode(anchor), encode(positive), encode(negative)

    def pair_logit(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        """The regression head's logit for each pair. # [B]"""
        return self.pair_head(torch.cat([(ea - eb).abs(), ea * eb], dim=-1)).squeeze(-1)

    def score(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        """Similarity of embedded pairs: cosine (triplet) or the sigmoid of the pair head (regression). # [B]"""
        if self.variant == "regression":
            return torch.sigmoid(self.pair_logit(ea, eb).float())
        return (ea * eb).sum(-1)

    @torch.no_grad()
    def embed_images(self, images: Sequence, batch_size: int = 32) -> torch.Tensor:
        """Embeddings of PIL images or paths (eval mode), float32 on the CPU. # [N, out_dim]"""
        if self.processor is None:
            raise ValueError("no image processor attached (load the model with load_resnet_siamese)")
        self.eval()
        p = next(self.backbone.parameters())
        out = [self.embed(pixel_batch(self.processor, [open_rgb(x) for x in images[i:i + batch_size]])
                          .to(p.device, p.dtype)).float().cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.head[-1].out_features)

    @torch.no_grad()
    def similarity(self, img_a, img_b, batch_size: int = 32) -> torch.Tensor:
        """Similarity of each image in ``img_a`` with the one at the same place in ``img_b``
        (PIL images or paths; a single image is a batch of one). # [B] float32, CPU"""
        a = [img_a] if not isinstance(img_a, (list, tuple, pd.Series, np.ndarray)) else list(img_a)
        b = [img_b] if not isinstance(img_b, (list, tuple, pd.Series, np.ndarray)) else list(img_b)
        if len(a) != len(b):
            raise ValueError(f"similarity: {len(a)} images against {len(b)}")
        ea, eb = self.embed_images(a, batch_size), self.embed_images(b, batch_size)
        dev = next(self.parameters()).device
        return self.score(ea.to(dev), eb.to(dev)).float().cpu()

    def set_unfreeze(self, unfreeze: str) -> "ResNetSiamese":
        """``requires_grad`` on the head always, on the backbone per ``unfreeze`` (none|layer4|all)."""
        training.set_trainable(self, True)
        training.set_trainable(self.backbone, self.backbone.unfreeze_prefixes(unfreeze))
        self.log_tau.requires_grad_(self.learn_tau)
        return self

    def train_mode(self, unfreeze: str) -> "ResNetSiamese":
        """Train mode for the head and the unfrozen backbone part; frozen parts stay in eval mode,
        so their batch-norm statistics do not move."""
        self.train()
        if unfreeze == "none":
            self.backbone.eval()
        elif unfreeze == "layer4":
            self.backbone.eval()
            for module in self.backbone.last_stage():
                module.train()
        return self


# -- data -----------------------------------------------------------------------------------------------


def _image_table(triplets: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Unique image paths and the triplets' indices into them. # [N, 3] (anchor, positive, negative)"""
    cols = ["anchor_path", "positive_path", "negative_path"]
    flat = triplets[cols].astype(str).to_numpy().ravel()
    uniq, inv = np.unique(flat, return_inverse=True)
    return list(uniq), inv.reshape(-1, 3)


@torch.no_grad()
def _backbone_features(model: ResNetSiamese, images: list[str], tf: ImageTransform, setup, batch_size: int,
                       num_workers: int) -> torch.Tensor:
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


# -- loss and one epoch ---------------------------------------------------------------------------------


def batch_loss(model: ResNetSiamese, ea, ep, en, t_pos=None, t_neg=None, in_batch: bool = False,
               regression_loss: str = "bce", groups: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The variant's loss on one batch of embeddings, and the scores ``(s+, s-)`` it implies.
    ``groups`` ``[B]``: each item's original; in-batch negatives of the same original are masked."""
    if model.variant == "triplet":
        s_pos, s_neg = losses.triplet_similarities(ea, ep, en)  # [B], [B]
        negs = torch.cat([s_neg[:, None], losses.in_batch_negatives(ea, ep, groups)], 1) \
            if in_batch and len(ea) > 1 else s_neg
        return losses.infonce_triplet_loss(s_pos, negs, model.tau), s_pos, s_neg
    l_pos, l_neg = model.pair_logit(ea, ep).float(), model.pair_logit(ea, en).float()  # [B], [B]
    logits, target = torch.cat([l_pos, l_neg]), torch.cat([t_pos, t_neg]).to(l_pos.device)
    loss = F.binary_cross_entropy_with_logits(logits, target) if regression_loss == "bce" \
        else F.mse_loss(torch.sigmoid(logits), target)
    return loss, torch.sigmoid(l_pos), torch.sigmoid(l_neg)


def _accuracies(s_pos: torch.Tensor, s_neg: torch.Tensor, kinds: np.ndarray) -> dict:
    hard = np.isin(kinds, HARD_KINDS)
    pick = lambda m: torch.from_numpy(m)  # noqa: E731
    return {"acc_random": losses.triplet_accuracy(s_pos[pick(kinds == "random")], s_neg[pick(kinds == "random")]),
            "acc_hard": losses.triplet_accuracy(s_pos[pick(hard)], s_neg[pick(hard)])}


def _run_epoch(model, data: dict, setup, cfg, optimizer=None, scheduler=None, seed: int = 0) -> dict:
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
                loss, sp, sn = batch_loss(model, ea, ep, en, data["t_pos"][idx], data["t_neg"][idx],
                                          cfg.in_batch_negatives, cfg.resnet_regression_loss, data["group"][idx])
            if train:
                setup.step(loss, optimizer, scheduler)
            total += loss.item() * len(idx)
            s_pos.append(sp.detach().float().cpu())
            s_neg.append(sn.detach().float().cpu())
            kinds.append(data["kinds"][idx])
    s_pos, s_neg = torch.cat(s_pos), torch.cat(s_neg)
    return {"loss": total / max(len(s_pos), 1), **_accuracies(s_pos, s_neg, np.concatenate(kinds))}


# -- training --------------------------------------------------------------------------------------------


def _split_data(part: pd.DataFrame, index: np.ndarray, source, cached: bool) -> dict:
    t_pos, t_neg = _targets(part)
    kinds = part["negative_kind"].astype(str).to_numpy() if "negative_kind" in part else \
        np.full(len(part), "random")
    # the anchor's original: masks the in-batch negatives that are derivatives of the same painting
    group = torch.as_tensor(pd.factorize(part["anchor_id"].astype(str))[0] if "anchor_id" in part
                            else np.arange(len(part)), dtype=torch.long)
    return {"index": index, "source": source, "cached": cached, "t_pos": t_pos, "t_neg": t_neg, "kinds": kinds,
            "group": group}


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
            feats = _backbone_features(model, images, tf, setup, cfg.batch_size,
                                       worker_count(P.num_workers))  # [N, D]
            _FEATURES.clear()
            if key is not None:
                _FEATURES[key] = feats.cpu()
        return (lambda ix: feats[torch.as_tensor(ix)]), True
    if len(images) * 3 * tf.size ** 2 * 4 <= PIXEL_CACHE_BYTES:
        pixels = torch.cat([x for x, _ in make_loader(images, None, tf, cfg.batch_size,
                                                      num_workers=worker_count(P.num_workers))])  # [N, 3, S, S]
        return (lambda ix: pixels[torch.as_tensor(ix)].to(setup.device)), False
    pool = ThreadPoolExecutor(max_workers=worker_count(P.num_workers))  # PIL decodes and resizes without the GIL
    return (lambda ix: torch.stack(list(pool.map(tf, [images[i] for i in ix]))).to(setup.device)), False


def build_model(P, backbone_dir, variant: str, setup) -> ResNetSiamese:
    """A fresh siamese on stage 07's backbone (seeded head), trainable parts set per ``resnet_unfreeze``.
    ``backbone_dir``: stage 07's checkpoint, or a transformers ResNet checkpoint directory."""
    from artsim_lib.stages.s07_finetune import SPEC_FILE, load_classifier

    cfg = P.siamese
    if (Path(backbone_dir) / SPEC_FILE).exists():
        clf, processor = load_classifier(backbone_dir, setup.device)
        backbone = clf.backbone
    else:
        clf, processor = models.load_resnet(str(backbone_dir), setup.device, torch.float32)
        backbone = clf.resnet
    torch.manual_seed(P.seed)
    model = ResNetSiamese(backbone, cfg.hidden, cfg.out_dim, cfg.dropout, variant, cfg.tau, cfg.learn_tau)
    model.processor = processor
    return model.to(setup.device).set_unfreeze(cfg.resnet_unfreeze)


def train_resnet_siamese(P, triplets: pd.DataFrame, backbone_dir=None, variant: str = "triplet",
                         val_split: str = "val", progress: bool = True) -> TrainResult:
    """Train the ResNet siamese on the ``train`` rows of ``triplets`` (the triplets artifact's
    columns), early-stopping on the ``val_split`` rows' loss; save the best epoch to
    ``<run>/siamese/<backbone>-<variant>/``. ``backbone_dir``: a CNN checkpoint (default: stage 07's
    best, fine-tuned first when missing)."""
    from artsim_lib.stages.s07_finetune import require_finetuned

    cfg = P.siamese
    parts = {s: triplets[triplets["split"] == s].reset_index(drop=True) for s in ("train", val_split)}
    for s, part in parts.items():
        if part.empty:
            raise ValueError(f"train_resnet_siamese: no triplets with split == {s!r}")
    backbone_dir = Path(backbone_dir) if backbone_dir is not None else require_finetuned(P)
    setup = training.setup(P.device, P.dtype, mixed_precision=True)
    model = build_model(P, backbone_dir, variant, setup)
    tf = ImageTransform(model.processor)
    everything = pd.concat(parts.values(), ignore_index=True)
    images, index = _image_table(everything)
    source, cached = _sources(model, images, tf, setup, cfg, P, _features_key(backbone_dir, images, tf))
    n_train = len(parts["train"])
    data = {"train": _split_data(parts["train"], index[:n_train], source, cached),
            "val": _split_data(parts[val_split], index[n_train:], source, cached)}
    opt = training.adamw(model, cfg.lr, cfg.weight_decay, {"backbone.": cfg.resnet_backbone_lr})
    steps = cfg.resnet_epochs * training.num_batches(n_train, cfg.batch_size)
    sched = training.warmup_schedule(opt, steps, cfg.resnet_warmup_ratio, "cosine")
    stopper, history = training.EarlyStopping(cfg.patience), training.History()
    P.run.sub("siamese")
    out_dir = siamese_dir(P.run.root, model.backbone.kind, variant)
    t0 = time.perf_counter()
    torch.manual_seed(P.seed)  # dropout draws do not depend on what ran before
    desc = f"{model.backbone.kind} siamese ({variant})"
    for epoch in tqdm(range(1, cfg.resnet_epochs + 1), desc=desc, disable=not progress):
        tr = _run_epoch(model, data["train"], setup, cfg, opt, sched, seed=training.epoch_seed(P.seed, epoch))
        with torch.no_grad():
            va = _run_epoch(model, data["val"], setup, cfg)
        history.log(epoch=epoch, split="train", **tr)
        history.log(epoch=epoch, split="val", **va)
        if stopper.step(va["loss"], epoch):
            save_resnet_siamese(model, out_dir, _info(P, variant, backbone_dir, epoch, va, val_split))
        if stopper.should_stop:
            break
    hist = history.frame()
    if stopper.best_epoch is None:
        raise FloatingPointError("train_resnet_siamese: the validation loss was NaN in every epoch")
    paths.write_parquet(hist, out_dir / "history.parquet", meta={"variant": variant, "siamese": cfg.model_dump()})
    best = hist[(hist["epoch"] == stopper.best_epoch) & (hist["split"] == "val")].iloc[0].to_dict()
    metrics = {"best_val": best, "seconds": time.perf_counter() - t0, "train_triplets": n_train,
               "backbone": model.backbone.kind, "backbone_label": model.backbone.label,
               "val_triplets": len(parts[val_split]), "images": len(images), "cached_features": cached}
    return TrainResult(hist, stopper.best_epoch, out_dir, variant, metrics)


def _info(P, variant, backbone_dir, epoch, val, val_split) -> dict:
    cfg = P.siamese
    return {"variant": variant, "hidden": list(cfg.hidden), "out_dim": cfg.out_dim, "dropout": cfg.dropout,
            "tau": cfg.tau, "learn_tau": cfg.learn_tau, "unfreeze": cfg.resnet_unfreeze,
            "backbone_dir": str(backbone_dir), "epoch": epoch, "val": val, "val_split": val_split,
            "siamese_params": cfg.model_dump(mode="json"), "seed": P.seed}


# -- saving and loading ------------------------------------------------------------------------------------


def save_resnet_siamese(model: ResNetSiamese, target: Path, info: dict) -> Path:
    """Weights (safetensors), the backbone's spec, the image processor and ``info``, atomically."""
    from safetensors.torch import save_file

    with paths.atomic_dir(target) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / BACKBONE_CONFIG).write_text(json.dumps(models.backbone_spec(model.backbone)), encoding="utf-8")
        info = {**info, "backbone": model.backbone.kind}
        (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
        model.processor.save_pretrained(tmp)
    return target


def load_resnet_siamese(run_dir, variant: Literal["triplet", "regression"] = "triplet",
                        device: str = "cpu", kind: str = "resnet") -> ResNetSiamese:
    """The best saved siamese of ``variant`` on backbone ``kind``, frozen, in eval mode, with its image
    processor. ``run_dir`` is a run directory (its ``siamese/<kind>-<variant>``) or the model directory."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    d = Path(run_dir)
    d = d if (d / CONFIG_FILE).exists() else siamese_dir(d, kind, variant)
    if not (d / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{d}: no {kind} siamese saved (train it with train_resnet_siamese)")
    info = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
    backbone = models.backbone_from_spec(json.loads((d / BACKBONE_CONFIG).read_text(encoding="utf-8")))
    model = ResNetSiamese(backbone, info["hidden"], info["out_dim"], info["dropout"], info["variant"],
                          info["tau"], info["learn_tau"])
    model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
    model.processor = AutoImageProcessor.from_pretrained(d)
    return models.freeze(model.to(models.pick_device(device)))


def register_measures() -> None:
    """Register with :mod:`artsim_lib.measures.registry` the CNN siamese of stage 08 for each backbone:
    '<kind>_siamese' (triplet variant, cosine of the projections) and '<kind>_regression' (the pair
    head's score in [0, 1]), e.g. 'resnet_siamese', 'effnet_lite0_regression'."""
    from artsim_lib.measures import registry as compare
    from artsim_lib.measures.scoring import PairHeadMeasure, run_params, unavailable_as_such

    def load(kind: str, variant: str, run_dir):
        P = run_params(run_dir)
        name = measure_name(kind, variant)
        compare.require_dir(siamese_dir(run_dir, kind, variant), name, "08")
        model = load_resnet_siamese(run_dir, variant, P.device, kind)
        embed = lambda imgs: model.embed_images(list(imgs), P.evaluation.batch_size)  # noqa: E731  [N, out_dim]
        if variant == "triplet":
            return compare.EmbeddingMeasure(name, embed, P.evaluation.batch_size, pass_sources=True)
        dev = next(model.parameters()).device
        return PairHeadMeasure(name, embed, lambda ea, eb: model.score(ea.to(dev), eb.to(dev)))

    for kind in models.BACKBONE_KINDS:
        for variant in VARIANTS:
            compare.register_measure(measure_name(kind, variant), unavailable_as_such(
                lambda d, k=kind, v=variant: load(k, v, d)), replace=True)


CNNSiamese = ResNetSiamese  # the name for any backbone
