"""Checkpoints for the rehearsal profile: the full study's models in the hub's own layouts, random weights.

The smoke profile's tiny models (:mod:`.tiny`) are shaped for speed. The rehearsal profile
(``params/rehearsal.yaml``) instead goes through every code path the full profile takes, so its
checkpoints look like what ``hf download`` leaves on disk:

* ``clip``: CLIP ViT-B/32 at its real size (``CLIPConfig()`` *is* ViT-B/32: 224 px, patch 32,
  512-d embeddings) with the hub's old-style ``preprocessor_config.json`` (``CLIPFeatureExtractor``,
  ``size: 224``), not what ``save_pretrained`` writes today.
* ``resnet``: ResNet-50 at its real size (``ResNetConfig()``: bottleneck 3-4-6-3, 2048-d pooled,
  1000 labels) with ``microsoft/resnet-50``'s old-style ``ConvNextFeatureExtractor`` config.
* ``blip2``: BLIP-2 with the real processor files (224 px, ``BlipImageProcessor``, 32 query tokens,
  ``processor_config.json``), patch 14 and the real OPT vocabulary size (50272), fewer and narrower
  layers.
* ``sdxl_refiner``: the refiner's repository layout (``text_encoder``/``tokenizer`` null in
  ``model_index.json``, ``requires_aesthetics_score``, ``tokenizer_2`` with no ``tokenizer.json``,
  ``*.fp16.safetensors`` beside the float32 files) with a scaled UNet and VAE; and the fp16-fix
  VAE in a folder of its own (``generation.vae``), swapped in at load time as in the full study.

Every builder is seeded (same seed, same bytes) and writes atomically under a lock, so shard
jobs that start together build a checkpoint once.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from artsim_lib.io import paths
from artsim_lib.models import bpe, tiny
from artsim_lib.models.tiny import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, KINDS

REHEARSAL_VERSION = 2  # bump when a layout changes: existing rehearsal dirs are rebuilt
MARKER = "artsim_rehearsal.json"
OPT_VOCAB = 50272  # Salesforce/blip2-opt-2.7b: OPT's 50265 tokens + <image>, padded to a multiple of 8
CLIP_VOCAB = 49408

# The hub's preprocessing files as they are in the repositories (older than transformers 5's format).
CLIP_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "resample": 3,
    "size": 224,
}
RESNET_PREPROCESSOR = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
    "resample": 3,
    "size": 224,
}
BLIP2_PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "BlipImageProcessor",
    "image_std": CLIP_STD,
    "processor_class": "Blip2Processor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}
BLIP2_PROCESSOR = {"num_query_tokens": 32, "processor_class": "Blip2Processor"}


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_clip_tokenizer(directory: Path, pad_token: str = "<|endoftext|>", fast_file: bool = True) -> None:
    """A CLIP tokenizer as the hub has it: vocab.json + merges.txt (+ tokenizer.json unless not)."""
    tok = bpe.clip_tokenizer(pad_token=pad_token)
    tok.save_pretrained(directory)
    bpe.write_vocab_files(directory, *bpe.clip_vocab_merges())
    if not fast_file:
        (directory / "tokenizer.json").unlink(missing_ok=True)


def build_clip(target: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    model = CLIPModel(CLIPConfig())  # the defaults are ViT-B/32's: vision 768x12, text 512x12, 512-d
    model.save_pretrained(target)
    _save_clip_tokenizer(target)
    (target / "processor_config.json").unlink(missing_ok=True)
    _write_json(target / "preprocessor_config.json", CLIP_PREPROCESSOR)


def build_resnet(target: Path) -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    labels = {i: f"imagenet_class_{i}" for i in range(1000)}
    model = ResNetForImageClassification(ResNetConfig(id2label=labels, label2id={v: k for k, v in labels.items()}))
    model.save_pretrained(target)
    _write_json(target / "preprocessor_config.json", RESNET_PREPROCESSOR)


def build_blip2(target: Path) -> None:
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        OPTConfig,
    )

    tok = bpe.opt_tokenizer()
    tok.add_tokens(["<image>"], special_tokens=True)
    vision = Blip2VisionConfig(
        image_size=224,
        patch_size=14,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        initializer_range=0.02,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        cross_attention_frequency=1,
        encoder_hidden_size=64,
    )
    text = OPTConfig(
        vocab_size=OPT_VOCAB,
        hidden_size=64,
        word_embed_proj_dim=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=32,
        image_text_hidden_size=64,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    bpe.write_vocab_files(target, *bpe.opt_vocab_merges())
    (target / "tokenizer.json").unlink(missing_ok=True)  # the slow files rebuild the same tokenizer
    _write_json(target / "preprocessor_config.json", BLIP2_PREPROCESSOR)
    _write_json(target / "processor_config.json", BLIP2_PROCESSOR)


def build_sdxl_refiner(target: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tok_dir = target.parent / f".{target.name}.tokenizer"
    _save_clip_tokenizer(tok_dir, pad_token="!", fast_file=False)
    from transformers import CLIPTokenizer

    tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir)
    text = CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=64,
        bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id,
    )
    text_encoder_2 = CLIPTextModelWithProjection(text)
    # the refiner's layout at 1024 px (latents 128²), 64-d text, 16-d time ids
    unet = tiny.refiner_unet(text_dim=64, time_dim=16, sample_size=128)
    pipe = tiny.refiner_pipeline(text_encoder_2, tokenizer_2, unet, tiny.refiner_vae(sample_size=1024))
    copy.deepcopy(pipe).to(dtype=torch.float16).save_pretrained(target, variant="fp16")
    pipe.save_pretrained(target)
    (target / "tokenizer_2" / "tokenizer.json").unlink(missing_ok=True)
    paths_ = list(tok_dir.iterdir())
    for p in paths_:
        p.unlink()
    tok_dir.rmdir()


def build_vae(target: Path) -> None:
    """The fp16-fix VAE's repository: config.json + diffusion_pytorch_model.safetensors."""
    tiny.refiner_vae(sample_size=1024).save_pretrained(target)


BUILDERS = {
    "clip": build_clip,
    "resnet": build_resnet,
    "blip2": build_blip2,
    "sdxl_refiner": build_sdxl_refiner,
    "vae": build_vae,
}


def marker(path: str | Path) -> dict | None:
    try:
        return json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _current(path: Path, kind: str, seed: int) -> bool:
    m = marker(path)
    return m is not None and (m.get("kind"), m.get("seed"), m.get("version")) == (kind, seed, REHEARSAL_VERSION)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build(kind: str, path: str | Path, seed: int = 0) -> Path:
    """Build the rehearsal ``kind`` into ``path`` unless a current build is there (seeded, atomic, locked)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown rehearsal model kind {kind!r} (known: {', '.join(BUILDERS)})")
    path = Path(path)
    with _lock(path):
        if _current(path, kind, seed):
            return path
        if path.exists() and marker(path) is None and any(path.iterdir()):
            raise FileExistsError(f"{path} exists and is not a rehearsal build (no {MARKER}); not replacing it")
        torch.manual_seed(seed)
        with paths.atomic_dir(path) as tmp:
            BUILDERS[kind](tmp)
            note = "random weights in the hub's layout, for the rehearsal profile"
            _write_json(tmp / MARKER, {"kind": kind, "seed": seed, "version": REHEARSAL_VERSION, "note": note})
    return path


def ensure_rehearsal_checkpoints(P, kinds: Iterable[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """Build each of ``kinds`` (default: all) at ``P.model_ref(kind)``; sdxl_refiner also builds
    its separate VAE at ``generation.vae``. Returns ``{kind: path}``."""
    out = {}
    for kind in kinds or KINDS:
        path = Path(P.model_ref(kind))
        if not path.is_absolute():
            raise ValueError(
                f"models.{kind} = {P.model_ref(kind)!r} is a hub id, but models.build_rehearsal is "
                f"true: give a path such as '{{run_dir}}/models/rehearsal-{kind.replace('_', '-')}'"
            )
        out[kind] = build(kind, path, seed)
        if kind == "sdxl_refiner" and P.generation.vae:
            out["vae"] = build("vae", P.path(P.generation.vae), seed)
    return out
