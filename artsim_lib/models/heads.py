"""The trainable models of stages 07 and 08: a CNN classifier, the CLIP siamese heads, the CNN siamese.

* :class:`CNNClassifier` (stage 07): a :class:`~artsim_lib.models.backbones.Backbone` + a linear
  head over its pooled features; :func:`resnet_embed` turns images into its L2-normalised features.
* :class:`Siamese` (stage 08, CLIP): one head (:class:`MLPHead` or :class:`TransformerHead`, built
  by :func:`build_head` from :func:`head_config`) and a :class:`Temperature`, shared by the three
  branches, on frozen CLIP embeddings.
* :class:`ResNetSiamese` (stage 08, CNN): stage 07's backbone + a projection head (:func:`mlp`),
  the triplet variant (cosine of the projections) or the regression one (a pair head).

Modules only: training loops are in the stages, saving and loading in
:mod:`artsim_lib.measures.trained`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from artsim_lib.models import training
from artsim_lib.models.backbones import Backbone, wrap_backbone
from artsim_lib.models.image_batches import open_rgb, pixel_batch

VARIANTS = ("triplet", "regression")  # the CNN siamese's two heads


def seeded_linear(d_in: int, d_out: int, seed: int) -> nn.Linear:
    """torch's Linear init, drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(d_in, d_out)
    with torch.no_grad():
        bound = 1.0 / d_in**0.5
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.uniform_(-bound, bound, generator=gen)
    return head


# -- stage 07: the classifier ------------------------------------------------------------------------


class CNNClassifier(nn.Module):
    """A :class:`~artsim_lib.models.backbones.Backbone` + a linear head over its pooled features.
    ``forward(pixel_values)`` returns an output with ``.logits`` ``[B, K]``, like transformers'."""

    def __init__(self, backbone, classes: Sequence[str], seed: int = 0, unfreeze: str = "all"):
        super().__init__()
        self.backbone, self.classes, self.unfreeze = backbone, list(classes), unfreeze
        self.classifier = seeded_linear(backbone.dim, len(classes), seed)

    def set_unfreeze(self, unfreeze: str) -> CNNClassifier:
        """``requires_grad`` on the head, and on the backbone per ``unfreeze`` (all | layer4)."""
        self.unfreeze = unfreeze
        training.set_trainable(self, True)
        training.set_trainable(self.backbone, self.backbone.unfreeze_prefixes(unfreeze))
        return self

    def train(self, mode: bool = True) -> CNNClassifier:
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


@torch.no_grad()
def resnet_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Pooled features of a CNNClassifier, a Backbone, a ResNetForImageClassification or a ResNetModel. # [B, D]"""
    if isinstance(model, CNNClassifier):
        return model.backbone(pixels)
    if isinstance(model, Backbone):
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
        pixels = pixel_batch(processor, [open_rgb(x) for x in images[start : start + batch_size]])
        out.append(resnet_features(model, pixels.to(p.device, p.dtype)).float().cpu())  # [b, D]
    if not out:
        return torch.empty(0, 0)
    return F.normalize(torch.cat(out), dim=-1)


# -- stage 08: the CLIP siamese heads -------------------------------------------------------------------


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

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        tokens: int = 4,
        width: int = 64,
        layers: int = 1,
        heads: int = 4,
        dropout: float = 0.1,
    ):
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
    return {
        "kind": S.head,
        "in_dim": in_dim,
        "hidden": list(S.hidden),
        "out_dim": S.out_dim,
        "dropout": S.dropout,
        "tokens": S.tokens,
        "layers": S.layers,
        "heads": S.heads,
        "tau": S.tau,
        "learn_tau": S.learn_tau,
        "tau_min": S.tau_min,
        "tau_max": S.tau_max,
    }


def build_head(cfg: dict) -> nn.Module:
    """An untrained head from :func:`head_config`."""
    if cfg["kind"] == "transformer":
        width = cfg["hidden"][0] if cfg["hidden"] else cfg["in_dim"] // cfg["tokens"]
        return TransformerHead(
            cfg["in_dim"], cfg["out_dim"], cfg["tokens"], width, cfg["layers"], cfg["heads"], cfg["dropout"]
        )
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


def siamese_from_config(cfg: dict) -> Siamese:
    """An untrained :class:`Siamese` (head + τ) from :func:`head_config`."""
    return Siamese(build_head(cfg), Temperature(cfg["tau"], cfg["learn_tau"], cfg["tau_min"], cfg["tau_max"]))


# -- stage 08: the CNN siamese --------------------------------------------------------------------------


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

    def __init__(
        self,
        backbone: nn.Module,
        hidden: Sequence[int] = (512,),
        out_dim: int = 256,
        dropout: float = 0.1,
        variant: str = "triplet",
        tau: float = 0.07,
        learn_tau: bool = False,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.backbone = wrap_backbone(backbone)
        feat_dim = self.backbone.dim  # 2048 for ResNet-50, 1280 for EfficientNet-Lite0
        self.head = mlp(feat_dim, hidden, out_dim, dropout)
        # The pair head sees [|a-b|, a*b] of the two projections. # [B, 2*out_dim] -> [B, 1]
        self.pair_head = (
            mlp(2 * out_dim, list(hidden[-1:]) or [out_dim], 1, dropout) if variant == "regression" else None
        )
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
        out = [
            self.embed(
                pixel_batch(self.processor, [open_rgb(x) for x in images[i : i + batch_size]]).to(p.device, p.dtype)
            )
            .float()
            .cpu()
            for i in range(0, len(images), batch_size)
        ]
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

    def set_unfreeze(self, unfreeze: str) -> ResNetSiamese:
        """``requires_grad`` on the head always, on the backbone per ``unfreeze`` (none|layer4|all)."""
        training.set_trainable(self, True)
        training.set_trainable(self.backbone, self.backbone.unfreeze_prefixes(unfreeze))
        self.log_tau.requires_grad_(self.learn_tau)
        return self

    def train_mode(self, unfreeze: str) -> ResNetSiamese:
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


CNNSiamese = ResNetSiamese  # the name for any backbone
