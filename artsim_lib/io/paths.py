"""Where things live: the project root, the run directory layout, and atomic writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # artsim_lib/ (this file is artsim_lib/io/paths.py)
SOURCE_ROOT = PACKAGE_DIR.parent  # the checkout holding artsim_lib/ (an editable install)


def project_root() -> Path:
    """The repository root: ``$ARTSIM_ROOT``, else the folder holding ``artsim_lib`` and ``params/``."""
    env = os.environ.get("ARTSIM_ROOT")
    if env:
        return Path(env).resolve()
    candidate = SOURCE_ROOT
    if (candidate / "params").is_dir():
        return candidate
    return Path.cwd().resolve()


def resolve(path: str | os.PathLike, base: Path | None = None) -> Path:
    """An absolute path: relative paths are taken from the project root (not the cwd,
    which papermill sets to ``notebooks/``)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base or project_root()) / p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the
    block succeeds, so a crash never leaves a half-written file behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` atomically; return the target path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_if_changed(target: str | os.PathLike, text: str) -> bool:
    """Atomically write ``text`` unless ``target`` already holds it (keeps the mtime, so
    Snakemake does not re-run what depends on it). Returns True when it wrote."""
    target = Path(target)
    if target.exists() and target.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(target, text)
    return True


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; swap it in only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class RunDir:
    """The layout of one run directory (``runs/<profile>/`` by default).

    Every stage writes under here; nothing outside it is generated except ``reports/``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def sub(self, *parts: str) -> Path:
        """A folder under the run directory, created on first use."""
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def params_file(self) -> Path:
        return self.root / "params.resolved.yaml"

    @property
    def provenance_file(self) -> Path:
        return self.root / "provenance.json"

    @property
    def raw_manifest(self) -> Path:
        return self.root / "manifest" / "raw.parquet"

    @property
    def manifest(self) -> Path:
        """The preprocessed manifest with the train/val/test split (written by stage 02)."""
        return self.root / "manifest" / "manifest.parquet"

    @property
    def stages_dir(self) -> Path:
        return self.root / "stages"


_META_KEY = b"artsim"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex): an image's content fingerprint."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes_fingerprinted(target: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``target`` atomically; return its SHA-256 (no second read of the file)."""
    import hashlib

    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_parquet(df, target: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``df`` to ``target`` atomically, with ``meta`` (JSON-able: typically the params
    that produced it) stored in the file so a later stage can tell whether it is stale."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta is not None:
        blob = json.dumps(meta, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: blob})
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return Path(target)


def parquet_meta(target: str | os.PathLike) -> dict | None:
    """The ``meta`` stored by :func:`write_parquet`, or None (no file, or none stored)."""
    import json

    import pyarrow.parquet as pq

    if not Path(target).exists():
        return None
    blob = (pq.read_schema(target).metadata or {}).get(_META_KEY)
    return json.loads(blob) if blob else None


def is_current(target: str | os.PathLike, meta: dict) -> bool:
    """True when ``target`` exists and was written with exactly ``meta``."""
    return parquet_meta(target) == json_roundtrip(meta)


def json_roundtrip(obj):
    """``obj`` as it reads back from JSON (tuples become lists and so on)."""
    import json

    return json.loads(json.dumps(obj, sort_keys=True, default=str))
