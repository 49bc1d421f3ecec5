"""CLIP siamese speed: (a) head training on cached embeddings vs encoding through CLIP at every
step, per epoch; (b) embedding extraction through the pipeline vs the bare model forward.

    .venv/bin/python benchmarks/bench_siamese.py [--model vit-b32|tiny] [--images 48] [--size 1024] [--repeats 3]

``vit-b32`` is the real ViT-B/32 architecture of ``openai/clip-vit-base-patch32`` (224² input,
512-d embeddings), randomly initialised from ``CLIPConfig()`` defaults: nothing is downloaded and
the speed is that of the real model. ``tiny`` is the smoke profile's tiny CLIP. The images are
SynthArt paintings saved as ``--size``² JPEGs, as stage 02 writes them in the full study.

Not a test: it prints figures (targets: (a) >= 50x per epoch, (b) >= 0.8x the bare forward).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageEnhance

from artsim_lib.core import losses
from artsim_lib.io import synthart
from artsim_lib.measures import embeddings
from artsim_lib.models import build_tiny, freeze, heads, training


def make_images(folder: Path, n: int, size: int) -> pd.DataFrame:
    """``n`` SynthArt originals and a brightened derivative of each, as ``size``² JPEGs."""
    raw = folder / "raw"
    synthart.generate(raw, num_images=max(16, int(n * 1.25) + 4), seed=5, max_side=max(300, size))
    bad = set(synthart.defects(raw)["truncated"])
    rows = []
    for src in sorted(raw.rglob("*.jpg")):
        if src.relative_to(raw).as_posix() in bad or len(rows) == 2 * n:
            continue
        img = Image.open(src).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        k = len(rows) // 2
        for name, im in ((f"o{k:03d}", img), (f"d{k:03d}", ImageEnhance.Brightness(img).enhance(1.3))):
            im.save(folder / f"{name}.jpg", quality=95)
            rows.append({"id": name, "path": str(folder / f"{name}.jpg")})
    return pd.DataFrame(rows)


def encoder_for(kind: str, folder: Path) -> embeddings.Encoder:
    if kind == "tiny":
        return embeddings.open_encoder(str(build_tiny("clip", folder / "tiny-clip", seed=0)))
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from artsim_lib.models import bpe

    torch.manual_seed(0)
    model = freeze(CLIPModel(CLIPConfig()))  # ViT-B/32: 224², patch 32, width 768, 12 layers, 512-d
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=bpe.clip_tokenizer())
    ident = {"name": "vit-b32-random", "ref": "CLIPConfig()", "dtype": "float32", "files": {"seed": "0"}}
    return embeddings.Encoder(model, processor, ident)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    """(result, wall seconds, CPU seconds)."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, cpu_seconds() - c0


def bench_training(enc: embeddings.Encoder, table: pd.DataFrame, batch: int, epochs: int) -> None:
    """(a): one epoch over the triplets, from the cache vs through CLIP (same head, same steps)."""
    n = len(table) // 2
    ids = pd.Index(table["id"])
    a, p = ids.get_indexer([f"o{i:03d}" for i in range(n)]), ids.get_indexer([f"d{i:03d}" for i in range(n)])
    neg = np.roll(a, 1)  # another original
    emb = torch.from_numpy(embeddings.embedding_matrix(table))  # [2n, D]
    cfg = {
        "kind": "mlp",
        "in_dim": enc.dim,
        "hidden": [512, 512],
        "out_dim": 256,
        "dropout": 0.1,
        "tokens": 4,
        "layers": 1,
        "heads": 4,
        "tau": 0.07,
        "learn_tau": False,
        "tau_min": 0.01,
        "tau_max": 1.0,
    }

    def run_epochs(model, inputs, count, threads, seed=0) -> list[float]:
        opt = training.adamw(model, 1e-3)
        times, before = [], torch.get_num_threads()
        torch.set_num_threads(threads)
        for epoch in range(count):
            t0 = time.perf_counter()
            model.train()
            for b in training.batch_indices(n, batch, True, training.epoch_seed(seed, epoch)):
                za, zp, zn = model(inputs[a[b]], inputs[p[b]], inputs[neg[b]])
                s_pos, s_neg = losses.triplet_similarities(za, zp, zn)
                loss = losses.infonce_triplet_loss(s_pos, s_neg, model.temperature())
                opt.zero_grad()
                loss.backward()
                opt.step()
            times.append(time.perf_counter() - t0)
        torch.set_num_threads(before)
        return times

    torch.manual_seed(0)
    cached = heads.Siamese(heads.build_head(cfg), heads.Temperature())
    # One thread for the head, as stages.s08_siamese.fit_head does on the CPU (small matrices); CLIP gets them all.
    t_cached = min(run_epochs(cached, emb, 30, threads=1))
    proc = enc.processor.image_processor
    pixels = torch.from_numpy(
        np.stack(
            [proc(images=Image.open(f).convert("RGB"), return_tensors="np")["pixel_values"][0] for f in table["path"]]
        )
    )  # [2n, 3, H, W]
    torch.manual_seed(0)
    online = heads.Siamese(heads.build_head(cfg), heads.Temperature(), embeddings.ClipEncoder(enc.model))
    t_online = min(run_epochs(online, pixels, epochs, threads=torch.get_num_threads()))
    _, t_extract, _ = timed(lambda: list(embeddings.encode(enc, list(table["path"]), batch, 2)))
    print(f"(a) {n} triplets, batch {batch}, head {cfg['hidden']} -> {cfg['out_dim']}, {enc.dim}-d CLIP embeddings")
    print(
        f"    encode a, p, n through CLIP every step : {t_online:9.3f} s / epoch  (best of {epochs}; pixels "
        f"preprocessed once)"
    )
    print(f"    head on cached embeddings               : {t_cached:9.5f} s / epoch  (best of 30)")
    print(f"    per-epoch speed-up                      : {t_online / t_cached:9.1f}x   (target >= 50x)")
    for e in (1, 10, 50):
        print(
            f"    {e:>3} epochs incl. one extraction ({t_extract:.1f} s) : "
            f"{(e * t_online) / (t_extract + e * t_cached):7.1f}x"
        )


def bench_extraction(enc: embeddings.Encoder, table: pd.DataFrame, batch: int, root: Path, repeats: int) -> None:
    """(b): the pipeline (hash, decode, preprocess, forward, parquet parts) vs forward alone,
    interleaved and repeated (the best of each: the machine may be shared)."""
    proc = enc.processor.image_processor
    pixels = torch.from_numpy(
        np.stack(
            [proc(images=Image.open(f).convert("RGB"), return_tensors="np")["pixel_values"][0] for f in table["path"]]
        )
    )  # [n, 3, H, W]
    n = len(pixels)
    embeddings.embed_pixels(enc.model, pixels[:batch], batch)  # warm-up (kernel selection, allocations)

    def bare():
        for i in range(0, n, batch):
            embeddings.embed_pixels(enc.model, pixels[i : i + batch], batch)

    def pipeline(workers, k):
        res = embeddings.extract(enc, table, root / f"w{workers}-{k}", batch_size=batch, workers=workers)
        assert res.misses == n

    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for k in range(repeats):
        for name, fn in [("bare forward (tensors ready)", bare)] + [
            (f"pipeline, {w} decoding thread(s)", lambda w=w: pipeline(w, k)) for w in (1, 2)
        ]:
            _, w_s, c_s = timed(fn)
            wall.setdefault(name, []).append(w_s)
            cpu.setdefault(name, []).append(c_s)
    bare_wall, bare_cpu = min(wall["bare forward (tensors ready)"]), min(cpu["bare forward (tensors ready)"])
    print(f"(b) {n} images, batch {batch}; best of {repeats} interleaved runs (median in brackets)")
    print(f"    {'':34s}   wall-clock images/s         CPU ms / image")
    for name in wall:
        ratio = (
            ""
            if name.startswith("bare")
            else f"   ratio wall {bare_wall / min(wall[name]):.2f}, CPU {bare_cpu / min(cpu[name]):.2f}"
        )
        print(
            f"    {name:34s}: {n / min(wall[name]):7.2f} ({n / statistics.median(wall[name]):6.2f})"
            f"      {1000 * min(cpu[name]) / n:7.1f} ({1000 * statistics.median(cpu[name]) / n:6.1f}){ratio}"
        )
    print("    target: ratio >= 0.8 (the stage uses `num_workers` threads: 2). The CPU ratio is bare CPU time /")
    print("    pipeline CPU time: what the wall ratio would be if decoding overlapped the forward perfectly.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["vit-b32", "tiny"], default="vit-b32")
    ap.add_argument("--images", type=int, default=48, help="originals (each with one derivative)")
    ap.add_argument("--size", type=int, default=1024, help="side of the JPEG files (1024 in the full study)")
    ap.add_argument("--batch", type=int, default=32, help="embed_batch_size (32 smoke, 64 full)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats in (b)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs through CLIP in (a), best taken")
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; model {args.model}; "
        f"{args.images} originals + {args.images} derivatives at {args.size}² JPEG"
    )
    print(
        "load average at start: {:.2f} {:.2f} {:.2f} (a shared machine makes wall-clock figures noisy)".format(
            *os.getloadavg()
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        table = make_images(tmp / "img", args.images, args.size)
        enc = encoder_for(args.model, tmp)
        bench_extraction(enc, table, args.batch, tmp / "cache", args.repeats)
        full = embeddings.extract(enc, table, tmp / "cache" / "w0-0", batch_size=args.batch).table
        bench_training(enc, full, args.batch, args.epochs)
    print("load average at end:   {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
