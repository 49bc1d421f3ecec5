"""The study's similarity measures behind one interface, so evaluation can put them side by side.

>>> m = load_measure("descriptor")            # works straight after installation: no model
>>> m.similarity("a.png", "b.png")            # doctest: +SKIP  raw, in [-1, 1]
>>> m.similarity01("a.png", "b.png")          # doctest: +SKIP  in [0, 1]

Built-in measures and their mapping to [0, 1]:

* ``descriptor`` -- stage 06's weighted descriptor similarity (``DescriptorParams.weights``);
  ``descriptor_fitted`` -- the same with the weights fitted by stage 06 (needs a run);
* ``colour``, ``texture``, ``edges``, ``shape`` -- one descriptor family;
  for all of these the raw value is already in [0, 1] and ``similarity01`` is the raw value;
* ``ssim`` -- SSIM of the grayscale thumbnails, raw in [-1, 1]; ``similarity01 = max(raw, 0)``.

Descriptor measures use the descriptor params of ``<run>/params.resolved.yaml`` when the run
has one, else the defaults. Trained measures (a siamese head, ResNet variants) register a
loader with :func:`register_measure`; they are usually :class:`EmbeddingMeasure` (raw: cosine of
embeddings in [-1, 1]; ``similarity01 = (raw + 1) / 2``), and any object with ``embed`` or with
``similarity``/``similarity01`` is adapted (:func:`as_measure`). The modules in
``PLUGIN_MODULES`` are imported on first use (and their ``register_measures()`` called, if any)
so that their measures are known.

``compare_main``/``matrix_main`` are ``artsim compare``/``artsim matrix``: bad input gives exit
status 2 and one line on stderr (``ARTSIM_DEBUG=1`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import config
from . import descriptor_similarity as dsim
from .descriptors import FAMILIES, ImageLike, ImageReadError  # noqa: F401 (API)
from .measures import (DescriptorMeasure, EmbeddingMeasure, Measure, MeasureError,  # noqa: F401 (API)
                       MeasureUnavailableError, PairwiseMeasure, as_measure, read_image, require_dir)

PLUGIN_MODULES = ("artsim_lib.siamese", "artsim_lib.finetune", "artsim_lib.resnet_siamese", "artsim_lib.sota")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_LOADERS: dict[str, Callable[[Path], "Measure"]] = {}
_plugins_loaded = False


# -- the registry -------------------------------------------------------------------
def register_measure(name: str, loader: Callable[[Path], Measure], replace: bool = False) -> None:
    """Make ``load_measure(name, run_dir)`` call ``loader(run_dir)`` (a Path, maybe missing).
    The loader returns a :class:`Measure` or an object :func:`as_measure` adapts; it raises
    :class:`MeasureUnavailableError` (see :func:`require_dir`) when the run lacks its model."""
    if name in _LOADERS and not replace:
        raise MeasureError(f"measure {name!r} is already registered (pass replace=True)")
    _LOADERS[name] = loader


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in PLUGIN_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the plugin exists but one of its imports is missing
                raise
            continue
        hook = getattr(mod, "register_measures", None)
        if callable(hook):  # a plugin may register on import or through this hook
            try:
                hook()
            except MeasureError:
                pass  # it had registered itself already


def available_measures() -> list[str]:
    """The names :func:`load_measure` knows, built-ins and registered plugins."""
    _load_plugins()
    return sorted(_LOADERS)


def resolve_run_dir(run_dir: str | os.PathLike | None) -> Path:
    """``run_dir`` (relative to the cwd), else ``$ARTSIM_RUN_DIR``, else the smoke run."""
    if run_dir is not None:
        return Path(run_dir).expanduser().resolve()
    try:
        return config.load_params("smoke").run_path
    except config.ParamsError:
        return Path("runs/smoke").resolve()


def load_measure(name: str, run_dir: str | os.PathLike | None = None) -> Measure:
    """The measure called ``name``; trained ones read their model from ``run_dir``."""
    if name not in _LOADERS:
        _load_plugins()
    if name not in _LOADERS:
        raise MeasureError(f"unknown measure {name!r} (known: {', '.join(available_measures())})")
    return as_measure(_LOADERS[name](resolve_run_dir(run_dir)))


def descriptor_params(run_dir: Path):
    """The descriptor params of a run (``params.resolved.yaml``), else the defaults."""
    import yaml

    resolved = Path(run_dir) / "params.resolved.yaml"
    if resolved.exists():
        data = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
        return config.validate(data, str(resolved)).descriptors
    return config.DescriptorParams()


def _descriptor_loader(family: str | None, name: str):
    return lambda run_dir: DescriptorMeasure(name, descriptor_params(run_dir), family)


def _fitted_loader(run_dir: Path) -> Measure:
    try:
        fitted = dsim.load_fitted_weights(run_dir)
    except FileNotFoundError as err:
        raise MeasureUnavailableError(f"measure 'descriptor_fitted': {err}") from None
    return DescriptorMeasure("descriptor_fitted", descriptor_params(run_dir), None, fitted["weights"])


register_measure("descriptor", _descriptor_loader(None, "descriptor"))
register_measure("descriptor_fitted", _fitted_loader)
for _family in FAMILIES:
    register_measure(_family, _descriptor_loader(_family, _family))


def _geometry_loader(run_dir: Path) -> Measure:
    """The content-free baseline, with the run's padding colour when it has params."""
    from .measures import GeometryMeasure

    resolved = Path(run_dir) / "params.resolved.yaml"
    pad = (0, 0, 0)
    if resolved.exists():
        import yaml
        pad = tuple(config.validate(yaml.safe_load(resolved.read_text(encoding="utf-8")) or {},
                                    str(resolved)).preprocess.pad_color)
    return GeometryMeasure("geometry", pad)


register_measure("geometry", _geometry_loader)


# -- matrices ---------------------------------------------------------------------------
def _as_measure(measure, run_dir=None) -> Measure:
    """A measure name, a Measure, or an object :func:`as_measure` adapts, as a Measure."""
    return load_measure(measure, run_dir) if isinstance(measure, str) else as_measure(measure)


def similarity_matrix(images_or_paths: Sequence[ImageLike], measure: Measure | str,
                      normalised: bool = True, run_dir=None) -> np.ndarray:
    """Pairwise similarities ``[N, N]`` of the images, in [0, 1] (``normalised``) or raw."""
    return _as_measure(measure, run_dir).matrix(list(images_or_paths), normalised)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MeasureError(f"{folder}: no such directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise MeasureError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    return files


def plot_matrix(table: pd.DataFrame, title: str):
    """A heatmap of a similarity table (values annotated when there are few images)."""
    import matplotlib.pyplot as plt

    n = len(table)
    side = min(14.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(table.to_numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), table.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(n), table.index, fontsize=7)
    if n <= 16:
        for (i, j), v in np.ndenumerate(table.to_numpy()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    fig.colorbar(im, ax=ax, fraction=0.046, label="similarity [0, 1]")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def write_matrix(folder: str | os.PathLike, measure: Measure | str, out_png: str | os.PathLike,
                 out_csv: str | os.PathLike, run_dir=None) -> pd.DataFrame:
    """The [0, 1] similarity of every pair of images in ``folder``: a CSV (file names as row
    and column labels) and a heatmap PNG, both written atomically. Returns the table."""
    import matplotlib.pyplot as plt

    from . import paths

    m = _as_measure(measure, run_dir)
    files = list_images(folder)
    names = [f.name for f in files]
    table = pd.DataFrame(m.matrix(files, normalised=True), index=names, columns=names)
    with paths.atomic_path(out_csv) as tmp:
        table.to_csv(tmp, float_format="%.6f")
    fig = plot_matrix(table, f"{m.name} similarity · {Path(folder).name}")
    with paths.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return table


# -- command lines -----------------------------------------------------------------------
class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise _UsageError(message)


def _run_cli(prog: str, build, body, argv) -> int:
    parser = build(_Parser(prog=prog))
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        return body(args)
    except SystemExit as stop:  # --help
        return int(stop.code or 0)
    except _UsageError as err:
        print(f"{prog}: error: {err} (see --help)", file=sys.stderr)
    except (ValueError, OSError) as err:  # ImageReadError, MeasureError, ParamsError, missing files
        if os.environ.get("ARTSIM_DEBUG"):
            raise
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def _load_for_cli(name: str, run_dir) -> Measure:
    try:
        return load_measure(name, run_dir)
    except FileNotFoundError as err:  # a plugin's own "no model" error: add the CLI's way out
        msg = str(err)
        raise MeasureUnavailableError(msg if "--run" in msg else f"{msg}; or pass --run DIR") from None


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--measure", default="descriptor",
                   help="a measure name (default: descriptor; built-in: descriptor, descriptor_fitted, "
                        f"{', '.join(FAMILIES)}; trained ones need --run)")
    p.add_argument("--run", metavar="DIR", help="run directory holding trained models and params "
                                                "(default: $ARTSIM_RUN_DIR or runs/smoke)")
    return p


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``artsim compare A B [--measure NAME] [--run DIR] [--families]``: print the raw and the
    [0, 1] similarity of two images. Exit status 2 with a one-line error on bad input."""
    def build(p):
        p.description = "Similarity of two images under one measure: raw and mapped to [0, 1]."
        p.add_argument("a", help="first image file")
        p.add_argument("b", help="second image file")
        p.add_argument("--families", action="store_true", help="also print each descriptor family")
        return _common(p)

    def body(args) -> int:
        for p in (args.a, args.b):
            read_image(p)  # fails early, naming the file, before any model is loaded
        m = _load_for_cli(args.measure, args.run)
        if isinstance(m, DescriptorMeasure):  # features once, for the total and the families
            fa, fb = m.features([args.a, args.b])
            raw = m.raw_from_features(fa, fb)
            s01 = m.to01(raw)
        else:
            raw, s01 = m.scores(args.a, args.b)
        print(f"measure  {m.name}\nraw      {raw:.6f}\n[0,1]    {s01:.6f}\nmapping  {m.mapping}")
        if args.families and isinstance(m, DescriptorMeasure):
            for family, value in m.family_scores(fa, fb).items():
                print(f"  {family:<8} {value:.6f}")
        return 0

    return _run_cli("artsim compare", build, body, argv)


def matrix_main(argv: Sequence[str] | None = None) -> int:
    """``artsim matrix DIR [--measure NAME] [--run DIR] [--png F] [--csv F]``: the [0, 1]
    similarity of every pair of images in a folder, as a heatmap PNG and a CSV."""
    def build(p):
        p.description = "Pairwise [0, 1] similarity of the images in a folder: heatmap PNG and CSV."
        p.add_argument("dir", help="folder of images (png, jpg, webp, bmp, tif)")
        p.add_argument("--png", help="heatmap file (default: ./<dir name>-<measure>.png)")
        p.add_argument("--csv", help="table file (default: ./<dir name>-<measure>.csv)")
        return _common(p)

    def body(args) -> int:
        stem = f"{Path(args.dir).resolve().name}-{args.measure}"
        png, csv = Path(args.png or f"{stem}.png"), Path(args.csv or f"{stem}.csv")
        list_images(args.dir)  # a bad folder fails before any model is loaded
        table = write_matrix(args.dir, _load_for_cli(args.measure, args.run), png, csv)
        if len(table) <= 12:
            print(table.round(3).to_string())
        print(f"{len(table)} images · measure {args.measure} · wrote {png} and {csv}")
        return 0

    return _run_cli("artsim matrix", build, body, argv)
