"""Loaders: one normalised manifest from the Kaggle WikiArt layout or ``huggan/wikiart``.

Every loader returns a DataFrame with :data:`MANIFEST_COLUMNS`, one row per image:

- ``id``: stable, unique, filesystem-safe, from the relative filename
  (``Cubism/anna-kovac_broken-still-life-1912.jpg`` -> ``cubism__anna-kovac_broken-still-life-1912``)
- ``path`` (absolute), ``filename`` (relative to the source root or image folder)
- ``style`` (the first style), ``styles`` (list of all styles), ``genre`` (subject genre; the
  Kaggle csv has none, so it is missing there), ``artist``, ``title``, ``year`` (``Int64``,
  from a trailing ``-YYYY`` in the name), ``subset``, ``width``, ``height``, ``phash``,
  ``genre_count`` (``Int64``), ``source`` (``kaggle`` or ``huggan``).

Text columns use the nullable ``string`` dtype: a missing value is ``pd.NA``, never ``""``.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import re
import warnings
from collections import Counter
from pathlib import Path, PurePosixPath

import imagehash
import pandas as pd
from PIL import Image
from tqdm import tqdm

from artsim_lib.io import paths
from artsim_lib.io.images import ImageReadError, open_image
from artsim_lib.io.synthart import COLUMNS as KAGGLE_COLUMNS

MANIFEST_COLUMNS = [
    "id",
    "path",
    "filename",
    "style",
    "styles",
    "genre",
    "artist",
    "title",
    "year",
    "subset",
    "width",
    "height",
    "phash",
    "genre_count",
    "source",
]
TEXT_COLUMNS = ["id", "path", "filename", "style", "genre", "artist", "title", "subset", "phash", "source"]
INT_COLUMNS = ["year", "width", "height", "genre_count"]
_YEAR = re.compile(r"-(\d{4})$")
_BARE_STYLE = re.compile(r"[\w\- ]+")
_MAGIC = {b"\xff\xd8\xff": ".jpg", b"\x89PN": ".png"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DECISION_COLUMNS = ["filename", "issue", "action"]


def _cell(value) -> str | None:
    """A csv cell as a stripped string, or None when empty/NaN."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):  # None, NaN, NA
        return None
    text = str(value).strip()
    return text or None


def parse_styles(cell) -> list[str] | None:
    """``"['Cubism', 'Expressionism']"`` -> ``['Cubism', 'Expressionism']``; a bare name
    ``Cubism`` -> ``['Cubism']``; empty or malformed -> None (never raises)."""
    text = _cell(cell)
    if text is None or len(text) > 2000:
        return None
    if not text.startswith(("[", "(")):
        return [text] if _BARE_STYLE.fullmatch(text) else None
    try:
        value = ast.literal_eval(text)  # literal_eval only: the csv is data, never code
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    return None


def _slug_id(filename: str) -> str:
    parts = PurePosixPath(filename.replace("\\", "/")).with_suffix("").parts
    slugs = (re.sub(r"[^a-z0-9._-]+", "_", p.lower()).strip("._") for p in parts)
    return "__".join(s for s in slugs if s) or "image"


def make_ids(filenames: list[str]) -> list[str]:
    """Unique, filesystem-safe ids from relative filenames. Names that slug alike get a short
    hash of the exact filename (stable whatever the row order); repeated filenames a counter."""
    ids = [_slug_id(f) for f in filenames]
    clashes, repeats = Counter(ids), Counter(filenames)
    seen: Counter = Counter()
    out = []
    for f, i in zip(filenames, ids):
        if clashes[i] > repeats[f]:  # different names slug alike
            i = f"{i}-{hashlib.sha1(f.encode()).hexdigest()[:8]}"
        seen[i] += 1
        out.append(i if seen[i] == 1 else f"{i}-{seen[i]}")
    return out


def year_of(filename: str) -> int | None:
    """The year from a trailing ``-YYYY`` of the file's stem (``..._title-1912.jpg``), else None."""
    m = _YEAR.search(PurePosixPath(filename).stem)
    return int(m.group(1)) if m and 1000 <= int(m.group(1)) <= 2100 else None


def _title_of(filename: str) -> str | None:
    stem = PurePosixPath(filename).stem
    return _cell(_YEAR.sub("", stem.split("_", 1)[-1]))


def _ints(values) -> pd.Series:
    """Whole numbers as nullable Int64; empty, non-numeric or fractional cells -> NA."""
    nums = pd.to_numeric(pd.Series(list(values), dtype=object).map(_cell), errors="coerce")
    return nums.where(nums == nums.round()).astype("Int64")


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    """Column order and dtypes shared by every source."""
    for c in TEXT_COLUMNS:
        df[c] = pd.Series([_cell(v) for v in df[c]], index=df.index, dtype="string")
    for c in INT_COLUMNS:
        df[c] = _ints(df[c]).set_axis(df.index)
    df["styles"] = pd.Series([list(s) if s is not None else None for s in df["styles"]], index=df.index, dtype=object)
    return df[MANIFEST_COLUMNS].reset_index(drop=True)


def read_classes_csv(csv: Path) -> pd.DataFrame:
    """``classes.csv`` as strings (``""`` for empty), with a clear error naming the file."""
    if not csv.exists():
        raise FileNotFoundError(
            f"{csv}: not found (expected the Kaggle WikiArt layout: <root>/<Style>/<file>.jpg and <root>/classes.csv)"
        )
    try:
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")  # -sig: tolerate a BOM
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{csv}: not a readable csv ({err})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in KAGGLE_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{csv}: missing column(s) {', '.join(missing)} (has: {', '.join(raw.columns)})")
    return raw


def load_kaggle(root: str | os.PathLike) -> pd.DataFrame:
    """The manifest of a Kaggle-layout folder (the real WikiArt download or SynthArt)."""
    root = Path(root).expanduser().resolve()
    raw = read_classes_csv(root / "classes.csv")
    empty = raw["filename"].str.strip().eq("")
    if empty.any():  # a row that names no file cannot be used by any stage
        warnings.warn(f"{root / 'classes.csv'}: {int(empty.sum())} row(s) without a filename dropped", stacklevel=2)
        raw = raw[~empty]
    files = [f.strip().replace("\\", "/") for f in raw["filename"]]
    repeated = pd.Series(files, index=raw.index).duplicated(keep="first")
    if repeated.any():  # one file, one row: the same image under two artists would leak across splits
        warnings.warn(
            f"{root / 'classes.csv'}: {int(repeated.sum())} repeated filename row(s) dropped "
            "(the first row of each file is kept; see loaders.kaggle_decisions)",
            stacklevel=2,
        )
        raw = raw[~repeated.to_numpy()]
        files = [f for f, r in zip(files, repeated) if not r]
    styles = [parse_styles(g) for g in raw["genre"]]
    counts = _ints(raw["genre_count"])
    df = pd.DataFrame(
        {
            "id": make_ids(files),
            "path": [str(root / f) for f in files],
            "filename": files,
            "style": [s[0] if s else None for s in styles],
            "styles": pd.Series(styles, dtype=object),
            "genre": None,
            "artist": list(raw["artist"]),
            "title": [_cell(d) or _title_of(f) for d, f in zip(raw["description"], files)],
            "year": [year_of(f) for f in files],
            "subset": list(raw["subset"]),
            "width": list(raw["width"]),
            "height": list(raw["height"]),
            "phash": list(raw["phash"]),
            # Where the count is missing, the parsed list says how many styles there are.
            "genre_count": [c if pd.notna(c) else (len(s) if s else None) for c, s in zip(counts, styles)],
            "source": "kaggle",
        }
    )
    return _finish(df)


def kaggle_decisions(root: str | os.PathLike) -> pd.DataFrame:
    """What :func:`load_kaggle` decided about the folder, one row per file (``filename``,
    ``issue``, ``action``): images on disk that ``classes.csv`` does not list (ignored) and
    filenames listed more than once (the first row kept, the others dropped)."""
    root = Path(root).expanduser().resolve()
    raw = read_classes_csv(root / "classes.csv")
    files = pd.Series([f.strip().replace("\\", "/") for f in raw["filename"]])
    rows = []
    first_line: dict[str, int] = {}
    for i, (f, artist) in enumerate(zip(files, raw["artist"])):
        line = i + 2  # the header is line 1
        if not f:
            continue
        if f in first_line:
            rows.append(
                {
                    "filename": f,
                    "issue": f"listed again in classes.csv (line {line}, artist "
                    f"{artist or '<missing>'!s}; first on line {first_line[f]})",
                    "action": f"line {line} dropped, line {first_line[f]} kept",
                }
            )
        else:
            first_line[f] = line
    listed = set(first_line)
    on_disk = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
    )
    for f in on_disk:
        if f not in listed:
            rows.append({"filename": f, "issue": "on disk but not in classes.csv", "action": "ignored"})
    return pd.DataFrame(rows, columns=DECISION_COLUMNS)


def source_decisions(P) -> pd.DataFrame:
    """:func:`kaggle_decisions` for the params' data source (empty for ``huggan``, or when
    there is no ``classes.csv``: a manifest made some other way)."""
    if P.data.source not in ("kaggle", "synthart") or not (P.path(P.data.root) / "classes.csv").is_file():
        return pd.DataFrame(columns=DECISION_COLUMNS)
    return kaggle_decisions(P.path(P.data.root))


# -- huggan/wikiart (Hugging Face datasets) ------------------------------------------------
def _offline_help(dataset: str, split: str) -> str:
    return (
        f"{dataset!r} (split {split!r}) is not in the local Hugging Face cache and the Hub cannot "
        f"be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}). Download it once on "
        f"a machine with network:\n  hf download --repo-type dataset {dataset}\n"
        f"  (older clients: huggingface-cli download --repo-type dataset {dataset})\n"
        "then set HF_HOME to that cache here; or download with --local-dir DIR and set "
        "data.hf_dataset=DIR (a folder of parquet files or a save_to_disk folder also works)."
    )


def open_hf_dataset(dataset: str | os.PathLike, split: str = "train"):
    """A ``datasets.Dataset`` from a hub id, a local parquet folder or a ``save_to_disk`` folder."""
    import datasets  # slow to import: only when this source is used

    local = Path(dataset).expanduser()
    if local.is_dir():
        if (local / "state.json").exists() or (local / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"{local}: no split {split!r} (has: {', '.join(ds)})")
                ds = ds[split]
            return ds
        return datasets.load_dataset(str(local), split=split)
    if str(dataset).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{local}: no such dataset folder")
    try:
        return datasets.load_dataset(str(dataset), split=split)
    except (ConnectionError, FileNotFoundError) as err:
        raise RuntimeError(_offline_help(str(dataset), split)) from err


def _labeler(ds, column: str):
    """value -> name for one column: ClassLabel ints via ``int2str``; 'Unknown ...' -> None."""
    from datasets import ClassLabel

    feature = ds.features.get(column)

    def name(value) -> str | None:
        if value is None or feature is None:
            return None
        if isinstance(feature, ClassLabel):
            value = feature.int2str(int(value)) if int(value) >= 0 else None
        text = _cell(value)
        # huggan labels missing values as 'Unknown Artist' / 'Unknown Genre': they are missing.
        return None if text is None or text.lower().startswith("unknown") else text

    return name


def dataset_key(dataset: str | os.PathLike) -> str:
    """A folder name per dataset, so two datasets never share (and reuse) image files."""
    local = Path(dataset).expanduser()
    if local.is_dir():
        local = local.resolve()
        return f"{_slug(local.name, 'local')}-{hashlib.sha1(str(local).encode()).hexdigest()[:8]}"
    return str(dataset).replace("/", "--")


def _slug(text: str | None, default: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") if text else default


def _write_image(image: dict, target_stem: Path) -> Path:
    """Write the encoded image once (the original bytes when JPEG/PNG); return its path."""
    data = image.get("bytes") or Path(image["path"]).read_bytes()
    ext = _MAGIC.get(data[:3])
    target = target_stem.with_suffix(ext or ".png")
    if target.exists():
        return target
    with paths.atomic_path(target) as tmp:
        if ext:
            tmp.write_bytes(data)
        else:  # another format (webp, tiff, ...): store it as PNG so every stage can read it
            with Image.open(io.BytesIO(data)) as im:
                im.save(tmp, "PNG")
    return target


def _measure(path: Path) -> tuple[int | None, int | None, str | None]:
    try:
        with open_image(path) as im:
            return im.width, im.height, str(imagehash.phash(im))
    except (ImageReadError, OSError, SyntaxError, ValueError):  # kept: stage 02 reports them
        return None, None, None


def load_huggan(dataset: str | os.PathLike, split: str = "train", *, image_dir: str | os.PathLike) -> pd.DataFrame:
    """The manifest of ``huggan/wikiart`` (hub id or local folder). Images are written once, to
    ``image_dir/<dataset key>/<Style>/<artist>_<split>-<index>.jpg``, so later stages read
    files; ``filename`` (and so ``id``) is relative to the dataset key folder."""
    from datasets import Image as HFImage

    ds = open_hf_dataset(dataset, split)
    if "image" not in ds.features:
        raise ValueError(f"{dataset}: no 'image' column (has: {', '.join(ds.features)})")
    labels = {c: _labeler(ds, c) for c in ("artist", "genre", "style")}
    ds = ds.cast_column("image", HFImage(decode=False))  # keep the original bytes: no re-encoding
    base = Path(image_dir).expanduser().resolve() / dataset_key(dataset)
    rows = []
    for i, row in enumerate(tqdm(ds, total=len(ds), desc=f"huggan {split} images")):
        names = {c: f(row.get(c)) for c, f in labels.items()}
        name = f"{_slug(names['artist'], 'unknown')}_{_slug(split, 'split')}-{i:06d}"
        stem = base / _slug(names["style"], "Unknown") / name
        path = _write_image(row["image"], stem)
        width, height, phash = _measure(path)
        filename = path.relative_to(base).as_posix()
        rows.append(
            {
                "path": str(path),
                "filename": filename,
                "style": names["style"],
                "styles": [names["style"]] if names["style"] else None,
                "genre": names["genre"],
                "artist": names["artist"],
                "title": None,
                "year": None,
                "subset": split,
                "width": width,
                "height": height,
                "phash": phash,
                "genre_count": 1 if names["style"] else None,
                "source": "huggan",
            }
        )
    df = pd.DataFrame(rows, columns=[c for c in MANIFEST_COLUMNS if c != "id"])
    df.insert(0, "id", make_ids(list(df["filename"])))
    return _finish(df)
