"""The measure classes behind :mod:`artsim_lib.measures.registry`: one interface for every similarity.

A :class:`Measure` turns images into features once (:meth:`Measure.features`) and compares two
features (:meth:`Measure.raw_from_features`, in [-1, 1]); :meth:`Measure.to01` maps that to
[0, 1]. :class:`DescriptorMeasure` wraps stage 06's families, :class:`EmbeddingMeasure` any
cosine-of-embeddings model, :class:`PairwiseMeasure` anything with ``similarity``/``similarity01``,
:class:`PairHeadMeasure` a learnt score of two embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from artsim_lib.core import descriptor_similarity as dsim
from artsim_lib.core import descriptors
from artsim_lib.core.descriptors import FAMILIES, ImageLike


class MeasureError(ValueError):
    """A measure that cannot be used as asked (unknown name, missing model, bad input)."""


class MeasureUnavailableError(MeasureError):
    """A measure whose model or fitted file is missing from the run directory."""


def unavailable_as_such(loader):
    """``loader(run_dir)`` with a missing model or file (any OSError: FileNotFoundError, and
    ``ModelNotAvailableError`` is one too) raised as :class:`MeasureUnavailableError`, so stage 09
    skips the measure and says why. The one wrapper every registered loader goes through."""

    def load(run_dir):
        try:
            return loader(run_dir)
        except OSError as err:
            raise MeasureUnavailableError(" ".join(str(err).split())) from None

    load.__name__ = getattr(loader, "__name__", "load")
    return load


def read_image(src: ImageLike):
    """An image (path, PIL image or array) as a PIL RGB image; :class:`ImageReadError` names a
    file that cannot be read."""
    return descriptors.as_rgb_image(src)


def trained_model_dir(path: str | os.PathLike, measure: str, stage: str = "08") -> Path:
    """``path`` when it is a folder, else :class:`MeasureUnavailableError` saying what to run."""
    path = Path(path)
    if not path.is_dir():
        raise MeasureUnavailableError(
            f"measure {measure!r}: no model directory {path} (run stage {stage} first or pass --run DIR)"
        )
    return path


class Measure:
    """A similarity of two images. Subclasses define :meth:`features` (one item per image)
    and :meth:`raw_from_features`; :meth:`to01` maps a raw value in [-1, 1] to [0, 1]."""

    name: str = "measure"
    mapping: str = "raw"  # how similarity01 follows from the raw value, in words
    # similarity01(a, a) == 1 for every image: true of a similarity of features (a cosine, a
    # histogram overlap), not of a learnt score of a pair (PairHeadMeasure)
    self_similarity_is_one: bool = True

    def features(self, images: Sequence[ImageLike]) -> list:
        raise NotImplementedError

    def raw_from_features(self, fa, fb) -> float:
        raise NotImplementedError

    def to01(self, raw: float) -> float:
        return float(raw)

    def similarity(self, img_a: ImageLike, img_b: ImageLike) -> float:
        """The raw similarity of two images, in [-1, 1]."""
        fa, fb = self.features([img_a, img_b])
        return float(self.raw_from_features(fa, fb))

    def similarity01(self, img_a: ImageLike, img_b: ImageLike) -> float:
        """The similarity mapped to [0, 1] (see :attr:`mapping`)."""
        return self.to01(self.similarity(img_a, img_b))

    def scores(self, img_a: ImageLike, img_b: ImageLike) -> tuple[float, float]:
        """``(raw, [0, 1])`` of two images, each image's features computed once."""
        fa, fb = self.features([img_a, img_b])
        raw = float(self.raw_from_features(fa, fb))
        return raw, self.to01(raw)

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        """An embedding per image ``[N, D]``, for measures that are a cosine of embeddings."""
        raise NotImplementedError(
            f"measure {self.name!r} compares features with its own rules; it has no embedding (use .features())"
        )

    def matrix(self, images: Sequence[ImageLike], normalised: bool = True) -> np.ndarray:
        """All pairwise similarities ``[N, N]``; each image's features are computed once."""
        feats = self.features(list(images))
        n = len(feats)
        out = np.eye(n)
        for i in range(n):
            for j in range(i, n):
                raw = self.raw_from_features(feats[i], feats[j])
                out[i, j] = out[j, i] = self.to01(raw) if normalised else raw
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.mapping}>"


class DescriptorMeasure(Measure):
    """A descriptor family (``colour``, ..., ``ssim``) or the weighted total (``family=None``)."""

    def __init__(self, name: str, cfg, family: str | None = None, weights: dict | None = None):
        if family is not None and family not in FAMILIES:
            raise MeasureError(f"unknown descriptor family {family!r} (known: {', '.join(FAMILIES)})")
        self.name, self.cfg, self.family = name, cfg, family
        self.weights = dsim.normalise_weights(weights if weights is not None else cfg.weights)
        self.mapping = (
            "similarity01 = max(raw, 0)" if family == "ssim" else "raw is already in [0, 1]; similarity01 = raw"
        )

    def features(self, images: Sequence[ImageLike]) -> list:
        images = list(images)
        if len(images) >= 8 and all(isinstance(i, (str, os.PathLike)) for i in images):
            return descriptors.extract_many(images, self.cfg, None, self.cfg.workers, self.name)[0]
        return [descriptors.extract(i, self.cfg) for i in images]

    def raw_from_features(self, fa, fb) -> float:
        if self.family == "ssim":
            return dsim.ssim(fa["ssim.gray"], fb["ssim.gray"])
        if self.family is not None:
            return dsim.family_similarity(fa, fb, self.family)
        return dsim.combine(self.family_scores(fa, fb), self.weights)

    def family_scores(self, fa, fb) -> dict[str, float]:
        """Every family's similarity in [0, 1] (what the weighted total combines)."""
        return dsim.similarities(fa, fb)

    def to01(self, raw: float) -> float:
        return float(min(1.0, max(0.0, raw)))


class EmbeddingMeasure(Measure):
    """A measure that is the cosine of two embeddings: ``embed_fn(list of PIL RGB images)``
    returns ``[N, D]`` (array or tensor). Raw: cosine ∈ [-1, 1]; similarity01 = (raw + 1) / 2.
    With ``pass_sources`` the list holds the images as given (paths stay paths)."""

    mapping = "similarity01 = (raw + 1) / 2"

    def __init__(self, name: str, embed_fn: Callable, batch_size: int = 32, pass_sources: bool = False):
        self.name, self.embed_fn, self.batch_size = name, embed_fn, batch_size
        self.pass_sources = pass_sources  # hand paths to embed_fn as they are (it reads them)

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        rows = []
        images = list(images)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = chunk if self.pass_sources else [read_image(i) for i in chunk]
            emb = self.embed_fn(batch)
            emb = emb.detach().float().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb, np.float64)
            rows.append(np.asarray(emb, np.float64))
        emb = np.concatenate(rows) if rows else np.zeros((0, 0))  # [N, D]
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.where(norms > 0, norms, 1.0)

    def features(self, images: Sequence[ImageLike]) -> list:
        return list(self.embed(images))

    def raw_from_features(self, fa, fb) -> float:
        return float(np.clip(np.dot(fa, fb), -1.0, 1.0))

    def to01(self, raw: float) -> float:
        return (float(raw) + 1.0) / 2.0

    def matrix(self, images: Sequence[ImageLike], normalised: bool = True) -> np.ndarray:
        emb = self.embed(images)
        raw = np.clip(emb @ emb.T, -1.0, 1.0)  # [N, N]
        return (raw + 1.0) / 2.0 if normalised else raw


class PairwiseMeasure(Measure):
    """Any object with ``similarity(a, b)`` and ``similarity01(a, b)`` as a :class:`Measure`
    (the matrix then takes one call per pair)."""

    def __init__(self, obj):
        self.obj, self.name = obj, getattr(obj, "name", type(obj).__name__)
        self.mapping = getattr(obj, "mapping", "the measure's own similarity01")

    def features(self, images: Sequence[ImageLike]) -> list:
        return [read_image(i) for i in images]

    def raw_from_features(self, fa, fb) -> float:
        return float(self.obj.similarity(fa, fb))

    def similarity01(self, img_a: ImageLike, img_b: ImageLike) -> float:
        return float(self.obj.similarity01(read_image(img_a), read_image(img_b)))

    def scores(self, img_a: ImageLike, img_b: ImageLike) -> tuple[float, float]:
        a, b = read_image(img_a), read_image(img_b)
        return float(self.obj.similarity(a, b)), float(self.obj.similarity01(a, b))

    def matrix(self, images: Sequence[ImageLike], normalised: bool = True) -> np.ndarray:
        fn = self.obj.similarity01 if normalised else self.obj.similarity
        feats = self.features(images)
        out = np.eye(len(feats))
        for i in range(len(feats)):
            for j in range(i, len(feats)):
                out[i, j] = out[j, i] = float(fn(feats[i], feats[j]))
        return out


class PairHeadMeasure(Measure):
    """A learnt score of two embeddings (the CNN regression siamese): ``embed_fn(images)`` ->
    ``[N, D]``, ``score_fn(ea [B, D], eb [B, D])`` -> ``[B]`` in [0, 1] (torch tensors)."""

    mapping = "the pair head's sigmoid score, already in [0, 1]"
    self_similarity_is_one = False  # a pair of equal images scores what training made it, not 1 by construction

    def __init__(self, name: str, embed_fn, score_fn, chunk: int = 65536):
        self.name, self.embed_fn, self.score_fn, self.chunk = name, embed_fn, score_fn, chunk

    def features(self, images) -> list:
        emb = self.embed_fn(list(images))
        return list(emb.detach().float().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb))

    def raw_pairs(self, fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
        """Scores of row-aligned embeddings ``[P, D]`` x ``[P, D]`` -> ``[P]``, in chunks."""
        import torch

        with torch.no_grad():
            out = [
                self.score_fn(
                    torch.from_numpy(np.ascontiguousarray(fa[i : i + self.chunk], np.float32)),
                    torch.from_numpy(np.ascontiguousarray(fb[i : i + self.chunk], np.float32)),
                )
                for i in range(0, len(fa), self.chunk)
            ]
        return np.concatenate([o.detach().float().cpu().numpy() for o in out]) if out else np.zeros(0)

    def raw_from_features(self, fa, fb) -> float:
        return float(self.raw_pairs(np.asarray(fa)[None], np.asarray(fb)[None])[0])

    def to01(self, raw: float) -> float:
        return float(min(1.0, max(0.0, raw)))


def as_measure(obj) -> Measure:
    """A :class:`Measure` for what a loader returned: a Measure as it is; an object with
    ``embed(images)`` (paths or PIL images -> ``[N, D]``) as the cosine :class:`EmbeddingMeasure`;
    one with ``similarity``/``similarity01`` only as a :class:`PairwiseMeasure`."""
    if isinstance(obj, Measure):
        return obj
    name = getattr(obj, "name", type(obj).__name__)
    if callable(getattr(obj, "embed", None)):
        return EmbeddingMeasure(name, obj.embed, pass_sources=True)
    if callable(getattr(obj, "similarity", None)) and callable(getattr(obj, "similarity01", None)):
        return PairwiseMeasure(obj)
    raise MeasureError(f"measure {name!r}: its loader returned {type(obj).__name__}, not a measure")


# -- provenance of a measure's weights (issue 11) ------------------------------------------------------
# What each row of stage 09 rests on: 'real-pretrained' (real weights, used as they are),
# 'tiny-random' (a tiny, randomly initialised stand-in: the smoke profile's CLIP/ResNet),
# 'rehearsal-random' (the rehearsal profile's full-size architectures with random weights),
# 'trained-here' (learnt in this run; 'on ...' says from what), or 'handcrafted' (no model).
HANDCRAFTED = ("ssim", "colour", "texture", "edges", "shape", "descriptor")


def _model_weights(P, kind: str) -> str:
    """'real-pretrained' or 'tiny-random' for the checkpoint ``models.<kind>`` of ``P``."""
    if kind == "effnet_lite0":
        return "real-pretrained"
    from artsim_lib.models import tiny_marker

    if getattr(P.models, "build_rehearsal", False):  # the rehearsal's full-size checkpoints, random weights
        return "rehearsal-random"
    ref = P.model_ref(kind)
    return "tiny-random" if (P.models.build_tiny or tiny_marker(ref) is not None) else "real-pretrained"


def measure_weights(name: str, P) -> str:
    """How the measure ``name`` of a run with params ``P`` got its weights (see above)."""
    if name in HANDCRAFTED:
        return "handcrafted"
    if name == "descriptor_fitted":
        return "trained-here (descriptor weights)"
    if name in ("clip", "resnet", "effnet_lite0"):
        return _model_weights(P, name)
    if name == "clip_siamese":
        return f"trained-here on {_model_weights(P, 'clip')} CLIP"
    if name == "geometry":
        return "content-free (no model)"
    if name in ("dinov2", "sscd"):  # built tiny and random by the smoke and rehearsal profiles
        return "tiny-random" if P.models.build_tiny or P.models.build_rehearsal else "real-pretrained"
    for kind, label in (("effnet_lite0", "EfficientNet-Lite0"), ("resnet", "ResNet")):
        if name.startswith(kind + "_"):
            return f"trained-here on {_model_weights(P, kind)} {label}"
    return "unknown"


# -- geometry: a content-free baseline -------------------------------------------------------------------
# It looks only at where the picture lies in the frame (the non-padding box) and the frame's aspect
# ratio, never at what is painted. What it scores is what geometry alone gives away: with letterboxed
# images a derivative keeps its original's bars, so it can retrieve well without seeing the painting;
# with images written without padding (resize_mode stretch) every box is the whole frame and it
# scores exactly chance.
def content_box_of(arr: np.ndarray, pad_color=(0, 0, 0), tol: int = 8) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends, of the pixels farther than ``tol`` from ``pad_color`` in
    an ``[H, W, 3]`` uint8 array; (0, 0, 0, 0) when every pixel is padding."""
    diff = np.abs(arr.astype(np.int16) - np.asarray(pad_color, np.int16)).max(-1) > tol  # [H, W]
    rows, cols = np.flatnonzero(diff.any(1)), np.flatnonzero(diff.any(0))
    if not len(rows):
        return 0, 0, 0, 0
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class GeometryMeasure(Measure):
    """Similarity of two images' geometry only: the frame's log aspect ratio and the content box
    (relative to the frame). Raw = 1 / (1 + L1 distance of those five numbers), in (0, 1]."""

    mapping = "raw is already in (0, 1]; similarity01 = raw"

    def __init__(self, name: str = "geometry", pad_color=(0, 0, 0), tol: int = 8):
        self.name, self.pad_color, self.tol = name, tuple(pad_color), tol

    def features(self, images: Sequence[ImageLike]) -> list:
        out = []
        for src in images:
            arr = np.asarray(read_image(src))  # [H, W, 3]
            h, w = arr.shape[:2]
            x0, y0, x1, y1 = content_box_of(arr, self.pad_color, self.tol)
            out.append(np.array([np.log(w / h), x0 / w, y0 / h, x1 / w, y1 / h]))
        return out

    def raw_from_features(self, fa, fb) -> float:
        return float(1.0 / (1.0 + np.abs(np.asarray(fa) - np.asarray(fb)).sum()))

    def to01(self, raw: float) -> float:
        return float(min(1.0, max(0.0, raw)))
