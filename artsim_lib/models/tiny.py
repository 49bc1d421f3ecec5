"""Seeded, randomly initialised TINY versions of the study's four models.

Each is the real architecture with small dimensions, saved with ``save_pretrained``
(safetensors), so the smoke profile loads it with the very ``from_pretrained`` call the
full profile uses with a hub id. Outputs are meaningless; shapes, dtypes, processors,
tokenizers and the pipeline plumbing are the real ones. The CLIP tokenizers (the tiny CLIP's
and the refiner's ``tokenizer_2``) are the real CLIP tokenizer (:mod:`.bpe`), so their text
encoders keep CLIP's 49,408-token embedding table (width 32): every token count is real.

===============  ======================================  ========================================
kind             real checkpoint                         tiny version
===============  ======================================  ========================================
clip             openai/clip-vit-base-patch32            64² input, patch 16, embed 32, real vocab
blip2            Salesforce/blip2-opt-2.7b               32² input, 8 query tokens
sdxl_refiner     stabilityai/stable-diffusion-xl-ref...  latent /8, text embed 32, real vocab
resnet           microsoft/resnet-50                     32² input, pooled 64, 10 labels
===============  ======================================  ========================================
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from artsim_lib.io import paths
from artsim_lib.models import bpe

KINDS = ("clip", "blip2", "sdxl_refiner", "resnet")
# Bump when a tiny architecture changes: existing tiny dirs are rebuilt. 2: the real CLIP vocabulary (49,408 tokens).
TINY_VERSION = 2
MARKER = "artsim_tiny.json"  # written into every tiny checkpoint directory

# OpenAI CLIP's normalisation (also BLIP-2's) and ImageNet's (ResNet-50's).
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# Key dimensions (the real ones in comments).
CLIP_IMAGE_SIZE, CLIP_PATCH, CLIP_EMBED_DIM = 64, 16, 32  # 224, 32, 512
BLIP2_IMAGE_SIZE, BLIP2_QUERY_TOKENS = 32, 8  # 224, 32
# Init std of the tiny Q-Former and OPT (0.02 by default): with 0.02 a random BLIP-2 gives
# every image the same caption; with 0.2 the captions differ from image to image.
QFORMER_INIT_STD = OPT_INIT_STD = 0.2
SDXL_TIME_DIM, SDXL_TEXT_DIM = 8, 32  # addition_time_embed_dim 256, text 1280
RESNET_IMAGE_SIZE, RESNET_LABELS = 32, 10  # 224, 1000
RESNET_HIDDEN = [16, 32, 48, 64]  # [256, 512, 1024, 2048]: the pooled feature is the last


def _text_config(tokenizer, projection_dim: int = CLIP_EMBED_DIM):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,  # 77
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # the last id: pooling takes the first <|endoftext|>
        pad_token_id=tokenizer.pad_token_id,
    )


def make_clip():
    """``(CLIPModel, CLIPProcessor)``: ViT 64², patch 16, 2 layers, width 32, embeddings 32-d."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPVisionConfig

    tokenizer = bpe.clip_tokenizer()
    vision = CLIPVisionConfig(
        image_size=CLIP_IMAGE_SIZE,
        patch_size=CLIP_PATCH,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=CLIP_EMBED_DIM,  # transformers 5 wants it in the sub-configs too
    )
    text = _text_config(tokenizer)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=CLIP_EMBED_DIM)
    image_processor = CLIPImageProcessorPil(  # resize the short side, centre crop, as openai/clip
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _blip2_config(tok):
    """ViT 32² (patch 8) -> Q-Former with 8 queries -> 2-layer OPT, all width 32."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    vision = Blip2VisionConfig(
        image_size=BLIP2_IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        initializer_range=0.02,  # the default, 1e-10, leaves a random model blind to the image
    )
    qformer = Blip2QFormerConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        cross_attention_frequency=1,
        encoder_hidden_size=32,
        initializer_range=QFORMER_INIT_STD,
    )
    text = OPTConfig(
        vocab_size=-(-len(tok) // 8) * 8,  # padded to a multiple of 8, as in OPT (50272)
        hidden_size=32,
        word_embed_proj_dim=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        init_std=OPT_INIT_STD,
        tie_word_embeddings=False,  # so the output head can be shaped (below) without the inputs
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=BLIP2_QUERY_TOKENS,
        image_text_hidden_size=32,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )


def make_blip2():
    """``(Blip2ForConditionalGeneration, Blip2Processor)``: ViT 32², Q-Former with 8 queries, 2-layer OPT."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

    image_processor = BlipImageProcessorPil(
        size={"height": BLIP2_IMAGE_SIZE, "width": BLIP2_IMAGE_SIZE}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    # The processor adds the <image> token to the tokenizer (Salesforce's checkpoint has it too).
    processor = Blip2Processor(image_processor, bpe.opt_tokenizer(), num_query_tokens=BLIP2_QUERY_TOKENS)
    tok = processor.tokenizer
    model = Blip2ForConditionalGeneration(_blip2_config(tok))
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)  # zeros by default: 8 identical queries
        # A random LM babbles sub-word pieces ("oforaloral") and may stop at once. Zero the
        # output-head rows of everything but whole words ('Ġword'; so </s> too): greedy
        # captions are then max_new_tokens random words long. Tiny model only.
        head = model.language_model.get_output_embeddings().weight  # [V, 32]
        keep = torch.zeros(head.shape[0], dtype=torch.bool)
        keep[[i for t, i in tok.get_vocab().items() if re.fullmatch("Ġ[a-z]+", t)]] = True
        head[~keep] = 0.0
    return model, processor


def refiner_unet(text_dim: int = SDXL_TEXT_DIM, time_dim: int = SDXL_TIME_DIM, sample_size: int = 16):
    """A 2-level UNet conditioned like the refiner: text_time embedding with 5 time ids, the prompt
    embeddings [B, 77, text_dim] and the pooled text [B, text_dim] (the tiny and rehearsal refiners')."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=1,
        cross_attention_dim=text_dim,  # prompt embeds: [B, 77, text_dim]
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # 5 time ids (orig h, w, crop top, left, aesthetic score) x time_dim + the pooled text
        projection_class_embeddings_input_dim=5 * time_dim + text_dim,
    )


def refiner_vae(sample_size: int = 128):
    """A 4-level AutoencoderKL: 4 latent channels at 1/8 of the image size, as SDXL's VAE."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),  # 4 levels: latents are 1/8 of the image, as in SDXL
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size,
        scaling_factor=0.13025,  # the SDXL VAE's
        force_upcast=False,  # the real one upcasts to float32 to avoid fp16 overflow; moot here
    )


def make_sdxl_refiner():
    """``(StableDiffusionXLImg2ImgPipeline,)`` shaped like the SDXL refiner: only ``text_encoder_2``
    (CLIP text + projection, 32-d), a 2-level UNet with aesthetic-score time ids, VAE /8."""
    from transformers import CLIPTextModelWithProjection

    tokenizer_2 = bpe.clip_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with '!'
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, SDXL_TEXT_DIM))
    return (refiner_pipeline(text_encoder_2, tokenizer_2, refiner_unet(), refiner_vae()),)


def refiner_pipeline(text_encoder_2, tokenizer_2, unet, vae):
    """The refiner's img2img pipeline around these parts: its scheduler, no first text encoder, the
    aesthetic-score conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    scheduler = EulerDiscreteScheduler(  # the refiner's scheduler_config.json
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def make_resnet():
    """``(ResNetForImageClassification, image processor)``: bottleneck, depths 1-1-1-1, pooled 64, 10 labels."""
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    id2label = {i: f"tiny_class_{i}" for i in range(RESNET_LABELS)}
    config = ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=RESNET_HIDDEN,
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    processor = ConvNextImageProcessorPil(  # what microsoft/resnet-50 ships: resize /0.875, centre crop
        size={"shortest_edge": RESNET_IMAGE_SIZE}, crop_pct=0.875, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    return ResNetForImageClassification(config), processor


MAKERS: dict[str, Callable[[], tuple]] = {
    "clip": make_clip,
    "blip2": make_blip2,
    "sdxl_refiner": make_sdxl_refiner,
    "resnet": make_resnet,
}
# The slow-tokenizer files (vocab.json, merges.txt) written beside each tokenizer.json.
_VOCAB_FILES = {
    "clip": ("", bpe.clip_vocab_merges),
    "blip2": ("", bpe.opt_vocab_merges),
    "sdxl_refiner": ("tokenizer_2", bpe.clip_vocab_merges),
}


def make_tiny(kind: str, seed: int = 0) -> tuple:
    """The tiny ``kind`` in memory: ``(model, processor)``, or ``(pipeline,)`` for sdxl_refiner."""
    if kind not in MAKERS:
        raise ValueError(f"unknown tiny model kind {kind!r} (known: {', '.join(KINDS)})")
    torch.manual_seed(seed)
    return MAKERS[kind]()


def build_tiny(kind: str, path: str | Path, seed: int = 0) -> Path:
    """Build the tiny ``kind`` checkpoint into ``path`` (atomically, replacing it) with
    ``save_pretrained``; the same seed gives identical weights. Returns the path."""
    objects = make_tiny(kind, seed)
    path = Path(path)
    with paths.atomic_dir(path) as tmp:
        if kind == "sdxl_refiner":  # the hub repo also has fp16 weights: variant="fp16" loads them
            copy.deepcopy(objects[0]).to(dtype=torch.float16).save_pretrained(tmp, variant="fp16")
        for obj in objects:  # last, so that the configs say float32
            obj.save_pretrained(tmp)
        if kind in _VOCAB_FILES:
            sub, vocab_merges = _VOCAB_FILES[kind]
            bpe.write_vocab_files(tmp / sub, *vocab_merges())
        marker = {"kind": kind, "seed": seed, "version": TINY_VERSION, "note": "random weights, for smoke runs"}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return path


def tiny_marker(path: str | Path) -> dict | None:
    """The ``artsim_tiny.json`` of a tiny checkpoint directory, or None."""
    f = Path(path) / MARKER
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _needs_build(path: Path, kind: str, seed: int) -> bool:
    """True for a missing/empty directory or an outdated tiny build; False for a current
    tiny build or a real checkpoint the user put there. Anything else is not ours to replace."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return True
    marker = tiny_marker(path)
    if marker is not None:
        return (marker.get("kind"), marker.get("seed"), marker.get("version")) != (kind, seed, TINY_VERSION)
    if (path / "config.json").exists() or (path / "model_index.json").exists():
        return False
    raise FileExistsError(f"{path} exists but holds no checkpoint (and no {MARKER}); not replacing it")


def ensure_tiny(P, kinds: Iterable[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """When ``P.models.build_tiny`` is true, build each missing (or outdated) tiny checkpoint
    at ``P.model_ref(kind)``. Returns ``{kind: path}`` for the kinds checked ({} when off)."""
    if not P.models.build_tiny:
        return {}
    out = {}
    for kind in kinds or KINDS:
        ref = P.model_ref(kind)
        path = Path(ref)
        if not path.is_absolute():
            raise ValueError(
                f"models.{kind} = {ref!r} is a hub id, but models.build_tiny is true: "
                f"give a path such as '{{run_dir}}/models/tiny-{kind.replace('_', '-')}'"
            )
        if _needs_build(path, kind, seed):
            build_tiny(kind, path, seed=seed)
        out[kind] = path
    return out
