"""The models stages 07 and 08 train, on disk and as measures.

Each trained model's files are written and read here, so a format lives in one place:

* stage 07, ``<run>/finetune/best/``: a :class:`~artsim_lib.models.heads.CNNClassifier` as
  safetensors + its backbone spec + the image processor + ``finetune_params.json``
  (:func:`save_checkpoint`, :func:`load_classifier`, :func:`load_finetuned`);
* stage 08, ``<run>/siamese/clip-head-<split>/``: a CLIP siamese head (:func:`save_head`,
  :func:`load_head`, :func:`load_clip_siamese`);
* stage 08, ``<run>/siamese/<backbone>-<variant>/``: a CNN siamese (:func:`save_resnet_siamese`,
  :func:`load_resnet_siamese`).

:data:`LOADERS` is the static name -> loader table of the measures they give (the registry's share
of trained measures): ``clip``, ``clip_siamese``, ``resnet`` (pretrained, before fine-tuning),
``<backbone>_finetuned``, ``<backbone>_siamese`` and ``<backbone>_regression``. Each loader takes a
run directory and raises :class:`MeasureUnavailableError` when the run lacks its model. torch is
imported when a model is loaded, not with this module (``artsim compare --measure descriptor``
stays light).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

from artsim_lib import config
from artsim_lib.io import paths
from artsim_lib.measures.base import (
    EmbeddingMeasure,
    Measure,
    MeasureUnavailableError,
    PairHeadMeasure,
    trained_model_dir,
    unavailable_as_such,
)

# stage 07's checkpoint: the params and classes beside a CNNClassifier's weights and its backbone's spec
FINETUNE_INFO, CLASSIFIER_WEIGHTS, CLASSIFIER_SPEC = "finetune_params.json", "classifier.safetensors", "backbone.json"
# stage 08's CNN siamese
SIAMESE_CONFIG, SIAMESE_WEIGHTS, SIAMESE_BACKBONE = "siamese_config.json", "siamese.safetensors", "backbone_config.json"


# -- stage 07: the fine-tuned classifier ------------------------------------------------------------------


def finetuned_dir(run_dir) -> Path:
    """Stage 07's best checkpoint: ``run_dir`` itself when it is one, else ``<run_dir>/finetune/best``."""
    d = Path(run_dir)
    return d if (d / FINETUNE_INFO).exists() else d / "finetune" / "best"


def finetuned_info(run_dir) -> dict | None:
    """The JSON saved beside the best checkpoint (a run dir or the checkpoint dir), or None."""
    f = finetuned_dir(run_dir) / FINETUNE_INFO
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else None


def finetuned_backbone(run_dir) -> str | None:
    """The backbone kind stage 07 trained in ``run_dir`` (``resnet`` for a transformers checkpoint), or None."""
    info = finetuned_info(run_dir)
    return None if info is None else info.get("backbone", "resnet")


def save_checkpoint(model, processor, target: Path, info: dict) -> Path:
    """Model + processor and ``info`` as JSON into ``target``, atomically: a :class:`CNNClassifier`
    as safetensors + its backbone spec, a transformers model with ``save_pretrained``."""
    from safetensors.torch import save_file

    from artsim_lib import models
    from artsim_lib.models import training
    from artsim_lib.models.heads import CNNClassifier

    with training.quiet_hf_progress(), paths.atomic_dir(target) as tmp:
        if isinstance(model, CNNClassifier):
            state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / CLASSIFIER_WEIGHTS))
            spec = {**models.backbone_spec(model.backbone), "classes": model.classes}
            (tmp / CLASSIFIER_SPEC).write_text(json.dumps(spec), encoding="utf-8")
        else:
            model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / FINETUNE_INFO).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    return target


def mark_complete(best_dir: Path) -> None:
    """Set ``complete`` in the checkpoint's info: stage 07 finished with it."""
    f = Path(best_dir) / FINETUNE_INFO
    info = json.loads(f.read_text(encoding="utf-8"))
    paths.atomic_write_text(f, json.dumps({**info, "complete": True}, indent=1))


def load_classifier(directory, device="cpu"):
    """``(CNNClassifier, image processor)`` saved by :func:`save_checkpoint`, frozen, in eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    from artsim_lib import models
    from artsim_lib.models.heads import CNNClassifier

    d = Path(directory)
    spec = json.loads((d / CLASSIFIER_SPEC).read_text(encoding="utf-8"))
    model = CNNClassifier(models.backbone_from_spec(spec), spec["classes"])
    model.load_state_dict(load_file(str(d / CLASSIFIER_WEIGHTS)))
    return models.freeze(model.to(models.pick_device(device))), AutoImageProcessor.from_pretrained(d)


def load_finetuned(run_dir, device="cpu", dtype=None):
    """``(CNNClassifier, image processor)`` of stage 07, frozen, in eval mode (a checkpoint saved
    with ``save_pretrained`` loads as ResNetForImageClassification). ``run_dir`` is a run
    directory (its ``finetune/best``) or the checkpoint directory itself; ``dtype`` defaults to float32."""
    import torch

    from artsim_lib import models

    dtype = torch.float32 if dtype is None else dtype
    d = finetuned_dir(run_dir)
    if not (d / FINETUNE_INFO).exists():
        raise FileNotFoundError(f"{d}: no fine-tuned checkpoint (run stage 07, notebooks/07-finetune.ipynb)")
    if (d / CLASSIFIER_SPEC).exists():
        model, processor = load_classifier(d, device)
        return model.to(dtype), processor
    return models.load_resnet(str(d), device, dtype)


# -- stage 08: the CLIP siamese heads ----------------------------------------------------------------------


def split_name(share: float) -> str:
    """0.8 -> '80-20'."""
    return f"{round(share * 100)}-{100 - round(share * 100)}"


def clip_head_dir(run_dir, split: str) -> Path:
    """``<run>/siamese/clip-head-<split>`` (``split``: '80-20', ...)."""
    return Path(run_dir) / "siamese" / f"clip-head-{split}"


def save_head(model, cfg: dict, history, out_dir: str | Path) -> Path:
    """``head.safetensors`` (head + τ), ``config.json`` and ``history.csv``, written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    with paths.atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / "head.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1, default=str), encoding="utf-8")
        history.to_csv(tmp / "history.csv", index=False)
    return Path(out_dir)


def load_head(path: str | Path):
    """A saved head (a :class:`~artsim_lib.models.heads.Siamese`, in eval mode) and its config."""
    from safetensors.torch import load_file

    from artsim_lib.models.heads import siamese_from_config

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    model = siamese_from_config(cfg)
    model.load_state_dict(load_file(str(path / "head.safetensors")))
    return model.eval(), cfg


def load_clip_siamese(run_dir: str | Path, split: str | None = None):
    """The trained CLIP siamese of a run as a measure (``.similarity(a, b)``, ``.embed(images)``);
    ``split`` ('80-20', ...) defaults to the first of ``siamese.train_splits``."""
    from artsim_lib.measures import embeddings

    P, encoder = embeddings.run_encoder(run_dir)
    folder = clip_head_dir(run_dir, split or split_name(P.siamese.train_splits[0]))
    if not (folder / "head.safetensors").exists():
        raise FileNotFoundError(f"{folder}: no trained CLIP siamese head (run stage 08 first)")
    model, cfg = load_head(folder)
    if cfg.get("clip_key") not in (None, encoder.key):  # evaluation skips it and says why
        raise MeasureUnavailableError(
            f"{folder} was trained on CLIP {cfg['clip_key']}, but the run's CLIP is {encoder.key}: re-run stage 08"
        )
    return embeddings.ClipMeasure(
        encoder, model.head, "clip_siamese", Path(run_dir) / "embeddings" / encoder.key, P.siamese.embed_batch_size
    )


# -- stage 08: the CNN siamese ------------------------------------------------------------------------------


def siamese_dir(run_root, kind: str, variant: str) -> Path:
    """``<run>/siamese/<backbone kind>-<variant>``."""
    return Path(run_root) / "siamese" / f"{kind}-{variant}"


def measure_name(kind: str, variant: str) -> str:
    """``resnet_siamese``, ``resnet_regression``, ``effnet_lite0_siamese``, ..."""
    return f"{kind}_{'siamese' if variant == 'triplet' else 'regression'}"


def save_resnet_siamese(model, target: Path, info: dict) -> Path:
    """Weights (safetensors), the backbone's spec, the image processor and ``info``, atomically."""
    from safetensors.torch import save_file

    from artsim_lib import models

    with paths.atomic_dir(target) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / SIAMESE_WEIGHTS))
        (tmp / SIAMESE_BACKBONE).write_text(json.dumps(models.backbone_spec(model.backbone)), encoding="utf-8")
        info = {**info, "backbone": model.backbone.kind}
        (tmp / SIAMESE_CONFIG).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
        model.processor.save_pretrained(tmp)
    return target


def load_resnet_siamese(
    run_dir, variant: Literal["triplet", "regression"] = "triplet", device: str = "cpu", kind: str = "resnet"
):
    """The best saved siamese of ``variant`` on backbone ``kind``, frozen, in eval mode, with its image
    processor. ``run_dir`` is a run directory (its ``siamese/<kind>-<variant>``) or the model directory."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    from artsim_lib import models
    from artsim_lib.models.heads import ResNetSiamese

    d = Path(run_dir)
    d = d if (d / SIAMESE_CONFIG).exists() else siamese_dir(d, kind, variant)
    if not (d / SIAMESE_CONFIG).exists():
        raise FileNotFoundError(f"{d}: no {kind} siamese saved (run stage 08 first)")
    info = json.loads((d / SIAMESE_CONFIG).read_text(encoding="utf-8"))
    backbone = models.backbone_from_spec(json.loads((d / SIAMESE_BACKBONE).read_text(encoding="utf-8")))
    model = ResNetSiamese(
        backbone, info["hidden"], info["out_dim"], info["dropout"], info["variant"], info["tau"], info["learn_tau"]
    )
    model.load_state_dict(load_file(str(d / SIAMESE_WEIGHTS)))
    model.processor = AutoImageProcessor.from_pretrained(d)
    return models.freeze(model.to(models.pick_device(device)))


# -- the measures --------------------------------------------------------------------------------------------


def _cnn_measure(name: str, model, processor, batch_size: int) -> EmbeddingMeasure:
    """The cosine of a CNN's L2-normalised pooled features."""
    from artsim_lib.models.heads import resnet_embed

    return EmbeddingMeasure(
        name, lambda imgs: resnet_embed(model, processor, list(imgs)), batch_size, pass_sources=True
    )


def load_clip(run_dir) -> Measure:
    """'clip': the raw CLIP cosine of a run (its CLIP model and embedding cache)."""
    from artsim_lib.measures import embeddings

    return embeddings.load_clip_measure(run_dir)


def load_pretrained_resnet(run_dir) -> Measure:
    """'resnet': the cosine of pooled features of the run's ``models.resnet`` before fine-tuning,
    at ``finetune.image_size``."""
    import torch

    from artsim_lib import models
    from artsim_lib.models.image_batches import sized_processor

    P = config.read_run_params(run_dir)
    model, processor = models.load_resnet(P.model_ref("resnet", run_dir), models.pick_device(P.device), torch.float32)
    return _cnn_measure("resnet", model, sized_processor(processor, P.finetune.image_size), P.evaluation.batch_size)


def load_finetuned_measure(kind: str, run_dir) -> Measure:
    """'<kind>_finetuned': stage 07's checkpoint, only when stage 07 trained ``kind``, so that a
    measure's name always says what it ran on."""
    from artsim_lib import models

    name = f"{kind}_finetuned"
    P = config.read_run_params(run_dir)
    best = trained_model_dir(finetuned_dir(run_dir), name, "07")
    trained = finetuned_backbone(run_dir)
    if trained != kind:
        raise MeasureUnavailableError(
            f"measure {name!r}: stage 07 of {run_dir} fine-tuned {trained!r}, not {kind!r} "
            f"(use {trained}_finetuned, or set finetune.backbone={kind})"
        )
    model, processor = load_finetuned(best, models.pick_device(P.device))
    return _cnn_measure(name, model, processor, P.evaluation.batch_size)


def load_cnn_siamese_measure(kind: str, variant: str, run_dir) -> Measure:
    """'<kind>_siamese' (triplet: cosine of the projections) or '<kind>_regression' (the pair head's
    score in [0, 1]) of stage 08."""
    P = config.read_run_params(run_dir)
    name = measure_name(kind, variant)
    trained_model_dir(siamese_dir(run_dir, kind, variant), name, "08")
    model = load_resnet_siamese(run_dir, variant, P.device, kind)
    embed = lambda imgs: model.embed_images(list(imgs), P.evaluation.batch_size)  # noqa: E731  [N, out_dim]
    if variant == "triplet":
        return EmbeddingMeasure(name, embed, P.evaluation.batch_size, pass_sources=True)
    dev = next(model.parameters()).device
    return PairHeadMeasure(name, embed, lambda ea, eb: model.score(ea.to(dev), eb.to(dev)))


# The backbones are models.BACKBONE_KINDS and the variants models.heads.VARIANTS, written out so that
# this table is static and torch-free (tests/test_registry.py checks them against those).
LOADERS: dict[str, Callable[[Path], Measure]] = {
    name: unavailable_as_such(loader)
    for name, loader in {
        "clip": load_clip,
        "clip_siamese": load_clip_siamese,
        "resnet": load_pretrained_resnet,
        "resnet_finetuned": partial(load_finetuned_measure, "resnet"),
        "effnet_lite0_finetuned": partial(load_finetuned_measure, "effnet_lite0"),
        "resnet_siamese": partial(load_cnn_siamese_measure, "resnet", "triplet"),
        "resnet_regression": partial(load_cnn_siamese_measure, "resnet", "regression"),
        "effnet_lite0_siamese": partial(load_cnn_siamese_measure, "effnet_lite0", "triplet"),
        "effnet_lite0_regression": partial(load_cnn_siamese_measure, "effnet_lite0", "regression"),
    }.items()
}


def fitted_weights_path(run_root) -> Path:
    """Where stage 06 writes the fitted weights: ``<run>/descriptors/fitted_weights.json``."""
    return Path(run_root) / "descriptors" / "fitted_weights.json"


def load_fitted_weights(run_root) -> dict:
    """The JSON written by stage 06; FileNotFoundError names the file when it is missing."""
    target = fitted_weights_path(run_root)
    if not target.exists():
        raise FileNotFoundError(f"{target}: no fitted descriptor weights (run stage 06 first or pass --run DIR)")
    return json.loads(target.read_text(encoding="utf-8"))
