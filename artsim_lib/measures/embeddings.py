"""CLIP image embeddings, computed once per image and cached by image content and model identity.

CLIP is frozen in the study, so an embedding is computed once and read back by every epoch,
split and measure. The cache lives in the run directory::

    embeddings/<model-key>/model.json                      what the key stands for
    embeddings/<model-key>/shard-III-of-NNN/part-*.parquet hash, embedding, seconds
    embeddings/<model-key>/images.parquet                  id, path, hash, embedding (merged)

``<model-key>`` is the checkpoint's name and a hash of its configs and weights (another model: a
cold cache); rows are keyed by the SHA-256 of the image file (an edited image misses). The key is
what the embeddings are *of*, not where they were made: the dtype a job ran in (float16 on GPU
nodes, float32 on CPU ones) is recorded in each row's ``dtype`` and a reader casts to float32,
so a CPU job reads a GPU job's cache instead of recomputing it. Fingerprints come from the
manifests (stage 02 and 05 record each image's SHA-256 when they write it); only an image
without one is read to hash it.
Extraction is sharded and resumable like stages 03 and 05: a shard takes the images whose *id*
hashes to it and appends each batch as an atomic part. Every forward pass sees exactly
``batch_size`` images (the last batch is padded), so an embedding does not depend on its batch
neighbours and a sharded or resumed run is bit-identical to a plain one.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from artsim_lib import config, models
from artsim_lib.io import paths, shards
from artsim_lib.io.images import open_rgb, to_rgb
from artsim_lib.io.workers import worker_count
from artsim_lib.io.worklog import record

_SHA256 = re.compile(r"[0-9a-f]{64}")
_WEIGHT_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: weights are large
_CONFIG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")


# -- content hashes and model identity -------------------------------------------------------------


file_hash = paths.file_sha256  # SHA-256 of a file's bytes (hex)


def hash_files(paths_: Sequence[str], workers: int = 1) -> list[str]:
    """:func:`file_hash` of every path, in order (threads: hashlib releases the GIL)."""
    if workers <= 1 or len(paths_) < 16:
        return [file_hash(p) for p in paths_]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_hash, paths_))


def _weight_hash(path: Path) -> str:
    """A weight file's SHA-256; a Hugging Face cache blob is named by it, so it is not re-read."""
    target = path.resolve()
    if path.is_symlink() and _SHA256.fullmatch(target.name):
        return target.name
    key = (str(target), target.stat().st_size, target.stat().st_mtime_ns)
    if key not in _WEIGHT_HASHES:
        _WEIGHT_HASHES[key] = file_hash(target)
    return _WEIGHT_HASHES[key]


def model_dir(ref: str) -> Path:
    """The local folder of a checkpoint: ``ref`` itself, or its snapshot in the HF cache."""
    from huggingface_hub import snapshot_download

    ref = models.resolve_model_ref(ref)
    return Path(ref) if Path(ref).is_dir() else Path(snapshot_download(ref, local_files_only=True))


def model_identity(ref: str, dtype: torch.dtype | str = torch.float32) -> dict:
    """The checkpoint's name, the hashes of its config, preprocessing config and weight files
    (what the embeddings depend on), and, as provenance, its ref and the dtype it runs in."""
    folder = model_dir(ref)  # weights: model.safetensors or its shards (not fp16 variants), else *.bin
    weights = sorted(p for p in folder.glob("*.safetensors") if p.name.count(".") == 1) or sorted(folder.glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"{folder}: no *.safetensors or *.bin weight file")
    files = {p.name: file_hash(p) for p in (folder / n for n in _CONFIG_FILES) if p.exists()}
    files.update({p.name: _weight_hash(p) for p in weights})
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(ref).rstrip("/")).name) or "model"
    return {"name": name, "ref": str(ref), "dtype": str(dtype).removeprefix("torch."), "files": files}


KEY_FIELDS = ("name", "files")  # not the ref's folder, not the dtype: see the module docstring


def model_key(identity: dict) -> str:
    """``<name>-<12 hex>``: the cache folder of one model identity."""
    blob = json.dumps({k: identity[k] for k in KEY_FIELDS}, sort_keys=True)
    return f"{identity['name']}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


# -- the encoder -----------------------------------------------------------------------------------


@dataclass
class Encoder:
    """A frozen CLIP model with its processor and identity."""

    model: torch.nn.Module
    processor: object
    identity: dict

    @property
    def key(self) -> str:
        return model_key(self.identity)

    @property
    def dim(self) -> int:  # the embedding size, from the model config (512 for ViT-B/32)
        return int(self.model.config.projection_dim)


def open_encoder(ref: str, device="cpu", dtype="float32") -> Encoder:
    """CLIP from ``ref`` (a folder or a cached hub id), frozen, on ``device``."""
    device = models.pick_device(device)
    dtype = models.pick_dtype(dtype, device)
    model, processor = models.load_clip(ref, device, dtype)
    return Encoder(model, processor, model_identity(ref, dtype))


def load_encoder(P) -> Encoder:
    """CLIP for params ``P`` (building the tiny checkpoint on smoke), frozen, on ``P.device``."""
    models.ensure_tiny_checkpoints(P, ["clip"])
    return open_encoder(P.model_ref("clip"), P.device, P.dtype)


class ClipEncoder(torch.nn.Module):
    """The frozen CLIP image tower as a module: pixels -> L2-normalised embeddings, no gradient."""

    def __init__(self, clip_model: torch.nn.Module):
        super().__init__()
        self.clip = models.freeze(clip_model)

    def train(self, mode: bool = True):  # CLIP stays in eval mode inside a model being trained
        return super().train(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return image_features(self.clip, pixels)


def image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised CLIP image embeddings, float32 on the model's device. # [B, D]"""
    out = model.get_image_features(pixel_values=pixels.to(model.device, model.dtype))
    return F.normalize((out if isinstance(out, torch.Tensor) else out.pooler_output).float(), dim=-1)


def clip_pixels(img: Image.Image, proc) -> np.ndarray:
    """What ``proc(images=img)`` gives for a CLIP processor (short side resized with its resampling
    filter, centre crop, rescale, normalise), done on the PIL image directly: the same numbers to
    ~1e-6 for about 30% less CPU. Any other processor is simply called. # [3, H, W] float32"""
    short, ch, cw = getattr(proc.size, "shortest_edge", None), proc.crop_size.height, proc.crop_size.width
    if not (short and ch and proc.do_resize and proc.do_center_crop and proc.do_rescale and proc.do_normalize):
        return proc(images=img, return_tensors="np")["pixel_values"][0]
    w, h = img.size
    w, h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    a = np.asarray(img.resize((w, h), resample=proc.resample), np.float64)[(h - ch) // 2 :, (w - cw) // 2 :][:ch, :cw]
    a = (a * proc.rescale_factor).astype(np.float32)
    return ((a - np.asarray(proc.image_mean, np.float32)) / np.asarray(proc.image_std, np.float32)).transpose(2, 0, 1)


class _Images(torch.utils.data.Dataset):
    """Image files (or PIL images) as CLIP pixel tensors, decoded and preprocessed as the
    checkpoint's own processor does."""

    def __init__(self, images: Sequence, image_processor):
        self.images, self.proc = list(images), image_processor

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        img = to_rgb(x) if isinstance(x, Image.Image) else open_rgb(x)  # the study's one reader
        return torch.from_numpy(np.ascontiguousarray(clip_pixels(img, self.proc)))  # [3, H, W]


@torch.inference_mode()
def embed_pixels(model, pixels: torch.Tensor, batch_size: int) -> np.ndarray:
    """L2-normalised embeddings of ``pixels`` [B<=batch_size, 3, H, W] -> [B, D] float32. The batch is
    padded to ``batch_size``: with one shape the kernels reduce in one order, whatever the neighbours."""
    n = len(pixels)
    if n < batch_size:
        pixels = torch.cat([pixels, pixels[-1:].expand(batch_size - n, *pixels.shape[1:])])
    return image_features(model, pixels)[:n].cpu().numpy()  # [n, D]


def _batches(dataset: _Images, batch_size: int, workers: int, device: torch.device):
    """Pixel batches [b, 3, H, W]. On a GPU, DataLoader worker processes decode while the GPU
    computes. On the CPU the forward already keeps every core busy (worker processes would only
    contend with it), so each batch is decoded by a pool of threads *between* forward passes:
    PIL and NumPy release the GIL, and nothing competes with the forward's threads."""
    if device.type != "cpu" and workers > 0:
        yield from torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, prefetch_factor=4)
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(dataset), batch_size):
            yield torch.stack(list(pool.map(dataset.__getitem__, range(start, min(start + batch_size, len(dataset))))))


def encode(encoder: Encoder, images: Sequence, batch_size: int = 32, workers: int = 0, progress: bool = True):
    """Yield ``(index slice, embeddings [b, D])`` batch by batch for image paths or PIL images."""
    dataset = _Images(images, encoder.processor.image_processor)
    batches = _batches(dataset, batch_size, workers if len(images) > batch_size else 0, encoder.model.device)
    start = 0
    for pixels in tqdm(
        batches,
        desc="CLIP embeddings",
        unit="batch",
        total=-(-len(images) // batch_size),
        disable=not (images and progress),
    ):
        yield slice(start, start + len(pixels)), embed_pixels(encoder.model, pixels, batch_size)
        start += len(pixels)


# -- the cache -------------------------------------------------------------------------------------


def cached_hashes(root: str | Path) -> set[str]:
    """The image hashes that have an embedding under ``root`` (one model's folder)."""
    parts = sorted(Path(root).glob("shard-*-of-*/part-*.parquet"))
    return set().union(*(set(pd.read_parquet(p, columns=["hash"])["hash"]) for p in parts)) if parts else set()


def read_cache(root: str | Path) -> pd.DataFrame:
    """Every cached row under ``root``: hash, embedding, seconds (empty when cold)."""
    try:
        return shards.merge(root, key="hash")
    except FileNotFoundError:
        return pd.DataFrame(columns=["hash", "embedding", "seconds"])


def embedding_matrix(table: pd.DataFrame, column: str = "embedding") -> np.ndarray:
    """The embedding column of a table as one ``[N, D]`` float32 array."""
    return np.stack([np.asarray(v, np.float32) for v in table[column]]) if len(table) else np.zeros((0, 0), np.float32)


@dataclass
class ExtractResult:
    """What one extraction call did: cache hits, misses (computed now) and the merged table
    (``None`` while other shards are unfinished)."""

    key: str
    root: Path
    target: Path
    items: int  # distinct images (by content) this call was responsible for
    hits: int  # of those, already in the cache
    misses: int  # of those, embedded by this call
    seconds: float  # wall time of the embedding loop (loading, preprocessing, forward, writes)
    complete: bool
    table: pd.DataFrame | None = None

    @property
    def items_per_s(self) -> float:
        return self.misses / self.seconds if self.seconds > 0 else float("nan")


def with_hashes(images: pd.DataFrame, workers: int = 1) -> pd.DataFrame:
    """``images`` (id, path[, hash]) with every ``hash`` filled: the recorded fingerprints as they
    are, a file read only for a row without one."""
    images = images.drop_duplicates("id").sort_values("id").reset_index(drop=True)
    images["path"] = images["path"].astype(str)
    known = images["hash"] if "hash" in images else pd.Series(None, index=images.index, dtype=object)
    todo = known.isna().to_numpy()
    hashes = known.astype(object).to_numpy().copy()
    if todo.any():
        hashes[todo] = hash_files(list(images.loc[todo, "path"]), max(1, workers))
    images["hash"] = hashes
    return images[["id", "path", "hash"]]


def extract(
    encoder: Encoder,
    images: pd.DataFrame,
    root: str | Path,
    num_shards: int = 1,
    shard_index: int = 0,
    batch_size: int = 32,
    workers: int = 0,
) -> ExtractResult:
    """Embed the images (``id``, ``path``, optionally their recorded ``hash``) of shard
    ``shard_index`` that are not cached yet, one atomic part per batch. When every image of every
    shard is cached, the merged table (id, path, hash, embedding, dtype, sorted by id) is written
    to ``<root>/images.parquet`` and returned. ``shard_index=-1`` only merges, and fails when
    images are missing."""
    root = Path(root)
    images = with_hashes(images, workers)
    merge_only = shard_index == -1
    own = images if merge_only else shards.select_shard(images, num_shards, shard_index)
    cached = cached_hashes(root)
    distinct = own.drop_duplicates("hash").sort_values("hash")
    todo = distinct[~distinct["hash"].isin(cached)]
    t0 = time.perf_counter()
    if len(todo) and not merge_only:
        store = shards.ShardStore(root, num_shards, shard_index, key="hash")
        dtype = encoder.identity.get("dtype")  # provenance: the cache is read in float32 whatever it was
        hashes = todo["hash"]
        # seconds per image: loading, preprocessing and the forward pass
        shards.run_batches(
            encode(encoder, list(todo["path"]), batch_size, workers, progress=False),
            lambda b: ({"hash": h, "embedding": e, "dtype": dtype} for h, e in zip(hashes.iloc[b[0]], b[1])),
            store,
            len(todo),
            "CLIP embeddings",
        )
    seconds = time.perf_counter() - t0
    if len(todo) and not merge_only:
        record("made", stage="embeddings", items=len(todo), model=encoder.key)
    missing = sorted(set(images["hash"]) - cached_hashes(root))
    if merge_only and missing:
        raise RuntimeError(
            f"{root}: {len(missing)} of {images['hash'].nunique()} images have no "
            f"embedding yet; run every shard (shard_index 0..num_shards-1) first"
        )
    result = ExtractResult(
        encoder.key,
        root,
        root / "images.parquet",
        len(distinct),
        len(distinct) - len(todo),
        0 if merge_only else len(todo),
        seconds,
        complete=not missing,
    )
    if result.complete:
        result.table = _merge(images, root, result.target, encoder.key)
    return result


def _merge(images: pd.DataFrame, root: Path, target: Path, key: str) -> pd.DataFrame:
    """The merged per-image table, written to ``target`` unless it is already current. Its key is
    the ids and contents, not the paths: a moved or copied run directory keeps it."""
    items = "\n".join(sorted(images["id"] + "\t" + images["hash"]))
    meta = {"model_key": key, "items": hashlib.sha256(items.encode()).hexdigest()}
    if paths.is_current(target, meta):
        table = pd.read_parquet(target)
        return table.drop(columns="path").merge(images[["id", "path"]], on="id")[list(table.columns)]
    cache = read_cache(root).reindex(columns=["hash", "embedding", "dtype"])
    table = images.merge(cache, on="hash", how="left", validate="many_to_one")
    paths.write_parquet(table, target, meta)
    return table


def stage_images(manifest: pd.DataFrame, triplets: pd.DataFrame | None = None) -> pd.DataFrame:
    """The images stage 08 embeds: every original (id, path, hash) and every derivative in the
    triplets (pair_id, path, hash), one row per image id; ``hash`` is the fingerprint stage 02/05
    recorded (None where a table has none)."""

    def cols(table, prefix=""):
        out = table[[f"{prefix}id", f"{prefix}path"]].set_axis(["id", "path"], axis=1)
        out["hash"] = table[f"{prefix}sha256"] if f"{prefix}sha256" in table else None
        return out

    frames = [cols(manifest)] + [
        cols(triplets, f"{k}_") for k in ("anchor", "positive", "negative") if triplets is not None
    ]
    out = pd.concat(frames, ignore_index=True).drop_duplicates("id")
    return out.sort_values("id").reset_index(drop=True)


def extract_embeddings(
    P, images: pd.DataFrame, num_shards: int = 1, shard_index: int = 0, encoder: Encoder | None = None
) -> ExtractResult:
    """Stage 08's extraction step for params ``P``: CLIP embeddings of ``images`` (id, path),
    read from or added to ``<run>/embeddings/<model-key>/`` (computes what is not cached)."""
    encoder = encoder or load_encoder(P)
    root = P.run.sub("embeddings", encoder.key)
    what = {k: encoder.identity[k] for k in KEY_FIELDS}  # the same from every job, whatever its dtype
    paths.write_if_changed(root / "model.json", json.dumps(what, indent=1, sort_keys=True))
    return extract(
        encoder,
        images,
        root,
        num_shards,
        shard_index,
        batch_size=P.siamese.embed_batch_size,
        workers=worker_count(P.num_workers),
    )


# -- the 'clip' measure -----------------------------------------------------------------------------


def _is_single(x) -> bool:  # one image (a path, a PIL image or an H×W×3 array), not a list
    return isinstance(x, (str, Path, Image.Image)) or (isinstance(x, np.ndarray) and x.ndim == 3)


class ClipMeasure:
    """Cosine similarity of CLIP image embeddings (raw, or refined by a trained ``head``) of
    paths, PIL images or arrays. A file whose content is in the cache under ``cache_root`` is
    read from it; anything else is computed (and not cached)."""

    def __init__(
        self,
        encoder: Encoder,
        head: torch.nn.Module | None = None,
        name: str = "clip",
        cache_root: str | Path | None = None,
        batch_size: int = 32,
    ):
        self.encoder, self.head, self.name, self.batch_size = encoder, head, name, batch_size
        self.cache_root = Path(cache_root) if cache_root else None
        self._cache: dict[str, np.ndarray] | None = None
        self._known: dict[str, str] = {}  # path -> fingerprint, from the run's images.parquet

    def clip_embed(self, images) -> np.ndarray:
        """Raw CLIP embeddings. # [N, D]"""
        if self._cache is None:
            table = read_cache(self.cache_root) if self.cache_root else pd.DataFrame(columns=["hash", "embedding"])
            self._cache = dict(zip(table["hash"], embedding_matrix(table)))
            known = self.cache_root / "images.parquet" if self.cache_root else None
            if known is not None and known.exists():  # stage 08's table: path -> recorded fingerprint
                t = pd.read_parquet(known, columns=["path", "hash"])
                self._known = dict(zip(t["path"].astype(str), t["hash"]))
        items = [images] if _is_single(images) else list(images)
        items = [
            Image.fromarray(np.asarray(x, np.uint8))
            if isinstance(x, np.ndarray)
            else x
            if isinstance(x, Image.Image)
            else str(x)
            for x in items
        ]
        out = np.zeros((len(items), self.encoder.dim), np.float32)
        files = [i for i, x in enumerate(items) if isinstance(x, str)]
        hashes = {i: self._known[items[i]] for i in files if items[i] in self._known}
        unknown = [i for i in files if i not in hashes]
        hashes.update(zip(unknown, hash_files([items[i] for i in unknown])))
        todo = [i for i in range(len(items)) if hashes.get(i) not in self._cache]
        for i in set(files) - set(todo):
            out[i] = self._cache[hashes[i]]
        for sl, emb in encode(self.encoder, [items[i] for i in todo], self.batch_size):
            out[todo[sl]] = emb
        if todo:
            record("made", stage="clip_measure", items=len(todo), model=self.encoder.key)
        return out

    @torch.no_grad()
    def embed(self, images) -> np.ndarray:
        """The measure's embeddings (L2-normalised). # [N, out_dim]"""
        x = self.clip_embed(images)
        return x if self.head is None else self.head.eval()(torch.from_numpy(x)).numpy()

    def similarity(self, a, b):
        """Cosine in [-1, 1]: a float for two images, an array for two lists (pairwise) or one and a list."""
        s = (self.embed(a) * self.embed(b)).sum(-1)
        return float(s[0]) if _is_single(a) and _is_single(b) else s

    def similarity01(self, a, b):
        """:meth:`similarity` mapped to [0, 1]."""
        return (self.similarity(a, b) + 1) / 2


def run_encoder(run_dir: str | Path):
    """``(params, Encoder)`` of a run directory: its ``params.resolved.yaml`` and its CLIP, with
    ``{run_dir}`` in ``models.clip`` read as ``run_dir`` (as ``P.model_ref`` does)."""
    P = config.read_run_params(run_dir)  # FileNotFoundError: not a run directory
    return P, open_encoder(P.model_ref("clip", run_dir), P.device, P.dtype)


def load_clip_measure(run_dir: str | Path) -> ClipMeasure:
    """The raw CLIP cosine measure of a run (its CLIP model and embedding cache)."""
    P, encoder = run_encoder(run_dir)
    return ClipMeasure(encoder, None, "clip", Path(run_dir) / "embeddings" / encoder.key, P.siamese.embed_batch_size)
