"""GPU benchmark of the full study's models: the real architectures with random weights.

    python benchmarks/bench_gpu.py                 # on a GPU node: fp16, SDPA, real sizes (< 8 min on an H100)
    python benchmarks/bench_gpu.py --tiny          # anywhere: the same code at tiny sizes on the CPU
    python benchmarks/bench_gpu.py --only sdxl --json figures.json

Nothing is downloaded: every model is built from its real configuration (written below as the
hub's ``config.json`` says) and initialised at random, so speed and memory are the real ones and
the outputs are noise. Sections:

* ``sdxl``   -- SDXL-refiner img2img (UNet 2.26 B, fp16-fix VAE, OpenCLIP-bigG text encoder) at
  1024² through :func:`artsim_lib.stages.s05_generation.sdxl_images` with the full profile's generation
  params (30 steps, CFG 7.5, negative prompt), at ``strength`` 0.35 (moderate: 10 steps) and
  0.65 (radical: 19 steps), batch 1/2/4/8;
* ``blip2``  -- BLIP-2 OPT-2.7b captioning, batch 8/32, greedy, exactly ``max_new_tokens`` (30)
  new tokens (a random model never stops early, so this is the full profile's upper bound);
* ``clip``   -- CLIP ViT-B/32 image embeddings, batch 64;
* ``resnet`` -- ResNet-50 pooled features, batch 64 (and one training step, for stage 07).

For each it prints seconds per image, the peak GPU memory and, at the end, the projected
GPU-hours of the full study (items per stage x the best seconds per image). A section that
fails prints its error and the others go on; ``--budget`` stops starting new measurements
after that many seconds. ``--tiny`` (or ``ARTSIM_BENCH_TINY=1``) shrinks every model and image
and runs on the CPU in float32: the code path is the same, the figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# -- the full study's items (params/full.yaml at full scale) ------------------------------
ORIGINALS = 81_444  # Kaggle WikiArt after stage 02
DERIVATIVES = 2 * ORIGINALS  # moderate + radical
ALL_IMAGES = ORIGINALS + DERIVATIVES  # what stage 08 embeds (and stage 06 describes)
TEST_IMAGES = 24_433  # the 10 % test split: originals and their derivatives
RESNET_MEASURES_09 = 4  # resnet, resnet_finetuned, resnet_siamese, resnet_regression
FINETUNE_IMAGES = int(0.8 * ORIGINALS) * 10  # stage 07: the train split x 10 epochs (at most)

# -- the real configurations ----------------------------------------------------------------
# stabilityai/stable-diffusion-xl-refiner-1.0, unet/config.json
REFINER_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [6, 12, 12, 24],
    "block_out_channels": [384, 768, 1536, 1536],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 1280,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2560,  # 5 time ids x 256 + 1280
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}
# madebyollin/sdxl-vae-fp16-fix, config.json (the SDXL VAE's architecture)
SDXL_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.13025,
    "force_upcast": False,
}
# stabilityai/stable-diffusion-xl-refiner-1.0, text_encoder_2/config.json (OpenCLIP ViT-bigG text)
REFINER_TEXT_ENCODER_2 = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "hidden_act": "gelu",
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-05,
}
# stabilityai/stable-diffusion-xl-refiner-1.0, scheduler/scheduler_config.json
REFINER_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
# Salesforce/blip2-opt-2.7b, config.json
BLIP2_OPT_27B = {
    "vision_config": {
        "hidden_size": 1408,
        "intermediate_size": 6144,
        "num_hidden_layers": 39,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "qkv_bias": True,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
    },
    "qformer_config": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "cross_attention_frequency": 2,
        "encoder_hidden_size": 1408,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
    },
    "text_config": {
        "model_type": "opt",
        "vocab_size": 50272,
        "hidden_size": 2560,
        "ffn_dim": 10240,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "max_position_embeddings": 2048,
        "word_embed_proj_dim": 2560,
        "do_layer_norm_before": True,
        "bos_token_id": 2,
        "eos_token_id": 50118,
        "pad_token_id": 1,
        "tie_word_embeddings": True,
    },
    "num_query_tokens": 32,
    "image_token_index": 50265,
}
# openai/clip-vit-base-patch32, config.json
CLIP_VIT_B32 = {
    "text_config": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "projection_dim": 512,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "image_size": 224,
        "patch_size": 32,
        "projection_dim": 512,
    },
    "projection_dim": 512,
}
# microsoft/resnet-50, config.json
RESNET_50 = {
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck",
    "hidden_act": "relu",
    "num_labels": 1000,
}

# --tiny: the same architectures, shrunk (keys replaced in a deep copy of the real config)
TINY = {
    "unet": {
        "block_out_channels": [32, 32, 64, 64],
        "attention_head_dim": [1, 2, 2, 4],
        "layers_per_block": 1,
        "transformer_layers_per_block": 1,
        "cross_attention_dim": 32,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 5 * 8 + 32,
        "norm_num_groups": 8,
        "sample_size": 8,
    },
    "vae": {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64},
    "text_encoder_2": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": 32,
    },
    "blip2": {
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 28,
        },
        "qformer_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "encoder_hidden_size": 32,
            "cross_attention_frequency": 1,
        },
        "text_config": {
            "hidden_size": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "word_embed_proj_dim": 32,
            "max_position_embeddings": 128,
        },
        "num_query_tokens": 4,
    },
    "clip": {
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "projection_dim": 32,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 16,
            "projection_dim": 32,
        },
        "projection_dim": 32,
    },
    "resnet": {"embedding_size": 16, "hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_labels": 10},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def configs(tiny: bool = False) -> dict[str, dict]:
    """Every model's configuration: the real one, or shrunk with :data:`TINY`."""
    real = {
        "unet": REFINER_UNET,
        "vae": SDXL_VAE,
        "text_encoder_2": REFINER_TEXT_ENCODER_2,
        "blip2": BLIP2_OPT_27B,
        "clip": CLIP_VIT_B32,
        "resnet": RESNET_50,
    }
    return {k: _merge(v, TINY[k]) if tiny else copy.deepcopy(v) for k, v in real.items()}


# -- building the models ----------------------------------------------------------------------
def build_refiner(cfg: dict):
    """A ``StableDiffusionXLImg2ImgPipeline`` laid out as the refiner (no first text encoder,
    aesthetic-score time ids), random weights, on the current default device."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from artsim_lib.models import bpe

    tokenizer_2 = bpe.clip_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with '!'; 77 tokens
    text_cfg = CLIPTextConfig(
        **cfg["text_encoder_2"],
        bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id,
    )
    return StableDiffusionXLImg2ImgPipeline(
        vae=AutoencoderKL(**cfg["vae"]),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=CLIPTextModelWithProjection(text_cfg),
        tokenizer_2=tokenizer_2,
        unet=UNet2DConditionModel(**cfg["unet"]),
        scheduler=EulerDiscreteScheduler(**REFINER_SCHEDULER),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def build_blip2(cfg: dict):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    return Blip2ForConditionalGeneration(Blip2Config(**cfg))


def build_clip(cfg: dict):
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(**cfg))


def build_resnet(cfg: dict):
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(**cfg))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fmt_params(module: torch.nn.Module) -> str:
    """``2.26 B``, ``151 M``, ``35 k`` parameters."""
    n = n_params(module)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


# -- measuring ------------------------------------------------------------------------------------
class Bench:
    """Device, dtype, the time budget and the figures collected so far."""

    def __init__(self, device: torch.device, dtype: torch.dtype, budget_s: float, tiny: bool, repeats: int):
        self.device, self.dtype, self.tiny, self.repeats = device, dtype, tiny, repeats
        self.t_start, self.budget_s = time.perf_counter(), budget_s
        self.rows: list[dict] = []
        self.errors: list[str] = []

    def over_budget(self) -> bool:
        return time.perf_counter() - self.t_start > self.budget_s

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else float("nan")

    def measure(self, section: str, label: str, batch: int, fn, **extra) -> dict | None:
        """Time ``fn()`` (one warm call first when it is the first of its section), best of
        ``repeats``; record seconds per image and the peak memory. None when skipped or failed."""
        if self.over_budget():
            print(f"  {section:7s} {label:28s} batch {batch:2d}: skipped (past --budget {self.budget_s:.0f} s)")
            return None
        try:
            self.reset_peak()
            times = []
            for _ in range(self.repeats):
                self.sync()
                t0 = time.perf_counter()
                fn()
                self.sync()
                times.append(time.perf_counter() - t0)
            row = {
                "section": section,
                "label": label,
                "batch": batch,
                "seconds": min(times),
                "s_per_image": min(times) / batch,
                "peak_gb": self.peak_gb(),
                **extra,
            }
        except Exception as err:  # noqa: BLE001 - one failed measurement must not end the benchmark
            first = str(err).splitlines()[0][:200] if str(err) else ""
            msg = f"{section} {label} batch {batch}: {type(err).__name__}: {first}"
            print(f"  {msg}")
            self.errors.append(msg)
            row = None
        if row is None:  # out of the except block: its traceback no longer holds the tensors
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return None
        self.rows.append(row)
        print(
            f"  {section:7s} {label:28s} batch {batch:2d}: {row['s_per_image']:8.4f} s/image  "
            f"({row['seconds']:.3f} s a batch)  peak {row['peak_gb']:6.2f} GB"
        )
        return row

    def best(self, section: str, label: str) -> float | None:
        got = [r["s_per_image"] for r in self.rows if r["section"] == section and r["label"] == label]
        return min(got) if got else None


def _section(name: str, bench: Bench, fn) -> None:
    """Run one section; an error (building a model, out of memory, ...) is printed, not raised."""
    print(f"\n[{name}]")
    t0 = time.perf_counter()
    try:
        fn(bench)
    except Exception as err:  # noqa: BLE001
        msg = f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        print(f"  section failed: {msg}")
        traceback.print_exc(limit=3)
        bench.errors.append(msg)
    finally:
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"  ({time.perf_counter() - t0:.1f} s)")


def _build(bench: Bench, builder, cfg):
    """Build on the target device (random init there is fast), then cast to the bench's dtype."""
    with torch.device(bench.device):
        model = builder(cfg)
    model = model.to(bench.dtype).eval()
    return model


def section_sdxl(bench: Bench, batches, image_side: int) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0
    from PIL import Image

    from artsim_lib import config
    from artsim_lib.stages import s05_generation as generation

    cfg = configs(bench.tiny)
    g = config.load_params("full").generation  # steps 30, guidance 7.5, aesthetic scores, negative prompt
    t0 = time.perf_counter()
    with torch.device(bench.device):
        pipe = build_refiner(cfg)
    pipe = pipe.to(bench.device, bench.dtype)
    pipe.unet.set_attn_processor(AttnProcessor2_0())  # scaled_dot_product_attention (flash / mem-efficient)
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    pipe.set_progress_bar_config(disable=True)
    print(
        f"  refiner UNet {fmt_params(pipe.unet)} params, VAE {fmt_params(pipe.vae)}, "
        f"text encoder 2 {fmt_params(pipe.text_encoder_2)}; {image_side}² images, {bench.dtype}, "
        f"built in {time.perf_counter() - t0:.1f} s"
    )
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (image_side, image_side, 3), dtype=np.uint8)) for _ in range(max(batches))
    ]
    prompt = (
        "an oil painting of a harbour at dusk in the style of impressionism, loose brushwork, warm light, "
        "boats and reflections on the water"
    )

    def run(batch: int, strength: float):
        return generation.sdxl_images(pipe, images[:batch], [prompt] * batch, list(range(batch)), strength, g)

    run(1, g.strength["moderate"])  # warm-up: kernels, cuDNN autotuning, allocator
    for level in ("moderate", "radical"):
        strength = float(g.strength[level])
        steps = int(g.steps * strength)
        for b in batches:
            bench.measure("sdxl", f"{level} ({steps} steps)", b, lambda b=b: run(b, strength), level=level)


def section_blip2(bench: Bench, batches, max_new_tokens: int) -> None:
    cfg = configs(bench.tiny)["blip2"]
    t0 = time.perf_counter()
    model = _build(bench, build_blip2, cfg)
    side = cfg["vision_config"]["image_size"]
    print(
        f"  BLIP-2 {fmt_params(model)} params, {side}² input, {cfg['num_query_tokens']} queries, "
        f"{max_new_tokens} new tokens, built in {time.perf_counter() - t0:.1f} s"
    )
    gen = torch.Generator().manual_seed(0)

    def run(batch: int):
        pixels = torch.randn(batch, 3, side, side, generator=gen).to(bench.device, bench.dtype)
        with torch.inference_mode():
            return model.generate(
                pixel_values=pixels,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )

    run(min(batches))  # warm-up
    for b in batches:
        bench.measure("blip2", f"caption ({max_new_tokens} tokens)", b, lambda b=b: run(b))


def section_clip(bench: Bench, batches) -> None:
    cfg = configs(bench.tiny)["clip"]
    model = _build(bench, build_clip, cfg)
    side = cfg["vision_config"]["image_size"]
    print(f"  CLIP {fmt_params(model)} params, {side}² input")
    gen = torch.Generator().manual_seed(0)

    def run(batch: int):
        pixels = torch.randn(batch, 3, side, side, generator=gen).to(bench.device, bench.dtype)
        with torch.inference_mode():
            return model.get_image_features(pixel_values=pixels)

    run(min(batches))
    for b in batches:
        bench.measure("clip", "image embedding", b, lambda b=b: run(b))


def section_resnet(bench: Bench, batches, side: int) -> None:
    cfg = configs(bench.tiny)["resnet"]
    model = _build(bench, build_resnet, cfg)
    print(f"  ResNet-50 {fmt_params(model)} params, {side}² input")
    gen = torch.Generator().manual_seed(0)

    def embed(batch: int):
        pixels = torch.randn(batch, 3, side, side, generator=gen).to(bench.device, bench.dtype)
        with torch.inference_mode():
            return model.resnet(pixels).pooler_output

    train_model = None

    def train_step(batch: int):
        # Stage 07 trains in float32 weights with autocast (mixed_precision: true) on CUDA.
        nonlocal train_model
        if train_model is None:
            with torch.device(bench.device):
                train_model = build_resnet(cfg).train()
            train_model.opt = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
        pixels = torch.randn(batch, 3, side, side, generator=gen).to(bench.device)
        labels = torch.randint(0, cfg["num_labels"], (batch,), generator=gen).to(bench.device)
        with torch.autocast(
            bench.device.type,
            dtype=torch.float16 if bench.device.type == "cuda" else torch.bfloat16,
            enabled=bench.device.type == "cuda",
        ):
            loss = torch.nn.functional.cross_entropy(train_model(pixels).logits, labels)
        loss.backward()
        train_model.opt.step()
        train_model.opt.zero_grad(set_to_none=True)

    embed(min(batches))
    for b in batches:
        bench.measure("resnet", "pooled features", b, lambda b=b: embed(b))
    train_step(min(batches))
    bench.measure("resnet", "training step (stage 07)", max(batches), lambda: train_step(max(batches)))


# -- the projection --------------------------------------------------------------------------------
def projection(bench: Bench) -> list[dict]:
    """GPU-hours of the full study from the best measured seconds per image (None: not measured)."""

    def hours(section, label, items):
        s = bench.best(section, label)
        return None if s is None else s * items / 3600

    mod = next((r["label"] for r in bench.rows if r.get("level") == "moderate"), None)
    rad = next((r["label"] for r in bench.rows if r.get("level") == "radical"), None)
    cap = next((r["label"] for r in bench.rows if r["section"] == "blip2"), None)
    return [
        {"stage": "03 captioning", "items": ORIGINALS, "hours": hours("blip2", cap, ORIGINALS)},
        {"stage": "05 generation, moderate", "items": ORIGINALS, "hours": hours("sdxl", mod, ORIGINALS)},
        {"stage": "05 generation, radical", "items": ORIGINALS, "hours": hours("sdxl", rad, ORIGINALS)},
        {
            "stage": "07 fine-tuning (train steps)",
            "items": FINETUNE_IMAGES,
            "hours": hours("resnet", "training step (stage 07)", FINETUNE_IMAGES),
        },
        {"stage": "08 CLIP embeddings", "items": ALL_IMAGES, "hours": hours("clip", "image embedding", ALL_IMAGES)},
        {"stage": "08 ResNet features", "items": ALL_IMAGES, "hours": hours("resnet", "pooled features", ALL_IMAGES)},
        {
            "stage": "09 ResNet, four measures",
            "items": TEST_IMAGES * RESNET_MEASURES_09,
            "hours": hours("resnet", "pooled features", TEST_IMAGES * RESNET_MEASURES_09),
        },
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tiny",
        action="store_true",
        default=os.environ.get("ARTSIM_BENCH_TINY") == "1",
        help="tiny models and images on the CPU (a test of the code path; also ARTSIM_BENCH_TINY=1)",
    )
    ap.add_argument("--only", nargs="*", choices=["sdxl", "blip2", "clip", "resnet"], default=None)
    ap.add_argument("--budget", type=float, default=420.0, help="start no new measurement after this many seconds")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per measurement, the best counts (default 2 on a GPU, 1 with --tiny)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)

    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        sdxl_batches, sdxl_side, blip_batches, embed_batches, res_side = [1, 2], 64, [2], [4], 32
        max_new_tokens = 4
    else:
        if not torch.cuda.is_available():
            print("bench_gpu: no CUDA device (run it on a GPU node, or pass --tiny for the CPU code path)")
            return 2
        device, dtype = torch.device("cuda"), torch.float16
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # No cudnn.benchmark: it would autotune inside the first timed call of every new shape.
        sdxl_batches, sdxl_side, blip_batches, embed_batches, res_side = [1, 2, 4, 8], 1024, [8, 32], [64], 224
        from artsim_lib import config

        max_new_tokens = config.load_params("full").captioning.max_new_tokens
    torch.manual_seed(0)
    repeats = args.repeats or (1 if args.tiny else 2)
    bench = Bench(device, dtype, args.budget, args.tiny, max(1, repeats))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"bench_gpu: {name}, {dtype}, torch {torch.__version__}{', TINY sizes' if args.tiny else ''}")
    sections = {
        "sdxl": lambda b: section_sdxl(b, sdxl_batches, sdxl_side),
        "blip2": lambda b: section_blip2(b, blip_batches, max_new_tokens),
        "clip": lambda b: section_clip(b, embed_batches),
        "resnet": lambda b: section_resnet(b, embed_batches, res_side),
    }
    for key in args.only or list(sections):
        _section(key, bench, sections[key])

    proj = projection(bench)
    print("\nprojected GPU-hours of the full study (best measured s/image x items):")
    for p in proj:
        h = "not measured" if p["hours"] is None else f"{p['hours']:8.2f} h"
        print(f"  {p['stage']:30s} {p['items']:>9,} items  {h}")
    total = sum(p["hours"] for p in proj if p["hours"] is not None)
    print(
        f"  {'total (measured stages)':30s} {'':>9}        {total:8.2f} h"
        + ("   (TINY sizes: meaningless)" if args.tiny else "")
    )
    sdxl_h = sum(p["hours"] for p in proj if p["stage"].startswith("05") and p["hours"] is not None)
    if sdxl_h:
        print(f"  stage 05 at 32 shards: {sdxl_h / 32:.2f} h a shard")
    print(f"\nwall time {time.perf_counter() - bench.t_start:.0f} s; {len(bench.errors)} error(s)")
    for e in bench.errors:
        print(f"  error: {e}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": name,
                    "dtype": str(dtype),
                    "tiny": args.tiny,
                    "rows": bench.rows,
                    "projection": proj,
                    "errors": bench.errors,
                },
                indent=1,
                default=float,
            )
        )
    return 1 if bench.errors and not bench.rows else 0


if __name__ == "__main__":
    sys.exit(main())
