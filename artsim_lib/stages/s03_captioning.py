"""Stage 03: one caption per original, written by BLIP-2 or read from captions that exist.

Backends (``captioning.backend``):

* ``blip2``: ``Blip2ForConditionalGeneration`` over the preprocessed images, in batches. The
  result does not depend on the batch: the inputs are never padded, and sampled decoding draws
  each image from its own seeded random stream (:mod:`artsim_lib.core.sampling`).
* ``existing``: captions that were already written -- a column of the manifest, or a parquet/CSV
  file keyed by ``id`` or by ``filename`` (the original study published its BLIP-2 captions for
  all 81,444 images by filename) -- so nobody pays for them twice. Images without one are listed;
  ``captioning.existing_missing`` says whether to stop, caption them with BLIP-2 or leave them out.

The stage is sharded and resumable (see :mod:`artsim_lib.io.shards`): results go into
``captioning/parts/<key>/shard-*``, where ``<key>`` hashes the params that shape them, and are
merged into ``captioning/captions.parquet`` (id, caption, backend, model, seconds) once every
shard is done.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from artsim_lib.io import paths, shards, workers
from artsim_lib.io.artifacts import read_current
from artsim_lib.io.images import open_rgb
from artsim_lib.io.worklog import record
from artsim_lib.stages import s02_preprocess

COLUMNS = ["id", "caption", "backend", "model", "seconds"]
SALT = "caption"  # item_seed salt: a sampled caption's seed
_FILENAME_COLUMNS = ("filename", "file_name", "file", "image", "image_path", "path")
STOPWORDS = frozenset(
    "a an the of and in on with at to for from by as or is are was were be it its this that there "
    "his her their he she they two three some".split()
)


def captions_path(P) -> Path:
    """``<run>/captioning/captions.parquet``."""
    return P.run.root / "captioning" / "captions.parquet"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def caption_meta(P) -> dict:
    """What ``captions.parquet`` depends on (device, dtype and batch size do not count)."""
    from artsim_lib.stages.s02_preprocess import manifest_key

    c = P.captioning
    meta = {"stage": "captioning", "manifest": manifest_key(P), "backend": c.backend}
    if c.backend == "blip2" or c.existing_missing == "blip2":
        meta["blip2"] = {
            "model": P.models.blip2,
            "max_new_tokens": c.max_new_tokens,
            "num_beams": c.num_beams,
            "do_sample": c.do_sample,
            "prompt": c.prompt,
            "seed": P.seed if c.do_sample else None,
        }
    if c.backend == "existing":
        source = P.path(c.existing) if c.existing else None
        meta["existing"] = {
            "source": c.existing,
            "column": c.existing_column,
            "missing": c.existing_missing,
            "digest": _file_digest(source) if source and source.exists() else None,
        }
    return meta


def parts_root(P, meta: dict | None = None) -> Path:
    """Where the shards of this parameter set keep their parts."""
    blob = json.dumps(paths.json_roundtrip(meta or caption_meta(P)), sort_keys=True).encode()
    return P.run.root / "captioning" / "parts" / hashlib.sha1(blob).hexdigest()[:12]


# -- existing captions --------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A parquet, CSV or TSV file as a DataFrame (every key column as text)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"captioning.existing: {path} does not exist")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".tab") else ",", dtype=str, keep_default_na=False)


def _tail(name: str, parts: int) -> str:
    return "/".join(PurePosixPath(str(name).replace("\\", "/")).parts[-parts:]).lower()


def match_existing(manifest: pd.DataFrame, table: pd.DataFrame, column: str = "caption") -> tuple[pd.Series, str]:
    """The caption of every manifest row (NA where there is none) and how they were matched.

    By ``id`` when the table has an id column; otherwise by filename: ``Style/file.jpg`` first,
    then the bare file name, so a table keyed by any path that ends in the file still matches.
    """
    if column not in table.columns:
        raise KeyError(f"the existing captions have no column {column!r} (columns: {list(table.columns)})")
    text = table[column].astype("string").str.strip().replace("", pd.NA)
    if "id" in table.columns:
        lookup = dict(zip(table["id"].astype(str), text))
        return manifest["id"].astype(str).map(lookup).astype("string").set_axis(manifest.index), "id"
    key = next((c for c in _FILENAME_COLUMNS if c in table.columns), None)
    if key is None:
        raise KeyError(f"the existing captions need an 'id' or a filename column ({', '.join(_FILENAME_COLUMNS)})")
    by_two = dict(zip(table[key].map(lambda n: _tail(n, 2)), text))
    by_one = dict(zip(table[key].map(lambda n: _tail(n, 1)), text))
    names = manifest["filename"].astype(str)
    found = [by_two.get(_tail(n, 2), pd.NA) for n in names]
    found = [f if not pd.isna(f) else by_one.get(_tail(n, 1), pd.NA) for f, n in zip(found, names)]
    return pd.Series(found, index=manifest.index, dtype="string"), key


def existing_captions(P, manifest: pd.DataFrame) -> tuple[pd.Series, str]:
    """The existing caption per manifest row (NA: none) and a label of the source."""
    c = P.captioning
    if c.existing:
        source = P.path(c.existing)
        found, how = match_existing(manifest, read_table(source), c.existing_column)
        return found, f"{source.name} (by {how})"
    if c.existing_column not in manifest.columns:
        raise KeyError(f"captioning.existing is not set and the manifest has no column {c.existing_column!r}")
    return manifest[c.existing_column].astype("string").str.strip().replace("", pd.NA), f"manifest:{c.existing_column}"


class MissingCaptionsError(RuntimeError):
    """The existing captions lack some images (and ``existing_missing`` is ``error``)."""


def plan(P, manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Every image to caption: id, path, backend, caption (filled for 'existing') and model;
    plus the ids the existing captions lack."""
    todo = manifest[["id", "path"]].assign(
        caption=pd.Series(pd.NA, index=manifest.index, dtype="string"), backend="blip2", model=P.models.blip2
    )
    if P.captioning.backend == "blip2":
        return todo, []
    found, source = existing_captions(P, manifest)
    missing = manifest.loc[found.isna(), "id"].astype(str).tolist()
    todo = todo.assign(caption=found, backend="existing", model=source)
    if missing:
        how = P.captioning.existing_missing
        if how == "error":
            raise MissingCaptionsError(
                f"{len(missing)} of {len(manifest)} images have no caption in {source}, e.g. {missing[:5]}; "
                f"set captioning.existing_missing=blip2 to caption them with BLIP-2, or =drop to leave them out"
            )
        if how == "drop":
            todo = todo[found.notna().to_numpy()]
        else:
            todo.loc[found.isna().to_numpy(), ["backend", "model"]] = ["blip2", P.models.blip2]
    return todo, missing


# -- BLIP-2 -------------------------------------------------------------------------------


def clean_caption(text: str) -> str:
    """One line, single spaces, no surrounding whitespace."""
    return re.sub(r"\s+", " ", text).strip()


def caption_images(
    model,
    processor,
    images,
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    do_sample: bool = False,
    prompt: str | None = None,
    seeds=(),
    inputs=None,
) -> list[str]:
    """BLIP-2 captions of PIL images, batched. Sampling draws image ``i`` from its own
    ``seeds[i]`` (see :mod:`artsim_lib.core.sampling`), so a caption never depends on its batch.
    ``inputs``: the processor's output for ``images`` made beforehand (:func:`prepare_inputs`)."""
    import torch

    from artsim_lib.core.sampling import sampled_generate

    if inputs is None:
        inputs = processor_inputs(processor, images, prompt)
    n = len(inputs["pixel_values"])
    inputs = {
        k: v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device) for k, v in inputs.items()
    }  # pixel_values: [B, 3, H, W]
    with torch.inference_mode():
        if do_sample:
            if len(seeds) != n or num_beams != 1:
                raise ValueError("sampled captions need one seed per image and num_beams=1")
            out = sampled_generate(model, inputs, seeds, 1.0, max_new_tokens=max_new_tokens)
        else:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
    return [clean_caption(t) for t in processor.batch_decode(out, skip_special_tokens=True)]  # out: [B, T]


# The fast tokenizer is one Rust object whose padding/truncation state each call sets: two
# threads must not tokenise at once. Images alone need no lock (decoding and resizing are
# stateless and release the GIL).
_TOKENIZER_LOCK = threading.Lock()


def processor_inputs(processor, images, prompt: str | None = None) -> dict:
    """The processor's CPU tensors for PIL ``images`` (and the prompt, if any); thread-safe."""
    images = list(images)
    if not prompt:
        return dict(processor(images=images, return_tensors="pt"))
    with _TOKENIZER_LOCK:
        return dict(processor(images=images, text=[prompt] * len(images), return_tensors="pt"))


def _load_images(image_paths) -> list:
    """The images as RGB, read by the study's one reader (``ImageReadError``, a ValueError, names
    the file that cannot be read)."""
    return [open_rgb(p) for p in image_paths]


def prepare_inputs(processor, image_paths, prompt: str | None = None) -> dict:
    """Decode, resize and normalise the images at ``image_paths`` on the CPU: what a worker
    thread does for the batches the GPU will caption next."""
    return processor_inputs(processor, _load_images(image_paths), prompt)


def _run_blip2(P, rows: pd.DataFrame, store: shards.ShardStore) -> int:
    """Caption ``rows`` batch by batch, appending each batch to ``store``; returns how many."""
    from artsim_lib import models

    if rows.empty:
        return 0
    c = P.captioning
    models.ensure_tiny_checkpoints(P, ["blip2"])
    model, processor = models.load_blip2(P.model_ref("blip2"), P.device, P.dtype)  # checks num_query_tokens
    # The next batches are decoded and resized on worker threads while the model captions this
    # one; the inputs are the same as made in line, so are the captions.
    n_workers = workers.worker_count(P.num_workers)
    prepared = workers.prefetch_map(
        lambda b: prepare_inputs(processor, list(b["path"]), c.prompt),
        list(shards.batches(rows, c.batch_size)),
        n_workers,
    )

    def caption(item):
        batch, inputs = item
        seeds = [shards.item_seed(P.seed, i, SALT) for i in batch["id"]]
        caps = caption_images(
            model,
            processor,
            None,
            max_new_tokens=c.max_new_tokens,
            num_beams=c.num_beams,
            do_sample=c.do_sample,
            prompt=c.prompt,
            seeds=seeds,
            inputs=inputs,
        )
        return (
            {"id": i, "caption": cap, "backend": "blip2", "model": P.models.blip2} for i, cap in zip(batch["id"], caps)
        )

    with closing(prepared):  # a kill or an error stops the workers too
        return shards.run_batches(prepared, caption, store, len(rows), "BLIP-2 captions")


# -- the stage ----------------------------------------------------------------------------


@dataclass
class CaptionRun:
    """What one call of :func:`run` did."""

    captions: pd.DataFrame | None  # the merged artifact; None while other shards are not done
    captioned: int  # images this call captioned with BLIP-2
    copied: int  # existing captions this call copied
    seconds: float  # wall time of this call's captioning
    pending: dict[int, int] = field(default_factory=dict)  # shard -> images not yet done
    missing_existing: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """BLIP-2 throughput of this call (NaN when it captioned nothing)."""
        return self.captioned / self.seconds if self.captioned and self.seconds > 0 else float("nan")


def _done(root: Path) -> set[str]:
    """Ids captioned under ``root`` by any shard of any shard count (a changed count redoes nothing)."""
    parts = sorted(root.glob("shard-*/part-*.parquet"))
    return set().union(*(set(pd.read_parquet(p, columns=["id"])["id"].astype(str)) for p in parts))


def _pending(todo: pd.DataFrame, root: Path, num_shards: int) -> dict[int, int]:
    done = _done(root)
    left = [i for i in todo["id"].astype(str) if i not in done]
    return dict(sorted(Counter(shards.shard_of(i, num_shards) for i in left).items()))


def run(P, num_shards: int = 1, shard_index: int = 0) -> CaptionRun:
    """Caption this shard's images that are not done yet; when every shard is done, merge
    into ``captions.parquet``. ``shard_index=-1`` only merges (and fails if a shard is not done)."""
    manifest = s02_preprocess.load(P).sort_values("id", kind="stable").reset_index(drop=True)
    meta = caption_meta(P)
    root = parts_root(P, meta)
    todo, missing = plan(P, manifest)
    t0 = time.perf_counter()
    captioned = copied = 0
    if shard_index != -1:
        store = shards.ShardStore(root, num_shards, shard_index)
        mine = shards.select_shard(todo, num_shards, shard_index)
        mine = mine[~mine["id"].astype(str).isin(_done(root))]
        have = mine[mine["backend"].eq("existing")]
        store.append(
            {"id": r.id, "caption": r.caption, "backend": "existing", "model": r.model, "seconds": 0.0}
            for r in have.itertuples()
        )
        copied = len(have)
        captioned = _run_blip2(P, mine[mine["backend"].eq("blip2")], store)
        record("made", stage="captioning", items=captioned)
    else:
        shards.check_shard(num_shards, 0)
    seconds = time.perf_counter() - t0
    pending = _pending(todo, root, num_shards)
    if pending:
        if shard_index == -1:
            shards.refuse_merge(
                "captioning", f"{sum(pending.values())} image(s) not captioned yet", num_shards, pending
            )
        return CaptionRun(None, captioned, copied, seconds, pending, missing)
    merged = shards.merge(root)
    merged = merged[merged["id"].isin(todo["id"])][COLUMNS].reset_index(drop=True)
    paths.write_parquet(merged, captions_path(P), meta)
    return CaptionRun(merged, captioned, copied, seconds, {}, missing)


def partial_captions(P) -> pd.DataFrame:
    """Whatever every shard has captioned so far (for a look while shards are still running)."""
    root = parts_root(P)
    if not any(root.glob("shard-*/part-*.parquet")):
        return pd.DataFrame(columns=COLUMNS)
    return shards.merge(root)[COLUMNS]


def load(P) -> pd.DataFrame:
    """``captions.parquet`` for ``P``; StageNotRunError ("run stage 03 first") when it is missing
    or was made with other params."""
    return read_current(captions_path(P), caption_meta(P), "03", "the captions")


# -- what the notebook shows --------------------------------------------------------------


def words(captions: pd.Series, stopwords=STOPWORDS) -> pd.Series:
    """Every word of every caption, lower-cased, without stop words (one row per word)."""
    tokens = captions.fillna("").str.lower().str.findall(r"[a-z][a-z'\-]*")
    flat = tokens.explode().dropna()
    return flat[~flat.isin(stopwords)].reset_index(drop=True)


def lengths(captions: pd.Series) -> pd.Series:
    """Caption length in words."""
    return captions.fillna("").str.split().str.len()
