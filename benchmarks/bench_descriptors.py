"""Descriptor extraction: two worker processes vs a one-process loop on the same SynthArt images.

    .venv/bin/python benchmarks/bench_descriptors.py [--images 60] [--size 256] [--workers 2]

Prints the wall time of each, the speed-up ratio and checks that both give the same features
(bit for bit). Not a test: a figure to report (target >= 1.8x on 2 cores). No cache is used, so
both runs do the full work; ``--size`` sets the per-image work (the smoke profile uses 128, the
full study 1024 originals described at ``descriptors.size``).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from artsim_lib import config
from artsim_lib.core import descriptors
from artsim_lib.io import synthart


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    """``n`` readable SynthArt paintings as ``size``² PNGs (defective files left out)."""
    raw = folder / "raw"
    synthart.generate(raw, num_images=max(16, int(n * 1.25) + 4), seed=11, max_side=max(300, size))
    bad = set(synthart.defects(raw)["truncated"])
    out = []
    for src in sorted(raw.rglob("*.jpg")):
        if src.relative_to(raw).as_posix() in bad or len(out) == n:
            continue
        dst = folder / "img" / f"{len(out):03d}.png"
        dst.parent.mkdir(exist_ok=True)
        Image.open(src).convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(dst)
        out.append(dst)
    return out


def timed(fn):
    """(result, wall seconds, CPU seconds of this process and its finished children)."""

    def cpu():
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--size", type=int, default=256, help="descriptors.size (per-image work)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each mode")
    args = ap.parse_args()
    cfg = config.DescriptorParams(size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_images(Path(tmp), args.images, args.size)
        descriptors.extract(files[0], cfg)  # warm imports and caches in this process
        seq_runs = [
            timed(lambda: descriptors.extract_many(files, cfg, None, 1, "1 process")) for _ in range(args.repeats)
        ]
        par_runs = [
            timed(lambda: descriptors.extract_many(files, cfg, None, args.workers, f"{args.workers} processes"))
            for _ in range(args.repeats)
        ]
    (seq, _), t_seq, c_seq = min(seq_runs, key=lambda r: r[1])
    (par, _), t_par, c_par = min(par_runs, key=lambda r: r[1])
    same = all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(seq, par))
    assert same and len(seq) == len(par) == len(files), "parallel features differ from sequential ones"
    load = os.getloadavg()[0]
    print(
        f"\n{len(files)} images at {args.size}px, {os.cpu_count()} CPU(s), best of {args.repeats}, "
        f"load average {load:.1f} (other processes share the cores when it exceeds the CPU count)"
    )
    print(f"  1 process      {t_seq:6.2f} s wall {c_seq:6.2f} s CPU  ({len(files) / t_seq:5.1f} images/s)")
    print(f"  {args.workers} processes    {t_par:6.2f} s wall {c_par:6.2f} s CPU  ({len(files) / t_par:5.1f} images/s)")
    print(f"  speed-up       {t_seq / t_par:6.2f}x   identical features: {same}")
    print(
        f"  CPU per image  {1e3 * c_seq / len(files):.1f} ms (1 process), "
        f"{1e3 * c_par / len(files):.1f} ms (pool, incl. start-up and transfer)"
    )


if __name__ == "__main__":
    main()
