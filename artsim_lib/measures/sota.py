"""What the field already uses to find copies, as measures beside the study's own: DINOv2 and SSCD.

* ``dinov2``: the cosine of DINOv2's pooled (layer-normed CLS) feature, through transformers'
  ``Dinov2Model`` and the checkpoint's own image processor (``models.dinov2``, default
  ``facebook/dinov2-base``); the self-supervised feature Somepalli et al. used to find training
  images replicated by diffusion models.
* ``sscd``: SSCD, the DISC21 copy-detection descriptor, a TorchScript file distributed outside the
  hub (``models.sscd: path/to/sscd_disc_mixup.torchscript.pt``), loaded with ``torch.jit.load``;
  images resized to a 288-px short side, ImageNet-normalised, the 512-d output L2-normalised.

With ``models.build_tiny`` (smoke) a missing model is built here, seeded: a tiny ``Dinov2Config``
and a traced tiny convolutional network, so that both code paths run offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artsim_lib import config
from artsim_lib.measures.base import EmbeddingMeasure, MeasureUnavailableError, unavailable_as_such

SSCD_SHORT_SIDE = 288
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -- tiny stand-ins (smoke, tests) ------------------------------------------------------------------------
def make_tiny_dinov2(folder: str | Path, seed: int = 0) -> Path:
    """A seeded, randomly initialised tiny DINOv2 (32-d, 2 layers, 56-px input) with an image
    processor, saved to ``folder`` as ``from_pretrained`` reads it."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14
    )
    folder = Path(folder)
    Dinov2Model(cfg).eval().save_pretrained(folder)
    _tiny_processor().save_pretrained(folder)
    return folder


def _tiny_processor():
    from transformers import BitImageProcessor

    return BitImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 56, "width": 56},
        do_center_crop=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


def make_tiny_sscd(path: str | Path, seed: int = 0, dim: int = 16) -> Path:
    """A seeded tiny convolutional network traced to TorchScript at ``path``: the same file
    format and call as SSCD (``[B, 3, H, W]`` -> ``[B, dim]``), any input size."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, dim, 3, 2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from artsim_lib.io import paths

    with paths.atomic_path(path) as tmp:
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 64, 64)), str(tmp))
    return path


# -- the measures ---------------------------------------------------------------------------------------------
def dinov2_measure(ref: str, batch_size: int = 32, device: str = "cpu") -> EmbeddingMeasure:
    """The DINOv2 cosine measure of a checkpoint (hub id or folder)."""
    import torch
    from transformers import AutoImageProcessor, Dinov2Model

    from artsim_lib.models.hub import resolve_model_ref

    ref = resolve_model_ref(ref)  # a missing folder or an uncached hub id: a clear ModelNotAvailableError
    model = Dinov2Model.from_pretrained(ref).eval().to(device)
    processor = AutoImageProcessor.from_pretrained(ref)

    def embed(images):
        with torch.no_grad():
            inputs = processor(images=list(images), return_tensors="pt").to(device)
            return model(**inputs).pooler_output  # [B, D] the layer-normed CLS token

    return EmbeddingMeasure("dinov2", embed, batch_size)


def sscd_preprocess(img, short_side: int = SSCD_SHORT_SIDE):
    """One PIL RGB image as SSCD expects it: short side ``short_side``, ImageNet-normalised. # [3, H, W]"""
    import torch
    from PIL import Image

    w, h = img.size
    s = short_side / min(w, h)
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    arr = (np.asarray(img, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), np.float32))


def sscd_measure(
    path: str | Path, batch_size: int = 32, device: str = "cpu", short_side: int = SSCD_SHORT_SIDE
) -> EmbeddingMeasure:
    """The SSCD cosine measure of a TorchScript file (one image per forward: sides may differ)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MeasureUnavailableError(
            f"measure 'sscd': no TorchScript file {path} (download sscd_disc_mixup.torchscript.pt from the SSCD "
            f"release and set models.sscd to its path)"
        )
    net = torch.jit.load(str(path), map_location=device).eval()

    def embed(images):
        with torch.no_grad():
            return torch.cat([net(sscd_preprocess(im, short_side)[None].to(device)) for im in images])  # [B, D]

    return EmbeddingMeasure("sscd", embed, batch_size)


def _device(P) -> str:
    from artsim_lib.models.hub import pick_device

    return str(pick_device(P.device))


def load_dinov2(run_dir) -> EmbeddingMeasure:
    """``dinov2`` of a run: ``models.dinov2`` (built tiny when the run builds tiny models)."""
    P = config.read_run_params(run_dir)
    ref = P.model_ref("dinov2", run_dir)
    if (P.models.build_tiny or P.models.build_rehearsal) and P.is_path(P.models.dinov2) and not Path(ref).is_dir():
        make_tiny_dinov2(ref, P.seed)
    try:
        return dinov2_measure(ref, P.evaluation.batch_size, _device(P))
    except OSError as err:
        raise MeasureUnavailableError(f"measure 'dinov2': {' '.join(str(err).split())}") from None


def load_sscd(run_dir) -> EmbeddingMeasure:
    """``sscd`` of a run: the TorchScript file ``models.sscd`` (built tiny when the run builds tiny models)."""
    P = config.read_run_params(run_dir)
    if not P.models.sscd:
        raise MeasureUnavailableError("measure 'sscd': models.sscd is not set (the path of the SSCD TorchScript file)")
    path = P.path(P.models.sscd, run_dir)  # a file, never a hub id: relative to the project root
    if (P.models.build_tiny or P.models.build_rehearsal) and not path.exists():
        make_tiny_sscd(path, P.seed)
    return sscd_measure(path, P.evaluation.batch_size, _device(P))


# The registry's share: name -> loader(run_dir); a run without params gives MeasureUnavailableError.
LOADERS = {"dinov2": unavailable_as_such(load_dinov2), "sscd": unavailable_as_such(load_sscd)}
