"""The study's models: offline loaders (``hub``) and seeded tiny stand-ins (``tiny``).

Usage::

    from artsim_lib.models import ensure_tiny_checkpoints, load_clip, clip_image_embeddings
    ensure_tiny_checkpoints(P)  # smoke profile: builds {run_dir}/models/tiny-* when missing
    model, processor = load_clip(P.model_ref("clip"), P.device, P.dtype)
    emb = clip_image_embeddings(model, processor, images)  # [B, D], L2-normalised
    cnn, preprocess = load_backbone("effnet_lite0")  # a real ImageNet CNN from a PyPI wheel
"""

from artsim_lib.models.backbones import KINDS as BACKBONE_KINDS
from artsim_lib.models.backbones import (
    Backbone,
    BackboneUnavailableError,
    backbone_from_spec,
    backbone_spec,
    embed_images,
    load_backbone,
    wrap_backbone,
)
from artsim_lib.models.hub import (
    ModelNotAvailableError,
    check_blip2_processor,
    clip_image_embeddings,
    clip_text_embeddings,
    freeze,
    load_blip2,
    load_clip,
    load_resnet,
    load_sdxl_refiner,
    pick_device,
    pick_dtype,
    resolve_model_ref,
)
from artsim_lib.models.rehearsal import ensure_rehearsal_checkpoints
from artsim_lib.models.tiny import KINDS, build_tiny, ensure_tiny, make_tiny, tiny_marker


def ensure_tiny_checkpoints(P, kinds=None, seed: int = 0) -> dict:
    """Build the checkpoints a profile asks for at ``P.model_ref(kind)``: the rehearsal's
    hub-layout ones (``models.build_rehearsal``), else the tiny ones (``models.build_tiny``);
    ``{}`` when it asks for neither. Returns ``{kind: path}``."""
    if P.models.build_rehearsal:
        return ensure_rehearsal_checkpoints(P, kinds, seed)
    return ensure_tiny(P, kinds, seed)


def load_clip_tokenizer(P):
    """The refiner's ``tokenizer_2`` (CLIP ViT-bigG's BPE), loaded on its own, offline."""
    from transformers import CLIPTokenizer

    ensure_tiny_checkpoints(P, ["sdxl_refiner"])
    ref = resolve_model_ref(P.model_ref("sdxl_refiner"))
    return CLIPTokenizer.from_pretrained(ref, subfolder="tokenizer_2")


__all__ = [
    "load_clip_tokenizer",
    "BACKBONE_KINDS",
    "Backbone",
    "BackboneUnavailableError",
    "backbone_from_spec",
    "backbone_spec",
    "embed_images",
    "load_backbone",
    "wrap_backbone",
    "KINDS",
    "ModelNotAvailableError",
    "build_tiny",
    "check_blip2_processor",
    "clip_image_embeddings",
    "clip_text_embeddings",
    "ensure_tiny_checkpoints",
    "freeze",
    "load_blip2",
    "load_clip",
    "load_resnet",
    "load_sdxl_refiner",
    "make_tiny",
    "pick_device",
    "pick_dtype",
    "resolve_model_ref",
    "tiny_marker",
]
