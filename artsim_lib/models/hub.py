"""Loading the study's models, offline, from a local directory or the Hugging Face cache.

Every loader takes a *ref* -- a checkpoint directory (the smoke profile's tiny models)
or a hub id already in the local HF cache (the full study) -- and returns the model in
eval mode with ``requires_grad`` off everywhere, with its preprocessing, like
``clip.load`` in openai/CLIP::

    model, processor = load_clip(P.model_ref("clip"), P.device, P.dtype)
    emb = clip_image_embeddings(model, processor, images)  # [B, D], L2-normalised

Nothing is ever downloaded: a hub id that is not cached raises
:class:`ModelNotAvailableError`, which says how to fetch it once (``hf download <id>``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelNotAvailableError(OSError):
    """A model that is neither a local directory nor in the local Hugging Face cache."""


def _looks_like_path(ref: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else is taken for a path."""
    return Path(ref).expanduser().is_absolute() or ref.startswith((".", "~")) or ref.count("/") > 1 or "\\" in ref


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _missing_hub_message(repo_id: str, detail: str = "") -> str:
    return (
        f"Model {repo_id!r} is not (fully) in the local Hugging Face cache ({_hub_cache()}) and artsim never "
        f"downloads. Download it once on a machine with network access:\n"
        f"    hf download {repo_id}\n"
        f"(the `hf` command comes with huggingface_hub; the cache is $HF_HOME/hub), then make that "
        f"cache visible here (copy it, or set HF_HOME to it) and run with HF_HUB_OFFLINE=1. "
        f"For a run without the real models use the smoke profile (models.build_tiny: true)."
        + (f"\n[{detail}]" if detail else "")
    )


def _missing_dir_message(path: Path) -> str:
    return (
        f"Model directory {path} does not exist (or holds no checkpoint). Set models.build_tiny: true "
        f"to build a tiny random checkpoint there (the smoke profile does), or point the models.* "
        f"parameter at a checkpoint directory or a hub id."
    )


def resolve_model_ref(ref: str | os.PathLike) -> str:
    """What ``from_pretrained`` should get for ``ref``: an existing directory, or a hub id
    that is in the local cache. Raises :class:`ModelNotAvailableError` otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    ref = os.fspath(ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not any(path.glob("*.json")):
            raise ModelNotAvailableError(_missing_dir_message(path))
        return str(path)
    if _looks_like_path(ref) or path.exists():
        raise ModelNotAvailableError(_missing_dir_message(path))
    try:
        snapshot_download(ref, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        raise ModelNotAvailableError(_missing_hub_message(ref)) from None
    return ref


@contextlib.contextmanager
def _loading(ref: str) -> Iterator[None]:
    """Turn a ``from_pretrained`` OSError (a partly cached model, say) into ModelNotAvailableError."""
    try:
        yield
    except ModelNotAvailableError:
        raise
    except OSError as err:
        if Path(ref).is_dir():
            raise ModelNotAvailableError(f"{ref}: incomplete checkpoint ({err})") from err
        raise ModelNotAvailableError(_missing_hub_message(ref, str(err).splitlines()[0])) from err


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``'auto'`` -> cuda when available, else cpu; ``'cuda'`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA GPU (use device: auto or cpu)")
    return dev


def pick_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """``'auto'`` -> float16 on CUDA, float32 elsewhere; names map to torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if pick_device(device).type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (known: auto, {', '.join(_DTYPES)})")
    return _DTYPES[dtype]


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns the module."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _prepare(ref, device, dtype, kind: str = "model") -> tuple[str, torch.device, torch.dtype]:
    from artsim_lib.io.worklog import record

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    record("load_model", kind=kind, ref=str(ref), device=dev.type, dtype=str(dt).removeprefix("torch."))
    return resolve_model_ref(ref), dev, dt


def load_clip(ref, device="cpu", dtype=torch.float32):
    """``(CLIPModel, CLIPProcessor)``, frozen, on ``device``."""
    from transformers import CLIPModel, CLIPProcessor

    ref, dev, dt = _prepare(ref, device, dtype, "clip")
    with _loading(ref):
        model = CLIPModel.from_pretrained(ref, dtype=dt)
        processor = CLIPProcessor.from_pretrained(ref)
    return freeze(model.to(dev)), processor


def check_blip2_processor(model, processor) -> None:
    """The processor must expand ``<image>`` into as many tokens as the model has queries."""
    want = model.config.num_query_tokens
    if processor.num_query_tokens is None:  # processor configs older than transformers 4.47
        processor.num_query_tokens = want
    if processor.num_query_tokens != want:
        raise ValueError(
            f"BLIP-2 processor has num_query_tokens={processor.num_query_tokens} but the model has "
            f"{want}: load the processor and the model from the same checkpoint"
        )


def load_blip2(ref, device="cpu", dtype=torch.float32):
    """``(Blip2ForConditionalGeneration, Blip2Processor)``, frozen, on ``device``."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    ref, dev, dt = _prepare(ref, device, dtype, "blip2")
    with _loading(ref):
        model = Blip2ForConditionalGeneration.from_pretrained(ref, dtype=dt)
        processor = Blip2Processor.from_pretrained(ref)
    check_blip2_processor(model, processor)
    return freeze(model.to(dev)), processor


def load_sdxl_refiner(ref, device="cpu", dtype=torch.float32, variant: str | None = None, vae: str | None = None):
    """A frozen ``StableDiffusionXLImg2ImgPipeline`` on ``device``.

    ``variant='fp16'`` loads the half-precision weight files (the full study);
    ``vae`` is an optional VAE ref (e.g. ``madebyollin/sdxl-vae-fp16-fix``, which does not
    overflow in float16) that replaces the pipeline's own.
    """
    from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline

    ref, dev, dt = _prepare(ref, device, dtype, "sdxl_refiner")
    kwargs = {"dtype": dt}
    if variant:
        kwargs["variant"] = variant
    if vae:
        vae_ref = resolve_model_ref(vae)
        with _loading(vae_ref):
            kwargs["vae"] = AutoencoderKL.from_pretrained(vae_ref, dtype=dt)
    with _loading(ref):
        pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(ref, **kwargs)
    pipe = pipe.to(dev)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            freeze(component)
    return pipe


def load_resnet(ref, device="cpu", dtype=torch.float32):
    """``(ResNetForImageClassification, image processor)``, frozen, on ``device``."""
    from transformers import AutoImageProcessor, ResNetForImageClassification

    ref, dev, dt = _prepare(ref, device, dtype, "resnet")
    with _loading(ref):
        model = ResNetForImageClassification.from_pretrained(ref, dtype=dt)
        processor = AutoImageProcessor.from_pretrained(ref)
    return freeze(model.to(dev)), processor


def _features(out) -> torch.Tensor:
    """transformers 5 returns an output object from ``get_*_features``; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.inference_mode()
def clip_image_embeddings(model, processor, images: Sequence) -> torch.Tensor:
    """L2-normalised CLIP image embeddings of PIL images, ``[B, D]`` float32 on the CPU."""
    inputs = processor(images=list(images), return_tensors="pt")
    pixels = inputs["pixel_values"].to(model.device, model.dtype)  # [B, 3, H, W]
    feats = _features(model.get_image_features(pixel_values=pixels))  # [B, D]
    return F.normalize(feats.float(), dim=-1).cpu()


@torch.inference_mode()
def clip_text_embeddings(model, processor, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised CLIP text embeddings, ``[B, D]`` float32 on the CPU (truncated at 77 tokens)."""
    inputs = processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}  # input_ids: [B, T<=77]
    feats = _features(model.get_text_features(**inputs))  # [B, D]
    return F.normalize(feats.float(), dim=-1).cpu()
