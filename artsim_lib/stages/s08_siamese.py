"""Stage 08: the CLIP siamese -- a trainable head on frozen CLIP image embeddings.

Anchor (an original), positive (its derivative) and negative (another original) go through the
*same* frozen CLIP and the *same* head, trained with the study's InfoNCE triplet loss. CLIP being
frozen, the head trains on cached embeddings (:mod:`artsim_lib.measures.embeddings`), never on pixels.
The seed's 80/20 and 40/60 train/val splits (``siamese.train_splits: [0.8, 0.4]``, named '80-20' and
'40-60') are re-drawn per original; test is left to stage 09::

    res = train_clip_siamese(P, triplets, ext.table, 0.8, ext.key)  # -> <run>/siamese/clip-head-80-20/
    measure = load_clip_siamese(P.run_path)                          # .similarity(a, b), .embed(images)
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from artsim_lib.measures import embeddings
from artsim_lib.core import losses, metrics
from artsim_lib import models
from artsim_lib.io import paths, shards
from artsim_lib.models import training
from artsim_lib.io.manifest import require_manifest
from artsim_lib.core.splits import stratified_split

# -- the head ----------------------------------------------------------------------------------------


class MLPHead(nn.Module):
    """FC + BatchNorm + Dropout + ReLU per hidden size, then FC to ``out_dim``; L2-normalised."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.1):
        super().__init__()
        layers, prev = [], in_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.BatchNorm1d(h), nn.Dropout(dropout), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)  # [B, out_dim]


class TransformerHead(nn.Module):
    """The embedding as ``tokens`` tokens of ``in_dim / tokens`` values, a transformer encoder
    over them, mean pooling and an FC to ``out_dim``; L2-normalised."""

    def __init__(self, in_dim: int, out_dim: int, tokens: int = 4, width: int = 64, layers: int = 1,
                 heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if in_dim % tokens or width % heads:
            raise ValueError(f"transformer head: tokens ({tokens}) must divide {in_dim}, heads ({heads}) {width}")
        self.tokens = tokens
        self.proj = nn.Linear(in_dim // tokens, width)
        self.pos = nn.Parameter(torch.zeros(tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x.view(len(x), self.tokens, -1)) + self.pos  # [B, k, width]
        return F.normalize(self.out(self.encoder(t).mean(1)), dim=-1)  # [B, out_dim]


def head_config(S, in_dim: int) -> dict:
    """The architecture of the head from the ``siamese`` params section, as a JSON-able dict."""
    return {"kind": S.head, "in_dim": in_dim, "hidden": list(S.hidden), "out_dim": S.out_dim,
            "dropout": S.dropout, "tokens": S.tokens, "layers": S.layers, "heads": S.heads,
            "tau": S.tau, "learn_tau": S.learn_tau, "tau_min": S.tau_min, "tau_max": S.tau_max}


def build_head(cfg: dict) -> nn.Module:
    """An untrained head from :func:`head_config`."""
    if cfg["kind"] == "transformer":
        width = cfg["hidden"][0] if cfg["hidden"] else cfg["in_dim"] // cfg["tokens"]
        return TransformerHead(cfg["in_dim"], cfg["out_dim"], cfg["tokens"], width, cfg["layers"],
                               cfg["heads"], cfg["dropout"])
    return MLPHead(cfg["in_dim"], cfg["hidden"], cfg["out_dim"], cfg["dropout"])


class Temperature(nn.Module):
    """τ of the loss: fixed, or learnt as ``log τ`` (so it stays positive) within [min, max]."""

    def __init__(self, tau: float = 0.07, learn: bool = False, tau_min: float = 0.01, tau_max: float = 1.0):
        super().__init__()
        self.log_min, self.log_max = math.log(tau_min), math.log(tau_max)
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau)), requires_grad=learn)

    def forward(self) -> torch.Tensor:
        return self.log_tau.clamp(self.log_min, self.log_max).exp()

    @torch.no_grad()
    def clamp_(self) -> None:  # after each step: outside the range the gradient would vanish
        self.log_tau.clamp_(self.log_min, self.log_max)


class Siamese(nn.Module):
    """Three branches, one set of weights: anchor, positive and negative go through the same
    (optional, frozen) encoder and the same head in one pass."""

    def __init__(self, head: nn.Module, temperature: Temperature, encoder: nn.Module | None = None):
        super().__init__()
        self.head, self.temperature, self.encoder = head, temperature, encoder

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Refined embeddings of CLIP embeddings [B, D] (or of pixels with an encoder). # [B, out_dim]"""
        return self.head(self.encoder(x) if self.encoder is not None else x)

    def forward(self, anchor, positive, negative):
        z = self.embed(torch.cat([anchor, positive, negative]))  # [3B, out_dim]
        return z.chunk(3)


def triplet_loss(za, zp, zn, tau, groups: torch.Tensor | None = None, in_batch: bool = False):
    """The study's InfoNCE loss, optionally with the other positives of the batch as extra
    negatives (except those of the same original, ``groups``). Returns (loss, s+, s-)."""
    s_pos, s_neg = losses.triplet_similarities(za, zp, zn)  # [B], [B]
    negs = s_neg[:, None]
    if in_batch and len(za) > 1:
        negs = torch.cat([negs, losses.in_batch_negatives(za, zp, groups)], dim=1)  # [B, 1 + B-1]
    return losses.infonce_triplet_loss(s_pos, negs, tau), s_pos, s_neg


# -- the train/val splits ----------------------------------------------------------------------------


def split_name(share: float) -> str:
    """0.8 -> '80-20'."""
    return f"{round(share * 100)}-{100 - round(share * 100)}"


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


# -- training on cached embeddings ---------------------------------------------------------------------


@dataclass
class TripletTensors:
    """Triplets as indices into one embedding matrix."""

    emb: torch.Tensor   # [M, D] the distinct images' CLIP embeddings
    a: torch.Tensor     # [T] anchor rows
    p: torch.Tensor     # [T] positive rows
    n: torch.Tensor     # [T] negative rows
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
    return TripletTensors(torch.from_numpy(embeddings.embedding_matrix(table)), *map(as_long, rows),
                          torch.from_numpy(hard), as_long(pd.factorize(triplets["anchor_id"])[0]))


@torch.no_grad()
def evaluate(model: Siamese, data: TripletTensors, idx: np.ndarray) -> dict:
    """Loss and triplet accuracy on random and on hard negatives, for the triplets ``idx``."""
    model.eval()
    i = torch.as_tensor(idx, dtype=torch.long, device=data.emb.device)
    z = model.embed(data.emb)  # [M, out_dim]: every image once
    s_pos, s_neg = losses.triplet_similarities(z[data.a[i]], z[data.p[i]], z[data.n[i]])
    hard = data.hard[i]
    loss = losses.infonce_triplet_loss(s_pos, s_neg, model.temperature()).item() if len(i) else math.nan
    return {"loss": loss, "acc_random": losses.triplet_accuracy(s_pos[~hard], s_neg[~hard]),
            "acc_hard": losses.triplet_accuracy(s_pos[hard], s_neg[hard])}


@dataclass
class SiameseResult:
    """One trained CLIP siamese head."""

    model: Siamese
    history: pd.DataFrame          # epoch, split, loss, acc_random, acc_hard, tau, seconds (of the epoch)
    best_epoch: int                # the epoch whose weights were kept
    seconds: float                 # wall time of training, all epochs
    name: str = ""                 # the split, '80-20'
    model_dir: Path | None = None  # where it was saved
    triplets: pd.DataFrame | None = None  # the train/val triplets it used (split re-drawn)


def fit_head(data: TripletTensors, train_idx: np.ndarray, val_idx: np.ndarray, cfg: dict, S,
             seed: int, device="cpu") -> SiameseResult:
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
    model = Siamese(build_head(cfg), Temperature(cfg["tau"], cfg["learn_tau"], cfg["tau_min"],
                                                 cfg["tau_max"])).to(setup.device)
    opt = training.adamw(model, S.lr, S.weight_decay)
    sched = training.warmup_schedule(opt, S.epochs * training.num_batches(len(train_idx), S.batch_size), 0.0)
    stopper, history, best, t_start = training.EarlyStopping(S.patience), training.History(), None, time.perf_counter()
    for epoch in range(1, S.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for b in training.batch_indices(len(train_idx), S.batch_size, True, training.epoch_seed(seed, epoch)):
            j = torch.as_tensor(train_idx[b], device=setup.device)
            za, zp, zn = model(data.emb[data.a[j]], data.emb[data.p[j]], data.emb[data.n[j]])
            loss, _, _ = triplet_loss(za, zp, zn, model.temperature(), data.group[j], S.in_batch_negatives)
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


def train_clip_siamese(P, triplets: pd.DataFrame, table: pd.DataFrame, share: float, clip_key: str,
                       manifest: pd.DataFrame | None = None) -> SiameseResult:
    """Train the CLIP siamese head on the ``share`` split and save it under
    ``<run>/siamese/clip-head-<split>/``. ``table`` holds the cached embeddings (id, embedding)
    of the CLIP model ``clip_key`` (:attr:`embeddings.ExtractResult.key`)."""
    manifest = require_manifest(P) if manifest is None else manifest
    name = split_name(share)
    trip = split_triplets(triplets, manifest, share, P.seed)
    tensors = triplet_tensors(trip, table)
    cfg = head_config(P.siamese, tensors.emb.shape[1])
    train_idx, val_idx = (np.flatnonzero(trip["split"].to_numpy() == s) for s in ("train", "val"))
    fit = fit_head(tensors, train_idx, val_idx, cfg, P.siamese, shards.item_seed(P.seed, name, "siamese"),
                   P.device)
    cfg.update(clip=P.model_ref("clip"), clip_key=clip_key, split=name, share=share, best_epoch=fit.best_epoch,
               tau_final=fit.model.temperature().item(), triplets={"train": len(train_idx), "val": len(val_idx)})
    fit.name, fit.triplets = name, trip
    fit.model_dir = save_head(fit.model, cfg, fit.history, P.run.sub("siamese") / f"clip-head-{name}")
    return fit


# -- saving and loading -------------------------------------------------------------------------------


def save_head(model: Siamese, cfg: dict, history: pd.DataFrame, out_dir: str | Path) -> Path:
    """``head.safetensors`` (head + τ), ``config.json`` and ``history.csv``, written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    with paths.atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / "head.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1, default=str), encoding="utf-8")
        history.to_csv(tmp / "history.csv", index=False)
    return Path(out_dir)


def load_head(path: str | Path) -> tuple[Siamese, dict]:
    """A saved head (in eval mode) and its config."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    model = Siamese(build_head(cfg), Temperature(cfg["tau"], cfg["learn_tau"], cfg["tau_min"], cfg["tau_max"]))
    model.load_state_dict(load_file(str(path / "head.safetensors")))
    return model.eval(), cfg


# -- text <-> image retrieval ---------------------------------------------------------------------------


def retrieval_accuracy(img: np.ndarray, txt: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy of N (image, caption) pairs: i2t = share of images whose own caption is the
    most similar of the N, t2i the converse. Ties count at their expected value (chance)."""
    sim = np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T  # [N, N]
    truth = np.arange(len(sim))
    return metrics.recall_at_k(sim, truth, 1), metrics.recall_at_k(sim.T, truth, 1)


def batched_retrieval(img: np.ndarray, txt: np.ndarray, n: int, seed: int = 0) -> dict:
    """:func:`retrieval_accuracy` over seeded batches of ``n`` pairs (the remainder joins the
    last batch), averaged by pairs; ``chance`` is the matching average of 1/N."""
    order = np.random.default_rng(seed).permutation(len(img))
    batches = [b for b in np.split(order, list(range(n, len(order) - n + 1, n))) if len(b) > 1]
    if not batches:
        return {"pairs": 0, "N": n, "i2t": math.nan, "t2i": math.nan, "chance": math.nan}
    w = np.array([len(b) for b in batches])
    acc = np.array([retrieval_accuracy(img[b], txt[b]) for b in batches])  # [batches, 2]
    i2t, t2i = (acc * w[:, None]).sum(0) / w.sum()
    return {"pairs": int(w.sum()), "N": n, "i2t": float(i2t), "t2i": float(t2i), "chance": float(len(w) / w.sum())}


def text_image_accuracy(encoder: embeddings.Encoder, table: pd.DataFrame, manifest: pd.DataFrame,
                        captions: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """CLIP N-way i2t/t2i accuracy of the originals and their captions, per split, in batches of
    ``n`` (chance 1/N). Not the seed's form: that is :func:`seed_text_image_accuracy`."""
    df = (manifest[["id", "split"]].merge(captions[["id", "caption"]], on="id")
          .merge(table[["id", "embedding"]], on="id"))
    rows = []
    for split, part in ((s, df[df["split"] == s]) for s in ("train", "val", "test") if (df["split"] == s).any()):
        txt = np.concatenate([models.clip_text_embeddings(encoder.model, encoder.processor, list(c)).numpy()
                              for c in shards.batches(list(part["caption"]), 64)])  # [n, D]
        rows.append({"split": split, **batched_retrieval(embeddings.embedding_matrix(part), txt, n, seed)})
    return pd.DataFrame(rows)


def clip_text_embedder(encoder: embeddings.Encoder, batch: int = 64):
    """``texts -> [N, D]`` L2-normalised CLIP text embeddings, in batches."""
    def embed(texts):
        texts = list(texts)
        if not texts:
            return np.zeros((0, encoder.dim), np.float32)
        return np.concatenate([models.clip_text_embeddings(encoder.model, encoder.processor, b).numpy()
                               for b in shards.batches(texts, batch)])
    return embed


SEED_TI_COLUMNS = ["split", "negative_kind", "triplets", "originals", "i2t", "t2i", "chance"]


def seed_text_image_accuracy(embed_texts, table: pd.DataFrame, triplets: pd.DataFrame, prompts: pd.Series,
                             captions: pd.DataFrame) -> pd.DataFrame:
    """The seed's i2t/t2i per split and kind of negative ('all' first): per triplet a binary choice,
    chance 0.5 (:func:`metrics.binary_text_image_accuracy`), of the original's cached CLIP image
    embedding (``table``) against its derivative's prompt and the negative's caption, and of the
    prompt against the original and the negative. ``prompts`` maps a derivative (``positive_id``)
    to the prompt it was made from; triplets without one (the ``augment`` backend) or without a
    negative caption are left out, so the result may be empty."""
    prompt = triplets["positive_id"].map(prompts)
    neg_caption = triplets["negative_id"].map(captions.set_index("id")["caption"])
    keep = (prompt.notna() & prompt.astype(str).str.strip().ne("") & neg_caption.notna()).to_numpy()
    if not keep.any():
        return pd.DataFrame(columns=SEED_TI_COLUMNS)
    t = triplets[keep].reset_index(drop=True)
    rows = pd.Index(table["id"])
    where = {k: rows.get_indexer(t[f"{k}_id"]) for k in ("anchor", "negative")}
    if any((w < 0).any() for w in where.values()):
        raise KeyError("some triplet originals have no cached CLIP embedding; run the extraction step first")
    emb = embeddings.embedding_matrix(table)  # [M, D]
    img_a, img_n = emb[where["anchor"]], emb[where["negative"]]
    txt_p = np.asarray(embed_texts(list(prompt[keep].astype(str))))
    txt_n = np.asarray(embed_texts(list(neg_caption[keep].astype(str))))
    out = []
    for split in [s for s in ("train", "val", "test") if (t["split"] == s).any()]:
        in_split = (t["split"] == split).to_numpy()
        for kind in ["all", *sorted(t.loc[in_split, "negative_kind"].unique())]:
            sel = in_split & ((t["negative_kind"] == kind).to_numpy() if kind != "all" else True)
            r = metrics.binary_text_image_accuracy(img_a[sel], txt_p[sel], img_n[sel], txt_n[sel])
            out.append({"split": split, "negative_kind": kind, "triplets": r["triplets"],
                        "originals": t.loc[sel, "anchor_id"].nunique(), "i2t": r["i2t"], "t2i": r["t2i"],
                        "chance": r["chance"]})
    return pd.DataFrame(out, columns=SEED_TI_COLUMNS)


def text_image_table(nway: pd.DataFrame, binary: pd.DataFrame) -> pd.DataFrame:
    """Both forms side by side, each with its chance: the seed's binary one ('all' negatives) and
    the N-way retrieval of :func:`text_image_accuracy`. Columns: form, split, n, i2t, t2i, chance."""
    cols = ["form", "split", "n", "i2t", "t2i", "chance"]
    b = binary[binary["negative_kind"] == "all"] if len(binary) else binary
    parts = [pd.DataFrame({"form": "seed: binary (original vs derivative's prompt / negative's caption)",
                           "split": b["split"], "n": b["triplets"], "i2t": b["i2t"], "t2i": b["t2i"],
                           "chance": b["chance"]}) if len(b) else None,
             pd.DataFrame({"form": [f"N-way retrieval (N = {n})" for n in nway["N"]], "split": nway["split"],
                           "n": nway["pairs"], "i2t": nway["i2t"], "t2i": nway["t2i"],
                           "chance": nway["chance"]}) if len(nway) else None]
    parts = [x for x in parts if x is not None]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


# -- the 'clip_siamese' measure ------------------------------------------------------------------------


def load_clip_siamese(run_dir: str | Path, split: str | None = None) -> embeddings.ClipMeasure:
    """The trained CLIP siamese of a run as a measure (``.similarity(a, b)``, ``.embed(images)``);
    ``split`` ('80-20', ...) defaults to the first of ``siamese.train_splits``."""
    P, encoder = embeddings.run_encoder(run_dir)
    folder = Path(run_dir) / "siamese" / f"clip-head-{split or split_name(P.siamese.train_splits[0])}"
    if not (folder / "head.safetensors").exists():
        raise FileNotFoundError(f"{folder}: no trained CLIP siamese head (run stage 08 first)")
    model, cfg = load_head(folder)
    if cfg.get("clip_key") not in (None, encoder.key):
        from artsim_lib.measures.base import MeasureUnavailableError  # evaluation skips it and says why

        raise MeasureUnavailableError(f"{folder} was trained on CLIP {cfg['clip_key']}, but the run's CLIP is "
                                      f"{encoder.key}: re-run stage 08")
    return embeddings.ClipMeasure(encoder, model.head, "clip_siamese", Path(run_dir) / "embeddings" / encoder.key,
                                  P.siamese.embed_batch_size)


def register_measures() -> bool:
    """Register 'clip' and 'clip_siamese' with :mod:`artsim_lib.measures.registry` (False when it is absent);
    a run without the model gives its ``MeasureUnavailableError``."""
    try:
        from artsim_lib.measures import registry as compare
    except ImportError:
        return False

    def unavailable_as_such(loader):
        def load(run_dir):
            try:
                return loader(run_dir)
            except (FileNotFoundError, models.ModelNotAvailableError) as err:
                raise compare.MeasureUnavailableError(str(err)) from None
        return load

    compare.register_measure("clip", unavailable_as_such(embeddings.load_clip_measure), replace=True)
    compare.register_measure("clip_siamese", unavailable_as_such(load_clip_siamese), replace=True)
    return True
