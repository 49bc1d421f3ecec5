"""Issue 9's speed fixes, each before/after in one run: near-duplicate search, BLIP-2 input
prefetching, stage 06's streamed features.

    .venv/bin/python benchmarks/bench_speed.py [--hashes 8000] [--full-hashes 81444]
                                               [--images 48] [--workers 2]

Prints, per fix, the old and the new way's figure, their ratio and whether both give the same
result. Not a test: figures to report. Everything is built here (random hashes, SynthArt-like
random paintings, the tiny BLIP-2); nothing is downloaded.

1. ``find_duplicates``: the quadratic Python loop (``find_duplicates_naive``) vs the lookup +
   blocked popcount, on the same hashes; then the new one alone at the full study's 81,444
   hashes (the old one's time there is extrapolated: it grows with the square).
2. BLIP-2 captioning: images decoded in the main loop vs on worker threads ahead of the model
   (the tiny BLIP-2 on the CPU stands in for the GPU; 1024² JPEGs as the full profile writes).
3. Stage 06: all features in memory, then every pair, vs streamed in parts: wall time and the
   peak of Python-traced memory (tracemalloc), then projected to the full study's 244,332 images.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from artsim_lib import config
from artsim_lib.core import descriptor_similarity as dsim
from artsim_lib.core import descriptors
from artsim_lib.io import shards, workers
from artsim_lib.stages import s02_preprocess as preprocess
from artsim_lib.stages import s03_captioning as captioning

FULL_IMAGES = 81_444 + 162_888  # originals + derivatives that stage 06 describes


def _hashes(n: int, seed: int = 0, repeats: float = 0.02, near: float = 0.02) -> pd.DataFrame:
    """``n`` 64-bit phash strings: random, with a few exact repeats and near copies."""
    rng = np.random.default_rng(seed)
    vals = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(
        np.uint64
    )  # all 64 bits random
    pick = rng.random(n)
    src = rng.integers(0, np.arange(1, n + 1))  # an earlier row (or itself for row 0)
    out = vals.copy()
    for i in np.flatnonzero(pick < repeats + near):
        v = int(out[src[i]])
        if pick[i] >= repeats:
            for b in rng.integers(0, 64, rng.integers(1, 5)):
                v ^= 1 << int(b)
        out[i] = v
    return pd.DataFrame({"id": [f"{i:06d}" for i in range(n)], "phash": [f"{int(v):016x}" for v in out]})


def bench_duplicates(n: int, full: int) -> None:
    print(f"\n1. near-duplicate search (find_duplicates), {n:,} hashes (2% exact repeats, 2% near copies)")
    df = _hashes(n)
    before = {}
    for d in (0, 8):  # 0: the profiles' preprocess.phash_max_distance; 8: a near-duplicate search
        t0 = time.perf_counter()
        old = preprocess.find_duplicates_naive(df, d)
        t1 = time.perf_counter()
        new = preprocess.find_duplicates(df, d)
        t2 = time.perf_counter()
        same, before[d] = old.equals(new), t1 - t0
        print(
            f"   max_distance={d}:  before {t1 - t0:7.2f} s   after {t2 - t1:6.3f} s   "
            f"{(t1 - t0) / max(t2 - t1, 1e-9):7.0f}x   same duplicates: {same} ({len(new)})"
        )
        assert same, "the vectorised search differs from the reference"
    big = _hashes(full, seed=1)
    for d in (0, 8):
        t0 = time.perf_counter()
        found = preprocess.find_duplicates(big, d)
        t = time.perf_counter() - t0
        print(
            f"   {full:,} hashes, max_distance={d}: after {t:6.2f} s ({len(found):,} duplicates); "
            f"before, extrapolated (quadratic) from {n:,}: ~{(full / n) ** 2 * before[d] / 60:.0f} min"
        )


def _jpegs(folder: Path, n: int, side: int) -> list[str]:
    """``n`` smooth random colour fields as ``side``² JPEGs (quality 95, as stage 02 writes)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        small = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC).save(path, quality=95)
        out.append(str(path))
    return out


def bench_captioning(n_images: int, side: int, n_workers: int, batch_size: int) -> None:
    from artsim_lib.models import tiny

    print(f"\n2. BLIP-2 captioning, {n_images} {side}² JPEGs, batch {batch_size}, the tiny BLIP-2 on the CPU")
    with tempfile.TemporaryDirectory() as tmp:
        files = _jpegs(Path(tmp), n_images, side)
        model, processor = tiny.make_tiny("blip2")
        model.eval()
        # The model stands in for the GPU: one core for it, the others free for decoding, as on
        # a GPU node (with every core, the model and the decoding threads fight over them).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        batches = list(shards.batches(files, batch_size))

        def run(k: int) -> tuple[list[str], float]:
            caps, t0 = [], time.perf_counter()
            for _batch, inputs in workers.prefetch_map(lambda b: captioning.prepare_inputs(processor, b), batches, k):
                caps += captioning.caption_images(model, processor, None, max_new_tokens=8, inputs=inputs)
            return caps, time.perf_counter() - t0

        run(0)  # warm-up
        serial, t_serial = run(0)
        threaded, t_threaded = run(n_workers)
        t0 = time.perf_counter()
        for b in batches:
            captioning.prepare_inputs(processor, b)
        t_decode = time.perf_counter() - t0
        torch.set_num_threads(threads)
    same = serial == threaded
    print(f"   decoding + processor alone: {1e3 * t_decode / n_images:.1f} ms an image (one thread)")
    print(
        f"   before (in the loop) {t_serial:6.2f} s   after ({n_workers} worker threads ahead) {t_threaded:6.2f} s   "
        f"{t_serial / t_threaded:5.2f}x   same captions: {same}"
    )
    t_model = max(t_serial - t_decode, 1e-9)
    print(
        f"   the model alone {t_model:.2f} s: with {n_workers} free CPU(s) for decoding the loop can take "
        f"max(decoding / {n_workers}, model) = {max(t_decode / n_workers, t_model):.2f} s "
        f"({t_serial / max(t_decode / n_workers, t_model):.2f}x); a load average above the CPU count leaves less"
    )
    assert same, "prefetched captions differ"


def _paintings(folder: Path, n: int, side: int) -> list[str]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        arr = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize((side, side), Image.Resampling.BILINEAR)
        path = folder / f"p{i:04d}.png"
        img.save(path)
        out.append(str(path))
    return out


def bench_descriptors(n_images: int, n_workers: int, part: int) -> None:
    cfg = config.DescriptorParams(size=128, hog_cell=16, workers=n_workers)  # the smoke study's settings
    n_anchors = n_images // 3
    print(
        f"\n3. stage 06 features, {n_images} images at {cfg.size}² ({n_anchors} anchors, each with 2 derivatives "
        f"and 3 negatives), parts of {part} images"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = _paintings(Path(tmp), n_images, 256)
        anchors, derived = files[:n_anchors], files[n_anchors:]
        rng = np.random.default_rng(2)
        rows = []
        for i, a in enumerate(anchors):  # as stage 06's pair table: positives, then other originals
            rows += [(a, derived[(2 * i + k) % len(derived)]) for k in (0, 1)]
            rows += [(a, anchors[j]) for j in rng.choice([j for j in range(n_anchors) if j != i], 3, replace=False)]
        unique = pd.DataFrame(rows, columns=["anchor_path", "other_path"]).drop_duplicates()
        descriptors.extract(files[0], cfg)  # warm imports
        full_cfg = config.load_params("full").descriptors
        per_image = sum(v.nbytes for v in descriptors.extract(files[0], full_cfg).values())

        def whole(cache):
            feats, _ = descriptors.extract_many(files, cfg, cache, n_workers, "all images")
            return dsim._score_unique(unique, dict(zip(files, feats)))

        def streamed(cache):
            return dsim.stream_pair_scores(unique, cfg, cache, n_workers, max_images=part, progress=False).scored

        figures = {}
        for name, fn in (("before", whole), ("after", streamed)):
            t0 = time.perf_counter()
            out = fn(Path(tmp) / f"cache-{name}")  # cold cache: features computed
            wall = time.perf_counter() - t0
            tracemalloc.start()
            fn(Path(tmp) / f"cache-{name}")  # warm cache: the memory of holding features, not computing them
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            figures[name] = (out, wall, peak)
    (old, t_old, m_old), (new, t_new, m_new) = figures["before"], figures["after"]
    key = ["anchor_path", "other_path"]
    same = old.sort_values(key).reset_index(drop=True).equals(new.sort_values(key).reset_index(drop=True))
    print(f"   before (all features held): {t_old:6.2f} s, peak traced memory {m_old / 2**20:6.2f} MB")
    print(
        f"   after (streamed in parts):  {t_new:6.2f} s, peak traced memory {m_new / 2**20:6.2f} MB   "
        f"{m_old / max(m_new, 1):4.1f}x less memory   same scores: {same}"
    )
    print(
        f"   (the time ratio is {t_old / t_new:.2f}x: small parts re-read shared images from the cache and start "
        f"a worker pool each; stage 06's parts hold {dsim.PART_IMAGES:,} images)"
    )
    print(
        f"   the full study: {FULL_IMAGES:,} images x {per_image / 1e3:.0f} kB of features at "
        f"descriptors.size={full_cfg.size}: before ~{per_image * FULL_IMAGES / 2**30:.1f} GB held, "
        f"after ~{per_image * dsim.PART_IMAGES / 2**20:.0f} MB ({dsim.PART_IMAGES:,} images a part)"
    )
    assert same, "streamed scores differ"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hashes", type=int, default=8000, help="hashes for the before/after comparison")
    ap.add_argument("--full-hashes", type=int, default=81_444, help="the full study's originals")
    ap.add_argument("--images", type=int, default=48, help="images for the captioning and stage-06 figures")
    ap.add_argument("--side", type=int, default=1024, help="side of the captioning JPEGs (the full profile's)")
    ap.add_argument("--workers", type=int, default=workers.worker_count(), help="worker threads/processes")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPU(s), {workers.available_cpus()} available, load average {os.getloadavg()[0]:.1f}")
    bench_duplicates(args.hashes, args.full_hashes)
    bench_captioning(args.images, args.side, args.workers, batch_size=8)
    bench_descriptors(args.images, args.workers, part=max(8, args.images // 3))


if __name__ == "__main__":
    main()
