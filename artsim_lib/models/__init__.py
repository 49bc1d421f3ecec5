"""The study's models: offline loaders (``hub``) and seeded tiny stand-ins (``tiny``).

Usage::

    from artsim_lib.models import ensure_tiny_checkpoints, load_clip, clip_image_embeddings
    ensure_tiny_checkpoints(P)  # smoke profile: builds {run_dir}/models/tiny-* when missing
    model, processor = load_clip(P.model_ref("clip"), P.device, P.dtype)
    emb = clip_image_embeddings(model, processor, images)  # [B, D], L2-normalised
    cnn, preprocess = load_backbone("effnet_lite0")  # a real ImageNet CNN from a PyPI wheel
"""
from .hub import (
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
from .tiny import KINDS, build_tiny, ensure_tiny_checkpoints, make_tiny, tiny_marker
from .backbones import KINDS as BACKBONE_KINDS
from .backbones import (
    Backbone,
    BackboneUnavailableError,
    backbone_from_spec,
    backbone_spec,
    embed_images,
    load_backbone,
    wrap_backbone,
)

__all__ = [
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
