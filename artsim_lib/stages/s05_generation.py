"""Stage 05: a derivative image per (original, level) prompt, or per graded transformation.

Backends (``generation.backend``):

* ``sdxl``: ``StableDiffusionXLImg2ImgPipeline`` (the SDXL refiner) on the original with its
  stage-04 prompt, at the img2img ``strength`` of the prompt's level. Each item has its own seeded
  CPU ``torch.Generator``, so an image does not depend on its batch, the shard count, the order or
  the device's RNG (batched float arithmetic may still move a pixel by one level of 255).
* ``augment``: classical transformations at graded strengths (:mod:`artsim_lib.core.augment`).
* ``precomputed``: the original study's published images, ``images/<Style>/<name>_resize768_
  generated.<ext>`` with a ``data.csv`` of ``generated_image, prompt`` (optionally ``level``,
  ``family``, ``strength``), matched to the originals by style folder and name.

Outputs are flagged ``nan_flag`` (NaNs, as the stock SDXL VAE gives in float16) and ``black_flag``
(no pixel above ``generation.black_max``), and saved as PNGs at the originals' size. The stage is
sharded and resumable (:mod:`artsim_lib.io.shards`): parts and images go under
``generation/<backend>-<key>/`` (``<key>`` hashes what shapes them) and are merged into
``generation/pairs.parquet``.

When every derivative is made, :func:`run` also draws the triplets for metric learning from the
pairs, (anchor original, positive derivative, negative original), into ``triplets/triplets.parquet``.
Each derivative is a positive for its own original (the anchor), with ``triplets.per_kind``
negatives of each kind in ``triplets.negatives``:

* ``random``: an original of another style;
* ``same_style``: another original of the anchor's style;
* ``same_artist``: another original by the anchor's artist (the hard case).

Negatives come from the anchor's split only, so every original of a triplet -- anchor,
the positive's source and the negative -- lies in one split: nothing leaks from train into
val or test. Draws are seeded per (positive, kind). A kind with too few candidates (an artist
with one painting in the split, say) yields fewer negatives; the shortfall is counted, not an
error. Derivatives flagged NaN or all-black are left out when ``triplets.drop_flagged``.

Entry points: :func:`run` (the stage), :func:`load` (the pairs) and :func:`load_triplets`, which
read the artifacts back or say "run stage 05 first"; :func:`run_triplets` redraws the triplets alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

from artsim_lib.core import augment
from artsim_lib.io import paths, shards
from artsim_lib.io.artifacts import read_current
from artsim_lib.io.workers import worker_count
from artsim_lib.io.worklog import record
from artsim_lib.stages import s02_preprocess, s04_prompting

COLUMNS = [
    "pair_id",
    "original_id",
    "level",
    "family",
    "strength",
    "prompt",
    "seed",
    "path",
    "sha256",
    "seconds",
    "nan_flag",
    "black_flag",
    "backend",
    "split",
    "style",
    "artist",
    "op",
    "device",
    "dtype",
]
MADE = ("seconds", "nan_flag", "black_flag", "sha256", "device", "dtype")  # known once an image is made
SALT = "generation"  # item_seed salt
_GENERATED = re.compile(r"^(?P<name>.+?)(?:_resize\d+)?_generated$", re.IGNORECASE)


def pairs_path(P) -> Path:
    """``<run>/generation/pairs.parquet``."""
    return P.run.root / "generation" / "pairs.parquet"


def generation_meta(P) -> dict:
    """What ``pairs.parquet`` and its images depend on. Where and how a job ran (device, dtype,
    batch size, shard and worker counts) does not count: a merge job on a CPU node finds the
    parts that GPU shard jobs made in float16, and later CPU stages read the pairs as they are.
    The device and dtype of each image are recorded in its row instead."""
    from artsim_lib.stages.s02_preprocess import manifest_key

    g = P.generation
    meta = {
        "stage": "generation",
        "seed": P.seed,
        "manifest": manifest_key(P),
        "backend": g.backend,
        "black_max": g.black_max,
    }
    if g.backend == "augment":
        meta["augment"] = {"families": list(g.augment_families), "strengths": list(g.augment_strengths), "version": 1}
    elif g.backend == "sdxl":
        from artsim_lib.stages.s04_prompting import prompt_meta

        meta["sdxl"] = {
            "model": P.models.sdxl_refiner,
            "vae": g.vae,
            "variant": g.variant,
            **g.model_dump(
                include={
                    "strength",
                    "steps",
                    "guidance_scale",
                    "aesthetic_score",
                    "negative_aesthetic_score",
                    "negative_prompt",
                    "size",
                }
            ),
        }
        meta["prompts"] = prompt_meta(P)
    else:
        csv = P.path(g.precomputed) / "data.csv" if g.precomputed else None
        digest = hashlib.sha256(csv.read_bytes()).hexdigest()[:16] if csv and csv.exists() else None
        meta["precomputed"] = {"source": g.precomputed, "strength": g.strength, "digest": digest}
    return meta


def work_dir(P, meta: dict | None = None) -> Path:
    """Where this parameter set keeps its shard parts and images."""
    meta = meta or generation_meta(P)
    blob = json.dumps(paths.json_roundtrip(meta), sort_keys=True).encode()
    return P.run.root / "generation" / f"{meta['backend']}-{hashlib.sha1(blob).hexdigest()[:12]}"


# -- what to make -----------------------------------------------------------------------------


def _augment_jobs(P, manifest: pd.DataFrame) -> pd.DataFrame:
    g, rows = P.generation, []
    for r in manifest.itertuples():
        for family in g.augment_families:
            seed = shards.item_seed(P.seed, f"{r.id}:{family}", SALT)  # one per (original, family)
            op = augment.choose_op(family, seed)
            for s in g.augment_strengths:
                rows.append(
                    {
                        "pair_id": f"{r.id}:{family}:{s:g}",
                        "original_id": r.id,
                        "level": augment.level_of(s),
                        "family": family,
                        "strength": float(s),
                        "prompt": None,
                        "seed": seed,
                        "op": op,
                        "src": r.path,
                    }
                )
    return pd.DataFrame(rows)


def _sdxl_jobs(P, manifest: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    jobs = prompts[prompts["id"].isin(manifest["id"])].merge(manifest[["id", "path"]], on="id")
    return pd.DataFrame(
        {
            "pair_id": jobs["prompt_id"],
            "original_id": jobs["id"],
            "level": jobs["level"],
            "family": jobs["family"],
            "strength": [float(P.generation.strength[lv]) for lv in jobs["level"]],
            "prompt": jobs["prompt"],
            "seed": [shards.item_seed(P.seed, p, SALT) for p in jobs["prompt_id"]],
            "op": None,
            "src": jobs["path"],
        }
    )


def plan(
    P, manifest: pd.DataFrame, prompts: pd.DataFrame | None = None, images: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every derivative to make (the pairs columns that are known up front, plus ``src``, the
    input image) and, for ``precomputed``, the rows of ``data.csv`` that match no original."""
    g = P.generation
    unmatched = pd.DataFrame(columns=["generated_image", "reason"])
    if g.backend == "augment":
        jobs = _augment_jobs(P, manifest)
    elif g.backend == "sdxl":
        if prompts is None:
            raise ValueError("generation.backend=sdxl needs the stage-04 prompts")
        jobs = _sdxl_jobs(P, manifest, prompts)
    else:
        if not g.precomputed:
            raise ValueError("generation.backend=precomputed needs generation.precomputed (a folder with data.csv)")
        jobs, unmatched = match_precomputed(P.path(g.precomputed), manifest, g.strength)
    if jobs.empty:
        raise ValueError(f"generation ({g.backend}): nothing to generate")
    info = manifest.set_index("id")[["split", "style", "artist"]]
    jobs = jobs.join(info, on="original_id").assign(backend=g.backend)
    jobs["path"] = [str((images or Path(".")) / (p.replace(":", "__") + ".png")) for p in jobs["pair_id"]]
    # A fixed order: a resumed run meets the same batches as an uninterrupted one.
    return jobs.sort_values("pair_id", kind="stable").reset_index(drop=True), unmatched


# -- precomputed ------------------------------------------------------------------------------


def parse_generated(rel: str) -> tuple[str, str] | None:
    """``images/Cubism/x_resize768_generated.jpg`` -> ``('cubism', 'x')``; None if not that layout."""
    parts = PurePosixPath(str(rel).replace("\\", "/")).parts
    m = _GENERATED.match(PurePosixPath(parts[-1]).stem) if len(parts) >= 2 else None
    return (parts[-2].lower(), m.group("name").lower()) if m else None


def _why_not(row, folder: Path, key, originals: dict) -> str | None:
    if key is None:
        return "name not in the layout <Style>/<name>[_resizeN]_generated.<ext>"
    if key not in originals:
        return f"no original {key[0]}/{key[1]} in the manifest"
    if not (folder / row.generated_image).is_file():
        return "file missing"
    if row.level not in ("moderate", "radical"):
        return f"level {row.level!r} is neither moderate nor radical"
    return None


def match_precomputed(
    folder: Path, manifest: pd.DataFrame, strength: dict[str, float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Match ``folder/data.csv`` to the manifest by style folder and name; returns the jobs and
    the unmatched rows with their reason. Without a ``level`` column every image counts as
    moderate; without ``strength``, the level's ``generation.strength`` is recorded."""
    table = pd.read_csv(folder / "data.csv", dtype=str, keep_default_na=False)
    if "generated_image" not in table.columns:
        raise KeyError(f"{folder / 'data.csv'}: no 'generated_image' column (has {list(table.columns)})")
    table = table.assign(
        **{
            c: table.get(c, d)
            for c, d in (("prompt", ""), ("level", "moderate"), ("family", "unknown"), ("strength", ""))
        }
    )
    table["level"] = table["level"].str.strip().str.lower().replace("", "moderate")
    names = manifest["filename"] if "filename" in manifest.columns else manifest["src_path"]
    keys = (PurePosixPath(str(f).replace("\\", "/")) for f in names)
    originals = {(k.parent.name.lower(), k.stem.lower()): i for k, i in zip(keys, manifest["id"])}
    rows, bad = [], []
    for r in table.sort_values("generated_image", kind="stable").itertuples():
        key = parse_generated(r.generated_image)
        reason = _why_not(r, folder, key, originals)
        if reason:
            bad.append({"generated_image": r.generated_image, "reason": reason})
            continue
        rows.append(
            {
                "original_id": originals[key],
                "level": r.level,
                "family": r.family or "unknown",
                "strength": float(r.strength) if r.strength else float(strength[r.level]),
                "prompt": r.prompt or None,
                "seed": None,
                "op": None,
                "src": str(folder / r.generated_image),
            }
        )
    jobs = pd.DataFrame(rows, columns=["original_id", "level", "family", "strength", "prompt", "seed", "op", "src"])
    nth = jobs.groupby(["original_id", "level"]).cumcount()  # a second image of one (original, level)
    jobs.insert(
        0,
        "pair_id",
        [f"{o}:{lv}" + (f":{k}" if k else "") for o, lv, k in zip(jobs["original_id"], jobs["level"], nth)],
    )
    if bad:
        warnings.warn(
            f"precomputed: {len(bad)} of {len(table)} row(s) of {folder / 'data.csv'} match no original", stacklevel=2
        )
    return jobs, pd.DataFrame(bad, columns=["generated_image", "reason"])


# -- making images ----------------------------------------------------------------------------


def image_flags(image, black_max: float = 0.02) -> tuple[bool, bool]:
    """``(nan_flag, black_flag)`` of an image array: floats in [0, 1] or uint8. NaNs are
    saved as black, so an image of NaNs is also black."""
    a = np.asarray(image)
    a = a / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    nan = not bool(np.isfinite(a).all())
    return nan, bool(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0).max() <= black_max)


def to_uint8(image) -> np.ndarray:
    """An image array (floats in [0, 1], NaN as 0, or uint8) as uint8."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    return np.rint(np.clip(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0), 0, 1) * 255).astype(np.uint8)


def _open_rgb(path: str, size: int | None = None) -> Image.Image:
    from artsim_lib.io.images import open_rgb

    im = open_rgb(path)  # the study's one reader: EXIF, alpha, 16-bit, pixel limit
    return im.resize((size, size), Image.Resampling.LANCZOS) if size and im.size != (size, size) else im


def load_sdxl(P):
    """The SDXL refiner pipeline for ``P`` (the tiny one built first when the profile asks)."""
    from artsim_lib import models

    models.ensure_tiny_checkpoints(P, ["sdxl_refiner"])
    dev = models.pick_device(P.device)
    vae = P.generation.vae
    vae = str(P.path(vae)) if vae and (vae.startswith((".", "/", "~", "{")) or P.path(vae).exists()) else vae
    pipe = models.load_sdxl_refiner(
        P.model_ref("sdxl_refiner"), dev, models.pick_dtype(P.dtype, dev), variant=P.generation.variant, vae=vae
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_images(pipe, images, prompts, seeds, strength: float, g) -> np.ndarray:
    """img2img on a batch at one ``strength``, one CPU generator per item; ``[B, H, W, 3]``
    floats in [0, 1] (NaN where the model produced NaN)."""
    import torch

    if int(g.steps * strength) < 1:
        raise ValueError(
            f"generation.steps={g.steps} at strength {strength} leaves no denoising step; "
            f"raise steps to at least {int(np.ceil(1 / strength))}"
        )
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(
        prompt=list(prompts),
        image=list(images),
        strength=strength,
        num_inference_steps=g.steps,
        guidance_scale=g.guidance_scale,
        aesthetic_score=g.aesthetic_score,
        negative_aesthetic_score=g.negative_aesthetic_score,
        negative_prompt=[g.negative_prompt] * len(images) if g.negative_prompt else None,
        generator=generators,
        output_type="np",
    )
    return np.asarray(out.images)  # [B, H, W, 3]


def _maker(P):
    """``(per_item, per_batch)``: one of them makes an image array per job; the other is None.
    Items of ``per_item`` are independent and run in threads (PIL releases the GIL)."""
    g = P.generation
    if g.backend == "sdxl":
        pipe = load_sdxl(P)
        return None, lambda batch: list(
            sdxl_images(
                pipe,
                [_open_rgb(p, g.size) for p in batch["src"]],
                batch["prompt"],
                batch["seed"],
                float(batch["strength"].iloc[0]),
                g,
            )
        )
    if g.backend == "precomputed":
        return (lambda r: np.asarray(_open_rgb(r.src))), None
    original = functools.lru_cache(maxsize=64)(_open_rgb)  # an original's derivatives run together
    return (lambda r: np.asarray(augment.transform(original(r.src), r.op, r.strength, r.seed))), None


def _save(image, target: str, size: int, black_max: float) -> tuple[bool, bool, str]:
    """Save an image array as a PNG at ``size`` (atomically); return its flags and fingerprint."""
    import io

    nan, black = image_flags(image, black_max)
    img = Image.fromarray(to_uint8(image))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # lossless; level 1 is ~3x faster than 6
    return nan, black, paths.write_bytes_fingerprinted(target, buf.getvalue())


def _ran_on(P) -> dict:
    """Provenance of the images a job makes: device and dtype (sdxl), recorded, never keyed."""
    if P.generation.backend != "sdxl":
        return {"device": "cpu", "dtype": None}
    from artsim_lib import models

    dev = models.pick_device(P.device)
    return {"device": dev.type, "dtype": str(models.pick_dtype(P.dtype, dev)).removeprefix("torch.")}


def _run_jobs(P, rows: pd.DataFrame, store: shards.ShardStore) -> int:
    """Make ``rows`` batch by batch, images first, then the batch's part: a part on disk means
    its images are complete. Returns how many were made."""
    if rows.empty:
        return 0
    per_item, per_batch = _maker(P)
    size, black_max = P.preprocess.size, P.generation.black_max
    ran = _ran_on(P)
    # sdxl takes one strength per call: its batches never mix levels.
    groups = rows.groupby("strength", sort=True) if per_batch else [(None, rows)]
    batches = (b for _, same in groups for b in shards.batches(same, P.generation.batch_size))
    with ThreadPoolExecutor(max_workers=worker_count(P.num_workers)) as pool:

        def make(batch):
            items = list(batch.itertuples())
            if per_batch:
                flags = list(
                    pool.map(_save, per_batch(batch), batch["path"], [size] * len(items), [black_max] * len(items))
                )
            else:
                flags = list(pool.map(lambda r: _save(per_item(r), r.path, size, black_max), items))
            return (
                {
                    **{c: getattr(r, c) for c in COLUMNS if c not in MADE},
                    "nan_flag": nan,
                    "black_flag": black,
                    "sha256": digest,
                    **ran,
                }
                for r, (nan, black, digest) in zip(items, flags)
            )

        shards.run_batches(batches, make, store, len(rows), f"generate ({P.generation.backend})")
    record("made", stage="generation", items=len(rows))
    return len(rows)


# -- the stage --------------------------------------------------------------------------------


@dataclass
class GenerationRun:
    """What one call of :func:`run` did."""

    pairs: pd.DataFrame | None  # the merged artifact; None while other shards are not done
    partial: pd.DataFrame  # everything made so far, by any shard
    made: int  # derivatives this call made
    seconds: float  # wall time of this call's generation
    pending: dict[int, int] = field(default_factory=dict)  # shard -> derivatives not yet made
    unmatched: pd.DataFrame = field(default_factory=pd.DataFrame)  # precomputed rows not used
    triplets: TripletResult | None = None  # drawn once the pairs are merged; None while shards are pending

    @property
    def items_per_s(self) -> float:
        """Throughput of this call (NaN when it made nothing)."""
        return self.made / self.seconds if self.made and self.seconds > 0 else float("nan")


def _merged(root: Path, jobs: pd.DataFrame) -> pd.DataFrame:
    if not any(root.glob("shard-*/part-*.parquet")):
        return pd.DataFrame(columns=COLUMNS)
    merged = shards.merge(root, key="pair_id")
    merged = merged[merged["pair_id"].isin(jobs["pair_id"])].reindex(columns=COLUMNS).reset_index(drop=True)
    old = merged["sha256"].isna()  # parts written before images were fingerprinted
    merged.loc[old, "sha256"] = [paths.file_sha256(p) for p in merged.loc[old, "path"]]
    return merged


def run(P, num_shards: int = 1, shard_index: int = 0) -> GenerationRun:
    """Make this shard's derivatives that are not made yet (by any shard); when every shard is
    done, merge into ``pairs.parquet`` and draw ``triplets.parquet`` from it (:func:`run_triplets`).
    ``shard_index=-1`` only merges (and fails if a shard is not done)."""
    g = P.generation
    manifest = s02_preprocess.load(P)
    prompts = None
    if g.backend == "sdxl":
        prompts = s04_prompting.load(P)
    meta = generation_meta(P)
    root = work_dir(P, meta)
    jobs, unmatched = plan(P, manifest, prompts, root / "images")
    if len(unmatched):
        with paths.atomic_path(P.run.sub("generation") / "unmatched.csv") as tmp:
            unmatched.to_csv(tmp, index=False)
    t0, made = time.perf_counter(), 0
    if shard_index != -1:
        store = shards.ShardStore(root, num_shards, shard_index, key="pair_id")
        done = set(_merged(root, jobs)["pair_id"])
        mine = shards.select_shard(jobs, num_shards, shard_index, key="original_id")
        made = _run_jobs(P, mine[~mine["pair_id"].isin(done)], store)
    else:
        shards.check_shard(num_shards, 0)
    seconds = time.perf_counter() - t0
    merged = _merged(root, jobs)
    left = jobs.loc[~jobs["pair_id"].isin(merged["pair_id"]), "original_id"]
    pending = dict(sorted(Counter(shards.shard_of(i, num_shards) for i in left).items()))
    if pending:
        if shard_index == -1:
            shards.refuse_merge("generation", f"{len(left)} derivative(s) not made yet", num_shards, pending)
        return GenerationRun(None, merged, made, seconds, pending, unmatched)
    merged = merged.sort_values("pair_id", kind="stable").reset_index(drop=True)
    paths.write_parquet(merged, pairs_path(P), meta)
    return GenerationRun(merged, merged, made, seconds, {}, unmatched, run_triplets(P, merged))


def load(P) -> pd.DataFrame:
    """``pairs.parquet`` for ``P``, or :class:`~artsim_lib.io.artifacts.StageNotRunError` when it
    is missing or was made with other params."""
    return read_current(pairs_path(P), generation_meta(P), "05", "the generated pairs")


# -- triplets ---------------------------------------------------------------------------------

TRIPLET_COLUMNS = [
    "triplet_id",
    "anchor_id",
    "anchor_path",
    "positive_id",
    "positive_path",
    "negative_id",
    "negative_path",
    "anchor_sha256",
    "positive_sha256",
    "negative_sha256",
    "negative_kind",
    "level",
    "family",
    "strength",
    "backend",
    "split",
    "style",
    "artist",
]
KINDS = ("random", "same_style", "same_artist")
TRIPLET_SALT = "triplets"  # item_seed salt of the negatives' draws


def triplets_path(P) -> Path:
    """``<run>/triplets/triplets.parquet``."""
    return P.run.root / "triplets" / "triplets.parquet"


def triplet_meta(P) -> dict:
    """What ``triplets.parquet`` depends on: the pairs and the triplet params."""
    return {
        "stage": "triplets",
        "seed": P.seed,
        "pairs": generation_meta(P),
        "triplets": P.triplets.model_dump(mode="json"),
    }


@dataclass
class TripletResult:
    """The triplets and what could not be drawn."""

    triplets: pd.DataFrame
    shortfall: pd.DataFrame  # split, kind, wanted, drawn, skipped (negatives short of per_kind)
    dropped_flagged: int  # positives left out for a NaN/black flag


class _Candidates:
    """Row numbers of the manifest by split, (split, style) and (split, artist)."""

    def __init__(self, manifest: pd.DataFrame):
        self.m = manifest.reset_index(drop=True)
        self.split = self.m["split"].astype(str).to_numpy()
        # Missing values as None: it compares unequal to any name (and _group never pairs Nones).
        self.style = self.m["style"].astype(object).where(self.m["style"].notna(), None).to_numpy()
        self.artist = self.m["artist"].astype(object).where(self.m["artist"].notna(), None).to_numpy()
        self.row = {i: k for k, i in enumerate(self.m["id"].astype(str))}
        self._cache: dict = {}

    def _group(self, column: str, split: str, value) -> np.ndarray:
        key = (column, split, value)
        if key not in self._cache:
            values = getattr(self, column)
            self._cache[key] = (
                np.flatnonzero((self.split == split) & (values == value))
                if value is not None
                else np.array([], dtype=int)
            )
        return self._cache[key]

    def of(self, kind: str, anchor: int) -> np.ndarray:
        """Candidate rows of ``kind`` for the anchor row (never the anchor itself)."""
        split = self.split[anchor]
        if kind == "same_style":
            rows = self._group("style", split, self.style[anchor])
        elif kind == "same_artist":
            rows = self._group("artist", split, self.artist[anchor])
        elif kind == "random":
            key = ("random", split, self.style[anchor])
            if key not in self._cache:
                self._cache[key] = np.flatnonzero((self.split == split) & (self.style != self.style[anchor]))
            rows = self._cache[key]
        else:
            raise ValueError(f"unknown negative kind {kind!r} (known: {', '.join(KINDS)})")
        return rows[rows != anchor]


def build_triplets(
    pairs: pd.DataFrame,
    manifest: pd.DataFrame,
    kinds=KINDS,
    per_kind: int = 1,
    seed: int = 0,
    drop_flagged: bool = True,
) -> TripletResult:
    """Triplets for every pair (see the module docstring); deterministic given ``seed``."""
    flagged = pairs["nan_flag"].astype(bool) | pairs["black_flag"].astype(bool)
    positives = pairs[~flagged] if drop_flagged else pairs
    cand = _Candidates(manifest)
    unknown = set(positives["original_id"].astype(str)) - set(cand.row)
    if unknown:
        raise ValueError(f"{len(unknown)} original(s) of the pairs are not in the manifest, e.g. {sorted(unknown)[:3]}")
    rows, short = [], []
    for p in positives.sort_values("pair_id", kind="stable").itertuples():
        a = cand.row[str(p.original_id)]
        for kind in kinds:
            options = cand.of(kind, a)
            rng = np.random.default_rng(shards.item_seed(seed, f"{p.pair_id}:{kind}", TRIPLET_SALT))
            picks = options[rng.choice(len(options), size=min(per_kind, len(options)), replace=False)]
            short.append((cand.split[a], kind, per_kind, len(picks)))
            for k, n in enumerate(picks):
                rows.append(
                    (
                        f"{p.pair_id}|{kind}|{k}",
                        p.original_id,
                        a,
                        p.pair_id,
                        p.path,
                        getattr(p, "sha256", None),
                        n,
                        kind,
                        p.level,
                        p.family,
                        p.strength,
                        p.backend,
                    )
                )
    out = _frame(rows, cand)
    shortfall = (
        pd.DataFrame(short, columns=["split", "kind", "wanted", "drawn"])
        .groupby(["split", "kind"], as_index=False)[["wanted", "drawn"]]
        .sum()
    )
    shortfall["skipped"] = shortfall["wanted"] - shortfall["drawn"]
    return TripletResult(out, shortfall, int(flagged.sum()) if drop_flagged else 0)


def _frame(rows: list[tuple], cand: _Candidates) -> pd.DataFrame:
    cols = [
        "triplet_id",
        "anchor_id",
        "_a",
        "positive_id",
        "positive_path",
        "positive_sha256",
        "_n",
        "negative_kind",
        "level",
        "family",
        "strength",
        "backend",
    ]
    t = pd.DataFrame(rows, columns=cols)
    m = cand.m
    a, n = t.pop("_a").to_numpy(dtype=int), t.pop("_n").to_numpy(dtype=int)
    t["anchor_path"] = m["path"].astype(str).to_numpy()[a]
    t["negative_id"] = m["id"].astype(str).to_numpy()[n]
    t["negative_path"] = m["path"].astype(str).to_numpy()[n]
    # Fingerprints travel with the paths (stage 02 and 05 wrote them), so stage 08 reads no image twice.
    sha = m["sha256"].to_numpy(dtype=object) if "sha256" in m else np.full(len(m), None, dtype=object)
    t["anchor_sha256"], t["negative_sha256"] = sha[a], sha[n]
    t["split"], t["style"], t["artist"] = cand.split[a], cand.style[a], cand.artist[a]
    return t[TRIPLET_COLUMNS].sort_values("triplet_id", kind="stable").reset_index(drop=True)


def run_triplets(P, pairs: pd.DataFrame | None = None) -> TripletResult:
    """Build and write ``triplets.parquet`` for ``P`` from ``pairs`` (by default the current
    ``pairs.parquet``: :func:`load`)."""
    pairs = load(P) if pairs is None else pairs
    t = P.triplets
    result = build_triplets(pairs, s02_preprocess.load(P), t.negatives, t.per_kind, P.seed, t.drop_flagged)
    paths.write_parquet(result.triplets, triplets_path(P), triplet_meta(P))
    with paths.atomic_path(P.run.sub("triplets") / "shortfall.csv") as tmp:
        result.shortfall.to_csv(tmp, index=False)
    return result


def load_triplets(P) -> pd.DataFrame:
    """``triplets.parquet`` for ``P``, or :class:`~artsim_lib.io.artifacts.StageNotRunError` when
    it is missing or was made with other params."""
    return read_current(triplets_path(P), triplet_meta(P), "05", "the triplets")


def leaks(triplets: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Triplets whose anchor, positive source or negative is not in the triplet's split
    (empty when the split holds)."""
    split = manifest.set_index(manifest["id"].astype(str))["split"].astype(str)
    source = triplets["positive_id"].astype(str).str.split(":").str[0]
    ok = (
        triplets["anchor_id"].astype(str).map(split).eq(triplets["split"])
        & triplets["negative_id"].astype(str).map(split).eq(triplets["split"])
        & source.map(split).eq(triplets["split"])
    )
    return triplets[~ok.to_numpy()]


def examples(triplets: pd.DataFrame, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(paths, labels)`` of one triplet per kind, as rows of anchor | positive | negative."""
    picks = triplets.groupby("negative_kind", sort=True).sample(1, random_state=seed % 2**32)
    out_paths, labels = [], []
    for r in picks.itertuples():
        out_paths += [r.anchor_path, r.positive_path, r.negative_path]
        labels += [
            f"anchor · {r.style} · {r.artist}",
            f"positive · {r.level} · {r.family} · s={r.strength:g}",
            f"negative · {r.negative_kind} · {r.negative_id.split('__')[-1]}",
        ]
    return out_paths, labels


# -- what the notebook shows ------------------------------------------------------------------


def demo_sdxl(P, originals: pd.DataFrame, prompt: str = "the same painting, a {level} change") -> dict:
    """The sdxl pipeline on ``originals`` at each level's strength, seeded as the sdxl backend
    seeds them; nothing is saved (a check that it runs): ``{level: [B, H, W, 3] floats}``."""
    g, pipe = P.generation, load_sdxl(P)
    images = [_open_rgb(p, g.size) for p in originals["path"]]
    return {
        lv: sdxl_images(
            pipe,
            images,
            [prompt.format(level=lv)] * len(images),
            [shards.item_seed(P.seed, f"{i}:{lv}", SALT) for i in originals["id"]],
            s,
            g,
        )
        for lv, s in g.strength.items()
    }


def panel(
    pairs: pd.DataFrame, manifest: pd.DataFrame, ids, by_family: bool = False
) -> tuple[list[str], list[str], int]:
    """``(paths, labels, ncols)`` for ``plots.image_grid``: a row per original of ``ids`` (per
    original and family with ``by_family``) -- the original, then its derivatives by strength.
    Rows with fewer derivatives than the fullest row are left out, so the grid stays aligned."""
    keys = ["original_id", "family"] if by_family else ["original_id"]
    sel = pairs[pairs["original_id"].isin(list(ids))].sort_values(keys + ["strength", "pair_id"])
    groups = [grp for _, grp in sel.groupby(keys, sort=False)]
    width = max((len(grp) for grp in groups), default=0)
    original = manifest.set_index("id")["path"]
    out_paths, labels = [], []
    for grp in (grp for grp in groups if len(grp) == width):
        out_paths += [original[grp["original_id"].iloc[0]]] + list(grp["path"])
        labels += [f"original · {grp['style'].iloc[0]}"] + [
            f"{r.level} · {r.family}" + (f" · {r.op}" if isinstance(r.op, str) else "") + f" · s={r.strength:g}"
            for r in grp.itertuples()
        ]
    return out_paths, labels, width + 1
